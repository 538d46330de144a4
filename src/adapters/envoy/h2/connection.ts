import type { Socket } from 'node:net';
import { createHpackDecoder, HpackError, type HpackDecoder } from './hpack.js';

/**
 * The server side of one HTTP/2 connection (RFC 9113), written for exactly
 * what portcullis's gRPC port serves: unary calls (Envoy's ext_authz Check,
 * grpc.health.v1 Check) and one server-streaming call (health Watch).
 *
 * Why not node:http2: every stream there is a Duplex with its own events,
 * header objects converted twice and a write path through streams; through
 * Envoy it cost ≈ 45 µs of CPU per call on the benchmark machine against
 * ≈ 10 µs for this framing (docs/design/performance.md, "gRPC transport"). Here a
 * stream is a small object, a request is handed over once its END_STREAM
 * arrives, and everything a read produces is answered with one socket write.
 *
 * What it enforces (the attacks an HTTP/2 server must survive are listed in
 * docs/design/performance.md): the client preface; frame sizes; SETTINGS
 * values; stream id rules; HPACK through a bounded decoder (header list and
 * header block size limits, so CONTINUATION floods end the connection);
 * flow control in both directions (a client's DATA beyond our windows is a
 * FLOW_CONTROL_ERROR; our own DATA waits for the client's windows, and is
 * split to fit them); the concurrent stream limit, where a reset stream (reset
 * by the client, or by us for its protocol error) keeps its slot until our
 * work on it ends (so "rapid reset" cannot queue unbounded work); a client
 * that does not read what it asks for (PING and SETTINGS floods included:
 * their answers are bounded output), empty DATA and CONTINUATION floods end
 * the connection with ENHANCE_YOUR_CALM. Malformed requests (RFC 9113 §8.2,
 * §8.3, a content-length that does not match the body) are reset with
 * PROTOCOL_ERROR. Stream states (RFC 9113 §5.1): frames the client had in
 * flight on a stream we reset are ignored; DATA on a stream the client has
 * ended or reset is a STREAM_CLOSED stream error, HEADERS there a connection
 * error. h2spec (test/e2e/h2spec.test.ts) runs against this layer.
 */

export const FrameType = {
  DATA: 0,
  HEADERS: 1,
  PRIORITY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PUSH_PROMISE: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

export const H2Error = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  SETTINGS_TIMEOUT: 4,
  STREAM_CLOSED: 5,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  COMPRESSION_ERROR: 9,
  CONNECT_ERROR: 10,
  ENHANCE_YOUR_CALM: 11,
  INADEQUATE_SECURITY: 12,
  HTTP_1_1_REQUIRED: 13,
} as const;

const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;
const Setting = { HEADER_TABLE_SIZE: 1, ENABLE_PUSH: 2, MAX_CONCURRENT_STREAMS: 3, INITIAL_WINDOW_SIZE: 4, MAX_FRAME_SIZE: 5, MAX_HEADER_LIST_SIZE: 6 } as const;

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 0x7fff_ffff;
const DEFAULT_MAX_FRAME = 16_384;
const EMPTY = Buffer.alloc(0);
/** The dynamic table size our peer's HPACK decoder starts with (RFC 7541 §4.2, SETTINGS_HEADER_TABLE_SIZE default). */
const DEFAULT_HEADER_TABLE_SIZE = 4096;
/** A dynamic table size update to 0 (RFC 7541 §6.3): `001` + 5-bit integer 0. */
const TABLE_SIZE_UPDATE_ZERO = Buffer.from([0x20]);
/**
 * How many of the streams we reset are remembered, so that the frames a client
 * had already sent on them are ignored (RFC 9113 §5.1, "closed") rather than
 * answered as errors. Bounded: a client that makes us reset more streams than
 * this gets STREAM_CLOSED for frames on the oldest ones.
 */
const RECENT_RESETS = 1024;
/** Request header names a client must not send (RFC 9113 §8.2.2). */
const CONNECTION_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

export interface H2Limits {
  /** SETTINGS_MAX_CONCURRENT_STREAMS we advertise and enforce. */
  maxConcurrentStreams: number;
  /** Largest request body (all DATA of one stream) handed over; more calls onBodyTooLarge. */
  maxBodyBytes: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE: decoded size (RFC 9113 §6.5.2) of one header list; also caps the encoded block. */
  maxHeaderListSize: number;
  /** Bytes of responses waiting for the client to read or to open its flow-control windows. */
  maxQueuedOutputBytes: number;
  /**
   * A client must send the preface and its first SETTINGS within this many
   * milliseconds of connecting (0: no limit); otherwise the socket is
   * destroyed. Connections that never speak cannot pile up. (An established
   * connection may then stay idle: Envoy keeps its connections open.)
   */
  handshakeTimeoutMs: number;
}

export const DEFAULT_LIMITS: H2Limits = {
  maxConcurrentStreams: 1000,
  maxBodyBytes: 4 * 1024 * 1024 + 5,
  maxHeaderListSize: 64 * 1024,
  maxQueuedOutputBytes: 4 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
};

export interface H2Handler {
  /**
   * A request's headers are complete. Return true when the handler has
   * answered already (e.g. 405): the body is then discarded. Otherwise the
   * body is collected and `onRequest` follows once the client ends the stream.
   */
  onHeaders(stream: H2Stream): boolean;
  onRequest(stream: H2Stream, body: Buffer): void;
  /** The body passed maxBodyBytes: answer now; the rest is discarded. */
  onBodyTooLarge(stream: H2Stream): void;
}

/** Output of one stream waiting for flow-control windows: DATA (split as the windows allow) or a header block (trailers). */
type Pending = { headers: false; data: Buffer; end: boolean } | { headers: true; block: Buffer; end: boolean };

