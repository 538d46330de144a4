import { Counter, Gauge, type Registry } from 'prom-client';
import { createKubeClient, type KubeClient } from '../adapters/kubernetes/client.js';
import { createFallbackGet, type DirectLookup, type FallbackGet } from '../adapters/kubernetes/fallback-get.js';
import { loadKubeConfig } from '../adapters/kubernetes/kubeconfig.js';
import { createOwnerCache, type OwnerCache, type OwnerCacheSettings, type OwnerLookup, type RestartReason } from '../adapters/kubernetes/owner-cache.js';
import { describeResource, isNamespaceName, isObjectName, type ResourceRef } from '../adapters/kubernetes/resource.js';
import type { Config } from '../config/schema.js';
import { compileTemplate, type CompiledTemplate, type TemplateContext } from '../config/template.js';
import { ConfigError, denial, type ConfigIssue, type Denial } from '../core/errors.js';
import type { Scheduler, TimerHandle } from '../core/types.js';
import type { Logger } from '../observability/logger.js';
import { createDeferredCounter, type DeferredCounter } from '../observability/metrics.js';
import type { RouteStage, StageContext, StageFactory, StageResult } from '../pipeline/stage.js';
import type { StageModule, StageServices } from './registry.js';

/**
 * Resource-level access control: the object a request names (a Sandbox, by
 * the `{id}` in its path) must carry the caller's identity in its owner label.
 *
 *   cache current, object known    → owner == identity ? continue : 403 not_owner
 *                                     (no owner label: 403 not_owner)
 *   cache current, object unknown  → one direct GET if the rate allows
 *                                     (found: compare; 404: 403 resource_not_found;
 *                                     error: 503 owner_unavailable), else 403 resource_not_found
 *   cache not synced or too stale  → one direct GET if the rate allows, else 503 owner_unavailable
 *
 * A cache hit is answered synchronously. Owners come from one list+watch
 * cache per configured resource (adapters/kubernetes/owner-cache.ts), started
 * in prepare() for the resources routes use and kept across reloads while
 * their settings stay the same.
 */
export const OWNERSHIP_STAGE = 'ownership';

type KubernetesResourceConfig = Config['kubernetes']['resources'][number];

/** The `result` label of portcullis_owner_lookups_total. */
export type LookupResult = 'hit' | 'absent' | 'unavailable' | 'rate_limited' | 'get_found' | 'get_not_found' | 'get_error';
const LOOKUP_RESULTS: readonly LookupResult[] = ['hit', 'absent', 'unavailable', 'rate_limited', 'get_found', 'get_not_found', 'get_error'];

/** What the stage needs from a watched resource at decision time. */
export interface OwnerSource {
  lookup(namespace: string, name: string): OwnerLookup;
  /** Absent when direct GETs are disabled for the resource. */
  readonly fallback?: FallbackGet;
  count(result: LookupResult): void;
}

export interface OwnershipStageSpec {
  /** The resource's configured name (messages, trace). */
  resource: string;
  name: CompiledTemplate;
  /** Fixed namespace (resource watched in one namespace) or a template (watched everywhere). */
  namespace: string | CompiledTemplate;
  identity: CompiledTemplate;
  /** The source once prepare() started it; undefined before (or without services): owner_unavailable. */
  source(): OwnerSource | undefined;
}

interface Traced {
  resource: string;
  namespace: string;
  name: string;
  identity?: string;
  /** The owner label found; null: object without one; undefined: object not found or not looked up. */
  owner?: string | null;
  source: 'cache' | 'get' | 'none';
  result: 'owner' | Denial['reason'];
  note?: string;
}

