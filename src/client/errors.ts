/**
 * Every error the client throws is a `ClientAuthError` with a `code` from this
 * closed list, so callers `switch (err.code)` and tests assert on the code.
 * Messages name the client id and the token endpoint (origin and path only);
 * they never contain the client secret or a token.
 */
export const CLIENT_AUTH_ERROR_CODES = [
  /** The options given to a constructor are unusable (thrown synchronously). */
  'ERR_CLIENT_OPTIONS_INVALID',
  /** OIDC discovery of the token endpoint failed (after retries where retrying made sense). */
  'ERR_DISCOVERY_FAILED',
  /** The token endpoint answered 4xx (bad client id or secret, unknown scope, ...): not retried. */
  'ERR_TOKEN_REQUEST_REJECTED',
  /** 5xx, 429, timeouts or network errors on every attempt. */
  'ERR_TOKEN_ENDPOINT_UNAVAILABLE',
  /** 200, but not a usable token response (not JSON, no access_token, not a bearer token). */
  'ERR_TOKEN_RESPONSE_INVALID',
  /** `TokenAuth`'s token provider threw or returned an empty value. */
  'ERR_TOKEN_UNAVAILABLE',
] as const;

export type ClientAuthErrorCode = (typeof CLIENT_AUTH_ERROR_CODES)[number];

export interface ClientAuthErrorDetails {
  clientId?: string;
  /** Origin and path of the endpoint involved (token endpoint or discovery document). */
  endpoint?: string;
  /** HTTP status of the last answer, when there was one. */
  status?: number;
  /** The IdP's OAuth `error` (e.g. `invalid_client`, `unauthorized_client`), sanitized. */
  idpError?: string;
  /** The IdP's `error_description`, sanitized and shortened. */
  idpErrorDescription?: string;
  /** How many requests were made before giving up. */
  attempts?: number;
  cause?: unknown;
}

export class ClientAuthError extends Error {
  readonly code: ClientAuthErrorCode;
  readonly clientId: string | undefined;
  readonly endpoint: string | undefined;
  readonly status: number | undefined;
  readonly idpError: string | undefined;
  readonly idpErrorDescription: string | undefined;
  readonly attempts: number | undefined;

  constructor(code: ClientAuthErrorCode, message: string, details: ClientAuthErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'ClientAuthError';
    this.code = code;
    this.clientId = details.clientId;
    this.endpoint = details.endpoint;
    this.status = details.status;
    this.idpError = details.idpError;
    this.idpErrorDescription = details.idpErrorDescription;
    this.attempts = details.attempts;
  }
}

export function isClientAuthError(err: unknown): err is ClientAuthError {
  return err instanceof ClientAuthError;
}
