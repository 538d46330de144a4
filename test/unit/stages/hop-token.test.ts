import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JWK, type JWTPayload } from 'jose';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStaticKeySource } from '../../../src/adapters/oidc/key-source.js';
import { parseConfig, type Overrides } from '../../../src/config/load.js';
import type { Config } from '../../../src/config/schema.js';
import { checkConfig } from '../../../src/config/validate.js';
import { ConfigError, PortcullisError, type ConfigIssue } from '../../../src/core/errors.js';
import type { Allow, CheckInput, Decision } from '../../../src/core/types.js';
import { parseCli } from '../../../src/main.js';
import { createLogger } from '../../../src/observability/logger.js';
import { createDecider, type Decider, type DecisionTrace } from '../../../src/pipeline/decide.js';
import { createHopTokenModule } from '../../../src/stages/hop-token.js';
import { createPeerStageFactory } from '../../../src/stages/peer.js';
import { createStageModules } from '../../../src/stages/registry.js';
import { createRoleResolver } from '../../../src/stages/roles.js';
import { createVerifier, type IssuerRuntime } from '../../../src/stages/verify.js';
import { createFakeClock, type FakeClock } from '../../helpers/fake-clock.js';
import { generateTestKey, resolvedKeyOf, signToken, type TestKey } from '../../helpers/tokens.js';

const T0 = 1_700_000_000_000;
const ACME = 'https://idp.example/realms/acme';
const GLOBEX = 'https://idp.example/realms/globex';
const HOP_ISS = 'https://portcullis.agentcube-system.svc/hop';

const BASE = `
issuers:
  - name: acme
    issuer: ${ACME}
    audiences: [router]
  - name: globex
    issuer: ${GLOBEX}
    audiences: [router]
hops:
  picod: { mode: jwt, audience: picod }
  wlm: { mode: mtls, audience: workloadmanager }
routes:
  - name: invoke
    match: { methods: [POST], path: "/v1/sandboxes/{id}/invoke" }
    hop: { to: picod }
  - name: by-name
    match: { path: "/v1/ns/{ns}/sandboxes/{name}" }
    hop: { to: picod, target: "{path.ns}/{path.name}" }
  - name: manage
    match: { path: "/v1/wlm/{id}" }
    hop: { to: wlm }
  - name: plain
    match: { path: /v1/plain }
`;

function yamlWith(hopTokens: string, base = BASE): string {
  return `${base}\nhopTokens:\n${hopTokens}`;
}

const DEFAULT_HOP_TOKENS = `  issuer: ${HOP_ISS}
  ttlSeconds: 60
  marginSeconds: 10
  rotationSeconds: 3600
`;

let acmeKey: TestKey;
let globexKey: TestKey;
let tmp: string;

