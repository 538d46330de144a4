import { createSecretKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { exportJWK, generateKeyPair, jwtVerify, SignJWT, type JWK } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  createRemoteKeySource,
  createStaticKeySource,
  type KeyLookup,
  type KeySourceEvent,
  type RemoteKeySourceOptions,
  type ResolvedKey,
} from '../../../../src/adapters/oidc/key-source.js';
import { PortcullisError } from '../../../../src/core/errors.js';
import type { FetchFn } from '../../../../src/core/types.js';
import { createFakeClock, settle, type FakeClock } from '../../../helpers/fake-clock.js';

const ISSUER = 'https://idp.example/realms/acme';
const DISCOVERY_URL = `${ISSUER}/.well-known/openid-configuration`;
const JWKS_URL = `${ISSUER}/protocol/openid-connect/certs`;
const T0 = 1_700_000_000_000;

const BASE: RemoteKeySourceOptions = {
  issuer: ISSUER,
  jwksUri: JWKS_URL,
  refreshIntervalMs: 60_000,
  maxStalenessMs: 600_000,
  kidMissCooldownMs: 30_000,
  timeoutMs: 5_000,
  retryMinMs: 1_000,
};

type Handler = (init: RequestInit | undefined) => Response | Promise<Response>;

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}

/** Never answers; rejects when aborted, like the real fetch. */
const hang: Handler = (init) =>
  new Promise<Response>((_, reject) => {
    const signal = init?.signal;
    signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
  });

/** A fake identity provider: one handler per URL (404 otherwise), every request recorded. */
function createFakeIdp() {
  const routes = new Map<string, Handler>();
  const calls: { url: string; init: RequestInit | undefined }[] = [];
  const fetch: FetchFn = async (input, init) => {
    const url = String(input);
    calls.push({ url, init });
    const handler = routes.get(url);
    return handler ? handler(init) : new Response('not found', { status: 404 });
  };
  return {
    fetch,
    calls,
    route(url: string, handler: Handler): void {
      routes.set(url, handler);
    },
    jwks(keys: unknown[], url = JWKS_URL): void {
      routes.set(url, () => json({ keys }));
    },
    discovery(doc: Record<string, unknown>, url = DISCOVERY_URL): void {
      routes.set(url, () => json(doc));
    },
    count(url: string): number {
      return calls.filter((c) => c.url === url).length;
    },
  };
}

