import { beforeAll, describe, expect, it } from 'vitest';
import { createStaticKeySource } from '../../../src/adapters/oidc/key-source.js';
import { parseConfig } from '../../../src/config/load.js';
import type { Config } from '../../../src/config/schema.js';
import { checkConfig } from '../../../src/config/validate.js';
import { isDenial, type ConfigIssue } from '../../../src/core/errors.js';
import type { CheckInput, Decision, Deny } from '../../../src/core/types.js';
import { createDecider, type Decider, type DecisionTrace } from '../../../src/pipeline/decide.js';
import type { StageContext } from '../../../src/pipeline/stage.js';
import { compileSpiffePatterns, createPeerStage, createPeerStageFactory, parseSpiffeId, type SpiffeMatcher } from '../../../src/stages/peer.js';
import { createStageModules } from '../../../src/stages/registry.js';
import { createRoleResolver } from '../../../src/stages/roles.js';
import { createVerifier, type IssuerRuntime } from '../../../src/stages/verify.js';
import { createFakeClock } from '../../helpers/fake-clock.js';
import { generateTestKey, resolvedKeyOf, signToken, type TestKey } from '../../helpers/tokens.js';

const ROUTER = 'spiffe://cluster.local/ns/agentcube-system/sa/router';
const WLM = 'spiffe://cluster.local/ns/agentcube-system/sa/workloadmanager';
const OTHER_NS = 'spiffe://cluster.local/ns/tenant-a/sa/router';

function matcherOf(patterns: string[]): SpiffeMatcher {
  const c = compileSpiffePatterns(patterns);
  if (!c.ok) throw new Error(`patterns refused: ${JSON.stringify(c.issues)}`);
  return c.matcher;
}

function refusedIndexes(patterns: string[]): number[] {
  const c = compileSpiffePatterns(patterns);
  return c.ok ? [] : c.issues.map((i) => i.index);
}

describe('parseSpiffeId', () => {
  it('splits a SPIFFE ID into a lower-cased trust domain and a case-preserving path', () => {
    expect(parseSpiffeId('spiffe://Cluster.LOCAL/ns/X/sa/Router')).toEqual({ trustDomain: 'cluster.local', path: '/ns/X/sa/Router' });
    expect(parseSpiffeId('SPIFFE://td/a')).toEqual({ trustDomain: 'td', path: '/a' });
    expect(parseSpiffeId('spiffe://td')).toEqual({ trustDomain: 'td', path: '' });
  });

  it.each([
    ['dot-dot segment', 'spiffe://td/ns/x/../sa/admin'],
    ['trailing dot-dot', 'spiffe://td/ns/x/..'],
    ['dot segment', 'spiffe://td/ns/./x'],
    ['empty segment', 'spiffe://td/ns//x'],
    ['trailing slash', 'spiffe://td/ns/x/'],
    ['root slash only', 'spiffe://td/'],
    ['other scheme', 'https://td/ns/x'],
    ['no scheme', 'td/ns/x'],
    ['port', 'spiffe://td:8443/ns/x'],
    ['userinfo', 'spiffe://user@td/ns/x'],
    ['query', 'spiffe://td/ns/x?a=b'],
    ['fragment', 'spiffe://td/ns/x#frag'],
    ['empty trust domain', 'spiffe:///ns/x'],
    ['whitespace', 'spiffe://td/ns/x y'],
    ['empty', ''],
  ])('rejects an ID with %s: %s', (_what, id) => {
    expect(parseSpiffeId(id)).toBeUndefined();
  });
});

