import { beforeAll, describe, expect, it } from 'vitest';
import { createStaticKeySource, type KeySource } from '../../../src/adapters/oidc/key-source.js';
import { parseConfig } from '../../../src/config/load.js';
import type { Config } from '../../../src/config/schema.js';
import { checkConfig } from '../../../src/config/validate.js';
import type { ReasonCode } from '../../../src/core/reasons.js';
import type { Allow, CheckInput, Decision, Deny } from '../../../src/core/types.js';
import { createDecider, type Decider, type DecisionTrace } from '../../../src/pipeline/decide.js';
import type { Policy } from '../../../src/pipeline/policy.js';
import { createRoleResolver } from '../../../src/stages/roles.js';
import { createVerifier, issuerRuntimeOf, type IssuerRuntime, type Verifier } from '../../../src/stages/verify.js';
import { createFakeClock } from '../../helpers/fake-clock.js';
import { generateTestKey, rawToken, resolvedKeyOf, signToken, type TestKey } from '../../helpers/tokens.js';

const T0 = 1_700_000_000_000;
const NOW_S = T0 / 1000;
const ACME = 'https://idp.example/realms/acme';
const GLOBEX = 'https://idp.example/realms/globex';

const CONFIG = `
issuers:
  - name: acme
    issuer: ${ACME}
    audiences: [router]
  - name: globex
    issuer: ${GLOBEX}
    audiences: [router]
roles:
  admin: [sandbox:manage]
  sandbox:manage: [sandbox:invoke]
routes:
  - name: invoke
    match: { methods: [POST], path: "/v1/sandboxes/{id}/invoke" }
    credentials: [header:authorization, cookie:access_token]
    require: { roles: { anyOf: [sandbox:invoke] } }
    headers:
      x-user-sub: "{sub}"
      x-user-qsub: "{qualified_sub}"
      x-user-tenant: "{issuer.name}"
      x-user-roles: "{roles}"
      x-user-sandbox: "{path.id}"
      x-user-email: "{claims.email}"
  - name: globex-only
    match: { path: /v1/globex }
    issuers: [globex]
    credentials: [header:authorization, cookie:access_token]
  - name: all-of
    match: { path: /v1/all-of }
    require: { roles: { allOf: [sandbox:manage, auditor] } }
  - name: any-of
    match: { path: /v1/any-of }
    require: { roles: { anyOf: [auditor, sandbox:manage] } }
  - name: health
    match: { path: /healthz }
    allow: anonymous
  - name: closed
    match: { path: /v1/closed }
    allow: deny
  - name: internal
    match: { hosts: [internal.example], path: /internal/** }
    headers: { x-portcullis-roles: null }
  - name: plain
    match: { path: /v1/plain }
`;

let acmeKey: TestKey;
let globexKey: TestKey;
let outsiderKey: TestKey;

beforeAll(async () => {
  [acmeKey, globexKey, outsiderKey] = await Promise.all([
    generateTestKey('RS256', 'acme-1'),
    generateTestKey('ES256', 'globex-1'),
    generateTestKey('RS256', 'outsider-1'),
  ]);
});

interface World {
  config: Config;
  policy: Policy;
  verifier: Verifier;
  decider: Decider;
}

function build(opts: { yaml?: string; keys?: (name: string, inner: KeySource) => KeySource; verifier?: Verifier } = {}): World {
  const config = parseConfig(opts.yaml ?? CONFIG);
  const checked = checkConfig(config);
  if (!checked.ok) throw new Error(JSON.stringify(checked.issues));
  const clock = createFakeClock(T0).clock;
  const issuers: IssuerRuntime[] = config.issuers.map((i) => {
    const inner = createStaticKeySource([resolvedKeyOf(i.name === 'acme' ? acmeKey : globexKey)]);
    return issuerRuntimeOf(i, config.defaults.clockSkewSeconds, opts.keys ? opts.keys(i.name, inner) : inner);
  });
  const verifier =
    opts.verifier ??
    createVerifier({
      clock,
      issuers,
      roles: createRoleResolver(config.roles),
      cacheMaxEntries: config.tokenCache.maxEntries,
      cacheAdmission: config.tokenCache.admission,
    });
  return { config, policy: checked.policy, verifier, decider: createDecider({ policy: checked.policy, verifier }) };
}

