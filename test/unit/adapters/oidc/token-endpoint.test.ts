import { generateKeyPairSync } from 'node:crypto';
import { decodeProtectedHeader, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  ACCESS_TOKEN_TYPE,
  basicAuthorization,
  createTokenEndpointClient,
  expiryOf,
  JWT_BEARER_CLIENT_ASSERTION,
  TOKEN_EXCHANGE_GRANT,
  type ClientAuth,
  type TokenEndpointClient,
  type TokenEndpointOptions,
} from '../../../../src/adapters/oidc/token-endpoint.js';
import type { FetchFn } from '../../../../src/core/types.js';
import { createFakeClock, settle, type FakeClock } from '../../../helpers/fake-clock.js';
import { rawToken } from '../../../helpers/tokens.js';

const T0 = 1_700_000_000_000;
const ISS = 'https://idp.example/realms/acme';
const DISCOVERY = `${ISS}/.well-known/openid-configuration`;
const ENDPOINT = `${ISS}/protocol/openid-connect/token`;
const SECRET_AUTH: ClientAuth = { method: 'client_secret_basic', clientId: 'router', clientSecret: 'router-secret' };

interface Recorded {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: string;
}

type Handler = (req: Recorded) => Response | Promise<Response>;

function fakeFetch(handler: Handler): { fetch: FetchFn; calls: Recorded[] } {
  const calls: Recorded[] = [];
  const fetch: FetchFn = (input, init) => {
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((v, k) => {
      headers[k] = v;
    });
    const req: Recorded = {
      url: String(input),
      method: init?.method ?? 'GET',
      headers,
      body: typeof init?.body === 'string' ? init.body : '',
    };
    calls.push(req);
    return Promise.resolve(handler(req));
  };
  return { fetch, calls };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}

function newToken(fc: FakeClock, lifetimeS: number): string {
  return rawToken({ alg: 'RS256', typ: 'JWT' }, { sub: 'alice', aud: 'workloadmanager', exp: Math.floor(fc.now() / 1000) + lifetimeS }, 'sig');
}

function discoveryDoc(over: Record<string, unknown> = {}): Response {
  return json(200, { issuer: ISS, token_endpoint: ENDPOINT, jwks_uri: `${ISS}/certs`, ...over });
}

function client(
  fc: FakeClock,
  handler: Handler,
  opts: Partial<TokenEndpointOptions> = {},
): { c: TokenEndpointClient; calls: Recorded[] } {
  const { fetch, calls } = fakeFetch(handler);
  const c = createTokenEndpointClient(
    { fetch, scheduler: fc.scheduler, clock: fc.clock },
    { issuer: ISS, timeoutMs: 5_000, discoveryCooldownMs: 5_000, ...opts },
  );
  return { c, calls };
}

const REQ = { subjectToken: 'subject.jwt.token', audience: 'workloadmanager' };