beforeAll(async () => {
  [acmeKey, globexKey] = await Promise.all([generateTestKey('ES256', 'acme-1'), generateTestKey('RS256', 'globex-1')]);
  tmp = mkdtempSync(join(tmpdir(), 'portcullis-hop-'));
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

type HopModule = ReturnType<typeof createHopTokenModule>;

interface World {
  fake: FakeClock;
  hop: HopModule;
  registry: Registry;
  logs: string[];
  config: Config;
  decider: Decider;
  /** Re-checks and re-prepares with a new config (a reload), keeping module, clock and verifier settings. */
  reload(yaml: string): Promise<void>;
}

function compileWith(hop: HopModule, config: Config): ReturnType<typeof checkConfig> {
  return checkConfig(config, config.listen.admin, [createPeerStageFactory(), hop.factory]);
}

async function world(yaml: string, opts: { fake?: FakeClock; overrides?: Overrides } = {}): Promise<World> {
  const fake = opts.fake ?? createFakeClock(T0);
  const registry = new Registry();
  const logs: string[] = [];
  const logger = createLogger({ level: 'info', destination: { write: (s: string) => void logs.push(s) } });
  const hop = createHopTokenModule({ clock: fake.clock, scheduler: fake.scheduler, logger, registry });
  const w: World = {
    fake,
    hop,
    registry,
    logs,
    config: parseConfig(yaml, 'test', opts.overrides),
    decider: { decide: () => Promise.reject(new Error('not built')) },
    async reload(next) {
      const config = parseConfig(next, 'test', opts.overrides);
      const checked = compileWith(hop, config);
      if (!checked.ok) throw new ConfigError(checked.issues);
      await hop.prepare?.(config);
      hop.activated?.(config);
      const issuers: IssuerRuntime[] = config.issuers.map((i) => ({
        name: i.name,
        issuer: i.issuer,
        audiences: new Set(i.audiences),
        algorithms: new Set(i.algorithms),
        roleClaims: [['realm_access', 'roles']],
        subjectClaim: i.subjectClaim,
        clockSkewMs: 30_000,
        keys: createStaticKeySource([resolvedKeyOf(i.name === 'acme' ? acmeKey : globexKey)]),
      }));
      const verifier = createVerifier({ clock: fake.clock, issuers, roles: createRoleResolver(config.roles), cacheMaxEntries: 100 });
      w.config = config;
      w.decider = createDecider({ policy: checked.policy, verifier });
    },
  };
  await w.reload(yaml);
  return w;
}

function userToken(sub: string, issuer: 'acme' | 'globex' = 'acme'): Promise<string> {
  const now = T0 / 1000;
  return signToken(
    { iss: issuer === 'acme' ? ACME : GLOBEX, aud: 'router', sub, iat: now, exp: now + 30 * 86_400 },
    { key: issuer === 'acme' ? acmeKey : globexKey },
  );
}

function request(path: string, token: string, opts: { method?: string; contextExtensions?: Record<string, string> } = {}): CheckInput {
  return {
    method: opts.method ?? 'POST',
    host: 'router.example',
    path,
    query: '',
    headers: new Map([['authorization', `Bearer ${token}`]]),
    contextExtensions: new Map(Object.entries(opts.contextExtensions ?? {})),
  };
}

async function allowOf(w: World, input: CheckInput, trace?: DecisionTrace): Promise<Allow> {
  const d: Decision = await w.decider.decide(input, trace);
  if (d.kind !== 'allow') throw new Error(`expected allow, got ${d.reason}: ${d.message}`);
  return d;
}

function hopHeader(d: Allow, name = 'authorization'): string | undefined {
  return d.headersToSet.find((h) => h.name === name)?.value;
}

async function mintedFor(w: World, path: string, token: string): Promise<string> {
  const v = hopHeader(await allowOf(w, request(path, token)));
  expect(v).toMatch(/^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  return (v as string).slice('Bearer '.length);
}

function jwksOf(hop: HopModule): ReturnType<typeof createLocalJWKSet> {
  return createLocalJWKSet({ keys: hop.jwks().keys as JWK[] });
}

async function verifyHop(w: World, jwt: string, jwks: HopModule = w.hop, audience = 'picod'): Promise<JWTPayload> {
  const { payload } = await jwtVerify(jwt, jwksOf(jwks), {
    issuer: HOP_ISS,
    audience,
    algorithms: ['ES256'],
    currentDate: new Date(w.fake.now()),
  });
  return payload;
}

async function counter(registry: Registry, labels: Record<string, string>): Promise<number> {
  const m = registry.getSingleMetric('portcullis_hop_tokens_total');
  if (!m) return 0;
  const v = (await m.get()).values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v?.value ?? 0;
}

function ecKeyFile(name: string, format: 'pkcs8' | 'sec1' = 'pkcs8'): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const file = join(tmp, name);
  writeFileSync(file, privateKey.export({ type: format, format: 'pem' }));
  return file;
}

describe('hop tokens: minting through a compiled route (jwt mode)', () => {
  it('injects authorization: Bearer <ES256 JWT> that verifies against the module JWKS with the documented claims', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', await userToken('alice'));
    const header = decodeProtectedHeader(jwt);
    expect(header).toMatchObject({ alg: 'ES256', typ: 'JWT' });
    expect(w.hop.jwks().keys.map((k) => k.kid)).toEqual([header.kid]);
    const p = await verifyHop(w, jwt);
    expect(p).toMatchObject({
      iss: HOP_ISS,
      aud: 'picod',
      sub: 'alice',
      tenant: 'acme',
      qualified_sub: 'acme/alice',
      target: 'sb-1',
      iat: T0 / 1000,
      nbf: T0 / 1000,
    });
    expect((p.exp ?? 0) - (p.iat ?? 0)).toBe(60);
    expect(typeof p.jti).toBe('string');
    for (const k of w.hop.jwks().keys) {
      expect(k).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
      expect(k).not.toHaveProperty('d');
    }
  });

  it('the caller\'s own token is replaced upstream, not forwarded next to the hop token', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const token = await userToken('alice');
    const d = await allowOf(w, request('/v1/sandboxes/sb-1/invoke', token));
    const auth = d.headersToSet.filter((h) => h.name === 'authorization');
    expect(auth).toHaveLength(1);
    expect(auth[0]?.value).not.toContain(token);
    expect(d.metadata.hop).toBe('picod');
  });

  it('a target template over several path params; the tenant is the issuer name', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const jwt = await mintedFor(w, '/v1/ns/team-a/sandboxes/box', await userToken('bob', 'globex'));
    expect(await verifyHop(w, jwt)).toMatchObject({ sub: 'bob', tenant: 'globex', qualified_sub: 'globex/bob', target: 'team-a/box' });
  });

  it('the trace records the hop, audience, target and header (never the token)', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const trace: DecisionTrace = {};
    await allowOf(w, request('/v1/sandboxes/sb-9/invoke', await userToken('alice')), trace);
    expect(trace.stages?.hop).toEqual({ to: 'picod', mode: 'jwt', audience: 'picod', target: 'sb-9', header: 'authorization' });
  });

  it('a token is cached per (caller, hop, target) and re-minted once less than marginSeconds is left', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    const bob = await userToken('bob');
    const first = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    expect(await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice)).toBe(first);
    // Another target, another caller, the same sub in another tenant: other tokens.
    const otherTarget = await mintedFor(w, '/v1/sandboxes/sb-2/invoke', alice);
    const otherCaller = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', bob);
    const otherTenant = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', await userToken('alice', 'globex'));
    expect(new Set([first, otherTarget, otherCaller, otherTenant]).size).toBe(4);
    expect(await counter(w.registry, { hop: 'picod', result: 'minted' })).toBe(4);
    expect(await counter(w.registry, { hop: 'picod', result: 'cached' })).toBe(1);

    // exp = T0 + 60 s, margin 10 s: cached until T0 + 50 s (exclusive).
    w.fake.advance(49_999);
    expect(await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice)).toBe(first);
    w.fake.advance(1);
    const renewed = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    expect(renewed).not.toBe(first);
    const p = await verifyHop(w, renewed);
    expect(p.iat).toBe(T0 / 1000 + 50);
    expect(p.exp).toBe(T0 / 1000 + 110);
    expect(await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice)).toBe(renewed);
  });

  it('a hop in mtls mode injects nothing (Envoy\'s mTLS carries the identity)', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const trace: DecisionTrace = {};
    const d = await allowOf(w, request('/v1/wlm/x', await userToken('alice'), { method: 'GET' }), trace);
    expect(hopHeader(d)).toBeUndefined();
    expect(d.metadata.hop).toBeUndefined();
    expect(trace.stages?.hop).toMatchObject({ to: 'wlm', mode: 'mtls' });
    expect(await counter(w.registry, { hop: 'wlm', result: 'minted' })).toBe(0);
  });

  it('a route without hop gets no hop token', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const d = await allowOf(w, request('/v1/plain', await userToken('alice'), { method: 'GET' }));
    expect(hopHeader(d)).toBeUndefined();
  });

  it('a hop header other than authorization', async () => {
    const yaml = yamlWith(DEFAULT_HOP_TOKENS, BASE.replace('picod: { mode: jwt, audience: picod }', 'picod: { mode: jwt, audience: picod, header: x-hop-token }'));
    const w = await world(yaml);
    const d = await allowOf(w, request('/v1/sandboxes/sb-1/invoke', await userToken('alice')));
    expect(hopHeader(d, 'x-hop-token')).toMatch(/^Bearer /);
    expect(hopHeader(d)).toBeUndefined();
  });

  // A route picked by Envoy's context_extensions has no path params, so the
  // default target "{path.id}" renders empty. A token without a `target` is
  // not bound to any sandbox: minting one defeats the point of the claim.
  it('never injects a hop token without a target (route named by context_extensions: no path params)', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const d = await w.decider.decide(request('/v1/sandboxes/sb-1/invoke', await userToken('alice'), { contextExtensions: { route: 'invoke' } }));
    if (d.kind === 'allow') {
      const v = hopHeader(d);
      if (v !== undefined) {
        const p = await verifyHop(w, v.slice('Bearer '.length));
        expect(p.target, 'hop token minted without a target claim').toBeTruthy();
      }
    }
  });
});

