import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  CLIENT_AUTH_ERROR_CODES,
  ClientAuthError,
  ServiceAccountAuth,
  TokenAuth,
  type BearerAuth,
  type FetchLike,
} from '../../../src/client/index.js';
import { ENDPOINT, fakeFetch, fakeTime, tokenReply } from './fake-idp.js';

/** An API that echoes the Authorization header it received. */
function echoApi(): { fetch: FetchLike; seen: (string | null)[] } {
  const seen: (string | null)[] = [];
  const fetch: FetchLike = async (input, init) => {
    const req = new Request(input, init);
    seen.push(req.headers.get('authorization'));
    return new Response(JSON.stringify({ url: req.url, method: req.method, body: await req.text() }));
  };
  return { fetch, seen };
}

function serviceAccount(): { auth: ServiceAccountAuth; idpRequests: () => number } {
  const idp = fakeFetch([tokenReply('sa-token')]);
  const time = fakeTime();
  const auth = new ServiceAccountAuth({
    tokenEndpoint: ENDPOINT,
    clientId: 'agentcube-sdk',
    clientSecret: 'x',
    fetch: idp.fetch,
    clock: time.clock,
    sleep: time.sleep,
  });
  return { auth, idpRequests: () => idp.seen.length };
}

const kinds: [string, () => { auth: BearerAuth; token: string }][] = [
  ['TokenAuth(string)', () => ({ auth: new TokenAuth('static-token'), token: 'static-token' })],
  ['TokenAuth(async fn)', () => ({ auth: new TokenAuth(async () => 'fn-token'), token: 'fn-token' })],
  ['ServiceAccountAuth', () => ({ auth: serviceAccount().auth, token: 'sa-token' })],
];

describe.each(kinds)('%s', (_name, make) => {
  it('headers() gives a Bearer authorization header', async () => {
    const { auth, token } = make();
    await expect(auth.headers()).resolves.toEqual({ authorization: `Bearer ${token}` });
  });

  it('wrapFetch attaches the header to every request and keeps the rest of the request', async () => {
    const { auth, token } = make();
    const api = echoApi();
    const f = auth.wrapFetch(api.fetch);
    const res = await f('https://api.test/v1/sandboxes', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-trace': '1' },
      body: '{"a":1}',
    });
    expect(await res.json()).toEqual({ url: 'https://api.test/v1/sandboxes', method: 'POST', body: '{"a":1}' });
    await f(new URL('https://api.test/v1/other'));
    await f(new Request('https://api.test/v1/req', { headers: { 'x-a': 'b' } }));
    expect(api.seen).toEqual([`Bearer ${token}`, `Bearer ${token}`, `Bearer ${token}`]);
  });

  it('wrapFetch leaves an explicit Authorization header alone', async () => {
    const { auth } = make();
    const api = echoApi();
    const f = auth.wrapFetch(api.fetch);
    await f('https://api.test/', { headers: { Authorization: 'Basic abc' } });
    await f(new Request('https://api.test/', { headers: { authorization: 'Bearer mine' } }));
    await f('https://api.test/', { headers: [['authorization', 'Bearer tuple']] });
    expect(api.seen).toEqual(['Basic abc', 'Bearer mine', 'Bearer tuple']);
  });
});

describe('wrapFetch with ServiceAccountAuth', () => {
  it('asks the IdP once for many API calls, and not at all for requests that bring their own header', async () => {
    const { auth, idpRequests } = serviceAccount();
    const f = auth.wrapFetch(echoApi().fetch);
    await f('https://api.test/', { headers: { authorization: 'Bearer mine' } });
    expect(idpRequests()).toBe(0);
    await Promise.all(Array.from({ length: 5 }, () => f('https://api.test/')));
    expect(idpRequests()).toBe(1);
  });

  it('propagates the typed error instead of sending the request unauthenticated', async () => {
    const idp = fakeFetch([new Response('{"error":"invalid_client"}', { status: 401 })]);
    const auth = new ServiceAccountAuth({ tokenEndpoint: ENDPOINT, clientId: 'c', clientSecret: 's', fetch: idp.fetch });
    const api = echoApi();
    await expect(auth.wrapFetch(api.fetch)('https://api.test/')).rejects.toMatchObject({
      code: 'ERR_TOKEN_REQUEST_REJECTED',
      idpError: 'invalid_client',
    });
    expect(api.seen).toEqual([]);
  });
});

describe('TokenAuth', () => {
  it('asks a function source on every call, so a rotated token is picked up', async () => {
    let n = 0;
    const auth = new TokenAuth(() => `t${++n}`);
    expect([await auth.getToken(), await auth.getToken()]).toEqual(['t1', 't2']);
  });

  it('wraps a failing provider in ERR_TOKEN_UNAVAILABLE with the cause', async () => {
    const boom = new Error('vault sealed');
    const err: unknown = await new TokenAuth(() => Promise.reject(boom)).getToken().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClientAuthError);
    expect((err as ClientAuthError).code).toBe('ERR_TOKEN_UNAVAILABLE');
    expect((err as ClientAuthError).cause).toBe(boom);
  });

  it('refuses empty tokens', async () => {
    expect(() => new TokenAuth('  ')).toThrow(expect.objectContaining({ code: 'ERR_CLIENT_OPTIONS_INVALID' }));
    await expect(new TokenAuth(() => '').getToken()).rejects.toMatchObject({ code: 'ERR_TOKEN_UNAVAILABLE' });
  });
});

describe('docs/sdk.md', () => {
  it('documents every error code', () => {
    const doc = readFileSync('docs/sdk.md', 'utf8');
    for (const code of CLIENT_AUTH_ERROR_CODES) expect(doc, code).toContain(`\`${code}\``);
  });
});
