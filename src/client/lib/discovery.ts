import { ClientAuthError } from '../errors.js';
import type { FetchLike } from '../types.js';
import { describeUrl, isHttpUrl, readJsonObject } from './http.js';
import { retryingRequest, type RetryDeps } from './retrying-request.js';

const trimSlashes = (s: string): string => s.replace(/\/+$/, '');

/**
 * Reads `token_endpoint` from `<issuer>/.well-known/openid-configuration`,
 * retrying 5xx and network errors. The document must name the same issuer
 * (trailing slashes aside), so a typo cannot send the secret elsewhere.
 */
export async function discoverTokenEndpoint(
  deps: RetryDeps & { fetch: FetchLike; timeoutMs: number },
  issuer: string,
  clientId: string,
): Promise<string> {
  const url = `${trimSlashes(issuer)}/.well-known/openid-configuration`;
  const where = describeUrl(url);
  const fail = (message: string, extra: { status?: number; attempts?: number; cause?: unknown } = {}): ClientAuthError =>
    new ClientAuthError('ERR_DISCOVERY_FAILED', `OIDC discovery for client "${clientId}" failed at ${where}: ${message}`, {
      clientId,
      endpoint: where,
      ...extra,
    });

  const outcome = await retryingRequest(deps, () =>
    deps.fetch(url, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(deps.timeoutMs) }),
  );
  if (!outcome.ok) {
    throw fail(`unavailable after ${outcome.attempts} attempt(s), last: ${outcome.lastError}`, {
      ...(outcome.lastStatus === undefined ? {} : { status: outcome.lastStatus }),
      attempts: outcome.attempts,
    });
  }
  const { res, attempts } = outcome;
  if (res.status !== 200) {
    await res.arrayBuffer().catch(() => undefined);
    throw fail(`HTTP ${res.status}`, { status: res.status, attempts });
  }
  const doc = await readJsonObject(res);
  if (doc === undefined) throw fail('the document is not a JSON object', { status: 200, attempts });
  if (typeof doc.issuer !== 'string' || trimSlashes(doc.issuer) !== trimSlashes(issuer)) {
    const named = typeof doc.issuer === 'string' ? `"${doc.issuer.slice(0, 200)}"` : 'no issuer';
    throw fail(`the document names ${named}, expected "${issuer}"`, { status: 200, attempts });
  }
  if (!isHttpUrl(doc.token_endpoint)) {
    throw fail('token_endpoint is missing or not an http(s) URL', { status: 200, attempts });
  }
  return doc.token_endpoint;
}