const enum State {
  /** Receiving the request (headers done, body may follow). */
  Open,
  /** The client has ended its side; the request was handed over. */
  HalfClosedRemote,
  /** Both sides done, or reset. */
  Closed,
}

/** One request/response exchange. Methods write to the connection's output, sent at the end of the current turn. */
export class H2Stream {
  readonly id: number;
  readonly conn: H2Connection;
  method = '';
  path = '';
  scheme = '';
  authority = '';
  /** Regular request headers, lower-case names; repeated names joined with ', '. */
  readonly headers: Record<string, string> = Object.create(null) as Record<string, string>;
  /** @internal */ state: State = State.Open;
  /** The client reset the stream or the connection went away: anything sent now is dropped. */
  cancelled = false;
  headersSent = false;
  /** We have sent END_STREAM. */
  ended = false;
  /** Called once when the stream is cancelled (client reset or connection gone); set by long-lived handlers. */
  onCancel: (() => void) | undefined = undefined;
  /** @internal */ sendWindow: number;
  /** @internal */ recvWindow: number;
  /** @internal output waiting for send window (DATA, and the trailers that must follow it), in order. */
  pending: Pending[] | undefined = undefined;
  /** @internal the stream is on the connection's list of streams waiting for a window. */
  blocked = false;
  /** @internal the request was handed to onRequest and the handler has not answered yet (its slot is kept even if the stream is reset). */
  awaiting = false;
  /** @internal a decision is running for it: the handler has the request and has not answered yet. */
  get deciding(): boolean {
    return this.awaiting && !this.headersSent;
  }
  /** @internal the request's content-length, or -1 (RFC 9113 §8.1.1: it must match the DATA received). */
  contentLength = -1;
  /** @internal */ body: Buffer | undefined = undefined;
  /** @internal */ chunks: Buffer[] | undefined = undefined;
  /** @internal bytes of DATA received and not yet returned to the connection window. */
  held = 0;
  /** @internal */ bodySize = 0;
  /** @internal */ discard = false;
  /** @internal */ emptyFrames = 0;

  constructor(conn: H2Connection, id: number, sendWindow: number, recvWindow: number) {
    this.conn = conn;
    this.id = id;
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
  }

  /** A complete response: headers, then (with trailers) one DATA frame and the trailers; without trailers the headers end the stream. */
  respond(headerBlock: Buffer, data: Buffer | undefined, trailerBlock: Buffer | undefined): void {
    this.conn.respond(this, headerBlock, data, trailerBlock);
  }

  /** Starts a streaming response. */
  sendHeaders(headerBlock: Buffer): void {
    this.conn.sendHeaders(this, headerBlock, false);
  }

  sendData(data: Buffer): void {
    this.conn.sendData(this, data, false);
  }

  /** Ends a started response with trailers. */
  end(trailerBlock: Buffer): void {
    this.conn.sendHeaders(this, trailerBlock, true);
  }
}

export interface H2ConnectionOptions {
  socket: Socket;
  handler: H2Handler;
  limits?: Partial<H2Limits>;
  /** Called once when the connection is gone (socket closed). */
  onClose?: (conn: H2Connection) => void;
}

class ConnectionError extends Error {
  readonly h2code: number;
  constructor(code: number, message: string) {
    super(message);
    this.h2code = code;
  }
}

function frameHeader(out: Buffer, at: number, length: number, type: number, flags: number, streamId: number): void {
  out[at] = (length >>> 16) & 0xff;
  out[at + 1] = (length >>> 8) & 0xff;
  out[at + 2] = length & 0xff;
  out[at + 3] = type;
  out[at + 4] = flags;
  out.writeUInt32BE(streamId, at + 5);
}

function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const b = Buffer.allocUnsafe(9 + payload.length);
  frameHeader(b, 0, payload.length, type, flags, streamId);
  payload.copy(b, 9);
  return b;
}

function u32Frame(type: number, streamId: number, value: number): Buffer {
  const b = Buffer.allocUnsafe(13);
  frameHeader(b, 0, 4, type, 0, streamId);
  b.writeUInt32BE(value >>> 0, 9);
  return b;
}

/** A HEADERS frame for `block`, split into CONTINUATION frames beyond `maxFrame`. */
function headersFrames(streamId: number, block: Buffer, endStream: boolean, maxFrame: number): Buffer {
  if (block.length <= maxFrame) {
    const b = Buffer.allocUnsafe(9 + block.length);
    frameHeader(b, 0, block.length, FrameType.HEADERS, Flag.END_HEADERS | (endStream ? Flag.END_STREAM : 0), streamId);
    block.copy(b, 9);
    return b;
  }
  const parts: Buffer[] = [];
  for (let at = 0; at < block.length; at += maxFrame) {
    const piece = block.subarray(at, Math.min(block.length, at + maxFrame));
    const last = at + maxFrame >= block.length;
    const type = at === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
    const flags = (last ? Flag.END_HEADERS : 0) | (at === 0 && endStream ? Flag.END_STREAM : 0);
    parts.push(frame(type, flags, streamId, piece));
  }
  return Buffer.concat(parts);
}

export class H2Connection {
  readonly socket: Socket;
  private readonly handler: H2Handler;
  private readonly limits: H2Limits;
  private readonly onCloseCb: ((conn: H2Connection) => void) | undefined;
  private readonly decoder: HpackDecoder;
  private readonly streams = new Map<number, H2Stream>();
  private readonly onHeaderField: (name: string, value: string) => void;

  private prefaceSeen = false;
  private settingsSeen = false;
  private inbuf: Buffer = EMPTY;
  private out: Buffer[] = [];
  private outBytes = 0;
  private flushQueued = false;
  private inTurn = false;