export function createOwnershipStage(spec: OwnershipStageSpec): RouteStage {
  const { resource } = spec;
  const notFound = (name: string): Denial => denial('resource_not_found', `${resource} "${name}" does not exist`);
  const unavailable = (name: string): Denial =>
    denial('owner_unavailable', `the owner of ${resource} "${name}" cannot be checked right now`);
  const notOwner = (name: string): Denial => denial('not_owner', `not the owner of ${resource} "${name}"`);

  function compare(owner: string | null, identity: string, name: string, t: Traced | undefined, source: 'cache' | 'get'): StageResult {
    const ok = owner !== null && identity !== '' && owner === identity;
    if (t) {
      t.owner = owner;
      t.source = source;
      t.result = ok ? 'owner' : 'not_owner';
    }
    return ok ? undefined : notOwner(name);
  }

  function refuse(d: Denial, t: Traced | undefined, source: Traced['source'], note?: string): Denial {
    if (t) {
      t.source = source;
      t.result = d.reason;
      if (note) t.note = note;
    }
    return d;
  }

  return {
    name: OWNERSHIP_STAGE,
    run(ctx: StageContext): StageResult | Promise<StageResult> {
      const tctx: TemplateContext = { principal: ctx.principal, route: ctx.routeName, params: ctx.params };
      const name = spec.name.render(tctx);
      const namespace = typeof spec.namespace === 'string' ? spec.namespace : spec.namespace.render(tctx);
      const identity = spec.identity.render(tctx);
      let t: Traced | undefined;
      if (ctx.trace) {
        t = { resource, namespace, name, identity, source: 'none', result: 'owner' };
        ctx.trace[OWNERSHIP_STAGE] = t;
      }
      // A name Kubernetes would refuse cannot exist: no lookup, no request.
      if (!isObjectName(name) || !isNamespaceName(namespace)) return refuse(notFound(name), t, 'none', 'not a valid object name');
      const src = spec.source();
      if (!src) return refuse(unavailable(name), t, 'none', 'no owner cache');
      const cached = src.lookup(namespace, name);
      if (cached.kind === 'hit') {
        if (!ctx.dryRun) src.count('hit');
        return compare(cached.owner, identity, name, t, 'cache');
      }
      // explain (dry run) counts nothing
      const count = (r: LookupResult): void => {
        if (!ctx.dryRun) src.count(r);
      };
      const fromCache = (): Denial => (cached.kind === 'absent' ? notFound(name) : unavailable(name));
      const why = cached.kind === 'unavailable' ? `cache ${cached.why.replace('_', ' ')}` : undefined;
      if (!src.fallback || ctx.dryRun) {
        count(cached.kind);
        return refuse(fromCache(), t, 'cache', ctx.dryRun && src.fallback ? 'direct GET skipped (dry run)' : why);
      }
      const pending = src.fallback.get(namespace, name);
      if (!pending) {
        count('rate_limited');
        return refuse(fromCache(), t, 'cache', `direct GET rate-limited${why ? `; ${why}` : ''}`);
      }
      return pending.then((r: DirectLookup): StageResult => {
        switch (r.kind) {
          case 'found':
            count('get_found');
            return compare(r.owner, identity, name, t, 'get');
          case 'not_found':
            count('get_not_found');
            return refuse(notFound(name), t, 'get');
          case 'error':
            count('get_error');
            return refuse(unavailable(name), t, 'get', r.error.code);
        }
      });
    },
  };
}

// ---------------------------------------------------------------------------------------
// Configuration

function pathParams(template: string | undefined): Set<string> {
  const out = new Set<string>();
  if (!template) return out;
  for (const m of template.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)) if (m[1]) out.add(m[1]);
  return out;
}

export function resourceRef(r: KubernetesResourceConfig): ResourceRef {
  return { group: r.group, version: r.version, resource: r.resource, namespace: r.namespace };
}

/** Identifies one cache: any change to the resource's settings or to the kubeconfig makes a new one. */
function fingerprintOf(config: Config, r: KubernetesResourceConfig): string {
  return JSON.stringify([config.kubernetes.kubeconfig ?? null, r]);
}

