import { createPrivateKey, hash, type JsonWebKeyInput, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { LRUCache } from 'lru-cache';
import { Histogram, type Registry } from 'prom-client';
import {
  createTokenEndpointClient,
  type AssertionAlg,
  type ClientAuth,
  type ExchangeOutcome,
  type TokenEndpointClient,
} from '../adapters/oidc/token-endpoint.js';
import type { Config, IssuerConfig, RouteConfig } from '../config/schema.js';
import { ConfigError, denial, type ConfigIssue } from '../core/errors.js';
import type { Clock, HeaderToSet, Principal } from '../core/types.js';
import type { Logger } from '../observability/logger.js';
import { createDeferredCounter, type BoundCount, type DeferredCounter } from '../observability/metrics.js';
import type { RouteStage, StageContext, StageFactory, StageOutput, StageResult } from '../pipeline/stage.js';
import type { StageHealth, StageModule, StageServices } from './registry.js';

/**
 * Token exchange (RFC 8693): after authentication and roles, swap the
 * caller's validated token for one whose audience is the next hop, at the
 * caller's issuer, authenticating as portcullis's own client there; inject it
 * upstream. Exchanged tokens are cached per (subject token, audience, scope)
 * until `min(new exp, subject exp) - margin`; concurrent requests for one key
 * share one call; every failure is a 503 `exchange_failed`, never a pass-through
 * of the inbound token.
 */

export type IssuerExchangeConfig = NonNullable<IssuerConfig['exchange']>;
export type RouteExchangeConfig = NonNullable<RouteConfig['exchange']>;

export interface ExchangeModuleOptions {
  /** Where `clientSecretEnv` is looked up. Default: process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Reads `clientSecretFile` and `privateKeyJwt.keyFile`. Default: readFileSync(path, 'utf8'). */
  readFile?: (path: string) => string;
  /** Exchanged tokens kept per issuer (LRU). Default 10 000. */
  cacheMaxEntries?: number;
  /** After a failed discovery of the token endpoint, requests fail at once for this long. Default 5 s. */
  discoveryCooldownMs?: number;
}

const DEFAULT_CACHE_MAX = 10_000;
const DEFAULT_DISCOVERY_COOLDOWN_MS = 5_000;
const DRY_RUN_PLACEHOLDER = '[dry run: not exchanged]';

interface CachedToken {
  readonly accessToken: string;
  /** ms since epoch: the exchanged token's expiry. */
  readonly expiresAt: number;
  /** ms since epoch: the subject token's expiry; the exchanged token is never used past it. */
  readonly subjectExpiresAt: number;
}

/** One issuer's exchange settings as they run: client, credentials, cache, calls in flight. */
interface IssuerExchanger {
  readonly issuerName: string;
  readonly fingerprint: string;
  readonly settings: IssuerExchangeConfig;
  /** Undefined without services (`portcullis validate`). */
  readonly client?: TokenEndpointClient;
  /** Loaded by prepare(); files and environment are read again on every reload. */
  auth?: ClientAuth;
  readonly cache: LRUCache<string, CachedToken>;
  readonly inflight: Map<string, Promise<ExchangeOutcome>>;
  /** portcullis_exchange_total{result="hit"} of this issuer; undefined without services. */
  readonly hits: BoundCount | undefined;
}

interface ExchangeMetrics {
  duration: Histogram<'issuer' | 'result'>;
  /** Hits through each exchanger's bound count; misses and errors through `total.counter`. */
  total: DeferredCounter<'issuer' | 'result'>;
}

interface StageRuntime {
  clock: Clock;
  metrics: ExchangeMetrics;
  log: Logger;
}

function createExchangeMetrics(registry: Registry): ExchangeMetrics {
  const registers = [registry];
  return {
    duration: new Histogram({
      name: 'portcullis_exchange_duration_seconds',
      help: 'Token exchange calls to the identity provider by issuer and result (ok|error)',
      labelNames: ['issuer', 'result'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    total: createDeferredCounter({
      name: 'portcullis_exchange_total',
      help: 'Requests needing an exchanged token by issuer and result: hit (cache), miss (identity provider asked), error (denied)',
      labelNames: ['issuer', 'result'],
      registers,
    }),
  };
}

/**
 * sha256 of subject token, audience and scope: the cache never holds a caller's token.
 * One-shot `hash()`, not `createHash()`: a Hash object is a native object with a weak
 * handle, and thousands of them dying per young-generation collection made each
 * collection ≈ 1 ms longer on a busy exchange route (docs/design/performance.md §9).
 */
export function exchangeCacheKey(subjectToken: string, audience: string, scope: string | undefined): string {
  return hash('sha256', `${subjectToken}\0${audience}\0${scope ?? ''}`, 'base64url');
}

/** The header a credential source reads, e.g. `header:x-token` → `x-token`; undefined for cookies and query parameters. */
function sourceHeader(source: string): string | undefined {
  return source.startsWith('header:') ? source.slice('header:'.length).toLowerCase() : undefined;
}

function clientMessage(outcome: Extract<ExchangeOutcome, { ok: false }>): string {
  switch (outcome.code) {
    case 'discovery_failed':
      return 'token exchange failed: the token endpoint of the identity provider is unknown (discovery failed)';
    case 'timeout':
      return 'token exchange failed: the identity provider did not answer in time';
    case 'network':
      return 'token exchange failed: the identity provider is unreachable';
    case 'http_status':
      return `token exchange failed: the identity provider refused the exchange (HTTP ${outcome.status ?? '?'})`;
    case 'invalid_response':
      return 'token exchange failed: the identity provider answered with no usable token';
    case 'aborted':
      return 'token exchange failed: shutting down';
  }
}

/** Compile-time checks of one route's `exchange`, given the issuers it accepts. */
function routeIssues(route: RouteConfig, x: RouteExchangeConfig, at: string, config: Config): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (x.inbound === 'keep' && x.header === 'authorization') {
    issues.push({
      path: `${at}.exchange.inbound`,
      message: 'inbound: keep needs the exchanged token in another header than authorization (set exchange.header), or the inbound token is overwritten',
    });
  }
  if (x.inbound === 'move' && x.moveTo === x.header) {
    issues.push({ path: `${at}.exchange.moveTo`, message: `moveTo must differ from header ("${x.header}")` });
  }
  const byName = new Map(config.issuers.map((i, idx) => [i.name, { issuer: i, idx }] as const));
  const dev = config.development.issuer;
  const accepted = route.issuers ?? [...config.issuers.map((i) => i.name), ...(dev.enabled ? [dev.name] : [])];
  for (const name of accepted) {
    const found = byName.get(name);
    if (found && !found.issuer.exchange) {
      issues.push({
        path: `${at}.exchange`,
        message: `issuer "${name}" has no exchange settings (issuers[${found.idx}].exchange); every issuer this route accepts needs them${route.issuers ? '' : ' (or restrict the route with issuers)'}`,
      });
    } else if (!found && dev.enabled && name === dev.name) {
      issues.push({
        path: `${at}.exchange`,
        message: `the development issuer "${name}" cannot exchange tokens; restrict this route with issuers`,
      });
    }
    // Unknown names are reported by the route's issuers check.
  }
  return issues;
}

function keyMatchesAlg(key: KeyObject, alg: AssertionAlg): boolean {
  if (alg === 'ES256') return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
  if (alg === 'PS256') return key.asymmetricKeyType === 'rsa' || key.asymmetricKeyType === 'rsa-pss';
  return key.asymmetricKeyType === 'rsa';
}

/** Reads the client's credentials; issues name the config path and never quote a secret. */
function loadClientAuth(
  x: IssuerExchangeConfig,
  at: string,
  env: Readonly<Record<string, string | undefined>>,
  readFile: (path: string) => string,
): ClientAuth | ConfigIssue {
  const secret = (clientSecret: string): ClientAuth => ({ method: 'client_secret_basic', clientId: x.clientId, clientSecret });
  if (x.clientSecret !== undefined) return secret(x.clientSecret);
  if (x.clientSecretFile !== undefined) {
    let text: string;
    try {
      text = readFile(x.clientSecretFile);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      return { path: `${at}.clientSecretFile`, message: `cannot read ${x.clientSecretFile}${typeof code === 'string' ? ` (${code})` : ''}` };
    }
    const value = text.trim();
    if (value === '') return { path: `${at}.clientSecretFile`, message: `${x.clientSecretFile} is empty` };
    return secret(value);
  }
  if (x.clientSecretEnv !== undefined) {
    const value = env[x.clientSecretEnv];
    if (value === undefined || value === '') {
      return { path: `${at}.clientSecretEnv`, message: `environment variable ${x.clientSecretEnv} is not set` };
    }
    return secret(value);
  }
  const pk = x.privateKeyJwt;
  if (pk === undefined) return { path: at, message: 'no client credentials configured' };
  let text: string;
  try {
    text = readFile(pk.keyFile);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    return { path: `${at}.privateKeyJwt.keyFile`, message: `cannot read ${pk.keyFile}${typeof code === 'string' ? ` (${code})` : ''}` };
  }
  let key: KeyObject;
  try {
    key = text.trimStart().startsWith('{')
      ? createPrivateKey({ key: JSON.parse(text) as JsonWebKeyInput['key'], format: 'jwk' })
      : createPrivateKey(text);
  } catch {
    return { path: `${at}.privateKeyJwt.keyFile`, message: `${pk.keyFile} holds no private key (PEM or JWK expected)` };
  }
  if (!keyMatchesAlg(key, pk.alg)) {
    return { path: `${at}.privateKeyJwt.alg`, message: `the key in ${pk.keyFile} cannot sign ${pk.alg}` };
  }
  const auth: ClientAuth = { method: 'private_key_jwt', clientId: x.clientId, key, alg: pk.alg };
  if (pk.kid !== undefined) auth.kid = pk.kid;
  return auth;
}

interface ExchangeStageDeps {
  route: RouteExchangeConfig;
  routeName: string;
  /** The exchangers of the issuers this route accepts, by issuer name. */
  exchangers: ReadonlyMap<string, IssuerExchanger>;
  runtime?: StageRuntime;
}

function createExchangeStage(deps: ExchangeStageDeps): RouteStage {
  const { route: x, exchangers, runtime: rt } = deps;
  const marginMs = x.marginSeconds * 1000;
  const prefix = x.scheme === '' ? '' : `${x.scheme} `;
  const metadata = { exchanged_audience: x.audience };

  function output(token: string, p: Principal): StageOutput {
    const headers: HeaderToSet[] = [{ name: x.header, value: prefix + token }];
    const remove: string[] = [];
    if (x.inbound !== 'keep') {
      // The caller's token must not travel on beside the exchanged one.
      if (x.header !== 'authorization') remove.push('authorization');
      const src = sourceHeader(p.source);
      if (src !== undefined && src !== x.header && src !== 'authorization') remove.push(src);
      if (x.inbound === 'move') headers.push({ name: x.moveTo, value: `Bearer ${p.token}` });
    }
    return { headers, remove, metadata };
  }

  function note(ctx: StageContext, fact: Record<string, unknown>): void {
    if (ctx.trace) ctx.trace.exchange = { audience: x.audience, scope: x.scope, ...fact };
  }

  /** One call per key at a time: later requests for the same key join the call in flight. */
  function shared(ex: IssuerExchanger, client: TokenEndpointClient, auth: ClientAuth, key: string, p: Principal, r: StageRuntime): { call: Promise<ExchangeOutcome>; joined: boolean } {
    const existing = ex.inflight.get(key);
    if (existing) return { call: existing, joined: true };
    const started = r.clock.now();
    const req = x.scope === undefined ? { subjectToken: p.token, audience: x.audience } : { subjectToken: p.token, audience: x.audience, scope: x.scope };
    const call = client
      .exchange(req, auth)
      .then((outcome) => {
        const now = r.clock.now();
        r.metrics.duration.observe({ issuer: ex.issuerName, result: outcome.ok ? 'ok' : 'error' }, (now - started) / 1000);
        if (!outcome.ok) {
          r.log.warn(
            { issuer: ex.issuerName, route: deps.routeName, audience: x.audience, code: outcome.code, status: outcome.status, idp_error: outcome.idpError, error: outcome.message },
            'token exchange failed',
          );
        } else if (outcome.token.expiresAt !== undefined && Math.min(outcome.token.expiresAt, p.expiresAt) > now) {
          ex.cache.set(key, { accessToken: outcome.token.accessToken, expiresAt: outcome.token.expiresAt, subjectExpiresAt: p.expiresAt });
        }
        return outcome;
      })
      .finally(() => {
        if (ex.inflight.get(key) === call) ex.inflight.delete(key);
      });
    ex.inflight.set(key, call);
    return { call, joined: false };
  }

  return {
    name: 'exchange',
    run(ctx: StageContext): StageResult | Promise<StageResult> {
      const p = ctx.principal;
      if (!p) return denial('exchange_failed', 'token exchange needs an authenticated caller');
      const ex = exchangers.get(p.issuerName);
      if (!ex || !rt) return denial('exchange_failed', `token exchange is not configured for issuer "${p.issuerName}"`);
      const key = exchangeCacheKey(p.token, x.audience, x.scope);
      const now = rt.clock.now();
      const hit = ctx.dryRun ? ex.cache.peek(key) : ex.cache.get(key);
      if (hit) {
        const usableUntil = Math.min(hit.expiresAt, hit.subjectExpiresAt);
        if (usableUntil - marginMs > now) {
          if (!ctx.dryRun) ex.hits?.inc();
          if (ctx.trace) note(ctx, { result: 'cache_hit', expiresAt: new Date(hit.expiresAt).toISOString() });
          return output(hit.accessToken, p);
        }
        if (usableUntil <= now && !ctx.dryRun) ex.cache.delete(key);
      }
      if (ctx.dryRun) {
        note(ctx, { result: 'would_call', issuer: ex.issuerName });
        return output(DRY_RUN_PLACEHOLDER, p);
      }
      const client = ex.client;
      const auth = ex.auth;
      if (!client || !auth) {
        rt.metrics.total.counter.inc({ issuer: ex.issuerName, result: 'error' });
        return denial('exchange_failed', 'token exchange is not ready');
      }
      const { call, joined } = shared(ex, client, auth, key, p, rt);
      return call.then((outcome): StageResult => {
        if (!outcome.ok) {
          rt.metrics.total.counter.inc({ issuer: ex.issuerName, result: 'error' });
          note(ctx, { result: 'error', joined, code: outcome.code });
          return denial('exchange_failed', clientMessage(outcome));
        }
        const exp = outcome.token.expiresAt;
        if (exp !== undefined && exp - marginMs <= rt.clock.now()) {
          rt.metrics.total.counter.inc({ issuer: ex.issuerName, result: 'error' });
          rt.log.warn(
            { issuer: ex.issuerName, route: deps.routeName, audience: x.audience, expires_in_ms: exp - rt.clock.now(), margin_ms: marginMs },
            'exchanged token expires within the safety margin; not injected',
          );
          note(ctx, { result: 'error', joined, code: 'expires_within_margin' });
          return denial('exchange_failed', 'token exchange failed: the exchanged token expires within the safety margin');
        }
        rt.metrics.total.counter.inc({ issuer: ex.issuerName, result: 'miss' });
        note(ctx, {
          result: joined ? 'joined_call' : 'call',
          expiresAt: exp === undefined ? 'unknown (not cached)' : new Date(exp).toISOString(),
        });
        return output(outcome.token.accessToken, p);
      });
    },
  };
}

/**
 * The exchange stage module: compiles route `exchange` settings, keeps one
 * exchanger (token endpoint client, credentials, cache) per issuer across
 * reloads while that issuer's settings stay the same, and re-reads secret
 * files and environment variables on every prepare().
 */
export function createExchangeModule(services?: StageServices, opts: ExchangeModuleOptions = {}): StageModule {
  const env = opts.env ?? process.env;
  const readFile = opts.readFile ?? ((path: string) => readFileSync(path, 'utf8'));
  const cacheMax = opts.cacheMaxEntries ?? DEFAULT_CACHE_MAX;
  const cooldownMs = opts.discoveryCooldownMs ?? DEFAULT_DISCOVERY_COOLDOWN_MS;
  const runtime: StageRuntime | undefined = services
    ? { clock: services.clock, metrics: createExchangeMetrics(services.registry), log: services.logger.child({ stage: 'exchange' }) }
    : undefined;
  /** By issuer name + settings fingerprint: what compile() handed out and prepare() fills in. */
  const exchangers = new Map<string, IssuerExchanger>();
  let active: IssuerExchanger[] = [];

  function exchangerFor(i: IssuerConfig, x: IssuerExchangeConfig): IssuerExchanger {
    const fingerprint = JSON.stringify([i.issuer, i.discoveryUrl, x]);
    const id = `${i.name}\0${fingerprint}`;
    const existing = exchangers.get(id);
    if (existing) return existing;
    const client = services
      ? createTokenEndpointClient(
          { fetch: services.fetch, scheduler: services.scheduler, clock: services.clock },
          { issuer: i.issuer, discoveryUrl: i.discoveryUrl, tokenEndpoint: x.tokenEndpoint, timeoutMs: x.timeoutMs, discoveryCooldownMs: cooldownMs },
        )
      : undefined;
    const created: IssuerExchanger = {
      issuerName: i.name,
      fingerprint,
      settings: x,
      client,
      cache: new LRUCache<string, CachedToken>({ max: Math.max(1, cacheMax) }),
      inflight: new Map(),
      hits: runtime?.metrics.total.bind({ issuer: i.name, result: 'hit' }),
    };
    exchangers.set(id, created);
    return created;
  }

  function exchangersOf(config: Config): { exchanger: IssuerExchanger; at: string }[] {
    const out: { exchanger: IssuerExchanger; at: string }[] = [];
    config.issuers.forEach((i, idx) => {
      if (i.exchange) out.push({ exchanger: exchangerFor(i, i.exchange), at: `issuers[${idx}].exchange` });
    });
    return out;
  }

  const factory: StageFactory = {
    name: 'exchange',
    compile(route, at, config) {
      const x = route.exchange;
      if (!x) return undefined;
      const issues = routeIssues(route, x, at, config);
      if (issues.length > 0) return { issues };
      const byName = new Map<string, IssuerExchanger>();
      for (const i of config.issuers) {
        if (i.exchange && (!route.issuers || route.issuers.includes(i.name))) byName.set(i.name, exchangerFor(i, i.exchange));
      }
      return { phase: 'after', stage: createExchangeStage({ route: x, routeName: route.name, exchangers: byName, runtime }) };
    },
  };

  return {
    factory,
    async prepare(config) {
      const loaded: { exchanger: IssuerExchanger; auth: ClientAuth }[] = [];
      const issues: ConfigIssue[] = [];
      for (const { exchanger, at } of exchangersOf(config)) {
        const auth = loadClientAuth(exchanger.settings, at, env, readFile);
        if ('method' in auth) loaded.push({ exchanger, auth });
        else issues.push(auth);
      }
      // All or nothing: a reload with one unreadable secret changes no credentials.
      if (issues.length > 0) throw new ConfigError(issues);
      for (const { exchanger, auth } of loaded) {
        exchanger.auth = auth;
        // Learn the token endpoint early, without holding up start-up on an unreachable IdP.
        void exchanger.client?.discover();
      }
    },
    activated(config) {
      active = exchangersOf(config).map((e) => e.exchanger);
      const keep = new Set(active);
      for (const [id, ex] of exchangers) if (!keep.has(ex)) exchangers.delete(id);
    },
    health(): StageHealth[] {
      return active.map((ex) => {
        const s = ex.client?.status();
        const detail: Record<string, unknown> = { cachedTokens: ex.cache.size, callsInFlight: ex.inflight.size };
        if (s?.endpoint !== undefined) detail.tokenEndpoint = s.endpoint;
        if (s?.lastDiscoveryError !== undefined) detail.lastDiscoveryError = s.lastDiscoveryError;
        // Not ready would take every route out of service; exchange routes answer 503 on their own.
        return { name: `exchange:${ex.issuerName}`, ready: true, detail };
      });
    },
    stop() {
      for (const ex of exchangers.values()) ex.client?.stop();
      for (const ex of active) ex.client?.stop();
      exchangers.clear();
      active = [];
      return Promise.resolve();
    },
  };
}
