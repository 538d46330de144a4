import { connect as connectH2 } from 'node:http2';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createGrpcServer, type GrpcServer } from '../../../../../src/adapters/envoy/grpc-server.js';
import { H2Connection, H2Error, FrameType, type H2Handler, type H2Limits, type H2Stream } from '../../../../../src/adapters/envoy/h2/connection.js';
import { createHpackDecoder, encodeHeaderBlock } from '../../../../../src/adapters/envoy/h2/hpack.js';
import { loadAuthorizationClient } from '../../../../../src/adapters/envoy/protos.js';
import { denial } from '../../../../../src/core/errors.js';
import type { CheckInput, Decision } from '../../../../../src/core/types.js';
import { toDeny } from '../../../../../src/pipeline/decide.js';
import { allowEchoingPath, checkRequest, readCheckResponse, type CheckOutcome, type CheckResponse__Output } from '../../../../helpers/grpc-client.js';

/**
 * portcullis's HTTP/2 layer (h2/connection.ts) against hostile and unusual
 * clients: raw node:net sockets speaking HTTP/2 frame by frame, so every
 * malformed, flooding or out-of-order input a real client library would never
 * send can be sent, and every frame the server answers with (GOAWAY and
 * RST_STREAM codes included) can be checked. Mostly through the real gRPC port
 * (createGrpcServer); through H2Connection directly where a test needs to see
 * the connection's own state (open stream count, socket writes).
 *
 * No test waits for time: "nothing was sent" is checked by sending a PING
 * afterwards and waiting for its ACK (the server answers frames in order).
 */

// ---------------------------------------------------------------- frames (client side)

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const F = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;
const S = { HEADER_TABLE_SIZE: 1, ENABLE_PUSH: 2, MAX_CONCURRENT_STREAMS: 3, INITIAL_WINDOW_SIZE: 4, MAX_FRAME_SIZE: 5, MAX_HEADER_LIST_SIZE: 6 } as const;
const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';

function frame(type: number, flags: number, sid: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(9 + payload.length);
  b.writeUIntBE(payload.length, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(sid, 5);
  payload.copy(b, 9);
  return b;
}
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
function settings(pairs: readonly (readonly [number, number])[] = []): Buffer {
  const p = Buffer.alloc(6 * pairs.length);
  pairs.forEach(([id, v], i) => {
    p.writeUInt16BE(id, i * 6);
    p.writeUInt32BE(v >>> 0, i * 6 + 2);
  });
  return frame(FrameType.SETTINGS, 0, 0, p);
}
const settingsAck = (): Buffer => frame(FrameType.SETTINGS, F.ACK, 0);
const ping = (data: Buffer, flags = 0): Buffer => frame(FrameType.PING, flags, 0, data);
const rst = (sid: number, code: number): Buffer => frame(FrameType.RST_STREAM, 0, sid, u32(code));
const windowUpdate = (sid: number, inc: number): Buffer => frame(FrameType.WINDOW_UPDATE, 0, sid, u32(inc));
function goaway(lastStreamId: number, code: number): Buffer {
  return frame(FrameType.GOAWAY, 0, 0, Buffer.concat([u32(lastStreamId), u32(code)]));
}
function priority(sid: number, dependsOn: number, weight = 16): Buffer {
  return frame(FrameType.PRIORITY, 0, sid, Buffer.concat([u32(dependsOn), Buffer.from([weight])]));
}
const data = (sid: number, payload: Buffer, endStream = false): Buffer => frame(FrameType.DATA, endStream ? F.END_STREAM : 0, sid, payload);
function paddedData(sid: number, payload: Buffer, pad: number, endStream = false): Buffer {
  return frame(FrameType.DATA, F.PADDED | (endStream ? F.END_STREAM : 0), sid, Buffer.concat([Buffer.from([pad]), payload, Buffer.alloc(pad)]));
}
type Fields = readonly (readonly [string, string])[];
function headers(sid: number, fields: Fields | Buffer, opts: { endStream?: boolean; endHeaders?: boolean; pad?: number; dependsOn?: number } = {}): Buffer {
  const block = Buffer.isBuffer(fields) ? fields : encodeHeaderBlock(fields);
  let flags = (opts.endStream ? F.END_STREAM : 0) | (opts.endHeaders === false ? 0 : F.END_HEADERS);
  const parts: Buffer[] = [];
  if (opts.pad !== undefined) {
    flags |= F.PADDED;
    parts.push(Buffer.from([opts.pad]));
  }
  if (opts.dependsOn !== undefined) {
    flags |= F.PRIORITY;
    parts.push(u32(opts.dependsOn), Buffer.from([200]));
  }
  parts.push(block);
  if (opts.pad !== undefined) parts.push(Buffer.alloc(opts.pad));
  return frame(FrameType.HEADERS, flags, sid, Buffer.concat(parts));
}
/** An HPACK integer (RFC 7541 §5.1) with an N-bit prefix, `flags` in the prefix octet's high bits. */
function hpackInt(value: number, prefixBits: number, flags: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([flags | value]);
  const out = [flags | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}
const continuation = (sid: number, block: Buffer, endHeaders: boolean): Buffer => frame(FrameType.CONTINUATION, endHeaders ? F.END_HEADERS : 0, sid, block);

/** The request headers Envoy sends for a Check call. */
function checkHeaders(overrides: Fields = [], path = CHECK_PATH): Fields {
  return [
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'portcullis'],
    ['content-type', 'application/grpc'],
    ['te', 'trailers'],
    ...overrides,
  ];
}

let checkCtor: ReturnType<typeof loadAuthorizationClient> | undefined;
function checkService(): { Check: { requestSerialize: (v: unknown) => Buffer; responseDeserialize: (b: Buffer) => unknown } } {
  checkCtor ??= loadAuthorizationClient();
  return (checkCtor as unknown as { service: { Check: { requestSerialize: (v: unknown) => Buffer; responseDeserialize: (b: Buffer) => unknown } } }).service;
}
/** One length-prefixed gRPC message: a CheckRequest for `path`. */
function checkBody(path: string): Buffer {
  const msg = checkService().Check.requestSerialize(checkRequest({ path }));
  const out = Buffer.alloc(5 + msg.length);
  out.writeUInt32BE(msg.length, 1);
  msg.copy(out, 5);
  return out;
}
/** A whole Check call on one stream: HEADERS, then the message in one DATA frame with END_STREAM. */
const checkCall = (sid: number, path: string): Buffer => Buffer.concat([headers(sid, checkHeaders()), data(sid, checkBody(path), true)]);

// ---------------------------------------------------------------- frames (server side)

interface Frame {
  type: number;
  flags: number;
  sid: number;
  payload: Buffer;
  /** Decoded header fields of a HEADERS frame (with its CONTINUATIONs). */
  fields?: [string, string][];
}

interface Response {
  headers: Record<string, string>;
  data: Buffer;
  trailers: Record<string, string>;
  frames: Frame[];
}

const fieldsOf = (f: Frame): Record<string, string> => Object.fromEntries(f.fields ?? []);

/** A raw HTTP/2 client connection: writes bytes, parses every frame the server sends. */
class Peer {
  readonly frames: Frame[] = [];
  /** How many 'data' events the socket had (reads of server output). */
  reads = 0;
  closed = false;
  readonly closedP: Promise<void>;
  private buf = Buffer.alloc(0);
  private readonly hpack = createHpackDecoder({ maxTableSize: 4096, maxHeaderListSize: 1 << 20 });
  private hb: { head: Frame; parts: Buffer[] } | undefined;
  private waiters: { pred: (f: Frame) => boolean; resolve: (f: Frame) => void; reject: (e: Error) => void; what: string }[] = [];

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    this.closedP = new Promise((resolve) => {
      socket.on('close', () => {
        this.closed = true;
        for (const w of this.waiters.splice(0)) w.reject(new Error(`connection closed while waiting for ${w.what}; frames: ${this.describe()}`));
        resolve();
      });
    });
  }

  write(...bufs: Buffer[]): void {
    if (!this.socket.destroyed) this.socket.write(Buffer.concat(bufs));
  }

  private onData(chunk: Buffer): void {
    this.reads++;
    this.buf = Buffer.concat([this.buf, chunk]);
    while (this.buf.length >= 9) {
      const len = this.buf.readUIntBE(0, 3);
      if (this.buf.length < 9 + len) break;
      const f: Frame = { type: this.buf[3]!, flags: this.buf[4]!, sid: this.buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(this.buf.subarray(9, 9 + len)) };
      this.buf = this.buf.subarray(9 + len);
      this.onFrame(f);
    }
  }

  private onFrame(f: Frame): void {
    if (f.type === FrameType.HEADERS) {
      if (f.flags & F.END_HEADERS) this.decode(f, [f.payload]);
      else this.hb = { head: f, parts: [f.payload] };
      return;
    }
    if (f.type === FrameType.CONTINUATION && this.hb) {
      this.hb.parts.push(f.payload);
      if (f.flags & F.END_HEADERS) {
        const { head, parts } = this.hb;
        this.hb = undefined;
        this.decode(head, parts);
      }
      return;
    }
    this.deliver(f);
  }

  private decode(head: Frame, parts: Buffer[]): void {
    const fields: [string, string][] = [];
    this.hpack.decode(Buffer.concat(parts), (n, v) => fields.push([n, v]));
    head.fields = fields;
    this.deliver(head);
  }

  private deliver(f: Frame): void {
    this.frames.push(f);
    this.waiters = this.waiters.filter((w) => {
      if (!w.pred(f)) return true;
      w.resolve(f);
      return false;
    });
  }

  /** The first frame (already received or still to come) that matches. */
  waitFor(pred: (f: Frame) => boolean, what = 'a frame'): Promise<Frame> {
    const seen = this.frames.find(pred);
    if (seen) return Promise.resolve(seen);
    if (this.closed) return Promise.reject(new Error(`connection closed; no ${what} among ${this.describe()}`));
    return new Promise((resolve, reject) => this.waiters.push({ pred, resolve, reject, what }));
  }

  async goaway(): Promise<{ lastStreamId: number; code: number; debug: string }> {
    const f = await this.waitFor((x) => x.type === FrameType.GOAWAY, 'GOAWAY');
    return { lastStreamId: f.payload.readUInt32BE(0) & 0x7fffffff, code: f.payload.readUInt32BE(4), debug: f.payload.subarray(8).toString('utf8') };
  }

  async rstCode(sid: number): Promise<number> {
    const f = await this.waitFor((x) => x.type === FrameType.RST_STREAM && x.sid === sid, `RST_STREAM on ${sid}`);
    return f.payload.readUInt32BE(0);
  }

  /** Waits until the server has processed everything sent before (PING round trip). */
  async sync(): Promise<void> {
    const token = Buffer.alloc(8);
    token.writeDoubleBE(Math.random());
    this.write(ping(token));
    await this.waitFor((f) => f.type === FrameType.PING && (f.flags & F.ACK) !== 0 && f.payload.equals(token), 'PING ACK');
  }

  /** The whole response on a stream, once the server ends it (END_STREAM). Rejects if the stream is reset instead. */
  async response(sid: number): Promise<Response> {
    const end = await this.waitFor(
      (f) => f.sid === sid && (f.type === FrameType.RST_STREAM || ((f.type === FrameType.HEADERS || f.type === FrameType.DATA) && (f.flags & F.END_STREAM) !== 0)),
      `the end of stream ${sid}`,
    );
    if (end.type === FrameType.RST_STREAM) throw new Error(`stream ${sid} was reset with ${end.payload.readUInt32BE(0)}`);
    const frames = this.frames.filter((f) => f.sid === sid);
    const hs = frames.filter((f) => f.type === FrameType.HEADERS);
    return {
      headers: hs[0] ? fieldsOf(hs[0]) : {},
      trailers: hs.length > 1 && hs[1] ? fieldsOf(hs[1]) : {},
      data: Buffer.concat(frames.filter((f) => f.type === FrameType.DATA).map((f) => f.payload)),
      frames,
    };
  }

  framesOn(sid: number): Frame[] {
    return this.frames.filter((f) => f.sid === sid);
  }

  describe(): string {
    return this.frames.map((f) => `${f.type}/${f.flags}/${f.sid}`).join(' ');
  }
}

