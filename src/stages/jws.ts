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

/** Bytes that checked base64url text of this length decodes to (no padding; length % 4 !== 1). */
function decodedLength(chars: number): number {
  return (chars * 3) >>> 2;
}

/**
 * A reusable buffer for base64url decoding and for the signing input, so a
 * verification allocates no Buffer (a pooled Buffer.from costs an ArrayBuffer
 * every few tokens). Only used synchronously: filled, read, done.
 */
interface Scratch {
  buf: Buffer;
}

/** Larger needs get a one-off buffer instead of growing the scratch buffer for good. */
const SCRATCH_MAX = 64 * 1024;
const SCRATCH_INITIAL = 16 * 1024;

/** A buffer of at least `size` bytes: the scratch buffer (grown when needed, up to SCRATCH_MAX) or a one-off. */
function room(sc: Scratch, size: number): Buffer {
  if (size <= sc.buf.length) return sc.buf;
  if (size > SCRATCH_MAX) return Buffer.allocUnsafe(size);
  sc.buf = Buffer.allocUnsafeSlow(Math.min(SCRATCH_MAX, Math.max(size, sc.buf.length * 2)));
  return sc.buf;
}

function decodeJsonSegment(seg: string, sc: Scratch): Record<string, unknown> | undefined {
  if (seg.length === 0 || !B64URL.test(seg) || seg.length % 4 === 1) return undefined;
  // Same bytes and text as Buffer.from(seg, 'base64url').toString('utf8'), without the Buffer.
  const buf = room(sc, decodedLength(seg.length));
  const n = buf.write(seg, 0, 'base64url');
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
      if (lastHeader !== undefined && end === lastSeg.length && token.startsWith(lastSeg)) return lastHeader;
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
    const buf = room(sc, input.length + decodedLength(sigText.length));
    const inputBytes = buf.write(input, 0, input.length, 'latin1');
    const sigBytes = buf.write(sigText, inputBytes, 'base64url');
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
  /** True when the signature verifies under `key` with the token's `alg`. Never throws. */
  verify(jws: ParsedJws, key: KeyObject): boolean;
}

export function createJwsCodec(opts: { headerCacheMax?: number } = {}): JwsCodec {
  const sc: Scratch = { buf: Buffer.allocUnsafeSlow(SCRATCH_INITIAL) };
  const headers = createHeaderCache(sc, opts.headerCacheMax ?? 256);
  return {
    parse: (token) => parse(token, headers, sc),
    verify: (jws, key) => verify(jws, key, sc),
  };
}
