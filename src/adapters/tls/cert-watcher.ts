import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { PortcullisError } from '../../core/errors.js';
import type { Scheduler, TimerHandle } from '../../core/types.js';

/**
 * portcullis's own serving certificate, key and client CA, read from files (the
 * files a spiffe-helper sidecar or a Kubernetes Secret mount writes) and
 * re-read when they change. A new set is used only when it is complete and
 * consistent (the key matches the certificate, every PEM parses); a half-written
 * rotation is ignored until the next poll, so handshakes never see a broken
 * pair. Existing connections are not touched.
 */
export interface TlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  notAfter: string;
  /** URI SANs of the serving certificate (its SPIFFE ID in SPIRE mode). */
  uris: string[];
  fingerprint: string;
}

export interface CertWatcher {
  current(): TlsMaterial;
  onChange(listener: (m: TlsMaterial) => void): void;
  start(): void;
  stop(): void;
  /** Re-reads now; returns true when a new, valid set was applied. */
  poll(): boolean;
}

export function uriSans(subjectAltName: string | undefined): string[] {
  if (!subjectAltName) return [];
  const out: string[] = [];
  for (const part of subjectAltName.split(', ')) if (part.startsWith('URI:')) out.push(part.slice(4));
  return out;
}

export function loadTlsMaterial(files: TlsFiles): TlsMaterial {
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f);
    } catch (err) {
      throw new PortcullisError('ERR_CONFIG_READ', `cannot read the ${what} file ${f}: ${(err as Error).message}`);
    }
  };
  const cert = read(files.certFile, 'TLS certificate');
  const key = read(files.keyFile, 'TLS private key');
  const ca = read(files.caFile, 'client CA');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new PortcullisError('ERR_CONFIG_INVALID', `${files.certFile} is not a PEM certificate: ${(err as Error).message}`);
  }
  try {
    if (!x509.checkPrivateKey(createPrivateKey(key))) {
      throw new PortcullisError('ERR_CONFIG_INVALID', `${files.keyFile} does not match the certificate in ${files.certFile}`);
    }
  } catch (err) {
    if (err instanceof PortcullisError) throw err;
    throw new PortcullisError('ERR_CONFIG_INVALID', `${files.keyFile} is not a PEM private key: ${(err as Error).message}`);
  }
  try {
    new X509Certificate(ca);
  } catch (err) {
    throw new PortcullisError('ERR_CONFIG_INVALID', `${files.caFile} is not a PEM CA certificate: ${(err as Error).message}`);
  }
  const fingerprint = createHash('sha256').update(cert).update(key).update(ca).digest('hex');
  return { cert, key, ca, notAfter: x509.validTo, uris: uriSans(x509.subjectAltName), fingerprint };
}

export function createCertWatcher(deps: {
  files: TlsFiles;
  scheduler: Scheduler;
  intervalMs: number;
  onError?: (message: string) => void;
  onReload?: (m: TlsMaterial) => void;
}): CertWatcher {
  let material = loadTlsMaterial(deps.files);
  let lastError = '';
  const listeners = new Set<(m: TlsMaterial) => void>();
  let timer: TimerHandle | undefined;
  let running = false;

  function poll(): boolean {
    let next: TlsMaterial;
    try {
      next = loadTlsMaterial(deps.files);
    } catch (err) {
      const msg = (err as Error).message;
      if (msg !== lastError) deps.onError?.(msg);
      lastError = msg;
      return false;
    }
    lastError = '';
    if (next.fingerprint === material.fingerprint) return false;
    material = next;
    deps.onReload?.(next);
    for (const l of listeners) l(next);
    return true;
  }

  function schedule(): void {
    if (!running) return;
    timer = deps.scheduler.setTimeout(() => {
      poll();
      schedule();
    }, deps.intervalMs);
  }

  return {
    current: () => material,
    onChange: (l) => listeners.add(l),
    start() {
      if (running) return;
      running = true;
      schedule();
    },
    stop() {
      running = false;
      if (timer) deps.scheduler.clearTimeout(timer);
    },
    poll,
  };
}
