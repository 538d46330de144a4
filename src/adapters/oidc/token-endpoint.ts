import { randomUUID, type KeyObject } from 'node:crypto';
import { decodeJwt, SignJWT } from 'jose';
import type { Clock, FetchFn, Scheduler } from '../../core/types.js';
import { defaultDiscoveryUrl, describeUrl, getJson, isHttpUrl, shortErrorMessage, untilAborted, type HttpDeps } from './discovery.js';

/**
 * An OAuth 2.0 token endpoint client for RFC 8693 token exchange: finds the
 * endpoint by OIDC discovery (unless configured), authenticates as
 * portcullis's own client (`client_secret_basic` or `private_key_jwt`), and
 * turns every answer into a typed outcome. Nothing here throws to the caller
 * and nothing here logs: the caller decides what to record.
 */

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
export const JWT_BEARER_CLIENT_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

export type AssertionAlg = 'RS256' | 'ES256' | 'PS256';

/** How portcullis proves it is its own client. Passed per call, so a reloaded secret applies at once. */
export type ClientAuth =
  | { method: 'client_secret_basic'; clientId: string; clientSecret: string }
  | { method: 'private_key_jwt'; clientId: string; key: KeyObject; alg: AssertionAlg; kid?: string };

export interface ExchangeRequest {
  subjectToken: string;
  audience: string;
  /** Space-delimited scopes; omitted from the request when undefined. */
  scope?: string;
}

export interface IssuedToken {
  accessToken: string;
  /**
   * ms since epoch: the earlier of `now + expires_in` and the token's own `exp`
   * claim, whichever of the two are present; undefined when neither is.
   */
  expiresAt?: number;
}

/** Closed list of failure kinds; callers switch on it, tests assert on it. */
export type TokenEndpointErrorCode =
  /** The token endpoint is not known: discovery failed (or is cooling down after a failure). */
  | 'discovery_failed'
  | 'timeout'
  /** Connection refused, reset, DNS, ... */
  | 'network'
  /** The endpoint answered with a status other than 200. */
  | 'http_status'
  /** 200 but not a usable token response (not JSON, no access_token, wrong token type). */
  | 'invalid_response'
  /** The client was stopped. */
  | 'aborted';

export type ExchangeOutcome =
  | { ok: true; token: IssuedToken }
  | {
      ok: false;
      code: TokenEndpointErrorCode;
      /** Short, never contains a token or a secret; URLs are reduced to origin and path. */
      message: string;
      /** HTTP status when the endpoint answered. */
      status?: number;
      /** The OAuth `error` code of an error response (e.g. `invalid_client`), sanitized. */
      idpError?: string;
    };

export interface TokenEndpointOptions {
  /** Compared exactly with the discovery document's `issuer`. */
  issuer: string;
  /** Defaults to `${issuer}/.well-known/openid-configuration`. */
  discoveryUrl?: string;
  /** Skips discovery when set. */
  tokenEndpoint?: string;
  /** Per HTTP request, body included. */
  timeoutMs: number;
  /** After a failed discovery, requests fail at once for this long instead of asking again. */
  discoveryCooldownMs: number;
  /** Client assertions (`private_key_jwt`) expire this long after they are made. Default 60 s. */
  assertionLifetimeSeconds?: number;
}

export interface TokenEndpointDeps {
  fetch: FetchFn;
  scheduler: Scheduler;
  clock: Clock;
}

export interface TokenEndpointStatus {
  /** The endpoint in use (origin and path), once known. */
  endpoint?: string;
  discovered: boolean;
  lastDiscoveryError?: string;
  /** ms since epoch of the last failed discovery. */
  lastDiscoveryFailureAt?: number;
}

export interface TokenEndpointClient {
  /** One token exchange; never rejects. */
  exchange(req: ExchangeRequest, auth: ClientAuth): Promise<ExchangeOutcome>;
  /** Looks up the endpoint now unless known or cooling down (shared with any lookup in flight); never rejects. */
  discover(): Promise<void>;
  status(): TokenEndpointStatus;
  /** Aborts requests in flight; later calls answer `aborted`. */
  stop(): void;
}

const MAX_RESPONSE_CHARS = 64 * 1024;
const DEFAULT_ASSERTION_LIFETIME_S = 60;

/**
 * Reads `token_endpoint` from the OpenID Provider configuration. Throws an
 * Error with a short message when the document is unreachable, names another
 * issuer, or has no http(s) token endpoint.
 */
