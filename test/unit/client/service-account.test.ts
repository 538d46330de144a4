import { describe, expect, it } from 'vitest';
import { ClientAuthError, ServiceAccountAuth, type ServiceAccountAuthOptions } from '../../../src/client/index.js';
import { ENDPOINT, ISSUER, fakeFetch, fakeJwt, fakeTime, json, networkError, tokenReply, type Reply } from './fake-idp.js';

const SECRET = 's3cr3t-value-never-printed';

function setup(script: Reply[] = [], opts: Partial<ServiceAccountAuthOptions> = {}) {
  const idp = fakeFetch(script);
  const time = fakeTime();
  const auth = new ServiceAccountAuth({
    tokenEndpoint: ENDPOINT,
    clientId: 'agentcube-sdk',
    clientSecret: SECRET,
    fetch: idp.fetch,
    clock: time.clock,
    sleep: time.sleep,
    random: () => 0.5,
    ...opts,
  });
  return { auth, idp, time };
}

async function rejection(p: Promise<unknown>): Promise<ClientAuthError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ClientAuthError);
  return err as ClientAuthError;
}

describe('ServiceAccountAuth: the token request', () => {
  it('sends a client credentials grant with client_secret_basic', async () => {
    const { auth, idp } = setup([], { scope: ['openid', 'sandbox'], audience: 'router' });
    await expect(auth.getToken()).resolves.toBe('token-1');
    const [req] = idp.seen;
    expect(req?.method).toBe('POST');
    expect(req?.url).toBe(ENDPOINT);
    expect(req?.headers.get('content-type')).toBe('application/x-www-form-urlencoded');
    expect(req?.headers.get('authorization')).toBe(`Basic ${Buffer.from(`agentcube-sdk:${SECRET}`).toString('base64')}`);
    const form = new URLSearchParams(req?.body);
    expect(form.get('grant_type')).toBe('client_credentials');
    expect(form.get('scope')).toBe('openid sandbox');
    expect(form.getAll('audience')).toEqual(['router']);
    expect(form.has('client_secret')).toBe(false);
  });

  it('form-encodes the client id and secret inside Basic credentials (RFC 6749 §2.3.1)', async () => {
    const { auth, idp } = setup([], { clientId: 'svc:a b', clientSecret: 'p@ss/w:rd' });
    await auth.getToken();
    const basic = idp.seen[0]?.headers.get('authorization')?.slice('Basic '.length) ?? '';
    expect(Buffer.from(basic, 'base64').toString()).toBe('svc%3Aa+b:p%40ss%2Fw%3Ard');
  });
});