describe('token endpoint: the exchange request', () => {
  it('discovers the endpoint, then POSTs the RFC 8693 form with HTTP Basic client authentication', async () => {
    const fc = createFakeClock(T0);
    const issued = newToken(fc, 300);
    const { c, calls } = client(fc, (r) =>
      r.url === DISCOVERY
        ? discoveryDoc()
        : json(200, { access_token: issued, token_type: 'Bearer', expires_in: 300, issued_token_type: ACCESS_TOKEN_TYPE }),
    );
    const out = await c.exchange(REQ, SECRET_AUTH);
    expect(out).toEqual({ ok: true, token: { accessToken: issued, expiresAt: T0 + 300_000 } });
    expect(calls.map((r) => `${r.method} ${r.url}`)).toEqual([`GET ${DISCOVERY}`, `POST ${ENDPOINT}`]);
    const post = calls[1];
    expect(post?.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(post?.headers.accept).toBe('application/json');
    expect(post?.headers.authorization).toBe(`Basic ${Buffer.from('router:router-secret').toString('base64')}`);
    expect([...new URLSearchParams(post?.body)]).toEqual([
      ['grant_type', TOKEN_EXCHANGE_GRANT],
      ['subject_token', 'subject.jwt.token'],
      ['subject_token_type', ACCESS_TOKEN_TYPE],
      ['requested_token_type', ACCESS_TOKEN_TYPE],
      ['audience', 'workloadmanager'],
    ]);
    expect(c.status()).toEqual({ endpoint: ENDPOINT, discovered: true });
  });

  it('sends scope when asked and uses a configured endpoint without discovery', async () => {
    const fc = createFakeClock(T0);
    const { c, calls } = client(fc, () => json(200, { access_token: newToken(fc, 60) }), { tokenEndpoint: 'https://other.example/token' });
    const out = await c.exchange({ ...REQ, scope: 'openid sandbox' }, SECRET_AUTH);
    expect(out.ok).toBe(true);
    expect(calls.map((r) => r.url)).toEqual(['https://other.example/token']);
    expect(new URLSearchParams(calls[0]?.body).get('scope')).toBe('openid sandbox');
    expect(c.status()).toEqual({ endpoint: 'https://other.example/token', discovered: false });
  });

  it('form-urlencodes client id and secret inside the Basic credentials (RFC 6749 §2.3.1)', () => {
    const header = basicAuthorization('my client', 's3cr:t+/=é~*');
    const decoded = Buffer.from(header.slice('Basic '.length), 'base64').toString('utf8');
    expect(header.startsWith('Basic ')).toBe(true);
    expect(decoded).toBe('my+client:s3cr%3At%2B%2F%3D%C3%A9%7E*');
  });

  it.each(['ES256', 'RS256', 'PS256'] as const)('private_key_jwt (%s): a client assertion the public key verifies, no Basic header', async (alg) => {
    const fc = createFakeClock(T0);
    const pair = alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('rsa', { modulusLength: 2048 });
    const { c, calls } = client(fc, () => json(200, { access_token: newToken(fc, 60) }), { tokenEndpoint: ENDPOINT });
    const auth: ClientAuth = { method: 'private_key_jwt', clientId: 'router', key: pair.privateKey, alg, kid: 'k1' };
    expect((await c.exchange(REQ, auth)).ok).toBe(true);
    const post = calls[0];
    expect(post?.headers.authorization).toBeUndefined();
    const form = new URLSearchParams(post?.body);
    expect(form.get('client_id')).toBe('router');
    expect(form.get('client_assertion_type')).toBe(JWT_BEARER_CLIENT_ASSERTION);
    expect(form.get('grant_type')).toBe(TOKEN_EXCHANGE_GRANT);
    const assertion = form.get('client_assertion') ?? '';
    expect(decodeProtectedHeader(assertion)).toMatchObject({ alg, kid: 'k1', typ: 'JWT' });
    const { payload } = await jwtVerify(assertion, pair.publicKey, {
      issuer: 'router',
      subject: 'router',
      audience: ENDPOINT,
      algorithms: [alg],
      currentDate: new Date(T0),
    });
    expect(payload.iat).toBe(T0 / 1000);
    expect(payload.exp).toBe(T0 / 1000 + 60);
    expect(typeof payload.jti).toBe('string');
    // Every assertion is unique (replay protection at the IdP).
    await c.exchange(REQ, auth);
    const second = new URLSearchParams(calls[1]?.body).get('client_assertion') ?? '';
    const { payload: p2 } = await jwtVerify(second, pair.publicKey, { currentDate: new Date(T0) });
    expect(p2.jti).not.toBe(payload.jti);
  });
});

describe('token endpoint: expiry of the issued token', () => {
  it('takes the earlier of expires_in and the exp claim; either alone; neither = unknown', () => {
    const fc = createFakeClock(T0);
    const jwt300 = newToken(fc, 300);
    expect(expiryOf(jwt300, 60, T0)).toBe(T0 + 60_000);
    expect(expiryOf(jwt300, 600, T0)).toBe(T0 + 300_000);
    expect(expiryOf(jwt300, undefined, T0)).toBe(T0 + 300_000);
    expect(expiryOf('opaque-token', 120, T0)).toBe(T0 + 120_000);
    expect(expiryOf('opaque-token', '120', T0)).toBeUndefined();
    expect(expiryOf('opaque-token', undefined, T0)).toBeUndefined();
  });
});

describe('token endpoint: failures are values with a code, never throws', () => {
  const cases: { name: string; respond: () => Response | Promise<Response>; code: string; status?: number; idpError?: string }[] = [
    {
      name: 'error response: code and status, the IdP error code but not its description',
      respond: () => json(400, { error: 'invalid_client', error_description: 'Invalid client secret router-secret' }),
      code: 'http_status',
      status: 400,
      idpError: 'invalid_client',
    },
    { name: 'server error without JSON', respond: () => new Response('<html>oops</html>', { status: 502 }), code: 'http_status', status: 502 },
    { name: 'invalid JSON', respond: () => new Response('{"access_token": ', { status: 200 }), code: 'invalid_response' },
    { name: 'not an object', respond: () => json(200, ['x']), code: 'invalid_response' },
    { name: 'no access_token', respond: () => json(200, { token_type: 'Bearer', expires_in: 60 }), code: 'invalid_response' },
    {
      name: 'another token type than asked for',
      respond: () => json(200, { access_token: 'x', issued_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }),
      code: 'invalid_response',
    },
    { name: 'network error', respond: () => Promise.reject(new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } })), code: 'network' },
  ];
  it.each(cases)('$name', async ({ respond, code, status, idpError }) => {
    const fc = createFakeClock(T0);
    const { c } = client(fc, respond, { tokenEndpoint: ENDPOINT });
    const out = await c.exchange(REQ, SECRET_AUTH);
    expect(out.ok).toBe(false);
    if (out.ok) return;
    expect(out.code).toBe(code);
    expect(out.status).toBe(status ?? (code === 'invalid_response' ? 200 : undefined));
    expect(out.idpError).toBe(idpError);
    expect(out.message).not.toContain('router-secret');
    expect(out.message).not.toContain('subject.jwt.token');
  });

  it('times out on the injected clock (no real waiting)', async () => {
    const fc = createFakeClock(T0);
    const { c } = client(fc, () => new Promise<Response>(() => undefined), { tokenEndpoint: ENDPOINT, timeoutMs: 2_000 });
    const pending = c.exchange(REQ, SECRET_AUTH);
    await settle();
    fc.advance(2_000);
    const out = await pending;
    expect(out).toMatchObject({ ok: false, code: 'timeout' });
    expect(fc.pending()).toEqual([]);
  });

  it('stop() aborts a call in flight and refuses later ones', async () => {
    const fc = createFakeClock(T0);
    const { c, calls } = client(fc, () => new Promise<Response>(() => undefined), { tokenEndpoint: ENDPOINT });
    const pending = c.exchange(REQ, SECRET_AUTH);
    await settle();
    c.stop();
    expect(await pending).toMatchObject({ ok: false, code: 'aborted' });
    expect(await c.exchange(REQ, SECRET_AUTH)).toMatchObject({ ok: false, code: 'aborted' });
    expect(calls).toHaveLength(1);
  });
});

