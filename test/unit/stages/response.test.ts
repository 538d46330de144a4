import { describe, expect, it } from 'vitest';
import { compileTemplate } from '../../../src/config/template.js';
import type { CheckInput, Principal } from '../../../src/core/types.js';
import {
  createOwnedHeaders,
  headersToRemove,
  principalMetadata,
  renderHeaders,
  type HeaderTemplate,
} from '../../../src/stages/response.js';

function tpl(name: string, source: string, params: string[] = []): HeaderTemplate {
  const t = compileTemplate(source, new Set(params));
  if (!t.ok) throw new Error(t.message);
  return { name, template: t.template };
}

const principal: Principal = {
  issuerName: 'acme',
  issuer: 'https://idp.example/realms/acme',
  sub: 'alice',
  qualifiedSub: 'acme/alice',
  roles: ['admin'],
  effectiveRoles: new Set(['admin', 'sandbox:manage']),
  claims: { sub: 'alice', email: 'alice@example.com' },
  token: 't',
  expiresAt: 0,
  source: 'header:authorization',
};

function input(headers: Record<string, string>): CheckInput {
  return { method: 'GET', host: 'h', path: '/', query: '', headers: new Map(Object.entries(headers)), contextExtensions: new Map() };
}

describe('createOwnedHeaders', () => {
  const owned = createOwnedHeaders(['x-portcullis-*', 'X-User-*', 'X-Tenant']);

  it('matches exact names (case-folded pattern)', () => {
    expect(owned.isOwned('x-tenant')).toBe(true);
    expect(owned.isOwned('x-tenant-id')).toBe(false);
    expect(owned.isOwned('x-tenan')).toBe(false);
  });

  it('matches prefix patterns', () => {
    expect(owned.isOwned('x-portcullis-sub')).toBe(true);
    expect(owned.isOwned('x-portcullis-')).toBe(true);
    expect(owned.isOwned('x-user-sub')).toBe(true);
    expect(owned.isOwned('x-portcullis')).toBe(false);
    expect(owned.isOwned('x-users')).toBe(false);
    expect(owned.isOwned('authorization')).toBe(false);
  });

  it('owns nothing with no patterns', () => {
    expect(createOwnedHeaders([]).isOwned('x-user-sub')).toBe(false);
  });
});

describe('renderHeaders', () => {
  it('renders templates and skips empty values', () => {
    const out = renderHeaders(
      [tpl('x-sub', '{sub}'), tpl('x-email', '{claims.email}'), tpl('x-missing', '{claims.nothing}'), tpl('x-id', '{path.id}', ['id'])],
      principal,
      'r1',
      { params: { id: 'sb-1' } },
    );
    expect(out).toEqual([
      { name: 'x-sub', value: 'alice' },
      { name: 'x-email', value: 'alice@example.com' },
      { name: 'x-id', value: 'sb-1' },
    ]);
  });

  it('skips principal templates without a principal (anonymous)', () => {
    expect(renderHeaders([tpl('x-sub', '{sub}'), tpl('x-route', '{route}'), tpl('x-c', 'const')], undefined, 'r1', { params: {} })).toEqual([
      { name: 'x-route', value: 'r1' },
      { name: 'x-c', value: 'const' },
    ]);
  });
});

describe('headersToRemove', () => {
  const owned = createOwnedHeaders(['x-portcullis-*', 'x-user-*']);

  it('removes inbound owned headers that are not set, keeps the ones that are set', () => {
    const remove = headersToRemove(
      input({ 'x-user-sub': 'mallory', 'x-user-role': 'admin', 'x-portcullis-evil': '1', accept: '*/*' }),
      owned,
      [{ name: 'x-user-sub', value: 'alice' }],
    );
    expect(remove.sort()).toEqual(['x-portcullis-evil', 'x-user-role']);
  });

  it('removes nothing when no owned header came in', () => {
    expect(headersToRemove(input({ accept: '*/*' }), owned, [])).toEqual([]);
  });
});

describe('principalMetadata', () => {
  it('carries route, sub, qualified sub, tenant and token roles', () => {
    expect(principalMetadata(principal, 'r1')).toEqual({
      route: 'r1',
      sub: 'alice',
      qualified_sub: 'acme/alice',
      tenant: 'acme',
      roles: ['admin'],
    });
  });

  it('carries only the route without a principal', () => {
    expect(principalMetadata(undefined, 'r1')).toEqual({ route: 'r1' });
  });
});