describe('ServiceAccountAuth: caching and refresh timing', () => {
  it('caches the token until expires_in minus the margin', async () => {
    const { auth, idp, time } = setup([tokenReply('first', 300), tokenReply('second', 300)]);
    expect(await auth.getToken()).toBe('first');
    time.advance(269_999); // 300 s - 30 s margin - 1 ms
    expect(await auth.getToken()).toBe('first');
    expect(idp.seen).toHaveLength(1);
    time.advance(1);
    expect(await auth.getToken()).toBe('second');
    expect(idp.seen).toHaveLength(2);
  });

  it('honours a custom refreshMarginSeconds', async () => {
    const { auth, idp, time } = setup([tokenReply('a', 300), tokenReply('b', 300)], { refreshMarginSeconds: 120 });
    await auth.getToken();
    time.advance(179_999);
    expect(await auth.getToken()).toBe('a');
    time.advance(1);
    expect(await auth.getToken()).toBe('b');
    expect(idp.seen).toHaveLength(2);
  });

  it('caps the margin at half the lifetime, so a short-lived token is still reused', async () => {
    const { auth, idp, time } = setup([tokenReply('a', 20), tokenReply('b', 20)]);
    await auth.getToken();
    time.advance(9_999);
    expect(await auth.getToken()).toBe('a');
    time.advance(1);
    expect(await auth.getToken()).toBe('b');
    expect(idp.seen).toHaveLength(2);
  });

  it("uses the JWT's exp when it is earlier than expires_in", async () => {
    const time0 = fakeTime();
    const jwt = fakeJwt({ exp: Math.floor(time0.clock.now() / 1000) + 60 });
    const { auth, idp, time } = setup([tokenReply(jwt, 3600)]);
    await auth.getToken();
    time.advance(29_999);
    expect(await auth.getToken()).toBe(jwt);
    time.advance(1);
    await auth.getToken();
    expect(idp.seen).toHaveLength(2);
  });

  it('accepts expires_in as a numeric string', async () => {
    const { auth, idp, time } = setup([json(200, { access_token: 'a', token_type: 'bearer', expires_in: '300' })]);
    await auth.getToken();
    time.advance(200_000);
    await auth.getToken();
    expect(idp.seen).toHaveLength(1);
  });

  it('does not cache a token whose lifetime is unknown', async () => {
    const { auth, idp } = setup([tokenReply('opaque-1', null), tokenReply('opaque-2', null)]);
    expect(await auth.getToken()).toBe('opaque-1');
    expect(await auth.getToken()).toBe('opaque-2');
    expect(idp.seen).toHaveLength(2);
  });

  it('measures the lifetime from when the successful request was sent', async () => {
    // Two 503s with backoff (150 + 300 ms on the fake clock) before the token arrives.
    const { auth, idp, time } = setup([json(503, {}), json(503, {}), tokenReply('a', 300)]);
    await auth.getToken();
    time.advance(269_999);
    await auth.getToken();
    expect(idp.seen).toHaveLength(3);
    time.advance(1);
    await auth.getToken();
    expect(idp.seen).toHaveLength(4);
  });

  it('invalidate() forgets the cached token', async () => {
    const { auth, idp } = setup([tokenReply('a'), tokenReply('b')]);
    await auth.getToken();
    auth.invalidate();
    expect(await auth.getToken()).toBe('b');
    expect(idp.seen).toHaveLength(2);
  });
});

describe('ServiceAccountAuth: single-flight', () => {
  it('10 concurrent callers share one request', async () => {
    let release: (r: Response) => void = () => undefined;
    const pending = new Promise<Response>((resolve) => {
      release = resolve;
    });
    const { auth, idp } = setup([() => pending]);
    const calls = Array.from({ length: 10 }, () => auth.getToken());
    await new Promise((r) => setImmediate(r));
    expect(idp.seen).toHaveLength(1);
    release(tokenReply('shared'));
    expect(await Promise.all(calls)).toEqual(Array(10).fill('shared'));
    expect(idp.seen).toHaveLength(1);
  });

  it('concurrent callers at expiry share one refresh, and all see its failure', async () => {
    const { auth, idp, time } = setup([tokenReply('a', 300), json(401, { error: 'invalid_client' })]);
    await auth.getToken();
    time.advance(300_000);
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => auth.getToken()));
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    expect(idp.seen).toHaveLength(2);
  });

  it('a failed refresh is not remembered: the next call asks again', async () => {
    const { auth, idp } = setup([json(400, { error: 'invalid_scope' }), tokenReply('later')]);
    await expect(auth.getToken()).rejects.toMatchObject({ code: 'ERR_TOKEN_REQUEST_REJECTED' });
    await expect(auth.getToken()).resolves.toBe('later');
    expect(idp.seen).toHaveLength(2);
  });
});

