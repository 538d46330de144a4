import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../src/config/load.js';
import type { ConfigIssue } from '../../../src/core/errors.js';
import type { Principal } from '../../../src/core/types.js';
import { compilePolicy, type CompiledRoute, type Policy } from '../../../src/pipeline/policy.js';

const ISSUERS = new Set(['acme', 'globex']);

function policy(yaml: string, issuers: ReadonlySet<string> = ISSUERS): Policy {
  const r = compilePolicy(parseConfig(yaml), issuers);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.policy;
}

function issues(yaml: string, issuers: ReadonlySet<string> = ISSUERS): ConfigIssue[] {
  const r = compilePolicy(parseConfig(yaml), issuers);
  if (r.ok) throw new Error('expected issues');
  return r.issues;
}

function route(p: Policy, name: string): CompiledRoute {
  const r = p.table.byName(name);
  if (!r) throw new Error(`no route ${name}`);
  return r;
}

const principal: Principal = {
  issuerName: 'acme',
  issuer: 'https://idp.example/realms/acme',
  sub: 'alice',
  qualifiedSub: 'acme/alice',
  roles: ['admin'],
  effectiveRoles: new Set(['admin']),
  claims: {},
  token: 't',
  expiresAt: 0,
  source: 'header:authorization',
};

function rendered(r: CompiledRoute, params: Record<string, string> = {}): Record<string, string> {
  return Object.fromEntries(r.headers.map((h) => [h.name, h.template.render({ principal, route: r.name, params })]));
}

describe('compilePolicy', () => {
  it('carries the defaults into the policy', () => {
    const p = policy('defaults: { onNoRoute: allow, routeContextKey: rk, maxTokenBytes: 100, authRealm: realm, identityHeaders: ["x-id-*"] }\n');
    expect(p.onNoRoute).toBe('allow');
    expect(p.routeContextKey).toBe('rk');
    expect(p.maxTokenBytes).toBe(100);
    expect(p.authRealm).toBe('realm');
    expect(p.owned.isOwned('x-id-sub')).toBe(true);
    expect(p.owned.isOwned('x-user-sub')).toBe(false);
  });

  it('applies default credentials unless the route lists its own', () => {
    const p = policy(`
defaults: { credentials: [header:authorization, query:access_token] }
routes:
  - { name: a, match: { path: /a } }
  - { name: b, match: { path: /b }, credentials: [cookie:session, header:X-Token] }
`);
    expect(route(p, 'a').sources.map((s) => s.label)).toEqual(['header:authorization', 'query:access_token']);
    expect(route(p, 'b').sources).toEqual([
      { kind: 'cookie', name: 'session', label: 'cookie:session' },
      { kind: 'header', name: 'x-token', label: 'header:x-token' },
    ]);
  });

  it('compiles role requirements and issuer restrictions', () => {
    const p = policy(`
routes:
  - { name: any, match: { path: /a }, require: { roles: { anyOf: [x, y] } }, issuers: [acme] }
  - { name: all, match: { path: /b }, require: { roles: { allOf: [x] } } }
  - { name: none, match: { path: /c } }
`);
    expect(route(p, 'any').roles).toEqual({ mode: 'anyOf', roles: ['x', 'y'] });
    expect([...(route(p, 'any').issuers ?? [])]).toEqual(['acme']);
    expect(route(p, 'all').roles).toEqual({ mode: 'allOf', roles: ['x'] });
    expect(route(p, 'none').roles).toBeUndefined();
    expect(route(p, 'none').issuers).toBeUndefined();
  });

  it('merges default headers with route headers; a route value overrides, null drops', () => {
    const p = policy(`
routes:
  - name: r
    match: { path: "/s/{id}" }
    headers: { x-portcullis-sub: "{qualified_sub}", x-portcullis-roles: null, x-sandbox: "{path.id}" }
`);
    expect(rendered(route(p, 'r'), { id: 'sb-1' })).toEqual({
      'x-portcullis-sub': 'acme/alice',
      'x-portcullis-tenant': 'acme',
      'x-portcullis-route': 'r',
      'x-sandbox': 'sb-1',
    });
  });

  it('keeps only caller-independent default headers on anonymous routes', () => {
    const p = policy('routes: [{ name: health, match: { path: /healthz }, allow: anonymous }]\n');
    const r = route(p, 'health');
    expect(r.allow).toBe('anonymous');
    expect(r.headers.map((h) => h.name)).toEqual(['x-portcullis-route']);
  });

  it('builds a role resolver from the role graph', () => {
    const p = policy('roles: { admin: [ops], ops: [read] }\n');
    expect([...p.roles.expand(['admin'])].sort()).toEqual(['admin', 'ops', 'read']);
  });

  it('lists every problem together, by path', () => {
    const list = issues(`
roles: { a: [a] }
routes:
  - { name: r1, match: { path: "/x/{id}" }, issuers: [initech], headers: { x-a: "{nope}" } }
  - { name: r1, match: { path: /y } }
`);
    expect(list.map((i) => i.path).sort()).toEqual(['roles.a[0]', 'routes[0].headers.x-a', 'routes[0].issuers[0]', 'routes[1].name']);
  });

  it('refuses every issuer name when none is configured', () => {
    const list = issues('routes: [{ name: r, issuers: [acme] }]\n', new Set());
    expect(list[0]?.message).toContain('(none)');
  });

  it('refuses an invalid path template', () => {
    const list = issues('routes: [{ name: r, match: { path: "/a/{id}x" } }]\n');
    expect(list.some((i) => i.path.startsWith('routes[0].match'))).toBe(true);
  });
});

describe('compilePolicy: shadow', () => {
  it('compiles route and requirement shadow settings', () => {
    const p = policy(`
routes:
  - { name: a, match: { path: /a }, shadow: true }
  - { name: b, match: { path: /b }, require: { roles: { anyOf: [x] }, shadow: [roles] } }
`);
    expect(route(p, 'a').shadow).toBe(true);
    expect(route(p, 'a').shadowRequirements.size).toBe(0);
    expect(route(p, 'b').shadow).toBe(false);
    expect([...route(p, 'b').shadowRequirements]).toEqual(['roles']);
  });

  it('refuses a shadow entry that names no requirement of the route', () => {
    const list = issues('routes: [{ name: r, match: { path: /r }, require: { shadow: [owner] } }]\n');
    expect(list.map((i) => i.path)).toEqual(['routes[0].require.shadow[0]']);
  });
});
