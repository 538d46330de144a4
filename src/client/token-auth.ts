import { ClientAuthError } from './errors.js';
import { BearerAuthBase } from './lib/bearer-auth-base.js';

/** A token, or a function that returns the current one (called for every request, so it may rotate). */
export type TokenSource = string | (() => string | Promise<string>);

/**
 * A token obtained elsewhere (a user's login, a CI secret, a workload's
 * projected token), sent as is. No caching, refresh or expiry check: the
 * source is asked every time, so a function may hand out a newer token.
 */
export class TokenAuth extends BearerAuthBase {
  readonly #source: TokenSource;

  constructor(source: TokenSource) {
    super();
    if (typeof source === 'string') {
      if (source.trim() === '') throw new ClientAuthError('ERR_CLIENT_OPTIONS_INVALID', 'TokenAuth: the token is empty');
    } else if (typeof source !== 'function') {
      throw new ClientAuthError('ERR_CLIENT_OPTIONS_INVALID', 'TokenAuth: expected a token string or a function returning one');
    }
    this.#source = source;
  }

  async getToken(): Promise<string> {
    const source = this.#source;
    if (typeof source === 'string') return source;
    let token: unknown;
    try {
      token = await source();
    } catch (err) {
      throw new ClientAuthError('ERR_TOKEN_UNAVAILABLE', 'TokenAuth: the token provider failed', { cause: err });
    }
    if (typeof token !== 'string' || token.trim() === '') {
      throw new ClientAuthError('ERR_TOKEN_UNAVAILABLE', 'TokenAuth: the token provider returned no token');
    }
    return token;
  }
}