describe('compileSpiffePatterns / matching', () => {
  it('an exact pattern matches only that ID', () => {
    const m = matcherOf([ROUTER]);
    expect(m.matches(ROUTER)).toBe(true);
    expect(m.matches(WLM)).toBe(false);
    expect(m.matches(`${ROUTER}x`)).toBe(false);
    expect(m.matches(`${ROUTER}/child`)).toBe(false);
    expect(m.matches(OTHER_NS)).toBe(false);
  });

  it('the trust domain is case-insensitive (both in the pattern and in the ID); the path is not', () => {
    expect(matcherOf(['spiffe://Cluster.Local/ns/agentcube-system/sa/router']).matches(ROUTER)).toBe(true);
    expect(matcherOf([ROUTER]).matches('spiffe://CLUSTER.LOCAL/ns/agentcube-system/sa/router')).toBe(true);
    expect(matcherOf([ROUTER]).matches('spiffe://cluster.local/ns/agentcube-system/sa/Router')).toBe(false);
    expect(matcherOf(['spiffe://cluster.local/ns/agentcube-system/*']).matches('spiffe://cluster.local/NS/agentcube-system/sa/router')).toBe(false);
  });

  it('a path prefix `/ns/x/*` matches IDs below that path, not the path itself nor a sibling like /ns/xy', () => {
    const m = matcherOf(['spiffe://td/ns/x/*']);
    expect(m.matches('spiffe://td/ns/x/sa/a')).toBe(true);
    expect(m.matches('spiffe://td/ns/x/a')).toBe(true);
    expect(m.matches('spiffe://TD/ns/x/sa/a')).toBe(true);
    expect(m.matches('spiffe://td/ns/x')).toBe(false);
    expect(m.matches('spiffe://td/ns/xy/sa/a')).toBe(false);
    expect(m.matches('spiffe://td/ns/xy')).toBe(false);
    expect(m.matches('spiffe://td/ns/y/sa/a')).toBe(false);
    expect(m.matches('spiffe://td2/ns/x/sa/a')).toBe(false);
    expect(m.matches('spiffe://td.evil/ns/x/sa/a')).toBe(false);
  });

  it('a prefix never matches an ID that escapes it with dot segments, empty segments or a trailing slash', () => {
    const m = matcherOf(['spiffe://td/ns/x/*']);
    expect(m.matches('spiffe://td/ns/x/../y/sa/admin')).toBe(false);
    expect(m.matches('spiffe://td/ns/x/./sa/a')).toBe(false);
    expect(m.matches('spiffe://td/ns/x//sa/a')).toBe(false);
    expect(m.matches('spiffe://td/ns/x/sa/a/')).toBe(false);
    const exact = matcherOf(['spiffe://td/ns/x/sa/a']);
    expect(exact.matches('spiffe://td/ns/x/sa/a/')).toBe(false);
    expect(exact.matches('spiffe://td/ns/x/sa/b/../a')).toBe(false);
  });

  it('`spiffe://td/*` matches every workload of that trust domain and nothing of another', () => {
    const m = matcherOf(['spiffe://td/*']);
    expect(m.matches('spiffe://td/ns/x/sa/a')).toBe(true);
    expect(m.matches('spiffe://Td/a')).toBe(true);
    expect(m.matches('spiffe://td')).toBe(false);
    expect(m.matches('spiffe://td2/ns/x/sa/a')).toBe(false);
    expect(m.matches('spiffe://other/ns/x')).toBe(false);
  });

  it('several patterns: any one matching is enough', () => {
    const m = matcherOf([ROUTER, 'spiffe://other.td/ns/ops/*']);
    expect(m.matches(ROUTER)).toBe(true);
    expect(m.matches('spiffe://other.td/ns/ops/sa/cli')).toBe(true);
    expect(m.matches(WLM)).toBe(false);
  });

  it('nothing that is not a SPIFFE ID matches, whatever the patterns', () => {
    const m = matcherOf(['spiffe://td/*']);
    for (const id of ['', 'td/ns/x', 'https://td/ns/x', 'spiffe://td/', 'spiffe://td/ns//x', 'spiffe://td/ns/../x']) {
      expect(m.matches(id), id).toBe(false);
    }
  });

  it('refuses patterns that are not an exact ID, a `/prefix/*` or `spiffe://td/*`, with their index', () => {
    const bad = [
      'spiffe://td', // a bare trust domain is not an exact workload ID
      'spiffe://td/',
      'spiffe://td/ns/x/',
      'spiffe://td/ns//x',
      'spiffe://td/ns/../x',
      'spiffe://td/ns/x/../*',
      'https://td/ns/x',
      'router',
      'spiffe://*',
      'spiffe://td:1/ns/x',
    ];
    const c = compileSpiffePatterns([ROUTER, ...bad]);
    expect(c.ok).toBe(false);
    if (c.ok) return;
    expect(c.issues.map((i) => i.index)).toEqual(bad.map((_b, i) => i + 1));
    for (const i of c.issues) expect(i.message).toMatch(/not a SPIFFE ID pattern/);
  });

  // A `*` anywhere but a final `/*` segment is not one of the documented pattern
  // forms, and `*` is not a legal character in a SPIFFE ID path either (SPIFFE ID
  // spec: path segments are [A-Za-z0-9.-_]). It should be a config issue rather
  // than a literal that silently never matches a real workload.
  it.each(['spiffe://td/ns/*/sa/router', 'spiffe://td/ns/x*', 'spiffe://td/ns/x/sa/*router', 'spiffe://td/ns/x/**'])('refuses a wildcard that is not a final /* segment: %s', (p) => {
    expect(refusedIndexes([p])).toEqual([0]);
  });
});