function setup(overrides: Partial<RemoteKeySourceOptions> = {}) {
  const fc: FakeClock = createFakeClock(T0);
  const idp = createFakeIdp();
  const events: KeySourceEvent[] = [];
  const src = createRemoteKeySource(
    { clock: fc.clock, fetch: idp.fetch, scheduler: fc.scheduler, onEvent: (e) => events.push(e) },
    { ...BASE, ...overrides },
  );
  return { fc, idp, events, src };
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

function expectKey(result: KeyLookup, kid: string | undefined): ResolvedKey {
  if (typeof result === 'string') throw new Error(`expected key ${String(kid)}, got ${result}`);
  expect(result.kid).toBe(kid);
  expect(result.key.type).toBe('public');
  return result;
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

interface TestKey {
  jwk: JWK;
  privateKey: CryptoKey;
}

async function makeKey(alg: string, kid: string | undefined, extra: Partial<JWK> = {}): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk: JWK = { ...(await exportJWK(publicKey)), ...extra };
  if (kid !== undefined) jwk.kid = kid;
  return { jwk, privateKey };
}

let rsaA: TestKey;
let rsaB: TestKey;
let ec256: TestKey;
let ec384: TestKey;
let ed: TestKey;
let rsaNoKid: TestKey;
let rsaAlgRs256: TestKey;

beforeAll(async () => {
  [rsaA, rsaB, ec256, ec384, ed, rsaNoKid, rsaAlgRs256] = await Promise.all([
    makeKey('RS256', 'rsa-a'),
    makeKey('RS256', 'rsa-b'),
    makeKey('ES256', 'ec-256'),
    makeKey('ES384', 'ec-384'),
    makeKey('Ed25519', 'ed'),
    makeKey('RS256', undefined),
    makeKey('RS256', 'rsa-rs256-only', { alg: 'RS256' }),
  ]);
});

describe('createRemoteKeySource: loading', () => {
  it('discovers jwks_uri, then loads the JWKS', async () => {
    const { fc, idp, src, events } = setup({ jwksUri: undefined });
    idp.discovery({ issuer: ISSUER, jwks_uri: JWKS_URL });
    idp.jwks([rsaA.jwk, ec256.jwk]);

    src.start();
    await src.refresh();

    expect(idp.calls.map((c) => c.url)).toEqual([DISCOVERY_URL, JWKS_URL]);
    for (const c of idp.calls) expect(new Headers(c.init?.headers).get('accept')).toBe('application/json');
    const key = expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
    expect(key.kty).toBe('RSA');
    expect(expectKey(src.get('ec-256', 'ES256'), 'ec-256').kty).toBe('EC');
    expect(src.status()).toEqual({
      ready: true,
      keyCount: 2,
      skippedKeyCount: 0,
      lastSuccessAt: fc.now(),
      lastAttemptAt: fc.now(),
      consecutiveFailures: 0,
      state: 'fresh',
    });
    expect(events).toEqual([{ type: 'fetch', ok: true, durationMs: 0, keyCount: 2, skippedKeyCount: 0 }]);
  });

  it('derives the discovery URL from an issuer with a trailing slash', async () => {
    const { idp, src } = setup({ issuer: `${ISSUER}/`, jwksUri: undefined });
    idp.discovery({ issuer: `${ISSUER}/`, jwks_uri: JWKS_URL });
    idp.jwks([rsaA.jwk]);

    await src.refresh();

    expect(idp.calls[0]?.url).toBe(DISCOVERY_URL);
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
  });

  it('uses an explicit discoveryUrl', async () => {
    const custom = 'https://other.example/oidc/config';
    const { idp, src } = setup({ jwksUri: undefined, discoveryUrl: custom });
    idp.discovery({ issuer: ISSUER, jwks_uri: JWKS_URL }, custom);
    idp.jwks([rsaA.jwk]);

    await src.refresh();

    expect(idp.calls.map((c) => c.url)).toEqual([custom, JWKS_URL]);
  });

  it('uses an explicit jwksUri without discovery', async () => {
    const { idp, src } = setup();
    idp.jwks([rsaA.jwk]);

    await src.refresh();

    expect(idp.calls.map((c) => c.url)).toEqual([JWKS_URL]);
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
  });

  it('caches the discovered jwks_uri and rediscovers only when the JWKS answers 404', async () => {
    const { idp, src } = setup({ jwksUri: undefined });
    idp.discovery({ issuer: ISSUER, jwks_uri: JWKS_URL });
    idp.jwks([rsaA.jwk]);
    await src.refresh();
    await src.refresh();
    expect(idp.count(DISCOVERY_URL)).toBe(1);
    expect(idp.count(JWKS_URL)).toBe(2);

    const moved = `${ISSUER}/keys-v2`;
    idp.route(JWKS_URL, () => new Response('gone', { status: 404 }));
    idp.discovery({ issuer: ISSUER, jwks_uri: moved });
    idp.jwks([rsaB.jwk], moved);
    await src.refresh();

    expect(idp.count(DISCOVERY_URL)).toBe(2);
    expect(src.status().consecutiveFailures).toBe(0);
    expectKey(src.get('rsa-b', 'RS256'), 'rsa-b');
    expect(src.get('rsa-a', 'RS256')).toBe('unknown_kid');

    await src.refresh();
    expect(idp.count(DISCOVERY_URL)).toBe(2);
    expect(idp.count(moved)).toBe(2);
  });

  it('treats a discovery document naming another issuer as a failure', async () => {
    const { idp, src } = setup({ jwksUri: undefined });
    idp.discovery({ issuer: 'https://evil.example/realms/acme', jwks_uri: JWKS_URL });
    idp.jwks([rsaA.jwk]);

    await src.refresh();

    const status = src.status();
    expect(status.state).toBe('never_loaded');
    expect(status.consecutiveFailures).toBe(1);
    expect(status.lastError).toContain('https://evil.example/realms/acme');
    expect(status.lastError).toContain(ISSUER);
    expect(idp.count(JWKS_URL)).toBe(0);
  });

  it.each([
    ['no jwks_uri', { issuer: ISSUER }],
    ['a jwks_uri that is not a URL', { issuer: ISSUER, jwks_uri: 'certs' }],
    ['a jwks_uri with credentials', { issuer: ISSUER, jwks_uri: 'https://u:p@idp.example/certs' }],
  ])('treats a discovery document with %s as a failure', async (_name, doc) => {
    const { idp, src } = setup({ jwksUri: undefined });
    idp.discovery(doc);

    await src.refresh();

    expect(src.status().lastError).toMatch(/jwks_uri/);
    expect(src.status().lastError).not.toContain('u:p@');
    expect(src.get('rsa-a', 'RS256')).toBe('unavailable');
  });

  it('start() returns at once; status is never_loaded until the fetch resolves', async () => {
    const { idp, src } = setup();
    const reply = deferred<Response>();
    idp.route(JWKS_URL, () => reply.promise);

    src.start();

    expect(idp.count(JWKS_URL)).toBe(1);
    expect(src.status()).toMatchObject({ ready: false, state: 'never_loaded', keyCount: 0 });
    expect(src.get('rsa-a', 'RS256')).toBe('unavailable');

    reply.resolve(json({ keys: [rsaA.jwk] }));
    await src.refresh();

    expect(idp.count(JWKS_URL)).toBe(1);
    expect(src.status()).toMatchObject({ ready: true, state: 'fresh', keyCount: 1 });
  });

  it('returns keys that jose verifies tokens with (one RSA key serves RS* and PS*)', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-521' });
    const okp = generateKeyPairSync('ed25519');
    const { idp, src } = setup();
    idp.jwks([
      { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'rsa' },
      { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec' },
      { ...okp.publicKey.export({ format: 'jwk' }), kid: 'okp' },
    ]);
    await src.refresh();

    const cases: [KeyObject, string, string][] = [
      [rsa.privateKey, 'rsa', 'RS256'],
      [rsa.privateKey, 'rsa', 'PS384'],
      [ec.privateKey, 'ec', 'ES512'],
      [okp.privateKey, 'okp', 'EdDSA'],
      [okp.privateKey, 'okp', 'Ed25519'],
    ];
    for (const [signer, kid, alg] of cases) {
      const token = await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg, kid }).sign(signer);
      const key = expectKey(src.get(kid, alg), kid);
      const { payload } = await jwtVerify(token, key.key, { algorithms: [alg] });
      expect(payload.sub).toBe('alice');
    }
  });
});

