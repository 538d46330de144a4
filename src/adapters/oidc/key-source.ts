import { createPublicKey, type JsonWebKeyInput, type KeyObject } from 'node:crypto';
import { PortcullisError } from '../../core/errors.js';
import type { Clock, FetchFn, Scheduler, TimerHandle } from '../../core/types.js';
import {
  describeUrl,
  discoverJwksUri,
  getJson,
  isHttpUrl,
  shortErrorMessage,
  type HttpDeps,
} from './discovery.js';

export interface ResolvedKey {
  /** Always a public key. */
  key: KeyObject;
  kid?: string;
  /** JWK key type: 'RSA', 'EC' or 'OKP'. */
  kty: string;
  /** The JWK's own `alg`, when it declares one. */
  alg?: string;
}

export type KeyLookup = ResolvedKey | 'unknown_kid' | 'unavailable';

export interface KeySourceStatus {
  /** Keys loaded at least once and not older than maxStaleness. */
  ready: boolean;
  keyCount: number;
  /** Keys the last successful load skipped (symmetric, not for signing, failed to import, ...). */
  skippedKeyCount: number;
  /** ms since epoch, from the injected clock. */
  lastSuccessAt?: number;
  lastAttemptAt?: number;
  /** Short, no secrets (URLs are reduced to origin and path); cleared by a successful fetch. */
  lastError?: string;
  consecutiveFailures: number;
  state: 'fresh' | 'stale_serving' | 'expired' | 'never_loaded';
}

export type KeySourceEvent =
  | { type: 'fetch'; ok: boolean; durationMs: number; error?: string; keyCount?: number; skippedKeyCount?: number }
  | { type: 'kid_miss_refetch'; kid: string | undefined }
  | { type: 'kid_miss_rate_limited'; kid: string | undefined };

export interface KeySource {
  /** Synchronous, no I/O: the hot path. */
  get(kid: string | undefined, alg: string): KeyLookup;
  /**
   * Like get. On 'unknown_kid' (for a supported alg) triggers one refetch unless a
   * kid-miss refetch started within kidMissCooldownMs (then answers at once).
   * Joins a fetch already in flight instead of starting one; on 'unavailable'
   * only joins an in-flight fetch (e.g. the first one after start()).
   */
  resolve(kid: string | undefined, alg: string): Promise<KeyLookup>;
  /** Begins the first fetch without waiting for it and schedules background refreshes. Idempotent. */
  start(): void;
  /** Cancels timers and aborts in-flight requests. Final: no fetch happens afterwards. */
  stop(): void;
  /** Fetch now (shared with any fetch in flight); resolves when done, never rejects. */
  refresh(): Promise<void>;
  status(): KeySourceStatus;
}

export interface RemoteKeySourceOptions {
  /** Compared exactly with the discovery document's `issuer`; discovery URL derives from it. */
  issuer: string;
  /** Skips discovery when set (takes precedence over discoveryUrl). */
  jwksUri?: string;
  /** Defaults to `${issuer}/.well-known/openid-configuration`. */
  discoveryUrl?: string;
  /** Background refresh period. */
  refreshIntervalMs: number;
  /** After the last success, keys keep serving this long while fetches fail; then get() answers 'unavailable'. */
  maxStalenessMs: number;
  /** At most one kid-miss refetch per this period. */
  kidMissCooldownMs: number;
  /** Per HTTP request, body included. */
  timeoutMs: number;
  /** First retry delay after a failed fetch, doubling per failure, capped at refreshIntervalMs. Default 1000. */
  retryMinMs?: number;
}

export interface RemoteKeySourceDeps {
  clock: Clock;
  fetch: FetchFn;
  scheduler: Scheduler;
  /** For metrics; exceptions it throws are ignored. */
  onEvent?: (e: KeySourceEvent) => void;
}

const DEFAULT_RETRY_MIN_MS = 1000;
/** Node timers fire immediately for larger delays. */
const MAX_TIMER_MS = 2_147_483_647;
/** jose refuses RSA keys below this size for RS and PS algs, so they can never verify anything. */
const MIN_RSA_BITS = 2048;