describe('hop tokens: key rotation', () => {
  it('after rotationSeconds a new kid signs; the old kid stays in the JWKS and its tokens still verify', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    const old = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    const oldKid = decodeProtectedHeader(old).kid;
    expect(w.fake.pending().map((t) => t.dueAt)).toContain(T0 + 3_600_000);

    w.fake.advance(3_600_000 - 30_000); // token minted at T0 is long expired; mint one just before rotation
    const beforeRotation = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    expect(decodeProtectedHeader(beforeRotation).kid).toBe(oldKid);
    w.fake.advance(30_000);

    const kids = w.hop.jwks().keys.map((k) => k.kid);
    expect(kids).toHaveLength(2);
    expect(kids[1]).toBe(oldKid);
    const fresh = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    expect(fresh).not.toBe(beforeRotation); // the cache does not hand out the old key's tokens after rotation
    expect(decodeProtectedHeader(fresh).kid).toBe(kids[0]);
    expect(kids[0]).not.toBe(oldKid);
    // Both verify now: the new one and the unexpired one from before rotation.
    await verifyHop(w, fresh);
    await verifyHop(w, beforeRotation);
    expect(w.logs.some((l) => l.includes('hop-token signing key rotated'))).toBe(true);

    // The next rotation drops the first key, keeps the second.
    w.fake.advance(3_600_000);
    const after = w.hop.jwks().keys.map((k) => k.kid);
    expect(after).toHaveLength(2);
    expect(after).not.toContain(oldKid);
    expect(after[1]).toBe(kids[0]);
    void old;
  });

  // With rotationSeconds shorter than ttlSeconds, two rotations can happen
  // within one token's lifetime and the key that signed a still-valid token is
  // no longer published. Either the config must refuse it, or the overlap must
  // cover the token lifetime.
  it('every unexpired token stays verifiable across rotations (or a rotation shorter than the TTL is refused)', async () => {
    const yaml = yamlWith(`  issuer: ${HOP_ISS}\n  ttlSeconds: 60\n  marginSeconds: 10\n  rotationSeconds: 20\n`);
    let w: World;
    try {
      w = await world(yaml);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return;
    }
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', await userToken('alice'));
    w.fake.advance(45_000); // two rotations (T0+20 s, T0+40 s); the token is valid until T0+60 s
    await expect(verifyHop(w, jwt)).resolves.toMatchObject({ target: 'sb-1' });
  });

  it('stop() cancels the rotation timer', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    expect(w.fake.pending()).toHaveLength(1);
    await w.hop.stop?.();
    expect(w.fake.pending()).toHaveLength(0);
  });

  it('a reload with unchanged key settings keeps the keys (tokens already handed out stay valid)', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', await userToken('alice'));
    const kids = w.hop.jwks().keys.map((k) => k.kid);
    await w.reload(yamlWith(DEFAULT_HOP_TOKENS));
    expect(w.hop.jwks().keys.map((k) => k.kid)).toEqual(kids);
    await verifyHop(w, jwt);
    expect(w.fake.pending()).toHaveLength(1);
  });

  it('a reload that changes hopTokens.issuer is honoured at once (no cached token with the old iss)', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    const NEW_ISS = 'https://portcullis.example/hop-v2';
    await w.reload(yamlWith(DEFAULT_HOP_TOKENS.replace(HOP_ISS, NEW_ISS)));
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    const { payload } = await jwtVerify(jwt, jwksOf(w.hop), { currentDate: new Date(w.fake.now()) });
    expect(payload.iss).toBe(NEW_ISS);
  });

  it('a reload that changes a hop\'s audience is honoured at once (no cached token for the old audience)', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    await w.reload(yamlWith(DEFAULT_HOP_TOKENS, BASE.replace('picod: { mode: jwt, audience: picod }', 'picod: { mode: jwt, audience: picod-v2 }')));
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    const { payload } = await jwtVerify(jwt, jwksOf(w.hop), { currentDate: new Date(w.fake.now()) });
    expect(payload.aud).toBe('picod-v2');
  });
});

