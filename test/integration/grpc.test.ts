import { Client, credentials, status as grpcStatus } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { envoyProtoIncludeDirs, PROTO_LOADER_OPTIONS } from '../../src/adapters/envoy/protos.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUTH_SERVICE_NAME } from '../../src/adapters/envoy/grpc-server.js';
import { checkRequest, readCheckResponse, type CheckOutcome, type CheckResponse__Output, type RequestSpec } from '../helpers/grpc-client.js';
import { DISCOVERY_PATH, JWKS_PATH, startJwksServer, type JwksServer } from '../helpers/jwks-server.js';
import { twoTenantConfig, userClaims } from './fixtures.js';
import {
  bearer,
  getText,
  issuerEntry,
  LOOPBACK_LISTEN,
  metricValue,
  pollUntil,
  scrapeMetrics,
  startTestApp,
  waitReady,
  writeConfig,
  type TestApp,
} from './harness.js';

async function check(t: TestApp, spec: RequestSpec): Promise<CheckOutcome> {
  return readCheckResponse(await t.grpc.check(checkRequest(spec)));
}

/** The CheckResponse message type, to decode a response received as raw bytes. */
function loadAuthorizationResponseType(): { decode(b: Buffer): CheckResponse__Output } {
  const def = loadSync('envoy/service/auth/v3/external_auth.proto', { ...PROTO_LOADER_OPTIONS, includeDirs: envoyProtoIncludeDirs() });
  const svc = def['envoy.service.auth.v3.Authorization'] as unknown as Record<string, { responseDeserialize(b: Buffer): CheckResponse__Output }>;
  const check = svc.Check;
  if (!check) throw new Error('no Check method');
  return { decode: (b) => check.responseDeserialize(b) };
}

