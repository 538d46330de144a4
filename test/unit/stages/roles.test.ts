import { describe, expect, it } from 'vitest';
import type { Principal } from '../../../src/core/types.js';
import { checkRoles, createRoleInterner, createRoleResolver, extractRoles } from '../../../src/stages/roles.js';

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

describe('createRoleInterner', () => {
  const resolver = createRoleResolver({ admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] });

  it('holds the roles as given and their closure', () => {
    const held = createRoleInterner(resolver).hold(['admin', 'custom']);
    expect(held.roles).toEqual(['admin', 'custom']);
    expect(sorted(held.effectiveRoles)).toEqual(sorted(resolver.expand(['admin', 'custom'])));
    expect(held.effectiveRoles.has('sandbox:invoke')).toBe(true);
    expect(held.effectiveRoles.has('viewer')).toBe(false);
    expect(held.effectiveRoles.size).toBe(4);
    expect(createRoleInterner(resolver).hold([]).effectiveRoles.size).toBe(0);
  });

  it('shares one value per role list (order matters), not per call', () => {
    const interner = createRoleInterner(resolver);
    const a = interner.hold(['admin', 'x']);
    expect(interner.hold(['admin', 'x'])).toBe(a);
    const b = interner.hold(['x', 'admin']);
    expect(b).not.toBe(a);
    expect(b.roles).toEqual(['x', 'admin']);
  });

  it('does not confuse lists whose joined text is the same', () => {
    const interner = createRoleInterner(resolver);
    const joined = interner.hold(['admin\nx']);
    const split = interner.hold(['admin', 'x']);
    expect(joined.roles).toEqual(['admin\nx']);
    expect(sorted(joined.effectiveRoles)).toEqual(['admin\nx']);
    expect(split.roles).toEqual(['admin', 'x']);
    expect(split.effectiveRoles.has('sandbox:manage')).toBe(true);
    expect(interner.hold(['admin\nx'])).toEqual(joined);
  });

  it('gives each list its own value when lists alternate (the last list found is only a shortcut)', () => {
    const interner = createRoleInterner(resolver);
    const a = interner.hold(['admin', 'x']);
    const joined = interner.hold(['admin\nx']);
    for (let i = 0; i < 3; i++) {
      expect(interner.hold(['admin', 'x'])).toBe(a);
      expect(interner.hold(['admin', 'x'])).toBe(a);
      // same key as ['admin', 'x'], which holds the slot: a fresh, equal value each time
      expect(interner.hold(['admin\nx'])).not.toBe(joined);
      expect(interner.hold(['admin\nx'])).toEqual(joined);
      expect(interner.hold(['admin'])).not.toBe(a);
      expect(interner.hold(['admin']).roles).toEqual(['admin']);
      expect(interner.hold([]).roles).toEqual([]);
    }
  });

  it('keeps the input array out of it: changing it later changes nothing', () => {
    const interner = createRoleInterner(resolver);
    const input = ['admin'];
    const held = interner.hold(input);
    input.push('intruder');
    expect(held.roles).toEqual(['admin']);
    expect(held.effectiveRoles.has('intruder')).toBe(false);
  });

  it('hands out read-only values: the array is frozen, the set refuses add, delete and clear', () => {
    const held = createRoleInterner(resolver).hold(['admin']);
    expect(Object.isFrozen(held.roles)).toBe(true);
    expect(() => (held.roles as string[]).push('root')).toThrow(TypeError);
    const set = held.effectiveRoles as Set<string>;
    expect(() => set.add('root')).toThrow(TypeError);
    expect(() => set.delete('admin')).toThrow(TypeError);
    expect(() => set.clear()).toThrow(TypeError);
    expect(sorted(held.effectiveRoles)).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage']);
    expect(held.effectiveRoles).toBeInstanceOf(Set);
    expect([...held.effectiveRoles]).toEqual([...resolver.expand(['admin'])]);
  });

  it('is bounded: past max lists, values are fresh each time but just as correct and read-only', () => {
    const interner = createRoleInterner(resolver, 1);
    const first = interner.hold(['a']);
    expect(interner.hold(['a'])).toBe(first);
    const b1 = interner.hold(['admin']);
    const b2 = interner.hold(['admin']);
    expect(b2).not.toBe(b1);
    expect(b2).toEqual(b1);
    expect(sorted(b2.effectiveRoles)).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage']);
    expect(Object.isFrozen(b2.roles)).toBe(true);
    expect(() => (b2.effectiveRoles as Set<string>).add('x')).toThrow(TypeError);
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