  private lastStreamId = 0;
  /** Streams counted against maxConcurrentStreams (open, half-closed, or reset with our work still pending). */
  private active = 0;
  private peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxFrame = DEFAULT_MAX_FRAME;
  private connSendWindow = DEFAULT_WINDOW;
  private connRecvWindow: number;
  private connRecvUnacked = 0;
  private readonly streamRecvWindow: number;
  private readonly connWindowTarget: number;
  /** Streams whose DATA waits for the connection window, in order. */
  private blocked: H2Stream[] = [];
  private queuedBytes = 0;

  /** Header block being assembled from HEADERS + CONTINUATION. */
  private hbStream = 0;
  private hbParts: Buffer[] | undefined = undefined;
  private hbSize = 0;
  private hbEndStream = false;
  private hbTarget: H2Stream | undefined = undefined;
  private hbMalformed = '';
  private hbSawRegular = false;
  /** The stream whose trailers the current block carries. */
  private hbTrailersOf: H2Stream | undefined = undefined;
  /** The block opens a stream we refuse (GOAWAY sent, or too many open). */
  private hbRefused = false;


  /**
   * RFC 7541 §4.2: once the client lowers SETTINGS_HEADER_TABLE_SIZE below the
   * table size our encoder may use, the next header block we send must start
   * with a dynamic table size update (nghttp2-based clients refuse the block
   * otherwise). Our encoder never indexes, so it signals 0 once and is then
   * below any value the client can set.
   */
  private encoderTableSize = DEFAULT_HEADER_TABLE_SIZE;
  private tableSizeUpdatePending = false;
  /** Streams we sent RST_STREAM on, oldest first (bounded by RECENT_RESETS). */
  private readonly resetSent = new Set<number>();

  private goawaySent = false;
  /** Graceful shutdown: new streams refused, socket ended once the last stream closes. */
  private closing = false;
  private closed = false;

  constructor(opts: H2ConnectionOptions) {
    this.socket = opts.socket;
    this.handler = opts.handler;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.onCloseCb = opts.onClose;
    this.decoder = createHpackDecoder({ maxTableSize: 4096, maxHeaderListSize: this.limits.maxHeaderListSize });
    this.onHeaderField = (name, value) => this.headerField(name, value);
    // A stream's window holds a whole request, so a unary call never waits for a WINDOW_UPDATE from us.
    this.streamRecvWindow = Math.min(MAX_WINDOW, this.limits.maxBodyBytes + DEFAULT_MAX_FRAME);
    // The connection window bounds what all unfinished requests of one connection can make us hold.
    this.connWindowTarget = Math.min(MAX_WINDOW, Math.max(4 * this.streamRecvWindow, 16 * 1024 * 1024));
    this.connRecvWindow = this.connWindowTarget;

    const s = Buffer.allocUnsafe(24);
    const put = (i: number, id: number, v: number): void => {
      s.writeUInt16BE(id, i * 6);
      s.writeUInt32BE(v, i * 6 + 2);
    };
    put(0, Setting.MAX_CONCURRENT_STREAMS, this.limits.maxConcurrentStreams);
    put(1, Setting.INITIAL_WINDOW_SIZE, this.streamRecvWindow);
    put(2, Setting.MAX_HEADER_LIST_SIZE, this.limits.maxHeaderListSize);
    put(3, Setting.ENABLE_PUSH, 0);
    this.push(frame(FrameType.SETTINGS, 0, 0, s));
    this.push(u32Frame(FrameType.WINDOW_UPDATE, 0, this.connWindowTarget - DEFAULT_WINDOW));
    this.flush();

    if (this.limits.handshakeTimeoutMs > 0) {
      // The socket's own inactivity timer: cleared once SETTINGS arrives (onSettings).
      this.socket.setTimeout(this.limits.handshakeTimeoutMs, () => {
        if (!this.settingsSeen) this.destroy();
      });
    }
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', () => this.destroy());
    this.socket.on('close', () => this.destroy());
    this.socket.on('end', () => this.onPeerEnd());
  }

  /** Streams currently counted as open. */
  get openStreams(): number {
    return this.active;
  }

  // ---------------------------------------------------------------- output

