import { generateKeyPairSync } from 'node:crypto';
import { jwtVerify } from 'jose';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from '../../../src/adapters/oidc/token-endpoint.js';
import { parseConfig } from '../../../src/config/load.js';
import { configSchema, type Config, type ConfigInput } from '../../../src/config/schema.js';
import { checkConfig } from '../../../src/config/validate.js';
import { ConfigError, denial, isDenial, type Denial } from '../../../src/core/errors.js';
import type { CheckInput, Decision, FetchFn, Principal } from '../../../src/core/types.js';
import { createLogger } from '../../../src/observability/logger.js';
import { createDecider } from '../../../src/pipeline/decide.js';
import { compilePolicy } from '../../../src/pipeline/policy.js';
import type { RouteStage, StageContext, StageOutput, StageResult } from '../../../src/pipeline/stage.js';
import { createExchangeModule, type ExchangeModuleOptions } from '../../../src/stages/exchange.js';
import type { StageModule } from '../../../src/stages/registry.js';
import type { Verifier } from '../../../src/stages/verify.js';
import { createFakeClock, settle, type FakeClock } from '../../helpers/fake-clock.js';
import { rawToken } from '../../helpers/tokens.js';

const T0 = 1_700_000_000_000;
const ISS = 'https://idp.example/realms/acme';
const OTHER_ISS = 'https://idp.example/realms/globex';
const ENDPOINT = `${ISS}/protocol/openid-connect/token`;
const DISCOVERY = `${ISS}/.well-known/openid-configuration`;
const SUBJECT = 'eyJhbGciOiJSUzI1NiJ9.c3ViamVjdA.c2ln';
const SECRET = 'router-secret';

interface Recorded {
  url: string;
  method: string;
  headers: Record<string, string>;
  form: URLSearchParams;
}

type Handler = (req: Recorded) => Response | Promise<Response>;

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}

type RouteExchangeInput = NonNullable<ConfigInput['routes']>[number]['exchange'];
type IssuerExchangeInput = NonNullable<ConfigInput['issuers']>[number]['exchange'];

interface SetupOptions {
  route?: Partial<NonNullable<RouteExchangeInput>>;
  issuerExchange?: Partial<NonNullable<IssuerExchangeInput>>;
  handler?: Handler;
  files?: Map<string, string>;
  env?: Record<string, string>;
  module?: ExchangeModuleOptions;
}

interface Harness {
  fc: FakeClock;
  calls: Recorded[];
  posts(): Recorded[];
  module: StageModule;
  stage: RouteStage;
  config: Config;
  registry: Registry;
  logLines: string[];
  /** Replaces how the fake IdP answers. */
  answer(h: Handler): void;
  run(ctx?: Partial<StageContext>): StageResult | Promise<StageResult>;
  count(result: 'hit' | 'miss' | 'error'): Promise<number>;
  calledIdp(): Promise<number>;
}

let tokenSerial = 0;

/** An (unsigned) JWT as the IdP would issue it; the stage only reads its exp. */
function issuedToken(fc: FakeClock, lifetimeS: number): string {
  tokenSerial += 1;
  return rawToken(
    { alg: 'RS256', typ: 'JWT' },
    { sub: 'alice', aud: 'workloadmanager', jti: `t${tokenSerial}`, exp: Math.floor(fc.now() / 1000) + lifetimeS },
    'sig',
  );
}

function tokenResponse(fc: FakeClock, lifetimeS: number, extra: Record<string, unknown> = {}): Response {
  return json(200, {
    access_token: issuedToken(fc, lifetimeS),
    token_type: 'Bearer',
    expires_in: lifetimeS,
    issued_token_type: ACCESS_TOKEN_TYPE,
    ...extra,
  });
}

function principal(over: Partial<Principal> = {}): Principal {
  return {
    issuerName: 'acme',
    issuer: ISS,
    sub: 'alice',
    qualifiedSub: 'acme/alice',
    roles: [],
    effectiveRoles: new Set(),
    claims: {},
    token: SUBJECT,
    expiresAt: T0 + 3_600_000,
    source: 'header:authorization',
    ...over,
  };
}

