/**
 * Real Keycloak (Maven Central distribution, provisioned by scripts/provision/keycloak.sh)
 * with deploy/keycloak/realm-agentcube.json and realm-tenant-b.json imported: the tokens
 * the realms issue and the RFC 8693 standard token exchange portcullis relies on.
 */
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ACCESS_TOKEN_TYPE,
  DEFAULT_REALM_FILES,
  KEYCLOAK_FIXTURES,
  TOKEN_EXCHANGE_GRANT,
  startKeycloak,
  type FixtureRealm,
  type Keycloak,
} from '../helpers/keycloak.js';

const A = KEYCLOAK_FIXTURES.agentcube;
const B = KEYCLOAK_FIXTURES.tenantB;
const SANDBOX_ROLES = ['sandbox:invoke', 'sandbox:manage', 'admin'] as const;

function audOf(p: JWTPayload): string[] {
  if (p.aud === undefined) return [];
  return typeof p.aud === 'string' ? [p.aud] : p.aud;
}

function realmRolesOf(p: JWTPayload): string[] {
  const ra = p.realm_access;
  if (typeof ra !== 'object' || ra === null || !('roles' in ra) || !Array.isArray(ra.roles)) return [];
  return ra.roles.filter((r): r is string => typeof r === 'string');
}

describe('realm files agree with KEYCLOAK_FIXTURES', () => {
  interface RealmJson {
    realm: string;
    accessTokenLifespan?: number;
    roles: { realm: { name: string; composites?: { realm?: string[] } }[] };
    clients: { clientId: string; secret?: string; attributes?: Record<string, string> }[];
    users: { id: string; username: string; realmRoles?: string[]; serviceAccountClientId?: string; credentials?: { value: string }[] }[];
  }
  const files: [string, FixtureRealm][] = [
    [DEFAULT_REALM_FILES[0] ?? '', A],
    [DEFAULT_REALM_FILES[1] ?? '', B],
  ];
  it.each(files)('%s', (file, fx) => {
    const rep = JSON.parse(readFileSync(file, 'utf8')) as RealmJson;
    expect(rep.realm).toBe(fx.realm);
    expect(rep.accessTokenLifespan).toBe(300);
    const composites = Object.fromEntries(rep.roles.realm.map((r) => [r.name, r.composites?.realm ?? []]));
    expect(composites).toMatchObject({ 'sandbox:invoke': [], 'sandbox:manage': ['sandbox:invoke'], admin: ['sandbox:manage'] });
    const client = (id: string) => rep.clients.find((c) => c.clientId === id);
    expect(client('agentcube-sdk')?.secret).toBe(fx.clients.sdk.secret);
    expect(client('agentcube-router')?.secret).toBe(fx.clients.router.secret);
    expect(client('agentcube-router')?.attributes?.['standard.token.exchange.enabled']).toBe('true');
    for (const id of ['agentcube-cli', 'workloadmanager', 'picod']) expect(client(id)).toBeDefined();
    for (const u of Object.values(fx.users)) {
      const rep1 = rep.users.find((x) => x.username === u.username);
      expect(rep1?.id).toBe(u.id);
      expect(rep1?.credentials?.[0]?.value).toBe(u.password);
      expect((rep1?.realmRoles ?? []).filter((r) => !r.startsWith('default-roles-'))).toEqual(u.roles);
    }
    expect(rep.users.find((x) => x.serviceAccountClientId === 'agentcube-sdk')?.id).toBe(fx.clients.sdk.serviceAccountId);
  });
});

