import { status as grpcStatus } from '@grpc/grpc-js';
import type { CheckInput, Decision } from '../../core/types.js';
import type { CheckRequest__Output } from '../../generated/envoy/service/auth/v3/CheckRequest.js';
import type { CheckResponse } from '../../generated/envoy/service/auth/v3/CheckResponse.js';
import type { HeaderValueOption } from '../../generated/envoy/config/core/v3/HeaderValueOption.js';
import type { Struct } from '../../generated/google/protobuf/Struct.js';
import type { Value } from '../../generated/google/protobuf/Value.js';
import type { StatusCode } from '../../generated/envoy/type/v3/StatusCode.js';

/** One entry of `header_map` (encode_raw_headers): repeated names joined and counted. */
function addRawHeader(headers: Map<string, string>, counts: Map<string, number>, name: string, value: string): void {
  const prev = headers.get(name);
  // Repeated Cookie lines are one cookie string (RFC 9113 8.2.3); other headers join with ','.
  headers.set(name, prev === undefined ? value : `${prev}${name === 'cookie' ? '; ' : ','}${value}`);
  counts.set(name, (counts.get(name) ?? 0) + 1);
}

/** The CheckInput of decoded request fields: the query split off the path, pseudo-headers as fallbacks. */
function checkInputOf(
  http: { method: string; path: string; host: string; query: string },
  headers: Map<string, string>,
  counts: Map<string, number> | undefined,
  principal: string,
  ext: Map<string, string>,
): CheckInput {
  let path = http.path;
  let query = http.query;
  const q = path.indexOf('?');
  if (q >= 0) {
    if (!query) query = path.slice(q + 1);
    path = path.slice(0, q);
  }
  return {
    method: http.method || headers.get(':method') || '',
    host: http.host || headers.get(':authority') || headers.get('host') || '',
    path: path || headers.get(':path')?.split('?')[0] || '',
    query,
    headers,
    headerCounts: counts,
    peerPrincipal: principal || undefined,
    contextExtensions: ext,
  };
}

/** Maps Envoy's CheckRequest to the pipeline's input; undefined when the request carries no HTTP attributes. */
export function toCheckInput(req: CheckRequest__Output): CheckInput | undefined {
  const attrs = req.attributes;
  const http = attrs?.request?.http;
  if (!attrs || !http) return undefined;
  const headers = new Map<string, string>();
  let counts: Map<string, number> | undefined;
  const list = http.header_map?.headers;
  if (list && list.length > 0) {
    // encode_raw_headers: repeated headers arrive one by one, so duplicates can be counted.
    counts = new Map();
    for (const h of list) {
      const value = h.raw_value && h.raw_value.length > 0 ? h.raw_value.toString('utf8') : h.value;
      addRawHeader(headers, counts, h.key.toLowerCase(), value);
    }
  } else {
    for (const k in http.headers) headers.set(k.toLowerCase(), http.headers[k] as string);
  }
  const ext = new Map<string, string>();
  for (const k in attrs.context_extensions) ext.set(k, attrs.context_extensions[k] as string);
  return checkInputOf(http, headers, counts, attrs.source?.principal ?? '', ext);
}

function toValue(v: string | string[]): Value {
  return Array.isArray(v)
    ? { listValue: { values: v.map((s) => ({ stringValue: s })) } }
    : { stringValue: v };
}

function toStruct(md: Record<string, string | string[]>): Struct {
  const fields: Record<string, Value> = {};
  for (const k in md) fields[k] = toValue(md[k] as string | string[]);
  return { fields };
}

const OVERWRITE = 'OVERWRITE_IF_EXISTS_OR_ADD' as const;

function headerOptions(list: readonly { name: string; value: string }[]): HeaderValueOption[] {
  return list.map((h) => ({ header: { key: h.name, value: h.value }, append_action: OVERWRITE }));
}