describe('gRPC ext_authz: two tenants, real JWKS over HTTP', () => {
  let idpA: JwksServer;
  let idpB: JwksServer;
  let t: TestApp;

  beforeAll(async () => {
    idpA = await startJwksServer();
    idpB = await startJwksServer({ alg: 'ES256' });
    t = await startTestApp(twoTenantConfig(idpA, idpB));
    await waitReady(t);
  });

  afterAll(async () => {
    await t?.stop();
    await idpA?.close();
    await idpB?.close();
  });

  it('reports SERVING over grpc.health.v1 and answers /healthz and /readyz on the admin port', async () => {
    expect(await t.health.check('')).toBe('SERVING');
    expect(await t.health.check(AUTH_SERVICE_NAME)).toBe('SERVING');
    const healthz = await getText(`http://${t.addresses.admin}/healthz`);
    expect(healthz.status).toBe(200);
    const readyz = await getText(`http://${t.addresses.admin}/readyz`);
    expect(readyz.status).toBe(200);
    const body = JSON.parse(readyz.text) as { status: string; issuers: { name: string; ready: boolean }[] };
    expect(body.status).toBe('ready');
    expect(body.issuers.map((i) => [i.name, i.ready])).toEqual([
      ['tenant-a', true],
      ['tenant-b', true],
    ]);
  });

  it('allows with identity headers set (overwrite), spoofed owned headers removed, and dynamic metadata', async () => {
    const token = await idpA.sign(userClaims('alice', ['sandbox:invoke']));
    const r = await check(t, {
      method: 'POST',
      path: '/v1/sandboxes/s1/invoke',
      headers: {
        ...bearer(token),
        'x-user-sub': 'mallory', // set by the route: overwritten, so not in the remove list
        'x-user-admin': 'true', // owned, not set: a spoof to remove
        'x-portcullis-roles': 'admin', // set by defaults: overwritten
        'x-portcullis-debug': '1', // owned, not set
        'x-request-id': 'keep-me',
      },
    });
    expect(r.decision).toBe('allow');
    expect(r.grpcCode).toBe(grpcStatus.OK);
    expect(r.headers).toEqual({
      'x-user-sub': 'alice',
      'x-user-tenant': 'tenant-a',
      'x-user-sandbox': 's1',
      'x-portcullis-sub': 'alice',
      'x-portcullis-tenant': 'tenant-a',
      'x-portcullis-roles': 'sandbox:invoke',
      'x-portcullis-route': 'sandbox-invoke',
    });
    for (const action of Object.values(r.appendActions)) expect(action).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
    expect([...r.headersToRemove].sort()).toEqual(['x-portcullis-debug', 'x-user-admin']);
    expect(r.metadata).toEqual({
      route: 'sandbox-invoke',
      decision: 'allow',
      sub: 'alice',
      qualified_sub: 'tenant-a/alice',
      tenant: 'tenant-a',
      roles: ['sandbox:invoke'],
    });
  });

  it('removes a spoofed x-user-sub on a route that does not set it', async () => {
    const token = await idpA.sign(userClaims('carol'));
    const r = await check(t, { path: '/v1/profile', headers: { ...bearer(token), 'x-user-sub': 'root', 'x-user-tenant': 'tenant-b' } });
    expect(r.decision).toBe('allow');
    expect([...r.headersToRemove].sort()).toEqual(['x-user-sub', 'x-user-tenant']);
    expect(r.headers['x-portcullis-sub']).toBe('carol');
    expect(r.headers['x-user-sub']).toBeUndefined();
    expect(r.metadata).toMatchObject({ sub: 'carol', tenant: 'tenant-a', route: 'profile' });
  });

  it('inherits roles: an admin token may invoke (admin ⊇ sandbox:manage ⊇ sandbox:invoke)', async () => {
    const token = await idpA.sign(userClaims('root', ['admin']));
    const r = await check(t, { method: 'POST', path: '/v1/sandboxes/s9/invoke', headers: bearer(token) });
    expect(r.decision).toBe('allow');
    expect(r.headers['x-portcullis-roles']).toBe('admin');
  });

  it('denies 401 without credentials: WWW-Authenticate, x-portcullis-reason, JSON body', async () => {
    const r = await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke' });
    expect(r.decision).toBe('deny');
    expect(r.grpcCode).toBe(grpcStatus.UNAUTHENTICATED);
    expect(r.status).toBe(401);
    expect(r.reason).toBe('missing_credentials');
    expect(r.headers['www-authenticate']).toBe('Bearer realm="portcullis"');
    expect(r.headers['x-portcullis-reason']).toBe('missing_credentials');
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.body?.error).toBe('missing_credentials');
    expect(typeof r.body?.message).toBe('string');
    expect(r.metadata).toMatchObject({ route: 'sandbox-invoke', decision: 'deny', reason: 'missing_credentials' });
  });

  it('denies 401 invalid_token for an expired token, with an RFC 6750 challenge', async () => {
    const token = await idpA.sign(userClaims('alice', ['sandbox:invoke']), { ttlSeconds: -3600 });
    const r = await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(token) });
    expect(r).toMatchObject({ decision: 'deny', status: 401, reason: 'token_expired' });
    expect(r.headers['www-authenticate']).toMatch(/^Bearer realm="portcullis", error="invalid_token", error_description="[^"]+"$/);
    expect(r.body?.error).toBe('token_expired');
  });

  it('denies 401 unknown_issuer for a well-signed token of an unconfigured IdP', async () => {
    const stranger = await startJwksServer();
    try {
      const token = await stranger.sign(userClaims('eve', ['admin']), { audience: idpA.audience });
      const r = await check(t, { path: '/v1/profile', headers: bearer(token) });
      expect(r).toMatchObject({ decision: 'deny', status: 401, reason: 'unknown_issuer' });
      expect(stranger.requestCount(JWKS_PATH)).toBe(0);
    } finally {
      await stranger.close();
    }
  });

  it('denies 403 missing_role with the principal in the metadata', async () => {
    const token = await idpA.sign(userClaims('dave', ['sandbox:invoke']));
    const r = await check(t, { path: '/admin/users', headers: bearer(token) });
    expect(r.decision).toBe('deny');
    expect(r.grpcCode).toBe(grpcStatus.PERMISSION_DENIED);
    expect(r.status).toBe(403);
    expect(r.reason).toBe('missing_role');
    expect(r.headers['www-authenticate']).toBeUndefined();
    expect(r.body?.error).toBe('missing_role');
    expect(r.metadata).toMatchObject({ route: 'admin', decision: 'deny', reason: 'missing_role', sub: 'dave', tenant: 'tenant-a' });
  });

  it('denies 403 no_route and route_denied; allows an anonymous route without credentials', async () => {
    expect(await check(t, { path: '/nowhere' })).toMatchObject({ decision: 'deny', status: 403, reason: 'no_route' });
    expect(await check(t, { path: '/closed' })).toMatchObject({ decision: 'deny', status: 403, reason: 'route_denied' });
    const anon = await check(t, { path: '/healthz', headers: { 'x-user-sub': 'spoof' } });
    expect(anon.decision).toBe('allow');
    expect(anon.headersToRemove).toEqual(['x-user-sub']);
    expect(anon.metadata).toEqual({ route: 'health', decision: 'allow' });
  });

  it('picks the route named by context_extensions', async () => {
    const token = await idpA.sign(userClaims('frank'));
    const r = await check(t, { path: '/anything', headers: bearer(token), contextExtensions: { route: 'profile' } });
    expect(r).toMatchObject({ decision: 'allow', metadata: { route: 'profile' } });
    const unknown = await check(t, { path: '/anything', headers: bearer(token), contextExtensions: { route: 'nope' } });
    expect(unknown).toMatchObject({ decision: 'deny', status: 403, reason: 'no_route' });
  });

  it('answers a malformed CheckRequest (no attributes) with a denied response, not a gRPC error', async () => {
    for (const req of [{}, { attributes: {} }, { attributes: { request: {} } }]) {
      const r = readCheckResponse(await t.grpc.check(req));
      expect(r.decision).toBe('deny');
      expect(r.status).toBe(400);
      expect(r.reason).toBe('malformed_request');
      expect(r.body?.error).toBe('malformed_request');
    }
  });

  it('answers bytes that are not a protobuf message with a denied response, not a gRPC error', async () => {
    // A raw client: the request is sent as given, so the server sees undecodable bytes.
    const client = new Client(t.addresses.grpc, credentials.createInsecure());
    try {
      const body = await new Promise<Buffer>((resolve, reject) => {
        client.makeUnaryRequest(
          '/envoy.service.auth.v3.Authorization/Check',
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([0xff, 0xff, 0xff]),
          (err, res) => (err || !res ? reject(err ?? new Error('no response')) : resolve(res)),
        );
      });
      const decoded = readCheckResponse(loadAuthorizationResponseType().decode(body));
      expect(decoded).toMatchObject({ decision: 'deny', status: 400, reason: 'malformed_request' });
    } finally {
      client.close();
    }
  });

  it('multi-tenant: a route restricted to issuer B denies A’s token (issuer_not_allowed) and allows B’s', async () => {
    const a = await idpA.sign(userClaims('alice', ['admin']));
    const b = await idpB.sign(userClaims('bob'));
    const denied = await check(t, { path: '/v1/b/x1', headers: bearer(a) });
    expect(denied).toMatchObject({ decision: 'deny', status: 401, reason: 'issuer_not_allowed' });
    expect(denied.headers['www-authenticate']).toContain('error="invalid_token"');
    const allowed = await check(t, { path: '/v1/b/x1', headers: bearer(b) });
    expect(allowed).toMatchObject({ decision: 'allow', metadata: { tenant: 'tenant-b', qualified_sub: 'tenant-b/bob' } });
    // Same sub in two realms stays two callers.
    const bAlice = await idpB.sign(userClaims('alice', ['sandbox:invoke']));
    const r = await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(bAlice) });
    expect(r).toMatchObject({ decision: 'allow', headers: { 'x-user-tenant': 'tenant-b' }, metadata: { qualified_sub: 'tenant-b/alice' } });
  });

  it('counts decisions and token cache hits in /metrics on the admin port', async () => {
    const before = await scrapeMetrics(t.addresses.admin);
    const allowLabels = { route: 'profile', decision: 'allow', reason: '' };
    const token = await idpA.sign(userClaims('grace'));
    expect((await check(t, { path: '/v1/profile', headers: bearer(token) })).decision).toBe('allow');
    expect((await check(t, { path: '/v1/profile', headers: bearer(token) })).decision).toBe('allow');
    expect((await check(t, { path: '/admin/x', headers: bearer(token) })).reason).toBe('missing_role');
    const after = await scrapeMetrics(t.addresses.admin);
    expect(after).toMatch(/portcullis_decisions_total\{route="profile",decision="allow",reason=""\} \d+/);
    expect(metricValue(after, 'portcullis_decisions_total', allowLabels) - metricValue(before, 'portcullis_decisions_total', allowLabels)).toBe(2);
    const denyLabels = { route: 'admin', decision: 'deny', reason: 'missing_role' };
    expect(metricValue(after, 'portcullis_decisions_total', denyLabels) - metricValue(before, 'portcullis_decisions_total', denyLabels)).toBe(1);
    // tokenCache.admission second-use (the default): the first two sightings verify (misses),
    // the second one caches the token, the third is a hash lookup.
    const hits = (s: string) => metricValue(s, 'portcullis_token_cache_total', { result: 'hit' });
    const misses = (s: string) => metricValue(s, 'portcullis_token_cache_total', { result: 'miss' });
    expect(hits(after) - hits(before)).toBe(1);
    expect(misses(after) - misses(before)).toBe(2);
    expect(metricValue(after, 'portcullis_jwks_ready', { issuer: 'tenant-a' })).toBe(1);
    expect(after).toContain('portcullis_decision_duration_seconds_bucket');
  });

  it('logs one decision line per check with route, decision, reason and subject, never the token', async () => {
    const token = await idpA.sign(userClaims('heidi', ['sandbox:invoke']));
    const r = await check(t, { path: '/admin/y', headers: { ...bearer(token), cookie: `session=${token}` } });
    expect(r.reason).toBe('missing_role');
    const line = await pollUntil('the decision log line', () =>
      t.logs.find((l) => l.kind === 'decision' && l.path === '/admin/y' && l.sub === 'tenant-a/heidi'),
    );
    expect(line).toMatchObject({ route: 'admin', decision: 'deny', reason: 'missing_role', status: 403, tenant: 'tenant-a' });
    expect(JSON.stringify(t.logs.lines)).not.toContain(token);
  });
});

