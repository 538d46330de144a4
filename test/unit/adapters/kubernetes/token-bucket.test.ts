import { describe, expect, it } from 'vitest';
import { createTokenBucket } from '../../../../src/adapters/kubernetes/token-bucket.js';
import { createFakeClock } from '../../../helpers/fake-clock.js';

describe('token bucket (injected clock)', () => {
  it('allows a burst of one second, then perSecond', () => {
    const c = createFakeClock(5_000);
    const b = createTokenBucket(c.clock, 5);
    expect([1, 2, 3, 4, 5, 6].map(() => b.take())).toEqual([true, true, true, true, true, false]);
    c.advance(199);
    expect(b.take()).toBe(false);
    c.advance(1);
    expect(b.take()).toBe(true);
    expect(b.take()).toBe(false);
    c.advance(60_000); // refills up to the burst only
    expect([1, 2, 3, 4, 5, 6].map(() => b.take()).filter(Boolean)).toHaveLength(5);
  });

  it('a rate below one per second keeps a burst of one', () => {
    const c = createFakeClock();
    const b = createTokenBucket(c.clock, 0.5);
    expect(b.take()).toBe(true);
    c.advance(1_999);
    expect(b.take()).toBe(false);
    c.advance(1);
    expect(b.take()).toBe(true);
  });
});