/** Maps a decision to Envoy's CheckResponse. Every outcome is a response, never a gRPC error. */
export function toCheckResponse(d: Decision): CheckResponse {
  if (d.kind === 'allow') {
    return {
      status: { code: grpcStatus.OK, message: '' },
      ok_response: { headers: headerOptions(d.headersToSet), headers_to_remove: d.headersToRemove },
      dynamic_metadata: toStruct(d.metadata),
    };
  }
  const code =
    d.status === 401 ? grpcStatus.UNAUTHENTICATED : d.status >= 500 ? grpcStatus.UNAVAILABLE : grpcStatus.PERMISSION_DENIED;
  return {
    status: { code, message: d.reason },
    denied_response: {
      status: { code: d.status as StatusCode },
      headers: headerOptions([
        ...d.headers,
        { name: 'x-portcullis-reason', value: d.reason },
        { name: 'content-type', value: 'application/json' },
      ]),
      body: denyBody(d.reason, d.message),
    },
    dynamic_metadata: toStruct(d.metadata),
  };
}

export function denyBody(reason: string, message: string): string {
  return JSON.stringify({ error: reason, message });
}

// ---------------------------------------------------------------------------
// Wire codec for the hot path (docs/design/performance.md, "gRPC codec").
//
// @grpc/proto-loader decodes a CheckRequest into the full object tree
// (every field of AttributeContext, with defaults) and encodes a CheckResponse
// through protobufjs's fromObject/encode; on a cached-token decision that was
// several times the cost of the decision itself. These two functions do only
// what the pipeline needs, straight on the protobuf wire format:
//
// - createCheckRequestDecoder().decode reads the fields toCheckInput() looks at
//   (attributes → source.principal, context_extensions, request.http →
//   method, headers, header_map, path, host, query) straight into the
//   CheckInput that toCheckInput() makes of proto-loader's object, and skips
//   everything else by wire type. A malformed message throws, as protobufjs
//   does; the server then answers a deny (malformed_request).
// - encodeCheckResponse writes the exact bytes protobufjs writes for
//   toCheckResponse(d) (same fields, same order, same explicit defaults).
// bench/codec-check.ts checks both against protobufjs, in the unit suite and
// on every bench:micro run.

function fail(): never {
  throw new RangeError('malformed protobuf message');
}

/** Reader state for one decode: a position in `buf`. */
export interface Cursor {
  buf: Buffer;
  pos: number;
}

export function readVarint(c: Cursor, end: number): number {
  const buf = c.buf;
  let pos = c.pos;
  let result = 0;
  let shift = 0;
  for (;;) {
    if (pos >= end) fail();
    const b = buf[pos++] as number;
    if (shift < 28) result |= (b & 0x7f) << shift;
    else if (shift < 53) result += (b & 0x7f) * 2 ** shift;
    if (b < 0x80) break;
    shift += 7;
    if (shift > 63) fail();
  }
  c.pos = pos;
  return result >>> 0 === result ? result : result < 0 ? result >>> 0 : result;
}

/** Length of a length-delimited field; returns its end. */
function readLength(c: Cursor, end: number): number {
  const len = readVarint(c, end);
  const stop = c.pos + len;
  if (stop > end) fail();
  return stop;
}

export function readString(c: Cursor, end: number): string {
  const stop = readLength(c, end);
  const s = c.buf.toString('utf8', c.pos, stop);
  c.pos = stop;
  return s;
}

export function skip(c: Cursor, wireType: number, end: number): void {
  switch (wireType) {
    case 0:
      readVarint(c, end);
      return;
    case 1:
      c.pos += 8;
      break;
    case 2:
      c.pos = readLength(c, end);
      return;
    case 5:
      c.pos += 4;
      break;
    default:
      fail(); // groups (3/4) are not used by these messages
  }
  if (c.pos > end) fail();
}

/**
 * Header names by their bytes. Envoy sends the same dozen names with every
 * request, so each is decoded once and then found here: no new string per
 * name per request, and a name that is already hashed when it becomes a Map
 * key. Direct-mapped and fixed in size, so a client sending ever new names
 * only replaces slots. A slot holds only a name whose bytes are lowercase
 * ASCII: the string's characters are then exactly its bytes, which is how a
 * hit is confirmed. Per decoder instance (no module state).
 */