const RSA_ALGS: readonly string[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
const EC_ALG_BY_CURVE: ReadonlyMap<string, { crv: string; alg: string }> = new Map([
  ['prime256v1', { crv: 'P-256', alg: 'ES256' }],
  ['secp384r1', { crv: 'P-384', alg: 'ES384' }],
  ['secp521r1', { crv: 'P-521', alg: 'ES512' }],
]);
const OKP_ALGS: readonly string[] = ['EdDSA', 'Ed25519'];
const SUPPORTED_ALGS: ReadonlySet<string> = new Set([
  ...RSA_ALGS,
  ...[...EC_ALG_BY_CURVE.values()].map((c) => c.alg),
  ...OKP_ALGS,
]);

/** A usable key plus the token algs it may verify. */
interface IndexedKey {
  resolved: ResolvedKey;
  algs: ReadonlySet<string>;
}

/** Immutable snapshot; a load replaces it whole, so get() never sees a half-built set. */
interface KeySet {
  byKid: ReadonlyMap<string, readonly IndexedKey[]>;
  /** Every key by compatible alg, for tokens without a kid. */
  byAlg: ReadonlyMap<string, readonly ResolvedKey[]>;
  count: number;
}

/** kty and the algs a public KeyObject can verify, or why it cannot verify anything. */
function describeKeyObject(key: KeyObject): { kty: string; algs: readonly string[] } | string {
  switch (key.asymmetricKeyType) {
    case 'rsa': {
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
      return bits >= MIN_RSA_BITS ? { kty: 'RSA', algs: RSA_ALGS } : 'RSA key shorter than 2048 bits';
    }
    case 'ec': {
      const curve = EC_ALG_BY_CURVE.get(key.asymmetricKeyDetails?.namedCurve ?? '');
      return curve ? { kty: 'EC', algs: [curve.alg] } : 'unsupported EC curve';
    }
    case 'ed25519':
      return { kty: 'OKP', algs: OKP_ALGS };
    default:
      return 'unsupported key type';
  }
}

/** A key that declares `alg` verifies only that alg (and only if it suits the key type). */
function allowedAlgs(family: readonly string[], jwkAlg: string | undefined): ReadonlySet<string> | undefined {
  if (jwkAlg === undefined) return new Set(family);
  return family.includes(jwkAlg) ? new Set([jwkAlg]) : undefined;
}

/** Only the public members, so a JWKS that wrongly publishes private parts still yields a public key. */
function publicJwk(jwk: Record<string, unknown>): JsonWebKeyInput['key'] | undefined {
  const str = (name: string): string | undefined => (typeof jwk[name] === 'string' ? (jwk[name] as string) : undefined);
  const kty = str('kty');
  if (kty === 'RSA') {
    const n = str('n');
    const e = str('e');
    return n && e ? { kty, n, e } : undefined;
  }
  if (kty === 'EC') {
    const crv = str('crv');
    const x = str('x');
    const y = str('y');
    return crv && x && y ? { kty, crv, x, y } : undefined;
  }
  if (kty === 'OKP') {
    const crv = str('crv');
    const x = str('x');
    return crv === 'Ed25519' && x ? { kty, crv, x } : undefined;
  }
  return undefined;
}

/** Parses one JWKS member: an IndexedKey, or the reason it was skipped. */
function importJwkEntry(raw: unknown): IndexedKey | string {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return 'not an object';
  const jwk = raw as Record<string, unknown>;
  const { kty, use, key_ops: keyOps, kid, alg } = jwk;
  if (typeof kty !== 'string') return 'missing kty';
  // Symmetric keys would let anyone holding the JWKS forge tokens: never usable.
  if (kty === 'oct') return 'symmetric';
  if (use !== undefined && use !== 'sig') return 'not a signing key';
  if (keyOps !== undefined && !(Array.isArray(keyOps) && keyOps.includes('verify'))) return 'not a verification key';
  if (kid !== undefined && typeof kid !== 'string') return 'malformed kid';
  if (alg !== undefined && typeof alg !== 'string') return 'malformed alg';
  const pub = publicJwk(jwk);
  if (!pub) return 'unsupported or incomplete key';
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pub, format: 'jwk' });
  } catch {
    return 'failed to import';
  }
  const described = describeKeyObject(key);
  if (typeof described === 'string') return described;
  if (described.kty !== kty) return 'failed to import';
  const algs = allowedAlgs(described.algs, alg);
  if (!algs) return 'alg does not suit key type';
  const resolved: ResolvedKey = { key, kty };
  if (kid !== undefined) resolved.kid = kid;
  if (alg !== undefined) resolved.alg = alg;
  return { resolved: Object.freeze(resolved), algs };
}

