import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createCertWatcher, loadTlsMaterial, uriSans, type TlsMaterial } from '../../../../src/adapters/tls/cert-watcher.js';
import { parseConfig } from '../../../../src/config/load.js';
import { PortcullisError } from '../../../../src/core/errors.js';
import { parseCli } from '../../../../src/main.js';
import { createFakeClock } from '../../../helpers/fake-clock.js';
import {
  createPki,
  INTRUDER_ID,
  ROUTER_ID,
  SERVER_ID,
  serialOf,
  tlsPaths,
  writeTlsFilesAtomic,
  writeTlsFilesInPlace,
  type KeyPair,
  type TestCa,
  type TestPki,
  type TlsPaths,
} from '../../../helpers/pki.js';

let pki: TestPki;
let ca: TestCa;
let otherCa: TestCa;
let first: KeyPair;
let second: KeyPair;
let third: KeyPair;
let caseNo = 0;
let paths: TlsPaths;

beforeAll(() => {
  pki = createPki();
  ca = pki.createCa('ca-one');
  otherCa = pki.createCa('ca-two');
  first = ca.server();
  second = ca.server();
  third = ca.server();
});

afterAll(() => pki?.remove());

beforeEach(() => {
  const dir = join(pki.dir, `case-${++caseNo}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  paths = tlsPaths(dir);
  writeTlsFilesAtomic(paths, { cert: first.cert, key: first.key, ca: ca.cert });
});

function errorOf(fn: () => unknown): PortcullisError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(PortcullisError);
    return err as PortcullisError;
  }
  throw new Error('expected an error');
}

function watcher(opts: { intervalMs?: number } = {}) {
  const fake = createFakeClock(0);
  const errors: string[] = [];
  const reloads: TlsMaterial[] = [];
  const changes: TlsMaterial[] = [];
  const w = createCertWatcher({
    files: paths,
    scheduler: fake.scheduler,
    intervalMs: opts.intervalMs ?? 5_000,
    onError: (m) => errors.push(m),
    onReload: (m) => reloads.push(m),
  });
  w.onChange((m) => changes.push(m));
  return { w, fake, errors, reloads, changes };
}

describe('uriSans', () => {
  it('picks the URI entries out of node subjectaltname text', () => {
    expect(uriSans(undefined)).toEqual([]);
    expect(uriSans('')).toEqual([]);
    expect(uriSans(`DNS:localhost, IP Address:127.0.0.1, URI:${SERVER_ID}`)).toEqual([SERVER_ID]);
    expect(uriSans(`URI:${ROUTER_ID}, URI:${INTRUDER_ID}`)).toEqual([ROUTER_ID, INTRUDER_ID]);
  });
});

describe('loadTlsMaterial', () => {
  it('loads a consistent set: PEM buffers, the serving certificate\'s URI SANs, expiry and a fingerprint', () => {
    const m = loadTlsMaterial(paths);
    expect(m.cert.toString()).toBe(first.cert);
    expect(m.key.toString()).toBe(first.key);
    expect(m.ca.toString()).toBe(ca.cert);
    expect(m.uris).toEqual([SERVER_ID]);
    expect(Number.isNaN(Date.parse(m.notAfter))).toBe(false);
    expect(m.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(loadTlsMaterial(paths).fingerprint).toBe(m.fingerprint);
  });

  it('a key that does not belong to the certificate is refused with a message naming both files', () => {
    writeTlsFilesAtomic(paths, { cert: first.cert, key: second.key, ca: ca.cert });
    const err = errorOf(() => loadTlsMaterial(paths));
    expect(err.code).toBe('ERR_CONFIG_INVALID');
    expect(err.message).toBe(`${paths.keyFile} does not match the certificate in ${paths.certFile}`);
  });

  it('a missing file is a read error naming the file and its role', () => {
    rmSync(paths.caFile);
    const err = errorOf(() => loadTlsMaterial(paths));
    expect(err.code).toBe('ERR_CONFIG_READ');
    expect(err.message).toContain(`cannot read the client CA file ${paths.caFile}`);
  });

  it.each([
    ['cert', 'is not a PEM certificate'],
    ['key', 'is not a PEM private key'],
    ['ca', 'is not a PEM CA certificate'],
  ] as const)('garbage in the %s file is refused (%s)', (kind, message) => {
    const target = kind === 'cert' ? paths.certFile : kind === 'key' ? paths.keyFile : paths.caFile;
    writeFileSync(target, 'this is not PEM\n');
    const err = errorOf(() => loadTlsMaterial(paths));
    expect(err.code).toBe('ERR_CONFIG_INVALID');
    expect(err.message).toContain(target);
    expect(err.message).toContain(message);
  });
});

describe('createCertWatcher', () => {
  it('loads the current set at construction', () => {
    const { w } = watcher();
    expect(serialOf(w.current().cert)).toBe(first.serial);
    expect(w.current().uris).toEqual([SERVER_ID]);
  });

  it('a mismatched key fails construction with a clear message', () => {
    writeTlsFilesAtomic(paths, { cert: first.cert, key: second.key, ca: ca.cert });
    const err = errorOf(() => watcher());
    expect(err.message).toMatch(/tls\.key does not match the certificate in .*tls\.crt/);
  });

  it('poll() with unchanged files applies nothing; rewriting identical bytes is not a change', () => {
    const { w, changes, reloads, errors } = watcher();
    expect(w.poll()).toBe(false);
    writeTlsFilesAtomic(paths, { cert: first.cert, key: first.key, ca: ca.cert });
    expect(w.poll()).toBe(false);
    expect(changes).toEqual([]);
    expect(reloads).toEqual([]);
    expect(errors).toEqual([]);
  });

  it('poll() applies a new valid set and tells onChange and onReload', () => {
    const { w, changes, reloads } = watcher();
    const before = w.current();
    writeTlsFilesAtomic(paths, { cert: second.cert, key: second.key, ca: ca.cert });
    expect(w.poll()).toBe(true);
    expect(serialOf(w.current().cert)).toBe(second.serial);
    expect(w.current().fingerprint).not.toBe(before.fingerprint);
    expect(changes.map((m) => serialOf(m.cert))).toEqual([second.serial]);
    expect(reloads.map((m) => serialOf(m.cert))).toEqual([second.serial]);
    expect(w.poll()).toBe(false);
    expect(changes).toHaveLength(1);
  });

  it('a CA-only rotation (new trust bundle, same serving pair) is a change too', () => {
    const { w, changes } = watcher();
    writeTlsFilesAtomic(paths, { cert: first.cert, key: first.key, ca: `${ca.cert}${otherCa.cert}` });
    expect(w.poll()).toBe(true);
    expect(w.current().ca.toString()).toBe(`${ca.cert}${otherCa.cert}`);
    expect(changes).toHaveLength(1);
  });

  it('a half-written rotation (new certificate, old key) is ignored, reported once, and applied on the next poll once complete', () => {
    const { w, changes, errors } = watcher();
    const before = w.current();
    writeTlsFilesInPlace(paths, { cert: second.cert, key: second.key, ca: ca.cert }, { stopAfter: 'cert' });
    expect(w.poll()).toBe(false);
    expect(w.current()).toBe(before);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain('does not match the certificate');
    // Still half-written at the next poll: not reported again.
    expect(w.poll()).toBe(false);
    expect(w.current()).toBe(before);
    expect(errors).toHaveLength(1);
    expect(changes).toEqual([]);
    // The writer finishes.
    writeTlsFilesInPlace(paths, { cert: second.cert, key: second.key, ca: ca.cert });
    expect(w.poll()).toBe(true);
    expect(serialOf(w.current().cert)).toBe(second.serial);
    expect(changes).toHaveLength(1);
    expect(errors).toHaveLength(1);
  });

  it('a truncated key file is ignored the same way', () => {
    const { w, errors } = watcher();
    const before = w.current();
    writeTlsFilesInPlace(paths, { cert: second.cert, key: second.key, ca: ca.cert }, { truncate: 'key', stopAfter: 'key' });
    expect(w.poll()).toBe(false);
    expect(w.current()).toBe(before);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain(paths.keyFile);
  });

  it('after recovering, a new failure is reported again', () => {
    const { w, errors } = watcher();
    writeFileSync(paths.keyFile, 'broken');
    expect(w.poll()).toBe(false);
    writeTlsFilesAtomic(paths, { cert: second.cert, key: second.key, ca: ca.cert });
    expect(w.poll()).toBe(true);
    writeFileSync(paths.keyFile, 'broken');
    expect(w.poll()).toBe(false);
    expect(errors).toHaveLength(2);
    expect(serialOf(w.current().cert)).toBe(second.serial);
  });

  it('start() polls on the injected scheduler every intervalMs; stop() cancels', () => {
    const { w, fake, changes } = watcher({ intervalMs: 1_000 });
    expect(fake.pending()).toHaveLength(0);
    w.start();
    w.start(); // idempotent
    expect(fake.pending()).toHaveLength(1);
    expect(fake.pending()[0]?.dueAt).toBe(1_000);
    writeTlsFilesAtomic(paths, { cert: second.cert, key: second.key, ca: ca.cert });
    fake.advance(999);
    expect(changes).toHaveLength(0);
    fake.advance(1);
    expect(changes.map((m) => serialOf(m.cert))).toEqual([second.serial]);
    expect(fake.pending()).toHaveLength(1);
    writeTlsFilesAtomic(paths, { cert: third.cert, key: third.key, ca: ca.cert });
    fake.advance(1_000);
    expect(serialOf(w.current().cert)).toBe(third.serial);
    w.stop();
    expect(fake.pending()).toHaveLength(0);
    writeTlsFilesAtomic(paths, { cert: first.cert, key: first.key, ca: ca.cert });
    fake.advance(10_000);
    expect(serialOf(w.current().cert)).toBe(third.serial);
  });

  it('a broken set seen by the timer keeps the old material and the timer keeps running', () => {
    const { w, fake, errors } = watcher({ intervalMs: 1_000 });
    w.start();
    writeFileSync(paths.certFile, '-----BEGIN CERTIFICATE-----\nAAAA');
    fake.advance(3_000);
    expect(errors).toHaveLength(1);
    expect(serialOf(w.current().cert)).toBe(first.serial);
    expect(fake.pending()).toHaveLength(1);
    writeTlsFilesAtomic(paths, { cert: second.cert, key: second.key, ca: ca.cert });
    fake.advance(1_000);
    expect(serialOf(w.current().cert)).toBe(second.serial);
    w.stop();
  });

  it('onChange(): listeners get every applied update, never a broken one', () => {
    const { w } = watcher();
    const seen: string[] = [];
    w.onChange((m) => seen.push(`${serialOf(m.cert)} ${m.ca.toString() === ca.cert ? 'ca' : 'ca+other'}`));
    // A broken rotation is never pushed.
    writeTlsFilesInPlace(paths, { cert: second.cert, key: second.key, ca: ca.cert }, { stopAfter: 'cert' });
    w.poll();
    expect(seen).toEqual([]);
    writeTlsFilesAtomic(paths, { cert: second.cert, key: second.key, ca: `${ca.cert}${otherCa.cert}` });
    expect(w.poll()).toBe(true);
    expect(seen).toEqual([`${second.serial} ca+other`]);
    // Unchanged files are not an update.
    expect(w.poll()).toBe(false);
    expect(seen).toHaveLength(1);
  });

  it('onChange(): the material pushed with each update is always a matching cert/key pair', () => {
    const { w } = watcher();
    const pairs: [string, string][] = [];
    w.onChange((m) => pairs.push([m.cert.toString(), m.key.toString()]));
    for (const next of [second, third, first]) {
      writeTlsFilesInPlace(paths, { cert: next.cert, key: next.key, ca: ca.cert }, { stopAfter: 'cert' });
      w.poll();
      writeTlsFilesInPlace(paths, { cert: next.cert, key: next.key, ca: ca.cert });
      w.poll();
    }
    const byCert = new Map([first, second, third].map((k) => [k.cert, k.key]));
    expect(pairs).toHaveLength(3);
    for (const [cert, key] of pairs) expect(byCert.get(cert)).toBe(key);
  });
});

describe('configuration: listen.tls and the --mtls-* flags', () => {
  it('the flags and their environment variables reach the overrides', () => {
    const cli = parseCli(
      ['--mtls-cert-file', '/certs/tls.crt', '--mtls-key-file', '/certs/tls.key', '--mtls-ca-file', '/certs/ca.crt', '--mtls-allowed-client', ROUTER_ID, '--mtls-allowed-client', INTRUDER_ID],
      {},
    );
    expect(cli.overrides).toMatchObject({
      mtlsCertFile: '/certs/tls.crt',
      mtlsKeyFile: '/certs/tls.key',
      mtlsCaFile: '/certs/ca.crt',
      mtlsAllowedClients: [ROUTER_ID, INTRUDER_ID],
    });
    const env = parseCli([], {
      PORTCULLIS_MTLS_CERT_FILE: '/e/tls.crt',
      PORTCULLIS_MTLS_KEY_FILE: '/e/tls.key',
      PORTCULLIS_MTLS_CA_FILE: '/e/ca.crt',
      PORTCULLIS_MTLS_ALLOWED_CLIENTS: `${ROUTER_ID}, ${INTRUDER_ID}`,
    });
    expect(env.overrides).toMatchObject({ mtlsCertFile: '/e/tls.crt', mtlsKeyFile: '/e/tls.key', mtlsCaFile: '/e/ca.crt', mtlsAllowedClients: [ROUTER_ID, INTRUDER_ID] });
  });

  it('overrides fill listen.tls (reloadSeconds defaults to 5) and replace what the file says', () => {
    const c = parseConfig('', 'test', { mtlsCertFile: '/c/tls.crt', mtlsKeyFile: '/c/tls.key', mtlsCaFile: '/c/ca.crt' });
    expect(c.listen.tls).toEqual({ certFile: '/c/tls.crt', keyFile: '/c/tls.key', caFile: '/c/ca.crt', reloadSeconds: 5 });
    const merged = parseConfig(
      `listen: { tls: { certFile: /f/tls.crt, keyFile: /f/tls.key, caFile: /f/ca.crt, reloadSeconds: 1, allowedClients: ["${ROUTER_ID}"] } }`,
      'test',
      { mtlsCertFile: '/o/tls.crt', mtlsAllowedClients: [INTRUDER_ID] },
    );
    expect(merged.listen.tls).toEqual({ certFile: '/o/tls.crt', keyFile: '/f/tls.key', caFile: '/f/ca.crt', reloadSeconds: 1, allowedClients: [INTRUDER_ID] });
  });

  it('a partial TLS setting is refused, naming the missing keys', () => {
    expect(() => parseConfig('', 'test', { mtlsCertFile: '/c/tls.crt' })).toThrow(/listen\.tls\.keyFile[\s\S]*listen\.tls\.caFile/);
    expect(() => parseConfig('listen: { tls: { certFile: a, keyFile: b, caFile: c, reloadSeconds: 0 } }')).toThrow(/listen\.tls\.reloadSeconds/);
  });
});
