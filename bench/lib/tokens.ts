/**
 * Signing keys and tokens shared by every benchmark set-up: one RSA (RS256,
 * Keycloak's default) and one EC P-256 (ES256) key of a stand-in realm, the
 * JWKS that publishes both, and pools of signed access tokens.
 *
 * Keys and the RS256 token pool are kept in .cache/bench/ (git-ignored) so a
 * re-run does not spend half a minute signing 20,000 RS256 tokens again; they
 * are re-minted when they have less than a day left. The issuer is a fixed
 * URL, not the JWKS server's address, so cached tokens stay valid across runs;
 * every verifier is configured with that issuer and the JWKS URL explicitly.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const BENCH_ISSUER = 'https://idp.bench.invalid/realms/bench';
export const BENCH_AUDIENCE = 'agentcube-router';
export const BENCH_ROLE = 'sandbox:invoke';
export const BENCH_ISSUER_NAME = 'bench';
/** Distinct users (and sandboxes sbx-<i> they own) behind the token pools. */
export const BENCH_USERS = 1000;

export type Alg = 'RS256' | 'ES256';

export interface BenchKeys {
  rsa: { kid: string; privateKey: KeyObject; publicKey: KeyObject };
  ec: { kid: string; privateKey: KeyObject; publicKey: KeyObject };
}

export interface PooledToken {
  /** Index into the pool; the token's sub is user-<index % BENCH_USERS>. */
  index: number;
  sub: string;
  token: string;
}

interface StateFile {
  version: 1;
  rsaPem: string;
  ecPem: string;
  rsaKid: string;
  ecKid: string;
  /** RS256 tokens by pool index; exp of them all. */
  rsTokens: string[];
  exp: number;
}

const TTL_SECONDS = 7 * 24 * 3600;
const MIN_LEFT_SECONDS = 24 * 3600;

function b64url(v: unknown): string {
  return Buffer.from(JSON.stringify(v)).toString('base64url');
}

export function userOf(index: number): string {
  return `user-${index % BENCH_USERS}`;
}

/** A Keycloak-shaped access token: realm roles in realm_access.roles. */
export function mintToken(keys: BenchKeys, alg: Alg, claims: { sub: string; exp: number; aud?: string | string[]; extra?: Record<string, unknown> }): string {
  const k = alg === 'RS256' ? keys.rsa : keys.ec;
  const now = Math.floor(Date.now() / 1000);
  const header = b64url({ alg, typ: 'JWT', kid: k.kid });
  const payload = b64url({
    exp: claims.exp,
    iat: now,
    jti: randomUUID(),
    iss: BENCH_ISSUER,
    aud: claims.aud ?? BENCH_AUDIENCE,
    sub: claims.sub,
    typ: 'Bearer',
    azp: 'bench-client',
    realm_access: { roles: [BENCH_ROLE, 'offline_access'] },
    scope: 'openid profile',
    ...claims.extra,
  });
  const input = `${header}.${payload}`;
  const sig =
    alg === 'RS256'
      ? sign('sha256', Buffer.from(input), k.privateKey)
      : sign('sha256', Buffer.from(input), { key: k.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

export function jwksOf(keys: BenchKeys): { keys: Record<string, unknown>[] } {
  return {
    keys: [
      { ...(keys.rsa.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: keys.rsa.kid, alg: 'RS256', use: 'sig' },
      { ...(keys.ec.publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid: keys.ec.kid, alg: 'ES256', use: 'sig' },
    ],
  };
}

export interface BenchMaterial {
  keys: BenchKeys;
  /** RS256 tokens, all different (distinct jti); sub = user-<i % BENCH_USERS>. */
  rsPool: PooledToken[];
  /** Seconds since epoch when the pooled tokens expire. */
  exp: number;
  /** Whether the pool was signed in this run (and how long it took). */
  mintedMs?: number;
}

function keysFrom(s: StateFile): BenchKeys {
  const rsaPriv = createPrivateKey(s.rsaPem);
  const ecPriv = createPrivateKey(s.ecPem);
  return {
    rsa: { kid: s.rsaKid, privateKey: rsaPriv, publicKey: createPublicKey(rsaPriv) },
    ec: { kid: s.ecKid, privateKey: ecPriv, publicKey: createPublicKey(ecPriv) },
  };
}

/**
 * Loads (or creates) the keys and an RS256 pool of at least `poolSize` tokens.
 * `log` gets a line when signing takes a while.
 */
export function loadMaterial(cacheDir: string, poolSize: number, log: (s: string) => void = () => undefined): BenchMaterial {
  mkdirSync(cacheDir, { recursive: true });
  const file = join(cacheDir, 'tokens.json');
  const nowS = Math.floor(Date.now() / 1000);
  let state: StateFile | undefined;
  if (existsSync(file)) {
    try {
      const s = JSON.parse(readFileSync(file, 'utf8')) as StateFile;
      if (s.version === 1 && s.exp - nowS > MIN_LEFT_SECONDS && s.rsTokens.length >= poolSize) state = s;
    } catch {
      state = undefined;
    }
  }
  let mintedMs: number | undefined;
  if (!state) {
    const started = Date.now();
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const s: StateFile = {
      version: 1,
      rsaPem: rsa.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      ecPem: ec.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      rsaKid: `rsa-${randomUUID().slice(0, 8)}`,
      ecKid: `ec-${randomUUID().slice(0, 8)}`,
      rsTokens: [],
      exp: nowS + TTL_SECONDS,
    };
    const keys = keysFrom(s);
    log(`signing ${poolSize} RS256 tokens (cached in ${file} for later runs)`);
    for (let i = 0; i < poolSize; i++) s.rsTokens.push(mintToken(keys, 'RS256', { sub: userOf(i), exp: s.exp }));
    writeFileSync(file, JSON.stringify(s));
    state = s;
    mintedMs = Date.now() - started;
  }
  const keys = keysFrom(state);
  return {
    keys,
    rsPool: state.rsTokens.slice(0, poolSize).map((token, index) => ({ index, sub: userOf(index), token })),
    exp: state.exp,
    mintedMs,
  };
}
