import { describe, expect, it } from 'vitest';
import {
  buildRouteTable,
  splitRequestPath,
  type RouteMatchSpec,
  type RouteTable,
  type RouteTableIssue,
} from '../../../src/pipeline/route-table.js';

interface TestRoute {
  readonly name: string;
  readonly match: RouteMatchSpec;
}

function r(name: string, match: RouteMatchSpec): TestRoute {
  return { name, match };
}

function table(routes: readonly TestRoute[]): RouteTable<TestRoute> {
  const built = buildRouteTable(routes);
  if (!built.ok) throw new Error('unexpected issues: ' + JSON.stringify(built.issues));
  return built.table;
}

function issuesOf(routes: readonly TestRoute[]): RouteTableIssue[] {
  const built = buildRouteTable(routes);
  if (built.ok) throw new Error('expected issues, table was built');
  return built.issues;
}

/** Name of the matched route, or undefined. */
function hit(t: RouteTable<TestRoute>, host: string, method: string, path: string): string | undefined {
  return t.match(host, method, path)?.route.name;
}

describe('splitRequestPath', () => {
  it('gives the same answer as splitting with String#split, on random paths', () => {
    // The implementation before it walked the path with indexOf; this is that one, as the reference.
    const reference = (path: string): ReturnType<typeof splitRequestPath> => {
      if (path.length === 0) return { ok: false, message: 'path is empty' };
      if (path.charCodeAt(0) !== 0x2f) return { ok: false, message: "path must start with '/'" };
      if (path.includes('\\') || path.includes('\0') || path.includes('//')) return splitRequestPath(path); // checked before splitting
      const end = path.length > 1 && path.charCodeAt(path.length - 1) === 0x2f ? path.length - 1 : path.length;
      if (end <= 1) return { ok: true, segments: [] };
      const segments: string[] = [];
      for (const raw of path.slice(1, end).split('/')) {
        const one = splitRequestPath(`/${raw}`); // a single segment: no '/' in it
        if (!one.ok) return one;
        segments.push(...one.segments);
      }
      return { ok: true, segments };
    };
    let seed = 99;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const pieces = ['/', '/', '/', 'a', 'b1', '.', '..', '%2e', '%2F', '%41', '%', ';', '..;x', 'é', '%C3%A9', '%ff', '\\', '?', '-'];
    for (let i = 0; i < 5000; i++) {
      let p = next(10) === 0 ? '' : '/';
      const len = next(8);
      for (let k = 0; k < len; k++) p += pieces[next(pieces.length)] as string;
      expect(splitRequestPath(p), JSON.stringify(p)).toEqual(reference(p));
    }
  });

  it('splits into segments and ignores a single trailing slash', () => {
    expect(splitRequestPath('/')).toEqual({ ok: true, segments: [] });
    expect(splitRequestPath('/a/b')).toEqual({ ok: true, segments: ['a', 'b'] });
    expect(splitRequestPath('/a/b/')).toEqual({ ok: true, segments: ['a', 'b'] });
  });

  it('percent-decodes each segment', () => {
    expect(splitRequestPath('/v1/sand%62oxes/a%20b/%E2%9C%93')).toEqual({
      ok: true,
      segments: ['v1', 'sandboxes', 'a b', '\u2713'],
    });
    // Double encoding decodes once only: %252e is the literal text "%2e".
    expect(splitRequestPath('/a/%252e')).toEqual({ ok: true, segments: ['a', '%2e'] });
    // Dots inside a segment are fine.
    expect(splitRequestPath('/a/.well-known/x..y/...')).toEqual({ ok: true, segments: ['a', '.well-known', 'x..y', '...'] });
  });

  const rejected: [string, string, RegExp][] = [
    ['empty', '', /empty/],
    ['relative', 'a/b', /start with '\/'/],
    ['absolute URL form', 'http://x/a', /start with '\/'/],
    ['dot segment', '/a/./b', /dot segment/],
    ['dot-dot segment', '/a/../b', /dot segment/],
    ['trailing dot-dot', '/a/..', /dot segment/],
    ['trailing dot-dot with slash', '/a/../', /dot segment/],
    ['leading dot', '/./a', /dot segment/],
    ['encoded dot', '/a/%2e/b', /dot segment/],
    ['encoded dot-dot lower case', '/a/%2e%2e/b', /dot segment/],
    ['encoded dot-dot upper case', '/a/%2E%2E/b', /dot segment/],
    ['mixed dot-dot', '/a/.%2E/b', /dot segment/],
    ['mixed dot-dot 2', '/a/%2e./b', /dot segment/],
    ['servlet dot-dot-semicolon', '/a/..;/b', /dot segment/],
    ['servlet dot-dot-semicolon with param', '/a/..;x=1/b', /dot segment/],
    ['encoded slash lower', '/a%2fb', /encoded slash/],
    ['encoded slash upper', '/a/%2F/b', /encoded slash/],
    ['encoded backslash lower', '/a%5cb', /encoded backslash/],
    ['encoded backslash upper', '/a/%5C', /encoded backslash/],
    ['raw backslash', '/a\\b', /backslash/],
    ['raw backslash as dot-dot trick', '/a/..\\b', /backslash/],
    ['NUL', '/a\0b', /NUL/],
    ['encoded NUL', '/a/%00', /NUL/],
    ['repeated slash', '/a//b', /repeated '\/'/],
    ['leading double slash', '//a', /repeated '\/'/],
    ['double slash only', '//', /repeated '\/'/],
    ['trailing double slash', '/a//', /repeated '\/'/],
    ['truncated percent', '/a/%2', /invalid percent-encoding/],
    ['lone percent', '/a/%', /invalid percent-encoding/],
    ['non-hex percent', '/a/%zz', /invalid percent-encoding/],
    ['invalid UTF-8', '/a/%ff', /invalid percent-encoding/],
  ];
  it.each(rejected)('rejects %s', (_label, path, message) => {
    const res = splitRequestPath(path);
    expect(res.ok).toBe(false);
    if (!res.ok) expect(res.message).toMatch(message);
  });

  it('rejected paths never match a route, even a catch-all', () => {
    const t = table([r('all', {})]);
    expect(hit(t, 'x', 'GET', '/a/../b')).toBeUndefined();
    expect(hit(t, 'x', 'GET', '/a%2fb')).toBeUndefined();
    expect(hit(t, 'x', 'GET', '')).toBeUndefined();
    expect(hit(t, 'x', 'GET', '/ok')).toBe('all');
  });
});

