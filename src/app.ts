import { createHash } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import type { DestinationStream } from 'pino';
import { createAdminServer, json, type AdminServer } from './admin/server.js';
import { createDecisionRing, DEBUG_PAGE, type DecisionRing } from './admin/debug.js';
import { explainResult, formatExplain } from './explain/format.js';
import { ExplainInputError, parseCurlArgs, shellSplit, toCheckInput as explainInput, type ExplainRequest } from './explain/request.js';
import { createGrpcServer, type GrpcServer } from './adapters/envoy/grpc-server.js';
import { createHttpAuthzServer, type HttpAuthzServer } from './adapters/envoy/http-server.js';
import { createDevIssuer, DevTokenRequestError, type DevIssuer, type DevTokenRequest } from './adapters/oidc/dev-issuer.js';
import { createRemoteKeySource, createStaticKeySource, type KeySource } from './adapters/oidc/key-source.js';
import { parseConfig, type Overrides } from './config/load.js';
import type { Config, IssuerConfig } from './config/schema.js';
import { ConfigError, denial, PortcullisError } from './core/errors.js';
import { checkConfig } from './config/validate.js';
import { systemClock, systemScheduler, type CheckInput, type Clock, type Decision, type FetchFn, type Scheduler } from './core/types.js';
import { createLogger, type Logger } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { createDecider, toDeny, type Decider, type DecisionTrace } from './pipeline/decide.js';
import type { Policy } from './pipeline/policy.js';
import { createCertWatcher, type CertWatcher } from './adapters/tls/cert-watcher.js';
import { compileSpiffePatterns } from './stages/peer.js';
import { createStageModules, type StageHealth } from './stages/registry.js';
import { createVerifier, issuerRuntimeOf, type IssuerRuntime, type Verifier } from './stages/verify.js';

/**
 * The composition root: the only place concrete dependencies (clock, fetch,
 * timers, servers, registries) are built and wired. Everything below takes
 * what it needs as parameters.
 */
export interface AppOptions {
  /** Config file; when absent the embedded default configuration is used. */
  configPath?: string;
  overrides?: Overrides;
  clock?: Clock;
  fetch?: FetchFn;
  scheduler?: Scheduler;
  logDestination?: DestinationStream;
  /** Set false in tests that build many apps (process metrics are per registry anyway). */
  defaultMetrics?: boolean;
}

export interface Addresses {
  grpc: string;
  http?: string;
  admin: string;
}

export interface IssuerHealth {
  name: string;
  ready: boolean;
  state: string;
  keyCount: number;
  lastSuccessAt?: string;
  lastError?: string;
}

export interface App {
  readonly logger: Logger;
  readonly metrics: Metrics;
  start(): Promise<Addresses>;
  /** Re-reads the config file; an invalid config is refused and the running one stays. */
  reload(): Promise<{ ok: true } | { ok: false; error: PortcullisError }>;
  stop(): Promise<void>;
  /** Runs the live pipeline without recording metrics or logs (explain, tests). */
  evaluate(input: CheckInput, trace?: DecisionTrace, opts?: { dryRun?: boolean }): Decision | Promise<Decision>;
  readiness(): { ready: boolean; issuers: IssuerHealth[]; stages: StageHealth[] };
  config(): Config;
}

interface Runtime {
  config: Config;
  policy: Policy;
  verifier: Verifier;
  decider: Decider;
  issuers: IssuerRuntime[];
}

interface ManagedKeySource {
  fingerprint: string;
  source: KeySource;
}

export const DEFAULT_CONFIG_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'config', 'default.yaml');

