import { describe, expect, it } from 'vitest';
import type { Principal } from '../../../src/core/types.js';
import { checkRoles, createRoleResolver, extractRoles } from '../../../src/stages/roles.js';

function sorted(s: ReadonlySet<string>): string[] {
  return [...s].sort();
}

function principalWith(effective: string[]): Principal {
  return {
    issuerName: 'acme',
    issuer: 'https://idp.example/realms/acme',
    sub: 'alice',
    qualifiedSub: 'acme/alice',
    roles: effective,
    effectiveRoles: new Set(effective),
    claims: {},
    token: 't',
    expiresAt: 0,
    source: 'header:authorization',
  };
}

describe('createRoleResolver', () => {
  const resolver = createRoleResolver({ admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'], auditor: ['logs:read'] });

  it('expands transitively', () => {
    expect(sorted(resolver.expand(['admin']))).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage']);
    expect(sorted(resolver.expand(['sandbox:manage']))).toEqual(['sandbox:invoke', 'sandbox:manage']);
    expect(sorted(resolver.expand(['sandbox:invoke']))).toEqual(['sandbox:invoke']);
  });

  it('merges several roles and keeps roles unknown to the graph', () => {
    expect(sorted(resolver.expand(['auditor', 'sandbox:manage', 'custom']))).toEqual([
      'auditor',
      'custom',
      'logs:read',
      'sandbox:invoke',
      'sandbox:manage',
    ]);
    expect(resolver.expand([]).size).toBe(0);
  });

  it('terminates on cycles and merges the cycle', () => {
    const cyclic = createRoleResolver({ a: ['b'], b: ['c'], c: ['a', 'd'] });
    expect(sorted(cyclic.expand(['a']))).toEqual(['a', 'b', 'c', 'd']);
    expect(sorted(cyclic.expand(['c']))).toEqual(['a', 'b', 'c', 'd']);
    expect(sorted(cyclic.expand(['d']))).toEqual(['d']);
    const self = createRoleResolver({ x: ['x', 'y'] });
    expect(sorted(self.expand(['x']))).toEqual(['x', 'y']);
  });

  it('expands a role that appears only as a child (leaf)', () => {
    const r = createRoleResolver({ a: ['leaf'] });
    expect(sorted(r.expand(['leaf']))).toEqual(['leaf']);
  });
});

describe('extractRoles', () => {
  const claims = {
    realm_access: { roles: ['admin', 'user', 'admin'] },
    resource_access: {
      router: { roles: ['invoke', 'user'] },
      'my.client': { roles: ['dotted'] },
    },
    groups: ['g1', 7, '', 'g2'],
    scope: 'openid  profile email',
    nested: [{ roles: ['in-array'] }],
    'flat.key': ['flat'],
  };

  it('reads array claims at nested paths, deduplicated, in order', () => {
    expect(extractRoles(claims, [['realm_access', 'roles'], ['resource_access', 'router', 'roles']])).toEqual(['admin', 'user', 'invoke']);
  });

  it('reads a path whose segment contains a dot (array form of a claim path)', () => {
    expect(extractRoles(claims, [['resource_access', 'my.client', 'roles']])).toEqual(['dotted']);
    expect(extractRoles(claims, [['flat.key']])).toEqual(['flat']);
    // The dotted string split on '.' does not find it.
    expect(extractRoles(claims, [['resource_access', 'my', 'client', 'roles']])).toEqual([]);
  });

  it('keeps only non-empty strings from arrays', () => {
    expect(extractRoles(claims, [['groups']])).toEqual(['g1', 'g2']);
  });

  it('splits a space-delimited string claim', () => {
    expect(extractRoles(claims, [['scope']])).toEqual(['openid', 'profile', 'email']);
  });

  it('returns nothing for missing paths, non-object intermediates and arrays in the middle', () => {
    expect(extractRoles(claims, [['missing', 'roles']])).toEqual([]);
    expect(extractRoles(claims, [['scope', 'roles']])).toEqual([]);
    expect(extractRoles(claims, [['nested', '0', 'roles']])).toEqual([]);
    expect(extractRoles(claims, [['realm_access']])).toEqual([]);
    expect(extractRoles({}, [])).toEqual([]);
  });
});

describe('checkRoles', () => {
  it('anyOf: one of the roles is enough', () => {
    const p = principalWith(['b']);
    expect(checkRoles(p, { mode: 'anyOf', roles: ['a', 'b'] })).toBeUndefined();
    expect(checkRoles(p, { mode: 'anyOf', roles: ['a', 'c'] })?.reason).toBe('missing_role');
  });

  it('allOf: every role is needed', () => {
    const p = principalWith(['a', 'b']);
    expect(checkRoles(p, { mode: 'allOf', roles: ['a', 'b'] })).toBeUndefined();
    const d = checkRoles(p, { mode: 'allOf', roles: ['a', 'b', 'c'] });
    expect(d?.reason).toBe('missing_role');
    expect(d?.status).toBe(403);
  });

  it('uses the effective (closed) roles', () => {
    const resolver = createRoleResolver({ admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] });
    const p: Principal = { ...principalWith([]), roles: ['admin'], effectiveRoles: resolver.expand(['admin']) };
    expect(checkRoles(p, { mode: 'allOf', roles: ['sandbox:invoke', 'sandbox:manage'] })).toBeUndefined();
  });
});
