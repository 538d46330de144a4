import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type CounterConfiguration, type LabelValues } from 'prom-client';

/** One label set's count of a deferred counter (see createDeferredCounter). */
export interface BoundCount {
  inc(): void;
}

/** A prom-client Counter plus counts for fixed label sets that the decision path adds to without prom-client. */
export interface DeferredCounter<T extends string> {
  /** The Counter itself, for increments off the decision path. */
  readonly counter: Counter<T>;
  /**
   * The count for `labels`: the same object for the same label values, so a
   * caller binds once (per issuer, resource or hop, when configuration is
   * compiled) and then only calls inc().
   */
  bind(labels: LabelValues<T>): BoundCount;
}

/**
 * A Counter whose hot-path increments are plain numbers, handed to prom-client
 * when the metrics are read (its `collect` hook), as `DecisionCounts` does
 * for decisions. prom-client's `inc(labels)` (and a `labels()` child's `inc()`,
 * which passes its label object again) builds a key string from the label
 * values on every call: about 0.3 µs and 0.5 KB of garbage per increment.
 * Label sets come from configuration, so the bound counts stay few.
 */
export function createDeferredCounter<T extends string>(config: Omit<CounterConfiguration<T>, 'collect'>): DeferredCounter<T> {
  const bound = new Map<string, { labels: LabelValues<T>; n: number; inc(): void }>();
  const counter = new Counter<T>({
    ...config,
    collect() {
      for (const e of bound.values()) {
        if (e.n === 0) continue;
        this.inc(e.labels, e.n);
        e.n = 0;
      }
    },
  });
  return {
    counter,
    bind(labels) {
      const key = JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));
      let e = bound.get(key);
      if (e === undefined) {
        const entry = {
          labels: { ...labels },
          n: 0,
          inc() {
            entry.n++;
          },
        };
        e = entry;
        bound.set(key, e);
      }
      return e;
    },
  };
}

/**
 * The per-decision counters: deferred counters (createDeferredCounter), so a
 * decision adds 1 to a number found by two Map lookups instead of prom-client
 * building a key string from the label values (about 0.3 µs and 0.5 KB of
 * garbage per decision). Route names come from configuration and reasons from
 * a fixed set, so the maps stay small.
 */
export interface DecisionCounts {
  decision(route: string, kind: 'allow' | 'deny', reason: string): void;
  tokenCacheHit(): void;
  tokenCacheMiss(): void;
}

/** Every metric portcullis exports, created per app instance on its own registry. */
export interface Metrics {
  registry: Registry;
  /** Use this for decisions and token-cache lookups, not `decisions.inc` / `tokenCache.inc`. */
  counts: DecisionCounts;
  decisions: Counter<'route' | 'decision' | 'reason'>;
  decisionSeconds: Histogram<'decision'>;
  tokenCache: Counter<'result'>;
  jwksFetches: Counter<'issuer' | 'result'>;
  jwksKidMiss: Counter<'issuer' | 'result'>;
  jwksAgeSeconds: Gauge<'issuer'>;
  jwksReady: Gauge<'issuer'>;
  configReloads: Counter<'result'>;
  wouldDeny: Counter<'route' | 'requirement' | 'reason'>;
  configLastReloadSuccess: Gauge;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'portcullis_process_' });
  const registers = [registry];
  const decisions = createDeferredCounter({
    name: 'portcullis_decisions_total',
    help: 'Authorization decisions by route, decision and reason code',
    labelNames: ['route', 'decision', 'reason'],
    registers,
  });
  const tokenCache = createDeferredCounter({
    name: 'portcullis_token_cache_total',
    help: 'Verified-token cache lookups by result (hit|miss)',
    labelNames: ['result'],
    registers,
  });
  // route → the allow count and the deny count of each reason.
  const byRoute = new Map<string, { allow: BoundCount; deny: Map<string, BoundCount> }>();
  const cacheHits = tokenCache.bind({ result: 'hit' });
  const cacheMisses = tokenCache.bind({ result: 'miss' });
  const counts: DecisionCounts = {
    decision(route, kind, reason) {
      let r = byRoute.get(route);
      if (r === undefined) {
        r = { allow: decisions.bind({ route, decision: 'allow', reason: '' }), deny: new Map() };
        byRoute.set(route, r);
      }
      if (kind === 'allow') {
        r.allow.inc();
        return;
      }
      let e = r.deny.get(reason);
      if (e === undefined) {
        e = decisions.bind({ route, decision: 'deny', reason });
        r.deny.set(reason, e);
      }
      e.inc();
    },
    tokenCacheHit() {
      cacheHits.inc();
    },
    tokenCacheMiss() {
      cacheMisses.inc();
    },
  };
  return {
    registry,
    counts,
    decisions: decisions.counter,
    decisionSeconds: new Histogram({
      name: 'portcullis_decision_duration_seconds',
      help: 'Time from request received to decision, by decision',
      labelNames: ['decision'],
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    }),
    tokenCache: tokenCache.counter,
    jwksFetches: new Counter({
      name: 'portcullis_jwks_fetches_total',
      help: 'JWKS fetches per issuer by result (ok|error)',
      labelNames: ['issuer', 'result'],
      registers,
    }),
    jwksKidMiss: new Counter({
      name: 'portcullis_jwks_kid_miss_total',
      help: 'Unknown kid lookups per issuer: refetch triggered or rate_limited',
      labelNames: ['issuer', 'result'],
      registers,
    }),
    jwksAgeSeconds: new Gauge({
      name: 'portcullis_jwks_age_seconds',
      help: 'Seconds since the issuer keys were last fetched successfully (-1 = never)',
      labelNames: ['issuer'],
      registers,
    }),
    jwksReady: new Gauge({
      name: 'portcullis_jwks_ready',
      help: '1 when the issuer has usable keys, 0 otherwise',
      labelNames: ['issuer'],
      registers,
    }),
    wouldDeny: new Counter({
      name: 'portcullis_shadow_would_deny_total',
      help: 'Requests a shadow-mode requirement would have denied, by route, requirement and reason (they were allowed)',
      labelNames: ['route', 'requirement', 'reason'],
      registers,
    }),
    configReloads: new Counter({
      name: 'portcullis_config_reloads_total',
      help: 'Configuration reloads by result (ok|invalid)',
      labelNames: ['result'],
      registers,
    }),
    configLastReloadSuccess: new Gauge({
      name: 'portcullis_config_last_reload_successful',
      help: '1 when the last reload attempt was applied, 0 when it was refused',
      registers,
    }),
  };
}
