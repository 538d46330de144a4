/**
 * Client-side authentication for services that call a platform behind portcullis:
 * `ServiceAccountAuth` (client credentials, cached and refreshed) and `TokenAuth`
 * (a token obtained elsewhere). Both hand out `Authorization: Bearer` headers and wrap
 * a fetch function. This entry point imports nothing from the server.
 */
export { ServiceAccountAuth, type ServiceAccountAuthOptions } from './service-account.js';
export { TokenAuth, type TokenSource } from './token-auth.js';
export {
  CLIENT_AUTH_ERROR_CODES,
  ClientAuthError,
  isClientAuthError,
  type ClientAuthErrorCode,
  type ClientAuthErrorDetails,
} from './errors.js';
export type { BearerAuth, Clock, FetchLike, RetryOptions, Sleep } from './types.js';
