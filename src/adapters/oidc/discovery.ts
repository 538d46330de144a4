import { PortcullisError } from '../../core/errors.js';
import type { FetchFn, Scheduler } from '../../core/types.js';

/** What an HTTP GET of a JSON document needs: the network and a timer for the timeout. */
export interface HttpDeps {
  fetch: FetchFn;
  scheduler: Scheduler;
}

export type JsonResult =
  | { ok: true; body: unknown }
  /** `status` is set when the server answered (so callers can react to a 404). */
  | { ok: false; status?: number; message: string };

const MAX_MESSAGE = 200;

/**
 * A URL as it may appear in errors and logs: origin and path only, so
 * credentials in the user-info part and tokens in the query never leak.
 */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid url)';
  }
}

/**
 * True for a parseable absolute http(s) URL without user-info (fetch refuses
 * credentials in URLs, and they would end up in error messages).
 */
export function isHttpUrl(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  try {
    const u = new URL(value);
    return (u.protocol === 'https:' || u.protocol === 'http:') && u.username === '' && u.password === '';
  } catch {
    return false;
  }
}

/** `<issuer>/.well-known/openid-configuration`, whether or not the issuer ends with '/'. */
export function defaultDiscoveryUrl(issuer: string): string {
  return `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
}

/** One line from any thrown value, short enough for a status page; includes a network error code when present. */
export function shortErrorMessage(err: unknown): string {
  let msg = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error ? (err.cause as { code?: unknown } | undefined) : undefined;
  if (cause && typeof cause.code === 'string') msg += ` (${cause.code})`;
  // Drop user-info from any URL a lower layer quoted.
  msg = msg.replace(/\/\/[^/\s@]*@/g, '//').replace(/\s+/g, ' ').trim();
  return msg.length > MAX_MESSAGE ? `${msg.slice(0, MAX_MESSAGE - 1)}…` : msg;
}

/** Settles with `p`, or rejects as soon as `signal` aborts (a fetch that ignores its signal cannot hang us). */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/**
 * GETs a JSON document with `accept: application/json`. Anything but a 200
 * with parseable JSON is a failure value, never a throw. The timeout covers
 * the whole exchange, body included; `signal` aborts early (shutdown).
 */
export async function getJson(
  deps: HttpDeps,
  url: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<JsonResult> {
  if (signal?.aborted) return { ok: false, message: 'aborted' };
  const timeout = new AbortController();
  const handle = deps.scheduler.setTimeout(() => timeout.abort(), timeoutMs);
  handle.unref?.();
  const combined = signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal;
  try {
    const res = await untilAborted(
      deps.fetch(url, { method: 'GET', headers: { accept: 'application/json' }, signal: combined }),
      combined,
    );
    if (res.status !== 200) {
      // Release the connection; nobody will read this body.
      res.body?.cancel().catch(() => undefined);
      return { ok: false, status: res.status, message: `HTTP ${res.status}` };
    }
    const text = await untilAborted(res.text(), combined);
    try {
      return { ok: true, body: JSON.parse(text) as unknown };
    } catch {
      return { ok: false, status: res.status, message: 'response is not valid JSON' };
    }
  } catch (err) {
    if (timeout.signal.aborted) return { ok: false, message: `timed out after ${timeoutMs} ms` };
    if (signal?.aborted) return { ok: false, message: 'aborted' };
    return { ok: false, message: `request failed: ${shortErrorMessage(err)}` };
  } finally {
    deps.scheduler.clearTimeout(handle);
  }
}

export interface DiscoveryOptions {
  /** The issuer the discovery document must name, compared exactly (OIDC Discovery §4.3). */
  issuer: string;
  /** Defaults to {@link defaultDiscoveryUrl}(issuer). */
  discoveryUrl?: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Fetches the OpenID Provider configuration and returns its `jwks_uri`.
 * Throws PortcullisError `ERR_DISCOVERY` when the document is unreachable,
 * malformed, names another issuer, or lacks an http(s) `jwks_uri`.
 */
export async function discoverJwksUri(deps: HttpDeps, opts: DiscoveryOptions): Promise<string> {
  const url = opts.discoveryUrl ?? defaultDiscoveryUrl(opts.issuer);
  const where = `discovery ${describeUrl(url)}`;
  const res = await getJson(deps, url, opts.timeoutMs, opts.signal);
  if (!res.ok) throw new PortcullisError('ERR_DISCOVERY', `${where}: ${res.message}`);
  const doc = res.body;
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new PortcullisError('ERR_DISCOVERY', `${where}: document is not a JSON object`);
  }
  const { issuer, jwks_uri: jwksUri } = doc as { issuer?: unknown; jwks_uri?: unknown };
  if (issuer !== opts.issuer) {
    const named = typeof issuer === 'string' ? `"${issuer.slice(0, MAX_MESSAGE)}"` : 'no issuer';
    throw new PortcullisError('ERR_DISCOVERY', `${where}: document names ${named}, expected "${opts.issuer}"`);
  }
  if (!isHttpUrl(jwksUri)) {
    throw new PortcullisError('ERR_DISCOVERY', `${where}: jwks_uri is missing or not an http(s) URL without credentials`);
  }
  return jwksUri;
}