function acmeClaims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: ACME,
    aud: 'router',
    sub: 'alice',
    iat: NOW_S,
    exp: NOW_S + 300,
    email: 'alice@example.com',
    realm_access: { roles: ['admin'] },
    ...extra,
  };
}

async function acmeToken(extra: Record<string, unknown> = {}): Promise<string> {
  return signToken(acmeClaims(extra), { key: acmeKey });
}

async function globexToken(extra: Record<string, unknown> = {}): Promise<string> {
  return signToken({ ...acmeClaims({ sub: 'bob', realm_access: { roles: ['sandbox:invoke'] } }), iss: GLOBEX, ...extra }, { key: globexKey });
}

async function outsiderToken(): Promise<string> {
  return signToken(acmeClaims({ iss: 'https://evil.example/realms/acme' }), { key: outsiderKey });
}

function req(
  path: string,
  headers: Record<string, string> = {},
  opts: { method?: string; host?: string; query?: string; ext?: Record<string, string> } = {},
): CheckInput {
  return {
    method: opts.method ?? 'GET',
    host: opts.host ?? 'router.example',
    path,
    query: opts.query ?? '',
    headers: new Map(Object.entries(headers)),
    contextExtensions: new Map(Object.entries(opts.ext ?? {})),
  };
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

function now(d: Decision | Promise<Decision>): Decision {
  if (d instanceof Promise) throw new Error('expected a synchronous decision');
  return d;
}

function expectAllow(d: Decision): Allow {
  if (d.kind !== 'allow') throw new Error(`expected allow, got deny ${d.reason} (${d.status}): ${d.message}`);
  return d;
}

function expectDeny(d: Decision, reason: ReasonCode, status: number): Deny {
  if (d.kind !== 'deny') throw new Error(`expected deny ${reason}, got allow on ${d.route}`);
  expect({ reason: d.reason, status: d.status }).toEqual({ reason, status });
  return d;
}

function header(list: readonly { name: string; value: string }[], name: string): string | undefined {
  return list.find((h) => h.name === name)?.value;
}

const INVOKE = '/v1/sandboxes/sb-42/invoke';
/**
 * What a header value built from untrusted text may contain: HTAB and visible ASCII.
 * (CTLs are invalid in a field value, RFC 9110; node's setHeader also throws for chars above U+00FF.)
 */
const SAFE_VALUE = /^[\t\x20-\x7e]*$/;

describe('decide: authentication and fall-through', () => {
  it('allows a valid token with its principal and source', async () => {
    const { decider } = build();
    const d = expectAllow(now(decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'POST' }))));
    expect(d.route).toBe('invoke');
    expect(d.principal?.qualifiedSub).toBe('acme/alice');
    expect(d.principal?.source).toBe('header:authorization');
  });

  it('falls through an unknown-issuer token in the header to a valid cookie token', async () => {
    const { decider } = build();
    const trace: DecisionTrace = {};
    const input = req(INVOKE, { ...bearer(await outsiderToken()), cookie: `theme=x; access_token=${await acmeToken()}` }, { method: 'POST' });
    const d = expectAllow(now(decider.decide(input, trace)));
    expect(d.principal?.source).toBe('cookie:access_token');
    expect(trace.tokens).toMatchObject([
      { source: 'header:authorization', issuer: undefined, result: 'unknown_issuer' },
      { source: 'cookie:access_token', issuer: 'acme', result: 'valid' },
    ]);
    expect(trace.sources).toEqual([
      { source: 'header:authorization', outcome: 'found' },
      { source: 'cookie:access_token', outcome: 'found' },
    ]);
  });

  it('falls through a Basic Authorization header to the cookie', async () => {
    const { decider } = build();
    const d = now(decider.decide(req(INVOKE, { authorization: 'Basic YTpi', cookie: `access_token=${await acmeToken()}` }, { method: 'POST' })));
    expect(expectAllow(d).principal?.source).toBe('cookie:access_token');
  });

  it('reports the most specific failure when no token is valid (either order)', async () => {
    const { decider } = build();
    const expired = await acmeToken({ iat: NOW_S - 3600, exp: NOW_S - 600 });
    const outsider = await outsiderToken();
    const a = now(decider.decide(req(INVOKE, { ...bearer(outsider), cookie: `access_token=${expired}` }, { method: 'POST' })));
    expectDeny(a, 'token_expired', 401);
    const b = now(decider.decide(req(INVOKE, { ...bearer(expired), cookie: `access_token=${outsider}` }, { method: 'POST' })));
    expectDeny(b, 'token_expired', 401);
  });

  it('prefers a known-issuer failure over a malformed token', async () => {
    const { decider } = build();
    const badAud = await acmeToken({ aud: 'someone-else' });
    const d = now(decider.decide(req(INVOKE, { ...bearer('not-a-jwt'), cookie: `access_token=${badAud}` }, { method: 'POST' })));
    expectDeny(d, 'audience_mismatch', 401);
  });

  it('reports an outage (jwks_unavailable, 503) over a bad token from another source', async () => {
    const { decider } = build({
      keys: (name, inner) => (name === 'acme' ? { ...inner, get: () => 'unavailable', resolve: () => Promise.resolve('unavailable') } : inner),
    });
    const d = await decider.decide(req(INVOKE, { ...bearer(await acmeToken()), cookie: `access_token=${await outsiderToken()}` }, { method: 'POST' }));
    const deny = expectDeny(d, 'jwks_unavailable', 503);
    expect(header(deny.headers, 'www-authenticate')).toBeUndefined();
  });

  it('denies a token of issuer A on a route restricted to issuer B with issuer_not_allowed', async () => {
    const { decider } = build();
    const d = expectDeny(now(decider.decide(req('/v1/globex', bearer(await acmeToken())))), 'issuer_not_allowed', 401);
    expect(d.route).toBe('globex-only');
    expect(header(d.headers, 'www-authenticate')).toContain('error="invalid_token"');
  });

  it('falls through an issuer-not-allowed token to one of the allowed issuer', async () => {
    const { decider } = build();
    const d = now(decider.decide(req('/v1/globex', { ...bearer(await acmeToken()), cookie: `access_token=${await globexToken()}` })));
    expect(expectAllow(d).principal?.qualifiedSub).toBe('globex/bob');
  });

  it('denies a request without token with missing_credentials and a bare Bearer challenge', () => {
    const { decider } = build();
    const d = expectDeny(now(decider.decide(req(INVOKE, {}, { method: 'POST' }))), 'missing_credentials', 401);
    expect(d.headers).toEqual([{ name: 'www-authenticate', value: 'Bearer realm="portcullis"' }]);
  });

  it('puts error="invalid_token" in the challenge of a 401 for a bad token', async () => {
    const { decider } = build();
    const d = expectDeny(now(decider.decide(req(INVOKE, bearer(await acmeToken({ exp: NOW_S - 600 })), { method: 'POST' }))), 'token_expired', 401);
    const challenge = header(d.headers, 'www-authenticate') ?? '';
    expect(challenge).toMatch(/^Bearer realm="portcullis", error="invalid_token", error_description="[^"]*"$/);
  });

  it('uses the configured realm in the challenge', () => {
    const { decider } = build({ yaml: `${CONFIG}\ndefaults: { authRealm: agentcube }\n` });
    const d = expectDeny(now(decider.decide(req(INVOKE, {}, { method: 'POST' }))), 'missing_credentials', 401);
    expect(header(d.headers, 'www-authenticate')).toBe('Bearer realm="agentcube"');
  });

  it('denies conflicting Authorization headers with 400 and error="invalid_request"', async () => {
    const { decider } = build();
    const t = await acmeToken();
    const d = expectDeny(now(decider.decide(req(INVOKE, { authorization: `Bearer ${t}, Bearer ${t}` }, { method: 'POST' }))), 'conflicting_credentials', 400);
    expect(header(d.headers, 'www-authenticate')).toContain('error="invalid_request"');
  });

  it('denies an oversized token with token_too_large', () => {
    const { decider } = build();
    const d = now(decider.decide(req(INVOKE, { authorization: `Bearer ${'a'.repeat(8193)}` }, { method: 'POST' })));
    expectDeny(d, 'token_too_large', 401);
  });

  it('never puts control or non-ASCII characters from a token header (alg) into the challenge header', async () => {
    const { decider } = build();
    for (const alg of ['RS256\r\nset-cookie: session=evil', 'RS256\u2603']) {
      const t = rawToken({ alg, kid: acmeKey.kid }, acmeClaims(), 'c2ln');
      const d = expectDeny(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }))), 'alg_not_allowed', 401);
      for (const h of d.headers) expect(h.value).toMatch(SAFE_VALUE);
    }
  });

  it('never puts control or non-ASCII characters from a token header (kid) into the challenge header', async () => {
    const { decider } = build();
    const t = await signToken(acmeClaims(), { key: acmeKey, kid: 'k\r\nset-cookie: session=evil\u0001' });
    const d = expectDeny(await decider.decide(req(INVOKE, bearer(t), { method: 'POST' })), 'unknown_kid', 401);
    for (const h of d.headers) expect(h.value).toMatch(SAFE_VALUE);
  });

  it('never reports a denial message that contains the token', async () => {
    const { decider } = build();
    const t = await acmeToken({ exp: NOW_S - 600 });
    const d = expectDeny(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }))), 'token_expired', 401);
    expect(d.message).not.toContain(t.split('.')[1] as string);
    for (const h of d.headers) expect(h.value).not.toContain(t.split('.')[1] as string);
  });
});