function checkInput(headers: Record<string, string> = { authorization: `Bearer ${SUBJECT}` }): CheckInput {
  return {
    method: 'POST',
    host: 'wm.example',
    path: '/wm/sandboxes',
    query: '',
    headers: new Map(Object.entries(headers)),
    contextExtensions: new Map(),
  };
}

function configInput(opts: SetupOptions): ConfigInput {
  return {
    issuers: [
      {
        name: 'acme',
        issuer: ISS,
        audiences: ['router'],
        exchange: { clientId: 'router', clientSecret: SECRET, tokenEndpoint: ENDPOINT, ...opts.issuerExchange } as NonNullable<IssuerExchangeInput>,
      },
    ],
    routes: [{ name: 'wm', match: { path: '/wm/**' }, exchange: { audience: 'workloadmanager', ...opts.route } }],
  };
}

function fakeFetch(get: () => Handler): { fetch: FetchFn; calls: Recorded[] } {
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
      form: new URLSearchParams(typeof init?.body === 'string' ? init.body : ''),
    };
    calls.push(req);
    return Promise.resolve(get()(req));
  };
  return { fetch, calls };
}

async function setup(opts: SetupOptions = {}, input: ConfigInput = configInput(opts)): Promise<Harness> {
  const fc = createFakeClock(T0);
  let handler: Handler = opts.handler ?? (() => tokenResponse(fc, 300));
  const { fetch, calls } = fakeFetch(() => handler);
  const registry = new Registry();
  const logLines: string[] = [];
  const logger = createLogger({ level: 'warn', destination: { write: (s: string) => void logLines.push(s) } });
  const files = opts.files ?? new Map<string, string>();
  const module = createExchangeModule(
    { clock: fc.clock, fetch, scheduler: fc.scheduler, logger, registry },
    {
      env: opts.env ?? {},
      readFile: (path) => {
        const v = files.get(path);
        if (v === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: 'ENOENT' });
        return v;
      },
      ...opts.module,
    },
  );
  const config = configSchema.parse(input);
  const route = config.routes[0];
  if (!route) throw new Error('no route');
  const compiled = module.factory.compile(route, 'routes[0]', config);
  if (!compiled || 'issues' in compiled) throw new Error(`compile failed: ${JSON.stringify(compiled)}`);
  expect(compiled.phase).toBe('after');
  await module.prepare?.(config);
  module.activated?.(config);
  const metricValue = async (name: string, pick: (labels: Record<string, unknown>) => boolean, field = ''): Promise<number> => {
    const m = registry.getSingleMetric(name);
    if (!m) return 0;
    const data = await m.get();
    let total = 0;
    for (const v of data.values) {
      const metricName = (v as { metricName?: string }).metricName;
      if (field && metricName !== `${name}${field}`) continue;
      if (pick(v.labels)) total += v.value;
    }
    return total;
  };
  return {
    fc,
    calls,
    posts: () => calls.filter((c) => c.method === 'POST'),
    module,
    stage: compiled.stage,
    config,
    registry,
    logLines,
    answer(h) {
      handler = h;
    },
    run(ctx = {}) {
      return compiled.stage.run({ input: checkInput(), routeName: 'wm', params: {}, principal: principal(), ...ctx });
    },
    count: (result) => metricValue('portcullis_exchange_total', (l) => l.result === result),
    calledIdp: () => metricValue('portcullis_exchange_duration_seconds', () => true, '_count'),
  };
}

function expectOutput(r: StageResult): StageOutput {
  expect(r).toBeDefined();
  expect(isDenial(r)).toBe(false);
  return r as StageOutput;
}

function expectDenial(r: StageResult): Denial {
  expect(isDenial(r)).toBe(true);
  return r as Denial;
}

function bearerOf(out: StageOutput, header = 'authorization'): string | undefined {
  return out.headers?.find((h) => h.name === header)?.value;
}

