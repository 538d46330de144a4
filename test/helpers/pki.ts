import { execFileSync } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A throw-away PKI for mTLS tests, made with the `openssl` CLI in a temp dir:
 * CAs, server and client certificates with SPIFFE URI SANs, and helpers that
 * write a (cert, key, CA) triple into given paths either atomically (temp file
 * + rename, as spiffe-helper and Kubernetes Secret mounts do) or in place, one
 * file after the other (a rotation caught half-way).
 *
 * Keys are EC P-256 (fast to generate). Certificates are valid from one hour
 * ago for two days, so clock skew between openssl and node does not matter.
 */

export const TRUST_DOMAIN = 'test.local';
export const SERVER_ID = `spiffe://${TRUST_DOMAIN}/ns/agentcube-system/sa/portcullis`;
export const ROUTER_ID = `spiffe://${TRUST_DOMAIN}/ns/agentcube-system/sa/envoy-router`;
export const INTRUDER_ID = `spiffe://${TRUST_DOMAIN}/ns/agentcube-system/sa/intruder`;

/** PEM text of a certificate and its private key. */
export interface KeyPair {
  cert: string;
  key: string;
  /** Serial number as node reports it (`X509Certificate.serialNumber`, `getPeerCertificate().serialNumber`). */
  serial: string;
  /** SHA-256 fingerprint as node reports it. */
  fingerprint256: string;
}

export interface IssueOptions {
  /** Subject CN (default: the first URI SAN or "leaf"). */
  cn?: string;
  uris?: string[];
  dns?: string[];
  ips?: string[];
  /** Extended key usages (default both serverAuth and clientAuth). */
  usage?: ('serverAuth' | 'clientAuth')[];
  /** Validity in days from now (default 2). Negative values are not supported by openssl x509 -days. */
  days?: number;
}

export interface TestCa {
  readonly name: string;
  /** The CA certificate (PEM): what goes into a trust bundle / caFile. */
  readonly cert: string;
  readonly key: string;
  issue(opts?: IssueOptions): KeyPair;
  /** A server certificate for 127.0.0.1 / localhost with `uri` as its SPIFFE ID (default SERVER_ID). */
  server(uri?: string): KeyPair;
  /** A client certificate with `uri` as its only SAN. */
  client(uri: string): KeyPair;
}

export interface TestPki {
  readonly dir: string;
  /** Creates a self-signed CA. */
  createCa(name: string): TestCa;
  /** Removes the temp dir. */
  remove(): void;
}

/** The three files of a TLS identity as portcullis reads them. */
export interface TlsPaths {
  certFile: string;
  keyFile: string;
  caFile: string;
}

export interface TlsContents {
  cert: string;
  key: string;
  ca: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

function info(cert: string): { serial: string; fingerprint256: string } {
  const x = new X509Certificate(cert);
  return { serial: x.serialNumber, fingerprint256: x.fingerprint256 };
}

export function createPki(prefix = 'portcullis-pki-'): TestPki {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  let seq = 0;

  function createCa(name: string): TestCa {
    const base = `${name.replace(/[^A-Za-z0-9_-]/g, '_')}-${++seq}`;
    const keyFile = join(dir, `${base}.key`);
    const certFile = join(dir, `${base}.crt`);
    openssl(
      [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
        '-keyout', keyFile, '-out', certFile, '-days', '3', '-subj', `/O=portcullis-test/CN=${name}`,
        '-addext', 'basicConstraints=critical,CA:TRUE',
        '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      ],
      dir,
    );
    const caCert = readFileSync(certFile, 'utf8');
    const caKey = readFileSync(keyFile, 'utf8');

    function issue(opts: IssueOptions = {}): KeyPair {
      const id = `${base}-leaf-${++seq}`;
      const leafKey = join(dir, `${id}.key`);
      const csr = join(dir, `${id}.csr`);
      const crt = join(dir, `${id}.crt`);
      const ext = join(dir, `${id}.ext`);
      const sans = [
        ...(opts.uris ?? []).map((u) => `URI:${u}`),
        ...(opts.dns ?? []).map((d) => `DNS:${d}`),
        ...(opts.ips ?? []).map((i) => `IP:${i}`),
      ];
      const usage = opts.usage ?? ['serverAuth', 'clientAuth'];
      const lines = [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyAgreement',
        `extendedKeyUsage=${usage.join(',')}`,
      ];
      if (sans.length > 0) lines.push(`subjectAltName=${sans.join(',')}`);
      writeFileSync(ext, `${lines.join('\n')}\n`);
      const cn = (opts.cn ?? opts.uris?.[0] ?? 'leaf').replace(/[/=+,]/g, '_').slice(0, 64);
      openssl(
        ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', leafKey, '-out', csr, '-subj', `/O=portcullis-test/CN=${cn}`],
        dir,
      );
      // A random 64-bit serial (first bit cleared so it is positive and never re-used across issues).
      const serial = randomBytes(8);
      serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x10;
      openssl(
        [
          'x509', '-req', '-in', csr, '-CA', certFile, '-CAkey', keyFile, '-set_serial', `0x${serial.toString('hex')}`,
          '-days', String(opts.days ?? 2), '-extfile', ext, '-out', crt, '-sha256',
        ],
        dir,
      );
      const cert = readFileSync(crt, 'utf8');
      return { cert, key: readFileSync(leafKey, 'utf8'), ...info(cert) };
    }

    return {
      name,
      cert: caCert,
      key: caKey,
      issue,
      server: (uri = SERVER_ID) => issue({ uris: [uri], dns: ['localhost'], ips: ['127.0.0.1'], cn: 'portcullis' }),
      client: (uri) => issue({ uris: [uri] }),
    };
  }

  return { dir, createCa, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The paths `<dir>/tls.crt`, `<dir>/tls.key`, `<dir>/ca.crt` (the names a Kubernetes TLS Secret mount uses). */
export function tlsPaths(dir: string): TlsPaths {
  return { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key'), caFile: join(dir, 'ca.crt') };
}

function atomicWrite(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, path);
}

/**
 * Writes each file atomically (temp file + rename). The three renames are
 * still three steps: a reader between them sees a new certificate with the old
 * key, which the watcher must treat as "not ready yet".
 */
export function writeTlsFilesAtomic(paths: TlsPaths, c: TlsContents): void {
  atomicWrite(paths.keyFile, c.key);
  atomicWrite(paths.certFile, c.cert);
  atomicWrite(paths.caFile, c.ca);
}

export type TlsFileKind = 'cert' | 'key' | 'ca';

/**
 * Writes the files in place with plain writes, in the order given (default
 * cert, key, CA). `stopAfter` leaves the rotation half-done: only the files up
 * to and including it are written. `truncate` writes only the first half of
 * that file's bytes (a writer caught mid-write).
 */
export function writeTlsFilesInPlace(
  paths: TlsPaths,
  c: TlsContents,
  opts: { order?: TlsFileKind[]; stopAfter?: TlsFileKind; truncate?: TlsFileKind } = {},
): void {
  const order = opts.order ?? ['cert', 'key', 'ca'];
  const target: Record<TlsFileKind, string> = { cert: paths.certFile, key: paths.keyFile, ca: paths.caFile };
  for (const kind of order) {
    const text = c[kind];
    writeFileSync(target[kind], opts.truncate === kind ? text.slice(0, Math.floor(text.length / 2)) : text);
    if (opts.stopAfter === kind) return;
  }
}

/** Node's serial of a PEM certificate. */
export function serialOf(certPem: string | Buffer): string {
  return new X509Certificate(certPem).serialNumber;
}