describe('ServiceAccountAuth: retries', () => {
  it('retries 5xx with exponential backoff and jitter, then succeeds', async () => {
    const { auth, idp, time } = setup([json(503, {}), json(502, {}), json(500, {}), tokenReply('ok')]);
    await expect(auth.getToken()).resolves.toBe('ok');
    expect(idp.seen).toHaveLength(4);
    // nominal 200, 400, 800 ms; equal jitter with random() = 0.5 → 3/4 of nominal
    expect(time.sleeps).toEqual([150, 300, 600]);
  });

  it('keeps every delay between half and all of the nominal delay, capped at maxDelayMs', async () => {
    for (const random of [0, 0.999]) {
      const { auth, time } = setup(
        [json(503, {}), json(503, {}), json(503, {}), json(503, {}), tokenReply('ok')],
        { random: () => random, retry: { attempts: 5, baseDelayMs: 1000, maxDelayMs: 3000 } },
      );
      await auth.getToken();
      const nominal = [1000, 2000, 3000, 3000];
      time.sleeps.forEach((d, i) => {
        expect(d).toBeGreaterThanOrEqual((nominal[i] ?? 0) / 2);
        expect(d).toBeLessThanOrEqual(nominal[i] ?? 0);
      });
    }
  });

  it('retries network errors', async () => {
    const { auth, idp, time } = setup([networkError(), networkError('ECONNRESET'), tokenReply('ok')]);
    await expect(auth.getToken()).resolves.toBe('ok');
    expect(idp.seen).toHaveLength(3);
    expect(time.sleeps).toEqual([150, 300]);
  });

  it('retries 429 and follows Retry-After (capped at maxDelayMs)', async () => {
    const { auth, time } = setup([json(429, {}, { 'retry-after': '2' }), json(429, {}, { 'retry-after': '60' }), tokenReply('ok')]);
    await expect(auth.getToken()).resolves.toBe('ok');
    expect(time.sleeps).toEqual([2000, 5000]);
  });

  it('gives up after retry.attempts with ERR_TOKEN_ENDPOINT_UNAVAILABLE', async () => {
    const { auth, idp, time } = setup([json(503, {}), json(503, {}), json(503, {}), json(503, {}), tokenReply('never')]);
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_ENDPOINT_UNAVAILABLE');
    expect(err.status).toBe(503);
    expect(err.attempts).toBe(4);
    expect(err.clientId).toBe('agentcube-sdk');
    expect(err.message).toContain('agentcube-sdk');
    expect(err.message).toContain(ENDPOINT);
    expect(err.message).not.toContain(SECRET);
    expect(idp.seen).toHaveLength(4);
    expect(time.sleeps).toHaveLength(3); // no sleep after the last attempt
  });

  it('reports the network error when the last attempt failed to connect', async () => {
    const { auth } = setup([networkError(), networkError()], { retry: { attempts: 2 } });
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_ENDPOINT_UNAVAILABLE');
    expect(err.status).toBeUndefined();
    expect(err.message).toContain('ECONNREFUSED');
  });

  it('retry.attempts = 1 disables retrying', async () => {
    const { auth, idp, time } = setup([json(500, {})], { retry: { attempts: 1 } });
    await expect(auth.getToken()).rejects.toMatchObject({ code: 'ERR_TOKEN_ENDPOINT_UNAVAILABLE' });
    expect(idp.seen).toHaveLength(1);
    expect(time.sleeps).toEqual([]);
  });
});

describe('ServiceAccountAuth: rejected and invalid responses', () => {
  it('4xx: a typed error naming the client, the endpoint and the IdP error; no retry; no secret', async () => {
    const { auth, idp, time } = setup([
      json(401, { error: 'unauthorized_client', error_description: 'Invalid client or Invalid client credentials' }),
    ]);
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_REQUEST_REJECTED');
    expect(err.status).toBe(401);
    expect(err.clientId).toBe('agentcube-sdk');
    expect(err.endpoint).toBe(ENDPOINT);
    expect(err.idpError).toBe('unauthorized_client');
    expect(err.idpErrorDescription).toBe('Invalid client or Invalid client credentials');
    expect(err.message).toBe(
      `token request for client "agentcube-sdk" rejected by ${ENDPOINT}: HTTP 401: unauthorized_client (Invalid client or Invalid client credentials)`,
    );
    expect(err.message).not.toContain(SECRET);
    expect(JSON.stringify(err)).not.toContain(SECRET);
    expect(idp.seen).toHaveLength(1);
    expect(time.sleeps).toEqual([]);
  });

  it('redacts the secret even when the IdP echoes it back', async () => {
    const { auth } = setup([json(400, { error: 'invalid_request', error_description: `bad secret ${SECRET}\n!` })]);
    const err = await rejection(auth.getToken());
    expect(err.message).not.toContain(SECRET);
    expect(err.idpErrorDescription).toBe('bad secret [redacted] !');
  });

  it('4xx without an OAuth error body still names client and endpoint', async () => {
    const { auth } = setup([new Response('<html>forbidden</html>', { status: 403 })]);
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_REQUEST_REJECTED');
    expect(err.idpError).toBeUndefined();
    expect(err.message).toContain('HTTP 403: no OAuth error');
  });

  it.each([
    ['not JSON', new Response('<html/>', { status: 200 })],
    ['no access_token', json(200, { token_type: 'Bearer', expires_in: 300 })],
    ['a DPoP token', json(200, { access_token: 'x', token_type: 'DPoP', expires_in: 300 })],
  ])('200 with %s: ERR_TOKEN_RESPONSE_INVALID, not retried', async (_what, reply) => {
    const { auth, idp } = setup([reply]);
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_RESPONSE_INVALID');
    expect(err.message).toContain('agentcube-sdk');
    expect(idp.seen).toHaveLength(1);
  });
});