describe('decide: roles', () => {
  it('denies a token without the role with 403 missing_role and no challenge', async () => {
    const { decider } = build();
    const t = await acmeToken({ realm_access: { roles: ['viewer'] } });
    const d = expectDeny(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }))), 'missing_role', 403);
    expect(header(d.headers, 'www-authenticate')).toBeUndefined();
    expect(d.principal?.sub).toBe('alice');
  });

  it('grants a role through inheritance (admin ⊇ sandbox:manage ⊇ sandbox:invoke)', async () => {
    const { decider } = build();
    expectAllow(now(decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'POST' }))));
  });

  it('reads client roles from resource_access.<audience>.roles', async () => {
    const { decider } = build();
    const t = await acmeToken({ realm_access: { roles: [] }, resource_access: { router: { roles: ['sandbox:invoke'] } } });
    expectAllow(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }))));
  });

  it('anyOf: one listed role is enough', async () => {
    const { decider } = build();
    expectAllow(now(decider.decide(req('/v1/any-of', bearer(await acmeToken({ realm_access: { roles: ['auditor'] } }))))));
    expectAllow(now(decider.decide(req('/v1/any-of', bearer(await acmeToken({ realm_access: { roles: ['admin'] } }))))));
    expectDeny(now(decider.decide(req('/v1/any-of', bearer(await acmeToken({ realm_access: { roles: ['sandbox:invoke'] } }))))), 'missing_role', 403);
  });

  it('allOf: every listed role is needed', async () => {
    const { decider } = build();
    expectDeny(now(decider.decide(req('/v1/all-of', bearer(await acmeToken({ realm_access: { roles: ['admin'] } }))))), 'missing_role', 403);
    expectDeny(now(decider.decide(req('/v1/all-of', bearer(await acmeToken({ realm_access: { roles: ['auditor'] } }))))), 'missing_role', 403);
    expectAllow(now(decider.decide(req('/v1/all-of', bearer(await acmeToken({ realm_access: { roles: ['admin', 'auditor'] } }))))));
  });

  it('records the requirement in the trace', async () => {
    const { decider } = build();
    const trace: DecisionTrace = {};
    now(decider.decide(req('/v1/all-of', bearer(await acmeToken())), trace));
    expect(trace.roles?.required).toBe('allOf: sandbox:manage, auditor');
    expect(trace.roles?.found.sort()).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage']);
  });
});

