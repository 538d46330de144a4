import { connect, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeHealthCheckRequest, healthResponseFrame, HealthStatus } from '../../../../src/adapters/envoy/grpc-health.js';
import { createGrpcServer, encodeGrpcMessage, MAX_MESSAGE_BYTES, unaryMessage, type GrpcServer } from '../../../../src/adapters/envoy/grpc-server.js';
import { loadAuthorizationClient } from '../../../../src/adapters/envoy/protos.js';
import { denial } from '../../../../src/core/errors.js';
import type { CheckInput, Decision } from '../../../../src/core/types.js';
import { toDeny } from '../../../../src/pipeline/decide.js';
import { allowEchoingPath, checkRequest, createAuthzClient, createHealthClient, readCheckResponse } from '../../../helpers/grpc-client.js';

/**
 * portcullis's gRPC transport (node:http2, no grpc-js server): the protocol
 * details a real client can hit — compression, limits, unknown methods,
 * requests that are not gRPC, health Check/Watch, drain — checked with real
 * @grpc/grpc-js clients and with raw HTTP/2 where a gRPC client cannot send
 * the bad input.
 */
const allow = allowEchoingPath;
const malformed = (): Decision => toDeny(denial('malformed_request', 'no HTTP request attributes'), 'test');

const servers: GrpcServer[] = [];
const closers: (() => void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) c();
  await Promise.all(servers.splice(0).map((s) => s.shutdown(0)));
});

async function start(handle: (i: CheckInput) => Decision | Promise<Decision> = allow): Promise<{ server: GrpcServer; address: string }> {
  const server = createGrpcServer({ handle, onMalformed: malformed });
  servers.push(server);
  const address = await server.listen('127.0.0.1:0');
  return { server, address };
}

function serializeCheck(path: string): Buffer {
  const Ctor = loadAuthorizationClient();
  const def = (Ctor as unknown as { service: { Check: { requestSerialize: (v: unknown) => Buffer } } }).service.Check;
  return def.requestSerialize(checkRequest({ path }));
}

function frame(message: Buffer, flag = 0): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out[0] = flag;
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

interface RawResponse {
  headers: IncomingHttpHeaders;
  trailers: IncomingHttpHeaders;
  body: Buffer;
}

function raw(address: string, path: string, body: Buffer, headers: Record<string, string> = {}): Promise<RawResponse> {
  const session: ClientHttp2Session = connect(`http://${address}`);
  session.on('error', () => undefined);
  closers.push(() => session.close());
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    let head: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on('response', (h) => (head = h));
    req.on('trailers', (t) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', reject);
    req.on('close', () => resolve({ headers: head, trailers, body: Buffer.concat(chunks) }));
    if (body.length > 0) req.end(body);
    else if (!req.writableEnded) req.end();
  });
}

/** grpc-status of a response: in the trailers, or in the headers of a Trailers-Only response. */
const grpcStatus = (r: RawResponse) => Number(r.trailers['grpc-status'] ?? r.headers['grpc-status']);