describe('token endpoint: discovery', () => {
  it('a failed discovery answers discovery_failed, is not retried within the cooldown, then is retried', async () => {
    const fc = createFakeClock(T0);
    let up = false;
    const { c, calls } = client(fc, (r) => {
      if (r.url === DISCOVERY) return up ? discoveryDoc() : new Response('down', { status: 503 });
      return json(200, { access_token: newToken(fc, 60) });
    });
    const first = await c.exchange(REQ, SECRET_AUTH);
    expect(first).toMatchObject({ ok: false, code: 'discovery_failed' });
    if (!first.ok) expect(first.message).toContain('HTTP 503');
    expect(c.status()).toMatchObject({ discovered: false, lastDiscoveryError: expect.stringContaining('HTTP 503') });
    up = true;
    fc.advance(4_999);
    expect(await c.exchange(REQ, SECRET_AUTH)).toMatchObject({ ok: false, code: 'discovery_failed' });
    expect(calls).toHaveLength(1);
    fc.advance(1);
    expect((await c.exchange(REQ, SECRET_AUTH)).ok).toBe(true);
    expect(calls.map((r) => r.url)).toEqual([DISCOVERY, DISCOVERY, ENDPOINT]);
  });

  it('concurrent first requests share one discovery', async () => {
    const fc = createFakeClock(T0);
    const { c, calls } = client(fc, (r) => (r.url === DISCOVERY ? discoveryDoc() : json(200, { access_token: newToken(fc, 60) })));
    const outs = await Promise.all([c.exchange(REQ, SECRET_AUTH), c.exchange(REQ, SECRET_AUTH), c.discover()]);
    expect(outs.slice(0, 2).every((o) => o && o.ok)).toBe(true);
    expect(calls.filter((r) => r.url === DISCOVERY)).toHaveLength(1);
  });

  it('refuses a discovery document that names another issuer or lacks a token endpoint', async () => {
    for (const doc of [{ issuer: 'https://evil.example' }, { token_endpoint: undefined }, { token_endpoint: 'ftp://x/token' }]) {
      const fc = createFakeClock(T0);
      const { c } = client(fc, (r) => (r.url === DISCOVERY ? discoveryDoc(doc) : json(200, { access_token: 'x' })));
      expect(await c.exchange(REQ, SECRET_AUTH)).toMatchObject({ ok: false, code: 'discovery_failed' });
    }
  });

  it('a discovered endpoint that answers 404 is looked up again on the next request', async () => {
    const fc = createFakeClock(T0);
    let moved = false;
    const { c, calls } = client(fc, (r) => {
      if (r.url === DISCOVERY) return discoveryDoc(moved ? { token_endpoint: `${ISS}/v2/token` } : {});
      if (r.url === ENDPOINT) return new Response('gone', { status: 404 });
      return json(200, { access_token: newToken(fc, 60) });
    });
    expect(await c.exchange(REQ, SECRET_AUTH)).toMatchObject({ ok: false, code: 'http_status', status: 404 });
    moved = true;
    expect((await c.exchange(REQ, SECRET_AUTH)).ok).toBe(true);
    expect(calls.map((r) => r.url)).toEqual([DISCOVERY, ENDPOINT, DISCOVERY, `${ISS}/v2/token`]);
  });
});