describe('gRPC ext_authz: signing key rotation mid-test', () => {
  let idp: JwksServer;
  let other: JwksServer;
  let t: TestApp;

  beforeAll(async () => {
    idp = await startJwksServer();
    other = await startJwksServer();
    await idp.addKey({ kid: 'k1' });
    t = await startTestApp(twoTenantConfig(idp, other));
    await waitReady(t);
  });

  afterAll(async () => {
    await t?.stop();
    await idp?.close();
    await other?.close();
  });

  it('accepts a new kid after exactly one refetch; a second unknown kid within the cooldown is denied without a fetch', async () => {
    const jwksBefore = idp.requestCount(JWKS_PATH);
    const discoveryBefore = idp.requestCount(DISCOVERY_PATH);
    expect(jwksBefore).toBe(1);

    // The IdP rotates: a new key appears in its JWKS.
    await idp.addKey({ kid: 'k2' });
    const t2 = await idp.sign(userClaims('ivan', ['sandbox:invoke']), { kid: 'k2' });
    const r2 = await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(t2) });
    expect(r2.decision).toBe('allow');
    expect(idp.requestCount(JWKS_PATH)).toBe(jwksBefore + 1);
    expect(idp.requestCount(DISCOVERY_PATH)).toBe(discoveryBefore); // jwks_uri is remembered

    // Another token of the now-known kid: no fetch at all.
    const t2b = await idp.sign(userClaims('judy'), { kid: 'k2' });
    expect((await check(t, { path: '/v1/profile', headers: bearer(t2b) })).decision).toBe('allow');
    expect(idp.requestCount(JWKS_PATH)).toBe(jwksBefore + 1);

    // The previous key still verifies (both are published).
    const t1 = await idp.sign(userClaims('ken'), { kid: 'k1' });
    expect((await check(t, { path: '/v1/profile', headers: bearer(t1) })).decision).toBe('allow');

    // A second rotation within kidMissCooldownSeconds (30 s): denied, and the IdP is not asked again.
    await idp.addKey({ kid: 'k3' });
    const t3 = await idp.sign(userClaims('leo'), { kid: 'k3' });
    const r3 = await check(t, { path: '/v1/profile', headers: bearer(t3) });
    expect(r3).toMatchObject({ decision: 'deny', status: 401, reason: 'unknown_kid' });
    expect(idp.requestCount(JWKS_PATH)).toBe(jwksBefore + 1);

    const metrics = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(metrics, 'portcullis_jwks_kid_miss_total', { issuer: 'tenant-a', result: 'refetch' })).toBe(1);
    expect(metricValue(metrics, 'portcullis_jwks_kid_miss_total', { issuer: 'tenant-a', result: 'rate_limited' })).toBe(1);
    expect(metricValue(metrics, 'portcullis_jwks_fetches_total', { issuer: 'tenant-a', result: 'ok' })).toBe(2);
  });

  it('picks up k3 and drops a withdrawn k1 when a reload changes the issuer’s key settings', async () => {
    idp.removeKey('k1');
    const jwksBefore = idp.requestCount(JWKS_PATH);
    const config = twoTenantConfig(idp, other);
    config.issuers = [issuerEntry('tenant-a', idp, { jwks: { refreshSeconds: 301 } }), issuerEntry('tenant-b', other)];
    writeConfig(t.configPath, config);
    expect(await t.app.reload()).toEqual({ ok: true });
    expect(idp.requestCount(JWKS_PATH)).toBe(jwksBefore + 1);

    const t3 = await idp.sign(userClaims('leo'), { kid: 'k3' });
    expect((await check(t, { path: '/v1/profile', headers: bearer(t3) })).decision).toBe('allow');
    const t1 = await idp.sign(userClaims('ken'), { kid: 'k1' });
    expect(await check(t, { path: '/v1/profile', headers: bearer(t1) })).toMatchObject({ decision: 'deny', reason: 'unknown_kid' });
  });
});

