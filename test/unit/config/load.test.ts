import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { applyOverrides, formatPath, parseConfig, readConfigFile, type Overrides } from '../../../src/config/load.js';
import { ConfigError, PortcullisError, type ConfigIssue } from '../../../src/core/errors.js';
import type { Config } from '../../../src/config/schema.js';
import { checkConfig } from '../../../src/config/validate.js';

const ISSUER = `
issuers:
  - name: acme
    issuer: https://idp.example/realms/acme
    audiences: [router]
`;

function issuesOf(text: string, overrides: Overrides = {}): ConfigIssue[] {
  try {
    parseConfig(text, 'test.yaml', overrides);
  } catch (err) {
    if (err instanceof ConfigError) return [...err.issues];
    throw err;
  }
  throw new Error('expected the config to be refused');
}

function paths(issues: readonly ConfigIssue[]): string[] {
  return issues.map((i) => i.path);
}

describe('parseConfig: defaults', () => {
  it('applies every default to an empty document', () => {
    // toMatchObject: sections may gain keys; the defaults listed here must not change.
    const c = parseConfig('');
    expect(c.listen).toMatchObject({ grpc: '0.0.0.0:9191', http: '0.0.0.0:9192', admin: '127.0.0.1:9901', httpPathPrefix: '', httpTrustXfcc: false });
    expect(c.log).toMatchObject({ level: 'info', decisionSampleRate: 1 });
    expect(c.server).toMatchObject({ shutdownGraceSeconds: 15, watchConfig: true });
    expect(c.defaults).toMatchObject({
      onNoRoute: 'deny',
      credentials: ['header:authorization'],
      clockSkewSeconds: 30,
      maxTokenBytes: 8192,
      identityHeaders: ['x-portcullis-*', 'x-user-*'],
      headers: {
        'x-portcullis-sub': '{sub}',
        'x-portcullis-tenant': '{issuer.name}',
        'x-portcullis-roles': '{roles}',
        'x-portcullis-route': '{route}',
      },
      routeContextKey: 'route',
      authRealm: 'portcullis',
    });
    expect(c.tokenCache).toMatchObject({ maxEntries: 10_000 });
    expect(c.issuers).toEqual([]);
    expect(c.development.issuer).toMatchObject({ enabled: false, name: 'dev', audience: 'portcullis-dev', maxTtlSeconds: 3600, algorithm: 'ES256' });
    expect(c.roles).toEqual({});
    expect(c.routes).toEqual([]);
  });

  it('fills issuer and route defaults', () => {
    const c = parseConfig(`${ISSUER}
routes:
  - name: r
`);
    const i = c.issuers[0];
    expect(i?.algorithms).toEqual(['RS256', 'ES256']);
    expect(i?.subjectClaim).toBe('sub');
    expect(i?.roleClaims).toBeUndefined();
    expect(i?.clockSkewSeconds).toBeUndefined();
    expect(i?.jwks).toMatchObject({ refreshSeconds: 300, maxStalenessSeconds: 86_400, kidMissCooldownSeconds: 30, timeoutMs: 5000, retryMinSeconds: 1 });
    const r = c.routes[0];
    expect(r?.allow).toBe('authenticated');
    expect(r?.match).toEqual({});
    expect(r?.require.roles).toBeUndefined();
    expect(r?.shadow).toBe(false);
  });

  it('accepts a comment-only document and explicit values', () => {
    expect(parseConfig('# nothing\n').listen.grpc).toBe('0.0.0.0:9191');
    const c = parseConfig('listen: { grpc: "[::1]:50051", http: "off", admin: "localhost:0" }\n');
    expect(c.listen).toMatchObject({ grpc: '[::1]:50051', http: 'off', admin: 'localhost:0' });
  });
});