describe('createRemoteKeySource: key matching', () => {
  it('answers unknown_kid when the alg does not suit the key type or curve', async () => {
    const { idp, src } = setup();
    idp.jwks([rsaA.jwk, ec256.jwk, ec384.jwk, ed.jwk]);
    await src.refresh();

    expectKey(src.get('rsa-a', 'PS512'), 'rsa-a');
    expect(src.get('rsa-a', 'ES256')).toBe('unknown_kid');
    expect(src.get('rsa-a', 'HS256')).toBe('unknown_kid');
    expect(src.get('rsa-a', 'none')).toBe('unknown_kid');
    expect(src.get('ec-256', 'ES384')).toBe('unknown_kid');
    expect(src.get('ec-256', 'RS256')).toBe('unknown_kid');
    expectKey(src.get('ec-384', 'ES384'), 'ec-384');
    expectKey(src.get('ed', 'EdDSA'), 'ed');
    expectKey(src.get('ed', 'Ed25519'), 'ed');
    expect(src.get('ed', 'ES256')).toBe('unknown_kid');
    expect(src.get('nope', 'RS256')).toBe('unknown_kid');
  });

  it("honours the JWK's own alg", async () => {
    const { idp, src } = setup();
    idp.jwks([rsaAlgRs256.jwk]);
    await src.refresh();

    expect(src.get('rsa-rs256-only', 'RS256')).toMatchObject({ alg: 'RS256' });
    expect(src.get('rsa-rs256-only', 'PS256')).toBe('unknown_kid');
    expect(src.get('rsa-rs256-only', 'RS384')).toBe('unknown_kid');
  });

  it('without a kid, picks the single compatible key', async () => {
    const { idp, src } = setup();
    idp.jwks([rsaNoKid.jwk, ec256.jwk]);
    await src.refresh();

    expectKey(src.get(undefined, 'RS256'), undefined);
    expectKey(src.get(undefined, 'ES256'), 'ec-256');
    expect(src.get(undefined, 'ES384')).toBe('unknown_kid');
    // A token with a kid never matches a key without one.
    expect(src.get('whatever', 'RS256')).toBe('unknown_kid');
  });

  it('without a kid, answers unknown_kid when several keys are compatible', async () => {
    const { idp, src } = setup();
    idp.jwks([rsaA.jwk, rsaB.jwk, ec256.jwk]);
    await src.refresh();

    expect(src.get(undefined, 'RS256')).toBe('unknown_kid');
    expectKey(src.get(undefined, 'ES256'), 'ec-256');
  });

  it('skips keys it can never use and counts them', async () => {
    const { idp, src, events } = setup();
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    idp.jwks([
      rsaA.jwk,
      { kty: 'oct', k: 'c2VjcmV0', kid: 'hmac' },
      { ...rsaB.jwk, use: 'enc' },
      { ...ec256.jwk, key_ops: ['encrypt'] },
      { kty: 'RSA', kid: 'broken', n: 'AQAB' },
      { ...weak, kid: 'weak' },
      { ...ec384.jwk, alg: 'RS256' },
      { kty: 'EC', kid: 'p256k', crv: 'secp256k1', x: 'AA', y: 'AA' },
      'not-a-key',
      { ...ed.jwk, use: 'sig', key_ops: ['verify'] },
    ]);

    await src.refresh();

    expect(src.status()).toMatchObject({ keyCount: 2, skippedKeyCount: 8, state: 'fresh' });
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
    expectKey(src.get('ed', 'EdDSA'), 'ed');
    for (const kid of ['hmac', 'rsa-b', 'ec-256', 'broken', 'weak', 'ec-384', 'p256k']) {
      expect(src.get(kid, 'RS256')).toBe('unknown_kid');
    }
    expect(src.get('hmac', 'HS256')).toBe('unknown_kid');
    expect(events).toContainEqual({ type: 'fetch', ok: true, durationMs: 0, keyCount: 2, skippedKeyCount: 8 });
  });

  it('publishes only the public half of a key served with private members', async () => {
    const { idp, src } = setup();
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    idp.jwks([{ ...(await exportJWK(privateKey)), kid: 'leaky' }]);
    await src.refresh();

    expect(expectKey(src.get('leaky', 'ES256'), 'leaky').key.type).toBe('public');
  });
});