interface NameTable {
  readonly slots: (string | undefined)[];
  readonly mask: number;
}

/** Longer names are decoded every time (they are rare, and hashing them costs). */
const MAX_TABLE_NAME = 64;

function createNameTable(slots: number): NameTable {
  let size = 16;
  while (size < slots) size *= 2;
  return { slots: new Array<string | undefined>(size).fill(undefined), mask: size - 1 };
}

/** A length-delimited header name, lowercased (as toCheckInput does), through the name table. */
function readName(c: Cursor, end: number, names: NameTable): string {
  const stop = readLength(c, end);
  const buf = c.buf;
  const start = c.pos;
  const len = stop - start;
  c.pos = stop;
  if (len > MAX_TABLE_NAME) return buf.toString('utf8', start, stop).toLowerCase();
  let h = 0x811c9dc5 ^ len;
  for (let i = start; i < stop; i++) h = Math.imul(h ^ (buf[i] as number), 0x01000193);
  const slot = (h >>> 16) & names.mask;
  const known = names.slots[slot];
  if (known !== undefined && known.length === len) {
    let i = 0;
    while (i < len && known.charCodeAt(i) === buf[start + i]) i++;
    if (i === len) return known;
  }
  const name = buf.toString('utf8', start, stop);
  const lower = name.toLowerCase();
  // name.length === len: every byte was ASCII (one character each).
  if (lower === name && name.length === len) names.slots[slot] = name;
  return lower;
}

/** One map<string,string> entry into `into` (last key wins, as protobufjs does); header names through `names` when given. */
function readMapEntry(c: Cursor, end: number, into: Map<string, string>, names: NameTable | undefined): void {
  const stop = readLength(c, end);
  let key = '';
  let value = '';
  while (c.pos < stop) {
    const tag = readVarint(c, stop);
    if (tag === 10) key = names ? readName(c, stop, names) : readString(c, stop);
    else if (tag === 18) value = readString(c, stop);
    else skip(c, tag & 7, stop);
  }
  c.pos = stop;
  into.set(key, value);
}

/** `header_map` (Envoy's encode_raw_headers): repeated names joined and counted, as toCheckInput does. */
interface RawHeaders {
  headers: Map<string, string>;
  counts: Map<string, number>;
}

function readHeaderMap(c: Cursor, end: number, names: NameTable): RawHeaders {
  const stop = readLength(c, end);
  const headers = new Map<string, string>();
  const counts = new Map<string, number>();
  while (c.pos < stop) {
    const tag = readVarint(c, stop);
    if (tag === 10) {
      const hs = readLength(c, stop);
      let name = '';
      let value = '';
      let raw = '';
      while (c.pos < hs) {
        const t = readVarint(c, hs);
        if (t === 10) name = readName(c, hs, names);
        else if (t === 18) value = readString(c, hs);
        else if (t === 26) raw = readString(c, hs);
        else skip(c, t & 7, hs);
      }
      c.pos = hs;
      // raw_value, when present, is the value (Envoy leaves `value` empty then).
      addRawHeader(headers, counts, name, raw.length > 0 ? raw : value);
    } else skip(c, tag & 7, stop);
  }
  c.pos = stop;
  return { headers, counts };
}

/** AttributeContext.HttpRequest, the fields the pipeline reads. */
interface HttpFields {
  method: string;
  path: string;
  host: string;
  query: string;
  headers: Map<string, string>;
  raw: RawHeaders | undefined;
}

