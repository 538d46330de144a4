/**
 * Token exchange with `private_key_jwt` client authentication (RFC 7523) against the real
 * Keycloak: portcullis runs in-process (createApp) as the confidential client
 * `agentcube-router-jwt` of realm agentcube, whose certificate
 * (deploy/keycloak/test-keys/agentcube-router-jwt.cert.pem, a committed TEST key pair) is
 * registered in deploy/keycloak/realm-agentcube.json as `jwt.credential.certificate`.
 * The test plays Envoy on the HTTP ext_authz port and reads the headers of the answer.
 *
 * Needs a JDK >= 21 on the machine; Keycloak itself is provisioned by
 * scripts/provision/keycloak.sh into .cache/.
 */
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRemoteJWKSet, decodeJwt, jwtVerify, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type Addresses, type App } from '../../src/app.js';
import { KEYCLOAK_FIXTURES, KEYCLOAK_REALM_DIR, startKeycloak, type Keycloak } from '../helpers/keycloak.js';

const A = KEYCLOAK_FIXTURES.agentcube;
const JWT_CLIENT = 'agentcube-router-jwt';
const KEY_FILE = join(KEYCLOAK_REALM_DIR, 'test-keys', 'agentcube-router-jwt.key.pem');

function audOf(p: JWTPayload): string[] {
  if (p.aud === undefined) return [];
  return typeof p.aud === 'string' ? [p.aud] : p.aud;
}

function realmRolesOf(p: JWTPayload): string[] {
  const ra = p.realm_access;
  if (typeof ra !== 'object' || ra === null || !('roles' in ra) || !Array.isArray(ra.roles)) return [];
  return ra.roles.filter((r): r is string => typeof r === 'string');
}

