import { ClientAuthError } from './errors.js';
import { BearerAuthBase } from './lib/bearer-auth-base.js';
import { discoverTokenEndpoint } from './lib/discovery.js';
import { basicAuthorization, describeUrl, isHttpUrl, jwtExpiryMs, readJsonObject, sanitizeIdpText } from './lib/http.js';
import { retryingRequest } from './lib/retrying-request.js';
import type { Clock, FetchLike, RetryOptions, Sleep } from './types.js';

export interface ServiceAccountAuthOptions {
  /** The token endpoint, e.g. `https://kc.example/realms/agentcube/protocol/openid-connect/token`. */
  tokenEndpoint?: string;
  /** Or the issuer: the token endpoint is then read once from its OIDC discovery document. */
  issuer?: string;
  clientId: string;
  clientSecret: string;
  /** `scope` of the request (a list is joined with spaces). */
  scope?: string | readonly string[];
  /** `audience` of the request, sent as is (Keycloak ignores it; Auth0-style IdPs need it). */
  audience?: string | readonly string[];
  /** A token is refreshed this long before it expires (at most half its lifetime). Default 30. */
  refreshMarginSeconds?: number;
  /** Per HTTP request. Default 10 000 ms. */
  timeoutMs?: number;
  retry?: Partial<RetryOptions>;
  fetch?: FetchLike;
  clock?: Clock;
  sleep?: Sleep;
  /** Jitter source in [0, 1). Default Math.random. */
  random?: () => number;
}

interface CachedToken {
  accessToken: string;
  /** ms since epoch after which getToken() asks for a new token. */
  refreshAt: number;
}

const DEFAULT_RETRY: RetryOptions = { attempts: 4, baseDelayMs: 200, maxDelayMs: 5000 };
const DEFAULT_TIMEOUT_MS = 10_000;

const defaultSleep: Sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function invalidOptions(message: string): ClientAuthError {
  return new ClientAuthError('ERR_CLIENT_OPTIONS_INVALID', `ServiceAccountAuth: ${message}`);
}

function nonNegative(v: number, name: string): number {
  if (!Number.isFinite(v) || v < 0) throw invalidOptions(`${name} must be a finite number >= 0`);
  return v;
}

function joinList(v: string | readonly string[] | undefined): string | undefined {
  if (v === undefined) return undefined;
  const s = typeof v === 'string' ? v : v.join(' ');
  return s.trim() === '' ? undefined : s;
}

/** `expires_in` as seconds: a number or a numeric string (some IdPs send strings); undefined otherwise. */
function expiresInSeconds(v: unknown): number | undefined {
  const n = typeof v === 'string' && /^\d+(\.\d+)?$/.test(v.trim()) ? Number(v) : v;
  return typeof n === 'number' && Number.isFinite(n) && n >= 0 ? n : undefined;
}

/**
 * OAuth 2.0 client credentials grant (`client_secret_basic`) for a service account.
 *
 * - The token is cached until `expiresAt - margin`, where `expiresAt` is the earlier of
 *   "request sent + expires_in" and the JWT's own `exp`, and the margin is
 *   `refreshMarginSeconds` but never more than half the token's lifetime. A token with
 *   neither `expires_in` nor a readable `exp` is not cached.
 * - Concurrent callers that find no fresh token share one request (single-flight).
 * - Network errors, timeouts, 5xx and 429 are retried with exponential backoff and
 *   jitter; any other 4xx fails at once with `ERR_TOKEN_REQUEST_REJECTED`.
 * - A failed refresh is not remembered: the next call tries again.
 */
export class ServiceAccountAuth extends BearerAuthBase {
  readonly clientId: string;
  readonly #secret: string;
  readonly #issuer: string | undefined;
  #tokenEndpoint: string | undefined;
  readonly #form: URLSearchParams;
  readonly #marginMs: number;
  readonly #timeoutMs: number;
  readonly #retry: RetryOptions;
  readonly #fetch: FetchLike;
  readonly #clock: Clock;
  readonly #sleep: Sleep;
  readonly #random: () => number;
  #cached: CachedToken | undefined;
  #inFlight: Promise<string> | undefined;

  constructor(opts: ServiceAccountAuthOptions) {
    super();
    if (typeof opts.clientId !== 'string' || opts.clientId === '') throw invalidOptions('clientId is required');
    if (typeof opts.clientSecret !== 'string' || opts.clientSecret === '') {
      throw invalidOptions(`clientSecret is required (client "${opts.clientId}")`);
    }
    if ((opts.tokenEndpoint === undefined) === (opts.issuer === undefined)) {
      throw invalidOptions('give exactly one of tokenEndpoint and issuer');
    }
    if (opts.tokenEndpoint !== undefined && !isHttpUrl(opts.tokenEndpoint)) {
      throw invalidOptions('tokenEndpoint must be an http(s) URL without credentials');
    }
    if (opts.issuer !== undefined && !isHttpUrl(opts.issuer)) {
      throw invalidOptions('issuer must be an http(s) URL without credentials');
    }
    const retry = { ...DEFAULT_RETRY, ...opts.retry };
    if (!Number.isInteger(retry.attempts) || retry.attempts < 1) throw invalidOptions('retry.attempts must be an integer >= 1');
    nonNegative(retry.baseDelayMs, 'retry.baseDelayMs');
    nonNegative(retry.maxDelayMs, 'retry.maxDelayMs');

    this.clientId = opts.clientId;
    this.#secret = opts.clientSecret;
    this.#issuer = opts.issuer;
    this.#tokenEndpoint = opts.tokenEndpoint;
    this.#marginMs = nonNegative(opts.refreshMarginSeconds ?? 30, 'refreshMarginSeconds') * 1000;
    this.#timeoutMs = nonNegative(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, 'timeoutMs');
    this.#retry = retry;
    this.#fetch = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#clock = opts.clock ?? { now: () => Date.now() };
    this.#sleep = opts.sleep ?? defaultSleep;
    this.#random = opts.random ?? Math.random;

    this.#form = new URLSearchParams({ grant_type: 'client_credentials' });
    const scope = joinList(opts.scope);
    if (scope !== undefined) this.#form.set('scope', scope);
    const audience = opts.audience === undefined ? [] : typeof opts.audience === 'string' ? [opts.audience] : opts.audience;
    for (const a of audience) this.#form.append('audience', a);
  }

