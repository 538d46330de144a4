import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createDoorkeeper } from '../../../src/stages/verify.js';

/** Token-like strings: a shared header and payload prefix, a random signature at the end (what the filter hashes). */
function tokens(n: number): string[] {
  const prefix = 'eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyIn0.';
  return Array.from({ length: n }, () => prefix + randomBytes(256).toString('base64url'));
}

describe('token-cache admission filter (doorkeeper)', () => {
  it('admits every token of a working set on its second use, however many share hash bits', () => {
    // 5,000 tokens in use, a window of 10,000: each comes back within the window.
    // A direct-mapped table of fingerprints lost a few hundred of them here (two tokens
    // in one slot overwrite each other forever); a Bloom filter never forgets one.
    const d = createDoorkeeper(10_000);
    const set = tokens(5_000);
    for (const t of set) d.admit(t);
    const refused = set.filter((t) => !d.admit(t));
    expect(refused).toHaveLength(0);
  });

  it('mostly refuses tokens it has not seen (false positives only cache a token on first use)', () => {
    const d = createDoorkeeper(10_000);
    for (const t of tokens(8_000)) d.admit(t);
    const fresh = tokens(1_000);
    const admitted = fresh.filter((t) => d.admit(t)).length;
    // ≈ 0.1 % expected at this fill (16 bits per token of the window, 4 probes).
    expect(admitted).toBeLessThan(20);
  });

  it('forgets what it saw after a window of first sightings', () => {
    const d = createDoorkeeper(100);
    const [late, ...others] = tokens(101) as [string, ...string[]];
    expect(d.admit(late)).toBe(false);
    for (const t of others) d.admit(t);
    // 100 first sightings since `late`: the filter was cleared, so this is a first sighting again.
    expect(d.admit(late)).toBe(false);
    expect(d.admit(late)).toBe(true);
  });
});