describe('createRemoteKeySource: unknown kid refetch', () => {
  async function loaded(overrides: Partial<RemoteKeySourceOptions> = {}) {
    const s = setup(overrides);
    s.idp.jwks([rsaA.jwk]);
    s.src.start();
    await s.src.refresh();
    s.events.length = 0;
    return s;
  }

  it('refetches once on a new kid and finds the rotated key', async () => {
    const { idp, src, events } = await loaded();
    idp.jwks([rsaA.jwk, rsaB.jwk]);
    expect(src.get('rsa-b', 'RS256')).toBe('unknown_kid');

    expectKey(await src.resolve('rsa-b', 'RS256'), 'rsa-b');

    expect(idp.count(JWKS_URL)).toBe(2);
    expect(events.filter((e) => e.type !== 'fetch')).toEqual([{ type: 'kid_miss_refetch', kid: 'rsa-b' }]);
    // Now in the index: no more fetches for it.
    expectKey(await src.resolve('rsa-b', 'RS256'), 'rsa-b');
    expect(idp.count(JWKS_URL)).toBe(2);
  });

  it('answers unknown_kid at once, without a fetch, within the cooldown', async () => {
    const { fc, idp, src, events } = await loaded();
    expect(await src.resolve('ghost-1', 'RS256')).toBe('unknown_kid');
    expect(idp.count(JWKS_URL)).toBe(2);

    fc.advance(BASE.kidMissCooldownMs - 1);
    expect(await src.resolve('ghost-2', 'RS256')).toBe('unknown_kid');
    expect(idp.count(JWKS_URL)).toBe(2);
    expect(events).toContainEqual({ type: 'kid_miss_rate_limited', kid: 'ghost-2' });

    fc.advance(1);
    idp.jwks([rsaA.jwk, rsaB.jwk]);
    expectKey(await src.resolve('rsa-b', 'RS256'), 'rsa-b');
    expect(idp.count(JWKS_URL)).toBe(3);
    expect(events.filter((e) => e.type === 'kid_miss_refetch')).toEqual([
      { type: 'kid_miss_refetch', kid: 'ghost-1' },
      { type: 'kid_miss_refetch', kid: 'rsa-b' },
    ]);
  });

  it('shares one fetch among concurrent resolves', async () => {
    const { idp, src, events } = await loaded();
    idp.jwks([rsaA.jwk, rsaB.jwk, ec256.jwk]);

    const results = await Promise.all([
      src.resolve('rsa-b', 'RS256'),
      src.resolve('rsa-b', 'RS256'),
      src.resolve('ec-256', 'ES256'),
      src.resolve('ghost', 'RS256'),
      src.refresh().then(() => 'refreshed' as const),
    ]);

    expect(idp.count(JWKS_URL)).toBe(2);
    expectKey(results[0], 'rsa-b');
    expectKey(results[1], 'rsa-b');
    expectKey(results[2], 'ec-256');
    expect(results[3]).toBe('unknown_kid');
    expect(results[4]).toBe('refreshed');
    expect(events.filter((e) => e.type !== 'fetch')).toEqual([{ type: 'kid_miss_refetch', kid: 'rsa-b' }]);
  });

  it('does not refetch for an alg no key could ever match', async () => {
    const { idp, src, events } = await loaded();
    expect(await src.resolve('rsa-a', 'HS256')).toBe('unknown_kid');
    expect(await src.resolve('x', 'none')).toBe('unknown_kid');
    expect(idp.count(JWKS_URL)).toBe(1);
    expect(events).toEqual([]);
  });

  it('waits for the first fetch instead of answering unavailable while it is in flight', async () => {
    const { idp, src } = setup();
    const reply = deferred<Response>();
    idp.route(JWKS_URL, () => reply.promise);
    src.start();

    const pending = src.resolve('rsa-a', 'RS256');
    reply.resolve(json({ keys: [rsaA.jwk] }));

    expectKey(await pending, 'rsa-a');
    expect(idp.count(JWKS_URL)).toBe(1);
  });

  it('answers unavailable without fetching when no keys are loaded and nothing is in flight', async () => {
    const { idp, src } = setup();
    expect(await src.resolve('rsa-a', 'RS256')).toBe('unavailable');
    expect(idp.count(JWKS_URL)).toBe(0);
  });
});

