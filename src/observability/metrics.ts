import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Every metric portcullis exports, created per app instance on its own registry. */
export interface Metrics {
  registry: Registry;
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
  return {
    registry,
    decisions: new Counter({
      name: 'portcullis_decisions_total',
      help: 'Authorization decisions by route, decision and reason code',
      labelNames: ['route', 'decision', 'reason'],
      registers,
    }),
    decisionSeconds: new Histogram({
      name: 'portcullis_decision_duration_seconds',
      help: 'Time from request received to decision, by decision',
      labelNames: ['decision'],
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    }),
    tokenCache: new Counter({
      name: 'portcullis_token_cache_total',
      help: 'Verified-token cache lookups by result (hit|miss)',
      labelNames: ['result'],
      registers,
    }),
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