describe('exchange stage: the call and the cache', () => {
  it('exchanges on a miss (async) with the exact RFC 8693 form and Basic auth, then hits synchronously with no call', async () => {
    const h = await setup({ route: { scope: 'sandbox' } });
    const first = h.run();
    expect(first).toBeInstanceOf(Promise);
    const out = expectOutput(await first);
    const post = h.posts()[0];
    expect(h.calls).toHaveLength(1);
    expect(post?.url).toBe(ENDPOINT);
    expect(post?.headers.authorization).toBe(`Basic ${Buffer.from(`router:${SECRET}`).toString('base64')}`);
    expect(post?.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect([...(post?.form ?? [])]).toEqual([
      ['grant_type', TOKEN_EXCHANGE_GRANT],
      ['subject_token', SUBJECT],
      ['subject_token_type', ACCESS_TOKEN_TYPE],
      ['requested_token_type', ACCESS_TOKEN_TYPE],
      ['audience', 'workloadmanager'],
      ['scope', 'sandbox'],
    ]);
    const value = bearerOf(out);
    expect(value).toMatch(/^Bearer eyJ/);
    expect(value).not.toContain(SUBJECT);
    expect(out.metadata).toEqual({ exchanged_audience: 'workloadmanager' });

    const second = h.run();
    expect(second).not.toBeInstanceOf(Promise);
    expect(bearerOf(expectOutput(second as StageResult))).toBe(value);
    expect(h.calls).toHaveLength(1);
    expect(await h.count('miss')).toBe(1);
    expect(await h.count('hit')).toBe(1);
    expect(await h.count('error')).toBe(0);
    expect(await h.calledIdp()).toBe(1);
  });

  it('keys the cache by subject token, audience and scope', async () => {
    const h = await setup();
    await h.run();
    await h.run({ principal: principal({ token: `${SUBJECT}x` }) });
    expect(h.posts()).toHaveLength(2);
    expect(h.run()).not.toBeInstanceOf(Promise);
  });

  it('records what it did in the trace: call, then cache hit', async () => {
    const h = await setup();
    const trace: Record<string, unknown> = {};
    await h.run({ trace });
    expect(trace.exchange).toMatchObject({ audience: 'workloadmanager', result: 'call' });
    h.run({ trace });
    expect(trace.exchange).toMatchObject({ result: 'cache_hit' });
  });

  it('the new token expires first: reused until its exp - margin, then exchanged again', async () => {
    const h = await setup({ route: { marginSeconds: 30 } }); // IdP issues 300 s tokens; subject lives 3600 s
    const first = bearerOf(expectOutput(await h.run()));
    h.fc.advance(269_999);
    expect(bearerOf(expectOutput(h.run() as StageResult))).toBe(first);
    h.fc.advance(1);
    const renewed = h.run();
    expect(renewed).toBeInstanceOf(Promise);
    expect(bearerOf(expectOutput(await renewed))).not.toBe(first);
    expect(h.posts()).toHaveLength(2);
  });

  it('the subject token expires first: the cache entry ends at its exp - margin', async () => {
    const h = await setup({ route: { marginSeconds: 30 } });
    const p = principal({ expiresAt: T0 + 120_000 });
    await h.run({ principal: p });
    h.fc.advance(89_999);
    expect(h.run({ principal: p })).not.toBeInstanceOf(Promise);
    h.fc.advance(1);
    expect(h.run({ principal: p })).toBeInstanceOf(Promise);
    expect(h.posts()).toHaveLength(2);
  });

  it('expires_in shorter than the exp claim wins', async () => {
    const h = await setup({ route: { marginSeconds: 10 } });
    h.answer(() => json(200, { access_token: issuedToken(h.fc, 300), expires_in: 60 }));
    await h.run();
    h.fc.advance(49_999);
    expect(h.run()).not.toBeInstanceOf(Promise);
    h.fc.advance(1);
    expect(h.run()).toBeInstanceOf(Promise);
  });

  it('a token with an unknown lifetime is injected but never cached', async () => {
    const h = await setup();
    h.answer(() => json(200, { access_token: 'opaque-token' }));
    expect(bearerOf(expectOutput(await h.run()))).toBe('Bearer opaque-token');
    expect(h.run()).toBeInstanceOf(Promise);
  });

  it('a fresh token with less than the margin left is not injected: 503 exchange_failed', async () => {
    const h = await setup({ route: { marginSeconds: 30 } });
    h.answer(() => tokenResponse(h.fc, 20));
    const d = expectDenial(await h.run());
    expect(d).toMatchObject({ reason: 'exchange_failed', status: 503 });
    expect(d.message).toContain('safety margin');
    expect(await h.count('error')).toBe(1);
    // Exactly the margin left is not enough either.
    h.answer(() => tokenResponse(h.fc, 30));
    expectDenial(await h.run());
    h.answer(() => tokenResponse(h.fc, 31));
    expectOutput(await h.run());
  });

  it('single-flight: 10 concurrent requests for one key make one call and all get its token', async () => {
    const h = await setup();
    let release: (r: Response) => void = () => undefined;
    h.answer(() => new Promise<Response>((resolve) => (release = resolve)));
    const pending = Array.from({ length: 10 }, () => h.run());
    await settle();
    expect(h.posts()).toHaveLength(1);
    release(tokenResponse(h.fc, 300));
    const outs = (await Promise.all(pending)).map((r) => bearerOf(expectOutput(r)));
    expect(new Set(outs).size).toBe(1);
    expect(h.posts()).toHaveLength(1);
    expect(await h.count('miss')).toBe(10);
    expect(await h.calledIdp()).toBe(1);
    // A failure is shared the same way, and not cached.
    h.fc.advance(300_000);
    h.answer(() => new Promise<Response>((resolve) => (release = resolve)));
    const failing = Array.from({ length: 10 }, () => h.run());
    await settle();
    release(json(500, { error: 'server_error' }));
    for (const r of await Promise.all(failing)) expectDenial(r);
    expect(h.posts()).toHaveLength(2);
  });
});

describe('exchange stage: failures are 503 exchange_failed, never the inbound token', () => {
  const failures: { name: string; respond: (fc: FakeClock) => Response | Promise<Response>; expect: RegExp }[] = [
    { name: 'invalid client (401)', respond: () => json(401, { error: 'invalid_client', error_description: `bad secret ${SECRET}` }), expect: /refused the exchange \(HTTP 401\)/ },
    { name: 'exchange not allowed (403)', respond: () => json(403, { error: 'access_denied' }), expect: /refused/ },
    { name: 'server error (500)', respond: () => new Response('boom', { status: 500 }), expect: /refused/ },
    { name: 'network error', respond: () => Promise.reject(new TypeError('fetch failed')), expect: /unreachable/ },
    { name: 'invalid JSON', respond: () => new Response('not json', { status: 200 }), expect: /no usable token/ },
    { name: 'no access_token', respond: () => json(200, { expires_in: 300 }), expect: /no usable token/ },
  ];
  it.each(failures)('$name', async ({ respond, expect: message }) => {
    const h = await setup();
    h.answer(() => respond(h.fc));
    const r = await h.run();
    const d = expectDenial(r);
    expect(d).toMatchObject({ reason: 'exchange_failed', status: 503 });
    expect(d.message).toMatch(message);
    expect(d.message).not.toContain(SECRET);
    expect(JSON.stringify(r)).not.toContain(SUBJECT);
    expect(await h.count('error')).toBe(1);
    expect(await h.count('miss')).toBe(0);
    // Not cached: the next request asks again.
    h.answer(() => tokenResponse(h.fc, 300));
    expectOutput(await h.run());
    expect(h.posts()).toHaveLength(2);
  });

  it('logs the IdP error code at warn, never the secret, the description or a token', async () => {
    const h = await setup();
    h.answer(() => json(401, { error: 'invalid_client', error_description: `bad secret ${SECRET}` }));
    await h.run();
    const line = h.logLines.find((l) => l.includes('token exchange failed'));
    expect(line).toBeDefined();
    expect(JSON.parse(line ?? '{}')).toMatchObject({ level: 'warn', issuer: 'acme', idp_error: 'invalid_client', status: 401, code: 'http_status' });
    const all = h.logLines.join('\n');
    expect(all).not.toContain(SECRET);
    expect(all).not.toContain(SUBJECT);
  });

  it('times out on the injected clock', async () => {
    const h = await setup({ issuerExchange: { timeoutMs: 1_000 } });
    h.answer(() => new Promise<Response>(() => undefined));
    const pending = h.run();
    await settle();
    h.fc.advance(1_000);
    const d = expectDenial(await pending);
    expect(d.message).toMatch(/did not answer in time/);
  });

  it('a caller of an issuer without exchange settings is denied', async () => {
    const h = await setup();
    const d = expectDenial(await h.run({ principal: principal({ issuerName: 'globex', issuer: OTHER_ISS }) }));
    expect(d.reason).toBe('exchange_failed');
    expect(h.calls).toHaveLength(0);
  });

  it('token endpoint by discovery: an unreachable IdP does not block prepare; requests fail until it answers', async () => {
    let up = false;
    const fc0: { fc?: FakeClock } = {};
    const h = await setup({
      issuerExchange: { tokenEndpoint: undefined },
      handler: (r) => {
        if (r.url === DISCOVERY) return up ? json(200, { issuer: ISS, token_endpoint: ENDPOINT }) : new Response('down', { status: 503 });
        return fc0.fc ? tokenResponse(fc0.fc, 300) : json(500, {});
      },
    });
    fc0.fc = h.fc;
    await settle(); // prepare() started a discovery in the background
    expect(h.calls.map((c) => c.url)).toEqual([DISCOVERY]);
    expect(expectDenial(await h.run()).message).toMatch(/discovery failed/);
    expect(h.calls).toHaveLength(1); // within the cooldown: no new discovery
    up = true;
    h.fc.advance(5_000);
    expectOutput(await h.run());
    expect(h.calls.map((c) => c.url)).toEqual([DISCOVERY, DISCOVERY, ENDPOINT]);
    expect(h.module.health?.()).toEqual([
      { name: 'exchange:acme', ready: true, detail: { cachedTokens: 1, callsInFlight: 0, tokenEndpoint: ENDPOINT } },
    ]);
  });
});

describe('exchange stage: what goes upstream', () => {
  const NEW = /^Bearer eyJ/;
  it('drop (default), header authorization: the inbound Authorization is overwritten, nothing else', async () => {
    const h = await setup();
    const out = expectOutput(await h.run());
    expect(out.headers).toEqual([{ name: 'authorization', value: expect.stringMatching(NEW) }]);
    expect(out.remove).toEqual([]);
  });

  it('drop into another header: the inbound Authorization is removed', async () => {
    const h = await setup({ route: { header: 'x-hop-token' } });
    const out = expectOutput(await h.run());
    expect(out.headers).toEqual([{ name: 'x-hop-token', value: expect.stringMatching(NEW) }]);
    expect(out.remove).toEqual(['authorization']);
  });

  it('drop: a token that came in another header is removed as well', async () => {
    const h = await setup();
    const out = expectOutput(await h.run({ principal: principal({ source: 'header:x-token' }) }));
    expect(out.remove).toEqual(['x-token']);
  });

  it('keep: the inbound Authorization stays, the exchanged token goes into its own header', async () => {
    const h = await setup({ route: { header: 'x-hop-token', inbound: 'keep' } });
    const out = expectOutput(await h.run());
    expect(out.headers).toEqual([{ name: 'x-hop-token', value: expect.stringMatching(NEW) }]);
    expect(out.remove).toEqual([]);
  });

  it('move: the inbound token goes to moveTo, the exchanged one to the header', async () => {
    const h = await setup({ route: { inbound: 'move' } });
    const out = expectOutput(await h.run());
    expect(out.headers).toEqual([
      { name: 'authorization', value: expect.stringMatching(NEW) },
      { name: 'x-portcullis-original-authorization', value: `Bearer ${SUBJECT}` },
    ]);
    const other = await setup({ route: { inbound: 'move', header: 'x-hop-token', moveTo: 'x-original' } });
    const out2 = expectOutput(await other.run());
    expect(out2.headers?.map((x) => x.name)).toEqual(['x-hop-token', 'x-original']);
    expect(out2.remove).toEqual(['authorization']);
  });

  it("scheme '' sets the raw token; another scheme is used as given", async () => {
    const raw = await setup({ route: { scheme: '' } });
    expect(bearerOf(expectOutput(await raw.run()))).toMatch(/^eyJ/);
    const dpop = await setup({ route: { scheme: 'DPoP' } });
    expect(bearerOf(expectOutput(await dpop.run()))).toMatch(/^DPoP eyJ/);
  });
});

describe('exchange stage: dry run', () => {
  it('without a cached token: no call, a placeholder and a trace note', async () => {
    const h = await setup();
    const trace: Record<string, unknown> = {};
    const r = h.run({ dryRun: true, trace });
    expect(r).not.toBeInstanceOf(Promise);
    expect(bearerOf(expectOutput(r as StageResult))).toBe('Bearer [dry run: not exchanged]');
    expect(trace.exchange).toMatchObject({ result: 'would_call', issuer: 'acme' });
    expect(h.calls).toHaveLength(0);
    expect(await h.count('miss')).toBe(0);
  });

  it('with a cached token: uses it without counting a hit', async () => {
    const h = await setup();
    const real = bearerOf(expectOutput(await h.run()));
    const trace: Record<string, unknown> = {};
    expect(bearerOf(expectOutput(h.run({ dryRun: true, trace }) as StageResult))).toBe(real);
    expect(trace.exchange).toMatchObject({ result: 'cache_hit' });
    expect(await h.count('hit')).toBe(0);
  });
});

describe('exchange stage: client credentials', () => {
  it('clientSecretFile is read on prepare and re-read on every reload', async () => {
    const files = new Map([['/run/secret', 'first-secret\n']]);
    const h = await setup({ files, issuerExchange: { clientSecret: undefined, clientSecretFile: '/run/secret' } });
    await h.run();
    files.set('/run/secret', 'second-secret');
    await h.module.prepare?.(h.config);
    h.module.activated?.(h.config);
    await h.run({ principal: principal({ token: 'another.subject.token' }) });
    const basic = h.posts().map((p) => Buffer.from((p.headers.authorization ?? '').slice(6), 'base64').toString());
    expect(basic).toEqual(['router:first-secret', 'router:second-secret']);
  });

  it('clientSecretEnv comes from the environment given to the module', async () => {
    const h = await setup({ env: { ROUTER_SECRET: 'from-env' }, issuerExchange: { clientSecret: undefined, clientSecretEnv: 'ROUTER_SECRET' } });
    await h.run();
    expect(h.posts()[0]?.headers.authorization).toBe(`Basic ${Buffer.from('router:from-env').toString('base64')}`);
  });

  it('an unreadable secret file or unset variable fails prepare with the config path, naming no secret', async () => {
    const fc = createFakeClock(T0);
    const module = createExchangeModule(
      { clock: fc.clock, fetch: () => Promise.reject(new Error('no network')), scheduler: fc.scheduler, logger: createLogger({ level: 'silent' }), registry: new Registry() },
      { env: {}, readFile: () => { throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' }); } },
    );
    for (const [exchange, path] of [
      [{ clientSecretFile: '/missing' }, 'issuers[0].exchange.clientSecretFile'],
      [{ clientSecretEnv: 'NOT_SET' }, 'issuers[0].exchange.clientSecretEnv'],
      [{ privateKeyJwt: { keyFile: '/missing.pem', alg: 'ES256' } }, 'issuers[0].exchange.privateKeyJwt.keyFile'],
    ] as const) {
      const config = configSchema.parse({
        issuers: [{ name: 'acme', issuer: ISS, audiences: ['router'], exchange: { clientId: 'router', ...exchange } }],
      });
      const err = await module.prepare?.(config).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).issues.map((i) => i.path)).toEqual([path]);
    }
  });

  it('private_key_jwt: the assertion verifies with the public key and names the client and the endpoint', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const files = new Map([['/keys/router.pem', privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()]]);
    const h = await setup({
      files,
      issuerExchange: { clientSecret: undefined, privateKeyJwt: { keyFile: '/keys/router.pem', alg: 'ES256', kid: 'router-1' } },
    });
    expectOutput(await h.run());
    const post = h.posts()[0];
    expect(post?.headers.authorization).toBeUndefined();
    const { payload, protectedHeader } = await jwtVerify(post?.form.get('client_assertion') ?? '', publicKey, {
      issuer: 'router',
      subject: 'router',
      audience: ENDPOINT,
      currentDate: new Date(T0),
    });
    expect(protectedHeader).toMatchObject({ alg: 'ES256', kid: 'router-1' });
    expect(payload.jti).toBeTruthy();
    expect(post?.form.get('client_assertion_type')).toBe('urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
  });

  it('private_key_jwt: a key that cannot sign the configured alg is refused at prepare', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const files = new Map([['/k.pem', privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()]]);
    await expect(
      setup({ files, issuerExchange: { clientSecret: undefined, privateKeyJwt: { keyFile: '/k.pem', alg: 'ES256' } } }),
    ).rejects.toMatchObject({ issues: [{ path: 'issuers[0].exchange.privateKeyJwt.alg' }] });
  });
});