  private push(b: Buffer): void {
    this.out.push(b);
    this.outBytes += b.length;
    if (!this.inTurn && !this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.flushQueued = false;
    if (this.out.length === 0 || this.closed) {
      this.out.length = 0;
      this.outBytes = 0;
      return;
    }
    const data = this.out.length === 1 ? (this.out[0] as Buffer) : Buffer.concat(this.out, this.outBytes);
    this.out = [];
    this.outBytes = 0;
    this.socket.write(data);
    // A client that stops reading would make us buffer without bound.
    if (this.socket.writableLength > this.limits.maxQueuedOutputBytes) this.fail(new ConnectionError(H2Error.ENHANCE_YOUR_CALM, 'the client does not read its responses'));
  }

  // ---------------------------------------------------------------- responses

  /** @internal */
  respond(st: H2Stream, headerBlock: Buffer, data: Buffer | undefined, trailerBlock: Buffer | undefined): void {
    if (st.cancelled || st.headersSent || this.closed) return this.release(st);
    st.headersSent = true;
    const hb = this.outgoingBlock(headerBlock);
    if (!trailerBlock && (!data || data.length === 0)) {
      // Trailers-only (or a bodiless HTTP error).
      this.push(headersFrames(st.id, hb, true, this.peerMaxFrame));
      this.finishLocal(st);
      return;
    }
    if (data && data.length > 0 && data.length <= st.sendWindow && data.length <= this.connSendWindow && data.length <= this.peerMaxFrame && !st.pending && trailerBlock) {
      // The common case: headers, one DATA frame and trailers in one buffer.
      const hl = hb.length;
      const tl = trailerBlock.length;
      if (hl <= this.peerMaxFrame && tl <= this.peerMaxFrame) {
        const b = Buffer.allocUnsafe(27 + hl + data.length + tl);
        frameHeader(b, 0, hl, FrameType.HEADERS, Flag.END_HEADERS, st.id);
        hb.copy(b, 9);
        let at = 9 + hl;
        frameHeader(b, at, data.length, FrameType.DATA, 0, st.id);
        data.copy(b, at + 9);
        at += 9 + data.length;
        frameHeader(b, at, tl, FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, st.id);
        trailerBlock.copy(b, at + 9);
        st.sendWindow -= data.length;
        this.connSendWindow -= data.length;
        this.push(b);
        this.finishLocal(st);
        return;
      }
    }
    this.push(headersFrames(st.id, hb, false, this.peerMaxFrame));
    if (data && data.length > 0) this.sendData(st, data, !trailerBlock);
    if (trailerBlock) this.sendHeaders(st, trailerBlock, true);
  }

  /** A header block about to be sent, behind the dynamic table size update it owes the client, if any (RFC 7541 §4.2). */
  private outgoingBlock(block: Buffer): Buffer {
    if (!this.tableSizeUpdatePending) return block;
    this.tableSizeUpdatePending = false;
    return Buffer.concat([TABLE_SIZE_UPDATE_ZERO, block]);
  }

  /** @internal */
  sendHeaders(st: H2Stream, block: Buffer, endStream: boolean): void {
    if (st.cancelled || st.ended || this.closed) return this.release(st);
    if (!endStream) {
      if (st.headersSent) return;
      st.headersSent = true;
    }
    if (st.pending) {
      // Trailers wait behind DATA that waits for a window.
      st.pending.push({ headers: true, block, end: endStream });
      this.queuedBytes += 9 + block.length;
      if (endStream) st.ended = true;
      return;
    }
    this.push(headersFrames(st.id, this.outgoingBlock(block), endStream, this.peerMaxFrame));
    if (endStream) this.finishLocal(st);
  }

  /** @internal */
  sendData(st: H2Stream, data: Buffer, endStream: boolean): void {
    if (st.cancelled || st.ended || this.closed) return this.release(st);
    const n = data.length;
    if (!st.pending && n <= st.sendWindow && n <= this.connSendWindow && n <= this.peerMaxFrame) {
      st.sendWindow -= n;
      this.connSendWindow -= n;
      this.push(frame(FrameType.DATA, endStream ? Flag.END_STREAM : 0, st.id, data));
      if (endStream) this.finishLocal(st);
      return;
    }
    (st.pending ??= []).push({ headers: false, data, end: endStream });
    this.queuedBytes += 9 + n;
    if (endStream) st.ended = true;
    // Whatever the windows allow goes now (split into frames, a window smaller than the message
    // still gets a partial frame); the rest waits for WINDOW_UPDATE.
    if (this.drainStream(st)) return;
    if (!st.blocked) {
      st.blocked = true;
      this.blocked.push(st);
    }
    if (this.queuedBytes > this.limits.maxQueuedOutputBytes) {
      this.fail(new ConnectionError(H2Error.ENHANCE_YOUR_CALM, 'the client keeps its flow-control windows closed'));
    }
  }

  /**
   * Sends the stream's waiting output, in order, as far as the windows allow:
   * DATA is split to the space available (RFC 9113 §6.9.1: a client may keep its
   * window below one message; waiting for a whole frame to fit could wait forever).
   * Returns true when nothing waits any more.
   */
  private drainStream(st: H2Stream): boolean {
    const q = st.pending;
    if (!q || st.cancelled) {
      st.pending = undefined;
      return true;
    }
    while (q.length > 0) {
      const e = q[0] as Pending;
      if (e.headers) {
        q.shift();
        this.queuedBytes -= 9 + e.block.length;
        this.push(headersFrames(st.id, this.outgoingBlock(e.block), e.end, this.peerMaxFrame));
        continue;
      }
      const len = e.data.length;
      if (len > 0) {
        const room = Math.min(st.sendWindow, this.connSendWindow, this.peerMaxFrame);
        if (room <= 0) break;
        if (room < len) {
          this.push(frame(FrameType.DATA, 0, st.id, e.data.subarray(0, room)));
          e.data = e.data.subarray(room);
          this.queuedBytes -= room;
          st.sendWindow -= room;
          this.connSendWindow -= room;
          continue;
        }
      }
      q.shift();
      this.queuedBytes -= 9 + len;
      st.sendWindow -= len;
      this.connSendWindow -= len;
      this.push(frame(FrameType.DATA, e.end ? Flag.END_STREAM : 0, st.id, e.data));
    }
    if (q.length > 0) return false;
    st.pending = undefined;
    if (st.ended) {
      st.ended = false;
      this.finishLocal(st);
    }
    return true;
  }

  /** Sends what waits for flow-control windows, stream by stream in the order they blocked, as far as the windows allow. */
  private drainBlocked(): void {
    if (this.blocked.length === 0) return;
    const still: H2Stream[] = [];
    for (const st of this.blocked) {
      if (this.drainStream(st)) st.blocked = false;
      else still.push(st);
    }
    this.blocked = still;
  }

  /** We sent END_STREAM. */
  private finishLocal(st: H2Stream): void {
    st.ended = true;
    if (st.state === State.Open) {
      // Answered before the client finished sending: ask it to stop without error (RFC 9113 §8.1).
      this.sendReset(st.id, H2Error.NO_ERROR);
    }
    this.closeStream(st);
  }

  /** A cancelled stream's handler finished (its answer was dropped): free its slot. */
  private release(st: H2Stream): void {
    if (st.cancelled && this.streams.get(st.id) === st) this.closeStream(st);
  }

  private closeStream(st: H2Stream): void {
    if (st.state === State.Closed && this.streams.get(st.id) !== st) return;
    st.state = State.Closed;
    if (this.streams.get(st.id) === st) {
      this.streams.delete(st.id);
      this.active--;
    }
    this.dropBody(st);
    if (this.closing && this.streams.size === 0) this.endSocket();
  }

  /** Forgets the body collected so far and gives its bytes back to the connection window. */
  private dropBody(st: H2Stream): void {
    this.returnHeld(st);
    st.body = undefined;
    st.chunks = undefined;
  }

  /** Gives the stream's buffered DATA back to the connection window. */
  private returnHeld(st: H2Stream): void {
    if (st.held > 0) {
      this.consumed(st.held);
      st.held = 0;
    }
  }

  private consumed(n: number): void {
    this.connRecvUnacked += n;
    if (this.connRecvUnacked >= this.connWindowTarget / 2) {
      this.push(u32Frame(FrameType.WINDOW_UPDATE, 0, this.connRecvUnacked));
      this.connRecvWindow += this.connRecvUnacked;
      this.connRecvUnacked = 0;
    }
  }

  // ---------------------------------------------------------------- shutdown

  /**
   * Graceful close: GOAWAY (streams the client has sent and we have seen are
   * answered, later ones are refused), the socket ends when the last stream does.
   */
  close(): void {
    if (this.closed || this.closing) return;
    this.closing = true;
    this.goaway(H2Error.NO_ERROR, '');
    if (this.streams.size === 0) this.endSocket();
  }

  /**
   * The client half-closed its side (TCP FIN): it sends nothing more, but may
   * still read. Calls it finished sending are answered; streams still waiting
   * for request bytes can never finish and are dropped; the socket ends after
   * the last answer. (Servers create the socket with `allowHalfOpen`, or Node
   * would end our side at once and lose the answers still being decided.)
   */
  private onPeerEnd(): void {
    if (this.closed) return;
    if (!this.settingsSeen) return this.destroy();
    this.closing = true;
    // Which calls will still be answered: those up to the last stream seen.
    this.goaway(H2Error.NO_ERROR, '');
    for (const st of [...this.streams.values()]) if (!st.deciding) this.endStreamNow(st);
    if (this.streams.size === 0) this.endSocket();
  }

  /** Drops the connection now; open streams are cancelled. */
  destroy(): void {
    if (!this.closed) this.finish(false);
  }

  /** Ends the socket once what is queued has been written (the last stream is done, or the client said GOAWAY). */
  private endSocket(): void {
    if (this.closed) return;
    this.flush();
    // That write may have found the client not reading and failed the connection already.
    if (!this.closed) this.finish(true);
  }

  /** The one way a connection ends: cancel what is open, then end the socket after its output (graceful) or drop it. */
  private finish(graceful: boolean): void {
    this.closed = true;
    for (const st of this.streams.values()) this.cancel(st);
    this.streams.clear();
    this.active = 0;
    this.blocked = [];
    if (graceful) {
      this.socket.end();
      // A peer that never closes its side does not keep the socket forever.
      setTimeout(() => this.socket.destroy(), 1000).unref();
    } else {
      this.out.length = 0;
      this.socket.destroy();
    }
    this.onCloseCb?.(this);
  }

  private goaway(code: number, debug: string): void {
    if (this.goawaySent || this.closed) return;
    this.goawaySent = true;
    const d = Buffer.from(debug, 'utf8');
    const p = Buffer.allocUnsafe(8 + d.length);
    p.writeUInt32BE(this.lastStreamId, 0);
    p.writeUInt32BE(code, 4);
    d.copy(p, 8);
    this.push(frame(FrameType.GOAWAY, 0, 0, p));
  }

  private fail(err: ConnectionError): void {
    if (this.closed) return;
    this.goaway(err.h2code, err.message);
    this.endSocket();
  }

  private cancel(st: H2Stream): void {
    if (st.cancelled) return;
    st.cancelled = true;
    if (st.pending) for (const e of st.pending) this.queuedBytes -= 9 + (e.headers ? e.block.length : e.data.length);
    st.pending = undefined;
    const cb = st.onCancel;
    st.onCancel = undefined;
    if (cb) {
      try {
        cb();
      } catch {
        // A handler's cleanup must not break the connection.
      }
    }
  }

  // ---------------------------------------------------------------- input

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let buf = this.inbuf.length === 0 ? chunk : Buffer.concat([this.inbuf, chunk]);
    this.inTurn = true;
    try {
      let at = 0;
      if (!this.prefaceSeen) {
        const n = Math.min(buf.length, PREFACE.length);
        if (buf.compare(PREFACE, 0, n, 0, n) !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'not an HTTP/2 client preface');
        if (buf.length < PREFACE.length) {
          this.inbuf = buf;
          return;
        }
        this.prefaceSeen = true;
        at = PREFACE.length;
      }
      while (buf.length - at >= 9 && !this.closed) {
        const len = (buf[at]! << 16) | (buf[at + 1]! << 8) | buf[at + 2]!;
        if (len > DEFAULT_MAX_FRAME) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, `frame of ${len} bytes exceeds SETTINGS_MAX_FRAME_SIZE`);
        if (buf.length - at < 9 + len) break;
        const type = buf[at + 3]!;
        const flags = buf[at + 4]!;
        const sid = buf.readUInt32BE(at + 5) & MAX_WINDOW;
        this.onFrame(type, flags, sid, buf, at + 9, at + 9 + len);
        at += 9 + len;
      }
      if (this.closed) return;
      if (at === buf.length) this.inbuf = EMPTY;
      else {
        // Keep only the partial frame; copy it so the big read buffer can go.
        buf = buf.subarray(at);
        this.inbuf = Buffer.from(buf);
      }
      this.drainBlocked();
    } catch (err) {
      if (err instanceof ConnectionError) this.fail(err);
      else if (err instanceof HpackError) this.fail(new ConnectionError(H2Error.COMPRESSION_ERROR, err.message));
      else this.fail(new ConnectionError(H2Error.INTERNAL_ERROR, 'internal error'));
      return;
    } finally {
      this.inTurn = false;
    }
    this.flush();
  }

  private onFrame(type: number, flags: number, sid: number, b: Buffer, start: number, end: number): void {
    if (!this.settingsSeen && type !== FrameType.SETTINGS) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'the first frame must be SETTINGS');
    if (this.hbParts && type !== FrameType.CONTINUATION) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'a header block was interrupted');
    switch (type) {
      case FrameType.DATA:
        return this.onDataFrame(flags, sid, b, start, end);
      case FrameType.HEADERS:
        return this.onHeadersFrame(flags, sid, b, start, end);
      case FrameType.CONTINUATION:
        return this.onContinuation(flags, sid, b, start, end);
      case FrameType.SETTINGS:
        return this.onSettings(flags, sid, b, start, end);
      case FrameType.PING:
        if (sid !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'PING on a stream');
        if (end - start !== 8) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'PING payload is not 8 bytes');
        if (flags & Flag.ACK) return;
        this.push(frame(FrameType.PING, Flag.ACK, 0, b.subarray(start, end)));
        return;
      case FrameType.WINDOW_UPDATE:
        return this.onWindowUpdate(sid, b, start, end);
      case FrameType.RST_STREAM:
        return this.onRstStream(sid, b, start, end);
      case FrameType.PRIORITY: {
        if (sid === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        // Stream errors; on a stream that is still idle a RST_STREAM is not allowed (RFC 9113 §6.4), so the connection goes.
        const code = end - start !== 5 ? H2Error.FRAME_SIZE_ERROR : (b.readUInt32BE(start) & MAX_WINDOW) === sid ? H2Error.PROTOCOL_ERROR : H2Error.NO_ERROR;
        if (code === H2Error.NO_ERROR) return; // priorities are ignored (RFC 9113 §5.3.2)
        if (sid > this.lastStreamId) throw new ConnectionError(code, 'invalid PRIORITY frame on an idle stream');
        return this.resetStream(sid, code);
      }
      case FrameType.GOAWAY:
        if (sid !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'GOAWAY on a stream');
        if (end - start < 8) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'GOAWAY shorter than 8 bytes');
        // The client opens no more streams; finish what is open, then close.
        this.closing = true;
        if (this.streams.size === 0) this.endSocket();
        return;
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'a client cannot push');
      default:
      // Unknown frame types are ignored (RFC 9113 §4.1).
    }
  }

  private onSettings(flags: number, sid: number, b: Buffer, start: number, end: number): void {
    if (sid !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & Flag.ACK) {
      if (end !== start) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      return;
    }
    if ((end - start) % 6 !== 0) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'SETTINGS payload is not a multiple of 6');
    if (!this.settingsSeen && this.limits.handshakeTimeoutMs > 0) this.socket.setTimeout(0);
    this.settingsSeen = true;
    for (let at = start; at < end; at += 6) {
      const id = b.readUInt16BE(at);
      const v = b.readUInt32BE(at + 2);
      if (id === Setting.ENABLE_PUSH && v > 1) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'SETTINGS_ENABLE_PUSH must be 0 or 1');
      if (id === Setting.INITIAL_WINDOW_SIZE) {
        if (v > MAX_WINDOW) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1');
        const delta = v - this.peerInitialWindow;
        this.peerInitialWindow = v;
        for (const st of this.streams.values()) {
          st.sendWindow += delta;
          if (st.sendWindow > MAX_WINDOW) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'a stream window passed 2^31-1');
        }
      } else if (id === Setting.MAX_FRAME_SIZE) {
        if (v < DEFAULT_MAX_FRAME || v > 0xffffff) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'SETTINGS_MAX_FRAME_SIZE out of range');
        this.peerMaxFrame = v;
      }
      else if (id === Setting.HEADER_TABLE_SIZE && v < this.encoderTableSize) {
        // Our encoder never indexes; it owes the client a size update (to 0) at the start of its next header block.
        this.encoderTableSize = 0;
        this.tableSizeUpdatePending = true;
      }
      // Others: nothing to do.
    }
    this.push(frame(FrameType.SETTINGS, Flag.ACK, 0, EMPTY));
  }

  private onWindowUpdate(sid: number, b: Buffer, start: number, end: number): void {
    if (end - start !== 4) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'WINDOW_UPDATE payload is not 4 bytes');
    const inc = b.readUInt32BE(start) & MAX_WINDOW;
    if (sid === 0) {
      if (inc === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'WINDOW_UPDATE of 0');
      this.connSendWindow += inc;
      if (this.connSendWindow > MAX_WINDOW) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'the connection window passed 2^31-1');
      return;
    }
    if (sid > this.lastStreamId) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'WINDOW_UPDATE on an idle stream');
    // An increment of 0 is a stream error whatever the stream's state (RFC 9113 §6.9).
    if (inc === 0) return this.resetStream(sid, H2Error.PROTOCOL_ERROR);
    const st = this.streams.get(sid);
    if (!st) return; // a closed stream: WINDOW_UPDATE may still arrive (RFC 9113 §5.1)
    st.sendWindow += inc;
    if (st.sendWindow > MAX_WINDOW) return this.resetStream(sid, H2Error.FLOW_CONTROL_ERROR);
  }

  private onRstStream(sid: number, b: Buffer, start: number, end: number): void {
    if (sid === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
    if (end - start !== 4) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'RST_STREAM payload is not 4 bytes');
    if (sid > this.lastStreamId) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'RST_STREAM on an idle stream');
    const st = this.streams.get(sid);
    if (st) this.endStreamNow(st);
  }

  /**
   * The stream is over for the client (reset, by it or by us): anything we send on it is
   * dropped. Its slot stays taken while our work on the request is still running (it is
   * released when the handler answers: "rapid reset" cannot queue unbounded work);
   * otherwise it is free now.
   */
  private endStreamNow(st: H2Stream): void {
    const working = st.deciding;
    this.cancel(st);
    if (!working) return this.closeStream(st);
    st.state = State.Closed;
    this.dropBody(st);
  }

  /** A stream error: RST_STREAM to the client, the stream is over. */
  private resetStream(sid: number, code: number): void {
    this.sendReset(sid, code);
    const st = this.streams.get(sid);
    if (st) this.endStreamNow(st);
  }

  /** Sends RST_STREAM and remembers it: what the client had already sent on the stream is then ignored. */
  private sendReset(sid: number, code: number): void {
    this.push(u32Frame(FrameType.RST_STREAM, sid, code));
    this.resetSent.add(sid);
    if (this.resetSent.size > RECENT_RESETS) {
      const oldest = this.resetSent.values().next();
      if (!oldest.done) this.resetSent.delete(oldest.value);
    }
  }

  private onDataFrame(flags: number, sid: number, b: Buffer, start: number, end: number): void {
    if (sid === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'DATA on stream 0');
    if (sid > this.lastStreamId) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'DATA on an idle stream');
    const length = end - start;
    this.connRecvWindow -= length;
    if (this.connRecvWindow < 0) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'DATA beyond the connection window');
    let from = start;
    let to = end;
    if (flags & Flag.PADDED) {
      if (length < 1) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'padded DATA without a pad length');
      const pad = b[start]!;
      if (pad >= length) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'DATA padding longer than the frame');
      from = start + 1;
      to = end - pad;
    }
    const st = this.streams.get(sid);
    if (!st || st.state !== State.Open) {
      // Not open: its flow-control bytes still count, the data is dropped.
      this.consumed(length);
      // After our RST_STREAM, frames the client had already sent are ignored (RFC 9113 §5.1).
      if (this.resetSent.has(sid)) return;
      // Half-closed (remote) or closed by the client's END_STREAM or RST_STREAM: STREAM_CLOSED (RFC 9113 §5.1, §6.1).
      if (st) return this.resetStream(sid, H2Error.STREAM_CLOSED);
      return this.sendReset(sid, H2Error.STREAM_CLOSED);
    }
    st.recvWindow -= length;
    if (st.recvWindow < 0) {
      this.consumed(length);
      return this.resetStream(sid, H2Error.FLOW_CONTROL_ERROR);
    }
    const endStream = (flags & Flag.END_STREAM) !== 0;
    if (st.discard) this.consumed(length);
    else {
      st.held += length;
      const n = to - from;
      if (n === 0 && !endStream && ++st.emptyFrames > 64) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, 'a flood of empty DATA frames');
      if (n > 0) {
        st.bodySize += n;
        if (st.contentLength >= 0 && st.bodySize > st.contentLength) return this.resetStream(sid, H2Error.PROTOCOL_ERROR);
        if (st.bodySize > this.limits.maxBodyBytes) {
          st.discard = true;
          this.dropBody(st);
          try {
            this.handler.onBodyTooLarge(st);
          } catch {
            this.resetStream(sid, H2Error.INTERNAL_ERROR);
          }
          return;
        }
        const piece = b.subarray(from, to);
        if (st.body === undefined) st.body = piece;
        else (st.chunks ??= [st.body]).push(piece);
      }
    }
    if (endStream) this.remoteEnded(st);
  }

  private remoteEnded(st: H2Stream): void {
    if (st.state === State.Open) st.state = State.HalfClosedRemote;
    if (st.discard || st.ended) {
      // Already answered (early response or too large): nothing to hand over.
      if (st.ended) this.closeStream(st);
      return;
    }
    // RFC 9113 §8.1.1: a content-length that is not the body's length makes the request malformed.
    if (st.contentLength >= 0 && st.contentLength !== st.bodySize) return this.resetStream(st.id, H2Error.PROTOCOL_ERROR);
    const body = st.chunks ? Buffer.concat(st.chunks, st.bodySize) : (st.body ?? EMPTY);
    // The request is ours now: its bytes go back to the connection window.
    this.dropBody(st);
    st.awaiting = true;
    try {
      this.handler.onRequest(st, body);
    } catch {
      // The handler has nothing running for this stream: its slot is freed with the reset.
      st.awaiting = false;
      this.resetStream(st.id, H2Error.INTERNAL_ERROR);
    }
  }

  private onHeadersFrame(flags: number, sid: number, b: Buffer, start: number, end: number): void {
    if (sid === 0 || (sid & 1) === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'HEADERS on stream 0 or an even stream');
    let from = start;
    let to = end;
    if (flags & Flag.PADDED) {
      if (end - start < 1) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'padded HEADERS without a pad length');
      const pad = b[start]!;
      from++;
      if (pad > to - from) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'HEADERS padding longer than the frame');
      to -= pad;
    }
    if (flags & Flag.PRIORITY) {
      if (to - from < 5) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'HEADERS too short for its priority');
      if ((b.readUInt32BE(from) & MAX_WINDOW) === sid) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'a stream cannot depend on itself');
      from += 5;
    }
    const endStream = (flags & Flag.END_STREAM) !== 0;
    this.hbStream = sid;
    this.hbEndStream = endStream;
    this.hbParts = [];
    this.hbSize = 0;
    this.hbMalformed = '';
    this.hbSawRegular = false;
    this.hbTarget = undefined;
    this.hbTrailersOf = undefined;
    this.hbRefused = false;
    if (sid > this.lastStreamId) {
      // A new request.
      this.lastStreamId = sid;
      if (this.closing || this.goawaySent || this.active >= this.limits.maxConcurrentStreams) this.hbRefused = true;
      else {
        const st = new H2Stream(this, sid, this.peerInitialWindow, this.streamRecvWindow);
        this.streams.set(sid, st);
        this.active++;
        this.hbTarget = st;
      }
    } else {
      const st = this.streams.get(sid);
      if (st && st.state === State.Open) {
        // Request trailers: they must end the stream; nothing portcullis reads.
        if (!endStream) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'a second HEADERS that does not end the stream');
        this.hbTrailersOf = st;
      } else if (this.resetSent.has(sid)) {
        // A stream we reset: the client may have sent this before our RST_STREAM reached it. The block
        // is decoded to keep HPACK in step, then dropped (RFC 9113 §5.1).
      } else if (st) throw new ConnectionError(H2Error.STREAM_CLOSED, 'HEADERS on a stream the client has ended or reset');
      // A stream that ended normally, or an id below the last one opened that was never used (RFC 9113 §5.1, §5.1.1).
      else throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'HEADERS on a closed stream or a lower stream id than the last');
    }
    this.addFragment(b, from, to, (flags & Flag.END_HEADERS) !== 0);
  }

  private onContinuation(flags: number, sid: number, b: Buffer, start: number, end: number): void {
    if (!this.hbParts || sid !== this.hbStream) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'CONTINUATION without a header block in progress');
    this.addFragment(b, start, end, (flags & Flag.END_HEADERS) !== 0);
  }

  private addFragment(b: Buffer, from: number, to: number, endHeaders: boolean): void {
    const parts = this.hbParts as Buffer[];
    this.hbSize += to - from;
    // Header blocks are bounded before decoding: a CONTINUATION flood ends the connection.
    if (this.hbSize > this.limits.maxHeaderListSize) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, 'header block larger than SETTINGS_MAX_HEADER_LIST_SIZE');
    if (!endHeaders) {
      // Copy: the read buffer may be reused before the block completes. Empty CONTINUATION
      // frames cost a client nothing to send, so their count is capped too.
      if (parts.length >= 32) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, 'a header block in more than 32 frames');
      parts.push(Buffer.from(b.subarray(from, to)));
      return;
    }
    const block = parts.length === 0 ? b.subarray(from, to) : Buffer.concat([...parts, b.subarray(from, to)]);
    this.hbParts = undefined;
    this.endBlock(block);
  }

  private endBlock(block: Buffer): void {
    const st = this.hbTarget;
    const trailersOf = this.hbTrailersOf;
    const sid = this.hbStream;
    // Decoded even when the stream is refused or gone: the HPACK table must stay in step.
    this.decoder.decode(block, this.onHeaderField);
    this.hbTarget = undefined;
    this.hbTrailersOf = undefined;
    if (this.hbRefused) {
      this.sendReset(sid, H2Error.REFUSED_STREAM);
      return;
    }
    if (trailersOf) {
      if (this.hbMalformed) return this.resetStream(sid, H2Error.PROTOCOL_ERROR);
      this.remoteEnded(trailersOf);
      return;
    }
    if (!st) return;
    if (!this.hbMalformed && (st.method === '' || st.path === '' || st.scheme === '')) this.hbMalformed = 'a request needs :method, :scheme and :path';
    const cl = st.headers['content-length'];
    if (cl !== undefined && !this.hbMalformed) {
      if (/^[0-9]{1,15}$/.test(cl)) st.contentLength = Number(cl);
      else this.hbMalformed = 'invalid content-length';
    }
    if (this.hbMalformed) return this.resetStream(sid, H2Error.PROTOCOL_ERROR);
    // The client's END_STREAM came with the headers: an answer from onHeaders closes the stream, no RST_STREAM needed.
    if (this.hbEndStream) st.state = State.HalfClosedRemote;
    let answered: boolean;
    try {
      answered = this.handler.onHeaders(st);
    } catch {
      // A handler's bug costs its own stream, never the connection's other calls.
      return this.resetStream(sid, H2Error.INTERNAL_ERROR);
    }
    if (answered) st.discard = true;
    if (this.hbEndStream) this.remoteEnded(st);
  }

  private headerField(name: string, value: string): void {
    if (this.hbMalformed) return;
    const st = this.hbTarget ?? this.hbTrailersOf;
    if (!st) return;
    const trailers = st === this.hbTrailersOf;
    if (name.charCodeAt(0) === 58 /* ':' */) {
      if (this.hbSawRegular || trailers) {
        this.hbMalformed = 'pseudo-header after a regular header, or in trailers';
        return;
      }
      switch (name) {
        case ':method':
          if (st.method !== '') this.hbMalformed = 'duplicate :method';
          st.method = value;
          return;
        case ':path':
          if (st.path !== '') this.hbMalformed = 'duplicate :path';
          st.path = value;
          return;
        case ':scheme':
          if (st.scheme !== '') this.hbMalformed = 'duplicate :scheme';
          st.scheme = value;
          return;
        case ':authority':
          if (st.authority !== '') this.hbMalformed = 'duplicate :authority';
          st.authority = value;
          return;
        default:
          this.hbMalformed = `unknown pseudo-header ${name}`;
          return;
      }
    }
    this.hbSawRegular = true;
    for (let i = 0; i < name.length; i++) {
      const c = name.charCodeAt(i);
      // Lower-case token characters only (RFC 9113 §8.2.1).
      if (c <= 0x20 || c >= 0x7f || (c >= 0x41 && c <= 0x5a)) {
        this.hbMalformed = 'header name with upper-case or invalid characters';
        return;
      }
    }
    if (CONNECTION_HEADERS.has(name) || (name === 'te' && value !== 'trailers')) {
      this.hbMalformed = `connection-specific header ${name}`;
      return;
    }
    if (trailers) return;
    const prev = st.headers[name];
    st.headers[name] = prev === undefined ? value : `${prev}, ${value}`;
  }
}
