import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

/** The committed Envoy message types are exactly what `npm run gen:proto` produces from the protos. */
function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe('src/generated', () => {
  it('is up to date with the Envoy protos (run npm run gen:proto after changing them)', () => {
    const out = mkdtempSync(join(tmpdir(), 'portcullis-gen-'));
    try {
      execFileSync(process.execPath, ['scripts/gen-proto.mjs'], { env: { ...process.env, GEN_PROTO_OUT: out }, stdio: 'pipe' });
      const committed = 'src/generated';
      const a = files(committed).map((f) => relative(committed, f)).sort();
      const b = files(out).map((f) => relative(out, f)).sort();
      expect(b).toEqual(a);
      // The generator writes the absolute proto path in a comment; compare the rest.
      const strip = (s: string) => s.replace(/^\/\/ Original file: .*$/gm, '');
      for (const f of a) expect(strip(readFileSync(join(out, f), 'utf8')), f).toBe(strip(readFileSync(join(committed, f), 'utf8')));
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
