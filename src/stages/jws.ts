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
  signature: Buffer;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

function decodeJsonSegment(seg: string): Record<string, unknown> | undefined {
  if (seg.length === 0 || !B64URL.test(seg) || seg.length % 4 === 1) return undefined;
  try {
    const v: unknown = JSON.parse(Buffer.from(seg, 'base64url').toString('utf8'));
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
export interface HeaderCache {
  get(seg: string): Readonly<Record<string, unknown>> | undefined;
}

export function createHeaderCache(max = 256): HeaderCache {
  const cache = new Map<string, Readonly<Record<string, unknown>>>();
  return {
    get(seg) {
      const hit = cache.get(seg);
      if (hit !== undefined) return hit;
      const header = decodeJsonSegment(seg);
      if (header && cache.size < max) cache.set(seg, Object.freeze(header));
      return header;
    },
  };
}

export function parseJws(token: string, headers?: HeaderCache): ParsedJws | Denial {
  const d1 = token.indexOf('.');
  const d2 = d1 < 0 ? -1 : token.indexOf('.', d1 + 1);
  if (d1 < 0 || d2 < 0) return denial('token_malformed', 'not a JWT: expected three dot-separated parts');
  if (token.indexOf('.', d2 + 1) >= 0) {
    const parts = token.split('.').length;
    return parts === 5
      ? denial('token_encrypted', 'encrypted tokens (JWE) are not accepted; send a signed JWT')
      : denial('token_malformed', `not a JWT: ${parts} dot-separated parts`);
  }
  const header = headers ? headers.get(token.slice(0, d1)) : decodeJsonSegment(token.slice(0, d1));
  if (!header) return denial('token_malformed', 'JWT header is not base64url-encoded JSON');
  const payload = decodeJsonSegment(token.slice(d1 + 1, d2));
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
  return {
    header,
    payload,
    alg,
    kid,
    signingInput: token.slice(0, d2),
    signature: Buffer.from(sig, 'base64url'),
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

/** True when the signature verifies under `key` with `alg`. Never throws. */
export function verifySignature(jws: ParsedJws, key: KeyObject): boolean {
  const spec = ALGS[jws.alg];
  if (!spec) return false;
  if (spec.ec !== undefined && jws.signature.length !== spec.ec) return false;
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
    const data = Buffer.from(jws.signingInput, 'latin1');
    if (spec.pss !== undefined) {
      return cryptoVerify(
        spec.digest,
        data,
        { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: spec.pss },
        jws.signature,
      );
    }
    if (spec.ec !== undefined) {
      return cryptoVerify(spec.digest, data, { key, dsaEncoding: 'ieee-p1363' }, jws.signature);
    }
    return cryptoVerify(spec.digest, data, key, jws.signature);
  } catch {
    return false;
  }
}