describe('hop tokens: a reload that is refused changes nothing', () => {
  // StageModule.prepare runs before the swap; if the new config is then
  // refused (its own prepare fails, or another module's does), the running
  // config must keep minting exactly as before.
  it('a reload whose key file cannot be read is refused and the running settings stay', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    const NEW_ISS = 'https://portcullis.example/refused';
    const refused = yamlWith(`  issuer: ${NEW_ISS}\n  ttlSeconds: 300\n  keyFiles: [${join(tmp, 'missing.pem')}]\n`);
    await expect(w.reload(refused)).rejects.toThrow(/cannot read hop-token signing key/);
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-2/invoke', alice);
    const p = await verifyHop(w, jwt);
    expect(p.iss).toBe(HOP_ISS);
    expect((p.exp ?? 0) - (p.iat ?? 0)).toBe(60);
  });

  it('prepare() for a config that is never swapped in (another module refused it) does not break the running routes', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    // The candidate config drops hopTokens and the jwt hop; it is prepared, then refused elsewhere.
    const candidate = parseConfig(BASE.replace('picod: { mode: jwt, audience: picod }', 'picod: { mode: mtls, audience: picod }'));
    await w.hop.prepare?.(candidate);
    const d = await w.decider.decide(request('/v1/sandboxes/sb-3/invoke', alice));
    expect(d.kind === 'deny' ? `${d.reason}: ${d.message}` : 'allow').toBe('allow');
    const v = d.kind === 'allow' ? hopHeader(d) : undefined;
    expect(v).toMatch(/^Bearer /);
    expect(await verifyHop(w, (v as string).slice('Bearer '.length))).toMatchObject({ iss: HOP_ISS, target: 'sb-3' });
  });
});