describe('createRemoteKeySource: failures and staleness', () => {
  it.each<[string, Handler, RegExp]>([
    ['HTTP 500', () => new Response('oops', { status: 500 }), /JWKS https:\/\/idp\.example\/.*: HTTP 500/],
    ['invalid JSON', () => new Response('{"keys": [', { status: 200 }), /not valid JSON/],
    ['a document without keys', () => json({ nope: true }), /no "keys" array/],
    ['an empty key set', () => json({ keys: [] }), /no usable signing keys \(the set is empty\)/],
    [
      'only symmetric keys',
      () => json({ keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'rsa-a' }] }),
      /no usable signing keys \(1 symmetric\)/,
    ],
    ['a timeout', hang, /timed out after 5000 ms/],
    [
      'a network error',
      () => Promise.reject(new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } })),
      /request failed: fetch failed \(ECONNREFUSED\)/,
    ],
  ])('keeps the last good keys after %s', async (_name, handler, message) => {
    const { fc, idp, src, events } = setup();
    idp.jwks([rsaA.jwk]);
    await src.refresh();
    const before = src.status().lastSuccessAt;

    idp.route(JWKS_URL, handler);
    const done = src.refresh();
    await fc.advanceAsync(BASE.timeoutMs);
    await done;

    const status = src.status();
    expect(status.lastError).toMatch(message);
    expect(status).toMatchObject({ consecutiveFailures: 1, keyCount: 1, state: 'fresh', ready: true, lastSuccessAt: before });
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
    expect(events.at(-1)).toMatchObject({ type: 'fetch', ok: false, error: status.lastError });
    expect(fc.pending()).toEqual([]);
  });

  it('serves stale keys while fetches fail, then answers unavailable past maxStaleness, then recovers', async () => {
    const { fc, idp, src } = setup();
    idp.jwks([rsaA.jwk]);
    src.start();
    await src.refresh();

    idp.route(JWKS_URL, () => new Response('down', { status: 503 }));
    await fc.advanceAsync(2 * BASE.refreshIntervalMs + 1);
    expect(src.status()).toMatchObject({ state: 'stale_serving', ready: true, lastSuccessAt: T0 });
    expect(src.status().consecutiveFailures).toBeGreaterThan(1);
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');

    await fc.advanceAsync(T0 + BASE.maxStalenessMs - fc.now());
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
    await fc.advanceAsync(1);
    expect(src.status()).toMatchObject({ state: 'expired', ready: false, keyCount: 1 });
    expect(src.get('rsa-a', 'RS256')).toBe('unavailable');
    const fetches = idp.count(JWKS_URL);
    expect(await src.resolve('rsa-a', 'RS256')).toBe('unavailable');
    expect(idp.count(JWKS_URL)).toBe(fetches);

    idp.jwks([rsaA.jwk]);
    await fc.advanceAsync(BASE.refreshIntervalMs);
    expect(src.status()).toMatchObject({ state: 'fresh', ready: true, consecutiveFailures: 0 });
    expect(src.status().lastError).toBeUndefined();
    expectKey(src.get('rsa-a', 'RS256'), 'rsa-a');
  });

  it('retries failed fetches with exponential backoff capped at refreshIntervalMs', async () => {
    const { fc, idp, src } = setup({ refreshIntervalMs: 10_000, maxStalenessMs: 100_000 });
    idp.route(JWKS_URL, () => new Response('down', { status: 500 }));
    src.start();
    await src.refresh();

    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      const [next] = fc.pending();
      if (!next) throw new Error('no retry scheduled');
      delays.push(next.dueAt - fc.now());
      await fc.advanceAsync(next.dueAt - fc.now());
    }
    expect(delays).toEqual([1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    expect(idp.count(JWKS_URL)).toBe(7);

    idp.jwks([rsaA.jwk]);
    await fc.advanceAsync(10_000);
    expect(src.status().state).toBe('fresh');
    expect(fc.pending().map((t) => t.dueAt - fc.now())).toEqual([10_000]);
  });

  it('keeps credentials and query strings out of lastError', async () => {
    const { idp, src } = setup({ jwksUri: 'https://idp.example/certs?access_token=s3cret' });
    idp.route('https://idp.example/certs?access_token=s3cret', () => new Response('no', { status: 500 }));
    await src.refresh();

    expect(src.status().lastError).toBe('JWKS https://idp.example/certs: HTTP 500');
  });

  it('ignores an onEvent that throws', async () => {
    const fc = createFakeClock(T0);
    const idp = createFakeIdp();
    idp.jwks([rsaA.jwk]);
    const src = createRemoteKeySource(
      {
        clock: fc.clock,
        fetch: idp.fetch,
        scheduler: fc.scheduler,
        onEvent: () => {
          throw new Error('metrics broke');
        },
      },
      BASE,
    );
    await src.refresh();
    expect(src.status().state).toBe('fresh');
  });
});

