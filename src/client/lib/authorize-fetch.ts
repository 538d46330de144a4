import type { FetchLike } from '../types.js';

/**
 * Wraps `fetch` so every request without an Authorization header gets
 * `Bearer <token>`. An explicit Authorization header (in `init.headers`, or on a
 * `Request` passed without `init.headers`) wins: the caller asked for it.
 */
export function authorizeFetch(fetch: FetchLike, getToken: () => Promise<string>): FetchLike {
  return async (input, init) => {
    // fetch() takes init.headers over the Request's own when both are given.
    const source = init?.headers ?? (input instanceof Request ? input.headers : undefined);
    const headers = new Headers(source);
    if (headers.has('authorization')) return fetch(input, init);
    headers.set('authorization', `Bearer ${await getToken()}`);
    return fetch(input, { ...init, headers });
  };
}
