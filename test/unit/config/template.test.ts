import { describe, expect, it } from 'vitest';
import { compileTemplate, type CompiledTemplate, type TemplateContext } from '../../../src/config/template.js';
import type { Principal } from '../../../src/core/types.js';

const principal: Principal = {
  issuerName: 'acme',
  issuer: 'https://idp.example/realms/acme',
  sub: 'alice',
  qualifiedSub: 'acme/alice',
  roles: ['viewer', 'admin'],
  effectiveRoles: new Set(['viewer', 'admin', 'sandbox:manage']),
  claims: {
    email: 'alice@example.com',
    n: 42,
    flag: false,
    groups: ['g1', 3, 'g2'],
    address: { country: 'NZ' },
    evil: 'a\r\nx-injected: 1\0',
    obj: { a: 1 },
  },
  token: 't',
  expiresAt: 0,
  source: 'header:authorization',
};

const ctx: TemplateContext = { principal, route: 'sandbox-invoke', params: { id: 'sb-1' } };

function compile(source: string, params: string[] = []): CompiledTemplate {
  const r = compileTemplate(source, new Set(params));
  if (!r.ok) throw new Error(r.message);
  return r.template;
}

function error(source: string, params: string[] = []): string {
  const r = compileTemplate(source, new Set(params));
  if (r.ok) throw new Error(`expected ${JSON.stringify(source)} to be refused`);
  return r.message;
}

describe('compileTemplate: rendering', () => {
  it.each([
    ['{sub}', 'alice'],
    ['{qualified_sub}', 'acme/alice'],
    ['{issuer.name}', 'acme'],
    ['{issuer.url}', 'https://idp.example/realms/acme'],
    ['{roles}', 'viewer,admin'],
    ['{effective_roles}', 'admin,sandbox:manage,viewer'],
    ['{route}', 'sandbox-invoke'],
    ['{claims.email}', 'alice@example.com'],
    ['{claims.n}', '42'],
    ['{claims.flag}', 'false'],
    ['{claims.groups}', 'g1,g2'],
    ['{claims.address.country}', 'NZ'],
    ['{claims.obj}', ''],
    ['{claims.absent}', ''],
    ['{claims.address.country.x}', ''],
    ['tenant={issuer.name};sub={sub}', 'tenant=acme;sub=alice'],
    ['{ sub }', 'alice'],
    ['constant', 'constant'],
    ['', ''],
  ])('%s renders %s', (source, expected) => {
    expect(compile(source).render(ctx)).toBe(expected);
  });

  it('renders path parameters declared by the route', () => {
    expect(compile('/sandboxes/{path.id}', ['id']).render(ctx)).toBe('/sandboxes/sb-1');
  });

  it('marks templates that need a principal', () => {
    expect(compile('{sub}').needsPrincipal).toBe(true);
    expect(compile('{claims.email}').needsPrincipal).toBe(true);
    expect(compile('{route}').needsPrincipal).toBe(false);
    expect(compile('{path.id}', ['id']).needsPrincipal).toBe(false);
    expect(compile('x').needsPrincipal).toBe(false);
  });

  it('renders principal placeholders as empty without a principal', () => {
    expect(compile('{sub}|{roles}|{claims.email}|{route}').render({ route: 'r', params: {} })).toBe('|||r');
  });

  it('never produces CR, LF or NUL from a claim', () => {
    const v = compile('{claims.evil}').render(ctx);
    expect(v).not.toMatch(/[\r\n\0]/);
    expect(v.startsWith('a')).toBe(true);
    const mixed = compile('pre {claims.evil} post').render(ctx);
    expect(mixed).not.toMatch(/[\r\n\0]/);
  });

  it('never produces other control characters (BEL, ESC, DEL, ...) from a claim', () => {
    const c: TemplateContext = { ...ctx, principal: { ...principal, claims: { name: 'a\u0007b\u001b[31mc\u007fd\u000be' } } };
    // eslint-disable-next-line no-control-regex
    expect(compile('{claims.name}').render(c)).not.toMatch(/[\x00-\x08\x0a-\x1f\x7f]/);
  });

  it('keeps tabs and non-ASCII text from a claim', () => {
    const c: TemplateContext = { ...ctx, principal: { ...principal, claims: { name: 'José\t山田' } } };
    expect(compile('{claims.name}').render(c)).toBe('José\t山田');
  });

  it('keeps the source', () => {
    expect(compile('{sub}').source).toBe('{sub}');
  });
});

describe('compileTemplate: errors', () => {
  it('refuses an unknown placeholder and lists the known ones', () => {
    const m = error('{subject}');
    expect(m).toContain('{subject}');
    expect(m).toContain('{sub}');
  });

  it('refuses {claims.} without a name', () => {
    expect(error('{claims.}')).toContain('unknown placeholder');
  });

  it('refuses {path.x} when the path has no such parameter', () => {
    expect(error('{path.x}', ['id'])).toContain('"x"');
    expect(error('{path.id}')).toContain('"id"');
  });

  it('refuses an unclosed brace', () => {
    expect(error('{sub')).toContain('unbalanced');
    expect(error('x-{sub}-{')).toContain('unbalanced');
    expect(error('{sub}}')).toContain('unbalanced');
  });

  it('refuses a stray closing brace before a placeholder', () => {
    // '{sub}}' is refused (tail checked), so a stray brace before or between placeholders must be too.
    expect(compileTemplate('}{sub}', new Set()).ok).toBe(false);
    expect(compileTemplate('a}b{sub}', new Set()).ok).toBe(false);
    expect(compileTemplate('{{sub}}', new Set()).ok).toBe(false);
  });
});
