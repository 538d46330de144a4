/**
 * HPACK Huffman code (RFC 7541 §5.2, Appendix B): the static code table, a
 * table-driven decoder and an encoder.
 *
 * Used by the HPACK decoder (./hpack.ts) of the hand-written HTTP/2 server on
 * the ext_authz gRPC hot path (./connection.ts): Envoy's nghttp2/oghttp2
 * Huffman-codes every literal string that gets shorter that way, so each
 * request that carries a fresh literal (a new grpc-timeout, a request id, …)
 * goes through `huffmanDecode`. `huffmanEncode` serves tests and encoders.
 *
 * The decoder walks the input a whole octet at a time through a 256-state
 * automaton (one state per internal node of the code tree, like nghttp2's
 * 4-bit machine but with 8-bit steps), built once at module load into a
 * constant typed array. No module-level state changes after load.
 */

/**
 * Thrown on any malformed HPACK input (bad Huffman string, bad index, overlong
 * integer, …). The HTTP/2 layer answers it with GOAWAY COMPRESSION_ERROR.
 * Lives here rather than in ./hpack.ts (which re-exports it) so that the two
 * modules do not import each other.
 */
export class HpackError extends Error {
  readonly code = 'ERR_HPACK';
  constructor(message: string) {
    super(message);
    this.name = 'HpackError';
  }
}

// RFC 7541 Appendix B, "Huffman Code": CODES[sym] holds the code of symbol
// `sym` (0-255 the octets, 256 EOS) right-aligned in LENGTHS[sym] bits. The
// rows were generated from the table, not typed in; the module-load check in
// buildDecodeTable() verifies they form a complete prefix code.
const CODES: readonly number[] = [
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, // 0-7
  0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, // 8-15
  0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, // 16-23
  0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, // 24-31
  0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, // 32-39
  0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18, // 40-47
  0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, // 48-55
  0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc, // 56-63
  0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, // 64-71
  0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, // 72-79
  0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, // 80-87
  0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, // 88-95
  0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, // 96-103
  0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, // 104-111
  0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, // 112-119
  0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, // 120-127
  0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, // 128-135
  0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, // 136-143
  0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, // 144-151
  0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, // 152-159
  0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, // 160-167
  0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, // 168-175
  0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, // 176-183
  0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, // 184-191
  0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec, // 192-199
  0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed, // 200-207
  0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, // 208-215
  0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, // 216-223
  0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, // 224-231
  0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, // 232-239
  0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, // 240-247
  0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, // 248-255
  0x3fffffff, // 256-256
];

const LENGTHS: readonly number[] = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0-15
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16-31
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32-47
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48-63
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64-79
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80-95
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96-111
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112-127
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128-143
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144-159
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160-175
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176-191
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192-207
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208-223
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224-239
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240-255
  30, // 256-256
];

const EOS = 256;

/** Largest decoded length of `n` Huffman-coded octets: the shortest code is 5 bits. */
export function huffmanMaxDecodedLength(n: number): number {
  return Math.floor((n * 8) / 5);
}

// Decode-table entry layout (one Uint32 per state × input octet).
const NEXT_STATE_MASK = 0xff; // bits 0-7: state after the octet
const SYM1_SHIFT = 8; //         bits 8-15: first symbol emitted
const SYM2_SHIFT = 16; //        bits 16-23: second symbol emitted
const COUNT_SHIFT = 24; //       bits 24-25: number of symbols emitted (0-2)
const ACCEPT = 1 << 26; //       the string may end after this octet
const FAIL = 1 << 27; //         the octet completes EOS: the string is invalid

/**
 * Builds the octet-step automaton. States are the 256 internal nodes of the
 * code tree (257 leaves), state 0 the root; a state means "these bits since
 * the last symbol are a proper prefix of some code". A string may end in a
 * state iff the pending bits are at most 7 ones, i.e. a prefix of EOS no longer
 * than 7 bits (RFC 7541 §5.2); the root (no pending bits) is accepting too.
 * Since the shortest code has 5 bits, one octet completes at most two symbols.
 */