/** The CheckResponse in a unary gRPC response body (one length-prefixed message). */
function decision(r: Response): CheckOutcome {
  expect(r.headers[':status']).toBe('200');
  const status = r.trailers['grpc-status'] ?? r.headers['grpc-status'];
  expect(status, `grpc-message: ${r.trailers['grpc-message'] ?? r.headers['grpc-message'] ?? ''}`).toBe('0');
  expect(r.data.readUInt32BE(1)).toBe(r.data.length - 5);
  return readCheckResponse(checkService().Check.responseDeserialize(r.data.subarray(5)) as CheckResponse__Output);
}
const seenPath = (r: Response): string | undefined => decision(r).headers['x-seen-path'];

// ---------------------------------------------------------------- servers

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const allow = allowEchoingPath;
const malformed = (): Decision => toDeny(denial('malformed_request', 'malformed'), 'test');

/** Decisions the test resolves: each handle() call waits until released. */
class Pending {
  readonly calls: { path: string; resolve: () => void }[] = [];
  private waiters: { n: number; resolve: () => void }[] = [];
  readonly handle = (input: CheckInput): Promise<Decision> =>
    new Promise((resolve) => {
      this.calls.push({ path: input.path, resolve: () => resolve(allow(input)) });
      this.waiters = this.waiters.filter((w) => (this.calls.length >= w.n ? (w.resolve(), false) : true));
    });
  /** Resolves once handle() has been called n times in all. */
  called(n: number): Promise<void> {
    if (this.calls.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }
  releaseAll(): void {
    for (const c of this.calls) c.resolve();
  }
}

async function startGrpc(opts: { handle?: (i: CheckInput) => Decision | Promise<Decision>; limits?: Partial<H2Limits> } = {}): Promise<{ server: GrpcServer; port: number }> {
  const server = createGrpcServer({ handle: opts.handle ?? allow, onMalformed: malformed, limits: opts.limits });
  cleanups.push(() => server.shutdown(0));
  const address = await server.listen('127.0.0.1:0');
  return { server, port: Number(address.slice(address.lastIndexOf(':') + 1)) };
}

/** A bare H2Connection server, for tests that look at the connection itself. */
async function startH2(handler: H2Handler, limits?: Partial<H2Limits>): Promise<{ port: number; conns: H2Connection[]; sockets: Socket[] }> {
  const conns: H2Connection[] = [];
  const sockets: Socket[] = [];
  const server: Server = createServer((socket) => {
    sockets.push(socket);
    conns.push(new H2Connection({ socket, handler, limits }));
  });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const c of conns) c.destroy();
        server.close(() => resolve());
      }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, conns, sockets };
}