function parseJwks(body: unknown): { keys: IndexedKey[]; skipped: Map<string, number> } {
  const members = (body as { keys?: unknown } | null)?.keys;
  if (typeof body !== 'object' || Array.isArray(body) || !Array.isArray(members)) {
    throw new PortcullisError('ERR_JWKS_INVALID', 'document has no "keys" array');
  }
  const keys: IndexedKey[] = [];
  const skipped = new Map<string, number>();
  for (const raw of members) {
    const entry = importJwkEntry(raw);
    if (typeof entry === 'string') skipped.set(entry, (skipped.get(entry) ?? 0) + 1);
    else keys.push(entry);
  }
  return { keys, skipped };
}

function indexKeys(keys: readonly IndexedKey[]): KeySet {
  const byKid = new Map<string, IndexedKey[]>();
  const byAlg = new Map<string, ResolvedKey[]>();
  for (const k of keys) {
    if (k.resolved.kid !== undefined) {
      const list = byKid.get(k.resolved.kid);
      if (list) list.push(k);
      else byKid.set(k.resolved.kid, [k]);
    }
    for (const alg of k.algs) {
      const list = byAlg.get(alg);
      if (list) list.push(k.resolved);
      else byAlg.set(alg, [k.resolved]);
    }
  }
  return { byKid, byAlg, count: keys.length };
}

/** With a kid: the first key with that kid compatible with alg. Without: the only compatible key. */
function lookup(set: KeySet, kid: string | undefined, alg: string): ResolvedKey | 'unknown_kid' {
  if (kid !== undefined) {
    const candidates = set.byKid.get(kid);
    if (candidates) {
      for (const c of candidates) if (c.algs.has(alg)) return c.resolved;
    }
    return 'unknown_kid';
  }
  const candidates = set.byAlg.get(alg);
  return candidates?.length === 1 && candidates[0] ? candidates[0] : 'unknown_kid';
}

function summarizeSkipped(skipped: ReadonlyMap<string, number>): string {
  if (skipped.size === 0) return 'the set is empty';
  return [...skipped].map(([reason, n]) => `${n} ${reason}`).join(', ');
}

function countSkipped(skipped: ReadonlyMap<string, number>): number {
  let total = 0;
  for (const n of skipped.values()) total += n;
  return total;
}

function validateOptions(opts: RemoteKeySourceOptions): void {
  const problems: string[] = [];
  const positive = (name: keyof RemoteKeySourceOptions, value: unknown, max: number): void => {
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > max) {
      problems.push(`${name} must be a positive number of milliseconds${max < Infinity ? ` up to ${max}` : ''} (got ${String(value)})`);
    }
  };
  if (typeof opts.issuer !== 'string' || opts.issuer === '') problems.push('issuer must be a non-empty string');
  else if (opts.jwksUri === undefined && opts.discoveryUrl === undefined && !isHttpUrl(opts.issuer)) {
    problems.push('issuer must be an http(s) URL without credentials to derive the discovery URL (or set jwksUri or discoveryUrl)');
  }
  if (opts.jwksUri !== undefined && !isHttpUrl(opts.jwksUri)) problems.push('jwksUri must be an http(s) URL without credentials');
  if (opts.discoveryUrl !== undefined && !isHttpUrl(opts.discoveryUrl)) problems.push('discoveryUrl must be an http(s) URL without credentials');
  positive('refreshIntervalMs', opts.refreshIntervalMs, MAX_TIMER_MS);
  positive('maxStalenessMs', opts.maxStalenessMs, Infinity);
  positive('kidMissCooldownMs', opts.kidMissCooldownMs, Infinity);
  positive('timeoutMs', opts.timeoutMs, MAX_TIMER_MS);
  if (opts.retryMinMs !== undefined) positive('retryMinMs', opts.retryMinMs, MAX_TIMER_MS);
  if (problems.length === 0 && opts.maxStalenessMs < opts.refreshIntervalMs) {
    problems.push(
      `maxStalenessMs (${opts.maxStalenessMs}) must not be shorter than refreshIntervalMs (${opts.refreshIntervalMs}), or keys expire between refreshes`,
    );
  }
  if (problems.length > 0) {
    const who = typeof opts.issuer === 'string' && opts.issuer ? ` for issuer "${opts.issuer}"` : '';
    throw new PortcullisError('ERR_JWKS_INVALID', `invalid key source options${who}: ${problems.join('; ')}`);
  }
}

/**
 * Keys of one issuer, fetched from its JWKS (found by OIDC discovery unless
 * `jwksUri` is given) and refreshed in the background. A failed fetch never
 * replaces good keys; they keep serving until `maxStalenessMs` after the last
 * success.
 */
