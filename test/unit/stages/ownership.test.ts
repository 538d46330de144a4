import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import type { KubeClient } from '../../../src/adapters/kubernetes/client.js';
import { KubeError } from '../../../src/adapters/kubernetes/errors.js';
import { configSchema, type Config, type ConfigInput } from '../../../src/config/schema.js';
import { checkConfig } from '../../../src/config/validate.js';
import { isDenial, type Denial } from '../../../src/core/errors.js';
import type { CheckInput, Principal } from '../../../src/core/types.js';
import { createLogger } from '../../../src/observability/logger.js';
import type { RouteStage, StageContext, StageResult } from '../../../src/pipeline/stage.js';
import { createOwnershipModule, type OwnershipModuleOptions } from '../../../src/stages/ownership.js';
import type { StageModule } from '../../../src/stages/registry.js';
import { createFakeClock, settle, type FakeClock } from '../../helpers/fake-clock.js';
import { createFakeKube, refused, type FakeKube } from '../adapters/kubernetes/fake-kube.js';

const SANDBOXES = {
  name: 'sandboxes',
  group: 'agentcube.io',
  version: 'v1alpha1',
  resource: 'sandboxes',
  namespace: 'agentcube',
  maxStalenessSeconds: 30,
  fallbackGet: { enabled: true, perSecond: 1 },
};

function configWith(over: Partial<ConfigInput> = {}, owner: Record<string, unknown> = { resource: 'sandboxes' }): Config {
  return configSchema.parse({
    issuers: [{ name: 'dev', issuer: 'https://idp.example/realms/dev', audiences: ['x'] }],
    kubernetes: { resources: [SANDBOXES] },
    routes: [{ name: 'invoke', match: { path: '/v1/sandboxes/{id}/invoke' }, require: { owner } }],
    ...over,
  });
}

function principal(sub: string, issuerName = 'dev'): Principal {
  return {
    issuerName,
    issuer: `https://idp.example/realms/${issuerName}`,
    sub,
    qualifiedSub: `${issuerName}/${sub}`,
    roles: [],
    effectiveRoles: new Set(),
    claims: {},
    token: 't',
    expiresAt: 0,
    source: 'header:authorization',
  };
}

const INPUT: CheckInput = { method: 'POST', host: 'h', path: '/', query: '', headers: new Map(), contextExtensions: new Map() };

function ctx(id: string, who: Principal | undefined = principal('alice'), extra: Partial<StageContext> = {}): StageContext {
  return { input: INPUT, routeName: 'invoke', params: { id }, principal: who, ...extra };
}

interface Harness {
  kube: FakeKube;
  clock: FakeClock;
  registry: Registry;
  module: StageModule;
  connects: (string | undefined)[];
  stage(config?: Config): RouteStage;
  metric(name: string, labels: Record<string, string>): Promise<number | undefined>;
}

function harness(opts: OwnershipModuleOptions = {}): Harness {
  const kube = createFakeKube(100);
  const clock = createFakeClock(1_000_000);
  const registry = new Registry();
  const connects: (string | undefined)[] = [];
  const module = createOwnershipModule(
    { clock: clock.clock, scheduler: clock.scheduler, fetch: () => Promise.reject(new Error('no fetch')), logger: createLogger({ level: 'silent' }), registry },
    {
      connect: async (kubeconfig): Promise<KubeClient> => {
        connects.push(kubeconfig);
        return kube.client;
      },
      ...opts,
    },
  );
  return {
    kube,
    clock,
    registry,
    module,
    connects,
    stage(config = configWith()) {
      const route = config.routes[0];
      if (!route) throw new Error('no route');
      const c = module.factory.compile(route, 'routes[0]', config);
      if (!c || 'issues' in c) throw new Error(`did not compile: ${JSON.stringify(c)}`);
      expect(c.phase).toBe('after');
      return c.stage;
    },
    async metric(name, labels) {
      const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
      return m?.values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value;
    },
  };
}