/** Connects, sends the preface and a SETTINGS frame (unless told not to). */
async function open(port: number, opts: { settings?: readonly (readonly [number, number])[]; handshake?: boolean } = {}): Promise<Peer> {
  const socket = connect({ port, host: '127.0.0.1', noDelay: true });
  cleanups.push(() => void socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const peer = new Peer(socket);
  if (opts.handshake !== false) peer.write(PREFACE, settings(opts.settings ?? []));
  return peer;
}

/** Expects the server to end the connection with GOAWAY `code`, then close the socket. */
async function expectConnectionError(peer: Peer, code: number, debug?: RegExp): Promise<{ lastStreamId: number; debug: string }> {
  const g = await peer.goaway();
  expect({ code: g.code, debug: g.debug }).toMatchObject({ code });
  if (debug) expect(g.debug).toMatch(debug);
  await peer.closedP;
  return g;
}

/** The connection still serves: a Check call on `sid` is answered with allow. */
async function expectServes(peer: Peer, sid: number): Promise<void> {
  peer.write(checkCall(sid, `/still-serving/${sid}`));
  expect(seenPath(await peer.response(sid))).toBe(`/still-serving/${sid}`);
}

// ---------------------------------------------------------------- tests

describe('connection errors: GOAWAY with the right code, then the socket closes', () => {
  it('a client that does not send the HTTP/2 preface gets PROTOCOL_ERROR', async () => {
    const { port } = await startGrpc();
    const peer = await open(port, { handshake: false });
    peer.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await expectConnectionError(peer, H2Error.PROTOCOL_ERROR, /preface/);
  });

  it('a first frame that is not SETTINGS gets PROTOCOL_ERROR', async () => {
    const { port } = await startGrpc();
    const peer = await open(port, { handshake: false });
    peer.write(PREFACE, ping(Buffer.alloc(8)));
    await expectConnectionError(peer, H2Error.PROTOCOL_ERROR, /first frame must be SETTINGS/);
    expect(peer.frames.some((f) => f.type === FrameType.PING)).toBe(false);
  });

  it('a frame larger than 16384 bytes gets FRAME_SIZE_ERROR as soon as its header arrives', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(checkCall(1, '/before'));
    expect(seenPath(await peer.response(1))).toBe('/before');
    // Only the 9-byte header of a 16385-byte DATA frame: the server must not wait for (and buffer) the payload.
    const head = frame(FrameType.DATA, 0, 1, Buffer.alloc(16_385)).subarray(0, 9);
    peer.write(head);
    await expectConnectionError(peer, H2Error.FRAME_SIZE_ERROR);
  });

  const bad: [string, () => Buffer, number][] = [
    ['SETTINGS_ENABLE_PUSH = 2', () => settings([[S.ENABLE_PUSH, 2]]), H2Error.PROTOCOL_ERROR],
    ['SETTINGS_INITIAL_WINDOW_SIZE = 2^31', () => settings([[S.INITIAL_WINDOW_SIZE, 2 ** 31]]), H2Error.FLOW_CONTROL_ERROR],
    ['SETTINGS_MAX_FRAME_SIZE = 16383', () => settings([[S.MAX_FRAME_SIZE, 16_383]]), H2Error.PROTOCOL_ERROR],
    ['SETTINGS_MAX_FRAME_SIZE = 2^24', () => settings([[S.MAX_FRAME_SIZE, 2 ** 24]]), H2Error.PROTOCOL_ERROR],
    ['SETTINGS with a 5-byte payload', () => frame(FrameType.SETTINGS, 0, 0, Buffer.alloc(5)), H2Error.FRAME_SIZE_ERROR],
    ['SETTINGS ACK with a payload', () => frame(FrameType.SETTINGS, F.ACK, 0, Buffer.alloc(6)), H2Error.FRAME_SIZE_ERROR],
    ['SETTINGS on stream 1', () => frame(FrameType.SETTINGS, 0, 1, Buffer.alloc(0)), H2Error.PROTOCOL_ERROR],
    ['PING with 7 bytes', () => frame(FrameType.PING, 0, 0, Buffer.alloc(7)), H2Error.FRAME_SIZE_ERROR],
    ['PING with 9 bytes', () => frame(FrameType.PING, 0, 0, Buffer.alloc(9)), H2Error.FRAME_SIZE_ERROR],
    ['PING on stream 1', () => frame(FrameType.PING, 0, 1, Buffer.alloc(8)), H2Error.PROTOCOL_ERROR],
    ['WINDOW_UPDATE of 0 on the connection', () => windowUpdate(0, 0), H2Error.PROTOCOL_ERROR],
    ['WINDOW_UPDATE taking the connection window past 2^31-1', () => windowUpdate(0, 0x7fffffff), H2Error.FLOW_CONTROL_ERROR],
    ['WINDOW_UPDATE with 3 bytes', () => frame(FrameType.WINDOW_UPDATE, 0, 0, Buffer.alloc(3)), H2Error.FRAME_SIZE_ERROR],
    ['WINDOW_UPDATE on an idle stream', () => windowUpdate(1, 10), H2Error.PROTOCOL_ERROR],
    ['PUSH_PROMISE from a client', () => frame(FrameType.PUSH_PROMISE, F.END_HEADERS, 1, Buffer.concat([u32(2), encodeHeaderBlock(checkHeaders())])), H2Error.PROTOCOL_ERROR],
    ['DATA on stream 0', () => data(0, Buffer.from('x')), H2Error.PROTOCOL_ERROR],
    ['DATA on an idle stream', () => data(1, Buffer.from('x'), true), H2Error.PROTOCOL_ERROR],
    ['HEADERS on an even stream', () => headers(2, checkHeaders(), { endStream: true }), H2Error.PROTOCOL_ERROR],
    ['HEADERS on stream 0', () => headers(0, checkHeaders(), { endStream: true }), H2Error.PROTOCOL_ERROR],
    ['a stream that depends on itself (HEADERS)', () => headers(1, checkHeaders(), { endStream: true, dependsOn: 1 }), H2Error.PROTOCOL_ERROR],
    ['PRIORITY on stream 0', () => priority(0, 1), H2Error.PROTOCOL_ERROR],
    ['a PRIORITY that makes an idle stream depend on itself', () => priority(1, 1), H2Error.PROTOCOL_ERROR],
    ['RST_STREAM on stream 0', () => rst(0, H2Error.CANCEL), H2Error.PROTOCOL_ERROR],
    ['RST_STREAM on an idle stream', () => rst(1, H2Error.CANCEL), H2Error.PROTOCOL_ERROR],
    ['RST_STREAM with 3 bytes', () => frame(FrameType.RST_STREAM, 0, 1, Buffer.alloc(3)), H2Error.FRAME_SIZE_ERROR],
    ['GOAWAY on stream 1', () => frame(FrameType.GOAWAY, 0, 1, Buffer.alloc(8)), H2Error.PROTOCOL_ERROR],
    ['GOAWAY shorter than 8 bytes', () => frame(FrameType.GOAWAY, 0, 0, Buffer.alloc(4)), H2Error.FRAME_SIZE_ERROR],
    ['CONTINUATION without HEADERS', () => continuation(1, encodeHeaderBlock(checkHeaders()), true), H2Error.PROTOCOL_ERROR],
    [
      'a header block interrupted by another frame',
      () => Buffer.concat([headers(1, checkHeaders(), { endHeaders: false }), ping(Buffer.alloc(8))]),
      H2Error.PROTOCOL_ERROR,
    ],
    [
      'a header block continued on another stream',
      () => Buffer.concat([headers(1, encodeHeaderBlock(checkHeaders()).subarray(0, 10), { endHeaders: false }), continuation(3, encodeHeaderBlock(checkHeaders()).subarray(10), true)]),
      H2Error.PROTOCOL_ERROR,
    ],
    ['padding longer than the HEADERS frame', () => frame(FrameType.HEADERS, F.PADDED | F.END_HEADERS, 1, Buffer.from([10, 0x82])), H2Error.PROTOCOL_ERROR],
    ['HPACK index 0', () => headers(1, Buffer.from([0x80]), { endStream: true }), H2Error.COMPRESSION_ERROR],
    ['HPACK index beyond the dynamic table', () => headers(1, Buffer.from([0xff, 0x10]), { endStream: true }), H2Error.COMPRESSION_ERROR],
    ['HPACK string running past the block', () => headers(1, Buffer.from([0x00, 0x05, 0x61]), { endStream: true }), H2Error.COMPRESSION_ERROR],
    ['HPACK table size update above SETTINGS_HEADER_TABLE_SIZE', () => headers(1, Buffer.from([0x3f, 0xe1, 0x3f]), { endStream: true }), H2Error.COMPRESSION_ERROR],
  ];
  it.each(bad)('%s', async (_name, make, code) => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(make());
    await expectConnectionError(peer, code);
    // Nothing but the server's own preface (SETTINGS, WINDOW_UPDATE, the SETTINGS ACK) and the GOAWAY.
    expect(peer.frames.filter((f) => f.type !== FrameType.SETTINGS && f.type !== FrameType.WINDOW_UPDATE && f.type !== FrameType.GOAWAY)).toEqual([]);
  });

  it('malformed HPACK on a later request: COMPRESSION_ERROR with the last stream processed, after earlier requests were answered', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(checkCall(1, '/a'));
    expect(seenPath(await peer.response(1))).toBe('/a');
    peer.write(headers(3, Buffer.from([0x80]), { endStream: true }));
    const g = await expectConnectionError(peer, H2Error.COMPRESSION_ERROR);
    expect(g.lastStreamId).toBe(3);
  });

  it('HEADERS on a stream that has ended, or opening a lower stream id than the last, ends the connection', async () => {
    const { port } = await startGrpc();
    const ended = await open(port);
    ended.write(checkCall(1, '/a'));
    await ended.response(1);
    ended.write(headers(1, checkHeaders(), { endStream: true }));
    await expectConnectionError(ended, H2Error.PROTOCOL_ERROR, /closed stream|lower stream id/);

    const lower = await open(port);
    lower.write(checkCall(5, '/five'));
    await lower.response(5);
    lower.write(checkCall(3, '/three'));
    await expectConnectionError(lower, H2Error.PROTOCOL_ERROR);
    expect(lower.framesOn(3).filter((f) => f.type === FrameType.HEADERS)).toEqual([]);
  });
});

