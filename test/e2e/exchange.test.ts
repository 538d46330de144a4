/**
 * Token exchange against the real Keycloak (realms agentcube + tenant-b from
 * deploy/keycloak/): portcullis runs in-process (createApp) with its HTTP
 * ext_authz port; the test plays Envoy and reads the allow response's headers,
 * which are exactly what Envoy would set upstream.
 *
 * Needs a JDK >= 21 on the machine; Keycloak itself is provisioned by
 * scripts/provision/keycloak.sh into .cache/.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRemoteJWKSet, decodeJwt, jwtVerify, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type Addresses, type App } from '../../src/app.js';
import { KEYCLOAK_FIXTURES, startKeycloak, type Keycloak } from '../helpers/keycloak.js';

const A = KEYCLOAK_FIXTURES.agentcube;
const B = KEYCLOAK_FIXTURES.tenantB;

function audOf(p: JWTPayload): string[] {
  if (p.aud === undefined) return [];
  return typeof p.aud === 'string' ? [p.aud] : p.aud;
}

describe('token exchange e2e (real Keycloak, portcullis in-process, HTTP ext_authz)', () => {
  let kc: Keycloak;
  let app: App;
  let addr: Addresses;
  let dir: string;
  let secretFile: string;
  const logLines: string[] = [];

  beforeAll(async () => {
    kc = await startKeycloak();
    dir = mkdtempSync(join(tmpdir(), 'portcullis-exchange-e2e-'));
    secretFile = join(dir, 'router-secret');
    writeFileSync(secretFile, `${A.clients.router.secret}\n`);
    const config = {
      listen: { grpc: '127.0.0.1:0', http: '127.0.0.1:0', admin: '127.0.0.1:0' },
      log: { level: 'debug' },
      server: { watchConfig: false, shutdownGraceSeconds: 1 },
      issuers: [
        {
          name: A.realm,
          issuer: kc.issuer(A.realm),
          audiences: ['agentcube-router'],
          exchange: { clientId: A.clients.router.clientId, clientSecretFile: secretFile },
        },
        {
          name: B.realm,
          issuer: kc.issuer(B.realm),
          audiences: ['agentcube-router'],
          exchange: { clientId: B.clients.router.clientId, clientSecret: B.clients.router.secret },
        },
      ],
      roles: { admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] },
      routes: [
        {
          name: 'workloadmanager',
          match: { path: '/wm/**' },
          issuers: [A.realm],
          require: { roles: { anyOf: ['sandbox:invoke'] } },
          exchange: { audience: 'workloadmanager' },
        },
        {
          name: 'picod',
          match: { path: '/picod/**' },
          exchange: { audience: 'picod', header: 'x-hop-token', inbound: 'move' },
        },
      ],
    };
    const configPath = join(dir, 'portcullis.yaml');
    writeFileSync(configPath, JSON.stringify(config, null, 2));
    app = createApp({
      configPath,
      defaultMetrics: false,
      logDestination: { write: (s: string) => void logLines.push(s) },
    });
    addr = await app.start();
  }, 600_000);

  afterAll(async () => {
    await app?.stop();
    await kc?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function check(path: string, token: string): Promise<Response> {
    const res = await fetch(`http://${addr.http}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'x-portcullis-original-authorization': 'spoofed' },
    });
    await res.arrayBuffer();
    return res;
  }

  async function metric(name: string, labels: Record<string, string>): Promise<number> {
    const text = await (await fetch(`http://${addr.admin}/metrics`)).text();
    let total = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(`${name}{`)) continue;
      if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return total;
  }

  const exchanged = (issuer: string) => metric('portcullis_exchange_total', { issuer });
  const idpCalls = (issuer: string) => metric('portcullis_exchange_duration_seconds_count', { issuer });

  it('injects a Keycloak-signed token for audience workloadmanager with the caller\'s sub; the repeat is a cache hit', async () => {
    const alice = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.alice.username, A.users.alice.password);
    const res = await check('/wm/sandboxes', alice);
    expect(res.status, res.headers.get('x-portcullis-reason') ?? '').toBe(200);
    const auth = res.headers.get('authorization') ?? '';
    expect(auth).toMatch(/^Bearer /);
    const token = auth.slice('Bearer '.length);
    expect(token).not.toBe(alice);
    const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(kc.jwksUri(A.realm))), {
      issuer: kc.issuer(A.realm),
      audience: 'workloadmanager',
    });
    expect(audOf(payload)).toContain('workloadmanager');
    expect(payload.sub).toBe(A.users.alice.id);
    expect(payload.sub).toBe(decodeJwt(alice).sub);
    expect(payload.azp).toBe(A.clients.router.clientId);
    expect(res.headers.get('x-portcullis-sub')).toBe(A.users.alice.id);
    // The spoofed owned header is stripped upstream.
    expect(res.headers.get('x-envoy-auth-headers-to-remove') ?? '').toContain('x-portcullis-original-authorization');

    expect(await metric('portcullis_exchange_total', { issuer: A.realm, result: 'miss' })).toBe(1);
    expect(await idpCalls(A.realm)).toBe(1);
    const again = await check('/wm/sandboxes', alice);
    expect(again.status).toBe(200);
    expect(again.headers.get('authorization')).toBe(auth);
    expect(await metric('portcullis_exchange_total', { issuer: A.realm, result: 'hit' })).toBe(1);
    expect(await idpCalls(A.realm)).toBe(1); // no second call to Keycloak
  });

  it('inbound: move — the exchanged token in x-hop-token, the caller\'s in the move-to header, Authorization removed', async () => {
    const bob = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.bob.username, A.users.bob.password);
    const res = await check('/picod/run', bob);
    expect(res.status).toBe(200);
    const hop = decodeJwt((res.headers.get('x-hop-token') ?? '').replace(/^Bearer /, ''));
    expect(audOf(hop)).toEqual(['picod']);
    expect(hop.sub).toBe(A.users.bob.id);
    expect(res.headers.get('x-portcullis-original-authorization')).toBe(`Bearer ${bob}`);
    expect(res.headers.get('authorization')).toBeNull();
    expect((res.headers.get('x-envoy-auth-headers-to-remove') ?? '').split(',')).toContain('authorization');
  });

  it('a tenant-b token cannot reach the route restricted to agentcube; on an open route it is exchanged at tenant-b', async () => {
    const other = await kc.passwordToken(B.realm, 'agentcube-cli', B.users.alice.username, B.users.alice.password);
    const before = await exchanged(B.realm);
    const denied = await check('/wm/sandboxes', other);
    expect(denied.status).toBe(401);
    expect(denied.headers.get('x-portcullis-reason')).toBe('issuer_not_allowed');
    expect(await exchanged(B.realm)).toBe(before);

    const res = await check('/picod/run', other);
    expect(res.status).toBe(200);
    const hop = decodeJwt((res.headers.get('x-hop-token') ?? '').replace(/^Bearer /, ''));
    expect(hop.iss).toBe(kc.issuer(B.realm));
    expect(hop.sub).toBe(B.users.alice.id);
    expect(audOf(hop)).toEqual(['picod']);
  });

  it('a caller without the role is refused before any exchange', async () => {
    const dave = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.dave.username, A.users.dave.password);
    const calls = await idpCalls(A.realm);
    const res = await check('/wm/sandboxes', dave);
    expect(res.status).toBe(403);
    expect(res.headers.get('x-portcullis-reason')).toBe('missing_role');
    expect(await idpCalls(A.realm)).toBe(calls);
  });

  it('a broken client secret: 503 exchange_failed, no token passed on; a fixed secret file works after reload', async () => {
    writeFileSync(secretFile, 'not-the-secret');
    expect(await app.reload()).toEqual({ ok: true });
    const carol = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.carol.username, A.users.carol.password);
    const res = await fetch(`http://${addr.http}/wm/sandboxes`, { method: 'POST', headers: { authorization: `Bearer ${carol}` } });
    const body = (await res.json()) as { error?: string; message?: string };
    expect(res.status).toBe(503);
    expect(res.headers.get('x-portcullis-reason')).toBe('exchange_failed');
    expect(body.error).toBe('exchange_failed');
    expect(body.message).toMatch(/refused the exchange \(HTTP 401\)/);
    expect(res.headers.get('authorization')).toBeNull();
    expect(await metric('portcullis_exchange_total', { issuer: A.realm, result: 'error' })).toBe(1);
    const warn = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'token exchange failed');
    expect(warn).toMatchObject({ level: 'warn', issuer: A.realm, idp_error: 'unauthorized_client', status: 401 });

    writeFileSync(secretFile, A.clients.router.secret);
    expect(await app.reload()).toEqual({ ok: true });
    const ok = await check('/wm/sandboxes', carol);
    expect(ok.status).toBe(200);
    expect(decodeJwt((ok.headers.get('authorization') ?? '').slice(7)).sub).toBe(A.users.carol.id);
  });

  it('Keycloak down: cached exchanges keep serving, new ones get 503; all recover when it is back', async () => {
    const alice = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.alice.username, A.users.alice.password);
    const bob = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.bob.username, A.users.bob.password);
    expect((await check('/wm/sandboxes', alice)).status).toBe(200);
    await kc.shutdown();
    try {
      expect((await check('/wm/sandboxes', alice)).status).toBe(200); // cached
      const down = await check('/wm/sandboxes', bob);
      expect(down.status).toBe(503);
      expect(down.headers.get('x-portcullis-reason')).toBe('exchange_failed');
    } finally {
      await kc.restart();
    }
    const back = await check('/wm/sandboxes', bob);
    expect(back.status).toBe(200);
    expect(decodeJwt((back.headers.get('authorization') ?? '').slice(7)).sub).toBe(A.users.bob.id);
  }, 300_000);

  it('never logs a token or the client secret', () => {
    const all = logLines.join('\n');
    expect(all).not.toContain(A.clients.router.secret);
    expect(all).not.toContain(B.clients.router.secret);
    expect(all).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
  });
});
