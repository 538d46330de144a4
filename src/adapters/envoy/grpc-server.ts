import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { gunzipSync, inflateSync } from 'node:zlib';
import { listenOn } from '../listen.js';
import { denial } from '../../core/errors.js';
import type { CheckInput, Decision } from '../../core/types.js';
import { toDeny } from '../../pipeline/decide.js';
import { uriSans, type CertWatcher } from '../tls/cert-watcher.js';
import { createCheckRequestDecoder, createCheckResponseEncoder } from './grpc-mapping.js';
import { decodeHealthCheckRequest, healthResponseFrame, HealthStatus, type HealthStatusCode } from './grpc-health.js';
import { DEFAULT_LIMITS, H2Connection, type H2Handler, type H2Limits, type H2Stream } from './h2/connection.js';
import { encodeHeaderBlock } from './h2/hpack.js';

/**
 * portcullis's gRPC transport: the ext_authz `Check` call and the standard
 * `grpc.health.v1.Health` service, served on portcullis's own HTTP/2
 * connection layer (`h2/connection.ts`, HPACK in `h2/hpack.ts`) over plain
 * TCP or TLS (ALPN h2, client certificates required under mTLS).
 *
 * Why not @grpc/grpc-js's Server, nor node:http2: grpc-js costs ≈ 120 µs of
 * CPU per call on top of node:http2, and node:http2 itself ≈ 45 µs per call
 * through Envoy (a Duplex per stream, header objects, events), against ≈ 10 µs
 * for the lean framing (docs/design/performance.md, "gRPC transport"). Both
 * services here are unary (plus Health/Watch, server-streaming), so the gRPC
 * protocol they need is small and is implemented in full below:
 * length-prefixed messages (gzip and deflate accepted), status in trailers,
 * trailers-only errors, percent-encoded grpc-message, HTTP 405/415 for
 * requests that are not gRPC, a 4 MiB message limit, GOAWAY-based drain.
 * Real @grpc/grpc-js clients, node:http2 clients and Envoy exercise it in the
 * unit, integration and end-to-end suites.
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

type Fields = readonly (readonly [string, string])[];
const OK_FIELDS: Fields = [
  [':status', '200'],
  ['content-type', 'application/grpc'],
];
/** HPACK blocks computed once: every OK response sends the same bytes. */
const OK_HEADERS = encodeHeaderBlock(OK_FIELDS);
const OK_TRAILERS = encodeHeaderBlock([['grpc-status', '0']]);
const METHOD_NOT_ALLOWED = encodeHeaderBlock([
  [':status', '405'],
  ['allow', 'POST'],
]);
const UNSUPPORTED_MEDIA_TYPE = encodeHeaderBlock([
  [':status', '415'],
  ['accept-post', 'application/grpc'],
]);
/** grpc-message is ours (never request data); long ones are cut so a status always fits one frame. */
const MAX_GRPC_MESSAGE = 1024;

/** Percent-encodes a grpc-message value (gRPC over HTTP/2: bytes outside 0x20–0x7E and '%'). */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const b of Buffer.from(message, 'utf8')) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function endWithStatus(stream: H2Stream, code: number, message: string, extra?: Fields): void {
  const status: [string, string][] = [
    ['grpc-status', String(code)],
    ['grpc-message', encodeGrpcMessage(message.length > MAX_GRPC_MESSAGE ? message.slice(0, MAX_GRPC_MESSAGE) : message)],
  ];
  if (stream.headersSent) {
    // The response has started (a Watch stream): end it with these trailers.
    stream.end(encodeHeaderBlock(status));
    return;
  }
  // Trailers-Only: one HEADERS frame with the status, END_STREAM set.
  stream.respond(encodeHeaderBlock([...OK_FIELDS, ...(extra ?? []), ...status]), undefined, undefined);
}

/** Sends one message and status OK; does nothing when the caller has gone (reset or closed). */
function respondUnary(stream: H2Stream, frame: Buffer): void {
  stream.respond(OK_HEADERS, frame, OK_TRAILERS);
}

function ignore(): void {}

export interface UnaryFailure {
  ok: false;
  code: number;
  message: string;
  headers?: Fields;
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
    headers: [['grpc-accept-encoding', 'identity,deflate,gzip']],
  };
}

const isGrpcContentType = (ct: string | undefined): boolean =>
  ct !== undefined && (ct === 'application/grpc' || ct.startsWith('application/grpc+') || ct.startsWith('application/grpc;'));