describe('path templates', () => {
  it('matches literals and captures percent-decoded params', () => {
    const t = table([r('invoke', { path: '/v1/sandboxes/{id}/invoke' })]);
    expect(t.match('h', 'POST', '/v1/sandboxes/abc/invoke')?.params).toEqual({ id: 'abc' });
    expect(t.match('h', 'POST', '/v1/sandboxes/a%20b%3Bc/invoke')?.params).toEqual({ id: 'a b;c' });
    expect(hit(t, 'h', 'POST', '/v1/sandboxes/abc')).toBeUndefined();
    expect(hit(t, 'h', 'POST', '/v1/sandboxes/abc/invoke/more')).toBeUndefined();
    expect(hit(t, 'h', 'POST', '/v1/sandboxes')).toBeUndefined();
  });

  it('matches literals after percent-decoding the request', () => {
    const t = table([r('list', { path: '/v1/sandboxes' })]);
    expect(hit(t, 'h', 'GET', '/v1/sand%62oxes')).toBe('list');
    expect(hit(t, 'h', 'GET', '/%76%31/sandboxes')).toBe('list');
  });

  it('decodes percent-encoding in template literals too', () => {
    const t = table([r('space', { path: '/a%20b' })]);
    expect(hit(t, 'h', 'GET', '/a%20b')).toBe('space');
  });

  it('is case-sensitive for path literals', () => {
    const t = table([r('a', { path: '/Admin' })]);
    expect(hit(t, 'h', 'GET', '/Admin')).toBe('a');
    expect(hit(t, 'h', 'GET', '/admin')).toBeUndefined();
  });

  it('returns several params by name, as a null-prototype frozen object', () => {
    const t = table([r('two', { path: '/t/{tenant}/s/{id}' })]);
    const m = t.match('h', 'GET', '/t/acme/s/42');
    expect(m?.params).toEqual({ tenant: 'acme', id: '42' });
    expect(Object.getPrototypeOf(m?.params)).toBeNull();
    expect(Object.isFrozen(m?.params)).toBe(true);
  });

  it('builds params once per match, from that match only', () => {
    const t = table([r('two', { path: '/t/{tenant}/s/{id}' }), r('one', { path: '/u/{id}' })]);
    const a = t.match('h', 'GET', '/t/acme/s/42');
    const b = t.match('h', 'GET', '/t/other/s/7');
    const c = t.match('h', 'GET', '/u/9');
    // read after later lookups: each match keeps its own values
    expect(c?.params).toEqual({ id: '9' });
    expect(a?.params).toEqual({ tenant: 'acme', id: '42' });
    expect(b?.params).toEqual({ tenant: 'other', id: '7' });
    expect(a?.params).toBe(a?.params);
    expect(t.match('h', 'GET', '/u/9')?.params).not.toBe(c?.params);
  });

  it('a param named __proto__ is an ordinary key', () => {
    const t = table([r('p', { path: '/x/{__proto__}' })]);
    const m = t.match('h', 'GET', '/x/v');
    expect(m?.params['__proto__']).toBe('v');
    expect(Object.keys(m?.params ?? {})).toEqual(['__proto__']);
  });

  it('treats a single trailing slash as insignificant on both sides', () => {
    const t = table([r('slash', { path: '/a/b/' }), r('noslash', { path: '/c/d' })]);
    expect(hit(t, 'h', 'GET', '/a/b')).toBe('slash');
    expect(hit(t, 'h', 'GET', '/a/b/')).toBe('slash');
    expect(hit(t, 'h', 'GET', '/c/d/')).toBe('noslash');
    expect(hit(t, 'h', 'GET', '/c/d')).toBe('noslash');
  });

  it('/a/b and /a/b/ are the same route (a conflict)', () => {
    const issues = issuesOf([r('a', { path: '/a/b' }), r('b', { path: '/a/b/' })]);
    expect(issues.map((i) => i.index)).toEqual([0, 1]);
  });

  it("'/' matches only the root", () => {
    const t = table([r('root', { path: '/' })]);
    expect(hit(t, 'h', 'GET', '/')).toBe('root');
    expect(hit(t, 'h', 'GET', '/a')).toBeUndefined();
  });

  it('a final /** matches zero or more segments', () => {
    const t = table([r('static', { path: '/static/**' })]);
    expect(hit(t, 'h', 'GET', '/static')).toBe('static');
    expect(hit(t, 'h', 'GET', '/static/')).toBe('static');
    expect(hit(t, 'h', 'GET', '/static/a')).toBe('static');
    expect(hit(t, 'h', 'GET', '/static/a/b/c')).toBe('static');
    expect(hit(t, 'h', 'GET', '/staticx')).toBeUndefined();
    expect(hit(t, 'h', 'GET', '/')).toBeUndefined();
    expect(t.match('h', 'GET', '/static/a')?.params).toEqual({});
  });

  it('/** alone and an omitted path both match everything', () => {
    const t1 = table([r('glob', { path: '/**' })]);
    const t2 = table([r('none', {})]);
    for (const p of ['/', '/a', '/a/b/c/d']) {
      expect(hit(t1, 'h', 'GET', p)).toBe('glob');
      expect(hit(t2, 'h', 'GET', p)).toBe('none');
    }
  });

  it('params combine with a final /**', () => {
    const t = table([r('files', { path: '/t/{tenant}/files/**' })]);
    expect(t.match('h', 'GET', '/t/acme/files/x/y')?.params).toEqual({ tenant: 'acme' });
    expect(t.match('h', 'GET', '/t/acme/files')?.params).toEqual({ tenant: 'acme' });
    expect(hit(t, 'h', 'GET', '/t/acme')).toBeUndefined();
  });
});

