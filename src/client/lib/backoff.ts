import type { RetryOptions } from '../types.js';

/**
 * Delay before retry number `retry` (1 for the first retry): exponential
 * (`base * 2^(retry-1)`, capped at `max`) with "equal jitter", i.e. a random
 * point in the upper half, so clients that failed together do not retry together
 * yet never retry sooner than half the nominal delay. A server's Retry-After
 * replaces the computed delay, still capped at `max`.
 */
export function backoffDelayMs(
  retry: number,
  opts: RetryOptions,
  random: () => number,
  retryAfterMs?: number,
): number {
  if (retryAfterMs !== undefined) return Math.min(opts.maxDelayMs, retryAfterMs);
  const nominal = Math.min(opts.maxDelayMs, opts.baseDelayMs * 2 ** (retry - 1));
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(nominal / 2 + (nominal / 2) * r);
}