describe('decide: routes', () => {
  it('allows an anonymous route without reading credentials', () => {
    const throwing: Verifier = {
      verify() {
        throw new Error('must not be called');
      },
      issuerNameOf: () => undefined,
      cacheSize: () => 0,
    };
    const { decider } = build({ verifier: throwing });
    const d = expectAllow(now(decider.decide(req('/healthz', { authorization: 'Bearer a, Bearer b', 'x-portcullis-sub': 'mallory' }))));
    expect(d.route).toBe('health');
    expect(d.principal).toBeUndefined();
    expect(d.headersToSet).toEqual([{ name: 'x-portcullis-route', value: 'health' }]);
    expect(d.headersToRemove).toEqual(['x-portcullis-sub']);
  });

  it('denies an allow: deny route with route_denied', async () => {
    const { decider } = build();
    const d = expectDeny(now(decider.decide(req('/v1/closed', bearer(await acmeToken())))), 'route_denied', 403);
    expect(d.route).toBe('closed');
  });

  it('denies a request no route matches with 403 no_route', async () => {
    const { decider } = build();
    const d = expectDeny(now(decider.decide(req('/nowhere', bearer(await acmeToken())))), 'no_route', 403);
    expect(d.route).toBeUndefined();
    // a method the route does not list
    expectDeny(now(decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'GET' }))), 'no_route', 403);
  });

  it('allows an unmatched request when onNoRoute is allow, still removing owned headers', () => {
    const { decider } = build({ yaml: `${CONFIG}\ndefaults: { onNoRoute: allow }\n` });
    const d = expectAllow(now(decider.decide(req('/nowhere', { 'x-user-sub': 'mallory', accept: '*/*' }))));
    expect(d.route).toBe('(none)');
    expect(d.principal).toBeUndefined();
    expect(d.headersToSet).toEqual([]);
    expect(d.headersToRemove).toEqual(['x-user-sub']);
    expect(d.metadata).toEqual({ route: '(none)', decision: 'allow' });
  });

  it('selects a route by name from context_extensions, whatever the path', async () => {
    const { decider } = build();
    const trace: DecisionTrace = {};
    const d = expectAllow(now(decider.decide(req('/anything/else', bearer(await acmeToken()), { ext: { route: 'internal' } }), trace)));
    expect(d.route).toBe('internal');
    expect(trace.route).toEqual({ name: 'internal', by: 'context_extensions' });
    // the named route's rules apply
    expectDeny(now(decider.decide(req('/healthz', {}, { ext: { route: 'closed' } }))), 'route_denied', 403);
  });

  it('uses the configured context_extensions key', async () => {
    const { decider } = build({ yaml: `${CONFIG}\ndefaults: { routeContextKey: portcullis_route }\n` });
    expect(expectAllow(now(decider.decide(req('/x', {}, { ext: { portcullis_route: 'health' } })))).route).toBe('health');
    // the default key means nothing now: the table decides
    expectDeny(now(decider.decide(req('/x', {}, { ext: { route: 'health' } }))), 'no_route', 403);
  });

  it('denies an unknown route name from context_extensions with no_route', () => {
    const { decider } = build();
    expectDeny(now(decider.decide(req('/healthz', {}, { ext: { route: 'nope' } }))), 'no_route', 403);
  });

  it.each(['/v1/../admin', '/v1/sandboxes/a%2fb/invoke', '/v1/sandboxes/%2e%2e/invoke', '/v1//plain', '/v1/a\\b'])(
    'denies a malformed path %s with malformed_request (400)',
    async (path) => {
      const { decider } = build();
      const d = expectDeny(now(decider.decide(req(path, bearer(await acmeToken()), { method: 'POST' }))), 'malformed_request', 400);
      expect(header(d.headers, 'www-authenticate')).toBeUndefined();
    },
  );

  it.each(['/internal/../x', '/internal/a%2fb', '/internal//x', '/internal/%2e%2e'])(
    'denies a malformed path %s under a catch-all route with malformed_request, before any route is chosen',
    async (path) => {
      const { decider } = build();
      const trace: DecisionTrace = {};
      const d = expectDeny(now(decider.decide(req(path, bearer(await acmeToken()), { host: 'internal.example' }), trace)), 'malformed_request', 400);
      expect(d.route).toBeUndefined();
      expect(trace.route).toBeUndefined();
      expect(trace.deniedBy).toBe('route');
    },
  );

  it('matches hosts with a port', async () => {
    const { decider } = build();
    const d = now(decider.decide(req('/internal/x', bearer(await acmeToken()), { host: 'internal.example:8443' })));
    expect(expectAllow(d).route).toBe('internal');
  });
});

