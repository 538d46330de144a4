/** The subset of `fetch` the client calls; `globalThis.fetch` fits, and so does any fetch-compatible function. */
export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/** Milliseconds since the epoch; injected so tests move time instead of waiting for it. */
export interface Clock {
  now(): number;
}

/** Waits `ms` milliseconds; injected so tests record the backoff instead of sleeping. */
export type Sleep = (ms: number) => Promise<void>;

export interface RetryOptions {
  /** Requests in total, the first one included (1 = no retry). Default 4. */
  attempts: number;
  /** Delay before the first retry; doubles for each later one. Default 200 ms. */
  baseDelayMs: number;
  /** Upper bound for one delay (and for a server's `Retry-After`). Default 5000 ms. */
  maxDelayMs: number;
}

/** What `ServiceAccountAuth` and `TokenAuth` have in common. */
export interface BearerAuth {
  /** The access token to send now. */
  getToken(): Promise<string>;
  /** `{ authorization: 'Bearer <token>' }`, ready to spread into a request's headers. */
  headers(): Promise<Record<string, string>>;
  /**
   * A fetch-compatible function that adds `Authorization: Bearer <token>` to every
   * request that has no Authorization header yet; a request that already carries one
   * is sent unchanged (and no token is fetched for it).
   */
  wrapFetch(fetch: FetchLike): FetchLike;
}