describe('path precedence', () => {
  it('literal beats param beats /** regardless of config order', () => {
    const routes = [r('glob', { path: '/a/**' }), r('param', { path: '/a/{x}' }), r('lit', { path: '/a/b' })];
    for (const order of [routes, [...routes].reverse()]) {
      const t = table(order);
      expect(hit(t, 'h', 'GET', '/a/b')).toBe('lit');
      expect(hit(t, 'h', 'GET', '/a/c')).toBe('param');
      expect(hit(t, 'h', 'GET', '/a/c/d')).toBe('glob');
      expect(hit(t, 'h', 'GET', '/a')).toBe('glob');
    }
  });

  it('backtracks from a literal branch that fails deeper to the param branch', () => {
    const t = table([r('lit', { path: '/v1/sandboxes/list' }), r('param', { path: '/v1/{kind}/{id}/invoke' })]);
    expect(hit(t, 'h', 'GET', '/v1/sandboxes/list')).toBe('lit');
    const m = t.match('h', 'GET', '/v1/sandboxes/abc/invoke');
    expect(m?.route.name).toBe('param');
    expect(m?.params).toEqual({ kind: 'sandboxes', id: 'abc' });
  });

  it('backtracks to /** when both literal and param branches fail', () => {
    const t = table([
      r('lit', { path: '/a/b/c' }),
      r('param', { path: '/a/{x}/d' }),
      r('glob', { path: '/a/**' }),
    ]);
    expect(hit(t, 'h', 'GET', '/a/b/c')).toBe('lit');
    expect(hit(t, 'h', 'GET', '/a/b/d')).toBe('param');
    expect(t.match('h', 'GET', '/a/b/d')?.params).toEqual({ x: 'b' });
    expect(hit(t, 'h', 'GET', '/a/b/e')).toBe('glob');
    expect(t.match('h', 'GET', '/a/b/e')?.params).toEqual({});
  });

  it('param values from abandoned branches do not leak', () => {
    const t = table([r('deep', { path: '/{a}/{b}/x' }), r('short', { path: '/{c}/y/{d}' })]);
    const m = t.match('h', 'GET', '/1/y/z');
    expect(m?.route.name).toBe('short');
    expect(m?.params).toEqual({ c: '1', d: 'z' });
  });

  it('a deeper /** is preferred over a shallower one', () => {
    const t = table([r('root', { path: '/**' }), r('api', { path: '/api/**' })]);
    expect(hit(t, 'h', 'GET', '/api/x')).toBe('api');
    expect(hit(t, 'h', 'GET', '/api')).toBe('api');
    expect(hit(t, 'h', 'GET', '/other')).toBe('root');
  });

  it('an exact end beats a /** at the same node', () => {
    const t = table([r('glob', { path: '/a/**' }), r('exact', { path: '/a' })]);
    expect(hit(t, 'h', 'GET', '/a')).toBe('exact');
    expect(hit(t, 'h', 'GET', '/a/b')).toBe('glob');
  });
});