describe('header block floods', () => {
  it('a CONTINUATION flood (empty frames, no END_HEADERS) ends the connection with ENHANCE_YOUR_CALM after 32 frames', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    const block = encodeHeaderBlock(checkHeaders());
    const empty = continuation(1, Buffer.alloc(0), false);
    // 100 000 empty CONTINUATION frames (900 kB) that would never end the block.
    peer.write(headers(1, block, { endHeaders: false }), Buffer.concat(Array.from({ length: 100_000 }, () => empty)));
    const g = await expectConnectionError(peer, H2Error.ENHANCE_YOUR_CALM, /more than 32 frames/);
    expect(g.lastStreamId).toBe(1);
    expect(peer.framesOn(1)).toEqual([]);
  });

  it('a CONTINUATION flood of non-empty frames is cut at 32 frames too', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    const junk = continuation(1, Buffer.alloc(100, 0x61), false);
    peer.write(headers(1, encodeHeaderBlock(checkHeaders()), { endHeaders: false }), Buffer.concat(Array.from({ length: 10_000 }, () => junk)));
    await expectConnectionError(peer, H2Error.ENHANCE_YOUR_CALM, /more than 32 frames/);
  });

  it('a header block over 64 KiB ends the connection with ENHANCE_YOUR_CALM before it is decoded', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    const piece = Buffer.alloc(16_384, 0x61);
    // HEADERS + 4 CONTINUATION frames of 16 KiB: 80 KiB, never ended.
    peer.write(headers(1, piece, { endHeaders: false }), ...Array.from({ length: 4 }, () => continuation(1, piece, false)));
    await expectConnectionError(peer, H2Error.ENHANCE_YOUR_CALM, /larger than SETTINGS_MAX_HEADER_LIST_SIZE/);
  });

  it('a header list that decodes to more than 64 KiB (from a small block) ends the connection with COMPRESSION_ERROR', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    // One 4000-byte header indexed into the dynamic table, then referenced 20 times: ~80 KiB decoded from ~4 KiB.
    const name = Buffer.from('x-big');
    const value = Buffer.alloc(4000, 0x76);
    // Literal with incremental indexing, new name (RFC 7541 §6.2.1); then 20 × indexed field 62 (the first dynamic entry).
    const literal = Buffer.concat([Buffer.from([0x40]), hpackInt(name.length, 7, 0), name, hpackInt(value.length, 7, 0), value]);
    const block = Buffer.concat([encodeHeaderBlock(checkHeaders()), literal, Buffer.alloc(20, 0x80 | 62)]);
    peer.write(headers(1, block, { endStream: true }));
    await expectConnectionError(peer, H2Error.COMPRESSION_ERROR, /header list exceeds/);
  });
});