  /** A token with more than the refresh margin left; asks the IdP only when needed. */
  getToken(): Promise<string> {
    const cached = this.#cached;
    if (cached !== undefined && this.#clock.now() < cached.refreshAt) return Promise.resolve(cached.accessToken);
    if (this.#inFlight === undefined) {
      this.#inFlight = this.#refresh().finally(() => {
        this.#inFlight = undefined;
      });
    }
    return this.#inFlight;
  }

  /** Forgets the cached token (e.g. after an API answered 401), so the next getToken() asks the IdP. */
  invalidate(): void {
    this.#cached = undefined;
  }

  /** The token endpoint in use (origin and path), once known. */
  get tokenEndpoint(): string | undefined {
    return this.#tokenEndpoint === undefined ? undefined : describeUrl(this.#tokenEndpoint);
  }

  async #endpoint(): Promise<string> {
    if (this.#tokenEndpoint !== undefined) return this.#tokenEndpoint;
    const issuer = this.#issuer ?? '';
    const deps = { fetch: this.#fetch, timeoutMs: this.#timeoutMs, retry: this.#retry, sleep: this.#sleep, random: this.#random };
    this.#tokenEndpoint = await discoverTokenEndpoint(deps, issuer, this.clientId);
    return this.#tokenEndpoint;
  }

  async #refresh(): Promise<string> {
    const endpoint = await this.#endpoint();
    const where = describeUrl(endpoint);
    const authorization = basicAuthorization(this.clientId, this.#secret);
    let sentAt = this.#clock.now();
    const outcome = await retryingRequest({ retry: this.#retry, sleep: this.#sleep, random: this.#random }, () => {
      sentAt = this.#clock.now();
      return this.#fetch(endpoint, {
        method: 'POST',
        headers: {
          authorization,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body: this.#form.toString(),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    });

    const details = { clientId: this.clientId, endpoint: where, attempts: outcome.attempts };
    if (!outcome.ok) {
      throw new ClientAuthError(
        'ERR_TOKEN_ENDPOINT_UNAVAILABLE',
        `token request for client "${this.clientId}" to ${where} failed after ${outcome.attempts} attempt(s), last: ${outcome.lastError}`,
        outcome.lastStatus === undefined ? details : { ...details, status: outcome.lastStatus },
      );
    }

    const { res } = outcome;
    const body = await readJsonObject(res);
    if (res.status !== 200) {
      const idpError = sanitizeIdpText(body?.error, [this.#secret]);
      const idpErrorDescription = sanitizeIdpText(body?.error_description, [this.#secret]);
      const said = idpError === undefined ? 'no OAuth error' : `${idpError}${idpErrorDescription ? ` (${idpErrorDescription})` : ''}`;
      throw new ClientAuthError(
        'ERR_TOKEN_REQUEST_REJECTED',
        `token request for client "${this.clientId}" rejected by ${where}: HTTP ${res.status}: ${said}`,
        {
          ...details,
          status: res.status,
          ...(idpError === undefined ? {} : { idpError }),
          ...(idpErrorDescription === undefined ? {} : { idpErrorDescription }),
        },
      );
    }

    const invalid = (why: string): ClientAuthError =>
      new ClientAuthError(
        'ERR_TOKEN_RESPONSE_INVALID',
        `token response for client "${this.clientId}" from ${where} is unusable: ${why}`,
        { ...details, status: 200 },
      );
    if (body === undefined) throw invalid('not a JSON object');
    const token = body.access_token;
    if (typeof token !== 'string' || token.trim() === '') throw invalid('no access_token');
    if (body.token_type !== undefined && (typeof body.token_type !== 'string' || body.token_type.toLowerCase() !== 'bearer')) {
      throw invalid(`token_type is ${JSON.stringify(body.token_type).slice(0, 40)}, expected Bearer`);
    }

    const fromExpiresIn = expiresInSeconds(body.expires_in);
    const candidates = [fromExpiresIn === undefined ? undefined : sentAt + fromExpiresIn * 1000, jwtExpiryMs(token)].filter(
      (v): v is number => v !== undefined,
    );
    if (candidates.length === 0) {
      this.#cached = undefined; // nothing says how long it lives: use it for the callers waiting now only
      return token;
    }
    const expiresAt = Math.min(...candidates);
    const margin = Math.min(this.#marginMs, Math.max(0, expiresAt - sentAt) / 2);
    this.#cached = { accessToken: token, refreshAt: expiresAt - margin };
    return token;
  }
}
