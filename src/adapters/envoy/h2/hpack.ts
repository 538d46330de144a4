import { HpackError, huffmanDecodeInto, huffmanMaxDecodedLength } from './huffman.js';

/**
 * HPACK (RFC 7541) for portcullis's hand-written HTTP/2 server on the ext_authz
 * gRPC hot path (./connection.ts): a decoder for request header blocks and an
 * encoder for the few, fixed response header blocks (precomputed once).
 *
 * The decoder runs once per request, so it allocates nothing per field beyond
 * the strings it has to produce: indexed fields (all of them, once Envoy's
 * encoder has filled the dynamic table) hand out the very strings stored in the
 * static or dynamic table, the dynamic table is a ring of preallocated slots,
 * and Huffman strings decode through a per-decoder scratch buffer.
 *
 * Strings are latin1 (one char per octet), as HTTP/2 field values are octets.
 * Names are neither lowercased nor validated here; the connection layer does
 * that (RFC 9113 §8.2) and maps HpackError to GOAWAY COMPRESSION_ERROR.
 */

export { HpackError };

export interface HpackDecoder {
  /**
   * Decodes one complete header block (HEADERS + CONTINUATION payloads already joined),
   * calling onHeader(name, value) for each field in order. Throws HpackError when the block is
   * malformed (RFC 7541: bad index incl. 0, integer overflow/too long, string past the end,
   * bad Huffman, dynamic table size update larger than the limit or not at the start of the block)
   * or when the decoded header list exceeds maxHeaderListSize (size = sum of name.length + value.length + 32,
   * RFC 7540 §6.5.2) — decoding stops as soon as the limit is passed.
   * A failed block (or an onHeader that throws) leaves the decoder unusable: every later call throws
   * HpackError, since the dynamic table no longer matches the peer's encoder. So onHeader should not
   * throw for stream-level problems (a malformed field is a stream error, RFC 9113 §8.1.1): note them
   * and act once decode returns, so the block is still decoded to its end.
   */
  decode(block: Buffer, onHeader: (name: string, value: string) => void): void;
  /** current dynamic table size in bytes (for tests) */
  readonly tableSize: number;
}

/** RFC 7541 Appendix A. Static index i (1-based) is entry i - 1. */
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];

const STATIC_COUNT = STATIC_TABLE.length;
// Split into flat arrays (index 0 unused) so an indexed field costs two array loads.
const STATIC_NAMES: readonly string[] = ['', ...STATIC_TABLE.map(([name]) => name)];
const STATIC_VALUES: readonly string[] = ['', ...STATIC_TABLE.map(([, value]) => value)];

/** First static index of each static-table name, for the encoder. */
const STATIC_NAME_INDEX: ReadonlyMap<string, number> = new Map(
  STATIC_TABLE.map(([name], i) => [name, i + 1] as const).reverse(),
);

/** RFC 7541 §4.1: an entry's size is its name and value lengths plus 32. */
const ENTRY_OVERHEAD = 32;
/** Largest integer accepted in a representation (indexes, lengths, sizes). */
const MAX_INTEGER = 0x7fffffff;
/** Continuation octets after the prefix; 5 × 7 bits cover MAX_INTEGER for any prefix. */
const MAX_INTEGER_CONTINUATIONS = 5;
const INITIAL_SCRATCH = 256;
/** Up to this length a string is built in JS: cheaper than Buffer's call into C++ (≈ 25 vs 50 ns for 5 chars). */
const SHORT_STRING = 10;

/** `buf[start, end)` as a latin1 string. */
function latin1(buf: Buffer, start: number, end: number): string {
  if (end - start > SHORT_STRING) return buf.toString('latin1', start, end);
  let s = '';
  for (let i = start; i < end; i++) s += String.fromCharCode(buf[i] as number);
  return s;
}

class Decoder implements HpackDecoder {
  private readonly maxTableSize: number;
  private readonly maxHeaderListSize: number;
  /** Current table size limit, as last set by a dynamic table size update (≤ maxTableSize). */
  private limit: number;
  private size = 0;
  // Dynamic table ring: `head` is the slot of the newest entry (dynamic index 1),
  // older entries sit at decreasing slots, `count` of them. Every entry takes at
  // least 32 octets, so maxTableSize / 32 slots always suffice.
  private readonly names: string[];
  private readonly values: string[];
  private readonly slots: number;
  private head = 0;
  private count = 0;
  /** Read cursor into the block being decoded. */
  private pos = 0;
  /** Huffman output buffer, grown on demand. */
  private scratch: Buffer = Buffer.allocUnsafe(INITIAL_SCRATCH);
  private failed = false;