describe('decide: response headers and metadata', () => {
  it('removes spoofed owned headers the route does not set', async () => {
    const { decider } = build();
    const d = expectAllow(
      now(decider.decide(req('/v1/plain', { ...bearer(await acmeToken()), 'x-user-sub': 'mallory', 'x-portcullis-evil': '1', 'x-other': 'kept' }))),
    );
    expect(d.headersToRemove.sort()).toEqual(['x-portcullis-evil', 'x-user-sub']);
    expect(d.headersToRemove).not.toContain('x-other');
    expect(d.headersToRemove).not.toContain('authorization');
  });

  it('sets its own x-user-sub over a spoofed one and does not remove it', async () => {
    const { decider } = build();
    const d = expectAllow(
      now(decider.decide(req(INVOKE, { ...bearer(await acmeToken()), 'x-user-sub': 'mallory', 'x-portcullis-evil': '1' }, { method: 'POST' }))),
    );
    expect(header(d.headersToSet, 'x-user-sub')).toBe('alice');
    expect(d.headersToSet.filter((h) => h.name === 'x-user-sub')).toHaveLength(1);
    expect(d.headersToRemove).toContain('x-portcullis-evil');
    expect(d.headersToRemove).not.toContain('x-user-sub');
  });

  it('renders header templates from the principal, path and claims', async () => {
    const { decider } = build();
    const t = await acmeToken({ realm_access: { roles: ['admin', 'viewer'] } });
    const d = expectAllow(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }))));
    const set = Object.fromEntries(d.headersToSet.map((h) => [h.name, h.value]));
    expect(set).toEqual({
      // defaults
      'x-portcullis-sub': 'alice',
      'x-portcullis-tenant': 'acme',
      'x-portcullis-roles': 'admin,viewer',
      'x-portcullis-route': 'invoke',
      // route headers
      'x-user-sub': 'alice',
      'x-user-qsub': 'acme/alice',
      'x-user-tenant': 'acme',
      'x-user-roles': 'admin,viewer',
      'x-user-sandbox': 'sb-42',
      'x-user-email': 'alice@example.com',
    });
  });

  it('lets a route drop a default header with null', async () => {
    const { decider } = build();
    const d = expectAllow(now(decider.decide(req('/internal/a', bearer(await acmeToken()), { host: 'internal.example' }))));
    expect(header(d.headersToSet, 'x-portcullis-roles')).toBeUndefined();
    expect(header(d.headersToSet, 'x-portcullis-sub')).toBe('alice');
  });

  it('removes an inbound owned header whose template rendered empty', async () => {
    const { decider } = build();
    const c = acmeClaims();
    delete c.email;
    const d = expectAllow(now(decider.decide(req(INVOKE, { ...bearer(await signToken(c, { key: acmeKey })), 'x-user-email': 'ceo@corp' }, { method: 'POST' }))));
    expect(header(d.headersToSet, 'x-user-email')).toBeUndefined();
    expect(d.headersToRemove).toContain('x-user-email');
  });

  it('never passes a client copy of a header the route sets, even when its claim is absent (header outside identityHeaders)', async () => {
    const { decider } = build({
      yaml: `${CONFIG}
  - name: email
    match: { path: /v1/email }
    headers: { x-email: "{claims.email}" }
`,
    });
    const c = acmeClaims();
    delete c.email;
    const d = expectAllow(now(decider.decide(req('/v1/email', { ...bearer(await signToken(c, { key: acmeKey })), 'x-email': 'ceo@corp.example' }))));
    // Either portcullis sets it or it removes the client's copy: the upstream must never see the spoofed value.
    const setsIt = d.headersToSet.some((h) => h.name === 'x-email');
    expect(setsIt || d.headersToRemove.includes('x-email')).toBe(true);
  });

  it('never produces a header value with CR or LF from a claim', async () => {
    const { decider } = build();
    const t = await acmeToken({ email: 'a@b.c\r\nx-injected: yes', sub: 'ali\nce' });
    const d = expectAllow(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }))));
    for (const h of d.headersToSet) {
      expect(h.value).not.toMatch(/[\r\n\0]/);
      expect(h.name).not.toMatch(/[\r\n\0]/);
    }
    expect(d.headersToSet.some((h) => h.name === 'x-injected')).toBe(false);
  });

  it('returns metadata with sub, tenant, roles, route and decision on allow', async () => {
    const { decider } = build();
    const d = expectAllow(now(decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'POST' }))));
    expect(d.metadata).toEqual({
      route: 'invoke',
      sub: 'alice',
      qualified_sub: 'acme/alice',
      tenant: 'acme',
      roles: ['admin'],
      decision: 'allow',
    });
  });

  it('returns metadata with the reason (and the caller when known) on deny', async () => {
    const { decider } = build();
    const known = expectDeny(
      now(decider.decide(req(INVOKE, bearer(await acmeToken({ realm_access: { roles: ['viewer'] } })), { method: 'POST' }))),
      'missing_role',
      403,
    );
    expect(known.metadata).toEqual({
      route: 'invoke',
      sub: 'alice',
      qualified_sub: 'acme/alice',
      tenant: 'acme',
      roles: ['viewer'],
      decision: 'deny',
      reason: 'missing_role',
    });
    const unknown = expectDeny(now(decider.decide(req('/nowhere'))), 'no_route', 403);
    expect(unknown.metadata).toEqual({ route: '(none)', decision: 'deny', reason: 'no_route' });
  });

  it('records headers set and removed in the trace', async () => {
    const { decider } = build();
    const trace: DecisionTrace = {};
    now(decider.decide(req('/v1/plain', { ...bearer(await acmeToken()), 'x-user-x': '1' }), trace));
    expect(trace.headersSet).toEqual(['x-portcullis-sub', 'x-portcullis-tenant', 'x-portcullis-roles', 'x-portcullis-route']);
    expect(trace.headersRemoved).toEqual(['x-user-x']);
    expect(trace.route).toEqual({ name: 'plain', by: 'table', params: {} });
  });
});