describe('rapid reset and the concurrent stream limit', () => {
  it('advertises the configured SETTINGS_MAX_CONCURRENT_STREAMS and refuses the stream beyond it; a finished call frees its slot', async () => {
    const pending = new Pending();
    const { port } = await startGrpc({ handle: pending.handle, limits: { maxConcurrentStreams: 2 } });
    const peer = await open(port);
    const s = await peer.waitFor((f) => f.type === FrameType.SETTINGS && (f.flags & F.ACK) === 0);
    const advertised = new Map<number, number>();
    for (let at = 0; at < s.payload.length; at += 6) advertised.set(s.payload.readUInt16BE(at), s.payload.readUInt32BE(at + 2));
    expect(advertised.get(S.MAX_CONCURRENT_STREAMS)).toBe(2);

    peer.write(checkCall(1, '/1'), checkCall(3, '/3'), checkCall(5, '/5'));
    expect(await peer.rstCode(5)).toBe(H2Error.REFUSED_STREAM);
    await pending.called(2);
    pending.calls[0]?.resolve();
    expect(seenPath(await peer.response(1))).toBe('/1');
    // Stream 1's slot is free again: stream 7 is taken, stream 9 is not (3 and 7 are pending).
    peer.write(checkCall(7, '/7'), checkCall(9, '/9'));
    expect(await peer.rstCode(9)).toBe(H2Error.REFUSED_STREAM);
    await pending.called(3);
    pending.releaseAll();
    expect(seenPath(await peer.response(3))).toBe('/3');
    expect(seenPath(await peer.response(7))).toBe('/7');
    expect(pending.calls.map((c) => c.path)).toEqual(['/1', '/3', '/7']);
  });

  it('rapid reset: thousands of calls reset at once never run more than maxConcurrentStreams decisions; the rest are refused; slots come back when decisions finish', async () => {
    const pending = new Pending();
    const max = 8;
    const { port } = await startGrpc({ handle: pending.handle, limits: { maxConcurrentStreams: max } });
    const peer = await open(port);
    const body = checkBody('/reset');
    const n = 3000;
    let sid = 1;
    for (let batch = 0; batch < n / 500; batch++) {
      const out: Buffer[] = [];
      for (let i = 0; i < 500; i++, sid += 2) out.push(headers(sid, checkHeaders()), data(sid, body, true), rst(sid, H2Error.CANCEL));
      peer.write(...out);
    }
    const last = sid - 2;
    expect(await peer.rstCode(last)).toBe(H2Error.REFUSED_STREAM);
    await peer.sync();
    // Only `max` decisions ever started; every later stream was refused while they ran.
    expect(pending.calls.length).toBe(max);
    const refused = peer.frames.filter((f) => f.type === FrameType.RST_STREAM && f.payload.readUInt32BE(0) === H2Error.REFUSED_STREAM);
    expect(refused.length).toBe(n - max);
    // The decisions finish: their answers are dropped (the client reset those streams), the slots free up.
    pending.releaseAll();
    await peer.sync();
    expect(peer.frames.filter((f) => f.type === FrameType.HEADERS || f.type === FrameType.DATA)).toEqual([]);
    // Now `max` new calls run at once again, and are answered.
    const fresh: number[] = [];
    for (let i = 0; i < max; i++, sid += 2) fresh.push(sid);
    peer.write(...fresh.map((id) => checkCall(id, `/fresh/${id}`)));
    await pending.called(2 * max);
    pending.releaseAll();
    for (const id of fresh) expect(seenPath(await peer.response(id))).toBe(`/fresh/${id}`);
  });

  it('streams the server resets itself (WINDOW_UPDATE 0, DATA after END_STREAM) keep their slot while their decision runs', async () => {
    // Without this, a client could make the server reset each handed-over call and open the next one at once,
    // starting unbounded decisions: rapid reset with the server's own RST_STREAM.
    const pending = new Pending();
    const max = 4;
    const { port } = await startGrpc({ handle: pending.handle, limits: { maxConcurrentStreams: max } });
    const peer = await open(port);
    const out: Buffer[] = [];
    let sid = 1;
    for (let i = 0; i < 200; i++, sid += 2) {
      out.push(checkCall(sid, '/x'), i % 2 === 0 ? windowUpdate(sid, 0) : data(sid, Buffer.from('late'), true));
    }
    peer.write(...out);
    await peer.sync();
    expect(pending.calls.length).toBe(max);
    expect(await peer.rstCode(1)).toBe(H2Error.PROTOCOL_ERROR);
    expect(await peer.rstCode(3)).toBe(H2Error.STREAM_CLOSED);
    expect(await peer.rstCode(sid - 2)).toBe(H2Error.REFUSED_STREAM);
    pending.releaseAll();
    await peer.sync();
    // The slots are free again.
    peer.write(checkCall(sid, '/after'));
    await pending.called(max + 1);
    pending.releaseAll();
    expect(seenPath(await peer.response(sid))).toBe('/after');
  });

  it('H2Connection.openStreams never exceeds maxConcurrentStreams under rapid reset, and drops to 0 when the work ends', async () => {
    const max = 5;
    const held: H2Stream[] = [];
    let peak = 0;
    let conn: H2Connection | undefined;
    const ok = encodeHeaderBlock([[':status', '200']]);
    const { port, conns } = await startH2(
      {
        onHeaders: () => {
          peak = Math.max(peak, conn?.openStreams ?? 0);
          return false;
        },
        onRequest: (stream) => void held.push(stream),
        onBodyTooLarge: (stream) => stream.respond(ok, undefined, undefined),
      },
      { maxConcurrentStreams: max },
    );
    const peer = await open(port);
    await peer.sync();
    conn = conns[0];
    const out: Buffer[] = [];
    let sid = 1;
    for (let i = 0; i < 5000; i++, sid += 2) out.push(headers(sid, checkHeaders(), { endStream: true }), rst(sid, H2Error.CANCEL));
    peer.write(...out);
    expect(await peer.rstCode(sid - 2)).toBe(H2Error.REFUSED_STREAM);
    expect(held.length).toBe(max);
    expect(peak).toBeLessThanOrEqual(max);
    expect(conn?.openStreams).toBe(max);
    for (const st of held) {
      expect(st.cancelled).toBe(true);
      st.respond(ok, undefined, undefined);
    }
    expect(conn?.openStreams).toBe(0);
    // Answers to reset streams are dropped.
    await peer.sync();
    expect(peer.frames.filter((f) => f.type === FrameType.HEADERS)).toEqual([]);
  });
});

describe('flow control', () => {
  it('a client with SETTINGS_INITIAL_WINDOW_SIZE 0 gets the response headers at once; DATA waits for WINDOW_UPDATE, is split to fit it, and the trailers follow it', async () => {
    const { port } = await startGrpc();
    const peer = await open(port, { settings: [[S.INITIAL_WINDOW_SIZE, 0]] });
    peer.write(checkCall(1, '/windowed'));
    const head = await peer.waitFor((f) => f.type === FrameType.HEADERS && f.sid === 1);
    expect(fieldsOf(head)[':status']).toBe('200');
    expect(head.flags & F.END_STREAM).toBe(0);
    await peer.sync();
    expect(peer.framesOn(1).map((f) => f.type)).toEqual([FrameType.HEADERS]);

    // A window smaller than the message: exactly that many bytes go, nothing else.
    peer.write(windowUpdate(1, 10));
    const first = await peer.waitFor((f) => f.type === FrameType.DATA && f.sid === 1);
    expect(first.payload.length).toBe(10);
    expect(first.flags & F.END_STREAM).toBe(0);
    await peer.sync();
    expect(peer.framesOn(1).map((f) => f.type)).toEqual([FrameType.HEADERS, FrameType.DATA]);

    peer.write(windowUpdate(1, 100_000));
    const r = await peer.response(1);
    expect(r.frames.map((f) => f.type)).toEqual([FrameType.HEADERS, FrameType.DATA, FrameType.DATA, FrameType.HEADERS]);
    expect(r.trailers['grpc-status']).toBe('0');
    expect(seenPath(r)).toBe('/windowed');
  });

  it('SETTINGS_INITIAL_WINDOW_SIZE raised later releases the waiting DATA', async () => {
    const { port } = await startGrpc();
    const peer = await open(port, { settings: [[S.INITIAL_WINDOW_SIZE, 0]] });
    peer.write(checkCall(1, '/a'), checkCall(3, '/b'));
    await peer.waitFor((f) => f.type === FrameType.HEADERS && f.sid === 3);
    peer.write(settings([[S.INITIAL_WINDOW_SIZE, 65_535]]));
    expect(seenPath(await peer.response(1))).toBe('/a');
    expect(seenPath(await peer.response(3))).toBe('/b');
  });

  it("a response larger than a frame goes out at once in frames of the client's SETTINGS_MAX_FRAME_SIZE, not counted as queued output", async () => {
    const ok = encodeHeaderBlock([[':status', '200']]);
    // maxQueuedOutputBytes far below the response: only output that waits for a window may count against it.
    const { port } = await startH2(
      { onHeaders: () => false, onRequest: (stream, body) => stream.respond(ok, body, undefined), onBodyTooLarge: (stream) => stream.respond(ok, undefined, undefined) },
      { maxQueuedOutputBytes: 1024 },
    );
    for (const maxFrame of [16_384, 20_000]) {
      const peer = await open(port, { settings: [[S.MAX_FRAME_SIZE, maxFrame]] });
      const body = Buffer.alloc(50_000, 0x62);
      const chunks = [0, 16_384, 32_768, 49_152, 50_000];
      peer.write(headers(1, checkHeaders()), ...chunks.slice(1).map((to, i) => data(1, body.subarray(chunks[i], to), to === body.length)));
      const r = await peer.response(1);
      expect(r.data).toEqual(body);
      const sizes = r.frames.filter((f) => f.type === FrameType.DATA).map((f) => f.payload.length);
      expect(Math.max(...sizes)).toBe(maxFrame);
      expect(sizes.length).toBe(Math.ceil(body.length / maxFrame));
      expect(peer.frames.some((f) => f.type === FrameType.GOAWAY)).toBe(false);
    }
  });

  it('a client that never opens its windows and keeps calling gets GOAWAY ENHANCE_YOUR_CALM instead of unbounded buffering', async () => {
    const { port } = await startGrpc({ limits: { maxQueuedOutputBytes: 4096 } });
    const peer = await open(port, { settings: [[S.INITIAL_WINDOW_SIZE, 0]] });
    const out: Buffer[] = [];
    for (let sid = 1; sid < 2 * 200; sid += 2) out.push(checkCall(sid, '/never-read'));
    peer.write(...out);
    await expectConnectionError(peer, H2Error.ENHANCE_YOUR_CALM, /flow-control windows closed/);
    expect(peer.frames.some((f) => f.type === FrameType.DATA)).toBe(false);
  });

  it('client DATA beyond the connection window is a FLOW_CONTROL_ERROR', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    // The server's connection window is 16 842 772 bytes (4 × the stream window); four unfinished
    // 4 MiB requests hold 16 MiB of it, the fifth stream's DATA goes past it.
    const chunk = Buffer.alloc(16_384);
    const perStream = (4 * 1024 * 1024) / chunk.length;
    for (const sid of [1, 3, 5, 7]) {
      const frames = [headers(sid, checkHeaders())];
      for (let i = 0; i < perStream; i++) frames.push(data(sid, chunk));
      peer.write(...frames);
    }
    await peer.sync();
    expect(peer.frames.some((f) => f.type === FrameType.GOAWAY)).toBe(false);
    peer.write(headers(9, checkHeaders()), ...Array.from({ length: 5 }, () => data(9, chunk)));
    await expectConnectionError(peer, H2Error.FLOW_CONTROL_ERROR, /connection window/);
  });

  it('a body over maxBodyBytes: RESOURCE_EXHAUSTED, RST_STREAM NO_ERROR, and the connection keeps serving', async () => {
    const { port } = await startGrpc({ limits: { maxBodyBytes: 1000 } });
    const peer = await open(port);
    peer.write(headers(1, checkHeaders()), data(1, Buffer.alloc(600)), data(1, Buffer.alloc(600)));
    const r = await peer.response(1);
    expect(r.headers['grpc-status']).toBe('8');
    // The message names the configured limit (the body limit less the 5-byte gRPC prefix).
    expect(r.headers['grpc-message']).toBe('the request message is larger than 995 bytes');
    expect(await peer.rstCode(1)).toBe(H2Error.NO_ERROR);
    // The rest of that body, already on its way, is dropped quietly.
    peer.write(data(1, Buffer.alloc(600), true));
    await expectServes(peer, 3);
    expect(peer.framesOn(1).filter((f) => f.type === FrameType.RST_STREAM).length).toBe(1);
  });
});