describe('gRPC ext_authz: the IdP goes down after keys were loaded', () => {
  let idp: JwksServer;
  let other: JwksServer;
  let t: TestApp;

  beforeAll(async () => {
    idp = await startJwksServer();
    other = await startJwksServer();
    await idp.addKey({ kid: 'live' });
    const config = twoTenantConfig(idp, other);
    // No background retry after a failed fetch during this test: every fetch counted here is one a check caused.
    config.issuers = [issuerEntry('tenant-a', idp, { jwks: { retryMinSeconds: 300 } }), issuerEntry('tenant-b', other)];
    t = await startTestApp(config);
    await waitReady(t);
  });

  afterAll(async () => {
    await t?.stop();
    await idp?.close();
    await other?.close();
  });

  it('keeps allowing with the last good keys, and a failed refetch does not empty the key set', async () => {
    idp.setFailing(true);
    const fresh = await idp.sign(userClaims('mia', ['sandbox:invoke']), { kid: 'live' });
    expect((await check(t, { method: 'POST', path: '/v1/sandboxes/s2/invoke', headers: bearer(fresh) })).decision).toBe('allow');

    // An unknown kid makes portcullis ask the (failing) IdP once.
    const jwksBefore = idp.requestCount(JWKS_PATH);
    await idp.createKey({ kid: 'unpublished' });
    const stray = await idp.sign(userClaims('mia'), { kid: 'unpublished' });
    expect(await check(t, { path: '/v1/profile', headers: bearer(stray) })).toMatchObject({ decision: 'deny', reason: 'unknown_kid' });
    expect(idp.requestCount(JWKS_PATH)).toBe(jwksBefore + 1);

    // The failure left the good keys in place.
    const another = await idp.sign(userClaims('nina'), { kid: 'live' });
    expect((await check(t, { path: '/v1/profile', headers: bearer(another) })).decision).toBe('allow');
    expect(t.app.readiness().ready).toBe(true);
    expect((await getText(`http://${t.addresses.admin}/readyz`)).status).toBe(200);

    const metrics = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(metrics, 'portcullis_jwks_fetches_total', { issuer: 'tenant-a', result: 'error' })).toBe(1);
    const warn = t.logs.find((l) => l.msg === 'JWKS fetch failed; last good keys keep serving');
    expect(warn).toMatchObject({ issuer: 'tenant-a', level: 'warn' });
  });
});