describe('createPeerStage', () => {
  const input = (peer: string | undefined): CheckInput => ({
    method: 'GET',
    host: 'wlm',
    path: '/v1/x',
    query: '',
    headers: new Map(),
    peerPrincipal: peer,
    contextExtensions: new Map(),
  });
  const ctx = (peer: string | undefined, trace?: Record<string, unknown>): StageContext => ({ input: input(peer), routeName: 'r', params: {}, trace });
  const stage = createPeerStage([ROUTER], matcherOf([ROUTER]));

  it('an allowed peer passes with no output', () => {
    expect(stage.run(ctx(ROUTER))).toBeUndefined();
  });

  it.each([undefined, ''])('no peer identity (%j) is peer_missing, 403', (peer) => {
    const r = stage.run(ctx(peer));
    expect(isDenial(r)).toBe(true);
    expect(r).toMatchObject({ reason: 'peer_missing', status: 403 });
  });

  it.each([WLM, OTHER_NS, 'not-a-spiffe-id', 'spiffe://cluster.local/ns/agentcube-system/sa/router/../router'])('another peer (%s) is peer_not_allowed, 403', (peer) => {
    const r = stage.run(ctx(peer));
    expect(r).toMatchObject({ denied: true, reason: 'peer_not_allowed', status: 403 });
  });

  it('records what it saw in the trace', () => {
    const t1: Record<string, unknown> = {};
    stage.run(ctx(ROUTER, t1));
    expect(t1.peer).toEqual({ presented: ROUTER, allowed: [ROUTER], result: 'allowed' });
    const t2: Record<string, unknown> = {};
    stage.run(ctx(WLM, t2));
    expect(t2.peer).toMatchObject({ presented: WLM, result: 'not_allowed' });
    const t3: Record<string, unknown> = {};
    stage.run(ctx(undefined, t3));
    expect(t3.peer).toMatchObject({ presented: null, result: 'missing' });
  });
});

// ---------------------------------------------------------------------------
// Through the config checker and the decider, as the app wires them.

const T0 = 1_700_000_000_000;
const ISS = 'https://idp.example/realms/acme';

const YAML = `
issuers:
  - name: acme
    issuer: ${ISS}
    audiences: [wlm]
routes:
  - name: wlm-anon
    match: { path: "/v1/anon/**" }
    allow: anonymous
    require: { peers: ["${ROUTER}"] }
  - name: wlm-authn
    match: { path: "/v1/sandboxes/{id}" }
    require:
      roles: { anyOf: [sandbox:manage] }
      peers: ["${ROUTER}", "spiffe://cluster.local/ns/ops/*"]
  - name: open
    match: { path: /v1/open }
    allow: anonymous
`;

