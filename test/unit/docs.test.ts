import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config/schema.js';
import { REASONS, REASON_CODES } from '../../src/core/reasons.js';

/** Walks zod's definition tree and lists every configuration key as `a.b[].c`. */
function keysOf(schema: unknown, prefix: string, out: Set<string>): void {
  const def = (schema as { _zod?: { def?: Record<string, unknown> } })._zod?.def;
  if (!def) return;
  switch (def.type) {
    case 'object': {
      const shape = def.shape as Record<string, unknown>;
      for (const [k, v] of Object.entries(shape)) {
        const key = prefix ? `${prefix}.${k}` : k;
        out.add(key);
        keysOf(v, key, out);
      }
      return;
    }
    case 'optional':
    case 'default':
    case 'prefault':
    case 'nullable':
      keysOf(def.innerType, prefix, out);
      return;
    case 'array':
      keysOf(def.element, `${prefix}[]`, out);
      return;
    case 'union':
      for (const o of def.options as unknown[]) keysOf(o, prefix, out);
      return;
    default:
      return;
  }
}

describe('docs stay in step with the code', () => {
  it('docs/decisions.md documents every reason code with its status', () => {
    const doc = readFileSync('docs/decisions.md', 'utf8');
    for (const code of REASON_CODES) {
      const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
      expect(row, `reason ${code} missing from docs/decisions.md`).toBeDefined();
      expect(row).toContain(`| ${REASONS[code]} |`);
    }
  });

  it('docs/configuration.md documents every configuration key', () => {
    const doc = readFileSync('docs/configuration.md', 'utf8');
    const keys = new Set<string>();
    keysOf(configSchema, '', keys);
    expect(keys.size).toBeGreaterThan(40);
    const missing = [...keys].filter((k) => !doc.includes(`\`${k}\``) && !doc.includes(`\`${k.replace(/^(\w+)$/, '$1')}\``));
    // Section keys (listen, routes, ...) are headings.
    const undocumented = missing.filter((k) => !doc.includes(`## \`${k}\``) && !doc.includes(`### ${k}`));
    expect(undocumented).toEqual([]);
  });
});
