import {
  constants,
  createSecureServer,
  createServer,
  type Http2SecureServer,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import { listenOn } from '../listen.js';
import type { TLSSocket } from 'node:tls';
import { gunzipSync, inflateSync } from 'node:zlib';
import { denial } from '../../core/errors.js';
import type { CheckInput, Decision } from '../../core/types.js';
import { toDeny } from '../../pipeline/decide.js';
import { uriSans, type CertWatcher } from '../tls/cert-watcher.js';
import { decodeCheckRequest, encodeCheckResponseFrame, toCheckInput } from './grpc-mapping.js';
import { decodeHealthCheckRequest, healthResponseFrame, HealthStatus, type HealthStatusCode } from './grpc-health.js';

/**
 * portcullis's gRPC transport: the ext_authz `Check` call and the standard
 * `grpc.health.v1.Health` service, served straight on node:http2.
 *
 * Why not @grpc/grpc-js's Server: it costs ≈ 120 µs of CPU per call on top of
 * node:http2 (call objects, interceptors, metadata conversion, deadline timers,
 * stream decoders), four times the decision itself, and on a machine where
 * Envoy and portcullis share cores every such microsecond is throughput lost
 * (docs/design/performance.md, "gRPC transport"). Both services here are
 * unary (plus Health/Watch, server-streaming), so the gRPC protocol they need
 * is small and is implemented in full below: length-prefixed messages (gzip
 * and deflate accepted), status in trailers, trailers-only errors, percent-
 * encoded grpc-message, HTTP 405/415 for requests that are not gRPC, a 4 MiB
 * message limit, GOAWAY-based drain. Real @grpc/grpc-js clients and Envoy
 * exercise it in the integration and end-to-end suites.
 */
export type DecisionHandler = (input: CheckInput) => Decision | Promise<Decision>;

export interface GrpcServer {
  listen(address: string): Promise<string>;
  setServing(serving: boolean): void;
  /** Stops accepting calls, lets in-flight calls finish, forces after graceMs. */
  shutdown(graceMs: number): Promise<void>;
}

export const AUTH_SERVICE_NAME = 'envoy.service.auth.v3.Authorization';
const CHECK_PATH = `/${AUTH_SERVICE_NAME}/Check`;
const HEALTH_CHECK_PATH = '/grpc.health.v1.Health/Check';
const HEALTH_WATCH_PATH = '/grpc.health.v1.Health/Watch';
/** Largest request message accepted (grpc-js's default receive limit). */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** gRPC status codes used here (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
const Status = { OK: 0, NOT_FOUND: 5, RESOURCE_EXHAUSTED: 8, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14 } as const;

// Shared, never mutated: node:http2 copies header objects before sending them.
const OK_HEADERS: OutgoingHttpHeaders = { [constants.HTTP2_HEADER_STATUS]: 200, 'content-type': 'application/grpc' };
const OK_TRAILERS: OutgoingHttpHeaders = { 'grpc-status': '0' };
const EMPTY = Buffer.alloc(0);

/** Percent-encodes a grpc-message value (gRPC over HTTP/2: bytes outside 0x20–0x7E and '%'). */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const b of Buffer.from(message, 'utf8')) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function endWithStatus(stream: ServerHttp2Stream, code: number, message: string, extra?: OutgoingHttpHeaders): void {
  if (stream.destroyed || stream.closed) return;
  const status = { 'grpc-status': String(code), 'grpc-message': encodeGrpcMessage(message) };
  if (stream.headersSent) {
    // The response has started (a Watch stream): end it with these trailers.
    stream.end();
    stream.once('wantTrailers', () => stream.sendTrailers(status));
    return;
  }
  // Trailers-Only: one HEADERS frame with the status, END_STREAM set.
  stream.respond({ ...OK_HEADERS, ...extra, ...status }, { endStream: true });
}

function sendOkTrailers(this: ServerHttp2Stream): void {
  this.sendTrailers(OK_TRAILERS);
}

/** Sends one message and status OK; does nothing when the caller has gone (reset or closed). */
function respondUnary(stream: ServerHttp2Stream, frame: Buffer): void {
  if (stream.destroyed || stream.closed) return;
  stream.respond(OK_HEADERS, { waitForTrailers: true });
  stream.once('wantTrailers', sendOkTrailers);
  stream.end(frame);
}

function ignore(): void {}

export interface UnaryFailure {
  ok: false;
  code: number;
  message: string;
  headers?: OutgoingHttpHeaders;
}
export type UnaryResult = { ok: true; message: Buffer } | UnaryFailure;

/**
 * The single request message of a unary call from the whole request body:
 * exactly one length-prefixed message, decompressed when flagged.
 */
export function unaryMessage(body: Buffer, encoding: string | undefined): UnaryResult {
  if (body.length < 5) return { ok: false, code: Status.INTERNAL, message: 'the call carries no request message' };
  const flag = body[0];
  const len = body.readUInt32BE(1);
  if (body.length !== 5 + len) {
    return { ok: false, code: Status.INTERNAL, message: body.length < 5 + len ? 'the request message is truncated' : 'a unary call carries more than one request message' };
  }
  const message = body.subarray(5);
  if (flag === 0) return { ok: true, message };
  if (flag !== 1) return { ok: false, code: Status.INTERNAL, message: `invalid message flag ${String(flag)}` };
  try {
    if (encoding === 'gzip') return { ok: true, message: gunzipSync(message, { maxOutputLength: MAX_MESSAGE_BYTES }) };
    if (encoding === 'deflate') return { ok: true, message: inflateSync(message, { maxOutputLength: MAX_MESSAGE_BYTES }) };
  } catch (err) {
    const tooBig = (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
    return tooBig
      ? { ok: false, code: Status.RESOURCE_EXHAUSTED, message: `the request message is larger than ${MAX_MESSAGE_BYTES} bytes once decompressed` }
      : { ok: false, code: Status.INTERNAL, message: `the request message does not decompress as ${encoding}` };
  }
  return {
    ok: false,
    code: Status.UNIMPLEMENTED,
    message: `message compression ${JSON.stringify(encoding ?? 'identity')} is not supported`,
    headers: { 'grpc-accept-encoding': 'identity,deflate,gzip' },
  };
}

export function createGrpcServer(deps: {
  handle: DecisionHandler;
  onMalformed: () => Decision;
  /** mTLS: certificates from a watcher that follows file rotation; clients checked by their URI SANs. */
  tls?: { watcher: CertWatcher; clientAllowed: (uris: string[]) => boolean; onClientRefused: () => Decision };
}): GrpcServer {
  const { handle, onMalformed, tls } = deps;
  const internal = (): Decision => toDeny(denial('internal_error', 'internal error'), 'portcullis');
  let server: Http2Server | Http2SecureServer;
  if (tls) {
    const m = tls.watcher.current();
    const secure = createSecureServer({ cert: m.cert, key: m.key, ca: m.ca, requestCert: true, rejectUnauthorized: true, allowHTTP1: false });
    // New handshakes use the rotated files; open connections keep theirs.
    tls.watcher.onChange((next) => secure.setSecureContext({ cert: next.cert, key: next.key, ca: next.ca }));
    server = secure;
  } else server = createServer();

  const sessions = new Set<Http2Session>();
  /** Whether a TLS session's client certificate is on the allowlist, decided once per connection. */
  const allowed = new WeakMap<Http2Session, boolean>();
  const watches = new Map<ServerHttp2Stream, { service: string; last: HealthStatusCode }>();
  let serving = false;
  let draining = false;

  const healthOf = (service: string): HealthStatusCode | undefined =>
    service === '' || service === AUTH_SERVICE_NAME ? (serving ? HealthStatus.SERVING : HealthStatus.NOT_SERVING) : undefined;

  function clientAllowed(session: Http2Session | undefined): boolean {
    if (!tls || !session) return !tls;
    let ok = allowed.get(session);
    if (ok === undefined) {
      ok = tls.clientAllowed(uriSans((session.socket as TLSSocket).getPeerCertificate().subjectaltname));
      allowed.set(session, ok);
    }
    return ok;
  }

  function frameOf(d: Decision): Buffer {
    try {
      return encodeCheckResponseFrame(d);
    } catch {
      return encodeCheckResponseFrame(internal());
    }
  }

  function check(stream: ServerHttp2Stream, message: Buffer | undefined): void {
    if (tls && !clientAllowed(stream.session)) {
      respondUnary(stream, frameOf(tls.onClientRefused()));
      return;
    }
    let input: CheckInput | undefined;
    if (message) {
      try {
        input = toCheckInput(decodeCheckRequest(message));
      } catch {
        input = undefined;
      }
    }
    // A message that does not decode still gets a CheckResponse (malformed_request), never a gRPC error.
    if (!input) {
      respondUnary(stream, frameOf(onMalformed()));
      return;
    }
    let d: Decision | Promise<Decision>;
    try {
      d = handle(input);
    } catch {
      d = internal();
    }
    if (d instanceof Promise) {
      d.then(
        (res) => respondUnary(stream, frameOf(res)),
        () => respondUnary(stream, frameOf(internal())),
      );
    } else respondUnary(stream, frameOf(d));
  }

  function health(stream: ServerHttp2Stream, message: Buffer, watch: boolean): void {
    let service: string;
    try {
      service = decodeHealthCheckRequest(message);
    } catch {
      endWithStatus(stream, Status.INTERNAL, 'the HealthCheckRequest does not decode');
      return;
    }
    const status = healthOf(service);
    if (!watch) {
      if (status === undefined) endWithStatus(stream, Status.NOT_FOUND, `unknown service ${service}`);
      else respondUnary(stream, healthResponseFrame(status));
      return;
    }
    if (draining) {
      endWithStatus(stream, Status.UNAVAILABLE, 'the server is shutting down');
      return;
    }
    const last = status ?? HealthStatus.SERVICE_UNKNOWN;
    stream.respond(OK_HEADERS, { waitForTrailers: true });
    stream.write(healthResponseFrame(last));
    watches.set(stream, { service, last });
    stream.once('close', () => watches.delete(stream));
  }

  /** Reads a unary call's body, then hands its message (or a gRPC error) on. */
  function readUnary(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, onMessage: (message: Buffer | undefined, failure: UnaryFailure | undefined) => void): void {
    let first: Buffer | undefined;
    let chunks: Buffer[] | undefined;
    let size = 0;
    let tooBig = false;
    stream.on('data', (chunk: Buffer) => {
      if (tooBig) return;
      size += chunk.length;
      if (size > MAX_MESSAGE_BYTES + 5) {
        tooBig = true;
        first = undefined;
        chunks = undefined;
        endWithStatus(stream, Status.RESOURCE_EXHAUSTED, `the request message is larger than ${MAX_MESSAGE_BYTES} bytes`);
        // Stop the client sending the rest; the status above goes out first.
        stream.close(constants.NGHTTP2_NO_ERROR);
        return;
      }
      if (first === undefined) first = chunk;
      else (chunks ??= [first]).push(chunk);
    });
    stream.on('end', () => {
      if (tooBig) return;
      const body = chunks ? Buffer.concat(chunks, size) : (first ?? EMPTY);
      const enc = headers['grpc-encoding'];
      const r = unaryMessage(body, typeof enc === 'string' && enc !== 'identity' ? enc : undefined);
      if (r.ok) onMessage(r.message, undefined);
      else onMessage(undefined, r);
    });
  }

  function onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    // A stream the client resets must not take the process down.
    stream.on('error', ignore);
    const path = headers[constants.HTTP2_HEADER_PATH];
    if (headers[constants.HTTP2_HEADER_METHOD] !== 'POST') {
      stream.respond({ [constants.HTTP2_HEADER_STATUS]: 405, allow: 'POST' }, { endStream: true });
      return;
    }
    const ct = headers[constants.HTTP2_HEADER_CONTENT_TYPE];
    if (typeof ct !== 'string' || !(ct === 'application/grpc' || ct.startsWith('application/grpc+') || ct.startsWith('application/grpc;'))) {
      stream.respond({ [constants.HTTP2_HEADER_STATUS]: 415, 'accept-post': 'application/grpc' }, { endStream: true });
      return;
    }
    if (path === CHECK_PATH) {
      readUnary(stream, headers, (message, failure) => {
        // Compression we cannot read is the client's protocol problem, reported as gRPC says;
        // every other failure to get a message is a malformed request, denied.
        if (failure && failure.code === Status.UNIMPLEMENTED) endWithStatus(stream, failure.code, failure.message, failure.headers);
        else check(stream, message);
      });
    } else if (path === HEALTH_CHECK_PATH || path === HEALTH_WATCH_PATH) {
      readUnary(stream, headers, (message, failure) => {
        if (failure || !message) endWithStatus(stream, failure?.code ?? Status.INTERNAL, failure?.message ?? 'no request message', failure?.headers);
        else health(stream, message, path === HEALTH_WATCH_PATH);
      });
    } else {
      endWithStatus(stream, Status.UNIMPLEMENTED, `unknown method ${String(path)}`);
      stream.resume();
    }
  }

  server.on('stream', onStream);
  server.on('session', (session: Http2Session) => {
    sessions.add(session);
    session.on('error', ignore);
    session.once('close', () => sessions.delete(session));
    if (draining) session.close();
  });
  server.on('sessionError', ignore);

  return {
    listen: (address) => listenOn(server, address),
    setServing(next) {
      serving = next;
      for (const [stream, w] of watches) {
        const s = healthOf(w.service) ?? HealthStatus.SERVICE_UNKNOWN;
        if (s !== w.last && !stream.destroyed && !stream.closed) {
          w.last = s;
          stream.write(healthResponseFrame(s));
        }
      }
    },
    shutdown(graceMs) {
      draining = true;
      for (const stream of watches.keys()) endWithStatus(stream, Status.UNAVAILABLE, 'the server is shutting down');
      watches.clear();
      return new Promise((resolve) => {
        let done = false;
        const finish = () => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          for (const s of sessions) s.destroy();
          finish();
        }, graceMs);
        timer.unref();
        if (!server.listening) {
          for (const s of sessions) s.destroy();
          finish();
          return;
        }
        // No new connections; GOAWAY on every open one, whose in-flight calls finish.
        server.close(() => finish());
        for (const s of sessions) s.close();
      });
    },
  };
}