describe('parseConfig: errors by path', () => {
  it('lists several simultaneous problems, each by path', () => {
    const issues = issuesOf(`
listen: { grpc: "not an address", admin: "127.0.0.1:70000" }
bogus: 1
issuers:
  - name: acme
    issuer: https://idp.example/realms/acme
    algorithms: [HS256, none, RS256]
    extra: 1
routes:
  - name: r
    credentials: ["bearer:x"]
`);
    const p = paths(issues);
    expect(p).toContain('listen.grpc');
    expect(p).toContain('listen.admin');
    expect(p).toContain('issuers[0].audiences');
    expect(p).toContain('issuers[0].algorithms[0]');
    expect(p).toContain('issuers[0].algorithms[1]');
    expect(p).not.toContain('issuers[0].algorithms[2]');
    expect(p).toContain('routes[0].credentials[0]');
    const byPath = (path: string) => issues.filter((i) => i.path === path).map((i) => i.message).join(' | ');
    expect(byPath('issuers[0].algorithms[0]')).toMatch(/HS256/);
    expect(byPath('issuers[0].algorithms[1]')).toMatch(/none/);
    expect(byPath('listen.admin')).toMatch(/port/);
    // unknown keys: named, at the object that holds them
    expect(issues.some((i) => i.path === 'issuers[0]' && i.message.includes('extra'))).toBe(true);
    expect(issues.some((i) => i.path === '' && i.message.includes('bogus'))).toBe(true);
  });

  it('reports a malformed address with the host:port message only', () => {
    const issues = issuesOf('listen: { grpc: "not an address" }\n');
    expect(issues.filter((i) => i.path === 'listen.grpc').map((i) => i.message)).toEqual([
      'expected host:port, e.g. 127.0.0.1:9191 or [::1]:9191',
    ]);
  });

  it('refuses an empty audience list and unsupported algorithms', () => {
    const issues = issuesOf(`
issuers:
  - name: acme
    issuer: https://idp.example/realms/acme
    audiences: []
    algorithms: [RS1, hs512]
`);
    expect(paths(issues)).toEqual(expect.arrayContaining(['issuers[0].audiences', 'issuers[0].algorithms[0]', 'issuers[0].algorithms[1]']));
  });

  it('puts the source name and every issue in the error message', () => {
    let err: unknown;
    try {
      parseConfig('listen: { grpc: x }\nbogus: 1\n', 'my.yaml');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe('ERR_CONFIG_INVALID');
    expect((err as ConfigError).message).toContain('my.yaml');
    expect((err as ConfigError).message).toContain('listen.grpc');
    expect((err as ConfigError).message).toContain('(root)');
  });

  it('reports a YAML syntax error with its line', () => {
    const issues = issuesOf('log:\n  level: info\n\tdecisionSampleRate: 1\n');
    expect(issues.length).toBeGreaterThan(0);
    expect(issues[0]?.path).toBe('line 3, column 1');
    expect(issues[0]?.message).toMatch(/^YAML: .*[Tt]ab/);
    // the position is in the path, not repeated at the end of the message
    expect(issues[0]?.message).not.toMatch(/at line \d+, column \d+:?$/);
  });

  it('refuses duplicate keys', () => {
    const issues = issuesOf('log:\n  level: info\n  level: debug\n');
    expect(issues[0]?.path).toBe('line 3, column 3');
    expect(issues[0]?.message).toMatch(/unique/);
  });

  it('hints at quoting for an unquoted {id} in a flow mapping', () => {
    const issues = issuesOf(`
routes:
  - name: r
    match: { path: /v1/sandboxes/{id}/invoke }
`);
    expect(issues[0]?.path).toMatch(/^line 4, column \d+$/);
    expect(issues[0]?.message).toContain('must be quoted');
  });

  it('accepts the same template when quoted', () => {
    const c = parseConfig(`
routes:
  - name: r
    match: { path: "/v1/sandboxes/{id}/invoke" }
`);
    expect(c.routes[0]?.match.path).toBe('/v1/sandboxes/{id}/invoke');
  });
});

describe('parseConfig with cross-reference checks', () => {
  const check = (c: Config): ConfigIssue[] => {
    const r = checkConfig(c);
    return r.ok ? [] : r.issues;
  };

  function checkedIssues(text: string): ConfigIssue[] {
    try {
      parseConfig(text, 'test.yaml', {}, check);
    } catch (err) {
      if (err instanceof ConfigError) return [...err.issues];
      throw err;
    }
    throw new Error('expected the config to be refused');
  }

  it('reports cross-reference problems together with schema problems', () => {
    const list = checkedIssues(`${ISSUER}
listen: { grpc: nope }
routes:
  - { name: r, match: { path: /a }, issuers: [initech] }
`);
    expect(paths(list)).toEqual(expect.arrayContaining(['listen.grpc', 'routes[0].issuers[0]']));
  });

  it('reports cross-reference problems of a valid config', () => {
    expect(paths(checkedIssues(`${ISSUER}\nroutes: [{ name: r, issuers: [initech] }]\n`))).toEqual(['routes[0].issuers[0]']);
  });

  it('does not call a configured issuer unknown because another part of the issuers section is invalid', () => {
    const list = checkedIssues(`
issuers:
  - name: acme
    issuer: https://idp.example/realms/acme
    audiences: [router]
    algorithms: [HS256]
routes:
  - { name: r, match: { path: /a }, issuers: [acme] }
`);
    expect(paths(list)).toContain('issuers[0].algorithms[0]');
    // "unknown issuer acme" would send the user looking for a typo that is not there
    expect(list.filter((i) => i.message.includes('unknown issuer'))).toEqual([]);
  });

  it('does not call the development issuer unknown because the development section is invalid', () => {
    const list = checkedIssues(`
development: { issuer: { enabled: true, algorithm: HS256 } }
routes:
  - { name: r, match: { path: /a }, issuers: [dev] }
`);
    expect(paths(list)).toContain('development.issuer.algorithm');
    expect(list.filter((i) => i.message.includes('unknown issuer'))).toEqual([]);
  });
});

describe('formatPath', () => {
  it('joins keys with dots and indexes with brackets', () => {
    expect(formatPath(['issuers', 0, 'algorithms', 1])).toBe('issuers[0].algorithms[1]');
    expect(formatPath([])).toBe('');
    expect(formatPath([2, 'a'])).toBe('[2].a');
  });
});

describe('applyOverrides', () => {
  it('adds one issuer per Keycloak realm, named by realm', () => {
    const { doc, issues } = applyOverrides(
      { issuers: [{ name: 'existing', issuer: 'https://other.example', audiences: ['x'] }] },
      { keycloakUrl: 'https://kc.example/', keycloakRealms: ['acme', 'globex'], keycloakAudiences: ['router'] },
    );
    expect(issues).toEqual([]);
    expect((doc as { issuers: unknown[] }).issuers).toEqual([
      { name: 'existing', issuer: 'https://other.example', audiences: ['x'] },
      { name: 'acme', issuer: 'https://kc.example/realms/acme', audiences: ['router'] },
      { name: 'globex', issuer: 'https://kc.example/realms/globex', audiences: ['router'] },
    ]);
  });

  it('flows through parseConfig to valid issuers', () => {
    const c = parseConfig('', 'x', { keycloakUrl: 'https://kc.example', keycloakRealms: ['acme', 'globex'], keycloakAudiences: ['router'] });
    expect(c.issuers.map((i) => [i.name, i.issuer, i.audiences])).toEqual([
      ['acme', 'https://kc.example/realms/acme', ['router']],
      ['globex', 'https://kc.example/realms/globex', ['router']],
    ]);
  });

  it('reports a missing audience as an issue', () => {
    const { issues } = applyOverrides({}, { keycloakUrl: 'https://kc.example', keycloakRealms: ['acme'] });
    expect(paths(issues)).toEqual(['--keycloak-realm']);
    expect(issuesOf('', { keycloakUrl: 'https://kc.example', keycloakRealms: ['acme'], keycloakAudiences: [] }).map((i) => i.path)).toContain('--keycloak-realm');
  });

  it('reports a realm without URL and a URL without realm', () => {
    expect(paths(applyOverrides({}, { keycloakRealms: ['acme'], keycloakAudiences: ['a'] }).issues)).toEqual(['--keycloak-realm']);
    expect(paths(applyOverrides({}, { keycloakUrl: 'https://kc.example', keycloakAudiences: ['a'] }).issues)).toEqual(['--keycloak-url']);
  });

  it('overrides listen addresses and log level without touching the input', () => {
    const raw = { listen: { grpc: '0.0.0.0:1' } };
    const { doc } = applyOverrides(raw, { grpc: '127.0.0.1:2', http: 'off', admin: '127.0.0.1:3', logLevel: 'debug' });
    expect(doc).toEqual({ listen: { grpc: '127.0.0.1:2', http: 'off', admin: '127.0.0.1:3' }, log: { level: 'debug' } });
    expect(raw).toEqual({ listen: { grpc: '0.0.0.0:1' } });
  });

  it('validates overridden values like file values', () => {
    expect(paths(issuesOf('', { grpc: 'nope' }))).toContain('listen.grpc');
  });
});

describe('readConfigFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads and parses a file', () => {
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, ISSUER);
    expect(readConfigFile(file).issuers[0]?.name).toBe('acme');
  });

  it('names the file in a validation error', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'bogus: 1\n');
    expect(() => readConfigFile(file)).toThrow(file);
  });

  it('throws ERR_CONFIG_READ for a missing file', () => {
    let err: unknown;
    try {
      readConfigFile(join(dir, 'missing.yaml'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PortcullisError);
    expect((err as PortcullisError).code).toBe('ERR_CONFIG_READ');
  });
});