describe('methods', () => {
  it('are case-insensitive', () => {
    const t = table([r('post', { path: '/a', methods: ['post'] })]);
    expect(hit(t, 'h', 'POST', '/a')).toBe('post');
    expect(hit(t, 'h', 'post', '/a')).toBe('post');
    expect(hit(t, 'h', 'GET', '/a')).toBeUndefined();
  });

  it('no methods means any method', () => {
    const t = table([r('any', { path: '/a' })]);
    expect(hit(t, 'h', 'DELETE', '/a')).toBe('any');
    expect(hit(t, 'h', 'PROPFIND', '/a')).toBe('any');
  });

  it('a route with methods beats one without on the same path, in either order', () => {
    const routes = [r('any', { path: '/a' }), r('post', { path: '/a', methods: ['POST'] })];
    for (const order of [routes, [...routes].reverse()]) {
      const t = table(order);
      expect(hit(t, 'h', 'POST', '/a')).toBe('post');
      expect(hit(t, 'h', 'GET', '/a')).toBe('any');
    }
  });

  it('different methods on the same path are separate routes', () => {
    const t = table([r('get', { path: '/a', methods: ['GET', 'HEAD'] }), r('post', { path: '/a', methods: ['POST'] })]);
    expect(hit(t, 'h', 'HEAD', '/a')).toBe('get');
    expect(hit(t, 'h', 'POST', '/a')).toBe('post');
    expect(hit(t, 'h', 'PUT', '/a')).toBeUndefined();
  });

  it('a method mismatch backtracks to a less specific path', () => {
    const t = table([r('lit', { path: '/a/b', methods: ['POST'] }), r('param', { path: '/a/{x}' })]);
    expect(hit(t, 'h', 'POST', '/a/b')).toBe('lit');
    expect(hit(t, 'h', 'GET', '/a/b')).toBe('param');
  });

  it('unknown-looking methods are fine if they are letter tokens', () => {
    const t = table([r('x', { path: '/a', methods: ['PURGE', 'propfind'] })]);
    expect(hit(t, 'h', 'PROPFIND', '/a')).toBe('x');
  });
});