function readHttp(c: Cursor, end: number, names: NameTable): HttpFields {
  const stop = readLength(c, end);
  const http: HttpFields = { method: '', path: '', host: '', query: '', headers: new Map(), raw: undefined };
  while (c.pos < stop) {
    const tag = readVarint(c, stop);
    switch (tag) {
      case 18:
        http.method = readString(c, stop);
        break;
      case 26:
        readMapEntry(c, stop, http.headers, names);
        break;
      case 34:
        http.path = readString(c, stop);
        break;
      case 42:
        http.host = readString(c, stop);
        break;
      case 58:
        http.query = readString(c, stop);
        break;
      case 106:
        // A later header_map replaces an earlier one, as protobufjs decodes a repeated message field.
        http.raw = readHeaderMap(c, stop, names);
        break;
      default:
        skip(c, tag & 7, stop);
    }
  }
  c.pos = stop;
  return http;
}

function readRequest(c: Cursor, end: number, names: NameTable): HttpFields | undefined {
  const stop = readLength(c, end);
  let http: HttpFields | undefined;
  while (c.pos < stop) {
    const tag = readVarint(c, stop);
    if (tag === 18) http = readHttp(c, stop, names);
    else skip(c, tag & 7, stop);
  }
  c.pos = stop;
  return http;
}

function readPeerPrincipal(c: Cursor, end: number): string {
  const stop = readLength(c, end);
  let principal = '';
  while (c.pos < stop) {
    const tag = readVarint(c, stop);
    if (tag === 34) principal = readString(c, stop);
    else skip(c, tag & 7, stop);
  }
  c.pos = stop;
  return principal;
}

/** AttributeContext, the fields the pipeline reads. */
interface AttributeFields {
  principal: string;
  http: HttpFields | undefined;
  ext: Map<string, string>;
}

function readAttributes(c: Cursor, end: number, names: NameTable): AttributeFields {
  const stop = readLength(c, end);
  const attrs: AttributeFields = { principal: '', http: undefined, ext: new Map() };
  while (c.pos < stop) {
    const tag = readVarint(c, stop);
    if (tag === 10) attrs.principal = readPeerPrincipal(c, stop);
    else if (tag === 34) attrs.http = readRequest(c, stop, names);
    else if (tag === 82) readMapEntry(c, stop, attrs.ext, undefined);
    else skip(c, tag & 7, stop);
  }
  c.pos = stop;
  return attrs;
}

/**
 * Reads a CheckRequest's wire bytes straight into the pipeline's CheckInput:
 * the same CheckInput as toCheckInput() of protobufjs's decoding of the same
 * bytes (bench/codec-check.ts compares them), without building the protobuf
 * object tree first. Only `attributes.source.principal`,
 * `attributes.context_extensions` and `attributes.request.http.{method,
 * headers, header_map, path, host, query}` are read; every other field is
 * skipped by wire type.
 */
export interface CheckRequestDecoder {
  /** The request's CheckInput; undefined without HTTP attributes. Throws on a malformed message. */
  decode(buf: Buffer): CheckInput | undefined;
}

export function createCheckRequestDecoder(opts: { nameSlots?: number } = {}): CheckRequestDecoder {
  const names = createNameTable(opts.nameSlots ?? 256);
  return {
    decode(buf) {
      const c: Cursor = { buf, pos: 0 };
      const end = buf.length;
      let attrs: AttributeFields | undefined;
      while (c.pos < end) {
        const tag = readVarint(c, end);
        if (tag === 10) attrs = readAttributes(c, end, names);
        else skip(c, tag & 7, end);
      }
      const http = attrs?.http;
      if (!attrs || !http) return undefined;
      // header_map, when it has entries, stands for the headers (as in toCheckInput).
      const raw = http.raw !== undefined && http.raw.headers.size > 0 ? http.raw : undefined;
      return checkInputOf(http, raw?.headers ?? http.headers, raw?.counts, attrs.principal, attrs.ext);
    },
  };
}

function varintSize(n: number): number {
  return n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;
}

/** Size of a length-delimited field with a one-byte tag and a body of `len` bytes. */
function fieldSize(len: number): number {
  return 1 + varintSize(len) + len;
}

/**
 * Sizes in the order the writer needs them (the first pass fills, the second
 * reads). An encoder instance reuses its plan from call to call (encoding is
 * synchronous), so a response allocates no array for them.
 */
