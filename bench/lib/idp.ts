/**
 * The benchmark's stand-in identity provider, on 127.0.0.1:
 *   GET  /jwks   the realm's JWKS (RS256 + ES256 keys), read by portcullis,
 *                Envoy's jwt_authn (remote_jwks) and — as a data file — OPA;
 *   POST /token  an RFC 8693 token exchange endpoint (client_secret_basic),
 *                answering with an ES256 token for the requested audience that
 *                expires with the subject token.
 *
 * Not Keycloak: a real Keycloak takes 20–60 s to start and a JVM's worth of
 * memory on a 2-core machine that also runs the load. Set-up 6 measures a
 * CACHED exchange (portcullis asks once per subject token and audience), so
 * this endpoint is hit once per token during warm-up and not while measuring;
 * `exchanges()` lets the harness check that.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { jwksOf, mintToken, type BenchKeys } from './tokens.js';

export const EXCHANGE_CLIENT_ID = 'portcullis';
export const EXCHANGE_CLIENT_SECRET = 'bench-secret';
const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

export interface BenchIdp {
  readonly url: string;
  readonly jwksUrl: string;
  readonly tokenUrl: string;
  readonly port: number;
  jwksRequests(): number;
  exchanges(): number;
  close(): Promise<void>;
}

export async function startIdp(keys: BenchKeys): Promise<BenchIdp> {
  const jwks = JSON.stringify(jwksOf(keys));
  const expectedAuth = `Basic ${Buffer.from(`${EXCHANGE_CLIENT_ID}:${EXCHANGE_CLIENT_SECRET}`).toString('base64')}`;
  let jwksCount = 0;
  let exchangeCount = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const send = (status: number, body: unknown): void => {
        const text = JSON.stringify(body);
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
        res.end(text);
      };
      const path = (req.url ?? '/').split('?')[0];
      if (req.method === 'GET' && path === '/jwks') {
        jwksCount++;
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(jwks) });
        res.end(jwks);
        return;
      }
      if (req.method === 'POST' && path === '/token') {
        if (req.headers.authorization !== expectedAuth) {
          send(401, { error: 'invalid_client' });
          return;
        }
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        const subject = form.get('subject_token') ?? '';
        const audience = form.get('audience') ?? '';
        if (form.get('grant_type') !== TOKEN_EXCHANGE_GRANT || form.get('subject_token_type') !== ACCESS_TOKEN_TYPE || !subject || !audience) {
          send(400, { error: 'invalid_request' });
          return;
        }
        let claims: { sub?: unknown; exp?: unknown };
        try {
          claims = JSON.parse(Buffer.from(subject.split('.')[1] ?? '', 'base64url').toString('utf8')) as { sub?: unknown; exp?: unknown };
        } catch {
          send(400, { error: 'invalid_request', error_description: 'subject_token is not a JWT' });
          return;
        }
        if (typeof claims.sub !== 'string' || typeof claims.exp !== 'number') {
          send(400, { error: 'invalid_request' });
          return;
        }
        exchangeCount++;
        const token = mintToken(keys, 'ES256', { sub: claims.sub, exp: claims.exp, aud: audience });
        send(200, {
          access_token: token,
          issued_token_type: ACCESS_TOKEN_TYPE,
          token_type: 'Bearer',
          expires_in: claims.exp - Math.floor(Date.now() / 1000),
        });
        return;
      }
      send(404, { error: 'not_found' });
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    port,
    jwksUrl: `${url}/jwks`,
    tokenUrl: `${url}/token`,
    jwksRequests: () => jwksCount,
    exchanges: () => exchangeCount,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
