import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkRequest, readCheckResponse } from '../helpers/grpc-client.js';
import { startJwksServer, type JwksServer } from '../helpers/jwks-server.js';
import { twoTenantConfig, userClaims } from './fixtures.js';
import { bearer, httpCheck, pollUntil, startTestApp, waitReady, type HttpReply, type TestApp } from './harness.js';

/**
 * HTTP ext_authz mode (Envoy `http_service`): Envoy forwards the original
 * method, path and headers; 200 = allow (response headers go upstream,
 * `x-envoy-auth-headers-to-remove` lists what to strip), anything else is
 * returned to the client as is.
 */

interface Expected {
  decision: 'allow' | 'deny';
  status: number;
  reason: string;
}

interface Case {
  name: string;
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  expect: Expected;
}

function parseBody(r: HttpReply): { error: string; message: string } {
  return JSON.parse(r.body) as { error: string; message: string };
}

/** The HTTP reply in the same terms as a gRPC CheckOutcome. */
function httpOutcome(r: HttpReply): Expected {
  if (r.status === 200) return { decision: 'allow', status: 200, reason: '' };
  return { decision: 'deny', status: r.status, reason: String(r.headers['x-portcullis-reason'] ?? '') };
}

function b64url(v: unknown): string {
  return Buffer.from(JSON.stringify(v)).toString('base64url');
}