describe('ServiceAccountAuth: discovery', () => {
  const discovery = (issuer = ISSUER) => json(200, { issuer, token_endpoint: `${ENDPOINT}?from=discovery` });

  it('reads the token endpoint from the issuer’s discovery document, once', async () => {
    const { auth, idp, time } = setup([discovery(), tokenReply('a', 300), tokenReply('b', 300)], {
      tokenEndpoint: undefined,
      issuer: `${ISSUER}/`,
    });
    expect(auth.tokenEndpoint).toBeUndefined();
    expect(await auth.getToken()).toBe('a');
    time.advance(300_000);
    expect(await auth.getToken()).toBe('b');
    expect(idp.seen.map((r) => `${r.method} ${r.url}`)).toEqual([
      `GET ${ISSUER}/.well-known/openid-configuration`,
      `POST ${ENDPOINT}?from=discovery`,
      `POST ${ENDPOINT}?from=discovery`,
    ]);
    expect(auth.tokenEndpoint).toBe(ENDPOINT);
  });

  it('retries a discovery document that is temporarily unavailable', async () => {
    const { auth, time } = setup([json(503, {}), networkError(), discovery(), tokenReply('a')], {
      tokenEndpoint: undefined,
      issuer: ISSUER,
    });
    await expect(auth.getToken()).resolves.toBe('a');
    expect(time.sleeps).toEqual([150, 300]);
  });

  it('refuses a document that names another issuer', async () => {
    const { auth, idp } = setup([discovery('https://evil.test/realms/agentcube')], { tokenEndpoint: undefined, issuer: ISSUER });
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_DISCOVERY_FAILED');
    expect(err.message).toContain('https://evil.test/realms/agentcube');
    expect(err.message).toContain('agentcube-sdk');
    expect(idp.seen).toHaveLength(1); // the secret never went anywhere
  });

  it('a 404 discovery document fails at once; a later call tries again', async () => {
    const { auth, idp } = setup([json(404, {}), discovery(), tokenReply('a')], { tokenEndpoint: undefined, issuer: ISSUER });
    await expect(auth.getToken()).rejects.toMatchObject({ code: 'ERR_DISCOVERY_FAILED', status: 404 });
    await expect(auth.getToken()).resolves.toBe('a');
    expect(idp.seen).toHaveLength(3);
  });
});

describe('ServiceAccountAuth: options are checked at construction', () => {
  const base: ServiceAccountAuthOptions = { tokenEndpoint: ENDPOINT, clientId: 'c', clientSecret: SECRET };
  it.each<[string, Partial<ServiceAccountAuthOptions>]>([
    ['no clientId', { clientId: '' }],
    ['no secret', { clientSecret: '' }],
    ['neither endpoint nor issuer', { tokenEndpoint: undefined }],
    ['both endpoint and issuer', { issuer: ISSUER }],
    ['a non-http endpoint', { tokenEndpoint: 'ftp://idp.test/token' }],
    ['credentials in the URL', { tokenEndpoint: 'https://u:p@idp.test/token' }],
    ['a negative margin', { refreshMarginSeconds: -1 }],
    ['zero attempts', { retry: { attempts: 0 } }],
  ])('%s', (_what, override) => {
    let caught: unknown;
    try {
      new ServiceAccountAuth({ ...base, ...override });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(ClientAuthError);
    expect((caught as ClientAuthError).code).toBe('ERR_CLIENT_OPTIONS_INVALID');
    expect((caught as ClientAuthError).message).not.toContain(SECRET);
  });
});