export function createRemoteKeySource(deps: RemoteKeySourceDeps, opts: RemoteKeySourceOptions): KeySource {
  validateOptions(opts);
  const { clock, scheduler } = deps;
  const http: HttpDeps = { fetch: deps.fetch, scheduler };
  const retryMinMs = opts.retryMinMs ?? Math.min(DEFAULT_RETRY_MIN_MS, opts.refreshIntervalMs);
  const shutdown = new AbortController();

  let keys: KeySet | undefined;
  let skippedKeyCount = 0;
  let lastSuccessAt: number | undefined;
  let lastAttemptAt: number | undefined;
  let lastError: string | undefined;
  let consecutiveFailures = 0;
  let discoveredJwksUri: string | undefined;
  let inflight: Promise<void> | undefined;
  let timer: TimerHandle | undefined;
  let lastKidMissFetchAt: number | undefined;
  let started = false;
  let stopped = false;

  const emit = (e: KeySourceEvent): void => {
    try {
      deps.onEvent?.(e);
    } catch {
      // A metrics bug must not break key loading.
    }
  };

  const discover = (): Promise<string> =>
    discoverJwksUri(http, {
      issuer: opts.issuer,
      discoveryUrl: opts.discoveryUrl,
      timeoutMs: opts.timeoutMs,
      signal: shutdown.signal,
    });

  async function load(): Promise<{ set: KeySet; skipped: number }> {
    let uri: string;
    let fromCache = false;
    if (opts.jwksUri !== undefined) uri = opts.jwksUri;
    else if (discoveredJwksUri !== undefined) {
      uri = discoveredJwksUri;
      fromCache = true;
    } else uri = discoveredJwksUri = await discover();

    let res = await getJson(http, uri, opts.timeoutMs, shutdown.signal);
    if (!res.ok && res.status === 404 && fromCache) {
      // The provider may have moved its keys: look again, once.
      discoveredJwksUri = undefined;
      const fresh = (discoveredJwksUri = await discover());
      if (fresh !== uri) {
        uri = fresh;
        res = await getJson(http, uri, opts.timeoutMs, shutdown.signal);
      }
    }
    const where = `JWKS ${describeUrl(uri)}`;
    if (!res.ok) throw new PortcullisError('ERR_JWKS_FETCH', `${where}: ${res.message}`);
    let parsed: ReturnType<typeof parseJwks>;
    try {
      parsed = parseJwks(res.body);
    } catch (err) {
      throw new PortcullisError('ERR_JWKS_INVALID', `${where}: ${shortErrorMessage(err)}`);
    }
    if (parsed.keys.length === 0) {
      throw new PortcullisError('ERR_JWKS_INVALID', `${where}: no usable signing keys (${summarizeSkipped(parsed.skipped)})`);
    }
    return { set: indexKeys(parsed.keys), skipped: countSkipped(parsed.skipped) };
  }

  function scheduleNext(): void {
    if (!started || stopped) return;
    if (timer !== undefined) scheduler.clearTimeout(timer);
    const delay =
      consecutiveFailures === 0
        ? opts.refreshIntervalMs
        : Math.min(retryMinMs * 2 ** (consecutiveFailures - 1), opts.refreshIntervalMs);
    const handle = scheduler.setTimeout(() => {
      if (timer === handle) timer = undefined;
      void refresh();
    }, delay);
    handle.unref?.();
    timer = handle;
  }

  async function runFetch(): Promise<void> {
    const startedAt = clock.now();
    lastAttemptAt = startedAt;
    try {
      const loaded = await load();
      if (stopped) return;
      keys = loaded.set;
      skippedKeyCount = loaded.skipped;
      lastSuccessAt = clock.now();
      consecutiveFailures = 0;
      lastError = undefined;
      emit({
        type: 'fetch',
        ok: true,
        durationMs: lastSuccessAt - startedAt,
        keyCount: loaded.set.count,
        skippedKeyCount: loaded.skipped,
      });
    } catch (err) {
      if (stopped) return;
      consecutiveFailures += 1;
      lastError = shortErrorMessage(err);
      emit({ type: 'fetch', ok: false, durationMs: clock.now() - startedAt, error: lastError });
    } finally {
      scheduleNext();
    }
  }

  function refresh(): Promise<void> {
    if (stopped) return Promise.resolve();
    if (inflight) return inflight;
    const p: Promise<void> = runFetch().finally(() => {
      if (inflight === p) inflight = undefined;
    });
    inflight = p;
    return p;
  }

  function state(now: number): KeySourceStatus['state'] {
    if (lastSuccessAt === undefined) return 'never_loaded';
    const age = now - lastSuccessAt;
    if (age > opts.maxStalenessMs) return 'expired';
    if (consecutiveFailures === 0 || age < opts.refreshIntervalMs * 2) return 'fresh';
    return 'stale_serving';
  }

  function get(kid: string | undefined, alg: string): KeyLookup {
    if (keys === undefined || lastSuccessAt === undefined) return 'unavailable';
    if (clock.now() - lastSuccessAt > opts.maxStalenessMs) return 'unavailable';
    return lookup(keys, kid, alg);
  }

  async function resolve(kid: string | undefined, alg: string): Promise<KeyLookup> {
    const first = get(kid, alg);
    if (typeof first !== 'string' || stopped) return first;
    // A fetch in flight (the first one after start(), a refresh, another kid miss) may bring the key: share it.
    if (inflight) {
      await inflight;
      return get(kid, alg);
    }
    // Requests must not drive fetches against an IdP that is down; the background retry does that.
    if (first === 'unavailable') return first;
    // No refetch can make 'none', HS256 or an unknown alg match.
    if (!SUPPORTED_ALGS.has(alg)) return first;
    const now = clock.now();
    if (lastKidMissFetchAt !== undefined && now - lastKidMissFetchAt < opts.kidMissCooldownMs) {
      emit({ type: 'kid_miss_rate_limited', kid });
      return first;
    }
    lastKidMissFetchAt = now;
    emit({ type: 'kid_miss_refetch', kid });
    await refresh();
    return get(kid, alg);
  }

  return {
    get,
    resolve,
    refresh,
    start(): void {
      if (started || stopped) return;
      started = true;
      void refresh();
    },
    stop(): void {
      if (stopped) return;
      stopped = true;
      if (timer !== undefined) scheduler.clearTimeout(timer);
      timer = undefined;
      shutdown.abort();
    },
    status(): KeySourceStatus {
      const s = state(clock.now());
      const out: KeySourceStatus = {
        ready: s === 'fresh' || s === 'stale_serving',
        keyCount: keys?.count ?? 0,
        skippedKeyCount,
        consecutiveFailures,
        state: s,
      };
      if (lastSuccessAt !== undefined) out.lastSuccessAt = lastSuccessAt;
      if (lastAttemptAt !== undefined) out.lastAttemptAt = lastAttemptAt;
      if (lastError !== undefined) out.lastError = lastError;
      return out;
    },
  };
}