describe('malformed requests: RST_STREAM PROTOCOL_ERROR, the connection keeps serving', () => {
  const without = (name: string): Fields => checkHeaders().filter(([n]) => n !== name);
  const cases: [string, () => Buffer][] = [
    ['an upper-case header name', () => headers(1, checkHeaders([['X-Upper', '1']]), { endStream: true })],
    ['a header name with a space', () => headers(1, checkHeaders([['x bad', '1']]), { endStream: true })],
    ['no :path', () => headers(1, without(':path'), { endStream: true })],
    ['no :method', () => headers(1, without(':method'), { endStream: true })],
    ['no :scheme', () => headers(1, without(':scheme'), { endStream: true })],
    ['an unknown pseudo-header', () => headers(1, [[':protocol', 'x'], ...checkHeaders()], { endStream: true })],
    ['a response pseudo-header', () => headers(1, [[':status', '200'], ...checkHeaders()], { endStream: true })],
    ['a pseudo-header after a regular header', () => headers(1, [...checkHeaders(), [':authority', 'late']], { endStream: true })],
    ['a connection: header', () => headers(1, checkHeaders([['connection', 'keep-alive']]), { endStream: true })],
    ['transfer-encoding', () => headers(1, checkHeaders([['transfer-encoding', 'chunked']]), { endStream: true })],
    ['te: gzip', () => headers(1, [...without('te'), ['te', 'gzip']], { endStream: true })],
    ['a duplicate :path', () => headers(1, [...checkHeaders().slice(0, 3), [':path', '/other'], ...checkHeaders().slice(3)], { endStream: true })],
    ['a duplicate :method', () => headers(1, [[':method', 'POST'], ...checkHeaders()], { endStream: true })],
    ['content-length that is not a number', () => headers(1, checkHeaders([['content-length', '1x']]), { endStream: true })],
    ['content-length larger than the body', () => Buffer.concat([headers(1, checkHeaders([['content-length', '100']])), data(1, checkBody('/cl'), true)])],
    ['content-length smaller than the body', () => Buffer.concat([headers(1, checkHeaders([['content-length', '3']])), data(1, checkBody('/cl'), true)])],
    ['a pseudo-header in the trailers', () => Buffer.concat([headers(1, checkHeaders()), data(1, checkBody('/t')), headers(1, [[':path', '/x']], { endStream: true })])],
  ];
  it.each(cases)('%s', async (_name, make) => {
    const handled: string[] = [];
    const { port } = await startGrpc({ handle: (i) => (handled.push(i.path), allow(i)) });
    const peer = await open(port);
    peer.write(make());
    expect(await peer.rstCode(1)).toBe(H2Error.PROTOCOL_ERROR);
    // Whatever the client had in flight on that stream is ignored; the next call is answered.
    peer.write(data(1, Buffer.alloc(10), true));
    await expectServes(peer, 3);
    expect(handled).toEqual(['/still-serving/3']);
    expect(peer.framesOn(1).map((f) => f.type)).toEqual([FrameType.RST_STREAM]);
    expect(peer.frames.some((f) => f.type === FrameType.GOAWAY)).toBe(false);
  });
});