export async function discoverTokenEndpoint(
  deps: HttpDeps,
  opts: { issuer: string; discoveryUrl?: string; timeoutMs: number; signal?: AbortSignal },
): Promise<string> {
  const url = opts.discoveryUrl ?? defaultDiscoveryUrl(opts.issuer);
  const where = `discovery ${describeUrl(url)}`;
  const res = await getJson(deps, url, opts.timeoutMs, opts.signal);
  if (!res.ok) throw new Error(`${where}: ${res.message}`);
  const doc = res.body;
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Error(`${where}: document is not a JSON object`);
  const { issuer, token_endpoint: endpoint } = doc as { issuer?: unknown; token_endpoint?: unknown };
  if (issuer !== opts.issuer) {
    throw new Error(`${where}: document names ${typeof issuer === 'string' ? `"${issuer.slice(0, 200)}"` : 'no issuer'}, expected "${opts.issuer}"`);
  }
  if (!isHttpUrl(endpoint)) throw new Error(`${where}: token_endpoint is missing or not an http(s) URL without credentials`);
  return endpoint;
}

/** `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1 asks for it in Basic credentials). */
function formEncode(value: string): string {
  return new URLSearchParams([['', value]]).toString().slice(1);
}

/** `Basic base64(urlencode(client_id) ":" urlencode(client_secret))` per RFC 6749 §2.3.1. */
export function basicAuthorization(clientId: string, clientSecret: string): string {
  return `Basic ${Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`, 'utf8').toString('base64')}`;
}

/** A `private_key_jwt` client assertion (RFC 7523 §3): iss = sub = client id, aud = the token endpoint. */
export async function signClientAssertion(
  auth: Extract<ClientAuth, { method: 'private_key_jwt' }>,
  audience: string,
  nowMs: number,
  lifetimeSeconds = DEFAULT_ASSERTION_LIFETIME_S,
): Promise<string> {
  const iat = Math.floor(nowMs / 1000);
  const header: { alg: AssertionAlg; typ: string; kid?: string } = { alg: auth.alg, typ: 'JWT' };
  if (auth.kid !== undefined) header.kid = auth.kid;
  return new SignJWT({})
    .setProtectedHeader(header)
    .setIssuer(auth.clientId)
    .setSubject(auth.clientId)
    .setAudience(audience)
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + lifetimeSeconds)
    .sign(auth.key);
}

/** The OAuth `error` code of an error body, reduced to printable ASCII and a sane length. */
function oauthErrorCode(text: string): string | undefined {
  try {
    const body = JSON.parse(text) as unknown;
    const code = typeof body === 'object' && body !== null ? (body as { error?: unknown }).error : undefined;
    if (typeof code !== 'string') return undefined;
    const clean = code.replace(/[^\x21-\x7e]/g, '').slice(0, 64);
    return clean || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The earlier of `now + expires_in` and the token's `exp` claim, whichever
 * exist. The token is not verified: it came from the IdP over a channel we
 * authenticated, and only its lifetime is read.
 */
export function expiryOf(accessToken: string, expiresIn: unknown, nowMs: number): number | undefined {
  const candidates: number[] = [];
  if (typeof expiresIn === 'number' && Number.isFinite(expiresIn) && expiresIn >= 0) candidates.push(nowMs + expiresIn * 1000);
  try {
    const exp = decodeJwt(accessToken).exp;
    if (typeof exp === 'number' && Number.isFinite(exp)) candidates.push(exp * 1000);
  } catch {
    // An opaque token: only expires_in tells its lifetime.
  }
  return candidates.length > 0 ? Math.min(...candidates) : undefined;
}

/** Parses a 200 answer into a token, or says why it is unusable. */
function parseTokenResponse(text: string, nowMs: number): ExchangeOutcome {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { ok: false, code: 'invalid_response', status: 200, message: 'token response is not valid JSON' };
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return { ok: false, code: 'invalid_response', status: 200, message: 'token response is not a JSON object' };
  }
  const r = body as { access_token?: unknown; expires_in?: unknown; issued_token_type?: unknown };
  if (typeof r.access_token !== 'string' || r.access_token.length === 0) {
    return { ok: false, code: 'invalid_response', status: 200, message: 'token response has no access_token' };
  }
  if (r.issued_token_type !== undefined && r.issued_token_type !== ACCESS_TOKEN_TYPE) {
    return { ok: false, code: 'invalid_response', status: 200, message: 'token response issued another token type than an access token' };
  }
  const token: IssuedToken = { accessToken: r.access_token };
  const expiresAt = expiryOf(r.access_token, r.expires_in, nowMs);
  if (expiresAt !== undefined) token.expiresAt = expiresAt;
  return { ok: true, token };
}


export function createTokenEndpointClient(deps: TokenEndpointDeps, opts: TokenEndpointOptions): TokenEndpointClient {
  const { clock, scheduler } = deps;
  const http: HttpDeps = { fetch: deps.fetch, scheduler };
  const shutdown = new AbortController();
  let endpoint: string | undefined = opts.tokenEndpoint;
  let discovering: Promise<void> | undefined;
  let lastDiscoveryError: string | undefined;
  let lastDiscoveryFailureAt: number | undefined;

  function coolingDown(): boolean {
    return lastDiscoveryFailureAt !== undefined && clock.now() - lastDiscoveryFailureAt < opts.discoveryCooldownMs;
  }

  function discover(): Promise<void> {
    if (endpoint !== undefined || shutdown.signal.aborted) return Promise.resolve();
    if (discovering) return discovering;
    if (coolingDown()) return Promise.resolve();
    const p = discoverTokenEndpoint(http, {
      issuer: opts.issuer,
      discoveryUrl: opts.discoveryUrl,
      timeoutMs: opts.timeoutMs,
      signal: shutdown.signal,
    })
      .then(
        (found) => {
          endpoint = found;
          lastDiscoveryError = undefined;
          lastDiscoveryFailureAt = undefined;
        },
        (err: unknown) => {
          lastDiscoveryError = shortErrorMessage(err);
          lastDiscoveryFailureAt = clock.now();
        },
      )
      .finally(() => {
        if (discovering === p) discovering = undefined;
      });
    discovering = p;
    return p;
  }

  async function post(url: string, req: ExchangeRequest, auth: ClientAuth): Promise<ExchangeOutcome> {
    const form = new URLSearchParams();
    form.set('grant_type', TOKEN_EXCHANGE_GRANT);
    form.set('subject_token', req.subjectToken);
    form.set('subject_token_type', ACCESS_TOKEN_TYPE);
    form.set('requested_token_type', ACCESS_TOKEN_TYPE);
    form.set('audience', req.audience);
    if (req.scope !== undefined) form.set('scope', req.scope);
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    };
    if (auth.method === 'client_secret_basic') {
      headers.authorization = basicAuthorization(auth.clientId, auth.clientSecret);
    } else {
      form.set('client_id', auth.clientId);
      form.set('client_assertion_type', JWT_BEARER_CLIENT_ASSERTION);
      try {
        form.set('client_assertion', await signClientAssertion(auth, url, clock.now(), opts.assertionLifetimeSeconds));
      } catch (err) {
        return { ok: false, code: 'invalid_response', message: `cannot sign the client assertion: ${shortErrorMessage(err)}` };
      }
    }

    const where = `token endpoint ${describeUrl(url)}`;
    const timeout = new AbortController();
    const handle = scheduler.setTimeout(() => timeout.abort(), opts.timeoutMs);
    handle.unref?.();
    const signal = AbortSignal.any([shutdown.signal, timeout.signal]);
    try {
      const res = await untilAborted(deps.fetch(url, { method: 'POST', headers, body: form.toString(), signal }), signal);
      const text = await untilAborted(res.text(), signal);
      if (res.status !== 200) {
        const out: ExchangeOutcome = { ok: false, code: 'http_status', status: res.status, message: `${where} answered HTTP ${res.status}` };
        const idpError = oauthErrorCode(text);
        if (idpError !== undefined) {
          out.idpError = idpError;
          out.message += ` (${idpError})`;
        }
        // A discovered endpoint that is gone: look it up again next time.
        if (res.status === 404 && opts.tokenEndpoint === undefined && endpoint === url) endpoint = undefined;
        return out;
      }
      if (text.length > MAX_RESPONSE_CHARS) {
        return { ok: false, code: 'invalid_response', status: 200, message: `${where}: token response is larger than ${MAX_RESPONSE_CHARS} characters` };
      }
      return parseTokenResponse(text, clock.now());
    } catch (err) {
      if (shutdown.signal.aborted) return { ok: false, code: 'aborted', message: 'token endpoint client stopped' };
      if (timeout.signal.aborted) return { ok: false, code: 'timeout', message: `${where} did not answer within ${opts.timeoutMs} ms` };
      return { ok: false, code: 'network', message: `${where}: request failed: ${shortErrorMessage(err)}` };
    } finally {
      scheduler.clearTimeout(handle);
    }
  }

  return {
    async exchange(req, auth) {
      if (shutdown.signal.aborted) return { ok: false, code: 'aborted', message: 'token endpoint client stopped' };
      if (endpoint === undefined) await discover();
      const url = endpoint;
      if (url === undefined) {
        return {
          ok: false,
          code: 'discovery_failed',
          message: `token endpoint unknown: ${lastDiscoveryError ?? 'discovery has not succeeded yet'}`,
        };
      }
      return post(url, req, auth);
    },
    discover,
    status() {
      const s: TokenEndpointStatus = { discovered: opts.tokenEndpoint === undefined && endpoint !== undefined };
      if (endpoint !== undefined) s.endpoint = describeUrl(endpoint);
      if (lastDiscoveryError !== undefined) s.lastDiscoveryError = lastDiscoveryError;
      if (lastDiscoveryFailureAt !== undefined) s.lastDiscoveryFailureAt = lastDiscoveryFailureAt;
      return s;
    },
    stop() {
      shutdown.abort();
    },
  };
}