  constructor(maxTableSize: number, maxHeaderListSize: number) {
    if (!Number.isSafeInteger(maxTableSize) || maxTableSize < 0 || maxTableSize > MAX_INTEGER) {
      throw new RangeError(`maxTableSize must be an integer in [0, ${MAX_INTEGER}]: ${maxTableSize}`);
    }
    if (!(maxHeaderListSize >= 0)) throw new RangeError(`maxHeaderListSize must be ≥ 0: ${maxHeaderListSize}`);
    this.maxTableSize = maxTableSize;
    this.maxHeaderListSize = maxHeaderListSize;
    this.limit = maxTableSize;
    this.slots = Math.max(1, Math.floor(maxTableSize / ENTRY_OVERHEAD));
    this.names = new Array<string>(this.slots).fill('');
    this.values = new Array<string>(this.slots).fill('');
  }

  get tableSize(): number {
    return this.size;
  }

  decode(block: Buffer, onHeader: (name: string, value: string) => void): void {
    if (this.failed) throw new HpackError('decoder is unusable after an earlier error');
    // Cleared only on success: an HpackError or a throwing onHeader leaves the table half-updated.
    this.failed = true;
    const end = block.length;
    const maxListSize = this.maxHeaderListSize;
    let listSize = 0;
    let sawField = false;
    this.pos = 0;
    while (this.pos < end) {
      const first = block[this.pos++] as number;
      let name: string;
      let value: string;
      if (first >= 0x80) {
        // Indexed header field (§6.1).
        const index = this.readInteger(block, end, first, 0x7f);
        if (index <= STATIC_COUNT) {
          if (index === 0) throw new HpackError('indexed header field with index 0');
          name = STATIC_NAMES[index] as string;
          value = STATIC_VALUES[index] as string;
        } else {
          const slot = this.slotOf(index);
          name = this.names[slot] as string;
          value = this.values[slot] as string;
        }
      } else if (first >= 0x40) {
        // Literal header field with incremental indexing (§6.2.1).
        const index = this.readInteger(block, end, first, 0x3f);
        name = index === 0 ? this.readString(block, end) : this.nameAt(index);
        value = this.readString(block, end);
        this.insert(name, value);
      } else if (first >= 0x20) {
        // Dynamic table size update (§6.3): only before the first field of a block (§4.2).
        if (sawField) throw new HpackError('dynamic table size update after a header field');
        const size = this.readInteger(block, end, first, 0x1f);
        if (size > this.maxTableSize) {
          throw new HpackError(`dynamic table size update to ${size} exceeds the limit ${this.maxTableSize}`);
        }
        this.limit = size;
        while (this.size > size) this.evictOldest();
        continue;
      } else {
        // Literal header field without indexing (0000xxxx, §6.2.2) or never indexed (0001xxxx, §6.2.3).
        const index = this.readInteger(block, end, first, 0x0f);
        name = index === 0 ? this.readString(block, end) : this.nameAt(index);
        value = this.readString(block, end);
      }
      sawField = true;
      listSize += name.length + value.length + ENTRY_OVERHEAD;
      if (listSize > maxListSize) {
        throw new HpackError(`header list exceeds ${maxListSize} octets`);
      }
      onHeader(name, value);
    }
    this.failed = false;
  }

  /**
   * Reads an integer (§5.1) whose N-bit prefix is in `first` (`mask` = 2^N - 1);
   * this.pos points past the prefix octet and is advanced past the integer.
   */
  private readInteger(block: Buffer, end: number, first: number, mask: number): number {
    let value = first & mask;
    if (value < mask) return value;
    let pos = this.pos;
    let scale = 1;
    for (let i = 0; i < MAX_INTEGER_CONTINUATIONS; i++) {
      if (pos >= end) throw new HpackError('truncated integer');
      const octet = block[pos++] as number;
      value += (octet & 0x7f) * scale;
      if (octet < 0x80) {
        if (value > MAX_INTEGER) throw new HpackError('integer overflow');
        this.pos = pos;
        return value;
      }
      scale *= 128;
    }
    throw new HpackError('integer encoding too long');
  }

  /** Reads a string literal (§5.2) at this.pos, raw or Huffman-coded, as latin1. */
  private readString(block: Buffer, end: number): string {
    if (this.pos >= end) throw new HpackError('truncated string literal');
    const first = block[this.pos++] as number;
    const length = this.readInteger(block, end, first, 0x7f);
    const start = this.pos;
    if (length > end - start) throw new HpackError('string literal runs past the end of the block');
    const stop = start + length;
    this.pos = stop;
    if (first < 0x80) return latin1(block, start, stop);
    const needed = huffmanMaxDecodedLength(length);
    if (this.scratch.length < needed) this.scratch = Buffer.allocUnsafeSlow(Math.max(needed, this.scratch.length * 2));
    return latin1(this.scratch, 0, huffmanDecodeInto(block, start, stop, this.scratch));
  }