describe('requests in every legal shape are answered', () => {
  it('request trailers are accepted', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(headers(1, checkHeaders()), data(1, checkBody('/trailers')), headers(1, [['x-request-trailer', 'yes']], { endStream: true }));
    expect(seenPath(await peer.response(1))).toBe('/trailers');
  });

  it('PADDED and PRIORITY flags on HEADERS, PADDED on DATA, PRIORITY frames', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    const body = checkBody('/padded');
    peer.write(
      headers(1, checkHeaders(), { pad: 7, dependsOn: 0 }),
      priority(1, 0, 42),
      paddedData(1, body.subarray(0, 10), 0),
      paddedData(1, body.subarray(10), 200, true),
    );
    expect(seenPath(await peer.response(1))).toBe('/padded');
    // PRIORITY for an idle stream is allowed too (RFC 9113 §6.3), and that stream can still be opened.
    peer.write(priority(3, 1), headers(3, checkHeaders(), { pad: 0 }), data(3, checkBody('/three'), true));
    expect(seenPath(await peer.response(3))).toBe('/three');
  });

  it('a body in 1-byte DATA frames and a header block over many CONTINUATION frames', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    const block = encodeHeaderBlock(checkHeaders());
    const cut = [0, 5, 9, 20, 33, 50, block.length];
    const hframes: Buffer[] = [headers(1, block.subarray(0, cut[1]), { endHeaders: false })];
    for (let i = 1; i < cut.length - 1; i++) hframes.push(continuation(1, block.subarray(cut[i], cut[i + 1]), i === cut.length - 2));
    const body = checkBody('/split');
    const dframes = [...body].map((byte, i) => data(1, Buffer.from([byte]), i === body.length - 1));
    peer.write(...hframes, ...dframes);
    expect(seenPath(await peer.response(1))).toBe('/split');
  });

  it('many calls pipelined in one TCP write are all answered, in one socket write per read', async () => {
    const ok = encodeHeaderBlock([[':status', '200']]);
    const trailers = encodeHeaderBlock([['grpc-status', '0']]);
    const { port, sockets } = await startH2({
      onHeaders: () => false,
      onRequest: (stream, body) => stream.respond(ok, body, trailers),
      onBodyTooLarge: (stream) => stream.respond(ok, undefined, undefined),
    });
    const peer = await open(port);
    await peer.sync();
    const socket = sockets[0] as Socket;
    let writes = 0;
    let reads = 0;
    const write = socket.write.bind(socket) as (chunk: Buffer) => boolean;
    socket.write = ((chunk: Buffer) => (writes++, write(chunk))) as typeof socket.write;
    socket.on('data', () => reads++);
    const n = 200;
    const out: Buffer[] = [];
    for (let i = 0, sid = 101; i < n; i++, sid += 2) out.push(headers(sid, checkHeaders(), { endStream: false }), data(sid, Buffer.from(`echo ${sid}`), true));
    peer.write(...out);
    for (let i = 0, sid = 101; i < n; i++, sid += 2) expect((await peer.response(sid)).data.toString()).toBe(`echo ${sid}`);
    expect(reads).toBeGreaterThan(0);
    // Every read of requests is answered with one write (however many responses it produced).
    expect(writes).toBeLessThanOrEqual(reads);
    expect(writes).toBeLessThan(n);
  });

  it('a client with SETTINGS_HEADER_TABLE_SIZE 0 can read the responses (RFC 7541 §4.2 table size update)', async () => {
    const { port } = await startGrpc();
    // Raw: the first header block after the SETTINGS ACK starts with a dynamic table size update.
    const peer = await open(port, { settings: [[S.HEADER_TABLE_SIZE, 0]] });
    peer.write(checkCall(1, '/a'), checkCall(3, '/b'));
    const r1 = await peer.response(1);
    expect(seenPath(r1)).toBe('/a');
    expect(seenPath(await peer.response(3))).toBe('/b');
    const blocks = peer.frames.filter((f) => f.type === FrameType.HEADERS);
    expect(blocks[0]?.payload[0]).toBe(0x20);
    expect(blocks.slice(1).every((f) => (f.payload[0]! & 0xe0) !== 0x20)).toBe(true);

    // A real nghttp2-based client (node:http2) refuses a block without that update (COMPRESSION_ERROR).
    const session = connectH2(`http://127.0.0.1:${port}`, { settings: { headerTableSize: 0 } });
    cleanups.push(() => void session.destroy());
    const status = await new Promise<unknown>((resolve, reject) => {
      session.on('error', reject);
      session.on('goaway', (code) => reject(new Error(`the client sent or got GOAWAY ${code}`)));
      const req = session.request({ ':method': 'GET', ':path': '/' });
      req.on('response', (h) => resolve(h[':status']));
      req.on('error', reject);
      req.on('close', () => reject(new Error(`stream closed without a response (rstCode ${req.rstCode})`)));
      req.end();
    });
    expect(status).toBe(405);
  });
});

describe('stream states after the server has answered or reset', () => {
  it('a GET with END_STREAM on its HEADERS gets its 405 and no RST_STREAM', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(headers(1, [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'x']], { endStream: true }));
    const r = await peer.response(1);
    expect(r.headers[':status']).toBe('405');
    await peer.sync();
    expect(peer.framesOn(1).map((f) => f.type)).toEqual([FrameType.HEADERS]);
  });

  it('an early answer resets the unfinished request with NO_ERROR; the DATA and trailers already in flight are ignored', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(headers(1, checkHeaders([], '/unknown.Service/Method')));
    const r = await peer.response(1);
    expect(r.headers['grpc-status']).toBe('12');
    expect(await peer.rstCode(1)).toBe(H2Error.NO_ERROR);
    peer.write(data(1, checkBody('/x')), headers(1, [['x-trailer', '1']], { endStream: true }), windowUpdate(1, 5), priority(1, 0));
    await expectServes(peer, 3);
    expect(peer.framesOn(1).map((f) => f.type)).toEqual([FrameType.HEADERS, FrameType.RST_STREAM]);
  });

  it('DATA on a stream that both sides have ended: RST_STREAM STREAM_CLOSED, once; WINDOW_UPDATE there is fine', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(checkCall(1, '/done'));
    await peer.response(1);
    peer.write(windowUpdate(1, 100), data(1, Buffer.from('late')));
    expect(await peer.rstCode(1)).toBe(H2Error.STREAM_CLOSED);
    peer.write(data(1, Buffer.from('later')));
    await expectServes(peer, 3);
    expect(peer.framesOn(1).filter((f) => f.type === FrameType.RST_STREAM).length).toBe(1);
  });

  it('DATA after the client reset its stream (decision still running): RST_STREAM STREAM_CLOSED, the slot stays taken', async () => {
    const pending = new Pending();
    const { port } = await startGrpc({ handle: pending.handle, limits: { maxConcurrentStreams: 1 } });
    const peer = await open(port);
    peer.write(checkCall(1, '/slow'), rst(1, H2Error.CANCEL));
    await pending.called(1);
    peer.write(data(1, Buffer.from('x')));
    expect(await peer.rstCode(1)).toBe(H2Error.STREAM_CLOSED);
    peer.write(checkCall(3, '/refused'));
    expect(await peer.rstCode(3)).toBe(H2Error.REFUSED_STREAM);
    pending.releaseAll();
    peer.write(checkCall(5, '/after'));
    await pending.called(2);
    pending.releaseAll();
    expect(seenPath(await peer.response(5))).toBe('/after');
  });

  it('WINDOW_UPDATE of 0, or past 2^31-1, on a stream: RST_STREAM for that stream only', async () => {
    const pending = new Pending();
    const { port } = await startGrpc({ handle: pending.handle });
    const peer = await open(port);
    peer.write(checkCall(1, '/one'), checkCall(3, '/three'), checkCall(5, '/five'));
    await pending.called(3);
    peer.write(windowUpdate(1, 0), windowUpdate(3, 0x7fffffff));
    expect(await peer.rstCode(1)).toBe(H2Error.PROTOCOL_ERROR);
    expect(await peer.rstCode(3)).toBe(H2Error.FLOW_CONTROL_ERROR);
    pending.releaseAll();
    expect(seenPath(await peer.response(5))).toBe('/five');
    await peer.sync();
    expect(peer.framesOn(1).map((f) => f.type)).toEqual([FrameType.RST_STREAM]);
    expect(peer.framesOn(3).map((f) => f.type)).toEqual([FrameType.RST_STREAM]);
  });

  it('a PRIORITY making an open stream depend on itself, or of the wrong length: RST_STREAM for that stream only', async () => {
    const pending = new Pending();
    const { port } = await startGrpc({ handle: pending.handle });
    const peer = await open(port);
    peer.write(headers(1, checkHeaders()), headers(3, checkHeaders()), checkCall(5, '/five'));
    peer.write(priority(1, 1), frame(FrameType.PRIORITY, 0, 3, Buffer.alloc(4)));
    expect(await peer.rstCode(1)).toBe(H2Error.PROTOCOL_ERROR);
    expect(await peer.rstCode(3)).toBe(H2Error.FRAME_SIZE_ERROR);
    await pending.called(1);
    pending.releaseAll();
    expect(seenPath(await peer.response(5))).toBe('/five');
  });
});