describe('gRPC ext_authz: an issuer whose JWKS has never answered', () => {
  let down: JwksServer;
  let up: JwksServer;
  let t: TestApp;

  beforeAll(async () => {
    down = await startJwksServer();
    up = await startJwksServer();
    down.setFailing(true);
    // start() must not block on the unreachable IdP.
    t = await startTestApp(twoTenantConfig(up, down));
    await pollUntil('the first (failed) fetch of tenant-b', () => t.app.readiness().issuers.find((i) => i.name === 'tenant-b')?.lastError);
    await pollUntil('tenant-a keys', () => t.app.readiness().issuers.find((i) => i.name === 'tenant-a')?.ready);
  });

  afterAll(async () => {
    await t?.stop();
    await down?.close();
    await up?.close();
  });

  it('starts, and /readyz answers 503 naming the issuer that is not ready', async () => {
    const readyz = await getText(`http://${t.addresses.admin}/readyz`);
    expect(readyz.status).toBe(503);
    const body = JSON.parse(readyz.text) as { status: string; issuers: { name: string; ready: boolean; state: string; lastError?: string }[] };
    expect(body.status).toBe('not_ready');
    expect(body.issuers).toEqual([
      expect.objectContaining({ name: 'tenant-a', ready: true }),
      expect.objectContaining({ name: 'tenant-b', ready: false, state: 'never_loaded', lastError: expect.stringContaining('HTTP 500') }),
    ]);
    const metrics = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(metrics, 'portcullis_jwks_ready', { issuer: 'tenant-b' })).toBe(0);
    expect(metricValue(metrics, 'portcullis_jwks_age_seconds', { issuer: 'tenant-b' })).toBe(-1);
  });

  it('denies that issuer’s tokens 503 jwks_unavailable (never allow), while the other tenant is served', async () => {
    const tok = await down.sign(userClaims('olga', ['admin']));
    const r = await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(tok) });
    expect(r.decision).toBe('deny');
    expect(r.grpcCode).toBe(grpcStatus.UNAVAILABLE);
    expect(r.status).toBe(503);
    expect(r.reason).toBe('jwks_unavailable');
    expect(r.body?.error).toBe('jwks_unavailable');
    const ok = await up.sign(userClaims('pia', ['sandbox:invoke']));
    expect((await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(ok) })).decision).toBe('allow');
  });

  it('gRPC health agrees with readiness: not SERVING while an issuer has no keys (issue 2: "SERVING only when ready")', async () => {
    expect(t.app.readiness().ready).toBe(false);
    expect(await t.health.check('')).toBe('NOT_SERVING');
  });

  it('recovers once the IdP answers: a reload that changes the issuer’s key settings loads its keys', async () => {
    down.setFailing(false);
    const config = twoTenantConfig(up, down);
    config.issuers = [issuerEntry('tenant-a', up), issuerEntry('tenant-b', down, { jwks: { retryMinSeconds: 2 } })];
    writeConfig(t.configPath, config);
    expect(await t.app.reload()).toEqual({ ok: true });
    await waitReady(t);
    expect((await getText(`http://${t.addresses.admin}/readyz`)).status).toBe(200);
    const tok = await down.sign(userClaims('olga', ['admin']));
    expect((await check(t, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(tok) })).decision).toBe('allow');
  });
});

describe('gRPC ext_authz: start-up', () => {
  it('start() resolves with loopback addresses on port 0 and stop() closes them', async () => {
    const idp = await startJwksServer();
    const t = await startTestApp({ listen: { ...LOOPBACK_LISTEN }, server: { watchConfig: false }, issuers: [issuerEntry('solo', idp)], routes: [{ name: 'all', match: { path: '/**' } }] });
    try {
      for (const a of [t.addresses.grpc, t.addresses.http ?? '', t.addresses.admin]) expect(a).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
      expect(t.logs.withMsg('portcullis ready')).toHaveLength(1);
    } finally {
      await t.stop();
      await idp.close();
    }
    await expect(getText(`http://${t.addresses.admin}/healthz`)).rejects.toThrow();
  });
});