describe('hosts', () => {
  it('no hosts and * both mean any host', () => {
    const t = table([r('a', { path: '/a' }), r('b', { path: '/b', hosts: ['*'] })]);
    expect(hit(t, 'anything.example', 'GET', '/a')).toBe('a');
    expect(hit(t, '', 'GET', '/a')).toBe('a');
    expect(hit(t, '10.0.0.1:80', 'GET', '/b')).toBe('b');
  });

  it('exact hosts are case-insensitive and ignore port and a trailing dot', () => {
    const t = table([r('x', { path: '/a', hosts: ['Router.Example.com'] })]);
    for (const h of ['router.example.com', 'ROUTER.EXAMPLE.COM', 'router.example.com:8443', 'router.example.com.', 'router.example.com.:443']) {
      expect(hit(t, h, 'GET', '/a')).toBe('x');
    }
    expect(hit(t, 'router.example.org', 'GET', '/a')).toBeUndefined();
    expect(hit(t, 'x.router.example.com', 'GET', '/a')).toBeUndefined();
  });

  it('a trailing dot on the pattern is ignored', () => {
    const t = table([
      r('x', { path: '/a', hosts: ['example.com.'] }),
      r('w', { path: '/b', hosts: ['*.example.org.'] }),
      r('p', { path: '/c', hosts: ['router.*.'] }),
    ]);
    expect(hit(t, 'example.com', 'GET', '/a')).toBe('x');
    expect(hit(t, 'a.example.org', 'GET', '/b')).toBe('w');
    expect(hit(t, 'router.x', 'GET', '/c')).toBe('p');
  });

  it('IPv6 hosts: brackets and port are stripped', () => {
    const t = table([r('v6', { path: '/a', hosts: ['[::1]'] }), r('v6b', { path: '/b', hosts: ['2001:DB8::1'] })]);
    expect(hit(t, '[::1]:8080', 'GET', '/a')).toBe('v6');
    expect(hit(t, '[::1]', 'GET', '/a')).toBe('v6');
    expect(hit(t, '::1', 'GET', '/a')).toBe('v6');
    expect(hit(t, '[2001:db8::1]:443', 'GET', '/b')).toBe('v6b');
    expect(hit(t, '[::2]:8080', 'GET', '/a')).toBeUndefined();
  });

  it('IPv4 hosts with a port', () => {
    const t = table([r('v4', { path: '/a', hosts: ['10.0.0.1'] })]);
    expect(hit(t, '10.0.0.1:8080', 'GET', '/a')).toBe('v4');
  });

  it('*.suffix matches one or more labels, not the bare suffix', () => {
    const t = table([r('w', { path: '/a', hosts: ['*.example.com'] })]);
    expect(hit(t, 'a.example.com', 'GET', '/a')).toBe('w');
    expect(hit(t, 'a.b.example.com:443', 'GET', '/a')).toBe('w');
    expect(hit(t, 'A.EXAMPLE.COM.', 'GET', '/a')).toBe('w');
    expect(hit(t, 'example.com', 'GET', '/a')).toBeUndefined();
    expect(hit(t, 'notexample.com', 'GET', '/a')).toBeUndefined();
    expect(hit(t, 'a.example.com.evil', 'GET', '/a')).toBeUndefined();
    expect(hit(t, '.example.com', 'GET', '/a')).toBeUndefined();
    expect(hit(t, 'a..example.com', 'GET', '/a')).toBeUndefined();
  });

  it('prefix.* matches prefix.<anything>, not the bare prefix', () => {
    const t = table([r('p', { path: '/a', hosts: ['router.*'] })]);
    expect(hit(t, 'router.example.com', 'GET', '/a')).toBe('p');
    expect(hit(t, 'Router.svc:8080', 'GET', '/a')).toBe('p');
    expect(hit(t, 'router', 'GET', '/a')).toBeUndefined();
    expect(hit(t, 'routerx.example.com', 'GET', '/a')).toBeUndefined();
    expect(hit(t, 'x.router.example.com', 'GET', '/a')).toBeUndefined();
  });

  it('multi-label prefix wildcards', () => {
    const t = table([r('short', { path: '/a', hosts: ['router.*'] }), r('long', { path: '/a', hosts: ['router.internal.*'] })]);
    expect(hit(t, 'router.internal.example', 'GET', '/a')).toBe('long');
    expect(hit(t, 'router.public.example', 'GET', '/a')).toBe('short');
    expect(hit(t, 'router.internal', 'GET', '/a')).toBe('short');
  });

  it('precedence: exact > longer suffix > shorter suffix > prefix > any, independent of order', () => {
    const routes = [
      r('any', { path: '/a' }),
      r('prefix', { path: '/a', hosts: ['router.*'] }),
      r('short-suffix', { path: '/a', hosts: ['*.com'] }),
      r('long-suffix', { path: '/a', hosts: ['*.example.com'] }),
      r('exact', { path: '/a', hosts: ['router.example.com'] }),
    ];
    for (const order of [routes, [...routes].reverse()]) {
      const t = table(order);
      expect(hit(t, 'router.example.com', 'GET', '/a')).toBe('exact');
      expect(hit(t, 'other.example.com', 'GET', '/a')).toBe('long-suffix');
      expect(hit(t, 'router.example.org.com', 'GET', '/a')).toBe('short-suffix');
      expect(hit(t, 'router.example.org', 'GET', '/a')).toBe('prefix');
      expect(hit(t, 'localhost', 'GET', '/a')).toBe('any');
    }
  });

  it('host specificity beats path specificity', () => {
    const t = table([r('any-literal', { path: '/a/b' }), r('exact-glob', { path: '/**', hosts: ['h.example'] })]);
    expect(hit(t, 'h.example', 'GET', '/a/b')).toBe('exact-glob');
    expect(hit(t, 'other', 'GET', '/a/b')).toBe('any-literal');
  });

  it('falls through host buckets when the more specific one has no match', () => {
    const t = table([
      r('exact', { path: '/only-exact', hosts: ['router.example.com'] }),
      r('suffix', { path: '/only-suffix', hosts: ['*.example.com'] }),
      r('prefix', { path: '/only-prefix', hosts: ['router.*'] }),
      r('any', { path: '/only-any' }),
      r('exact-post', { path: '/m', hosts: ['router.example.com'], methods: ['POST'] }),
      r('any-get', { path: '/m', methods: ['GET'] }),
    ]);
    const h = 'router.example.com';
    expect(hit(t, h, 'GET', '/only-exact')).toBe('exact');
    expect(hit(t, h, 'GET', '/only-suffix')).toBe('suffix');
    expect(hit(t, h, 'GET', '/only-prefix')).toBe('prefix');
    expect(hit(t, h, 'GET', '/only-any')).toBe('any');
    expect(hit(t, h, 'GET', '/nothing')).toBeUndefined();
    // A method mismatch in the exact bucket also falls through.
    expect(hit(t, h, 'POST', '/m')).toBe('exact-post');
    expect(hit(t, h, 'GET', '/m')).toBe('any-get');
  });

  it('falls through from a longer suffix to a shorter one', () => {
    const t = table([r('long', { path: '/x', hosts: ['*.b.example.com'] }), r('short', { path: '/y', hosts: ['*.example.com'] })]);
    expect(hit(t, 'a.b.example.com', 'GET', '/x')).toBe('long');
    expect(hit(t, 'a.b.example.com', 'GET', '/y')).toBe('short');
  });

  it('a route with several hosts is reachable through each', () => {
    const t = table([r('multi', { path: '/a', hosts: ['a.example', '*.b.example', 'c.*'] })]);
    expect(hit(t, 'a.example', 'GET', '/a')).toBe('multi');
    expect(hit(t, 'x.b.example', 'GET', '/a')).toBe('multi');
    expect(hit(t, 'c.d', 'GET', '/a')).toBe('multi');
    expect(hit(t, 'd.example', 'GET', '/a')).toBeUndefined();
  });
});

