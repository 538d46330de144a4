import { constants, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { denial, type Denial } from '../core/errors.js';

/**
 * Compact JWS parsing and signature verification on the hot path.
 *
 * Why not jose's `jwtVerify` here: it is asynchronous (WebCrypto), so every
 * uncached decision would pay promise and thread-pool hops; node:crypto's
 * synchronous `verify` on a pre-imported KeyObject is the floor for RS256/ES256.
 * jose still imports keys, mints development tokens and is used in tests as an
 * independent implementation. Claims are checked in verify.ts.
 * docs/design/jwt-verification.md has the reasoning and the rules.
 */
export interface ParsedJws {
  header: Readonly<Record<string, unknown>>;
  payload: Readonly<Record<string, unknown>>;
  alg: string;
  kid: string | undefined;
  /** `header.payload`, the signed bytes. */
  signingInput: string;
  /**
   * The signature as the token carries it: base64url text, already checked
   * (alphabet and length). `JwsCodec.verify` decodes it. Text, not bytes, so a
   * ParsedJws never points into a codec's scratch buffer and may wait for a key fetch.
   */
  signatureText: string;
}

const B64URL = /^[A-Za-z0-9_-]*$/;
const BASE64URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * A reusable buffer for base64url decoding and for the signing input, so a
 * verification allocates no Buffer (a pooled Buffer.from costs an ArrayBuffer
 * every few tokens). Only used synchronously: filled, read, done.
 */
interface Scratch {
  buf: Buffer;
  /** The 6-bit value of each base64url byte, -1 for every other byte. */
  readonly values: Int8Array;
}

/** Larger needs get a one-off buffer instead of growing the scratch buffer for good. */
const SCRATCH_MAX = 64 * 1024;
const SCRATCH_INITIAL = 16 * 1024;

function createScratch(): Scratch {
  const values = new Int8Array(256).fill(-1);
  for (let v = 0; v < 64; v++) values[BASE64URL_ALPHABET.charCodeAt(v)] = v;
  return { buf: Buffer.allocUnsafeSlow(SCRATCH_INITIAL), values };
}

/** A buffer of at least `size` bytes: the scratch buffer (grown when needed, up to SCRATCH_MAX) or a one-off. */
function room(sc: Scratch, size: number): Buffer {
  if (size <= sc.buf.length) return sc.buf;
  if (size > SCRATCH_MAX) return Buffer.allocUnsafe(size);
  sc.buf = Buffer.allocUnsafeSlow(Math.min(SCRATCH_MAX, Math.max(size, sc.buf.length * 2)));
  return sc.buf;
}

/**
 * Decodes base64url `text` (length % 4 !== 1, checked by the caller) into
 * `buf` from `at`, which needs `text.length` bytes of room. Returns the number
 * of bytes, or -1 when the text is not base64url: a character outside
 * A-Z a-z 0-9 - _, exactly what B64URL refuses. The bytes are
 * Buffer.from(text, 'base64url')'s: 3 per 4 characters, 1 or 2 for a final 2
 * or 3, spare bits of the last character ignored (a unit test compares them).
 *
 * Why not buf.write(text, 'base64url'): Node's native decoder (simdutf) uses
 * AVX-512 on CPUs that have it, like the benchmark machine's, and there it
 * slows the RSA verify that follows by ≈ 2 µs, ≈ 10 % — decoding unrelated
 * text just before crypto.verify does the same, the effect fades over
 * ~100 µs, and with SIMDUTF_FORCE_IMPLEMENTATION=haswell it is ≈ 0.7 µs
 * (measured in isolation; the decision's verify ran ≈ 2 µs slower than the
 * raw loop's and now runs ≈ 0.5 µs slower). This loop costs about as much as
 * the native decode did, without that.
 *
 * The text is first written as UTF-8: ASCII text is then one byte per
 * character, while any other character writes bytes of 0x80 and above (never
 * in the alphabet) or does not fit, so that fewer than `text.length` bytes are
 * written. Decoding then runs in place: each group of 4 bytes is read before
 * its 3 bytes are written, lower down.
 */
function decodeBase64url(text: string, buf: Buffer, at: number, values: Int8Array): number {
  const len = text.length;
  if (buf.write(text, at, len, 'utf8') !== len) return -1;
  return decodeInPlace(buf, at, len, values);
}

/** decodeBase64url for bytes already in buf[at, at + len). */
function decodeInPlace(buf: Buffer, at: number, len: number, values: Int8Array): number {
  const end = at + len;
  const full = at + (len & ~3);
  let o = at;
  let i = at;
  for (; i < full; i += 4) {
    const a = values[buf[i] as number] as number;
    const b = values[buf[i + 1] as number] as number;
    const c = values[buf[i + 2] as number] as number;
    const d = values[buf[i + 3] as number] as number;
    if ((a | b | c | d) < 0) return -1;
    buf[o] = (a << 2) | (b >> 4);
    buf[o + 1] = ((b & 15) << 4) | (c >> 2);
    buf[o + 2] = ((c & 3) << 6) | d;
    o += 3;
  }
  if (i < end) {
    // 2 or 3 characters left: 1 or 2 bytes.
    const a = values[buf[i] as number] as number;
    const b = values[buf[i + 1] as number] as number;
    const c = i + 2 < end ? (values[buf[i + 2] as number] as number) : 0;
    if ((a | b | c) < 0) return -1;
    buf[o++] = (a << 2) | (b >> 4);
    if (i + 2 < end) buf[o++] = ((b & 15) << 4) | (c >> 2);
  }
  return o - at;
}

function decodeJsonSegment(seg: string, sc: Scratch): Record<string, unknown> | undefined {
  if (seg.length === 0 || seg.length % 4 === 1) return undefined;
  // Same bytes and text as Buffer.from(seg, 'base64url').toString('utf8'), without the Buffer.
  const buf = room(sc, seg.length);
  const n = decodeBase64url(seg, buf, 0, sc.values);
  if (n < 0) return undefined;
  try {
    const v: unknown = JSON.parse(buf.toString('utf8', 0, n));
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Decoded JOSE headers by their base64url text. An issuer signs every token
 * with one of a handful of headers ({alg, typ, kid}), so an uncached token
 * usually skips decoding and parsing its header. Bounded: once full, new
 * headers are decoded every time (a flood of odd headers cannot grow it).
 * Entries are frozen: a ParsedJws header is shared and read-only. One cache per
 * verifier instance (no module state).
 */
interface HeaderCache {
  /** The header that is `token[0, end)`. */
  get(token: string, end: number): Readonly<Record<string, unknown>> | undefined;
}

function createHeaderCache(sc: Scratch, max: number): HeaderCache {
  const cache = new Map<string, Readonly<Record<string, unknown>>>();
  // The entry found last: a token that starts with the same header text skips
  // slicing and hashing it (tokens of one issuer and key share their header).
  let lastSeg = '';
  let lastHeader: Readonly<Record<string, unknown>> | undefined;
  return {
    get(token, end) {
      // slice-and-compare rather than startsWith: measured in the decision, startsWith on the
      // token cost ~0.4 µs here (well above its cost in isolation); an equal slice is the same test.
      if (lastHeader !== undefined && end === lastSeg.length && token.slice(0, end) === lastSeg) return lastHeader;
      const seg = token.slice(0, end);
      const hit = cache.get(seg);
      if (hit !== undefined) {
        lastSeg = seg;
        lastHeader = hit;
        return hit;
      }
      const header = decodeJsonSegment(seg, sc);
      if (header && cache.size < max) cache.set(seg, Object.freeze(header));
      return header;
    },
  };
}

interface AlgSpec {
  digest: string | null;
  pss?: number;
  ec?: number;
}

const ALGS: Readonly<Record<string, AlgSpec>> = {
  RS256: { digest: 'sha256' },
  RS384: { digest: 'sha384' },
  RS512: { digest: 'sha512' },
  PS256: { digest: 'sha256', pss: 32 },
  PS384: { digest: 'sha384', pss: 48 },
  PS512: { digest: 'sha512', pss: 64 },
  ES256: { digest: 'sha256', ec: 64 },
  ES384: { digest: 'sha384', ec: 96 },
  ES512: { digest: 'sha512', ec: 132 },
  EdDSA: { digest: null },
};

export function isSupportedAlg(alg: string): boolean {
  return Object.hasOwn(ALGS, alg);
}

function parse(token: string, headers: HeaderCache, sc: Scratch): ParsedJws | Denial {
  const d1 = token.indexOf('.');
  const d2 = d1 < 0 ? -1 : token.indexOf('.', d1 + 1);
  if (d1 < 0 || d2 < 0) return denial('token_malformed', 'not a JWT: expected three dot-separated parts');
  if (token.indexOf('.', d2 + 1) >= 0) {
    const parts = token.split('.').length;
    return parts === 5
      ? denial('token_encrypted', 'encrypted tokens (JWE) are not accepted; send a signed JWT')
      : denial('token_malformed', `not a JWT: ${parts} dot-separated parts`);
  }
  const header = headers.get(token, d1);
  if (!header) return denial('token_malformed', 'JWT header is not base64url-encoded JSON');
  const payload = decodeJsonSegment(token.slice(d1 + 1, d2), sc);
  if (!payload) {
    return header.enc !== undefined
      ? denial('token_encrypted', 'encrypted tokens (JWE) are not accepted; send a signed JWT')
      : denial('token_malformed', 'JWT payload is not base64url-encoded JSON');
  }
  const sig = token.slice(d2 + 1);
  // Checked here, decoded by verify(): the expression costs less than decoding it twice.
  if (!B64URL.test(sig) || sig.length % 4 === 1) return denial('token_malformed', 'JWT signature is not base64url');
  const alg = header.alg;
  if (typeof alg !== 'string' || alg.length === 0) return denial('token_malformed', 'JWT header has no "alg"');
  if (alg.toLowerCase() === 'none') return denial('alg_not_allowed', 'unsigned tokens (alg "none") are never accepted');
  if (header.crit !== undefined) {
    return denial('crit_unsupported', 'JWT header lists critical extensions ("crit") that portcullis does not implement');
  }
  if (header.enc !== undefined || header.zip !== undefined) {
    return denial('token_encrypted', 'encrypted tokens (JWE) are not accepted; send a signed JWT');
  }
  const kid = header.kid;
  if (kid !== undefined && typeof kid !== 'string') return denial('token_malformed', 'JWT header "kid" is not a string');
  return { header, payload, alg, kid, signingInput: token.slice(0, d2), signatureText: sig };
}

/** True when the signature verifies under `key` with `alg`. Never throws. */
function verify(jws: ParsedJws, key: KeyObject, sc: Scratch): boolean {
  const spec = ALGS[jws.alg];
  if (!spec) return false;
  // Never a symmetric key, and the key type must be the algorithm's family.
  if (key.type !== 'public') return false;
  const kt = key.asymmetricKeyType;
  const family = spec.ec !== undefined ? kt === 'ec' : spec.digest === null ? kt === 'ed25519' || kt === 'ed448' : kt === 'rsa' || kt === 'rsa-pss';
  if (!family) return false;
  if (kt === 'rsa' || kt === 'rsa-pss') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 2048) return false;
  }
  try {
    // The signing input (latin1: one byte per character) and the decoded
    // signature side by side in the scratch buffer: the same bytes as
    // Buffer.from(signingInput, 'latin1') and Buffer.from(signatureText, 'base64url').
    const input = jws.signingInput;
    const sigText = jws.signatureText;
    const buf = room(sc, input.length + sigText.length);
    const inputBytes = buf.write(input, 0, input.length, 'latin1');
    // parse() checked the signature text against B64URL: ASCII, so latin1 writes it as it is.
    buf.write(sigText, inputBytes, sigText.length, 'latin1');
    const sigBytes = decodeInPlace(buf, inputBytes, sigText.length, sc.values);
    if (sigBytes < 0) return false; // not base64url after all: parse() refuses that
    if (spec.ec !== undefined && sigBytes !== spec.ec) return false;
    const data = buf.subarray(0, inputBytes);
    const signature = buf.subarray(inputBytes, inputBytes + sigBytes);
    if (spec.pss !== undefined) {
      return cryptoVerify(
        spec.digest,
        data,
        { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: spec.pss },
        signature,
      );
    }
    if (spec.ec !== undefined) {
      return cryptoVerify(spec.digest, data, { key, dsaEncoding: 'ieee-p1363' }, signature);
    }
    return cryptoVerify(spec.digest, data, key, signature);
  } catch {
    return false;
  }
}

/**
 * Parsing and verification with one verifier's own state (no module state):
 * the decoded-header cache and a scratch buffer. Synchronous: `parse` and
 * `verify` use the scratch buffer only until they return.
 */
export interface JwsCodec {
  parse(token: string): ParsedJws | Denial;
  /** The payload as `parse` decodes it (a JSON object), or undefined when the token has none. */
  payload(token: string): Record<string, unknown> | undefined;
  /** True when the signature verifies under `key` with the token's `alg`. Never throws. */
  verify(jws: ParsedJws, key: KeyObject): boolean;
}

export function createJwsCodec(opts: { headerCacheMax?: number } = {}): JwsCodec {
  const sc = createScratch();
  const headers = createHeaderCache(sc, opts.headerCacheMax ?? 256);
  return {
    parse: (token) => parse(token, headers, sc),
    payload(token) {
      const d1 = token.indexOf('.');
      const d2 = d1 < 0 ? -1 : token.indexOf('.', d1 + 1);
      return d2 < 0 ? undefined : decodeJsonSegment(token.slice(d1 + 1, d2), sc);
    },
    verify: (jws, key) => verify(jws, key, sc),
  };
}
