/**
 * Test keys and tokens.
 *
 * Well-formed tokens are minted with jose (an implementation independent of
 * src/stages/jws.ts). Hostile tokens (alg "none", HMAC with a public key,
 * `crit`, DER signatures, tiny RSA keys, broken segments) are assembled by
 * hand, because jose refuses to produce most of them.
 */
import {
  constants,
  createHmac,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  type JsonWebKeyInput,
  type KeyObject,
} from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT, type JWK, type JWTPayload } from 'jose';
import type { ResolvedKey } from '../../src/adapters/oidc/key-source.js';

export type TestAlg = 'RS256' | 'PS256' | 'ES256';

type JoseKeyPair = Awaited<ReturnType<typeof generateKeyPair>>;

export interface TestKey {
  alg: TestAlg;
  kid: string;
  kty: 'RSA' | 'EC';
  /** For jose's SignJWT. */
  joseKey: JoseKeyPair['privateKey'];
  /** node:crypto private key, for hand-assembled tokens. */
  privateKey: KeyObject;
  /** node:crypto public key, what a KeySource hands to the verifier. */
  publicKey: KeyObject;
  publicJwk: JWK;
}

/** RSA keys are 2048 bits (jose's default); EC keys are P-256. */
export async function generateTestKey(alg: TestAlg, kid: string): Promise<TestKey> {
  const pair = await generateKeyPair(alg, { extractable: true });
  const publicJwk = await exportJWK(pair.publicKey);
  const privateJwk = await exportJWK(pair.privateKey);
  return {
    alg,
    kid,
    kty: alg === 'ES256' ? 'EC' : 'RSA',
    joseKey: pair.privateKey,
    privateKey: createPrivateKey({ key: privateJwk as JsonWebKeyInput['key'], format: 'jwk' }),
    publicKey: createPublicKey({ key: publicJwk as JsonWebKeyInput['key'], format: 'jwk' }),
    publicJwk,
  };
}

/** The key as a KeySource would resolve it (no JWK `alg`, so an RSA key serves RS* and PS*). */
export function resolvedKeyOf(k: TestKey, opts: { kid?: string | null; alg?: string } = {}): ResolvedKey {
  const out: ResolvedKey = { key: k.publicKey, kty: k.kty };
  const kid = opts.kid === undefined ? k.kid : opts.kid;
  if (kid !== null) out.kid = kid;
  if (opts.alg !== undefined) out.alg = opts.alg;
  return out;
}

export interface SignOptions {
  key: TestKey;
  /** Defaults to the key's alg. */
  alg?: TestAlg;
  /** Defaults to the key's kid; null leaves `kid` out of the header. */
  kid?: string | null;
  /** Extra protected-header members. */
  header?: Record<string, unknown>;
}

/** A JWS signed by jose. The claims are taken as given (no defaults are added). */
export async function signToken(claims: JWTPayload, opts: SignOptions): Promise<string> {
  const alg = opts.alg ?? opts.key.alg;
  const kid = opts.kid === undefined ? opts.key.kid : opts.kid;
  const header: Record<string, unknown> = { typ: 'JWT', ...opts.header, alg };
  if (kid !== null) header.kid = kid;
  return new SignJWT(claims).setProtectedHeader(header as { alg: string }).sign(opts.key.joseKey);
}

// ---------------------------------------------------------------------------
// Hand-assembled tokens

export function b64url(data: string | Buffer | Uint8Array): string {
  return Buffer.from(data).toString('base64url');
}

/** base64url(JSON) of a header or payload. */
export function segment(value: unknown): string {
  return b64url(JSON.stringify(value));
}

/** Joins already-encoded segments with dots. */
export function assemble(...segments: string[]): string {
  return segments.join('.');
}

/** `header.payload` with the given raw signature bytes (empty signature by default). */
export function rawToken(header: unknown, payload: unknown, signature: Buffer | string = ''): string {
  const sig = typeof signature === 'string' ? signature : b64url(signature);
  return assemble(segment(header), segment(payload), sig);
}

/** Signs `signingInput` with node:crypto the way JWS `alg` prescribes. */
export function rawSignature(
  alg: TestAlg,
  signingInput: string,
  privateKey: KeyObject,
  opts: { ecDer?: boolean } = {},
): Buffer {
  const data = Buffer.from(signingInput, 'latin1');
  if (alg === 'ES256') {
    return cryptoSign('sha256', data, { key: privateKey, dsaEncoding: opts.ecDer ? 'der' : 'ieee-p1363' });
  }
  if (alg === 'PS256') {
    return cryptoSign('sha256', data, { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  }
  return cryptoSign('sha256', data, privateKey);
}

/** A JWS built and signed by hand, so any header (crit, odd kid, ...) can be used. */
export function signRaw(
  header: Record<string, unknown>,
  payload: unknown,
  privateKey: KeyObject,
  opts: { ecDer?: boolean } = {},
): string {
  const input = assemble(segment(header), segment(payload));
  const alg = header.alg;
  const family: TestAlg = alg === 'ES256' ? 'ES256' : alg === 'PS256' ? 'PS256' : 'RS256';
  return assemble(input, b64url(rawSignature(family, input, privateKey, opts)));
}

/** HS256 over `header.payload` with `secret` as the HMAC key (the classic alg-confusion attack). */
export function hmacToken(header: Record<string, unknown>, payload: unknown, secret: Buffer | string): string {
  const input = assemble(segment(header), segment(payload));
  return assemble(input, b64url(createHmac('sha256', secret).update(input).digest()));
}

/** The SPKI PEM of a public key, as an attacker would download it. */
export function publicPem(key: KeyObject): string {
  return key.export({ type: 'spki', format: 'pem' }).toString();
}

/** Splits a compact JWS into its three segments. */
export function splitToken(token: string): [string, string, string] {
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error(`expected 3 segments, got ${parts.length}`);
  return [parts[0] as string, parts[1] as string, parts[2] as string];
}

/** Decodes a base64url JSON segment. */
export function decodeSegment(seg: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(seg, 'base64url').toString('utf8')) as Record<string, unknown>;
}
