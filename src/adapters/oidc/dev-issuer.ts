import { createPublicKey, type JsonWebKeyInput, type KeyObject } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import type { Clock } from '../../core/types.js';

/**
 * The development issuer of the embedded default configuration: a signing key
 * generated at start, its JWKS, and a token endpoint that mints a token for
 * any subject and roles asked for. It exists so a newcomer can try portcullis
 * without an identity provider; config validation refuses it unless the admin
 * port listens on loopback only.
 */
export interface DevTokenRequest {
  sub: string;
  roles?: string[];
  aud?: string | string[];
  ttlSeconds?: number;
  claims?: Record<string, unknown>;
}

export interface DevIssuer {
  readonly issuer: string;
  readonly audience: string;
  readonly publicKey: KeyObject;
  readonly kid: string;
  readonly alg: 'ES256' | 'RS256';
  jwks(): { keys: Record<string, unknown>[] };
  discovery(): Record<string, unknown>;
  mint(req: DevTokenRequest): Promise<{ access_token: string; token_type: 'Bearer'; expires_in: number }>;
}

export class DevTokenRequestError extends Error {
  override readonly name = 'DevTokenRequestError';
}

export async function createDevIssuer(opts: {
  issuer: string;
  audience: string;
  maxTtlSeconds: number;
  alg: 'ES256' | 'RS256';
  clock: Clock;
}): Promise<DevIssuer> {
  const { privateKey, publicKey } = await generateKeyPair(opts.alg, { extractable: true });
  const publicJwk = await exportJWK(publicKey);
  const kid = `dev-${opts.clock.now().toString(36)}`;
  const jwk = { ...publicJwk, kid, alg: opts.alg, use: 'sig' };
  const publicKeyObject = createPublicKey({ key: publicJwk as JsonWebKeyInput['key'], format: 'jwk' });
  return {
    issuer: opts.issuer,
    audience: opts.audience,
    publicKey: publicKeyObject,
    kid,
    alg: opts.alg,
    jwks: () => ({ keys: [jwk] }),
    discovery: () => ({
      issuer: opts.issuer,
      jwks_uri: `${opts.issuer}/jwks.json`,
      token_endpoint: `${opts.issuer}/token`,
      id_token_signing_alg_values_supported: [opts.alg],
    }),
    async mint(req) {
      if (typeof req.sub !== 'string' || req.sub.length === 0) throw new DevTokenRequestError('"sub" is required');
      if (req.roles !== undefined && (!Array.isArray(req.roles) || req.roles.some((r) => typeof r !== 'string'))) {
        throw new DevTokenRequestError('"roles" must be a list of strings');
      }
      const ttl = req.ttlSeconds ?? Math.min(300, opts.maxTtlSeconds);
      if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl === 0 || Math.abs(ttl) > opts.maxTtlSeconds) {
        throw new DevTokenRequestError(`"ttlSeconds" must be a non-zero number of at most ${opts.maxTtlSeconds}`);
      }
      const now = Math.floor(opts.clock.now() / 1000);
      const token = await new SignJWT({
        ...(req.claims ?? {}),
        realm_access: { roles: req.roles ?? [] },
      })
        .setProtectedHeader({ alg: opts.alg, kid, typ: 'JWT' })
        .setIssuer(opts.issuer)
        .setSubject(req.sub)
        .setAudience(req.aud ?? opts.audience)
        .setIssuedAt(Math.min(now, now + ttl))
        .setExpirationTime(now + ttl)
        .sign(privateKey);
      return { access_token: token, token_type: 'Bearer', expires_in: ttl };
    },
  };
}
