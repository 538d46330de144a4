import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, type JWK, type JWTPayload } from 'jose';

/**
 * A real identity provider stand-in for integration tests: a node:http server
 * on 127.0.0.1:0 serving OIDC discovery at `/.well-known/openid-configuration`
 * (issuer = its own base URL, `jwks_uri` = `<base>/jwks`) and the JWKS at
 * `/jwks`. Keys can be created, published and withdrawn at runtime, the server
 * can be made to fail (500) and its JWKS answers can be held behind a gate
 * until released (to keep a fetch in flight deterministically, never by time).
 */
export type SigningAlg = 'RS256' | 'ES256';

export const DISCOVERY_PATH = '/.well-known/openid-configuration';
export const JWKS_PATH = '/jwks';

export interface SignOptions {
  /** Key to sign with (default: the first published key). */
  kid?: string;
  /** Lifetime in seconds from now (default 600); negative makes an expired token. */
  ttlSeconds?: number;
  /** Overrides the default `aud` (the server's audience); `null` leaves it out. */
  audience?: string | string[] | null;
  /** Overrides the default `iss` (the server's issuer). */
  issuer?: string;
  /** Leaves the `kid` header out. */
  omitKid?: boolean;
}

export interface JwksServer {
  /** `http://127.0.0.1:<port>`: the issuer URL and base of every endpoint. */
  readonly baseUrl: string;
  readonly issuer: string;
  readonly jwksUrl: string;
  readonly discoveryUrl: string;
  /** The `aud` put into tokens by default. */
  readonly audience: string;
  /** Generates a key (unless `kid` already exists) and publishes it; returns its kid. */
  addKey(opts?: { kid?: string; alg?: SigningAlg }): Promise<string>;
  /** Generates a key that can sign but is not published (a kid the IdP does not know). */
  createKey(opts?: { kid?: string; alg?: SigningAlg }): Promise<string>;
  /** Stops publishing a key; it can still sign (tokens of a withdrawn key). */
  removeKey(kid: string): void;
  /** Kids the JWKS currently publishes, in order. */
  publishedKids(): string[];
  /** While true every endpoint answers 500. */
  setFailing(failing: boolean): void;
  /** Requests received for a path (counted before failing/holding applies). */
  requestCount(path: string): number;
  /** Holds every /jwks answer until release(). */
  hold(): void;
  /** Answers every held /jwks request with the keys published now, and stops holding. */
  release(): void;
  /** /jwks requests currently waiting behind the gate. */
  heldCount(): number;
  /** Signs a JWT (iss, aud, iat, exp filled in unless overridden) with one of the keys. */
  sign(claims: JWTPayload, opts?: SignOptions): Promise<string>;
  close(): Promise<void>;
}

interface KeyEntry {
  kid: string;
  alg: SigningAlg;
  privateKey: CryptoKey;
  publicJwk: JWK;
}

export async function startJwksServer(opts: { audience?: string; keys?: number; alg?: SigningAlg } = {}): Promise<JwksServer> {
  const keyring = new Map<string, KeyEntry>();
  const published: string[] = [];
  const counts = new Map<string, number>();
  const held: ServerResponse[] = [];
  let failing = false;
  let holding = false;
  let keySeq = 0;
  let baseUrl = '';

  const send = (res: ServerResponse, status: number, body: unknown): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  const jwksDocument = (): { keys: JWK[] } => ({
    keys: published.map((kid) => keyring.get(kid)?.publicJwk).filter((k): k is JWK => k !== undefined),
  });

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    counts.set(path, (counts.get(path) ?? 0) + 1);
    if (failing) {
      send(res, 500, { error: 'server_error' });
      return;
    }
    if (path === DISCOVERY_PATH) {
      send(res, 200, {
        issuer: baseUrl,
        jwks_uri: `${baseUrl}${JWKS_PATH}`,
        token_endpoint: `${baseUrl}/token`,
        id_token_signing_alg_values_supported: ['RS256', 'ES256'],
      });
      return;
    }
    if (path === JWKS_PATH) {
      if (holding) {
        held.push(res);
        return;
      }
      send(res, 200, jwksDocument());
      return;
    }
    send(res, 404, { error: 'not_found' });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const audience = opts.audience ?? 'portcullis-test';

  async function generate(kid: string | undefined, alg: SigningAlg): Promise<string> {
    const id = kid ?? `key-${++keySeq}`;
    if (keyring.has(id)) return id;
    const pair = await generateKeyPair(alg, alg === 'RS256' ? { modulusLength: 2048 } : {});
    const jwk = await exportJWK(pair.publicKey);
    keyring.set(id, { kid: id, alg, privateKey: pair.privateKey, publicJwk: { ...jwk, kid: id, alg, use: 'sig' } });
    return id;
  }

  const api: JwksServer = {
    baseUrl,
    issuer: baseUrl,
    jwksUrl: `${baseUrl}${JWKS_PATH}`,
    discoveryUrl: `${baseUrl}${DISCOVERY_PATH}`,
    audience,
    async addKey(o = {}) {
      const kid = await generate(o.kid, o.alg ?? opts.alg ?? 'RS256');
      if (!published.includes(kid)) published.push(kid);
      return kid;
    },
    createKey(o = {}) {
      return generate(o.kid, o.alg ?? opts.alg ?? 'RS256');
    },
    removeKey(kid) {
      const i = published.indexOf(kid);
      if (i >= 0) published.splice(i, 1);
    },
    publishedKids: () => [...published],
    setFailing(f) {
      failing = f;
    },
    requestCount: (path) => counts.get(path) ?? 0,
    hold() {
      holding = true;
    },
    release() {
      holding = false;
      for (const res of held.splice(0)) send(res, 200, jwksDocument());
    },
    heldCount: () => held.length,
    async sign(claims, o = {}) {
      const kid = o.kid ?? published[0];
      const key = kid === undefined ? undefined : keyring.get(kid);
      if (!key) throw new Error(`jwks-server: no key ${kid ?? '(none published)'} to sign with`);
      const now = Math.floor(Date.now() / 1000);
      const payload: JWTPayload = { iss: o.issuer ?? baseUrl, iat: now, exp: now + (o.ttlSeconds ?? 600), ...claims };
      const aud = o.audience === undefined ? audience : o.audience;
      if (aud !== null) payload.aud = aud;
      const header = o.omitKid ? { alg: key.alg, typ: 'JWT' } : { alg: key.alg, typ: 'JWT', kid: key.kid };
      return new SignJWT(payload).setProtectedHeader(header).sign(key.privateKey);
    },
    close() {
      for (const res of held.splice(0)) send(res, 503, { error: 'closing' });
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
  for (let i = 0; i < (opts.keys ?? 1); i++) await api.addKey();
  return api;
}
