import type { Clock } from '../../core/types.js';

/**
 * A token bucket on the injected clock: `perSecond` tokens a second, at most
 * `burst` saved up. Refilled lazily on `take()`, so it needs no timer.
 */
export interface TokenBucket {
  /** Takes one token; false when none is left. */
  take(): boolean;
}

export function createTokenBucket(clock: Clock, perSecond: number, burst = Math.max(1, Math.ceil(perSecond))): TokenBucket {
  let tokens = burst;
  let last = clock.now();
  return {
    take() {
      const now = clock.now();
      if (now > last) {
        tokens = Math.min(burst, tokens + ((now - last) / 1000) * perSecond);
        last = now;
      }
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    },
  };
}