/** Prepares `config`, lets the first list complete and opens the watch. */
async function ready(h: Harness, config = configWith()): Promise<RouteStage> {
  await h.module.prepare?.(config);
  h.module.activated?.(config);
  await settle();
  h.kube.current()?.open();
  return h.stage(config);
}

function reasonOf(r: StageResult): string {
  return isDenial(r) ? r.reason : 'allow';
}

describe('ownership stage: decisions', () => {
  it('allows the owner, synchronously, on a cache hit', async () => {
    const h = harness();
    h.kube.put('agentcube', 'sbx-1', 'dev.alice', false);
    const stage = await ready(h);
    const r = stage.run(ctx('sbx-1'));
    expect(r).not.toBeInstanceOf(Promise);
    expect(r).toBeUndefined();
    expect(await h.metric('portcullis_owner_lookups_total', { resource: 'sandboxes', result: 'hit' })).toBe(1);
  });

  it('denies another user not_owner (403), and the same sub from another realm too', async () => {
    const h = harness();
    h.kube.put('agentcube', 'sbx-1', 'dev.alice', false);
    const stage = await ready(h);
    const other = stage.run(ctx('sbx-1', principal('bob'))) as Denial;
    expect(other).toMatchObject({ reason: 'not_owner', status: 403 });
    expect(other.message).not.toContain('alice'); // the owner is never revealed
    expect(reasonOf(stage.run(ctx('sbx-1', principal('alice', 'realm2')))  as StageResult)).toBe('not_owner');
  });

  it('denies not_owner when the object has no owner label', async () => {
    const h = harness();
    h.kube.put('agentcube', 'sbx-1', undefined, false);
    const stage = await ready(h);
    expect(reasonOf(stage.run(ctx('sbx-1')) as StageResult)).toBe('not_owner');
  });

  it('an unknown name: one direct GET; 404 → resource_not_found (403), found → compared', async () => {
    const h = harness();
    const stage = await ready(h);
    const missing = stage.run(ctx('nope'));
    expect(missing).toBeInstanceOf(Promise);
    expect(await missing).toMatchObject({ reason: 'resource_not_found', status: 403 });
    // created a moment ago, watch event not here yet
    h.kube.put('agentcube', 'fresh', 'dev.alice', false);
    h.clock.advance(1_000);
    expect(await stage.run(ctx('fresh'))).toBeUndefined();
    h.clock.advance(1_000);
    expect(reasonOf(await stage.run(ctx('fresh', principal('bob'))))).toBe('not_owner');
    expect(h.kube.gets.map((g) => g.name)).toEqual(['nope', 'fresh', 'fresh']);
    expect(await h.metric('portcullis_owner_lookups_total', { resource: 'sandboxes', result: 'get_not_found' })).toBe(1);
    expect(await h.metric('portcullis_owner_lookups_total', { resource: 'sandboxes', result: 'get_found' })).toBe(2);
  });

  it('direct GETs are rate-limited (token bucket on the injected clock): over the rate, a miss is resource_not_found without a request', async () => {
    const h = harness();
    const stage = await ready(h, configWith({ kubernetes: { resources: [{ ...SANDBOXES, fallbackGet: { perSecond: 2 } }] } }));
    await stage.run(ctx('a'));
    await stage.run(ctx('b'));
    const limited = stage.run(ctx('c'));
    expect(limited).not.toBeInstanceOf(Promise);
    expect(reasonOf(limited as StageResult)).toBe('resource_not_found');
    expect(h.kube.gets).toHaveLength(2);
    h.clock.advance(499);
    expect(stage.run(ctx('d'))).not.toBeInstanceOf(Promise);
    h.clock.advance(1);
    expect(stage.run(ctx('e'))).toBeInstanceOf(Promise);
    expect(h.kube.gets).toHaveLength(3);
    expect(await h.metric('portcullis_owner_lookups_total', { resource: 'sandboxes', result: 'rate_limited' })).toBe(2);
  });

  it('concurrent misses for the same object share one GET', async () => {
    const h = harness();
    h.kube.put('agentcube', 'x', 'dev.alice', false);
    const stage = await ready(h);
    h.kube.remove('agentcube', 'x'); // cache forgets it
    h.kube.put('agentcube', 'x', 'dev.alice', false);
    h.kube.holdGets = true;
    const a = stage.run(ctx('x'));
    const b = stage.run(ctx('x', principal('bob')));
    h.kube.releaseGets();
    expect(await a).toBeUndefined();
    expect(reasonOf(await b)).toBe('not_owner');
    expect(h.kube.gets).toHaveLength(1);
  });

  it('fallback GET disabled: a miss is resource_not_found at once', async () => {
    const h = harness();
    const stage = await ready(h, configWith({ kubernetes: { resources: [{ ...SANDBOXES, fallbackGet: { enabled: false } }] } }));
    const r = stage.run(ctx('nope'));
    expect(r).not.toBeInstanceOf(Promise);
    expect(reasonOf(r as StageResult)).toBe('resource_not_found');
    expect(h.kube.gets).toHaveLength(0);
  });

  it('a GET that fails is owner_unavailable (503)', async () => {
    const h = harness();
    const stage = await ready(h);
    h.kube.getAnswer = () => Promise.reject(new KubeError('ERR_KUBE_HTTP', 'forbidden', { status: 403 }));
    expect(await stage.run(ctx('nope'))).toMatchObject({ reason: 'owner_unavailable', status: 503 });
  });

  it('before the first list: a GET answers when allowed, else owner_unavailable (503)', async () => {
    const h = harness();
    h.kube.failLists.push(refused(), refused(), refused());
    h.kube.put('agentcube', 'sbx-1', 'dev.alice', false);
    const config = configWith();
    await h.module.prepare?.(config); // does not wait for the API server
    const stage = h.stage(config);
    expect(await stage.run(ctx('sbx-1'))).toBeUndefined(); // via GET
    const r = stage.run(ctx('sbx-1')); // bucket empty (1/s)
    expect(r).not.toBeInstanceOf(Promise);
    expect(r).toMatchObject({ reason: 'owner_unavailable', status: 503 });
    expect(h.module.health?.()).toEqual([expect.objectContaining({ name: 'ownership:sandboxes', ready: false })]);
  });

  it('stale beyond maxStalenessSeconds while the watch is down → owner_unavailable; within it the cache answers', async () => {
    const h = harness();
    h.kube.put('agentcube', 'sbx-1', 'dev.alice', false);
    const stage = await ready(h, configWith({ kubernetes: { resources: [{ ...SANDBOXES, fallbackGet: { enabled: false } }] } }));
    h.kube.current()?.end({ kind: 'error', error: refused() });
    h.kube.failLists.push(refused());
    h.clock.advance(30_000);
    expect(stage.run(ctx('sbx-1'))).toBeUndefined();
    expect(reasonOf(stage.run(ctx('sbx-1', principal('bob'))) as StageResult)).toBe('not_owner');
    h.clock.advance(1);
    expect(stage.run(ctx('sbx-1'))).toMatchObject({ reason: 'owner_unavailable', status: 503 });
    expect(stage.run(ctx('unknown'))).toMatchObject({ reason: 'owner_unavailable' });
    // readiness keeps saying synced: one stale resource must not take every route down
    expect(h.module.health?.()[0]).toMatchObject({ ready: true, detail: { synced: true, connected: false, fresh: false } });
  });

  it('names Kubernetes would refuse are resource_not_found without lookup or request', async () => {
    const h = harness();
    const stage = await ready(h);
    for (const id of ['UPPER', 'a_b', '..', 'x'.repeat(254), '']) {
      expect(stage.run(ctx(id))).toMatchObject({ reason: 'resource_not_found' });
    }
    expect(h.kube.gets).toHaveLength(0);
  });

  it('dryRun never issues a GET and counts nothing', async () => {
    const h = harness();
    const stage = await ready(h);
    const trace: Record<string, unknown> = {};
    const r = stage.run(ctx('nope', principal('alice'), { dryRun: true, trace }));
    expect(r).not.toBeInstanceOf(Promise);
    expect(r).toMatchObject({ reason: 'resource_not_found' });
    expect(h.kube.gets).toHaveLength(0);
    expect(trace.ownership).toMatchObject({ source: 'cache', note: 'direct GET skipped (dry run)' });
    expect(await h.metric('portcullis_owner_lookups_total', { resource: 'sandboxes', result: 'absent' })).toBeUndefined();
  });

  it('records trace facts: resource, namespace, name, identity, owner, source, result', async () => {
    const h = harness();
    h.kube.put('agentcube', 'sbx-1', 'dev.alice', false);
    const stage = await ready(h);
    const trace: Record<string, unknown> = {};
    stage.run(ctx('sbx-1', principal('bob'), { trace }));
    expect(trace.ownership).toEqual({
      resource: 'sandboxes',
      namespace: 'agentcube',
      name: 'sbx-1',
      identity: 'dev.bob',
      owner: 'dev.alice',
      source: 'cache',
      result: 'not_owner',
    });
    const t2: Record<string, unknown> = {};
    await stage.run(ctx('gone', principal('bob'), { trace: t2 }));
    expect(t2.ownership).toMatchObject({ source: 'get', result: 'resource_not_found' });
  });

  it('templates: name, namespace (resource watched everywhere) and identity', async () => {
    const h = harness();
    h.kube.put('team-a', 'sbx-1', 'alice@realm', false);
    const config = configSchema.parse({
      kubernetes: { resources: [{ ...SANDBOXES, namespace: undefined }] },
      routes: [
        {
          name: 'invoke',
          match: { path: '/v1/ns/{ns}/sandboxes/{sid}' },
          require: { owner: { resource: 'sandboxes', name: '{path.sid}', namespace: '{path.ns}', identity: '{sub}@{issuer.name}' } },
        },
      ],
    });
    const stage = await ready(h, config);
    const c = (ns: string, sid: string, p: Principal): StageContext => ({ input: INPUT, routeName: 'invoke', params: { ns, sid }, principal: p });
    expect(stage.run(c('team-a', 'sbx-1', principal('alice', 'realm')))).toBeUndefined();
    expect(reasonOf(stage.run(c('team-a', 'sbx-1', principal('alice', 'dev'))) as StageResult)).toBe('not_owner');
    expect(reasonOf(await stage.run(c('team-b', 'sbx-1', principal('alice', 'realm'))))).toBe('resource_not_found');
  });

  it('a stage compiled without services (portcullis validate) answers owner_unavailable and starts nothing', () => {
    const module = createOwnershipModule();
    const config = configWith();
    const c = module.factory.compile(config.routes[0] as Config['routes'][number], 'routes[0]', config);
    if (!c || 'issues' in c) throw new Error('did not compile');
    expect(c.stage.run(ctx('sbx-1'))).toMatchObject({ reason: 'owner_unavailable' });
  });
});

