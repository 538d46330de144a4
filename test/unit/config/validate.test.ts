import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../src/config/load.js';
import { checkConfig, isLoopbackAddress } from '../../../src/config/validate.js';
import type { ConfigIssue } from '../../../src/core/errors.js';

const ISSUERS = `
issuers:
  - name: acme
    issuer: https://idp.example/realms/acme
    audiences: [router]
  - name: globex
    issuer: https://idp.example/realms/globex
    audiences: [router]
`;

function issues(yaml: string, admin?: string): ConfigIssue[] {
  const r = checkConfig(parseConfig(yaml), admin);
  if (r.ok) throw new Error('expected checkConfig to refuse the config');
  return r.issues;
}

function issueAt(list: readonly ConfigIssue[], path: string): ConfigIssue {
  const found = list.find((i) => i.path === path);
  if (!found) throw new Error(`no issue at ${path}; got ${JSON.stringify(list)}`);
  return found;
}

describe('checkConfig', () => {
  it('accepts a valid config and returns the policy and issuer names', () => {
    const r = checkConfig(
      parseConfig(`${ISSUERS}
roles: { admin: [sandbox:manage], "sandbox:manage": [sandbox:invoke] }
routes:
  - name: invoke
    match: { hosts: [router.*], methods: [POST], path: "/v1/sandboxes/{id}/invoke" }
    issuers: [acme]
    credentials: [header:authorization, cookie:access_token]
    require: { roles: { anyOf: [sandbox:invoke] } }
    headers: { x-user-sub: "{sub}", x-sandbox: "{path.id}" }
  - name: health
    match: { path: /healthz }
    allow: anonymous
`),
    );
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    expect([...r.issuerNames].sort()).toEqual(['acme', 'globex']);
    expect(r.policy.table.byName('invoke')?.sources.map((s) => s.label)).toEqual(['header:authorization', 'cookie:access_token']);
  });

  it('refuses a route naming an unknown issuer', () => {
    const list = issues(`${ISSUERS}
routes:
  - name: r
    issuers: [acme, initech]
`);
    expect(issueAt(list, 'routes[0].issuers[1]').message).toContain('initech');
    expect(list.some((i) => i.path === 'routes[0].issuers[0]')).toBe(false);
  });

  it('refuses duplicate issuer names and duplicate issuer URLs', () => {
    const list = issues(`
issuers:
  - { name: acme, issuer: "https://idp.example/realms/acme", audiences: [a] }
  - { name: acme, issuer: "https://idp.example/realms/other", audiences: [a] }
  - { name: third, issuer: "https://idp.example/realms/acme", audiences: [a] }
`);
    expect(issueAt(list, 'issuers[1].name').message).toContain('acme');
    issueAt(list, 'issuers[2].issuer');
  });

  it('refuses duplicate route names', () => {
    const list = issues(`
routes:
  - { name: r, match: { path: /a } }
  - { name: r, match: { path: /b } }
`);
    expect(issueAt(list, 'routes[1].name').message).toContain("'r'");
  });

  it('refuses conflicting routes (same host, template and methods)', () => {
    const list = issues(`
routes:
  - { name: a, match: { path: "/v1/{id}" } }
  - { name: b, match: { path: "/v1/{other}" } }
`);
    expect(list.some((i) => /^routes\[[01]\]\.match$/.test(i.path) && i.message.includes('conflicts'))).toBe(true);
  });

  it('refuses an unknown template placeholder in route headers and in default headers', () => {
    const list = issues(`
defaults: { headers: { x-portcullis-x: "{nope}" } }
routes:
  - { name: r, match: { path: /a }, headers: { x-user-sub: "{subject}" } }
`);
    expect(issueAt(list, 'routes[0].headers.x-user-sub').message).toContain('{subject}');
    expect(issueAt(list, 'defaults.headers.x-portcullis-x').message).toContain('{nope}');
  });

  it('refuses {path.x} when the route path has no {x}', () => {
    const list = issues(`
routes:
  - { name: r, match: { path: "/v1/{id}" }, headers: { x-user-thing: "{path.x}" } }
`);
    expect(issueAt(list, 'routes[0].headers.x-user-thing').message).toContain('"x"');
  });

  it('refuses caller headers, roles, issuers or credentials on an anonymous route', () => {
    const list = issues(`${ISSUERS}
routes:
  - { name: a, match: { path: /a }, allow: anonymous, headers: { x-user-sub: "{sub}" } }
  - { name: b, match: { path: /b }, allow: anonymous, issuers: [acme] }
  - { name: c, match: { path: /c }, allow: anonymous, require: { roles: { anyOf: [x] } } }
`);
    issueAt(list, 'routes[0].headers.x-user-sub');
    issueAt(list, 'routes[1]');
    issueAt(list, 'routes[2]');
  });

  it('refuses a bad default header template even when there are no routes', () => {
    issueAt(issues('defaults: { headers: { x-portcullis-x: "{nope}" } }\n'), 'defaults.headers.x-portcullis-x');
  });

  it('reports a bad default header template once, not once per route', () => {
    const list = issues(`
defaults: { headers: { x-portcullis-x: "{nope}" } }
routes:
  - { name: a, match: { path: /a } }
  - { name: b, match: { path: /b } }
  - { name: c, match: { path: /c } }
`);
    expect(list.filter((i) => i.path === 'defaults.headers.x-portcullis-x')).toHaveLength(1);
  });

  it('refuses a role that includes itself', () => {
    issueAt(issues('roles: { admin: [admin] }\n'), 'roles.admin[0]');
  });

  it('refuses the development issuer unless the admin port is on loopback', () => {
    const list = issues('listen: { admin: "0.0.0.0:9901" }\ndevelopment: { issuer: { enabled: true } }\n');
    issueAt(list, 'development.issuer.enabled');
    expect(checkConfig(parseConfig('development: { issuer: { enabled: true } }\n')).ok).toBe(true);
    // the effective admin address (e.g. a flag) is what counts
    issueAt(issues('development: { issuer: { enabled: true } }\n', '*:9901'), 'development.issuer.enabled');
  });

  it('refuses a development issuer whose name is also a configured issuer', () => {
    issueAt(issues(`${ISSUERS}\ndevelopment: { issuer: { enabled: true, name: acme } }\n`), 'development.issuer.name');
  });

  it('lets routes name the development issuer', () => {
    const r = checkConfig(parseConfig('development: { issuer: { enabled: true } }\nroutes: [{ name: r, issuers: [dev] }]\n'));
    expect(r.ok).toBe(true);
  });
});

describe('isLoopbackAddress', () => {
  it.each([
    ['127.0.0.1:9901', true],
    ['127.1.2.3:1', true],
    ['localhost:9901', true],
    ['[::1]:9901', true],
    ['0.0.0.0:9901', false],
    ['*:9901', false],
    ['[::]:9901', false],
    ['10.0.0.1:9901', false],
    ['admin.example.com:9901', false],
  ])('%s → %s', (address, expected) => {
    expect(isLoopbackAddress(address)).toBe(expected);
  });

  it('does not take a host name that starts with "127." for a loopback address', () => {
    // The schema accepts host names; 127.attacker.example resolves to whatever its owner wants.
    expect(isLoopbackAddress('127.attacker.example:9901')).toBe(false);
    expect(isLoopbackAddress('127.0.0.1.nip.io:9901')).toBe(false);
  });
});