describe('createRemoteKeySource: background refresh and stop', () => {
  it('refreshes every refreshIntervalMs on unref-ed timers', async () => {
    const { fc, idp, src } = setup();
    idp.jwks([rsaA.jwk]);
    src.start();
    src.start();
    await src.refresh();
    expect(idp.count(JWKS_URL)).toBe(1);
    expect(fc.pending().map((t) => ({ in: t.dueAt - fc.now(), unrefed: t.unrefed }))).toEqual([
      { in: BASE.refreshIntervalMs, unrefed: true },
    ]);

    idp.jwks([rsaA.jwk, rsaB.jwk]);
    await fc.advanceAsync(BASE.refreshIntervalMs - 1);
    expect(idp.count(JWKS_URL)).toBe(1);
    await fc.advanceAsync(1);
    expect(idp.count(JWKS_URL)).toBe(2);
    expectKey(src.get('rsa-b', 'RS256'), 'rsa-b');

    await fc.advanceAsync(3 * BASE.refreshIntervalMs);
    expect(idp.count(JWKS_URL)).toBe(5);
    expect(fc.pending()).toHaveLength(1);
  });

  it('stop() cancels the timers; nothing fetches afterwards', async () => {
    const { fc, idp, src } = setup();
    idp.jwks([rsaA.jwk]);
    src.start();
    await src.refresh();

    src.stop();

    expect(fc.pending()).toEqual([]);
    await fc.advanceAsync(10 * BASE.refreshIntervalMs);
    await src.refresh();
    expect(await src.resolve('ghost', 'RS256')).toBe('unknown_kid');
    src.start();
    expect(idp.count(JWKS_URL)).toBe(1);
    expect(fc.pending()).toEqual([]);
  });

  it('stop() aborts a fetch in flight and leaves the status alone', async () => {
    const { fc, idp, src, events } = setup({ jwksUri: undefined });
    idp.route(DISCOVERY_URL, hang);
    src.start();
    const signal = idp.calls[0]?.init?.signal;
    expect(signal?.aborted).toBe(false);

    src.stop();
    await settle();

    expect(signal?.aborted).toBe(true);
    expect(idp.calls).toHaveLength(1);
    expect(src.status()).toMatchObject({ state: 'never_loaded', consecutiveFailures: 0 });
    expect(src.status().lastError).toBeUndefined();
    expect(events).toEqual([]);
    expect(fc.pending()).toEqual([]);
  });
});