  /** Name of the static or dynamic entry at `index` (≥ 1). */
  private nameAt(index: number): string {
    return index <= STATIC_COUNT ? (STATIC_NAMES[index] as string) : (this.names[this.slotOf(index)] as string);
  }

  /** Ring slot of dynamic-table `index` (> STATIC_COUNT); throws when there is no such entry. */
  private slotOf(index: number): number {
    const age = index - STATIC_COUNT - 1;
    if (age >= this.count) throw new HpackError(`index ${index} is beyond the dynamic table (${this.count} entries)`);
    const slot = this.head - age;
    return slot < 0 ? slot + this.slots : slot;
  }

  /** Adds an entry (§4.4): evicts until it fits, or empties the table when it cannot fit at all. */
  private insert(name: string, value: string): void {
    const entrySize = name.length + value.length + ENTRY_OVERHEAD;
    if (entrySize > this.limit) {
      while (this.count > 0) this.evictOldest();
      return;
    }
    while (this.size + entrySize > this.limit) this.evictOldest();
    const slot = this.head + 1 === this.slots ? 0 : this.head + 1;
    this.names[slot] = name;
    this.values[slot] = value;
    this.head = slot;
    this.count++;
    this.size += entrySize;
  }

  private evictOldest(): void {
    let slot = this.head - this.count + 1;
    if (slot < 0) slot += this.slots;
    const name = this.names[slot] as string;
    const value = this.values[slot] as string;
    this.size -= name.length + value.length + ENTRY_OVERHEAD;
    // Drop the references so evicted strings can be collected.
    this.names[slot] = '';
    this.values[slot] = '';
    this.count--;
  }
}

/**
 * A decoder for one connection's request header blocks. `maxTableSize` is the
 * SETTINGS_HEADER_TABLE_SIZE this endpoint advertised (the peer's encoder may
 * use up to that much); `maxHeaderListSize` the SETTINGS_MAX_HEADER_LIST_SIZE.
 */
export function createHpackDecoder(opts: { maxTableSize: number; maxHeaderListSize: number }): HpackDecoder {
  return new Decoder(opts.maxTableSize, opts.maxHeaderListSize);
}

/**
 * Encodes a header list as literal fields without indexing (§6.2.2): the name
 * as a static-table index where the static table has it, otherwise as a
 * literal; strings raw (no Huffman). Leaves the peer's dynamic table alone, so
 * the result can be precomputed once and sent on any connection, any number
 * of times. Names and values must be latin1 (chars ≤ 0xff), else RangeError.
 */
export function encodeHeaderBlock(fields: readonly (readonly [string, string])[]): Buffer {
  let length = 0;
  for (const [name, value] of fields) {
    const index = STATIC_NAME_INDEX.get(name);
    length += index === undefined ? 1 + stringLength(name) : integerLength(index, 4);
    length += stringLength(value);
  }
  const out = Buffer.allocUnsafe(length);
  let pos = 0;
  for (const [name, value] of fields) {
    const index = STATIC_NAME_INDEX.get(name);
    if (index === undefined) {
      out[pos++] = 0x00;
      pos = writeString(out, pos, name);
    } else {
      pos = writeInteger(out, pos, 0x00, index, 4);
    }
    pos = writeString(out, pos, value);
  }
  return out;
}

/** Octets taken by `value` as an integer with an N-bit prefix (§5.1). */
function integerLength(value: number, prefixBits: number): number {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) return 1;
  let n = 2;
  for (let rest = value - mask; rest >= 0x80; rest = Math.floor(rest / 0x80)) n++;
  return n;
}

/** Writes `value` with an N-bit prefix, OR-ing `flags` into the prefix octet; returns the new position. */
function writeInteger(out: Buffer, pos: number, flags: number, value: number, prefixBits: number): number {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) {
    out[pos++] = flags | value;
    return pos;
  }
  out[pos++] = flags | mask;
  let rest = value - mask;
  while (rest >= 0x80) {
    out[pos++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  out[pos++] = rest;
  return pos;
}

function stringLength(s: string): number {
  return integerLength(s.length, 7) + s.length;
}

/** Writes `s` as a raw (H = 0) string literal; returns the new position. */
function writeString(out: Buffer, pos: number, s: string): number {
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 0xff) throw new RangeError(`header string has a non-latin1 char at ${i}: ${JSON.stringify(s)}`);
  }
  pos = writeInteger(out, pos, 0x00, s.length, 7);
  return pos + out.write(s, pos, 'latin1');
}