/**
 * A fixed key set (the built-in dev issuer): always ready, never fetches.
 * Private keys are reduced to their public half. Throws PortcullisError
 * `ERR_JWKS_INVALID` for an empty list, a secret key, or a key whose `kty`
 * or `alg` does not suit it.
 */
export function createStaticKeySource(keys: ResolvedKey[]): KeySource {
  if (keys.length === 0) throw new PortcullisError('ERR_JWKS_INVALID', 'static key source needs at least one key');
  const indexed = keys.map((k, i): IndexedKey => {
    const where = `static key #${i}${k.kid !== undefined ? ` (kid "${k.kid}")` : ''}`;
    if (k.key.type === 'secret') throw new PortcullisError('ERR_JWKS_INVALID', `${where}: symmetric keys are not allowed`);
    const key = k.key.type === 'private' ? createPublicKey(k.key) : k.key;
    const described = describeKeyObject(key);
    if (typeof described === 'string') throw new PortcullisError('ERR_JWKS_INVALID', `${where}: ${described}`);
    if (described.kty !== k.kty) {
      throw new PortcullisError('ERR_JWKS_INVALID', `${where}: kty is "${k.kty}" but the key is ${described.kty}`);
    }
    const algs = allowedAlgs(described.algs, k.alg);
    if (!algs) throw new PortcullisError('ERR_JWKS_INVALID', `${where}: alg "${String(k.alg)}" does not suit a ${described.kty} key`);
    return { resolved: Object.freeze({ ...k, key }), algs };
  });
  const set = indexKeys(indexed);
  const get = (kid: string | undefined, alg: string): KeyLookup => lookup(set, kid, alg);
  return {
    get,
    resolve: (kid, alg) => Promise.resolve(get(kid, alg)),
    start: () => undefined,
    stop: () => undefined,
    refresh: () => Promise.resolve(),
    status: () => ({ ready: true, keyCount: set.count, skippedKeyCount: 0, consecutiveFailures: 0, state: 'fresh' }),
  };
}