describe('createRemoteKeySource: options', () => {
  it.each<[string, Partial<RemoteKeySourceOptions>]>([
    ['refreshIntervalMs', { refreshIntervalMs: 0 }],
    ['refreshIntervalMs', { refreshIntervalMs: Number.NaN }],
    ['refreshIntervalMs', { refreshIntervalMs: 2 ** 31, maxStalenessMs: 2 ** 32 }],
    ['maxStalenessMs', { maxStalenessMs: -1 }],
    ['maxStalenessMs', { maxStalenessMs: 30_000 }],
    ['kidMissCooldownMs', { kidMissCooldownMs: 0 }],
    ['timeoutMs', { timeoutMs: Number.POSITIVE_INFINITY }],
    ['retryMinMs', { retryMinMs: 0 }],
    ['jwksUri', { jwksUri: 'not a url' }],
    ['jwksUri', { jwksUri: 'ftp://idp.example/certs' }],
    ['jwksUri', { jwksUri: 'https://user:pw@idp.example/certs' }],
    ['discoveryUrl', { jwksUri: undefined, discoveryUrl: '/relative' }],
    ['issuer', { issuer: '' }],
    ['issuer', { issuer: 'acme', jwksUri: undefined }],
  ])('rejects a bad %s', (field, overrides) => {
    const fc = createFakeClock(T0);
    const err = thrown(() =>
      createRemoteKeySource(
        { clock: fc.clock, fetch: createFakeIdp().fetch, scheduler: fc.scheduler },
        { ...BASE, ...overrides },
      ),
    );
    expect(err).toBeInstanceOf(PortcullisError);
    expect((err as PortcullisError).code).toBe('ERR_JWKS_INVALID');
    expect((err as PortcullisError).message).toContain(field);
  });

  it('accepts a non-URL issuer when the JWKS URI is explicit', () => {
    const fc = createFakeClock(T0);
    expect(() =>
      createRemoteKeySource(
        { clock: fc.clock, fetch: createFakeIdp().fetch, scheduler: fc.scheduler },
        { ...BASE, issuer: 'acme' },
      ),
    ).not.toThrow();
  });
});