describe('ownership stage: configuration', () => {
  const issuesOf = (input: Record<string, unknown>): { path: string; message: string }[] => {
    const parsed = configSchema.safeParse(input);
    if (!parsed.success) return parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
    const checked = checkConfig(parsed.data, '127.0.0.1:9901', [createOwnershipModule().factory]);
    return checked.ok ? [] : checked.issues;
  };
  const base = (owner: Record<string, unknown>, resources: unknown[] = [SANDBOXES], path = '/v1/sandboxes/{id}/invoke'): Record<string, unknown> => ({
    issuers: [{ name: 'dev', issuer: 'https://idp.example/realms/dev', audiences: ['x'] }],
    kubernetes: { resources },
    routes: [{ name: 'invoke', match: { path }, require: { owner } }],
  });

  it('defaults: name {path.id}, identity {issuer.name}.{sub}, label agentcube.io/owner, staleness 300 s, GET 5/s', () => {
    const c = configSchema.parse(base({ resource: 'sandboxes' }, [{ name: 'sandboxes', group: 'agentcube.io', version: 'v1alpha1', resource: 'sandboxes' }]));
    expect(c.routes[0]?.require.owner).toEqual({ resource: 'sandboxes', name: '{path.id}', identity: '{issuer.name}.{sub}' });
    expect(c.kubernetes.resources[0]).toMatchObject({ ownerLabel: 'agentcube.io/owner', maxStalenessSeconds: 300, fallbackGet: { enabled: true, perSecond: 5 } });
    expect(configSchema.parse({}).kubernetes).toEqual({ resources: [] });
  });

  it('an unknown resource is reported at routes[i].require.owner.resource', () => {
    expect(issuesOf(base({ resource: 'pods' }))).toEqual([
      { path: 'routes[0].require.owner.resource', message: 'unknown resource "pods"; kubernetes.resources has: sandboxes' },
    ]);
  });

  it('template errors are reported at their keys', () => {
    const issues = issuesOf(base({ resource: 'sandboxes', name: '{path.sid}', identity: '{nope}' }));
    expect(issues.map((i) => i.path)).toEqual(['routes[0].require.owner.name', 'routes[0].require.owner.identity']);
  });

  it('namespace: required for a resource watched everywhere, refused for one watched in a namespace', () => {
    expect(issuesOf(base({ resource: 'sandboxes' }, [{ ...SANDBOXES, namespace: undefined }])).map((i) => i.path)).toEqual([
      'routes[0].require.owner.namespace',
    ]);
    expect(issuesOf(base({ resource: 'sandboxes', namespace: 'x' })).map((i) => i.path)).toEqual(['routes[0].require.owner.namespace']);
  });

  it('needs an authenticated route', () => {
    const input = base({ resource: 'sandboxes' });
    (input.routes as Record<string, unknown>[])[0] = { name: 'invoke', match: { path: '/v1/sandboxes/{id}' }, allow: 'anonymous', require: { owner: { resource: 'sandboxes' } } };
    expect(issuesOf(input).map((i) => i.path)).toEqual(['routes[0]']);
  });

  it('label key, group, version, plural and namespace syntax; duplicate resource names', () => {
    const bad = [
      { ...SANDBOXES, ownerLabel: 'agentcube.io/owner/x' },
      { ...SANDBOXES, name: 's2', ownerLabel: 'Bad_Prefix.io/owner' },
      { ...SANDBOXES, name: 's3', ownerLabel: `x/${'a'.repeat(64)}` },
      { ...SANDBOXES, name: 's4', group: 'Agentcube.IO' },
      { ...SANDBOXES, name: 's5', version: '1' },
      { ...SANDBOXES, name: 's6', resource: 'Sandboxes' },
      { ...SANDBOXES, name: 's7', namespace: 'a_b' },
      { ...SANDBOXES },
    ];
    const paths = issuesOf(base({ resource: 'sandboxes' }, bad)).map((i) => i.path);
    expect(paths).toEqual([
      'kubernetes.resources.0.ownerLabel',
      'kubernetes.resources.1.ownerLabel',
      'kubernetes.resources.2.ownerLabel',
      'kubernetes.resources.3.group',
      'kubernetes.resources.4.version',
      'kubernetes.resources.5.resource',
      'kubernetes.resources.6.namespace',
      'kubernetes.resources.7.name',
    ]);
    expect(issuesOf(base({ resource: 'pods' }, [{ name: 'pods', group: '', version: 'v1', resource: 'pods', namespace: 'agentcube', ownerLabel: 'owner' }]))).toEqual([]);
  });
});