describe('byName and size', () => {
  it('looks routes up by name', () => {
    const routes = [r('a', { path: '/a' }), r('b', { path: '/b' })];
    const t = table(routes);
    expect(t.byName('b')).toBe(routes[1]);
    expect(t.byName('c')).toBeUndefined();
    expect(t.size).toBe(2);
    expect(table([]).size).toBe(0);
  });

  it('returns the caller’s route object from match', () => {
    const routes = [r('a', { path: '/a' })];
    expect(table(routes).match('h', 'GET', '/a')?.route).toBe(routes[0]);
  });
});

describe('issues', () => {
  function one(routes: readonly TestRoute[]): RouteTableIssue {
    const issues = issuesOf(routes);
    expect(issues).toHaveLength(1);
    return issues[0] as RouteTableIssue;
  }

  it('duplicate names', () => {
    const i = one([r('a', { path: '/a' }), r('b', { path: '/b' }), r('a', { path: '/c' })]);
    expect(i).toMatchObject({ index: 2, path: 'routes[2].name' });
    expect(i.message).toMatch(/duplicate route name 'a'.*routes\[0\]/);
  });

  it('empty names', () => {
    expect(one([r('', { path: '/a' })])).toMatchObject({ index: 0, path: 'routes[0].name' });
  });

  it('conflicting routes: same host, equivalent template (param names ignored), overlapping methods', () => {
    const issues = issuesOf([
      r('ok', { path: '/other' }),
      r('first', { path: '/s/{id}/x', methods: ['GET', 'POST'], hosts: ['router.*'] }),
      r('second', { path: '/s/{name}/x/', methods: ['post'], hosts: ['Router.*'] }),
    ]);
    expect(issues).toHaveLength(2);
    expect(issues[0]).toMatchObject({ index: 1, path: 'routes[1].match' });
    expect(issues[0]?.message).toMatch(/routes\[2\] \('second'\)/);
    expect(issues[0]?.message).toMatch(/router\.\*.*\/s\/\{\}\/x.*POST/);
    expect(issues[1]).toMatchObject({ index: 2, path: 'routes[2].match' });
    expect(issues[1]?.message).toMatch(/routes\[1\] \('first'\)/);
  });

  it('two any-method routes on the same template conflict', () => {
    expect(issuesOf([r('a', { path: '/a' }), r('b', { path: '/a' })]).map((i) => i.index)).toEqual([0, 1]);
  });

  it('an omitted path and /** are the same template', () => {
    expect(issuesOf([r('a', {}), r('b', { path: '/**' })]).map((i) => i.index)).toEqual([0, 1]);
  });

  it('no host and * are the same host pattern', () => {
    expect(issuesOf([r('a', { path: '/a' }), r('b', { path: '/a', hosts: ['*'] })]).map((i) => i.index)).toEqual([0, 1]);
  });

  it('conflict through one of several hosts is reported once per pair', () => {
    const issues = issuesOf([
      r('a', { path: '/a', hosts: ['x.example', 'y.example'], methods: ['GET', 'PUT'] }),
      r('b', { path: '/a', hosts: ['y.example', 'x.example'], methods: ['PUT', 'GET'] }),
    ]);
    expect(issues.map((i) => i.index)).toEqual([0, 1]);
  });

  it('not conflicts: disjoint methods, methods vs none, different hosts, different templates', () => {
    const built = buildRouteTable([
      r('a', { path: '/a', methods: ['GET'] }),
      r('b', { path: '/a', methods: ['POST'] }),
      r('c', { path: '/a' }),
      r('d', { path: '/a', hosts: ['x.example'] }),
      r('e', { path: '/a', hosts: ['*.x.example'] }),
      r('f', { path: '/a', hosts: ['x.example.*'] }),
      r('g', { path: '/{p}' }),
      r('h', { path: '/a/**' }),
      r('i', { path: '/**' }),
    ]);
    expect(built.ok).toBe(true);
  });

  it('duplicates within one route are not conflicts', () => {
    const t = table([r('a', { path: '/a', hosts: ['x.example', 'X.EXAMPLE.'], methods: ['GET', 'get'] })]);
    expect(hit(t, 'x.example', 'GET', '/a')).toBe('a');
  });

  const badTemplates: [string, RegExp][] = [
    ['', /start with '\/'/],
    ['v1/x', /start with '\/'/],
    ['/a//b', /repeated '\/'/],
    ['/a/{id}/b/{id}', /duplicate parameter name 'id'/],
    ['/a/{1x}', /parameter name/],
    ['/a/{}', /parameter name/],
    ['/a/{id-x}', /parameter name/],
    ['/a/x{id}', /whole segment/],
    ['/a/{id}x', /whole segment/],
    ['/a/{id', /whole segment/],
    ['/a/**/b', /only allowed as the last segment/],
    ['/a/*', /'\*'/],
    ['/a/b*', /'\*'/],
    ['/a/../b', /dot segment/],
    ['/a/./b', /dot segment/],
    ['/a/%2e%2e', /dot segment/],
    ['/a%2fb', /encoded slash/],
    ['/a/%zz', /invalid percent-encoding/],
    ['/a\\b', /backslash/],
    ['/a?x=1', /query/],
  ];
  it.each(badTemplates)('invalid template %j', (path, message) => {
    const i = one([r('x', { path })]);
    expect(i).toMatchObject({ index: 0, path: 'routes[0].match.path' });
    expect(i.message).toMatch(message);
  });

  const badHosts: [string, RegExp][] = [
    ['', /empty/],
    ['a..example.com', /empty label/],
    ['.example.com', /empty label/],
    ['*.', /empty label/],
    ['a.*.example.com', /'\*'/],
    ['*.*.example.com', /'\*'/],
    ['*example.com', /'\*'/],
    ['router*', /'\*'/],
    ['*.example.*', /'\*'/],
    ['**', /'\*'/],
    ['router example.com', /spaces/],
    [' router.example.com', /spaces/],
    ['router.example.com:8080', /port/],
    ['[::1]:8080', /port/],
    ['[zz]', /IPv6/],
    ['router/x', /may only contain/],
  ];
  it.each(badHosts)('invalid host pattern %j', (host, message) => {
    const i = one([r('x', { path: '/a', hosts: ['ok.example', host] })]);
    expect(i).toMatchObject({ index: 0, path: 'routes[0].match.hosts[1]' });
    expect(i.message).toMatch(message);
  });

  it('invalid methods', () => {
    const issues = issuesOf([r('x', { path: '/a', methods: ['GET', 'M-SEARCH', '', 'GET '] })]);
    expect(issues.map((i) => i.path)).toEqual([
      'routes[0].match.methods[1]',
      'routes[0].match.methods[2]',
      'routes[0].match.methods[3]',
    ]);
  });

  it('empty hosts or methods lists are issues (omit them to match any)', () => {
    const issues = issuesOf([r('x', { path: '/a', hosts: [], methods: [] })]);
    expect(issues.map((i) => i.path)).toEqual(['routes[0].match.hosts', 'routes[0].match.methods']);
  });

  it('reports every problem, sorted by route index, and never throws on malformed input', () => {
    const malformed = [
      r('a', { path: 'bad' }),
      { name: 'b', match: null } as unknown as TestRoute,
      { name: 42, match: { path: 7, hosts: 'x', methods: [1] } } as unknown as TestRoute,
      r('a', { path: '/ok', hosts: ['a b'] }),
    ];
    const issues = issuesOf(malformed);
    expect(issues.map((i) => [i.index, i.path])).toEqual([
      [0, 'routes[0].match.path'],
      [1, 'routes[1].match'],
      [2, 'routes[2].name'],
      [2, 'routes[2].match.hosts'],
      [2, 'routes[2].match.methods[0]'],
      [2, 'routes[2].match.path'],
      [3, 'routes[3].name'],
      [3, 'routes[3].match.hosts[0]'],
    ]);
  });

  it('invalid routes do not produce spurious conflicts', () => {
    const issues = issuesOf([r('a', { path: '/a', methods: ['G T'] }), r('b', { path: '/a' })]);
    expect(issues.map((i) => i.index)).toEqual([0]);
  });
});