class Plan {
  sizes = new Int32Array(64);
  n = 0;
  at = 0;
  reset(): this {
    this.n = 0;
    this.at = 0;
    return this;
  }
  push(v: number): void {
    if (this.n === this.sizes.length) {
      const grown = new Int32Array(this.sizes.length * 2);
      grown.set(this.sizes);
      this.sizes = grown;
    }
    this.sizes[this.n++] = v;
  }
  next(): number {
    return this.sizes[this.at++] as number;
  }
}

/** Strings up to this length are written by a loop rather than buf.write. */
const SHORT_ASCII = 64;

class Out {
  buf: Buffer;
  pos: number;
  /** `start` bytes of headroom are left at the front (for a gRPC frame header). */
  constructor(size: number, start = 0) {
    this.buf = Buffer.allocUnsafe(start + size);
    this.pos = start;
  }
  byte(b: number): void {
    this.buf[this.pos++] = b;
  }
  varint(n: number): void {
    while (n > 0x7f) {
      this.buf[this.pos++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
  }
  str(tag: number, s: string, len: number): void {
    this.buf[this.pos++] = tag;
    this.varint(len);
    if (len !== s.length) {
      this.pos += this.buf.write(s, this.pos, len, 'utf8');
    } else if (len <= SHORT_ASCII) {
      // ASCII (UTF-8 length = UTF-16 length): one byte per character. A loop
      // costs ≈ 15 ns for a short string, buf.write ≈ 55 ns (a native call).
      const buf = this.buf;
      let pos = this.pos;
      for (let i = 0; i < len; i++) buf[pos++] = s.charCodeAt(i);
      this.pos = pos;
    } else this.pos += this.buf.write(s, this.pos, len, 'latin1');
  }
}

function sizeHeaders(list: readonly { name: string; value: string }[], p: Plan): number {
  let total = 0;
  for (const h of list) {
    const k = Buffer.byteLength(h.name);
    const v = Buffer.byteLength(h.value);
    const hv = fieldSize(k) + fieldSize(v);
    const hvo = fieldSize(hv) + 2; // + append_action (tag 24, value 2)
    p.push(k);
    p.push(v);
    p.push(hv);
    p.push(hvo);
    total += fieldSize(hvo);
  }
  return total;
}

function writeHeaders(o: Out, tag: number, list: readonly { name: string; value: string }[], p: Plan): void {
  for (const h of list) {
    const k = p.next();
    const v = p.next();
    const hv = p.next();
    const hvo = p.next();
    o.byte(tag);
    o.varint(hvo);
    o.byte(10);
    o.varint(hv);
    o.str(10, h.name, k);
    o.str(18, h.value, v);
    o.byte(24);
    o.byte(2);
  }
}

function sizeStruct(md: Record<string, string | string[]>, p: Plan): number {
  let total = 0;
  for (const key in md) {
    const v = md[key] as string | string[];
    const k = Buffer.byteLength(key);
    let value: number;
    if (Array.isArray(v)) {
      let list = 0;
      for (const item of v) {
        const n = Buffer.byteLength(item);
        p.push(n);
        list += fieldSize(fieldSize(n));
      }
      p.push(list);
      value = fieldSize(list);
    } else {
      const n = Buffer.byteLength(v);
      p.push(n);
      value = fieldSize(n);
    }
    const entry = fieldSize(k) + fieldSize(value);
    p.push(k);
    p.push(value);
    p.push(entry);
    total += fieldSize(entry);
  }
  return total;
}

function writeStruct(o: Out, md: Record<string, string | string[]>, p: Plan): void {
  for (const key in md) {
    const v = md[key] as string | string[];
    // sizes were pushed value-first: item lengths (+ list), then key, value, entry
    let list = 0;
    const itemAt = p.at;
    if (Array.isArray(v)) {
      p.at += v.length;
      list = p.next();
    } else p.at++;
    const k = p.next();
    const value = p.next();
    const entry = p.next();
    o.byte(10);
    o.varint(entry);
    o.str(10, key, k);
    o.byte(18);
    o.varint(value);
    if (Array.isArray(v)) {
      o.byte(50);
      o.varint(list);
      for (let i = 0; i < v.length; i++) {
        const n = p.sizes[itemAt + i] as number;
        o.byte(10);
        o.varint(fieldSize(n));
        o.str(26, v[i] as string, n);
      }
    } else o.str(26, v, p.sizes[itemAt] as number);
  }
}

/**
 * The protobuf encoding of toCheckResponse(d), byte for byte what protobufjs
 * writes for that object, without building it.
 */
export function encodeCheckResponse(d: Decision): Buffer {
  return encodeResponse(d, 0, new Plan());
}

/**
 * The server's encoder: encodeCheckResponse(d) as one gRPC length-prefixed
 * message (flag 0 = not compressed, 4-byte big-endian length, message), in a
 * single allocation, with a size plan reused from call to call.
 */
export interface CheckResponseEncoder {
  frame(d: Decision): Buffer;
}

export function createCheckResponseEncoder(): CheckResponseEncoder {
  const plan = new Plan();
  return {
    frame(d) {
      const buf = encodeResponse(d, 5, plan.reset());
      buf[0] = 0;
      buf.writeUInt32BE(buf.length - 5, 1);
      return buf;
    },
  };
}

function encodeResponse(d: Decision, start: number, p: Plan): Buffer {
  if (d.kind === 'allow') {
    const headers = sizeHeaders(d.headersToSet, p);
    let remove = 0;
    for (const name of d.headersToRemove) {
      const n = Buffer.byteLength(name);
      p.push(n);
      remove += fieldSize(n);
    }
    const ok = headers + remove;
    const meta = sizeStruct(d.metadata, p);
    // status {code: 0, message: ''} = 08 00 12 00
    const total = fieldSize(4) + fieldSize(ok) + fieldSize(meta);
    const o = new Out(total, start);
    o.byte(10);
    o.byte(4);
    o.byte(8);
    o.byte(0);
    o.byte(18);
    o.byte(0);
    o.byte(26);
    o.varint(ok);
    writeHeaders(o, 18, d.headersToSet, p);
    for (const name of d.headersToRemove) o.str(42, name, p.next());
    o.byte(34);
    o.varint(meta);
    writeStruct(o, d.metadata, p);
    if (o.pos !== start + total) throw new Error(`encodeCheckResponse: wrote ${o.pos - start} of ${total} bytes`);
    return o.buf;
  }
  const code = d.status === 401 ? grpcStatus.UNAUTHENTICATED : d.status >= 500 ? grpcStatus.UNAVAILABLE : grpcStatus.PERMISSION_DENIED;
  const reasonLen = Buffer.byteLength(d.reason);
  const status = 2 + fieldSize(reasonLen); // code (tag 8 + one-byte varint) + message
  const denyHeaders = [...d.headers, { name: 'x-portcullis-reason', value: d.reason }, { name: 'content-type', value: 'application/json' }];
  const headers = sizeHeaders(denyHeaders, p);
  const body = denyBody(d.reason, d.message);
  const bodyLen = Buffer.byteLength(body);
  const httpStatus = 1 + varintSize(d.status);
  const denied = fieldSize(httpStatus) + headers + fieldSize(bodyLen);
  const meta = sizeStruct(d.metadata, p);
  const total = fieldSize(status) + fieldSize(denied) + fieldSize(meta);
  const o = new Out(total, start);
  o.byte(10);
  o.varint(status);
  o.byte(8);
  o.varint(code);
  o.str(18, d.reason, reasonLen);
  o.byte(18);
  o.varint(denied);
  o.byte(10);
  o.varint(httpStatus);
  o.byte(8);
  o.varint(d.status);
  writeHeaders(o, 18, denyHeaders, p);
  o.str(26, body, bodyLen);
  o.byte(34);
  o.varint(meta);
  writeStruct(o, d.metadata, p);
  if (o.pos !== start + total) throw new Error(`encodeCheckResponse: wrote ${o.pos - start} of ${total} bytes`);
  return o.buf;
}
