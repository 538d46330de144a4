import type { Principal } from '../core/types.js';

/**
 * Header value templates such as `"{sub}"` or `"tenant={issuer.name}"`,
 * compiled once at load into parts so a decision only concatenates.
 */
export interface TemplateContext {
  principal?: Principal;
  route: string;
  params: Readonly<Record<string, string>>;
}

type Part = string | ((ctx: TemplateContext) => string);

export interface CompiledTemplate {
  readonly source: string;
  /** True when the template reads the principal (it is skipped on anonymous routes). */
  readonly needsPrincipal: boolean;
  render(ctx: TemplateContext): string;
}

export type TemplateResult = { ok: true; template: CompiledTemplate } | { ok: false; message: string };

const VARS: Record<string, { principal: boolean; get: (ctx: TemplateContext) => string }> = {
  sub: { principal: true, get: (c) => c.principal?.sub ?? '' },
  qualified_sub: { principal: true, get: (c) => c.principal?.qualifiedSub ?? '' },
  'issuer.name': { principal: true, get: (c) => c.principal?.issuerName ?? '' },
  'issuer.url': { principal: true, get: (c) => c.principal?.issuer ?? '' },
  roles: { principal: true, get: (c) => (c.principal ? c.principal.roles.join(',') : '') },
  effective_roles: { principal: true, get: (c) => (c.principal ? [...c.principal.effectiveRoles].sort().join(',') : '') },
  route: { principal: false, get: (c) => c.route },
};

function claimGetter(path: string[]): (ctx: TemplateContext) => string {
  return (ctx) => {
    let v: unknown = ctx.principal?.claims;
    for (const seg of path) {
      if (typeof v !== 'object' || v === null) return '';
      v = (v as Record<string, unknown>)[seg];
    }
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    if (Array.isArray(v)) return v.filter((x) => typeof x === 'string').join(',');
    return '';
  };
}

/** Header values must not carry CR/LF/NUL: a claim can be attacker-influenced. */
function sanitize(v: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\x00-\x08\x0a-\x1f\x7f]/.test(v) ? v.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, ' ') : v;
}

export function compileTemplate(source: string, pathParams: ReadonlySet<string>): TemplateResult {
  const parts: Part[] = [];
  let needsPrincipal = false;
  const re = /\{([^{}]*)\}/g;
  let last = 0;
  for (let m = re.exec(source); m; m = re.exec(source)) {
    if (/[{}]/.test(source.slice(last, m.index))) return { ok: false, message: 'unbalanced "{" or "}"' };
    if (m.index > last) parts.push(source.slice(last, m.index));
    last = m.index + m[0].length;
    const name = (m[1] ?? '').trim();
    const known = VARS[name];
    if (known) {
      parts.push(known.get);
      needsPrincipal ||= known.principal;
    } else if (name.startsWith('claims.') && name.length > 7) {
      parts.push(claimGetter(name.slice(7).split('.')));
      needsPrincipal = true;
    } else if (name.startsWith('path.')) {
      const p = name.slice(5);
      if (!pathParams.has(p)) return { ok: false, message: `{${name}}: the route's path has no parameter "${p}"` };
      parts.push((c) => c.params[p] ?? '');
    } else {
      return {
        ok: false,
        message: `unknown placeholder {${name}}; known: ${Object.keys(VARS).map((k) => `{${k}}`).join(', ')}, {claims.NAME}, {path.PARAM}`,
      };
    }
  }
  if (/[{}]/.test(source.slice(last))) return { ok: false, message: 'unbalanced "{" or "}"' };
  if (last < source.length) parts.push(source.slice(last));

  if (parts.length === 1 && typeof parts[0] === 'string') {
    const constant = sanitize(parts[0]);
    return { ok: true, template: { source, needsPrincipal, render: () => constant } };
  }
  return {
    ok: true,
    template: {
      source,
      needsPrincipal,
      render(ctx) {
        let out = '';
        for (const p of parts) out += typeof p === 'string' ? p : p(ctx);
        return sanitize(out);
      },
    },
  };
}