describe('token exchange e2e with private_key_jwt (real Keycloak, client agentcube-router-jwt)', () => {
  let kc: Keycloak;
  let app: App;
  let addr: Addresses;
  let dir: string;
  let configPath: string;
  let wrongKeyFile: string;
  const logLines: string[] = [];

  /** The portcullis config, authenticating to realm agentcube with the given private key. */
  function writeConfig(keyFile: string, kid?: string): void {
    const config = {
      listen: { grpc: '127.0.0.1:0', http: '127.0.0.1:0', admin: '127.0.0.1:0' },
      log: { level: 'debug' },
      server: { watchConfig: false, shutdownGraceSeconds: 1 },
      issuers: [
        {
          name: A.realm,
          issuer: kc.issuer(A.realm),
          audiences: [JWT_CLIENT],
          exchange: { clientId: JWT_CLIENT, privateKeyJwt: { keyFile, alg: 'RS256', ...(kid === undefined ? {} : { kid }) } },
        },
      ],
      roles: { admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] },
      routes: [
        {
          name: 'workloadmanager',
          match: { path: '/wm/**' },
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
    writeFileSync(configPath, JSON.stringify(config, null, 2));
  }

  beforeAll(async () => {
    kc = await startKeycloak();
    dir = mkdtempSync(join(tmpdir(), 'portcullis-exchange-pkjwt-e2e-'));
    configPath = join(dir, 'portcullis.yaml');
    // A well-formed RSA key that Keycloak has never seen.
    wrongKeyFile = join(dir, 'wrong.key.pem');
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    writeFileSync(wrongKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    writeConfig(KEY_FILE);
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
    const res = await fetch(`http://${addr.http}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
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

  const userToken = (u: (typeof A.users)[keyof typeof A.users]) =>
    kc.passwordToken(A.realm, A.clients.cli.clientId, u.username, u.password);

  it('user tokens of agentcube-cli name agentcube-router-jwt in aud (the subject token is exchangeable by it)', async () => {
    const p = decodeJwt(await userToken(A.users.alice));
    expect(audOf(p)).toContain(JWT_CLIENT);
    expect(audOf(p)).toContain('agentcube-router');
  });

  it('alice -> 200 with a Keycloak-signed Bearer token for workloadmanager, azp agentcube-router-jwt, same sub', async () => {
    const alice = await userToken(A.users.alice);
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
    expect(audOf(payload)).not.toContain(JWT_CLIENT);
    expect(payload.azp).toBe(JWT_CLIENT);
    expect(payload.sub).toBe(A.users.alice.id);
    expect(payload.sub).toBe(decodeJwt(alice).sub);
    expect(realmRolesOf(payload)).toContain('sandbox:invoke');
    expect(res.headers.get('x-portcullis-sub')).toBe(A.users.alice.id);
    expect(await metric('portcullis_exchange_total', { issuer: A.realm, result: 'miss' })).toBe(1);
    expect(await metric('portcullis_exchange_duration_seconds_count', { issuer: A.realm, result: 'ok' })).toBe(1);

    // The repeat is served from the cache: no second client assertion is made.
    const again = await check('/wm/sandboxes', alice);
    expect(again.status).toBe(200);
    expect(again.headers.get('authorization')).toBe(auth);
    expect(await metric('portcullis_exchange_duration_seconds_count', { issuer: A.realm })).toBe(1);
  });

  it('a second exchange with a fresh assertion (new jti) works too: bob -> picod in x-hop-token', async () => {
    const bob = await userToken(A.users.bob);
    const res = await check('/picod/run', bob);
    expect(res.status, res.headers.get('x-portcullis-reason') ?? '').toBe(200);
    const hop = decodeJwt((res.headers.get('x-hop-token') ?? '').replace(/^Bearer /, ''));
    expect(audOf(hop)).toEqual(['picod']);
    expect(hop.azp).toBe(JWT_CLIENT);
    expect(hop.sub).toBe(A.users.bob.id);
    expect(res.headers.get('authorization')).toBeNull();
  });

  it('signed with a key Keycloak does not know: 503 exchange_failed, no token passed on; the right key works after reload', async () => {
    writeConfig(wrongKeyFile);
    expect(await app.reload()).toEqual({ ok: true });
    const carol = await userToken(A.users.carol);
    const res = await fetch(`http://${addr.http}/wm/sandboxes`, { method: 'POST', headers: { authorization: `Bearer ${carol}` } });
    const body = (await res.json()) as { error?: string; message?: string };
    expect(res.status).toBe(503);
    expect(res.headers.get('x-portcullis-reason')).toBe('exchange_failed');
    expect(body.error).toBe('exchange_failed');
    expect(body.message).toMatch(/refused the exchange \(HTTP 400\)/);
    expect(res.headers.get('authorization')).toBeNull();
    expect(res.headers.get('x-hop-token')).toBeNull();
    const warn = logLines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === 'token exchange failed');
    // Keycloak 26.7 answers a bad client assertion with 400 invalid_client (a bad client
    // secret gets 401 unauthorized_client, see exchange.test.ts).
    expect(warn).toMatchObject({ level: 'warn', issuer: A.realm, idp_error: 'invalid_client', status: 400 });
    expect(await metric('portcullis_exchange_total', { issuer: A.realm, result: 'error' })).toBe(1);

    writeConfig(KEY_FILE);
    expect(await app.reload()).toEqual({ ok: true });
    const ok = await check('/wm/sandboxes', carol);
    expect(ok.status, ok.headers.get('x-portcullis-reason') ?? '').toBe(200);
    const p = decodeJwt((ok.headers.get('authorization') ?? '').slice('Bearer '.length));
    expect(p.sub).toBe(A.users.carol.id);
    expect(p.azp).toBe(JWT_CLIENT);
  });

  it('kid: Keycloak names a registered certificate\'s key base64url(SHA-256(SPKI)); that kid works, another is refused', async () => {
    const spki = createPublicKey(readFileSync(KEY_FILE, 'utf8')).export({ type: 'spki', format: 'der' });
    const keycloakKid = createHash('sha256').update(spki).digest('base64url');
    const dave = await userToken(A.users.dave); // no role needed on /picod
    const errorsBefore = await metric('portcullis_exchange_total', { issuer: A.realm, result: 'error' });

    writeConfig(KEY_FILE, 'my-own-label');
    expect(await app.reload()).toEqual({ ok: true });
    const refused = await check('/picod/run', dave);
    expect(refused.status).toBe(503);
    expect(refused.headers.get('x-portcullis-reason')).toBe('exchange_failed');
    expect(refused.headers.get('x-hop-token')).toBeNull();
    expect(await metric('portcullis_exchange_total', { issuer: A.realm, result: 'error' })).toBe(errorsBefore + 1);
    const warn = logLines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'token exchange failed')
      .at(-1);
    expect(warn).toMatchObject({ issuer: A.realm, route: 'picod', idp_error: 'invalid_client', status: 400 });

    writeConfig(KEY_FILE, keycloakKid);
    expect(await app.reload()).toEqual({ ok: true });
    const ok = await check('/picod/run', dave);
    expect(ok.status, ok.headers.get('x-portcullis-reason') ?? '').toBe(200);
    const hop = decodeJwt((ok.headers.get('x-hop-token') ?? '').replace(/^Bearer /, ''));
    expect(hop.sub).toBe(A.users.dave.id);
    expect(hop.azp).toBe(JWT_CLIENT);

    writeConfig(KEY_FILE);
    expect(await app.reload()).toEqual({ ok: true });
  });

  it('never logs a token or the private key', () => {
    const all = logLines.join('\n');
    expect(all).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
    expect(all).not.toContain('PRIVATE KEY');
    const keyBody = readFileSync(KEY_FILE, 'utf8').split('\n')[1] ?? '';
    expect(keyBody.length).toBeGreaterThan(20);
    expect(all).not.toContain(keyBody);
  });
});
