import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { listenOn } from '../listen.js';
import type { TLSSocket } from 'node:tls';
import { uriSans, type CertWatcher } from '../tls/cert-watcher.js';
import type { CheckInput, Decision } from '../../core/types.js';
import { denyBody } from './grpc-mapping.js';

/**
 * ext_authz over HTTP (Envoy `http_service`, Envoy Gateway `extAuth.http`,
 * Istio `envoyExtAuthzHttp`). Envoy sends the original method, path and the
 * allowed headers; 200 means allow and the response headers listed in
 * `allowed_upstream_headers` are copied upstream; any other status is passed
 * to the client with its headers and body. Headers to strip from the upstream
 * request go in `x-envoy-auth-headers-to-remove`.
 */
export interface HttpAuthzServer {
  listen(address: string): Promise<string>;
  shutdown(graceMs: number): Promise<void>;
}

/**
 * The peer's SPIFFE ID from Envoy's `x-forwarded-client-cert` (XFCC): the URI of
 * the element the nearest Envoy added (the last one). Only trustworthy when that
 * Envoy sanitizes the header (`forward_client_cert_details: SANITIZE_SET`), which
 * is why reading it is opt-in (`listen.httpTrustXfcc`).
 */
export function xfccUri(header: string): string | undefined {
  const elements: string[] = [];
  let cur = '';
  let quoted = false;
  for (const c of header) {
    if (c === '"') quoted = !quoted;
    if (c === ',' && !quoted) {
      elements.push(cur);
      cur = '';
    } else cur += c;
  }
  elements.push(cur);
  const last = elements[elements.length - 1] ?? '';
  for (const pair of last.split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim().toLowerCase() === 'uri') {
      const v = pair.slice(eq + 1).trim().replace(/^"|"$/g, '');
      return v.length > 0 ? v : undefined;
    }
  }
  return undefined;
}

export function toHttpCheckInput(req: IncomingMessage, pathPrefix: string, trustXfcc = false): CheckInput {
  const headers = new Map<string, string>();
  const counts = new Map<string, number>();
  const distinct = req.headersDistinct;
  for (const k in distinct) {
    const values = distinct[k] ?? [];
    // Repeated Cookie lines are one cookie string (RFC 9113 8.2.3); other headers join with ','.
    headers.set(k, values.join(k === 'cookie' ? '; ' : ','));
    counts.set(k, values.length);
  }
  let url = req.url ?? '/';
  if (pathPrefix && url.startsWith(pathPrefix) && /^($|[/?])/.test(url.slice(pathPrefix.length))) {
    url = url.slice(pathPrefix.length) || '/';
    if (url.startsWith('?')) url = `/${url}`;
  }
  const q = url.indexOf('?');
  return {
    method: req.method ?? '',
    host: headers.get('host') ?? '',
    path: q >= 0 ? url.slice(0, q) : url,
    query: q >= 0 ? url.slice(q + 1) : '',
    headers,
    headerCounts: counts,
    peerPrincipal: trustXfcc ? xfccUri(headers.get('x-forwarded-client-cert') ?? '') : undefined,
    contextExtensions: new Map(),
  };
}

/**
 * Node refuses header values outside Latin-1 or with CR/LF. Claims can hold either:
 * control characters become spaces and the UTF-8 bytes go on the wire as they are
 * (what Envoy would send for the same value in gRPC mode).
 */
function wireValue(v: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = v.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, ' ');
  // eslint-disable-next-line no-control-regex
  return /[^\x00-\xff]/.test(clean) ? Buffer.from(clean, 'utf8').toString('latin1') : clean;
}

function writeDecision(res: ServerResponse, d: Decision, draining: boolean): void {
  try {
    writeDecisionUnsafe(res, d, draining);
  } catch {
    // Never crash and never allow: a response we cannot write becomes a plain 500.
    if (!res.headersSent) {
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      res.writeHead(500, { 'content-type': 'application/json', 'x-portcullis-reason': 'internal_error' });
      res.end(denyBody('internal_error', 'internal error'));
    } else res.destroy();
  }
}

function writeDecisionUnsafe(res: ServerResponse, d: Decision, draining: boolean): void {
  // While draining, every answer closes its connection so keep-alive pools let go and shutdown completes.
  if (draining) res.setHeader('connection', 'close');
  if (d.kind === 'allow') {
    for (const h of d.headersToSet) res.setHeader(h.name, wireValue(h.value));
    if (d.headersToRemove.length > 0) res.setHeader('x-envoy-auth-headers-to-remove', d.headersToRemove.join(','));
    res.writeHead(200);
    res.end();
    return;
  }
  for (const h of d.headers) res.setHeader(h.name, wireValue(h.value));
  res.setHeader('x-portcullis-reason', d.reason);
  res.setHeader('content-type', 'application/json');
  res.writeHead(d.status);
  res.end(denyBody(d.reason, d.message));
}

export function createHttpAuthzServer(deps: {
  handle: (input: CheckInput) => Decision | Promise<Decision>;
  onError: () => Decision;
  pathPrefix: string;
  trustXfcc?: boolean;
  tls?: { watcher: CertWatcher; clientAllowed: (uris: string[]) => boolean; onClientRefused: () => Decision };
}): HttpAuthzServer {
  const tls = deps.tls;
  let draining = false;
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    // The request body is never needed: drain it so the connection can be reused.
    req.resume();
    let d: Decision | Promise<Decision>;
    try {
      if (tls && !tls.clientAllowed(uriSans((req.socket as TLSSocket).getPeerCertificate().subjectaltname))) {
        writeDecision(res, tls.onClientRefused(), draining);
        return;
      }
      d = deps.handle(toHttpCheckInput(req, deps.pathPrefix, deps.trustXfcc === true));
    } catch {
      d = deps.onError();
    }
    if (d instanceof Promise) d.then((r) => writeDecision(res, r, draining), () => writeDecision(res, deps.onError(), draining));
    else writeDecision(res, d, draining);
  };
  let server: Server;
  if (tls) {
    const m = tls.watcher.current();
    const https = createTlsServer({ cert: m.cert, key: m.key, ca: m.ca, requestCert: true, rejectUnauthorized: true }, onRequest);
    // New handshakes use the rotated files; open connections keep theirs.
    tls.watcher.onChange((next) => https.setSecureContext({ cert: next.cert, key: next.key, ca: next.ca }));
    server = https;
  } else server = createServer({ requireHostHeader: false }, onRequest);
  server.keepAliveTimeout = 65_000;
  return {
    listen: (address) => listenOn(server, address),
    shutdown(graceMs) {
      draining = true;
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          server.closeAllConnections();
          resolve();
        }, graceMs);
        timer.unref();
        server.close(() => {
          clearTimeout(timer);
          resolve();
        });
        server.closeIdleConnections();
      });
    },
  };
}