describe('ownership module: lifecycle', () => {
  it('prepare does not wait for the API server at start-up; readiness reports not synced until the list completes', async () => {
    const h = harness();
    h.kube.failLists.push(refused());
    await h.module.prepare?.(configWith());
    expect(h.module.health?.()).toEqual([
      expect.objectContaining({ name: 'ownership:sandboxes', ready: false, detail: expect.objectContaining({ synced: false, lastError: 'connect ECONNREFUSED' }) }),
    ]);
    await h.clock.advanceAsync(500);
    expect(h.module.health?.()[0]).toMatchObject({ ready: true, detail: { synced: true } });
  });

  it('keeps a cache across reloads with the same settings, replaces it when they change, stops it when unused', async () => {
    const h = harness();
    const a = configWith();
    await ready(h, a);
    expect(h.kube.lists).toHaveLength(1);
    // same settings, another route: nothing restarts
    const b = configWith({ routes: [...a.routes.map((r) => ({ ...r })), { name: 'other', match: { path: '/x/{id}' }, require: { owner: { resource: 'sandboxes' } } }] });
    await h.module.prepare?.(b);
    h.module.activated?.(b);
    expect(h.kube.lists).toHaveLength(1);
    expect(h.kube.watches.filter((w) => w.stopped)).toHaveLength(0);
    // changed settings: a new cache (the reload waits for its first list), the old one stops after the swap
    const c = configWith({ kubernetes: { resources: [{ ...SANDBOXES, maxStalenessSeconds: 60 }] } });
    await h.module.prepare?.(c);
    expect(h.kube.lists).toHaveLength(2);
    expect(h.kube.watches[0]?.stopped).toBe(false);
    h.module.activated?.(c);
    expect(h.kube.watches[0]?.stopped).toBe(true);
    expect(h.module.health?.()).toHaveLength(1);
    // no route uses it: stopped, client closed
    const d = configWith({ routes: [] });
    await h.module.prepare?.(d);
    h.module.activated?.(d);
    expect(h.module.health?.()).toEqual([]);
    expect(h.kube.current()).toBeUndefined();
    expect(h.kube.closed).toBe(true);
    expect(h.connects).toEqual([undefined]); // one client for the kubeconfig, shared by both caches
  });

  it('a kubeconfig that cannot be loaded is a configuration error at kubernetes.kubeconfig', async () => {
    const module = createOwnershipModule(
      { clock: { now: () => 0 }, scheduler: createFakeClock().scheduler, fetch: () => Promise.reject(new Error('x')), logger: createLogger({ level: 'silent' }), registry: new Registry() },
      { connect: () => Promise.reject(new Error('ENOENT: /nope')) },
    );
    const err = await module.prepare?.(configWith({ kubernetes: { kubeconfig: '/nope', resources: [SANDBOXES] } })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_CONFIG_INVALID', issues: [{ path: 'kubernetes.kubeconfig' }] });
  });

  it('exports cache size, watch restarts and connection state per resource', async () => {
    const h = harness();
    h.kube.put('agentcube', 'a', 'dev.alice', false);
    h.kube.put('agentcube', 'b', 'dev.bob', false);
    await ready(h);
    expect(await h.metric('portcullis_owner_cache_objects', { resource: 'sandboxes' })).toBe(2);
    expect(await h.metric('portcullis_owner_watch_connected', { resource: 'sandboxes' })).toBe(1);
    h.kube.current()?.end({ kind: 'error', error: refused() });
    expect(await h.metric('portcullis_owner_watch_restarts_total', { resource: 'sandboxes', reason: 'error' })).toBe(1);
    expect(await h.metric('portcullis_owner_watch_connected', { resource: 'sandboxes' })).toBe(0);
    await h.module.stop?.();
    expect(h.clock.pending()).toHaveLength(0);
  });
});
