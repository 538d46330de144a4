import type { RetryOptions, Sleep } from '../types.js';
import { backoffDelayMs } from './backoff.js';
import { retryAfterMs, shortErrorMessage } from './http.js';

export interface RetryDeps {
  retry: RetryOptions;
  sleep: Sleep;
  random: () => number;
}

export type RetryingOutcome =
  /** A response that is not worth retrying (2xx, 4xx other than 429, ...), body unread. */
  | { ok: true; res: Response; attempts: number }
  /** Every attempt failed with a network error, a timeout, a 5xx or a 429. */
  | { ok: false; attempts: number; lastStatus?: number; lastError: string };

/** 5xx and 429 (the IdP asked us to slow down) are worth another try; other answers are final. */
export function isRetryableStatus(status: number): boolean {
  return status >= 500 || status === 429;
}

/**
 * Runs `request` up to `retry.attempts` times, sleeping with exponential backoff and
 * jitter between attempts, while it throws (network error, timeout) or answers 5xx/429.
 */
export async function retryingRequest(deps: RetryDeps, request: () => Promise<Response>): Promise<RetryingOutcome> {
  const { retry } = deps;
  let lastStatus: number | undefined;
  let lastError = 'no attempt made';
  for (let attempt = 1; attempt <= retry.attempts; attempt++) {
    let hint: number | undefined;
    try {
      const res = await request();
      if (!isRetryableStatus(res.status)) return { ok: true, res, attempts: attempt };
      lastStatus = res.status;
      lastError = `HTTP ${res.status}`;
      hint = retryAfterMs(res);
      await res.arrayBuffer().catch(() => undefined); // free the connection
    } catch (err) {
      lastStatus = undefined;
      lastError = shortErrorMessage(err);
    }
    if (attempt < retry.attempts) await deps.sleep(backoffDelayMs(attempt, retry, deps.random, hint));
  }
  return lastStatus === undefined
    ? { ok: false, attempts: retry.attempts, lastError }
    : { ok: false, attempts: retry.attempts, lastStatus, lastError };
}