/** The resources the config's routes use, by fingerprint. */
function resourcesInUse(config: Config): Map<string, KubernetesResourceConfig> {
  const out = new Map<string, KubernetesResourceConfig>();
  for (const route of config.routes) {
    const owner = route.require.owner;
    if (!owner) continue;
    const r = config.kubernetes.resources.find((x) => x.name === owner.resource);
    if (r) out.set(fingerprintOf(config, r), r);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Metrics

interface OwnershipMetrics {
  restarts: Counter<'resource' | 'reason'>;
  /** Counted through each watched resource's bound counts. */
  lookups: DeferredCounter<'resource' | 'result'>;
}

function createOwnershipMetrics(registry: Registry, watched: () => Iterable<WatchedResource>): OwnershipMetrics {
  const registers = [registry];
  new Gauge({
    name: 'portcullis_owner_cache_objects',
    help: 'Objects (name → owner) held in the owner cache, per resource',
    labelNames: ['resource'],
    registers,
    collect() {
      this.reset();
      for (const w of watched()) this.set({ resource: w.name }, w.cache.status().objects);
    },
  });
  new Gauge({
    name: 'portcullis_owner_watch_connected',
    help: '1 while the owner cache watch of a resource is open, else 0',
    labelNames: ['resource'],
    registers,
    collect() {
      this.reset();
      for (const w of watched()) this.set({ resource: w.name }, w.cache.status().connected ? 1 : 0);
    },
  });
  return {
    restarts: new Counter({
      name: 'portcullis_owner_watch_restarts_total',
      help: 'Owner cache watch restarts per resource by reason (closed|gone|error|idle|list_error)',
      labelNames: ['resource', 'reason'],
      registers,
    }),
    lookups: createDeferredCounter({
      name: 'portcullis_owner_lookups_total',
      help: 'Ownership lookups per resource by result (hit|absent|unavailable|rate_limited|get_found|get_not_found|get_error)',
      labelNames: ['resource', 'result'],
      registers,
    }),
  };
}

// ---------------------------------------------------------------------------------------
// Module

interface WatchedResource extends OwnerSource {
  readonly name: string;
  readonly fingerprint: string;
  readonly ref: ResourceRef;
  readonly clientKey: string;
  readonly cache: OwnerCache;
}

export interface OwnershipModuleOptions {
  /** Builds the API client for a `kubernetes.kubeconfig` setting (undefined = in-cluster or default). Default: the real one. */
  connect?(kubeconfig: string | undefined, scheduler: Scheduler): Promise<KubeClient>;
  /** Cache tuning (tests). */
  cache?: Partial<Omit<OwnerCacheSettings, 'resource' | 'ownerLabel' | 'maxStalenessMs'>>;
  /** On reload, how long new caches get to complete their first list before the swap (default 5 s). Never at start-up. */
  reloadSyncWaitMs?: number;
}

async function connectKube(kubeconfig: string | undefined, scheduler: Scheduler): Promise<KubeClient> {
  return createKubeClient({ kubeConfig: await loadKubeConfig(kubeconfig), scheduler });
}

export function createOwnershipModule(services?: StageServices, opts: OwnershipModuleOptions = {}): StageModule {
  const connect = opts.connect ?? connectKube;
  const reloadSyncWaitMs = opts.reloadSyncWaitMs ?? 5_000;
  /** By fingerprint: what compile() refers to and prepare() starts. */
  const watched = new Map<string, WatchedResource>();
  const clients = new Map<string, KubeClient>();
  const log: Logger | undefined = services?.logger.child({ stage: OWNERSHIP_STAGE });
  const metrics = services ? createOwnershipMetrics(services.registry, () => watched.values()) : undefined;
  let started = false;

  const factory: StageFactory = {
    name: OWNERSHIP_STAGE,
    compile(route, at, config) {
      const req = route.require.owner;
      if (!req) return undefined;
      const where = `${at}.require.owner`;
      const issues: ConfigIssue[] = [];
      const resources = config.kubernetes.resources;
      const r = resources.find((x) => x.name === req.resource);
      if (!r) {
        issues.push({
          path: `${where}.resource`,
          message: `unknown resource "${req.resource}"; kubernetes.resources has: ${resources.map((x) => x.name).join(', ') || '(none)'}`,
        });
      }
      const params = pathParams(route.match.path);
      const template = (key: 'name' | 'namespace' | 'identity', source: string): CompiledTemplate | undefined => {
        const c = compileTemplate(source, params);
        if (c.ok) return c.template;
        issues.push({ path: `${where}.${key}`, message: c.message });
        return undefined;
      };
      const name = template('name', req.name);
      const identity = template('identity', req.identity);
      let namespace: string | CompiledTemplate | undefined;
      if (r?.namespace !== undefined) {
        if (req.namespace !== undefined) {
          issues.push({
            path: `${where}.namespace`,
            message: `resource "${r.name}" is watched in namespace "${r.namespace}" only; drop this, or the resource's namespace to watch every namespace`,
          });
        }
        namespace = r.namespace;
      } else if (r) {
        if (req.namespace === undefined) {
          issues.push({
            path: `${where}.namespace`,
            message: `resource "${r.name}" is watched in every namespace; say which namespace holds the object, e.g. "{path.ns}"`,
          });
        } else namespace = template('namespace', req.namespace);
      }
      if (issues.length > 0 || !r || !name || !identity || namespace === undefined) return { issues };
      const fingerprint = fingerprintOf(config, r);
      return {
        phase: 'after',
        stage: createOwnershipStage({ resource: r.name, name, namespace, identity, source: () => watched.get(fingerprint) }),
      };
    },
  };

  async function clientFor(kubeconfig: string | undefined): Promise<{ key: string; client: KubeClient }> {
    const key = kubeconfig ?? '';
    const existing = clients.get(key);
    if (existing) return { key, client: existing };
    if (!services) throw new Error('no services');
    let client: KubeClient;
    try {
      client = await connect(kubeconfig, services.scheduler);
    } catch (err) {
      throw new ConfigError([
        { path: 'kubernetes.kubeconfig', message: `cannot load the Kubernetes client configuration: ${err instanceof Error ? err.message : String(err)}` },
      ]);
    }
    clients.set(key, client);
    return { key, client };
  }

  function watch(svc: StageServices, m: OwnershipMetrics, r: KubernetesResourceConfig, fingerprint: string, key: string, client: KubeClient): WatchedResource {
    const ref = resourceRef(r);
    const what = describeResource(ref);
    const rlog = log?.child({ resource: r.name });
    const cache = createOwnerCache(
      {
        client,
        clock: svc.clock,
        scheduler: svc.scheduler,
        onRestart(reason: RestartReason, error?: string) {
          m.restarts.inc({ resource: r.name, reason });
          if (reason === 'closed') rlog?.debug({ reason }, 'owner watch resumed');
          else if (reason === 'gone') rlog?.info({ reason }, 'owner watch expired (410 Gone): listing again');
          else rlog?.warn({ reason, error }, `owner watch of ${what} failed; the cache keeps serving within its staleness bound`);
        },
        onSynced(objects) {
          rlog?.info({ objects }, `owner cache of ${what} synced`);
        },
      },
      { ...opts.cache, resource: ref, ownerLabel: r.ownerLabel, maxStalenessMs: r.maxStalenessSeconds * 1000 },
    );
    const fallback = r.fallbackGet.enabled
      ? createFallbackGet(
          { client, clock: svc.clock, ownerOf: (meta) => cache.ownerOf(meta) },
          { resource: ref, perSecond: r.fallbackGet.perSecond, timeoutMs: r.fallbackGet.timeoutMs },
        )
      : undefined;
    const counters = new Map(LOOKUP_RESULTS.map((res) => [res, m.lookups.bind({ resource: r.name, result: res })] as const));
    return {
      name: r.name,
      fingerprint,
      ref,
      clientKey: key,
      cache,
      fallback,
      lookup: (namespace, name) => cache.lookup(namespace, name),
      count: (res) => counters.get(res)?.inc(),
    };
  }

  function waitAtMost(scheduler: Scheduler, ms: number, what: Promise<unknown>): Promise<void> {
    let timer: TimerHandle | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = scheduler.setTimeout(resolve, ms);
      timer.unref?.();
    });
    return Promise.race([what.then(() => undefined), timeout]).finally(() => {
      if (timer) scheduler.clearTimeout(timer);
    });
  }

  return {
    factory,
    async prepare(config) {
      if (!services || !metrics) return;
      const wanted = resourcesInUse(config);
      const fresh: WatchedResource[] = [];
      if ([...wanted.keys()].some((fp) => !watched.has(fp))) {
        const { key, client } = await clientFor(config.kubernetes.kubeconfig);
        for (const [fp, r] of wanted) {
          if (watched.has(fp)) continue;
          const w = watch(services, metrics, r, fp, key, client);
          watched.set(fp, w);
          w.cache.start();
          fresh.push(w);
        }
      }
      // Start-up never waits (readiness reports the sync); a reload gives new caches a moment.
      if (started && fresh.length > 0) await waitAtMost(services.scheduler, reloadSyncWaitMs, Promise.all(fresh.map((w) => w.cache.whenSynced())));
      started = true;
    },
    activated(config) {
      const wanted = resourcesInUse(config);
      for (const [fp, w] of watched) {
        if (wanted.has(fp)) continue;
        w.cache.stop();
        watched.delete(fp);
        log?.info({ resource: w.name }, 'owner cache stopped: no route uses it any more');
      }
      const inUse = new Set([...watched.values()].map((w) => w.clientKey));
      for (const [key, client] of clients) {
        if (inUse.has(key)) continue;
        client.close();
        clients.delete(key);
      }
    },
    health() {
      return [...watched.values()].map((w) => {
        const s = w.cache.status();
        return {
          name: `${OWNERSHIP_STAGE}:${w.name}`,
          // Only the first list gates readiness: once synced, an API outage is bounded by maxStalenessSeconds
          // per lookup, and taking every replica out of the Service would also refuse routes that need no owner.
          ready: s.synced,
          detail: {
            resource: describeResource(w.ref),
            synced: s.synced,
            connected: s.connected,
            fresh: s.fresh,
            objects: s.objects,
            lastSyncAt: s.lastSyncAt !== undefined ? new Date(s.lastSyncAt).toISOString() : undefined,
            lastError: s.lastError,
          },
        };
      });
    },
    async stop() {
      for (const w of watched.values()) w.cache.stop();
      watched.clear();
      for (const c of clients.values()) c.close();
      clients.clear();
    },
  };
}
