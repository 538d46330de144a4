import type { Config, RouteConfig } from '../config/schema.js';
import { compileTemplate, type CompiledTemplate } from '../config/template.js';
import type { ConfigIssue } from '../core/errors.js';
import { parseCredentialSource, type CredentialSource } from '../stages/credentials.js';
import { createOwnedHeaders, type HeaderTemplate, type OwnedHeaders } from '../stages/response.js';
import { createRoleResolver, type RoleRequirement, type RoleResolver } from '../stages/roles.js';
import { buildRouteTable, type RouteTable } from './route-table.js';
import type { RouteStage, StageFactory } from './stage.js';

/**
 * A route as the pipeline runs it: every string in the config turned into
 * the structure the hot path reads (sets, compiled templates, parsed sources).
 * The table of which stage applies to which route is this type: a stage whose
 * field is absent costs nothing for that route.
 */
export interface CompiledRoute {
  readonly name: string;
  readonly match: RouteConfig['match'];
  readonly allow: RouteConfig['allow'];
  /** Issuer names this route accepts; undefined = any configured issuer. */
  readonly issuers?: ReadonlySet<string>;
  readonly sources: readonly CredentialSource[];
  readonly roles?: RoleRequirement;
  readonly headers: readonly HeaderTemplate[];
  /** Optional stages before credentials (peer identity). */
  readonly before: readonly RouteStage[];
  /** Optional stages after roles (ownership, token exchange, hop tokens). */
  readonly after: readonly RouteStage[];
  /** The whole route is in shadow mode: denials are recorded, the request is allowed. */
  readonly shadow: boolean;
  /** Requirements (`roles` or a stage name) in shadow mode. */
  readonly shadowRequirements: ReadonlySet<string>;
}

export interface Policy {
  readonly table: RouteTable<CompiledRoute>;
  readonly owned: OwnedHeaders;
  readonly roles: RoleResolver;
  readonly onNoRoute: 'deny' | 'allow';
  readonly routeContextKey: string;
  readonly maxTokenBytes: number;
  readonly authRealm: string;
}

function pathParams(template: string | undefined): Set<string> {
  const out = new Set<string>();
  if (!template) return out;
  for (const m of template.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)) if (m[1]) out.add(m[1]);
  return out;
}

export function compilePolicy(
  config: Config,
  issuerNames: ReadonlySet<string>,
  factories: readonly StageFactory[] = [],
): { ok: true; policy: Policy } | { ok: false; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const routes: CompiledRoute[] = [];

  for (const [role, includes] of Object.entries(config.roles)) {
    includes.forEach((r, j) => {
      if (r === role) issues.push({ path: `roles.${role}[${j}]`, message: 'a role cannot include itself' });
    });
  }

  // Defaults are compiled once (and reported once); they cannot use path parameters,
  // which differ from route to route.
  const defaults = new Map<string, CompiledTemplate>();
  for (const [name, src] of Object.entries(config.defaults.headers)) {
    if (src === null) continue;
    const t = compileTemplate(src, new Set());
    if (!t.ok) issues.push({ path: `defaults.headers.${name}`, message: /\{path\./.test(src) ? 'defaults cannot use {path.*}: routes differ in their parameters; set it on the routes' : t.message });
    else defaults.set(name, t.template);
  }

  config.routes.forEach((r, i) => {
    const at = `routes[${i}]`;
    if (r.issuers) {
      r.issuers.forEach((name, j) => {
        if (!issuerNames.has(name)) {
          issues.push({
            path: `${at}.issuers[${j}]`,
            message: `unknown issuer "${name}"; configured: ${[...issuerNames].join(', ') || '(none)'}`,
          });
        }
      });
    }
    if (r.allow === 'anonymous' && (r.require.roles || r.issuers || r.credentials)) {
      issues.push({ path: at, message: 'an anonymous route cannot require roles, issuers or credentials' });
    }
    const params = pathParams(r.match.path);
    const compiled = new Map<string, CompiledTemplate>(defaults);
    for (const [name, src] of Object.entries(r.headers ?? {})) {
      if (src === null) {
        compiled.delete(name);
        continue;
      }
      const t = compileTemplate(src, params);
      if (!t.ok) {
        issues.push({ path: `${at}.headers.${name}`, message: t.message });
        compiled.delete(name);
        continue;
      }
      if (r.allow === 'anonymous' && t.template.needsPrincipal) {
        issues.push({ path: `${at}.headers.${name}`, message: 'an anonymous route has no caller to take this value from' });
        continue;
      }
      compiled.set(name, t.template);
    }
    const headers: HeaderTemplate[] = [];
    for (const [name, template] of compiled) {
      // Defaults that describe the caller simply do not apply to anonymous routes.
      if (r.allow === 'anonymous' && template.needsPrincipal) continue;
      headers.push({ name, template });
    }
    const req = r.require.roles;
    const before: RouteStage[] = [];
    const after: RouteStage[] = [];
    for (const f of factories) {
      const c = f.compile(r, at, config);
      if (!c) continue;
      if ('issues' in c) issues.push(...c.issues);
      else if (r.allow !== 'authenticated' && c.phase === 'after') {
        issues.push({ path: at, message: `the ${f.name} stage needs an authenticated caller; this route is allow: ${r.allow}` });
      } else (c.phase === 'before' ? before : after).push(c.stage);
    }
    const shadowNames = new Set(r.require.shadow ?? []);
    const known = new Set(['roles', ...before.map((s) => s.name), ...after.map((s) => s.name)]);
    (r.require.shadow ?? []).forEach((n, j) => {
      if (!known.has(n)) {
        issues.push({ path: `${at}.require.shadow[${j}]`, message: `"${n}" is not a requirement of this route; it has: ${[...known].join(', ')}` });
      }
    });
    routes.push({
      name: r.name,
      match: r.match,
      allow: r.allow,
      issuers: r.issuers ? new Set(r.issuers) : undefined,
      sources: (r.credentials ?? config.defaults.credentials).map(parseCredentialSource),
      roles: req ? ('anyOf' in req ? { mode: 'anyOf', roles: req.anyOf } : { mode: 'allOf', roles: req.allOf }) : undefined,
      headers,
      before,
      after,
      shadow: r.shadow,
      shadowRequirements: shadowNames,
    });
  });

  const built = buildRouteTable(routes);
  if (!built.ok) issues.push(...built.issues.map((i) => ({ path: i.path, message: i.message })));
  if (issues.length > 0 || !built.ok) return { ok: false, issues };

  return {
    ok: true,
    policy: {
      table: built.table,
      owned: createOwnedHeaders(config.defaults.identityHeaders),
      roles: createRoleResolver(config.roles),
      onNoRoute: config.defaults.onNoRoute,
      routeContextKey: config.defaults.routeContextKey,
      maxTokenBytes: config.defaults.maxTokenBytes,
      authRealm: config.defaults.authRealm,
    },
  };
}