describe('createStaticKeySource', () => {
  function rsaKey(): { publicKey: KeyObject; privateKey: KeyObject } {
    return generateKeyPairSync('rsa', { modulusLength: 2048 });
  }

  it('is always ready and looks keys up like the remote source', async () => {
    const rsa = rsaKey();
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const src = createStaticKeySource([
      { key: rsa.privateKey, kid: 'dev-rsa', kty: 'RSA' },
      { key: ec.publicKey, kid: 'dev-ec', kty: 'EC', alg: 'ES256' },
    ]);

    expect(src.status()).toEqual({
      ready: true,
      keyCount: 2,
      skippedKeyCount: 0,
      consecutiveFailures: 0,
      state: 'fresh',
    });
    const key = expectKey(src.get('dev-rsa', 'PS256'), 'dev-rsa');
    expect(key.key.type).toBe('public');
    expectKey(await src.resolve('dev-ec', 'ES256'), 'dev-ec');
    expect(await src.resolve('dev-ec', 'ES384')).toBe('unknown_kid');
    expectKey(src.get(undefined, 'ES256'), 'dev-ec');
    src.start();
    await src.refresh();
    src.stop();
    expectKey(src.get('dev-rsa', 'RS256'), 'dev-rsa');

    const token = await new SignJWT({ sub: 'dev' })
      .setProtectedHeader({ alg: 'RS256', kid: 'dev-rsa' })
      .sign(rsa.privateKey);
    await expect(jwtVerify(token, key.key)).resolves.toBeDefined();
  });

  it.each<[string, () => ResolvedKey[]]>([
    ['at least one key', () => []],
    ['symmetric', () => [{ key: createSecretKey(Buffer.alloc(32, 7)), kty: 'oct' }]],
    ['kty is "EC"', () => [{ key: rsaKey().publicKey, kty: 'EC' }]],
    ['alg "ES384"', () => [{ key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, kty: 'EC', alg: 'ES384' }]],
  ])('rejects keys it cannot use (%s)', (message, keys) => {
    const err = thrown(() => createStaticKeySource(keys()));
    expect(err).toBeInstanceOf(PortcullisError);
    expect((err as PortcullisError).code).toBe('ERR_JWKS_INVALID');
    expect((err as PortcullisError).message).toContain(message);
  });
});