describe('gRPC transport on node:http2', () => {
  it('answers Check from a real grpc-js client, plain and with gzip or deflate compressed requests', async () => {
    const { address } = await start();
    for (const compression of [undefined, 'gzip', 'deflate'] as const) {
      const client = createAuthzClient(address, compression ? { compression } : {});
      closers.push(() => client.close());
      const out = readCheckResponse(await client.check(checkRequest({ path: `/c/${compression ?? 'none'}` })));
      expect(out.decision).toBe('allow');
      expect(out.headers['x-seen-path']).toBe(`/c/${compression ?? 'none'}`);
    }
  });

  it('answers an asynchronous decision, and a handler that throws or rejects with internal_error (never an allow)', async () => {
    let n = 0;
    const { address } = await start((input) => {
      n++;
      if (input.path === '/throw') throw new Error('boom');
      if (input.path === '/reject') return Promise.reject(new Error('boom'));
      return Promise.resolve(allow(input));
    });
    const client = createAuthzClient(address);
    closers.push(() => client.close());
    expect(readCheckResponse(await client.check(checkRequest({ path: '/async' }))).decision).toBe('allow');
    for (const path of ['/throw', '/reject']) {
      const out = readCheckResponse(await client.check(checkRequest({ path })));
      expect(out).toMatchObject({ decision: 'deny', reason: 'internal_error', status: 500 });
    }
    expect(n).toBe(3);
  });

  it('denies malformed_request for a truncated message, two messages, bytes that are not protobuf, or no message', async () => {
    const { address } = await start();
    const good = serializeCheck('/x');
    const cases = [
      frame(good).subarray(0, 10), // truncated
      Buffer.concat([frame(good), frame(good)]), // two messages in a unary call
      frame(Buffer.from([0xff, 0xff, 0xff])), // not protobuf
      Buffer.alloc(0), // no message at all
      frame(good, 7), // invalid flag
    ];
    for (const body of cases) {
      const r = await raw(address, '/envoy.service.auth.v3.Authorization/Check', body);
      expect(grpcStatus(r)).toBe(0);
      const Ctor = loadAuthorizationClient() as unknown as { service: { Check: { responseDeserialize: (b: Buffer) => unknown } } };
      const res = Ctor.service.Check.responseDeserialize(r.body.subarray(5)) as Parameters<typeof readCheckResponse>[0];
      expect(readCheckResponse(res).reason).toBe('malformed_request');
    }
  });

  it('accepts a gzip-compressed message sent raw, and refuses an unknown compression with UNIMPLEMENTED and grpc-accept-encoding', async () => {
    const { address } = await start();
    const ok = await raw(address, '/envoy.service.auth.v3.Authorization/Check', frame(gzipSync(serializeCheck('/gz')), 1), { 'grpc-encoding': 'gzip' });
    expect(grpcStatus(ok)).toBe(0);
    expect(ok.body.includes(Buffer.from('/gz'))).toBe(true);
    const bad = await raw(address, '/envoy.service.auth.v3.Authorization/Check', frame(serializeCheck('/x'), 1), { 'grpc-encoding': 'snappy' });
    expect(grpcStatus(bad)).toBe(12);
    expect(bad.headers['grpc-accept-encoding']).toBe('identity,deflate,gzip');
    expect(decodeURIComponent(String(bad.headers['grpc-message']))).toContain('"snappy"');
  });

  it(`refuses a request message over ${MAX_MESSAGE_BYTES} bytes with RESOURCE_EXHAUSTED and keeps serving`, async () => {
    const { address } = await start();
    const big = Buffer.alloc(MAX_MESSAGE_BYTES + 1024, 0x41);
    const r = await raw(address, '/envoy.service.auth.v3.Authorization/Check', frame(big));
    expect(grpcStatus(r)).toBe(8);
    const client = createAuthzClient(address);
    closers.push(() => client.close());
    expect(readCheckResponse(await client.check(checkRequest({ path: '/after' }))).decision).toBe('allow');
  });

  it('answers an unknown method with UNIMPLEMENTED, a GET with 405 and a non-gRPC content type with 415', async () => {
    const { address } = await start();
    const unknown = await raw(address, '/envoy.service.auth.v2.Authorization/Check', frame(Buffer.alloc(0)));
    expect(grpcStatus(unknown)).toBe(12);
    expect(decodeURIComponent(String(unknown.headers['grpc-message']))).toBe('unknown method /envoy.service.auth.v2.Authorization/Check');
    const get = await raw(address, '/envoy.service.auth.v3.Authorization/Check', Buffer.alloc(0), { ':method': 'GET' });
    expect(get.headers[':status']).toBe(405);
    const json = await raw(address, '/envoy.service.auth.v3.Authorization/Check', Buffer.from('{}'), { 'content-type': 'application/json' });
    expect(json.headers[':status']).toBe(415);
  });

  it('health: Check follows setServing, knows "" and the Authorization service, NOT_FOUND for others', async () => {
    const { server, address } = await start();
    const health = createHealthClient(address);
    closers.push(() => health.close());
    expect(await health.check('')).toBe('NOT_SERVING');
    server.setServing(true);
    expect(await health.check('')).toBe('SERVING');
    expect(await health.check('envoy.service.auth.v3.Authorization')).toBe('SERVING');
    await expect(health.check('other.Service')).rejects.toMatchObject({ code: 5 });
  });

  it('health: Watch sends the current status, every change, SERVICE_UNKNOWN for others, and ends UNAVAILABLE on shutdown', async () => {
    const { server, address } = await start();
    const health = createHealthClient(address);
    closers.push(() => health.close());
    const w = health.watch('');
    expect(await w.next((s) => s.length === 1)).toEqual(['NOT_SERVING']);
    server.setServing(true);
    expect(await w.next((s) => s.length === 2)).toEqual(['NOT_SERVING', 'SERVING']);
    server.setServing(true); // no change, nothing sent
    server.setServing(false);
    expect(await w.next((s) => s.length === 3)).toEqual(['NOT_SERVING', 'SERVING', 'NOT_SERVING']);
    const other = health.watch('other.Service');
    expect(await other.next((s) => s.length === 1)).toEqual(['SERVICE_UNKNOWN']);
    await server.shutdown(5_000);
    expect(await w.ended).toBe(14);
    expect(await other.ended).toBe(14);
  });

  it('drain: a check in flight when shutdown starts is answered; shutdown waits for it', async () => {
    let release: (() => void) | undefined;
    const { server, address } = await start((input) => new Promise((resolve) => (release = () => resolve(allow(input)))));
    const client = createAuthzClient(address);
    closers.push(() => client.close());
    const pending = client.check(checkRequest({ path: '/slow' }));
    await new Promise<void>((resolve) => {
      const poll = () => (release ? resolve() : setImmediate(poll));
      poll();
    });
    let stopped = false;
    const stopping = server.shutdown(10_000).then(() => (stopped = true));
    await new Promise((r) => setImmediate(r));
    expect(stopped).toBe(false);
    release?.();
    expect(readCheckResponse(await pending).decision).toBe('allow');
    await stopping;
    expect(stopped).toBe(true);
  });

  it('a caller that cancels before the decision is ready does not disturb the server', async () => {
    let release: (() => void) | undefined;
    const { address } = await start((input) =>
      input.path === '/slow' ? new Promise((resolve) => (release = () => resolve(allow(input)))) : allow(input),
    );
    const client = createAuthzClient(address);
    closers.push(() => client.close());
    await expect(client.check(checkRequest({ path: '/slow' }), { deadlineMs: 50 })).rejects.toMatchObject({ code: 4 });
    release?.();
    expect(readCheckResponse(await client.check(checkRequest({ path: '/fast' }))).decision).toBe('allow');
  });
});