describe('decide: asynchronous keys and failures', () => {
  it('returns a promise that resolves to allow when the key must be resolved', async () => {
    const { decider } = build({
      keys: (_name, inner) => ({ ...inner, get: () => 'unknown_kid', resolve: (kid, alg) => Promise.resolve(inner.get(kid, alg)) }),
    });
    const pending = decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'POST' }));
    expect(pending).toBeInstanceOf(Promise);
    const d = expectAllow(await pending);
    expect(d.principal?.qualifiedSub).toBe('acme/alice');
  });

  it('falls through asynchronously from an unknown kid to the next source', async () => {
    const { decider } = build();
    const unknownKid = await signToken(acmeClaims(), { key: acmeKey, kid: 'rotated-away' });
    const trace: DecisionTrace = {};
    const pending = decider.decide(req(INVOKE, { ...bearer(unknownKid), cookie: `access_token=${await acmeToken()}` }, { method: 'POST' }), trace);
    const d = expectAllow(await pending);
    expect(d.principal?.source).toBe('cookie:access_token');
    expect(trace.tokens?.map((t) => t.result)).toEqual(['unknown_kid', 'valid']);
  });

  it('resolves to the best failure when an asynchronous lookup fails', async () => {
    const { decider } = build();
    const unknownKid = await signToken(acmeClaims(), { key: acmeKey, kid: 'rotated-away' });
    expectDeny(await decider.decide(req(INVOKE, bearer(unknownKid), { method: 'POST' })), 'unknown_kid', 401);
  });

  it('denies with internal_error (never allow) when the verifier throws', async () => {
    const throwing: Verifier = {
      verify() {
        throw new TypeError('boom');
      },
      issuerNameOf: () => undefined,
      cacheSize: () => 0,
    };
    const { decider } = build({ verifier: throwing });
    const d = expectDeny(now(decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'POST' }))), 'internal_error', 500);
    expect(d.message).not.toContain('boom');
  });

  it('denies with internal_error when the verifier returns a rejected promise', async () => {
    const rejecting: Verifier = {
      verify: () => Promise.reject(new Error('boom')),
      issuerNameOf: () => undefined,
      cacheSize: () => 0,
    };
    const { decider } = build({ verifier: rejecting });
    expectDeny(await decider.decide(req(INVOKE, bearer(await acmeToken()), { method: 'POST' })), 'internal_error', 500);
  });
});