describe('exchange configuration', () => {
  function issuesOf(input: ConfigInput): string[] {
    const module = createExchangeModule(undefined);
    const r = checkConfig(configSchema.parse(input), '127.0.0.1:9901', [module.factory]);
    return r.ok ? [] : r.issues.map((i) => `${i.path}: ${i.message}`);
  }

  const acme = { name: 'acme', issuer: ISS, audiences: ['router'], exchange: { clientId: 'router', clientSecret: 's' } };
  const globex = { name: 'globex', issuer: OTHER_ISS, audiences: ['router'] };

  it('a route exchanging for an issuer without exchange settings is refused at routes[i].exchange', () => {
    const issues = issuesOf({ issuers: [globex], routes: [{ name: 'r', exchange: { audience: 'wm' } }] });
    expect(issues).toEqual([expect.stringMatching(/^routes\[0\]\.exchange: issuer "globex" has no exchange settings/)]);
  });

  it('every issuer a route accepts needs exchange settings; restricting the route fixes it', () => {
    expect(issuesOf({ issuers: [acme, globex], routes: [{ name: 'r', exchange: { audience: 'wm' } }] })).toEqual([
      expect.stringMatching(/^routes\[0\]\.exchange: issuer "globex"/),
    ]);
    expect(issuesOf({ issuers: [acme, globex], routes: [{ name: 'r', issuers: ['acme', 'globex'], exchange: { audience: 'wm' } }] })).toHaveLength(1);
    expect(issuesOf({ issuers: [acme, globex], routes: [{ name: 'r', issuers: ['acme'], exchange: { audience: 'wm' } }] })).toEqual([]);
  });

  it('the development issuer cannot exchange', () => {
    expect(
      issuesOf({ development: { issuer: { enabled: true } }, issuers: [acme], routes: [{ name: 'r', exchange: { audience: 'wm' } }] }),
    ).toEqual([expect.stringMatching(/^routes\[0\]\.exchange: the development issuer "dev"/)]);
  });

  it('keep needs another header; moveTo must differ from header; anonymous routes cannot exchange', () => {
    expect(issuesOf({ issuers: [acme], routes: [{ name: 'r', exchange: { audience: 'wm', inbound: 'keep' } }] })).toEqual([
      expect.stringMatching(/^routes\[0\]\.exchange\.inbound: /),
    ]);
    expect(
      issuesOf({ issuers: [acme], routes: [{ name: 'r', exchange: { audience: 'wm', inbound: 'move', header: 'x-a', moveTo: 'x-a' } }] }),
    ).toEqual([expect.stringMatching(/^routes\[0\]\.exchange\.moveTo: /)]);
    expect(issuesOf({ issuers: [acme], routes: [{ name: 'r', allow: 'anonymous', exchange: { audience: 'wm' } }] })).toEqual([
      expect.stringMatching(/^routes\[0\]: the exchange stage needs an authenticated caller/),
    ]);
  });

  it('exactly one way to authenticate the client, reported at issuers[i].exchange', () => {
    const yaml = (exchange: string): string =>
      `issuers:\n  - name: acme\n    issuer: ${ISS}\n    audiences: [router]\n    exchange: ${exchange}\n`;
    const pathsOf = (text: string): string[] => {
      try {
        parseConfig(text);
        return [];
      } catch (e) {
        return (e as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
      }
    };
    expect(pathsOf(yaml('{ clientId: router, clientSecret: a, clientSecretFile: /b }'))).toEqual([
      expect.stringMatching(/^issuers\[0\]\.exchange: exactly one of .*\(got clientSecret and clientSecretFile\)/),
    ]);
    expect(pathsOf(yaml('{ clientId: router }'))).toEqual([expect.stringMatching(/^issuers\[0\]\.exchange: exactly one of/)]);
    expect(pathsOf(yaml('{ clientId: router, clientSecretEnv: X, tokenEndpoint: "ftp://x/token" }'))).toEqual([
      expect.stringMatching(/^issuers\[0\]\.exchange\.tokenEndpoint: /),
    ]);
    expect(pathsOf(yaml('{ clientId: router, clientSecretEnv: X }'))).toEqual([]);
  });

  it('route defaults', () => {
    const c = configSchema.parse({ routes: [{ name: 'r', exchange: { audience: 'wm' } }] });
    expect(c.routes[0]?.exchange).toEqual({
      audience: 'wm',
      header: 'authorization',
      scheme: 'Bearer',
      inbound: 'drop',
      moveTo: 'x-portcullis-original-authorization',
      marginSeconds: 30,
    });
    const i = configSchema.parse({ issuers: [acme] });
    expect(i.issuers[0]?.exchange?.timeoutMs).toBe(5_000);
  });
});

describe('exchange in the pipeline (compilePolicy + createDecider)', () => {
  async function decider(route: Partial<NonNullable<RouteExchangeInput>> = {}, handler?: Handler) {
    const h = await setup({ route, handler });
    const compiled = compilePolicy(h.config, new Set(['acme']), [h.module.factory]);
    if (!compiled.ok) throw new Error(JSON.stringify(compiled.issues));
    await h.module.prepare?.(h.config);
    h.module.activated?.(h.config);
    const verifier: Verifier = {
      verify: (token, source) => (token === SUBJECT ? principal({ source }) : denial('signature_invalid', 'bad')),
      issuerNameOf: () => 'acme',
      cacheSize: () => 0,
    };
    return { h, d: createDecider({ policy: compiled.policy, verifier }) };
  }

  it('an allow carries the exchanged token in authorization, not the inbound one; a repeat decides synchronously', async () => {
    const { h, d } = await decider();
    const input = checkInput({ authorization: `Bearer ${SUBJECT}`, 'x-portcullis-original-authorization': 'spoofed' });
    const first = await d.decide(input);
    expect(first.kind).toBe('allow');
    const allow = first as Extract<Decision, { kind: 'allow' }>;
    const auth = allow.headersToSet.filter((x) => x.name === 'authorization');
    expect(auth).toEqual([{ name: 'authorization', value: expect.stringMatching(/^Bearer eyJ/) }]);
    expect(JSON.stringify(allow.headersToSet)).not.toContain(SUBJECT);
    expect(allow.headersToSet.find((x) => x.name === 'x-portcullis-sub')?.value).toBe('alice');
    expect(allow.headersToRemove).toContain('x-portcullis-original-authorization');
    expect(allow.metadata.exchanged_audience).toBe('workloadmanager');
    const again = d.decide(input);
    expect(again).not.toBeInstanceOf(Promise);
    expect((again as Extract<Decision, { kind: 'allow' }>).headersToSet).toEqual(allow.headersToSet);
    expect(h.posts()).toHaveLength(1);
  });

  it('exchanged token in its own header: the inbound Authorization is removed upstream', async () => {
    const { d } = await decider({ header: 'x-hop-token', inbound: 'move', moveTo: 'x-portcullis-original-authorization' });
    const allow = (await d.decide(checkInput())) as Extract<Decision, { kind: 'allow' }>;
    expect(allow.kind).toBe('allow');
    expect(allow.headersToSet.find((x) => x.name === 'x-hop-token')?.value).toMatch(/^Bearer eyJ/);
    expect(allow.headersToSet.find((x) => x.name === 'x-portcullis-original-authorization')?.value).toBe(`Bearer ${SUBJECT}`);
    expect(allow.headersToRemove).toContain('authorization');
  });

  it('a failed exchange is a 503 deny with reason exchange_failed', async () => {
    const { d } = await decider({}, () => json(400, { error: 'invalid_client' }));
    const deny = await d.decide(checkInput());
    expect(deny).toMatchObject({ kind: 'deny', status: 503, reason: 'exchange_failed', metadata: { reason: 'exchange_failed' } });
    expect(JSON.stringify(deny)).not.toContain(`Bearer ${SUBJECT}`);
  });
});