describe('scale', () => {
  it('builds 20,000 routes across 200 hosts and matches correctly', () => {
    const routes: TestRoute[] = [];
    for (let i = 0; i < 20_000; i++) {
      const host = `h${i % 200}.example.com`;
      routes.push(r(`route-${i}`, { hosts: [host], methods: ['GET'], path: `/t${i}/sandboxes/{id}` }));
    }
    routes.push(r('wild', { hosts: ['*.example.com'], path: '/t5/sandboxes/{id}' }));
    routes.push(r('fallback', { path: '/**' }));
    const t = table(routes);
    expect(t.size).toBe(20_002);

    const m = t.match('h7.example.com:443', 'GET', '/t7/sandboxes/abc');
    expect(m?.route.name).toBe('route-7');
    expect(m?.params).toEqual({ id: 'abc' });
    expect(hit(t, 'h199.example.com', 'get', '/t19999/sandboxes/z')).toBe('route-19999');
    expect(hit(t, 'h0.example.com', 'GET', '/t12000/sandboxes/q/')).toBe('route-12000');
    // Right path, wrong host: t7 lives only on h7.
    expect(hit(t, 'h8.example.com', 'GET', '/t7/sandboxes/abc')).toBe('fallback');
    // Wrong method falls through to the wildcard, then the catch-all.
    expect(hit(t, 'h5.example.com', 'POST', '/t5/sandboxes/abc')).toBe('wild');
    expect(hit(t, 'h6.example.com', 'POST', '/t5/sandboxes/abc')).toBe('wild');
    expect(hit(t, 'h7.example.com', 'POST', '/t7/sandboxes/abc')).toBe('fallback');
    expect(t.byName('route-15000')).toBe(routes[15000]);
  });

  it('reports a conflict among 20,000 routes with both indexes', () => {
    const routes: TestRoute[] = [];
    for (let i = 0; i < 20_000; i++) {
      routes.push(r(`route-${i}`, { hosts: [`h${i % 200}.example.com`], path: `/t${i}/sandboxes/{id}` }));
    }
    routes.push(r('dup', { hosts: ['H123.example.com'], path: '/t123/sandboxes/{other}' }));
    expect(issuesOf(routes).map((i) => i.index)).toEqual([123, 20_000]);
  });
});