const SHADOW_CONFIG = `${CONFIG}
  - name: shadow-route
    match: { path: /v1/shadow-route }
    shadow: true
    require: { roles: { anyOf: [auditor] } }
    headers: { x-user-sub: "{sub}" }
  - name: shadow-roles
    match: { path: /v1/shadow-roles }
    require: { roles: { anyOf: [auditor] }, shadow: [roles] }
`;

describe('decide: shadow mode', () => {
  it('allows a shadow route without credentials and records what it would deny', () => {
    const { decider } = build({ yaml: SHADOW_CONFIG });
    const trace: DecisionTrace = {};
    const d = expectAllow(now(decider.decide(req('/v1/shadow-route', { 'x-user-sub': 'mallory' }), trace)));
    expect(d.route).toBe('shadow-route');
    expect(d.principal).toBeUndefined();
    expect(d.wouldDeny?.map((w) => [w.reason, w.status])).toEqual([['missing_credentials', 401]]);
    expect(d.metadata.would_deny).toEqual(['missing_credentials']);
    expect(d.metadata.decision).toBe('allow');
    // no caller: caller headers are not set, and the spoofed one is removed
    expect(header(d.headersToSet, 'x-user-sub')).toBeUndefined();
    expect(d.headersToRemove).toContain('x-user-sub');
    expect(trace.route?.shadow).toBe(true);
  });

  it('allows a shadow route for a caller without the role, keeping the caller', async () => {
    const { decider } = build({ yaml: SHADOW_CONFIG });
    const d = expectAllow(now(decider.decide(req('/v1/shadow-route', bearer(await acmeToken())))));
    expect(d.principal?.qualifiedSub).toBe('acme/alice');
    expect(d.wouldDeny?.map((w) => w.reason)).toEqual(['missing_role']);
    expect(header(d.headersToSet, 'x-user-sub')).toBe('alice');
  });

  it('enforces nothing and records nothing when a shadow route would allow', async () => {
    const { decider } = build({ yaml: SHADOW_CONFIG });
    const d = expectAllow(now(decider.decide(req('/v1/shadow-route', bearer(await acmeToken({ realm_access: { roles: ['auditor'] } }))))));
    expect(d.wouldDeny).toBeUndefined();
    expect(d.metadata.would_deny).toBeUndefined();
  });

  it('records a shadow roles requirement and still enforces authentication', async () => {
    const { decider } = build({ yaml: SHADOW_CONFIG });
    const trace: DecisionTrace = {};
    const d = expectAllow(now(decider.decide(req('/v1/shadow-roles', bearer(await acmeToken())), trace)));
    expect(d.wouldDeny).toEqual([expect.objectContaining({ requirement: 'roles', reason: 'missing_role', status: 403 })]);
    expect(trace.roles).toMatchObject({ result: 'missing_role', shadow: true });
    // authentication is not in shadow: no token is still a 401
    expectDeny(now(decider.decide(req('/v1/shadow-roles'))), 'missing_credentials', 401);
    expectDeny(now(decider.decide(req('/v1/shadow-roles', bearer(await acmeToken({ exp: NOW_S - 600 }))))), 'token_expired', 401);
  });
});