let key: TestKey;
beforeAll(async () => {
  key = await generateTestKey('ES256', 'k1');
});

const factories = () => createStageModules().map((m) => m.factory);

function compile(yaml: string): { ok: true; decider: Decider; config: Config } | { ok: false; issues: ConfigIssue[] } {
  const config = parseConfig(yaml);
  const checked = checkConfig(config, config.listen.admin, factories());
  if (!checked.ok) return { ok: false, issues: checked.issues };
  const clock = createFakeClock(T0).clock;
  const issuers: IssuerRuntime[] = config.issuers.map((i) => ({
    name: i.name,
    issuer: i.issuer,
    audiences: new Set(i.audiences),
    algorithms: new Set(i.algorithms),
    roleClaims: [['realm_access', 'roles']],
    subjectClaim: i.subjectClaim,
    clockSkewMs: 30_000,
    keys: createStaticKeySource([resolvedKeyOf(key)]),
  }));
  const verifier = createVerifier({ clock, issuers, roles: createRoleResolver(config.roles), cacheMaxEntries: 100 });
  return { ok: true, config, decider: createDecider({ policy: checked.policy, verifier }) };
}

function deciderOf(yaml: string): Decider {
  const c = compile(yaml);
  if (!c.ok) throw new Error(`config refused: ${JSON.stringify(c.issues)}`);
  return c.decider;
}

function req(path: string, opts: { peer?: string; token?: string } = {}): CheckInput {
  const headers = new Map<string, string>();
  if (opts.token !== undefined) headers.set('authorization', `Bearer ${opts.token}`);
  return { method: 'GET', host: 'wlm.example', path, query: '', headers, peerPrincipal: opts.peer, contextExtensions: new Map() };
}

async function decide(d: Decider, input: CheckInput, trace?: DecisionTrace): Promise<Decision> {
  return d.decide(input, trace);
}

function expectDeny(d: Decision, reason: string, status: number): Deny {
  expect(d.kind).toBe('deny');
  const deny = d as Deny;
  expect({ reason: deny.reason, status: deny.status }).toEqual({ reason, status });
  return deny;
}

function token(roles: string[], extra: Record<string, unknown> = {}): Promise<string> {
  const now = T0 / 1000;
  return signToken({ iss: ISS, aud: 'wlm', sub: 'alice', iat: now, exp: now + 300, realm_access: { roles }, ...extra }, { key });
}