export function createApp(opts: AppOptions = {}): App {
  const clock = opts.clock ?? systemClock;
  const fetchFn: FetchFn = opts.fetch ?? ((input, init) => fetch(input, init));
  const scheduler = opts.scheduler ?? systemScheduler;
  const configPath = opts.configPath ?? DEFAULT_CONFIG_PATH;
  const metrics = createMetrics({ defaultMetrics: opts.defaultMetrics });

  // The first parse happens before anything listens, so a bad file fails start-up with every problem listed.
  let initialText = readConfigText(configPath);
  let initialConfig = parseConfig(initialText, configPath, opts.overrides);
  const logger = createLogger({ level: initialConfig.log.level, destination: opts.logDestination });
  const decisionLog = logger.child({ kind: 'decision' });
  const modules = createStageModules({ clock, fetch: fetchFn, scheduler, logger, registry: metrics.registry });
  const factories = modules.map((m) => m.factory);

  const keySources = new Map<string, ManagedKeySource>();
  let devIssuer: DevIssuer | undefined;
  let runtime: Runtime | undefined;
  let lastConfigHash = '';
  let lastReloadFailed = false;
  let addresses: Addresses | undefined;
  let grpc: GrpcServer | undefined;
  let http: HttpAuthzServer | undefined;
  let admin: AdminServer | undefined;
  let watcher: FSWatcher | undefined;
  let certs: CertWatcher | undefined;
  let healthTimer: ReturnType<Scheduler['setTimeout']> | undefined;
  let serving: boolean | undefined;

  function refreshHealth(): void {
    if (!grpc || stopping) return;
    const ready = readiness().ready;
    if (ready !== serving) {
      serving = ready;
      grpc.setServing(ready);
    }
  }
  let reloadTimer: ReturnType<Scheduler['setTimeout']> | undefined;
  let stopping = false;
  let ring: DecisionRing = createDecisionRing(initialConfig.debug.recentDecisions);
  let cacheHits = 0;
  let cacheMisses = 0;

  function readConfigText(path: string): string {
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw new PortcullisError('ERR_CONFIG_READ', `cannot read config file ${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  function keySourceFor(i: IssuerConfig): ManagedKeySource {
    const fingerprint = JSON.stringify([i.issuer, i.jwksUri, i.discoveryUrl, i.jwks]);
    const existing = keySources.get(i.name);
    if (existing && existing.fingerprint === fingerprint) return existing;
    const issuerName = i.name;
    const source = createRemoteKeySource(
      {
        clock,
        fetch: fetchFn,
        scheduler,
        onEvent: (e) => {
          if (e.type === 'fetch') {
            queueMicrotask(refreshHealth);
            metrics.jwksFetches.inc({ issuer: issuerName, result: e.ok ? 'ok' : 'error' });
            if (!e.ok) logger.warn({ issuer: issuerName, error: e.error }, 'JWKS fetch failed; last good keys keep serving');
            else logger.info({ issuer: issuerName, keys: e.keyCount }, 'JWKS loaded');
          } else {
            metrics.jwksKidMiss.inc({ issuer: issuerName, result: e.type === 'kid_miss_refetch' ? 'refetch' : 'rate_limited' });
          }
        },
      },
      {
        issuer: i.issuer,
        jwksUri: i.jwksUri,
        discoveryUrl: i.discoveryUrl,
        refreshIntervalMs: i.jwks.refreshSeconds * 1000,
        maxStalenessMs: i.jwks.maxStalenessSeconds * 1000,
        kidMissCooldownMs: i.jwks.kidMissCooldownSeconds * 1000,
        timeoutMs: i.jwks.timeoutMs,
        retryMinMs: i.jwks.retryMinSeconds * 1000,
      },
    );
    return { fingerprint, source };
  }

  async function ensureDevIssuer(config: Config, adminAddress: string): Promise<DevIssuer> {
    if (!devIssuer) {
      devIssuer = await createDevIssuer({
        issuer: `http://${adminAddress}/dev`,
        audience: config.development.issuer.audience,
        maxTtlSeconds: config.development.issuer.maxTtlSeconds,
        alg: config.development.issuer.algorithm,
        clock,
      });
    }
    return devIssuer;
  }

  /** Builds a complete runtime from a config, or throws ConfigError. Starts no key source. */
  async function buildRuntime(config: Config): Promise<{ runtime: Runtime; sources: Map<string, ManagedKeySource> }> {
    const checked = checkConfig(config, addresses?.admin ?? config.listen.admin, factories);
    if (!checked.ok) throw new ConfigError(checked.issues);
    const compiled = checked;
    const dev = config.development.issuer;

    const sources = new Map<string, ManagedKeySource>();
    const issuers: IssuerRuntime[] = config.issuers.map((i, idx) => {
      let ks: ManagedKeySource;
      try {
        ks = keySourceFor(i);
      } catch (err) {
        throw new ConfigError([{ path: `issuers[${idx}]`, message: (err as Error).message }]);
      }
      sources.set(i.name, ks);
      return issuerRuntimeOf(i, config.defaults.clockSkewSeconds, ks.source);
    });
    if (dev.enabled && addresses) {
      const d = await ensureDevIssuer(config, addresses.admin);
      issuers.push({
        name: dev.name,
        issuer: d.issuer,
        audiences: new Set([dev.audience]),
        algorithms: new Set([d.alg]),
        roleClaims: [['realm_access', 'roles']],
        subjectClaim: 'sub',
        clockSkewMs: config.defaults.clockSkewSeconds * 1000,
        keys: createStaticKeySource([{ key: d.publicKey, kid: d.kid, kty: d.alg === 'ES256' ? 'EC' : 'RSA', alg: d.alg }]),
      });
    }
    const verifier = createVerifier({
      clock,
      issuers,
      roles: compiled.policy.roles,
      cacheMaxEntries: config.tokenCache.maxEntries,
      cacheAdmission: config.tokenCache.admission,
      observer: {
        cacheHit: () => {
          cacheHits++;
          metrics.counts.tokenCacheHit();
        },
        cacheMiss: () => {
          cacheMisses++;
          metrics.counts.tokenCacheMiss();
        },
      },
    });
    const decider = createDecider({ policy: compiled.policy, verifier });
    return { runtime: { config, policy: compiled.policy, verifier, decider, issuers }, sources };
  }

  /** Swaps in a new runtime: start new key sources, wait briefly for their first keys, swap, stop replaced ones. */
  async function activate(next: { runtime: Runtime; sources: Map<string, ManagedKeySource> }): Promise<void> {
    const fresh: KeySource[] = [];
    for (const ms of next.sources.values()) {
      if ([...keySources.values()].every((old) => old.source !== ms.source)) {
        ms.source.start();
        fresh.push(ms.source);
      }
    }
    if (runtime && fresh.length > 0) {
      // On reload, give new issuers a moment to load keys so traffic for them is not refused needlessly.
      await Promise.race([Promise.all(fresh.map((s) => s.refresh())), new Promise((r) => setTimeout(r, 5_000).unref())]);
    }
    for (const m of modules) await m.prepare?.(next.runtime.config);
    const replaced = [...keySources.entries()].filter(([name, ms]) => next.sources.get(name)?.source !== ms.source);
    runtime = next.runtime;
    for (const m of modules) m.activated?.(next.runtime.config);
    refreshHealth();
    keySources.clear();
    for (const [name, ms] of next.sources) keySources.set(name, ms);
    for (const [, ms] of replaced) ms.source.stop();
  }

  function readiness(): { ready: boolean; issuers: IssuerHealth[]; stages: StageHealth[] } {
    const issuers: IssuerHealth[] = [];
    for (const i of runtime?.issuers ?? []) {
      const s = i.keys.status();
      issuers.push({
        name: i.name,
        ready: s.ready,
        state: s.state,
        keyCount: s.keyCount,
        lastSuccessAt: s.lastSuccessAt !== undefined ? new Date(s.lastSuccessAt).toISOString() : undefined,
        lastError: s.lastError,
      });
    }
    const stages = modules.flatMap((m) => m.health?.() ?? []);
    return { ready: !!runtime && !stopping && issuers.every((i) => i.ready) && stages.every((s) => s.ready), issuers, stages };
  }

  function record(d: Decision, input: CheckInput, started: number): Decision {
    const seconds = (performance.now() - started) / 1000;
    const reason = d.kind === 'deny' ? d.reason : '';
    const route = d.route ?? '(none)';
    metrics.counts.decision(route, d.kind, reason);
    metrics.decisionSeconds.observe({ decision: d.kind }, seconds);
    if (d.kind === 'allow' && d.wouldDeny) {
      for (const w of d.wouldDeny) metrics.wouldDeny.inc({ route, requirement: w.requirement, reason: w.reason });
    }
    if (ring.capacity > 0) ring.record(d, input, clock.now(), seconds * 1e3);
    const rate = runtime?.config.log.decisionSampleRate ?? 1;
    // Shadow would-denies are always logged, like denies. Below info (e.g. log.level warn)
    // pino drops the line anyway: do not build it.
    const wouldDeny = d.kind === 'allow' && d.wouldDeny !== undefined;
    if (decisionLog.isLevelEnabled('info') && (d.kind === 'deny' || wouldDeny || rate >= 1 || (rate > 0 && Math.random() < rate))) {
      const line = {
        route,
        decision: d.kind,
        reason: reason || undefined,
        status: d.kind === 'deny' ? d.status : 200,
        sub: d.principal?.qualifiedSub,
        tenant: d.principal?.issuerName,
        method: input.method,
        host: input.host,
        path: input.path,
        peer: input.peerPrincipal,
        would_deny: d.kind === 'allow' && d.wouldDeny ? d.wouldDeny.map((w) => `${w.requirement}:${w.reason}`) : undefined,
        latency_ms: Math.round(seconds * 1e6) / 1e3,
      };
      if (d.kind === 'deny') decisionLog.info({ ...line, message: d.message }, 'decision');
      else decisionLog.info(line, 'decision');
    }
    return d;
  }

  function handle(input: CheckInput): Decision | Promise<Decision> {
    const started = performance.now();
    if (!runtime || stopping) {
      return record(toDeny(denial(stopping ? 'shutting_down' : 'internal_error', 'not ready'), 'portcullis'), input, started);
    }
    const d = runtime.decider.decide(input);
    return d instanceof Promise ? d.then((r) => record(r, input, started)) : record(d, input, started);
  }

  const malformed = (): Decision =>
    record(
      toDeny(denial('malformed_request', 'the check request carries no HTTP request attributes'), runtime?.config.defaults.authRealm ?? 'portcullis'),
      { method: '', host: '', path: '', query: '', headers: new Map(), contextExtensions: new Map() },
      performance.now(),
    );

  async function reload(): Promise<{ ok: true } | { ok: false; error: PortcullisError }> {
    try {
      const text = readConfigText(configPath);
      const hash = createHash('sha256').update(text).digest('hex');
      const config = parseConfig(text, configPath, opts.overrides, (c) => {
        const r = checkConfig(c, addresses?.admin ?? c.listen.admin, factories);
        return r.ok ? [] : r.issues;
      });
      const next = await buildRuntime(config);
      const prev = runtime?.config;
      if (prev && JSON.stringify(prev.listen) !== JSON.stringify(config.listen)) {
        logger.warn('listen addresses changed in the config file; they take effect on restart only');
      }
      await activate(next);
      lastConfigHash = hash;
      logger.level = config.log.level;
      if (config.debug.recentDecisions !== ring.capacity) ring = createDecisionRing(config.debug.recentDecisions);
      metrics.configReloads.inc({ result: 'ok' });
      metrics.configLastReloadSuccess.set(1);
      lastReloadFailed = false;
      logger.info({ routes: config.routes.length, issuers: next.runtime.issuers.map((i) => i.name) }, 'configuration reloaded');
      return { ok: true };
    } catch (err) {
      const error = err instanceof PortcullisError ? err : new PortcullisError('ERR_CONFIG_INVALID', String(err));
      metrics.configReloads.inc({ result: 'invalid' });
      metrics.configLastReloadSuccess.set(0);
      lastReloadFailed = true;
      logger.error(
        { issues: error instanceof ConfigError ? error.issues : undefined, error: error.message },
        'configuration refused; the previous configuration keeps serving',
      );
      return { ok: false, error };
    }
  }

  function watchConfig(): void {
    if (!opts.configPath || !initialConfig.server.watchConfig) return;
    const file = basename(configPath);
    try {
      // Watch the directory: editors and Kubernetes ConfigMaps replace the file (or a ..data symlink).
      watcher = watch(dirname(configPath), (_event, name) => {
        if (name !== null && name !== file && name !== '..data') return;
        if (reloadTimer) scheduler.clearTimeout(reloadTimer);
        reloadTimer = scheduler.setTimeout(() => {
          reloadTimer = undefined;
          let text: string;
          try {
            text = readFileSync(configPath, 'utf8');
          } catch {
            return; // mid-replace; the next event reloads
          }
          if (createHash('sha256').update(text).digest('hex') === lastConfigHash) {
            // The file is back to what is running (e.g. a refused edit was reverted): nothing to
            // apply, but the "last reload failed" signal must clear.
            if (lastReloadFailed) {
              lastReloadFailed = false;
              metrics.configLastReloadSuccess.set(1);
              logger.info('config file matches the running configuration again');
            }
            return;
          }
          void reload();
        }, 250);
      });
      watcher.on('error', (err) => logger.warn({ error: err.message }, 'config file watch failed; SIGHUP still reloads'));
    } catch (err) {
      logger.warn({ error: (err as Error).message }, 'cannot watch the config file; SIGHUP still reloads');
    }
  }

  function evaluate(input: CheckInput, trace?: DecisionTrace, o?: { dryRun?: boolean }): Decision | Promise<Decision> {
    if (!runtime) return toDeny(denial('internal_error', 'not started'), 'portcullis');
    return runtime.decider.decide(input, trace, o);
  }

  function mountAdmin(a: AdminServer): void {
    a.route('GET', '/metrics', async () => {
      const now = clock.now();
      for (const i of runtime?.issuers ?? []) {
        const s = i.keys.status();
        metrics.jwksAgeSeconds.set({ issuer: i.name }, s.lastSuccessAt === undefined ? -1 : (now - s.lastSuccessAt) / 1000);
        metrics.jwksReady.set({ issuer: i.name }, s.ready ? 1 : 0);
      }
      return { status: 200, body: await metrics.registry.metrics(), contentType: metrics.registry.contentType };
    });
    a.route('GET', '/healthz', () => json(200, { status: 'ok' }));
    for (const m of modules) for (const r of m.adminRoutes?.() ?? []) a.route(r.method, r.path, () => {
      const out = r.handler();
      return json(out.status, out.body);
    });
    a.route('GET', '/readyz', () => {
      const r = readiness();
      return json(r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'not_ready', stopping, issuers: r.issuers, stages: r.stages });
    });
    const debugOn = () => runtime?.config.debug.enabled !== false;
    a.route('GET', '/debug', () =>
      debugOn() ? { status: 200, body: DEBUG_PAGE, contentType: 'text/html; charset=utf-8' } : json(404, { error: 'not_found' }),
    );
    a.route('GET', '/debug/decisions', (req) => {
      if (!debugOn()) return json(404, { error: 'not_found' });
      const q = new URL(req.url ?? '/', 'http://admin').searchParams;
      const limit = Number(q.get('limit') ?? '100');
      return json(200, ring.list({
        route: q.get('route') ?? undefined,
        decision: q.get('decision') ?? undefined,
        reason: q.get('reason') ?? undefined,
        sub: q.get('sub') ?? undefined,
        limit: Number.isFinite(limit) && limit > 0 ? limit : 100,
      }));
    });
    a.route('GET', '/debug/status', () => {
      if (!debugOn()) return json(404, { error: 'not_found' });
      const r = readiness();
      return json(200, {
        ready: r.ready,
        issuers: r.issuers,
        stages: r.stages,
        tokenCache: { size: runtime?.verifier.cacheSize() ?? 0, hits: cacheHits, misses: cacheMisses },
        routes: runtime?.config.routes.length ?? 0,
      });
    });
    a.route('POST', '/debug/explain', async (_req, body) => {
      if (!debugOn()) return json(404, { error: 'not_found' });
      let req: ExplainRequest;
      let format = 'json';
      try {
        const parsed = JSON.parse(body.toString('utf8') || '{}') as Record<string, unknown>;
        format = parsed.format === 'text' ? 'text' : 'json';
        if (typeof parsed.curl === 'string') {
          req = parseCurlArgs(shellSplit(parsed.curl));
          if (typeof parsed.peer === 'string' && parsed.peer) req.peer = parsed.peer;
        } else if (typeof parsed.url === 'string') {
          const h = parsed.headers;
          const headers: [string, string][] = Array.isArray(h)
            ? h.filter((x): x is [string, string] => Array.isArray(x) && typeof x[0] === 'string' && typeof x[1] === 'string')
            : typeof h === 'object' && h !== null
              ? Object.entries(h as Record<string, unknown>).filter((e): e is [string, string] => typeof e[1] === 'string')
              : [];
          req = {
            method: typeof parsed.method === 'string' ? parsed.method : 'GET',
            url: parsed.url,
            headers,
            peer: typeof parsed.peer === 'string' ? parsed.peer : undefined,
            contextExtensions: typeof parsed.contextExtensions === 'object' && parsed.contextExtensions !== null ? (parsed.contextExtensions as Record<string, string>) : undefined,
          };
        } else throw new ExplainInputError('give "curl" (a curl command) or "url" (with "method", "headers", "peer")');
        const trace: DecisionTrace = {};
        const d = await evaluate(explainInput(req), trace, { dryRun: true });
        const result = explainResult(d, trace);
        return json(200, format === 'text' ? { ...result, text: formatExplain(result) } : result);
      } catch (err) {
        if (err instanceof ExplainInputError || err instanceof SyntaxError) return json(400, { error: 'invalid_request', error_description: err.message });
        throw err;
      }
    });
    a.route('GET', '/dev/.well-known/openid-configuration', () =>
      devIssuer && runtime?.config.development.issuer.enabled ? json(200, devIssuer.discovery()) : json(404, { error: 'not_found' }),
    );
    a.route('GET', '/dev/jwks.json', () =>
      devIssuer && runtime?.config.development.issuer.enabled ? json(200, devIssuer.jwks()) : json(404, { error: 'not_found' }),
    );
    a.route('POST', '/dev/token', async (req, body) => {
      if (!devIssuer || !runtime?.config.development.issuer.enabled) return json(404, { error: 'not_found' });
      let parsed: unknown;
      try {
        const text = body.toString('utf8').trim();
        // curl -d sends JSON labelled as a form; the first character decides.
        if (text.length > 0 && !text.startsWith('{')) {
          const f = new URLSearchParams(body.toString('utf8'));
          parsed = {
            sub: f.get('sub') ?? undefined,
            roles: f.getAll('role').length > 0 ? f.getAll('role') : f.get('roles')?.split(/[ ,]+/).filter(Boolean),
            ttlSeconds: f.has('ttlSeconds') ? Number(f.get('ttlSeconds')) : undefined,
          };
        } else parsed = JSON.parse(body.toString('utf8') || '{}');
      } catch {
        return json(400, { error: 'invalid_request', error_description: 'body must be JSON or a form' });
      }
      try {
        return json(200, await devIssuer.mint(parsed as DevTokenRequest));
      } catch (err) {
        if (err instanceof DevTokenRequestError) return json(400, { error: 'invalid_request', error_description: err.message });
        throw err;
      }
    });
  }

  async function startInner(): Promise<Addresses> {
    lastConfigHash = createHash('sha256').update(initialText).digest('hex');
    const config = initialConfig;
    admin = createAdminServer();
    mountAdmin(admin);
    const adminAddr = await admin.listen(config.listen.admin);
    addresses = { grpc: '', admin: adminAddr };
    await activate(await buildRuntime(config));
    initialText = '';
    const tlsCfg = config.listen.tls;
    let tls: { clientAllowed: (uris: string[]) => boolean; onClientRefused: () => Decision } | undefined;
    if (tlsCfg) {
      certs = createCertWatcher({
        files: tlsCfg,
        scheduler,
        intervalMs: tlsCfg.reloadSeconds * 1000,
        onError: (message) => logger.error({ error: message }, 'new TLS files are not usable; the previous certificate keeps serving'),
        onReload: (m) => logger.info({ notAfter: m.notAfter, uris: m.uris }, 'TLS certificate reloaded'),
      });
      certs.start();
      const patterns = tlsCfg.allowedClients ? compileSpiffePatterns(tlsCfg.allowedClients) : undefined;
      const matcher = patterns?.ok ? patterns.matcher : undefined;
      tls = {
        clientAllowed: (uris) => !matcher || uris.some((u) => matcher.matches(u)),
        onClientRefused: () =>
          record(
            toDeny(denial('peer_not_allowed', 'this ext_authz client (by its certificate) is not allowed to ask'), config.defaults.authRealm),
            { method: '', host: '', path: '', query: '', headers: new Map(), contextExtensions: new Map() },
            performance.now(),
          ),
      };
    }
    grpc = createGrpcServer({ handle, onMalformed: malformed, tls: certs && tls ? { ...tls, watcher: certs } : undefined });
    addresses.grpc = await grpc.listen(config.listen.grpc);
    if (config.listen.http !== 'off') {
      http = createHttpAuthzServer({
        handle,
        onError: () => toDeny(denial('internal_error', 'internal error'), config.defaults.authRealm),
        pathPrefix: config.listen.httpPathPrefix,
        trustXfcc: config.listen.httpTrustXfcc,
        tls: certs && tls ? { ...tls, watcher: certs } : undefined,
      });
      addresses.http = await http.listen(config.listen.http);
    }
    // gRPC health follows readiness (every issuer has keys, every stage is synced): at once
    // on every key fetch and reload, and every second for what ages (key staleness, watches).
    const tick = () => {
      refreshHealth();
      healthTimer = scheduler.setTimeout(tick, 1_000);
    };
    tick();
    watchConfig();
    metrics.configLastReloadSuccess.set(1);
    const r = readiness();
    logger.info(
      {
        addresses,
        routes: config.routes.length,
        issuers: r.issuers.map((i) => i.name),
        development: config.development.issuer.enabled ? { issuer: devIssuer?.issuer, tokenEndpoint: `http://${adminAddr}/dev/token` } : undefined,
      },
      'portcullis ready',
    );
    return addresses;
}

  return {
    logger,
    metrics,
    async start() {
      try {
        return await startInner();
      } catch (err) {
        // Leave nothing behind: a failed start closes every port it opened and stops every timer.
        stopping = true;
        if (healthTimer) scheduler.clearTimeout(healthTimer);
        certs?.stop();
        await Promise.all([grpc?.shutdown(0), http?.shutdown(0)]);
        for (const ms of keySources.values()) ms.source.stop();
        for (const m of modules) await m.stop?.();
        await admin?.close();
        throw err;
      }
    },
    reload,
    async stop() {
      if (stopping) return;
      stopping = true;
      if (healthTimer) scheduler.clearTimeout(healthTimer);
      grpc?.setServing(false);
      watcher?.close();
      certs?.stop();
      if (reloadTimer) scheduler.clearTimeout(reloadTimer);
      const graceMs = (runtime?.config.server.shutdownGraceSeconds ?? 15) * 1000;
      logger.info({ graceMs }, 'shutting down: finishing in-flight checks');
      await Promise.all([grpc?.shutdown(graceMs), http?.shutdown(graceMs)]);
      for (const ms of keySources.values()) ms.source.stop();
      for (const m of modules) await m.stop?.();
      await admin?.close();
      logger.info('stopped');
    },
    evaluate,
    readiness,
    config: () => runtime?.config ?? initialConfig,
  };
}
