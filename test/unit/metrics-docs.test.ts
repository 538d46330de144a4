import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/** Every metric portcullis registers is in docs/operations.md's table. */
function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) return n === 'generated' ? [] : sources(p);
    return p.endsWith('.ts') ? [p] : [];
  });
}

describe('docs/operations.md', () => {
  it('lists every metric the code registers', () => {
    const doc = readFileSync('docs/operations.md', 'utf8');
    const names = new Set<string>();
    for (const f of sources('src')) for (const m of readFileSync(f, 'utf8').matchAll(/name: '(portcullis_[a-z_]+)'/g)) names.add(m[1] as string);
    expect(names.size).toBeGreaterThan(10);
    expect([...names].filter((n) => !doc.includes(`\`${n}\``))).toEqual([]);
  });
});