describe('peer policy through checkConfig and the decider', () => {
  it('the peer stage is registered and compiled in the `before` phase', () => {
    const f = createPeerStageFactory();
    const config = parseConfig(YAML);
    const c = f.compile(config.routes[0] as Config['routes'][number], 'routes[0]', config);
    expect(c).toMatchObject({ phase: 'before' });
    expect(f.compile(config.routes[2] as Config['routes'][number], 'routes[2]', config)).toBeUndefined();
    expect(factories().map((x) => x.name)).toContain('peer');
  });

  it('a peer-restricted anonymous route allows only the listed peer', async () => {
    const d = deciderOf(YAML);
    expect((await decide(d, req('/v1/anon/x', { peer: ROUTER }))).kind).toBe('allow');
    expect((await decide(d, req('/v1/anon/x', { peer: 'spiffe://CLUSTER.local/ns/agentcube-system/sa/router' }))).kind).toBe('allow');
    const denied = expectDeny(await decide(d, req('/v1/anon/x', { peer: WLM })), 'peer_not_allowed', 403);
    expect(denied.route).toBe('wlm-anon');
    expect(denied.headers.find((h) => h.name === 'www-authenticate')).toBeUndefined();
    expectDeny(await decide(d, req('/v1/anon/x')), 'peer_missing', 403);
    // A route without peers does not care.
    expect((await decide(d, req('/v1/open'))).kind).toBe('allow');
    expect((await decide(d, req('/v1/open', { peer: WLM }))).kind).toBe('allow');
  });

  it('the peer check runs before credentials: a bad token from a disallowed or missing peer is a 403, not a 401', async () => {
    const d = deciderOf(YAML);
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { peer: WLM, token: 'not.a.jwt' })), 'peer_not_allowed', 403);
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { peer: WLM })), 'peer_not_allowed', 403);
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { token: 'not.a.jwt' })), 'peer_missing', 403);
    // Even a perfectly valid token does not help a disallowed peer.
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { peer: WLM, token: await token(['sandbox:manage']) })), 'peer_not_allowed', 403);
  });

  it('an allowed peer still needs valid credentials and roles on an authenticated route', async () => {
    const d = deciderOf(YAML);
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { peer: ROUTER })), 'missing_credentials', 401);
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { peer: ROUTER, token: 'not.a.jwt' })), 'token_malformed', 401);
    expectDeny(await decide(d, req('/v1/sandboxes/s1', { peer: ROUTER, token: await token([]) })), 'missing_role', 403);
    const ok = await decide(d, req('/v1/sandboxes/s1', { peer: ROUTER, token: await token(['sandbox:manage']) }));
    expect(ok.kind).toBe('allow');
    // The prefix pattern of the same route.
    const ops = await decide(d, req('/v1/sandboxes/s1', { peer: 'spiffe://cluster.local/ns/ops/sa/cli', token: await token(['sandbox:manage']) }));
    expect(ops.kind).toBe('allow');
    expectDeny(
      await decide(d, req('/v1/sandboxes/s1', { peer: 'spiffe://cluster.local/ns/opsx/sa/cli', token: await token(['sandbox:manage']) })),
      'peer_not_allowed',
      403,
    );
  });

  it('the decision trace shows the peer check', async () => {
    const d = deciderOf(YAML);
    const trace: DecisionTrace = {};
    await decide(d, req('/v1/anon/x', { peer: WLM }), trace);
    expect(trace.stages?.peer).toMatchObject({ presented: WLM, result: 'not_allowed' });
  });

  it('invalid peer patterns are config issues with paths routes[i].require.peers[j]', () => {
    const yaml = `
routes:
  - name: ok
    match: { path: /ok }
    allow: anonymous
    require: { peers: ["${ROUTER}"] }
  - name: bad
    match: { path: /bad }
    allow: anonymous
    require: { peers: ["${ROUTER}", "spiffe://td/ns/x/", "router", "spiffe://td/ns/../x/*"] }
`;
    const c = compile(yaml);
    expect(c.ok).toBe(false);
    if (c.ok) return;
    expect(c.issues.map((i) => i.path)).toEqual(['routes[1].require.peers[1]', 'routes[1].require.peers[2]', 'routes[1].require.peers[3]']);
    expect(c.issues[1]?.message).toContain('"router"');
  });

  it('an empty peers list is refused by the schema', () => {
    expect(() => parseConfig('routes: [{ name: r, match: { path: /r }, allow: anonymous, require: { peers: [] } }]')).toThrow(/routes\[0\]\.require\.peers/);
  });

  it('listen.tls.allowedClients patterns are checked the same way', () => {
    const config = parseConfig(`
listen:
  tls:
    certFile: /x/tls.crt
    keyFile: /x/tls.key
    caFile: /x/ca.crt
    allowedClients: ["${ROUTER}", "spiffe://td/ns//x", "spiffe://td/*"]
`);
    const checked = checkConfig(config, config.listen.admin, factories());
    expect(checked.ok).toBe(false);
    if (checked.ok) return;
    expect(checked.issues.map((i) => i.path)).toEqual(['listen.tls.allowedClients[1]']);
  });
});