function buildDecodeTable(): Uint32Array {
  // children[node * 2 + bit]: > 0 an internal node, < 0 the leaf -(sym + 1),
  // 0 not yet set (the root is never anyone's child).
  const children = new Int16Array(512);
  const depth = new Uint8Array(256);
  const allOnes = new Uint8Array(256);
  allOnes[0] = 1;
  let nodes = 1;
  for (let sym = 0; sym <= EOS; sym++) {
    const code = CODES[sym] as number;
    const len = LENGTHS[sym] as number;
    let node = 0;
    for (let bitPos = len - 1; bitPos > 0; bitPos--) {
      const bit = (code >>> bitPos) & 1;
      const slot = node * 2 + bit;
      let child = children[slot] as number;
      if (child < 0) throw new Error(`huffman table: code of ${sym} extends the code of ${-child - 1}`);
      if (child === 0) {
        if (nodes === 256) throw new Error('huffman table: more than 256 internal nodes');
        child = nodes++;
        children[slot] = child;
        depth[child] = (depth[node] as number) + 1;
        allOnes[child] = (allOnes[node] as number) & bit;
      }
      node = child;
    }
    const slot = node * 2 + (code & 1);
    if (children[slot] !== 0) throw new Error(`huffman table: code of ${sym} is a prefix of another code`);
    children[slot] = -(sym + 1);
  }
  if (nodes !== 256 || children.includes(0)) throw new Error('huffman table: not a complete prefix code');

  const accepting = new Uint8Array(256);
  for (let node = 0; node < 256; node++) {
    accepting[node] = node === 0 || ((allOnes[node] as number) === 1 && (depth[node] as number) <= 7) ? 1 : 0;
  }

  // First a nibble step per state (at most one symbol: codes have ≥ 5 bits):
  // bits 0-7 the next state, bits 8-16 the symbol + 1 (0: none), or FAIL.
  const nibbles = new Uint32Array(256 * 16);
  for (let state = 0; state < 256; state++) {
    for (let nibble = 0; nibble < 16; nibble++) {
      let node = state;
      let step = 0;
      for (let bitPos = 3; bitPos >= 0; bitPos--) {
        const child = children[node * 2 + ((nibble >>> bitPos) & 1)] as number;
        if (child > 0) {
          node = child;
        } else if (child === -(EOS + 1)) {
          step = FAIL;
          break;
        } else {
          step = -child << 8;
          node = 0;
        }
      }
      nibbles[state * 16 + nibble] = step === FAIL ? FAIL : step | node;
    }
  }
  // Then each octet step as two nibble steps.
  const table = new Uint32Array(256 * 256);
  for (let state = 0; state < 256; state++) {
    for (let high = 0; high < 16; high++) {
      const first = nibbles[state * 16 + high] as number;
      for (let low = 0; low < 16; low++) {
        const octet = (high << 4) | low;
        const second = first === FAIL ? FAIL : (nibbles[(first & 0xff) * 16 + low] as number);
        if (second === FAIL) {
          table[state * 256 + octet] = FAIL;
          continue;
        }
        const node = second & 0xff;
        let entry = node | (accepting[node] === 1 ? ACCEPT : 0);
        // Emitted symbols, in order: the high nibble's (if any), then the low nibble's.
        const symbols = (first >>> 8 === 0 ? 0 : 1) + (second >>> 8 === 0 ? 0 : 1);
        if (symbols === 2) entry |= (((first >>> 8) - 1) << SYM1_SHIFT) | (((second >>> 8) - 1) << SYM2_SHIFT);
        else if (symbols === 1) entry |= ((first >>> 8 || second >>> 8) - 1) << SYM1_SHIFT;
        table[state * 256 + octet] = entry | (symbols << COUNT_SHIFT);
      }
    }
  }
  return table;
}

const DECODE_TABLE = buildDecodeTable();

/**
 * Decodes the Huffman-coded octets `buf[start, end)` into `out` (which must
 * hold at least `huffmanMaxDecodedLength(end - start)` octets) and returns the
 * decoded length. Throws HpackError when the string contains EOS, ends in more
 * than 7 bits of padding, or its padding is not all ones.
 */
export function huffmanDecodeInto(buf: Uint8Array, start: number, end: number, out: Uint8Array): number {
  const table = DECODE_TABLE;
  let state = 0;
  let entry = ACCEPT;
  let n = 0;
  for (let i = start; i < end; i++) {
    entry = table[(state << 8) | (buf[i] as number)] as number;
    if (entry >= FAIL) throw new HpackError('huffman string contains EOS');
    const count = entry >>> COUNT_SHIFT;
    if (count & 3) {
      out[n++] = (entry >>> SYM1_SHIFT) & 0xff;
      if (count & 2) out[n++] = (entry >>> SYM2_SHIFT) & 0xff;
    }
    state = entry & NEXT_STATE_MASK;
  }
  if ((entry & ACCEPT) === 0) throw new HpackError('huffman string has invalid padding');
  return n;
}

/** Decodes the Huffman-coded octets `buf[start, end)`; the result is a latin1 string (one char per octet). */
export function huffmanDecode(buf: Buffer, start: number, end: number): string {
  const out = Buffer.allocUnsafe(huffmanMaxDecodedLength(end - start));
  const n = huffmanDecodeInto(buf, start, end, out);
  return out.toString('latin1', 0, n);
}

/** Octets needed to Huffman-code `s` (latin1: each char must be ≤ 0xff). */
export function huffmanEncodedLength(s: string): number {
  let bits = 0;
  for (let i = 0; i < s.length; i++) bits += LENGTHS[s.charCodeAt(i) & 0xff] as number;
  return Math.ceil(bits / 8);
}

/**
 * Huffman-codes the latin1 string `s` (chars above 0xff throw a RangeError),
 * padding the last octet with the most significant bits of EOS (ones).
 */
export function huffmanEncode(s: string): Buffer {
  const out = Buffer.allocUnsafe(huffmanEncodedLength(s));
  // `acc` holds fewer than 8 pending bits before each symbol, so with codes of
  // at most 30 bits it stays below 2^37: exact in a double, hence the
  // arithmetic instead of 32-bit shifts.
  let acc = 0;
  let bits = 0;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new RangeError(`huffmanEncode: char ${c} at ${i} is not latin1`);
    const len = LENGTHS[c] as number;
    acc = acc * 2 ** len + (CODES[c] as number);
    bits += len;
    while (bits >= 8) {
      bits -= 8;
      const scale = 2 ** bits;
      const octet = Math.floor(acc / scale);
      out[n++] = octet;
      acc -= octet * scale;
    }
  }
  if (bits > 0) out[n++] = (acc << (8 - bits)) | (0xff >>> bits);
  return out;
}