export function createGrpcServer(deps: {
  handle: DecisionHandler;
  onMalformed: () => Decision;
  /** mTLS: certificates from a watcher that follows file rotation; clients checked by their URI SANs. */
  tls?: { watcher: CertWatcher; clientAllowed: (uris: string[]) => boolean; onClientRefused: () => Decision };
  /** HTTP/2 limits (tests); the defaults are in h2/connection.ts. */
  limits?: Partial<H2Limits>;
}): GrpcServer {
  const { handle, onMalformed, tls } = deps;
  /** The largest message the HTTP/2 body limit lets through (the limit counts the 5-byte gRPC prefix). */
  const maxMessageBytes = (deps.limits?.maxBodyBytes ?? DEFAULT_LIMITS.maxBodyBytes) - 5;
  const internal = (): Decision => toDeny(denial('internal_error', 'internal error'), 'portcullis');
  const connections = new Set<H2Connection>();
  /** Whether a TLS connection's client certificate is on the allowlist, decided once per connection. */
  const allowed = new WeakMap<H2Connection, boolean>();
  const watches = new Map<H2Stream, { service: string; last: HealthStatusCode }>();
  let serving = false;
  let draining = false;

  const healthOf = (service: string): HealthStatusCode | undefined =>
    service === '' || service === AUTH_SERVICE_NAME ? (serving ? HealthStatus.SERVING : HealthStatus.NOT_SERVING) : undefined;

  const requests = createCheckRequestDecoder();
  const responses = createCheckResponseEncoder();

  function frameOf(d: Decision): Buffer {
    try {
      return responses.frame(d);
    } catch {
      return responses.frame(internal());
    }
  }

  function check(stream: H2Stream, message: Buffer | undefined): void {
    if (tls && allowed.get(stream.conn) !== true) {
      respondUnary(stream, frameOf(tls.onClientRefused()));
      return;
    }
    let input: CheckInput | undefined;
    if (message) {
      try {
        input = requests.decode(message);
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

  function health(stream: H2Stream, message: Buffer, watch: boolean): void {
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
    stream.sendHeaders(OK_HEADERS);
    stream.sendData(healthResponseFrame(last));
    watches.set(stream, { service, last });
    stream.onCancel = () => watches.delete(stream);
  }

  const handler: H2Handler = {
    onHeaders(stream) {
      if (stream.method !== 'POST') {
        stream.respond(METHOD_NOT_ALLOWED, undefined, undefined);
        return true;
      }
      if (!isGrpcContentType(stream.headers['content-type'])) {
        stream.respond(UNSUPPORTED_MEDIA_TYPE, undefined, undefined);
        return true;
      }
      const path = stream.path;
      if (path === CHECK_PATH || path === HEALTH_CHECK_PATH || path === HEALTH_WATCH_PATH) return false;
      endWithStatus(stream, Status.UNIMPLEMENTED, `unknown method ${path}`);
      return true;
    },
    onRequest(stream, body) {
      const enc = stream.headers['grpc-encoding'];
      const r = unaryMessage(body, enc !== undefined && enc !== 'identity' ? enc : undefined);
      if (stream.path === CHECK_PATH) {
        // Compression we cannot read is the client's protocol problem, reported as gRPC says;
        // every other failure to get a message is a malformed request, denied.
        if (!r.ok && r.code === Status.UNIMPLEMENTED) endWithStatus(stream, r.code, r.message, r.headers);
        else check(stream, r.ok ? r.message : undefined);
      } else if (!r.ok) endWithStatus(stream, r.code, r.message, r.headers);
      else health(stream, r.message, stream.path === HEALTH_WATCH_PATH);
    },
    onBodyTooLarge(stream) {
      endWithStatus(stream, Status.RESOURCE_EXHAUSTED, `the request message is larger than ${maxMessageBytes} bytes`);
    },
  };

  function accept(socket: Socket): H2Connection {
    const conn = new H2Connection({ socket, handler, limits: deps.limits, onClose: (c) => connections.delete(c) });
    connections.add(conn);
    if (draining) conn.close();
    return conn;
  }

  let server: Server;
  if (tls) {
    const m = tls.watcher.current();
    // The TLS handshake gets the same bound as the HTTP/2 one (Node's default would be 120 s).
    const handshakeTimeout = deps.limits?.handshakeTimeoutMs ?? DEFAULT_LIMITS.handshakeTimeoutMs;
    const secure = createTlsServer({
      // A client's half-close must not end our side before its calls are answered (H2Connection.onPeerEnd).
      allowHalfOpen: true,
      cert: m.cert,
      key: m.key,
      ca: m.ca,
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
      ...(handshakeTimeout > 0 ? { handshakeTimeout } : {}),
    });
    // New handshakes use the rotated files; open connections keep theirs.
    tls.watcher.onChange((next) => secure.setSecureContext({ cert: next.cert, key: next.key, ca: next.ca }));
    secure.on('secureConnection', (socket: TLSSocket) => {
      // gRPC is HTTP/2 only: a client that did not negotiate h2 is dropped (as node:http2 does without allowHTTP1).
      if (socket.alpnProtocol !== 'h2') {
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
      const conn = accept(socket);
      allowed.set(conn, tls.clientAllowed(uriSans(socket.getPeerCertificate().subjectaltname)));
    });
    secure.on('tlsClientError', ignore);
    server = secure;
  } else {
    server = createNetServer({ noDelay: true, allowHalfOpen: true }, (socket) => void accept(socket));
  }
  server.on('error', ignore);

  return {
    listen: (address) => listenOn(server, address),
    setServing(next) {
      serving = next;
      for (const [stream, w] of watches) {
        const s = healthOf(w.service) ?? HealthStatus.SERVICE_UNKNOWN;
        if (s !== w.last && !stream.cancelled) {
          w.last = s;
          stream.sendData(healthResponseFrame(s));
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
          for (const c of connections) c.destroy();
          finish();
        }, graceMs);
        timer.unref();
        if (!server.listening) {
          for (const c of connections) c.destroy();
          finish();
          return;
        }
        // No new connections; GOAWAY on every open one, whose in-flight calls finish.
        server.close(() => finish());
        for (const c of connections) c.close();
      });
    },
  };
}