describe('hop tokens: shared key files (several replicas)', () => {
  it('two instances with the same key file publish the same kid and verify each other\'s tokens; no rotation timer', async () => {
    const file = ecKeyFile('shared.pem');
    const yaml = yamlWith(`  issuer: ${HOP_ISS}\n  keyFiles: [${file}]\n`);
    const fake = createFakeClock(T0);
    const a = await world(yaml, { fake });
    const b = await world(yaml, { fake });
    const kidsA = a.hop.jwks().keys.map((k) => k.kid);
    expect(kidsA).toHaveLength(1);
    expect(b.hop.jwks().keys.map((k) => k.kid)).toEqual(kidsA);
    expect(b.hop.jwks().keys).toEqual(a.hop.jwks().keys);
    expect(fake.pending()).toHaveLength(0);

    const alice = await userToken('alice');
    const fromA = await mintedFor(a, '/v1/sandboxes/sb-1/invoke', alice);
    const fromB = await mintedFor(b, '/v1/sandboxes/sb-1/invoke', alice);
    expect(fromA).not.toBe(fromB);
    expect(decodeProtectedHeader(fromA).kid).toBe(kidsA[0]);
    await verifyHop(a, fromB, a.hop);
    await verifyHop(b, fromA, b.hop);
    // A restart (a fresh module) publishes the same kid again.
    const c = await world(yaml, { fake });
    await verifyHop(c, fromA, c.hop);
  });

  it('several key files: the first signs, all are published; SEC1 PEM is accepted too', async () => {
    const one = ecKeyFile('one.pem', 'sec1');
    const two = ecKeyFile('two.pem');
    const w = await world(yamlWith(`  issuer: ${HOP_ISS}\n  keyFiles: [${one}, ${two}]\n`));
    const kids = w.hop.jwks().keys.map((k) => k.kid);
    expect(kids).toHaveLength(2);
    expect(new Set(kids).size).toBe(2);
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', await userToken('alice'));
    expect(decodeProtectedHeader(jwt).kid).toBe(kids[0]);
  });

  it('a key file that is not EC P-256, or is missing, fails prepare with a clear error', async () => {
    const rsa = join(tmp, 'rsa.pem');
    writeFileSync(rsa, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const p384 = join(tmp, 'p384.pem');
    writeFileSync(p384, generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    for (const f of [rsa, p384]) {
      const err = await world(yamlWith(`  issuer: ${HOP_ISS}\n  keyFiles: [${f}]\n`)).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(PortcullisError);
      expect((err as PortcullisError).message).toContain('must be an EC P-256 key');
    }
    const missing = await world(yamlWith(`  issuer: ${HOP_ISS}\n  keyFiles: [${join(tmp, 'nope.pem')}]\n`)).then(
      () => undefined,
      (e: unknown) => e,
    );
    // Reported as a configuration problem at hopTokens.keyFiles, with the read error.
    expect((missing as PortcullisError).code).toBe('ERR_CONFIG_INVALID');
    expect((missing as PortcullisError).message).toContain('hopTokens.keyFiles');
    expect((missing as PortcullisError).message).toContain('cannot read');
  });

  // Switching from in-memory keys to keyFiles by a reload must stop the
  // in-memory rotation: otherwise the pending timer fires, generates a random
  // in-memory key, puts it first (it signs) and drops the file keys beyond the
  // first, so replicas no longer share their signing key.
  // The in-memory key that signed until the reload stays published only until its
  // tokens have expired (ttl + a minute), so tokens already handed out keep verifying.
  it('after a reload from in-memory keys to keyFiles, the file keys sign and the old key is published only until its tokens expire', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const oldKid = w.hop.jwks().keys[0]?.kid;
    const file = ecKeyFile('switch.pem');
    const other = ecKeyFile('switch-2.pem');
    await w.reload(yamlWith(`  issuer: ${HOP_ISS}\n  rotationSeconds: 3600\n  keyFiles: [${file}, ${other}]\n`));
    const published = w.hop.jwks().keys.map((k) => k.kid);
    expect(published).toHaveLength(3);
    expect(published[2]).toBe(oldKid);
    const fileKids = published.slice(0, 2);
    w.fake.advance(2 * 3_600_000);
    expect(w.hop.jwks().keys.map((k) => k.kid)).toEqual(fileKids);
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-1/invoke', await userToken('alice'));
    expect(decodeProtectedHeader(jwt).kid).toBe(fileKids[0]);
  });
});

describe('hop tokens: configuration', () => {
  function issuesOf(yaml: string, overrides?: Overrides): ConfigIssue[] {
    const hop = createHopTokenModule();
    const config = parseConfig(yaml, 'test', overrides);
    const checked = compileWith(hop, config);
    return checked.ok ? [] : checked.issues;
  }

  const route = (extra: string) => `
issuers:
  - name: acme
    issuer: ${ACME}
    audiences: [router]
    exchange: { clientId: router, clientSecret: s3cret }
routes:
  - name: r
    match: { path: "/v1/sandboxes/{id}" }
${extra}`;

  it('an unknown hop is an issue at routes[i].hop.to listing the configured hops', () => {
    const issues = issuesOf(`${route('    hop: { to: picodd }')}\nhops:\n  picod: { audience: picod }\n`);
    expect(issues).toEqual([{ path: 'routes[0].hop.to', message: 'unknown hop "picodd"; configured: picod' }]);
    expect(issuesOf(route('    hop: { to: picod }'))[0]).toMatchObject({ path: 'routes[0].hop.to', message: expect.stringContaining('(none)') });
  });

  it('a jwt hop without hopTokens is an issue at routes[i].hop', () => {
    const issues = issuesOf(`${route('    hop: { to: picod }')}\nhops:\n  picod: { mode: jwt, audience: picod }\n`);
    expect(issues).toEqual([{ path: 'routes[0].hop', message: 'hop "picod" is in jwt mode but hopTokens is not configured' }]);
    // The same hop in mtls mode needs no hopTokens.
    expect(issuesOf(`${route('    hop: { to: picod }')}\nhops:\n  picod: { mode: mtls, audience: picod }\n`)).toEqual([]);
  });

  it('exchange and a jwt hop both writing authorization is an issue; different headers are fine', () => {
    const hops = `\nhops:\n  picod: { mode: jwt, audience: picod }\nhopTokens: { issuer: "${HOP_ISS}" }\n`;
    const both = issuesOf(`${route('    exchange: { audience: picod }\n    hop: { to: picod }')}${hops}`);
    expect(both.filter((i) => i.path === 'routes[0].hop')).toEqual([
      { path: 'routes[0].hop', message: 'the exchanged token and the hop token would both go into authorization' },
    ]);
    const apart = issuesOf(`${route('    exchange: { audience: picod, header: x-exchanged }\n    hop: { to: picod }')}${hops}`);
    expect(apart.filter((i) => i.path.startsWith('routes[0].hop'))).toEqual([]);
  });

  it('a target template naming an unknown path param is an issue at routes[i].hop.target', () => {
    const hops = `\nhops:\n  picod: { mode: jwt, audience: picod }\nhopTokens: { issuer: "${HOP_ISS}" }\n`;
    const issues = issuesOf(`${route('    hop: { to: picod, target: "{path.nope}" }')}${hops}`);
    expect(issues.map((i) => i.path)).toEqual(['routes[0].hop.target']);
  });

  it('a hop on an anonymous route is refused (no caller to mint for)', () => {
    const yaml = `
routes:
  - name: r
    match: { path: "/v1/sandboxes/{id}" }
    allow: anonymous
    hop: { to: picod }
hops:
  picod: { mode: jwt, audience: picod }
hopTokens: { issuer: "${HOP_ISS}" }
`;
    expect(issuesOf(yaml)).toEqual([{ path: 'routes[0]', message: 'the hop stage needs an authenticated caller; this route is allow: anonymous' }]);
  });

  it('schema: marginSeconds < ttlSeconds, ttl at most 3600, mode mtls|jwt', () => {
    expect(() => parseConfig(`hopTokens: { issuer: "${HOP_ISS}", ttlSeconds: 30, marginSeconds: 30 }`)).toThrow(/hopTokens\.marginSeconds/);
    expect(() => parseConfig(`hopTokens: { issuer: "${HOP_ISS}", ttlSeconds: 7200 }`)).toThrow(/hopTokens\.ttlSeconds/);
    expect(() => parseConfig('hops: { picod: { mode: spiffe, audience: picod } }')).toThrow(/hops\.picod\.mode/);
    const c = parseConfig(`hopTokens: { issuer: "${HOP_ISS}" }\nhops: { picod: { audience: picod } }`);
    expect(c.hopTokens).toEqual({ issuer: HOP_ISS, ttlSeconds: 60, marginSeconds: 10, rotationSeconds: 86_400 });
    expect(c.hops.picod).toEqual({ mode: 'mtls', audience: 'picod', header: 'authorization' });
  });

  it('--picod-auth-mode jwt creates hops.picod (audience picod) or switches an existing one, keeping its audience', () => {
    expect(parseConfig('', 'test', { picodAuthMode: 'jwt' }).hops).toEqual({ picod: { mode: 'jwt', audience: 'picod', header: 'authorization' } });
    const existing = parseConfig('hops: { picod: { mode: mtls, audience: sandbox-daemon, header: x-hop } }', 'test', { picodAuthMode: 'jwt' });
    expect(existing.hops.picod).toEqual({ mode: 'jwt', audience: 'sandbox-daemon', header: 'x-hop' });
    expect(parseConfig('hops: { picod: { mode: jwt, audience: picod } }', 'test', { picodAuthMode: 'mtls' }).hops.picod?.mode).toBe('mtls');
    expect(() => parseConfig('', 'test', { picodAuthMode: 'tls' })).toThrow(/hops\.picod\.mode/);
  });

  it('--picod-auth-mode jwt with a route on the picod hop needs hopTokens; with hopTokens it mints', async () => {
    const yaml = `
issuers:
  - name: acme
    issuer: ${ACME}
    audiences: [router]
routes:
  - name: invoke
    match: { methods: [POST], path: "/v1/sandboxes/{id}/invoke" }
    hop: { to: picod }
`;
    expect(issuesOf(yaml)[0]?.path).toBe('routes[0].hop.to');
    expect(issuesOf(yaml, { picodAuthMode: 'mtls' })).toEqual([]);
    expect(issuesOf(yaml, { picodAuthMode: 'jwt' })).toEqual([
      { path: 'routes[0].hop', message: 'hop "picod" is in jwt mode but hopTokens is not configured' },
    ]);
    const w = await world(`${yaml}hopTokens: { issuer: "${HOP_ISS}" }\n`, { overrides: { picodAuthMode: 'jwt' } });
    const jwt = await mintedFor(w, '/v1/sandboxes/sb-7/invoke', await userToken('alice'));
    expect(await verifyHop(w, jwt)).toMatchObject({ aud: 'picod', target: 'sb-7' });
  });

  it('the --picod-auth-mode flag and PORTCULLIS_PICOD_AUTH_MODE reach the overrides', () => {
    expect(parseCli(['--picod-auth-mode', 'jwt'], {}).overrides.picodAuthMode).toBe('jwt');
    expect(parseCli([], { PORTCULLIS_PICOD_AUTH_MODE: 'jwt' }).overrides.picodAuthMode).toBe('jwt');
    expect(parseCli(['--picod-auth-mode', 'mtls'], { PORTCULLIS_PICOD_AUTH_MODE: 'jwt' }).overrides.picodAuthMode).toBe('mtls');
  });
});

describe('hop tokens: wired into the app', () => {
  // The app builds its stages from createStageModules(); the hop module must be
  // one of them, or `routes[].hop` is silently ignored (no token injected, and
  // no config issue for an unknown hop or a jwt hop without hopTokens).
  it('createStageModules() includes the hop stage', () => {
    expect(createStageModules().map((m) => m.factory.name)).toContain('hop');
  });

  it('with the app\'s stage set, an unknown hop is a config issue', () => {
    const config = parseConfig(`
issuers:
  - name: acme
    issuer: ${ACME}
    audiences: [router]
routes:
  - name: r
    match: { path: "/v1/sandboxes/{id}" }
    hop: { to: nowhere }
`);
    const checked = checkConfig(config, config.listen.admin, createStageModules().map((m) => m.factory));
    expect(checked.ok).toBe(false);
  });

  it('a module serves the JWKS at GET /.well-known/jwks.json on the admin port', async () => {
    const fake = createFakeClock(T0);
    const modules = createStageModules({
      clock: fake.clock,
      scheduler: fake.scheduler,
      fetch: () => Promise.reject(new Error('no network in unit tests')),
      logger: createLogger({ level: 'silent' }),
      registry: new Registry(),
    });
    const routes = modules.flatMap((m) => m.adminRoutes?.() ?? []);
    const jwks = routes.find((r) => r.method === 'GET' && r.path === '/.well-known/jwks.json');
    expect(jwks, 'no module serves /.well-known/jwks.json').toBeDefined();
  });

  // explain (dryRun) must not write shared caches nor count in metrics.
  it('a dry run (explain) does not fill the hop-token cache nor count a minted token', async () => {
    const w = await world(yamlWith(DEFAULT_HOP_TOKENS));
    const alice = await userToken('alice');
    const decide = w.decider.decide as (input: CheckInput, trace?: DecisionTrace, opts?: { dryRun?: boolean }) => Decision | Promise<Decision>;
    await decide(request('/v1/sandboxes/sb-1/invoke', alice), {}, { dryRun: true });
    expect(await counter(w.registry, { hop: 'picod', result: 'minted' })).toBe(0);
    await mintedFor(w, '/v1/sandboxes/sb-1/invoke', alice);
    expect(await counter(w.registry, { hop: 'picod', result: 'minted' })).toBe(1);
    expect(await counter(w.registry, { hop: 'picod', result: 'cached' })).toBe(0);
  });
});
