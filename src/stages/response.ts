import type { CompiledTemplate, TemplateContext } from '../config/template.js';
import type { CheckInput, HeaderToSet, Principal } from '../core/types.js';

/**
 * Header hygiene. Envoy applies `headers_to_remove` AFTER the headers it sets
 * (ext_authz.cc, onComplete), and a set overwrites every inbound copy. So the
 * remove list holds the inbound owned headers that portcullis does NOT set:
 * those are the spoofed copies that would otherwise reach the upstream.
 */
export interface OwnedHeaders {
  isOwned(name: string): boolean;
}

export function createOwnedHeaders(patterns: readonly string[]): OwnedHeaders {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const p of patterns) {
    const lower = p.toLowerCase();
    if (lower.endsWith('*')) prefixes.push(lower.slice(0, -1));
    else exact.add(lower);
  }
  return {
    isOwned(name) {
      if (exact.has(name)) return true;
      for (const p of prefixes) if (name.startsWith(p)) return true;
      return false;
    },
  };
}

export interface HeaderTemplate {
  name: string;
  template: CompiledTemplate;
}

/**
 * What header templates read. `params` is passed through from the route match
 * and read only by `{path.*}` templates: a table match builds its params
 * object on first read, so routes whose headers do not use them never build it.
 */
class RenderContext implements TemplateContext {
  readonly principal: Principal | undefined;
  readonly route: string;
  readonly #matched: { readonly params: Readonly<Record<string, string>> };

  constructor(principal: Principal | undefined, route: string, matched: { readonly params: Readonly<Record<string, string>> }) {
    this.principal = principal;
    this.route = route;
    this.#matched = matched;
  }

  get params(): Readonly<Record<string, string>> {
    return this.#matched.params;
  }
}

/** The route's header templates, rendered; the match's `params` are read only if a template needs them. */
export function renderHeaders(
  templates: readonly HeaderTemplate[],
  principal: Principal | undefined,
  route: string,
  matched: { readonly params: Readonly<Record<string, string>> },
): HeaderToSet[] {
  const out: HeaderToSet[] = [];
  const ctx = new RenderContext(principal, route, matched);
  for (const h of templates) {
    if (h.template.needsPrincipal && !principal) continue;
    const value = h.template.render(ctx);
    if (value.length > 0) out.push({ name: h.name, value });
  }
  return out;
}

export function headersToRemove(input: CheckInput, owned: OwnedHeaders, set: readonly HeaderToSet[]): string[] {
  const out: string[] = [];
  for (const name of input.headers.keys()) {
    if (!owned.isOwned(name)) continue;
    let isSet = false;
    for (const h of set) if (h.name === name) isSet = true;
    if (!isSet) out.push(name);
  }
  return out;
}

export function principalMetadata(principal: Principal | undefined, route: string): Record<string, string | string[]> {
  const md: Record<string, string | string[]> = { route };
  if (principal) {
    md.sub = principal.sub;
    md.qualified_sub = principal.qualifiedSub;
    md.tenant = principal.issuerName;
    md.roles = [...principal.roles];
  }
  return md;
}