describe('Keycloak e2e (real server, realms agentcube + tenant-b)', () => {
  let kc: Keycloak;

  beforeAll(async () => {
    const t0 = Date.now();
    kc = await startKeycloak();
    console.info(
      `[keycloak] ${kc.version} JAVA_HOME=${kc.javaHome} ready at ${kc.url} in ${kc.startupMs} ms ` +
        `(startKeycloak total ${Date.now() - t0} ms, database ${kc.fromDbCache ? 'from cache' : 'imported'})`,
    );
  }, 600_000);

  afterAll(async () => {
    await kc?.stop();
  }, 120_000);

  it('serves discovery for both realms with their own issuers', async () => {
    for (const realm of [A.realm, B.realm]) {
      const res = await fetch(kc.discoveryUrl(realm));
      expect(res.status).toBe(200);
      const doc = (await res.json()) as { issuer: string; token_endpoint: string; jwks_uri: string };
      expect(doc.issuer).toBe(kc.issuer(realm));
      expect(doc.token_endpoint).toBe(kc.tokenEndpoint(realm));
      expect(doc.jwks_uri).toBe(kc.jwksUri(realm));
    }
  });

  it('agentcube-sdk client credentials: iss, aud agentcube-router, sandbox:invoke, service-account sub', async () => {
    const token = await kc.clientCredentialsToken(A.realm, A.clients.sdk.clientId, A.clients.sdk.secret);
    const p = decodeJwt(token);
    expect(p.iss).toBe(kc.issuer(A.realm));
    expect(audOf(p)).toContain('agentcube-router');
    expect(p.azp).toBe('agentcube-sdk');
    expect(p.sub).toBe(A.clients.sdk.serviceAccountId);
    expect(realmRolesOf(p)).toContain('sandbox:invoke');
    expect(realmRolesOf(p)).not.toContain('sandbox:manage');
    // accessTokenLifespan 300 s (exp and iat are computed a tick apart on a busy machine)
    expect((p.exp ?? 0) - (p.iat ?? 0)).toBeGreaterThanOrEqual(299);
    expect((p.exp ?? 0) - (p.iat ?? 0)).toBeLessThanOrEqual(301);
    await jwtVerify(token, createRemoteJWKSet(new URL(kc.jwksUri(A.realm))), {
      issuer: kc.issuer(A.realm),
      audience: 'agentcube-router',
    });
  });

  it('wrong client secret is refused', async () => {
    const r = await kc.tokenRequest(A.realm, { grant_type: 'client_credentials' }, { clientId: 'agentcube-sdk', clientSecret: 'nope' });
    expect(r.status).toBe(401);
    expect(r.body.error).toBe('unauthorized_client');
  });

  it.each(Object.values(A.users).map((u) => [u.username, u] as const))(
    'password token for %s carries aud agentcube-router and the composite-expanded roles',
    async (_name, u) => {
      const p = decodeJwt(await kc.passwordToken(A.realm, A.clients.cli.clientId, u.username, u.password));
      expect(p.iss).toBe(kc.issuer(A.realm));
      expect(p.sub).toBe(u.id);
      expect(p.preferred_username).toBe(u.username);
      expect(audOf(p)).toContain('agentcube-router');
      const sandboxRoles = realmRolesOf(p).filter((r) => (SANDBOX_ROLES as readonly string[]).includes(r));
      expect(sandboxRoles.sort()).toEqual([...u.effectiveRoles].sort());
    },
  );

  it('standard token exchange (RFC 8693): alice -> audience workloadmanager keeps sub, narrows aud', async () => {
    const subject = await kc.passwordToken(A.realm, 'agentcube-cli', A.users.alice.username, A.users.alice.password);
    // Raw request, as portcullis will make it: client_secret_basic as agentcube-router.
    const r = await kc.tokenRequest(
      A.realm,
      {
        grant_type: TOKEN_EXCHANGE_GRANT,
        subject_token: subject,
        subject_token_type: ACCESS_TOKEN_TYPE,
        audience: 'workloadmanager',
      },
      { clientId: A.clients.router.clientId, clientSecret: A.clients.router.secret },
    );
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.issued_token_type).toBe(ACCESS_TOKEN_TYPE);
    expect(r.body.token_type).toBe('Bearer');
    const exchanged = String(r.body.access_token);
    const p = decodeJwt(exchanged);
    expect(audOf(p)).toEqual(['workloadmanager']);
    expect(p.sub).toBe(decodeJwt(subject).sub);
    expect(p.sub).toBe(A.users.alice.id);
    expect(p.azp).toBe('agentcube-router');
    expect(p.iss).toBe(kc.issuer(A.realm));
    expect(realmRolesOf(p)).toContain('sandbox:invoke');
    // signed by the realm, verifiable by the next hop with its own audience
    await jwtVerify(exchanged, createRemoteJWKSet(new URL(kc.jwksUri(A.realm))), {
      issuer: kc.issuer(A.realm),
      audience: 'workloadmanager',
    });
  });

  it('token exchange of a service-account token to audience picod', async () => {
    const subject = await kc.clientCredentialsToken(A.realm, A.clients.sdk.clientId, A.clients.sdk.secret);
    const res = await kc.exchangeToken(A.realm, { subjectToken: subject, audience: 'picod' });
    const p = decodeJwt(res.access_token);
    expect(audOf(p)).toEqual(['picod']);
    expect(p.sub).toBe(A.clients.sdk.serviceAccountId);
    expect(typeof res.expires_in).toBe('number');
  });

  it('token exchange refuses an audience the router client cannot reach, and a client without the switch', async () => {
    const subject = await kc.passwordToken(A.realm, 'agentcube-cli', 'bob', A.users.bob.password);
    const badAudience = await kc.tokenRequest(
      A.realm,
      { grant_type: TOKEN_EXCHANGE_GRANT, subject_token: subject, subject_token_type: ACCESS_TOKEN_TYPE, audience: 'agentcube-sdk' },
      { clientId: A.clients.router.clientId, clientSecret: A.clients.router.secret },
    );
    expect(badAudience.status).toBe(400);
    expect(String(badAudience.body.error_description)).toMatch(/audience/i);
    // agentcube-sdk is confidential but has no standard token exchange switch (and is not in aud)
    const notAllowed = await kc.tokenRequest(
      A.realm,
      { grant_type: TOKEN_EXCHANGE_GRANT, subject_token: subject, subject_token_type: ACCESS_TOKEN_TYPE, audience: 'workloadmanager' },
      { clientId: A.clients.sdk.clientId, clientSecret: A.clients.sdk.secret },
    );
    expect(notAllowed.status).toBeGreaterThanOrEqual(400);
  });

  it('without audience= the exchanged token carries every audience the router produces', async () => {
    const subject = await kc.passwordToken(A.realm, 'agentcube-cli', 'alice', A.users.alice.password);
    const p = decodeJwt((await kc.exchangeToken(A.realm, { subjectToken: subject })).access_token);
    // plus `account`, from Keycloak's audience-resolve mapper (default account roles)
    expect(audOf(p)).toEqual(expect.arrayContaining(['picod', 'workloadmanager']));
  });

  it('a subject token that does not name agentcube-router in aud is refused', async () => {
    // a client without the audience mapper, made for this test only
    const created = await kc.adminFetch(`/realms/${A.realm}/clients`, {
      method: 'POST',
      body: JSON.stringify({
        clientId: 'no-router-aud',
        publicClient: true,
        directAccessGrantsEnabled: true,
        standardFlowEnabled: false,
      }),
    });
    expect(created.status).toBe(201);
    const subject = await kc.passwordToken(A.realm, 'no-router-aud', 'alice', A.users.alice.password);
    expect(audOf(decodeJwt(subject))).not.toContain('agentcube-router');
    const r = await kc.tokenRequest(
      A.realm,
      { grant_type: TOKEN_EXCHANGE_GRANT, subject_token: subject, subject_token_type: ACCESS_TOKEN_TYPE, audience: 'workloadmanager' },
      { clientId: A.clients.router.clientId, clientSecret: A.clients.router.secret },
    );
    console.info(`[keycloak] exchange without router aud: ${r.status} ${JSON.stringify(r.body)}`);
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
    expect(r.body.access_token).toBeUndefined();
  });

  it('tenant-b tokens have their own issuer and cannot be exchanged in agentcube', async () => {
    const a = decodeJwt(await kc.passwordToken(A.realm, 'agentcube-cli', 'alice', A.users.alice.password));
    const bToken = await kc.passwordToken(B.realm, 'agentcube-cli', 'alice', B.users.alice.password);
    const b = decodeJwt(bToken);
    expect(b.iss).toBe(kc.issuer(B.realm));
    expect(b.iss).not.toBe(a.iss);
    expect(b.sub).toBe(B.users.alice.id);
    expect(b.sub).not.toBe(a.sub);
    expect(audOf(b)).toContain('agentcube-router');
    const cross = await kc.tokenRequest(
      A.realm,
      { grant_type: TOKEN_EXCHANGE_GRANT, subject_token: bToken, subject_token_type: ACCESS_TOKEN_TYPE, audience: 'workloadmanager' },
      { clientId: A.clients.router.clientId, clientSecret: A.clients.router.secret },
    );
    expect(cross.status).toBe(400);
    // within its own realm the same exchange works
    const own = await kc.exchangeToken(B.realm, { subjectToken: bToken, audience: 'workloadmanager' });
    const p = decodeJwt(own.access_token);
    expect(p.iss).toBe(kc.issuer(B.realm));
    expect(p.sub).toBe(B.users.alice.id);
    expect(audOf(p)).toEqual(['workloadmanager']);
  });

  it('rotateSigningKey makes a new active key; the old one stays in the JWKS', async () => {
    const before = decodeProtectedHeader(await kc.clientCredentialsToken(B.realm, B.clients.sdk.clientId, B.clients.sdk.secret)).kid;
    const kid = await kc.rotateSigningKey(B.realm);
    expect(kid).not.toBe(before);
    const after = await kc.clientCredentialsToken(B.realm, B.clients.sdk.clientId, B.clients.sdk.secret);
    expect(decodeProtectedHeader(after).kid).toBe(kid);
    const jwks = (await (await fetch(kc.jwksUri(B.realm))).json()) as { keys: { kid: string }[] };
    const kids = jwks.keys.map((k) => k.kid);
    expect(kids).toContain(kid);
    expect(kids).toContain(before);
  });

  it('shutdown() makes Keycloak unreachable; restart() brings it back on the same port with the same keys', async () => {
    const token = await kc.passwordToken(A.realm, 'agentcube-cli', 'carol', A.users.carol.password);
    await kc.shutdown();
    expect(kc.isRunning()).toBe(false);
    await expect(fetch(kc.discoveryUrl(A.realm), { signal: AbortSignal.timeout(2_000) })).rejects.toThrow();
    await kc.restart();
    expect(kc.isRunning()).toBe(true);
    console.info(`[keycloak] restart ready in ${kc.startupMs} ms`);
    await jwtVerify(token, createRemoteJWKSet(new URL(kc.jwksUri(A.realm))), { issuer: kc.issuer(A.realm) });
    const again = await kc.exchangeToken(A.realm, { subjectToken: token, audience: 'picod' });
    expect(decodeJwt(again.access_token).sub).toBe(A.users.carol.id);
  }, 300_000);
});
