import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

/**
 * Tests that spawn `bin/portcullis.js` need dist/. `npm test` builds before
 * vitest starts; this only builds when dist/ is missing (a bare `vitest run`),
 * so parallel test files never rewrite dist/ under each other.
 */
export function ensureBuilt(): void {
  if (existsSync(join(ROOT, 'dist', 'src', 'main.js'))) return;
  try {
    execSync('npm run build', { cwd: ROOT, stdio: 'pipe' });
  } catch (err) {
    const e = err as { stdout?: Buffer; stderr?: Buffer };
    throw new Error(`npm run build failed:\n${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`);
  }
}