describe('gRPC transport pieces', () => {
  it('unaryMessage: exactly one message, flagged messages decompressed, everything else a named failure', () => {
    const msg = Buffer.from('hello');
    expect(unaryMessage(frame(msg), undefined)).toEqual({ ok: true, message: msg });
    expect(unaryMessage(frame(gzipSync(msg), 1), 'gzip')).toEqual({ ok: true, message: msg });
    expect(unaryMessage(Buffer.alloc(3), undefined)).toMatchObject({ ok: false, code: 13 });
    expect(unaryMessage(frame(msg).subarray(0, 7), undefined)).toMatchObject({ ok: false, message: 'the request message is truncated' });
    expect(unaryMessage(Buffer.concat([frame(msg), frame(msg)]), undefined)).toMatchObject({ ok: false, message: 'a unary call carries more than one request message' });
    expect(unaryMessage(frame(msg, 1), 'gzip')).toMatchObject({ ok: false, code: 13 });
    expect(unaryMessage(frame(msg, 1), undefined)).toMatchObject({ ok: false, code: 12 });
    // A small compressed message that inflates past the limit is refused, not decompressed.
    const bomb = gzipSync(Buffer.alloc(MAX_MESSAGE_BYTES + 1));
    expect(unaryMessage(frame(bomb, 1), 'gzip')).toMatchObject({ ok: false, code: 8 });
  });

  it('encodeGrpcMessage percent-encodes "%" and bytes outside printable ASCII', () => {
    expect(encodeGrpcMessage('plain text: ok')).toBe('plain text: ok');
    expect(encodeGrpcMessage('100% é\n')).toBe('100%25 %C3%A9%0A');
  });

  it('health messages: request service field, response frames per status', () => {
    expect(decodeHealthCheckRequest(Buffer.from([0x0a, 0x03, 0x61, 0x62, 0x63]))).toBe('abc');
    expect(decodeHealthCheckRequest(Buffer.alloc(0))).toBe('');
    // unknown fields are skipped
    expect(decodeHealthCheckRequest(Buffer.from([0x10, 0x01, 0x0a, 0x01, 0x78]))).toBe('x');
    expect(() => decodeHealthCheckRequest(Buffer.from([0x0a, 0x05, 0x61]))).toThrow(RangeError);
    expect([...healthResponseFrame(HealthStatus.SERVING)]).toEqual([0, 0, 0, 0, 2, 8, 1]);
    expect([...healthResponseFrame(HealthStatus.UNKNOWN)]).toEqual([0, 0, 0, 0, 0]);
  });
});