describe('decide: dry run', () => {
  it('does not fill the token cache, nor count as a first use for its admission', async () => {
    const { decider, verifier } = build();
    const input = req(INVOKE, bearer(await acmeToken()), { method: 'POST' });
    expectAllow(now(decider.decide(input, undefined, { dryRun: true })));
    expectAllow(now(decider.decide(input, undefined, { dryRun: true })));
    expect(verifier.cacheSize()).toBe(0);
    // Admission is on second use (the default): the first real decision does not cache yet.
    expectAllow(now(decider.decide(input)));
    expect(verifier.cacheSize()).toBe(0);
    expectAllow(now(decider.decide(input)));
    expect(verifier.cacheSize()).toBe(1);
  });

  it('answers an unknown kid at once, without resolving keys', async () => {
    let resolves = 0;
    const { decider } = build({
      keys: (_name, inner) => ({
        ...inner,
        resolve: (kid, alg) => {
          resolves += 1;
          return inner.resolve(kid, alg);
        },
      }),
    });
    const t = await signToken(acmeClaims(), { key: acmeKey, kid: 'rotated-away' });
    expectDeny(now(decider.decide(req(INVOKE, bearer(t), { method: 'POST' }), undefined, { dryRun: true })), 'unknown_kid', 401);
    expect(resolves).toBe(0);
  });
});
