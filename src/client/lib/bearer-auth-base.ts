import type { BearerAuth, FetchLike } from '../types.js';
import { authorizeFetch } from './authorize-fetch.js';

/** `headers()` and `wrapFetch()` in terms of `getToken()`, shared by both auth kinds. */
export abstract class BearerAuthBase implements BearerAuth {
  abstract getToken(): Promise<string>;

  async headers(): Promise<Record<string, string>> {
    return { authorization: `Bearer ${await this.getToken()}` };
  }

  wrapFetch(fetch: FetchLike): FetchLike {
    return authorizeFetch(fetch, () => this.getToken());
  }
}