describe('control frames', () => {
  it('PING is answered with an ACK carrying the same payload; a PING ACK is not answered', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    const payload = Buffer.from('01234567');
    peer.write(ping(payload), ping(Buffer.from('ackackac'), F.ACK));
    const ack = await peer.waitFor((f) => f.type === FrameType.PING);
    expect(ack.flags).toBe(F.ACK);
    expect(ack.payload).toEqual(payload);
    await peer.sync();
    expect(peer.frames.filter((f) => f.type === FrameType.PING).length).toBe(2); // the ACK above and sync()'s
  });

  it('SETTINGS is acknowledged (each one), and a SETTINGS ACK is not', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(settings([[S.MAX_FRAME_SIZE, 32_768]]), settingsAck(), settings([]));
    await peer.sync();
    const acks = peer.frames.filter((f) => f.type === FrameType.SETTINGS && f.flags === F.ACK);
    expect(acks.length).toBe(3); // the preface's SETTINGS and the two above
    expect(acks.every((f) => f.payload.length === 0)).toBe(true);
  });

  it("the client's GOAWAY: calls in flight are answered, then the server closes the connection", async () => {
    const pending = new Pending();
    const { port } = await startGrpc({ handle: pending.handle });
    const peer = await open(port);
    peer.write(checkCall(1, '/one'), checkCall(3, '/three'));
    await pending.called(2);
    peer.write(goaway(0, H2Error.NO_ERROR));
    await peer.sync();
    expect(peer.closed).toBe(false);
    pending.releaseAll();
    expect(seenPath(await peer.response(1))).toBe('/one');
    expect(seenPath(await peer.response(3))).toBe('/three');
    await peer.closedP;
  });
});

describe("the client's half-close", () => {
  it('calls the client finished sending are answered after its FIN, an unfinished one is dropped, then the server ends the connection', async () => {
    const pending = new Pending();
    const { port } = await startGrpc({ handle: pending.handle });
    const peer = await open(port);
    // Two whole calls, and a third whose body never comes.
    peer.write(checkCall(1, '/one'), checkCall(3, '/three'), headers(5, checkHeaders()));
    await pending.called(2);
    peer.socket.end();
    // The server has seen the FIN: it says GOAWAY, naming the last stream it saw.
    const g = await peer.goaway();
    expect(g.code).toBe(H2Error.NO_ERROR);
    expect(g.lastStreamId).toBe(5);
    expect(peer.closed).toBe(false);
    pending.releaseAll();
    expect(seenPath(await peer.response(1))).toBe('/one');
    expect(seenPath(await peer.response(3))).toBe('/three');
    await peer.closedP;
    expect(pending.calls).toHaveLength(2);
    expect(peer.framesOn(5)).toEqual([]);
  });

  it('a FIN with nothing in flight ends the connection at once', async () => {
    const { port } = await startGrpc();
    const peer = await open(port);
    peer.write(checkCall(1, '/one'));
    expect(seenPath(await peer.response(1))).toBe('/one');
    peer.socket.end();
    await peer.closedP;
    expect((await peer.goaway()).code).toBe(H2Error.NO_ERROR);
  });
});

describe('graceful shutdown and failing handlers', () => {
  it('GrpcServer.shutdown: GOAWAY NO_ERROR with the last stream id, calls in flight answered, later streams refused', async () => {
    const pending = new Pending();
    const { server, port } = await startGrpc({ handle: pending.handle });
    const peer = await open(port);
    peer.write(checkCall(1, '/one'), checkCall(3, '/three'));
    await pending.called(2);
    let stopped = false;
    const stopping = server.shutdown(30_000).then(() => (stopped = true));
    const g = await peer.goaway();
    expect(g).toMatchObject({ code: H2Error.NO_ERROR, lastStreamId: 3 });
    peer.write(checkCall(5, '/late'));
    expect(await peer.rstCode(5)).toBe(H2Error.REFUSED_STREAM);
    expect(stopped).toBe(false);
    pending.releaseAll();
    expect(seenPath(await peer.response(1))).toBe('/one');
    expect(seenPath(await peer.response(3))).toBe('/three');
    expect(pending.calls.map((c) => c.path)).toEqual(['/one', '/three']);
    await peer.closedP;
    await stopping;
    expect(stopped).toBe(true);
  });

  it('a decision that throws costs only its own call (internal_error deny); the other calls on the connection are answered', async () => {
    const { port } = await startGrpc({
      handle: (input) => {
        if (input.path === '/throw') throw new Error('boom');
        return allow(input);
      },
    });
    const peer = await open(port);
    peer.write(checkCall(1, '/before'), checkCall(3, '/throw'), checkCall(5, '/after'));
    expect(seenPath(await peer.response(1))).toBe('/before');
    expect(decision(await peer.response(3))).toMatchObject({ decision: 'deny', reason: 'internal_error' });
    expect(seenPath(await peer.response(5))).toBe('/after');
  });

  it('an H2Handler that throws: RST_STREAM INTERNAL_ERROR for that stream, its slot is freed, the others are answered', async () => {
    const ok = encodeHeaderBlock([[':status', '200']]);
    const { port, conns } = await startH2(
      {
        onHeaders: (stream) => {
          if (stream.path === '/throw-headers') throw new Error('boom');
          return false;
        },
        onRequest: (stream) => {
          if (stream.path === '/throw-request') throw new Error('boom');
          stream.respond(ok, Buffer.from(stream.path), undefined);
        },
        onBodyTooLarge: (stream) => stream.respond(ok, undefined, undefined),
      },
      { maxConcurrentStreams: 1 },
    );
    const peer = await open(port);
    const req = (sid: number, path: string): Buffer => headers(sid, checkHeaders([], path), { endStream: true });
    peer.write(req(1, '/throw-request'), req(3, '/ok-3'), req(5, '/throw-headers'), req(7, '/ok-7'));
    expect(await peer.rstCode(1)).toBe(H2Error.INTERNAL_ERROR);
    expect(await peer.rstCode(5)).toBe(H2Error.INTERNAL_ERROR);
    // With one stream allowed, 3 and 7 could only be served because the failed streams gave their slot back.
    expect((await peer.response(3)).data.toString()).toBe('/ok-3');
    expect((await peer.response(7)).data.toString()).toBe('/ok-7');
    expect(conns[0]?.openStreams).toBe(0);
    expect(peer.frames.some((f) => f.type === FrameType.GOAWAY)).toBe(false);
  });
});

describe('handshake timeout', () => {
  it('a client that connects and never completes the preface and SETTINGS is disconnected; one that did is kept, however long it idles', async () => {
    const { port } = await startGrpc({ limits: { handshakeTimeoutMs: 50 } });
    const good = await open(port);
    await good.waitFor((f) => f.type === FrameType.SETTINGS && (f.flags & F.ACK) !== 0, 'the ACK of our SETTINGS');
    const silent = await open(port, { handshake: false });
    const prefaceOnly = await open(port, { handshake: false });
    prefaceOnly.write(PREFACE);
    // Both are dropped by the timer: no request of theirs was ever read.
    await silent.closedP;
    await prefaceOnly.closedP;
    // The good connection's own timer would have fired first (it went quiet earlier): it was cleared.
    expect(good.closed).toBe(false);
    await expectServes(good, 1);
  });
});