describe('HTTP ext_authz mode', () => {
  let idpA: JwksServer;
  let idpB: JwksServer;
  let t: TestApp;
  let cases: Case[];

  beforeAll(async () => {
    idpA = await startJwksServer();
    idpB = await startJwksServer();
    t = await startTestApp(twoTenantConfig(idpA, idpB));
    await waitReady(t);

    const invoker = await idpA.sign(userClaims('alice', ['sandbox:invoke']));
    const plain = await idpA.sign(userClaims('bob'));
    const admin = await idpA.sign(userClaims('root', ['admin']));
    const expired = await idpA.sign(userClaims('alice', ['sandbox:invoke']), { ttlSeconds: -3600 });
    const wrongAud = await idpA.sign(userClaims('alice', ['sandbox:invoke']), { audience: 'someone-else' });
    const tenantB = await idpB.sign(userClaims('beth'));
    await idpA.createKey({ kid: 'never-published' });
    const unknownKid = await idpA.sign(userClaims('alice'), { kid: 'never-published' });
    const [h, p, s] = invoker.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
    const tampered = `${h}.${b64url({ ...claims, realm_access: { roles: ['admin'] } })}.${s}`;
    const algNone = `${b64url({ alg: 'none', typ: 'JWT' })}.${p}.`;
    const invoke = { method: 'POST', path: '/v1/sandboxes/s1/invoke' };

    cases = [
      { name: 'allow: role present', ...invoke, headers: bearer(invoker), expect: { decision: 'allow', status: 200, reason: '' } },
      { name: 'allow: inherited role', ...invoke, headers: bearer(admin), expect: { decision: 'allow', status: 200, reason: '' } },
      { name: 'allow: scheme matched case-insensitively', ...invoke, headers: { authorization: `bEaReR ${invoker}` }, expect: { decision: 'allow', status: 200, reason: '' } },
      { name: 'allow: anonymous route', method: 'GET', path: '/healthz', headers: {}, expect: { decision: 'allow', status: 200, reason: '' } },
      { name: 'allow: tenant B on a B-only route', method: 'GET', path: '/v1/b/q1', headers: bearer(tenantB), expect: { decision: 'allow', status: 200, reason: '' } },
      { name: 'allow: query string ignored for matching', method: 'GET', path: '/v1/profile?x=1', headers: bearer(plain), expect: { decision: 'allow', status: 200, reason: '' } },
      { name: '401 missing credentials', ...invoke, headers: {}, expect: { decision: 'deny', status: 401, reason: 'missing_credentials' } },
      { name: '401 expired', ...invoke, headers: bearer(expired), expect: { decision: 'deny', status: 401, reason: 'token_expired' } },
      { name: '401 wrong audience', ...invoke, headers: bearer(wrongAud), expect: { decision: 'deny', status: 401, reason: 'audience_mismatch' } },
      { name: '401 tampered payload', ...invoke, headers: bearer(tampered), expect: { decision: 'deny', status: 401, reason: 'signature_invalid' } },
      { name: '401 alg none', ...invoke, headers: bearer(algNone), expect: { decision: 'deny', status: 401, reason: 'alg_not_allowed' } },
      { name: '401 garbage token', ...invoke, headers: bearer('not-a-jwt'), expect: { decision: 'deny', status: 401, reason: 'token_malformed' } },
      { name: '401 unknown kid', method: 'GET', path: '/v1/profile', headers: bearer(unknownKid), expect: { decision: 'deny', status: 401, reason: 'unknown_kid' } },
      { name: '401 issuer not allowed on route', method: 'GET', path: '/v1/b/q1', headers: bearer(invoker), expect: { decision: 'deny', status: 401, reason: 'issuer_not_allowed' } },
      { name: '400 two Authorization headers', method: 'GET', path: '/v1/profile', headers: { authorization: [`Bearer ${plain}`, `Bearer ${admin}`] }, expect: { decision: 'deny', status: 400, reason: 'conflicting_credentials' } },
      { name: '400 dot segments in path', method: 'GET', path: '/v1/sandboxes/../admin/x', headers: bearer(admin), expect: { decision: 'deny', status: 400, reason: 'malformed_request' } },
      { name: '403 missing role', ...invoke, headers: bearer(plain), expect: { decision: 'deny', status: 403, reason: 'missing_role' } },
      { name: '403 allOf admin', method: 'DELETE', path: '/admin/users/1', headers: bearer(invoker), expect: { decision: 'deny', status: 403, reason: 'missing_role' } },
      { name: '403 no route (wrong method)', method: 'GET', path: '/v1/sandboxes/s1/invoke', headers: bearer(invoker), expect: { decision: 'deny', status: 403, reason: 'no_route' } },
      { name: '403 closed route', method: 'GET', path: '/closed', headers: bearer(admin), expect: { decision: 'deny', status: 403, reason: 'route_denied' } },
    ];
  });

  afterAll(async () => {
    await t?.stop();
    await idpA?.close();
    await idpB?.close();
  });

  it('allows with 200, identity headers for upstream and x-envoy-auth-headers-to-remove for spoofed owned headers', async () => {
    const token = await idpA.sign(userClaims('alice', ['sandbox:invoke']));
    const r = await httpCheck(t.http, {
      method: 'POST',
      path: '/v1/sandboxes/s7/invoke',
      headers: { ...bearer(token), 'x-user-sub': 'mallory', 'x-user-role': 'admin', 'x-portcullis-trace': 'x', 'x-forwarded-for': '10.0.0.1' },
    });
    expect(r.status).toBe(200);
    expect(r.body).toBe('');
    expect(r.headers['x-user-sub']).toBe('alice');
    expect(r.headers['x-user-tenant']).toBe('tenant-a');
    expect(r.headers['x-user-sandbox']).toBe('s7');
    expect(r.headers['x-portcullis-sub']).toBe('alice');
    expect(r.headers['x-portcullis-roles']).toBe('sandbox:invoke');
    expect(r.headers['x-portcullis-route']).toBe('sandbox-invoke');
    expect(r.headers['x-portcullis-reason']).toBeUndefined();
    const removed = String(r.headers['x-envoy-auth-headers-to-remove'] ?? '').split(',').map((s) => s.trim()).sort();
    expect(removed).toEqual(['x-portcullis-trace', 'x-user-role']);
  });

  it('removes a spoofed x-user-sub where the route does not set it', async () => {
    const token = await idpA.sign(userClaims('carol'));
    const r = await httpCheck(t.http, { path: '/v1/profile', headers: { ...bearer(token), 'x-user-sub': 'root' } });
    expect(r.status).toBe(200);
    expect(r.headers['x-envoy-auth-headers-to-remove']).toBe('x-user-sub');
    expect(r.headers['x-user-sub']).toBeUndefined();
    expect(r.headers['x-portcullis-sub']).toBe('carol');
  });

  it('omits x-envoy-auth-headers-to-remove when nothing is spoofed', async () => {
    const token = await idpA.sign(userClaims('carol'));
    const r = await httpCheck(t.http, { path: '/v1/profile', headers: bearer(token) });
    expect(r.status).toBe(200);
    expect(r.headers['x-envoy-auth-headers-to-remove']).toBeUndefined();
  });

  it('denies 401 with WWW-Authenticate, x-portcullis-reason and a JSON body', async () => {
    const r = await httpCheck(t.http, { method: 'POST', path: '/v1/sandboxes/s1/invoke' });
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe('Bearer realm="portcullis"');
    expect(r.headers['x-portcullis-reason']).toBe('missing_credentials');
    expect(r.headers['content-type']).toBe('application/json');
    expect(parseBody(r)).toEqual({ error: 'missing_credentials', message: expect.any(String) });

    const bad = await httpCheck(t.http, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer('a.b.c') });
    expect(bad.status).toBe(401);
    expect(bad.headers['www-authenticate']).toMatch(/^Bearer realm="portcullis", error="invalid_token", error_description=".+"$/);
    expect(parseBody(bad).error).toBe('token_malformed');
  });

  it('denies 403 missing_role with a JSON body and no challenge', async () => {
    const token = await idpA.sign(userClaims('bob'));
    const r = await httpCheck(t.http, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(token) });
    expect(r.status).toBe(403);
    expect(r.headers['www-authenticate']).toBeUndefined();
    expect(r.headers['x-portcullis-reason']).toBe('missing_role');
    expect(parseBody(r).error).toBe('missing_role');
    expect(r.headers['x-envoy-auth-headers-to-remove']).toBeUndefined();
    expect(r.headers['x-portcullis-sub']).toBeUndefined();
  });

  it('every case of the table: the expected decision over HTTP', async () => {
    for (const c of cases) {
      const r = await httpCheck(t.http, { method: c.method, path: c.path, headers: c.headers });
      expect(httpOutcome(r), c.name).toEqual(c.expect);
      if (c.expect.decision === 'deny') {
        expect(parseBody(r).error, c.name).toBe(c.expect.reason);
        expect(r.headers['content-type'], c.name).toBe('application/json');
      }
      if (c.expect.status === 401) expect(r.headers['www-authenticate'], c.name).toMatch(/^Bearer realm="portcullis"/);
    }
  });

  it('gRPC and HTTP give identical decisions, statuses, reasons, bodies and identity headers for every case', async () => {
    for (const c of cases) {
      const grpcHeaders: Record<string, string> = {};
      // Envoy joins repeated headers with ',' in CheckRequest.attributes.request.http.headers.
      for (const [k, v] of Object.entries(c.headers)) grpcHeaders[k] = Array.isArray(v) ? v.join(',') : v;
      const g = readCheckResponse(await t.grpc.check(checkRequest({ method: c.method, path: c.path, headers: grpcHeaders })));
      const h = await httpCheck(t.http, { method: c.method, path: c.path, headers: c.headers });
      const viaGrpc: Expected = { decision: g.decision, status: g.status, reason: g.reason };
      expect(viaGrpc, `${c.name} (gRPC)`).toEqual(c.expect);
      expect(httpOutcome(h), `${c.name} (HTTP)`).toEqual(viaGrpc);
      if (g.decision === 'deny') {
        // Messages may name the transport's view (a repeated header vs a joined value); codes must agree.
        expect(parseBody(h).error, c.name).toBe(g.body?.error);
        const challenge = (v: string | undefined) => v?.replace(/, error_description="[^"]*"/, '');
        expect(challenge(h.headers['www-authenticate']), c.name).toBe(challenge(g.headers['www-authenticate']));
      } else {
        for (const [name, value] of Object.entries(g.headers)) expect(h.headers[name], `${c.name}: ${name}`).toBe(value);
      }
    }
  });

  it('records HTTP-mode decisions in the decision log like gRPC ones', async () => {
    const r = await httpCheck(t.http, { method: 'GET', path: '/closed', host: 'api.example' });
    expect(r.status).toBe(403);
    const line = await pollUntil('decision log line', () => t.logs.find((l) => l.kind === 'decision' && l.path === '/closed' && l.host === 'api.example'));
    expect(line).toMatchObject({ decision: 'deny', reason: 'route_denied', method: 'GET', status: 403 });
  });
});

describe('HTTP ext_authz mode with a path prefix (http_service.path_prefix)', () => {
  it('strips listen.httpPathPrefix before matching', async () => {
    const idpA = await startJwksServer();
    const idpB = await startJwksServer();
    const config = twoTenantConfig(idpA, idpB);
    config.listen = { ...(config.listen as Record<string, string>), httpPathPrefix: '/authz' };
    const t = await startTestApp(config);
    try {
      await waitReady(t);
      const token = await idpA.sign(userClaims('alice', ['sandbox:invoke']));
      const r = await httpCheck(t.http, { method: 'POST', path: '/authz/v1/sandboxes/s1/invoke', headers: bearer(token) });
      expect(r.status).toBe(200);
      expect(r.headers['x-user-sandbox']).toBe('s1');
    } finally {
      await t.stop();
      await idpA.close();
      await idpB.close();
    }
  });
});
