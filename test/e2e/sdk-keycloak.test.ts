/**
 * The client SDKs against a real Keycloak (deploy/keycloak realms, started once):
 * (a) the TypeScript ServiceAccountAuth and TokenAuth, (b) the Python SDK's pytest suite
 * with PORTCULLIS_KEYCLOAK_URL set (this is how `npm test` runs the Python tests), and
 * (c) the cloud-federation fragments of deploy/keycloak/federation/ imported through the
 * admin REST API.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientAuthError, ServiceAccountAuth, TokenAuth, type FetchLike } from '../../src/client/index.js';
import { KEYCLOAK_FIXTURES, KEYCLOAK_REALM_DIR, REPO_ROOT, startKeycloak, type Keycloak } from '../helpers/keycloak.js';

const A = KEYCLOAK_FIXTURES.agentcube;
const SDK = A.clients.sdk;
const FEDERATION_DIR = join(KEYCLOAK_REALM_DIR, 'federation');

let kc: Keycloak;

beforeAll(async () => {
  kc = await startKeycloak();
}, 900_000);

afterAll(async () => {
  await kc?.stop();
});

/** The global fetch, counting the POSTs that reach the token endpoint. */
function countingFetch(): { fetch: FetchLike; tokenPosts: () => number } {
  let posts = 0;
  return {
    fetch: (input, init) => {
      if ((init?.method ?? 'GET') === 'POST') posts += 1;
      return fetch(input, init);
    },
    tokenPosts: () => posts,
  };
}

async function rejection(p: Promise<unknown>): Promise<ClientAuthError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ClientAuthError);
  return err as ClientAuthError;
}

describe('TypeScript client against Keycloak', () => {
  it('obtains a service-account token by client credentials (azp = the client, sub = its service account)', async () => {
    const auth = new ServiceAccountAuth({ tokenEndpoint: kc.tokenEndpoint(A.realm), clientId: SDK.clientId, clientSecret: SDK.secret });
    const token = await auth.getToken();
    const claims = decodeJwt(token);
    expect(claims.azp).toBe(SDK.clientId);
    expect(claims.iss).toBe(kc.issuer(A.realm));
    expect(claims.sub).toBe(SDK.serviceAccountId);
    expect(await auth.getToken()).toBe(token);
  });

  it('finds the token endpoint by discovery from the issuer', async () => {
    const auth = new ServiceAccountAuth({ issuer: kc.issuer(A.realm), clientId: SDK.clientId, clientSecret: SDK.secret });
    expect(decodeJwt(await auth.getToken()).azp).toBe(SDK.clientId);
    expect(auth.tokenEndpoint).toBe(kc.tokenEndpoint(A.realm));
  });

  it('refreshes against the real endpoint once the clock passes expiry minus the margin', async () => {
    let offset = 0;
    const counting = countingFetch();
    const auth = new ServiceAccountAuth({
      tokenEndpoint: kc.tokenEndpoint(A.realm),
      clientId: SDK.clientId,
      clientSecret: SDK.secret,
      fetch: counting.fetch,
      clock: { now: () => Date.now() + offset },
    });
    const first = await auth.getToken();
    const c1 = decodeJwt(first);
    const lifetimeMs = ((c1.exp ?? 0) - (c1.iat ?? 0)) * 1000;
    expect(lifetimeMs).toBe(300_000); // the realm's accessTokenLifespan
    offset = lifetimeMs - 31_000;
    expect(await auth.getToken()).toBe(first);
    expect(counting.tokenPosts()).toBe(1);
    offset = lifetimeMs - 29_000;
    const second = await auth.getToken();
    expect(counting.tokenPosts()).toBe(2);
    expect(second).not.toBe(first);
    expect(decodeJwt(second).azp).toBe(SDK.clientId);
  });

  it('10 concurrent callers cause one token request', async () => {
    const counting = countingFetch();
    const auth = new ServiceAccountAuth({
      tokenEndpoint: kc.tokenEndpoint(A.realm),
      clientId: SDK.clientId,
      clientSecret: SDK.secret,
      fetch: counting.fetch,
    });
    const tokens = await Promise.all(Array.from({ length: 10 }, () => auth.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(counting.tokenPosts()).toBe(1);
  });

  it('a wrong secret: ERR_TOKEN_REQUEST_REJECTED with the IdP error, the client and the endpoint; not retried; no secret', async () => {
    const wrong = 'definitely-not-the-secret';
    const sleeps: number[] = [];
    const auth = new ServiceAccountAuth({
      tokenEndpoint: kc.tokenEndpoint(A.realm),
      clientId: SDK.clientId,
      clientSecret: wrong,
      sleep: async (ms) => {
        sleeps.push(ms);
      },
    });
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_REQUEST_REJECTED');
    expect([400, 401]).toContain(err.status);
    expect(['unauthorized_client', 'invalid_client']).toContain(err.idpError);
    expect(err.attempts).toBe(1);
    expect(sleeps).toEqual([]);
    expect(err.message).toContain(`"${SDK.clientId}"`);
    expect(err.message).toContain(kc.tokenEndpoint(A.realm));
    expect(err.message).toContain(err.idpError ?? '?');
    expect(err.message).not.toContain(wrong);
  });

  it('an unreachable token endpoint: retried, then ERR_TOKEN_ENDPOINT_UNAVAILABLE', async () => {
    const sleeps: number[] = [];
    const auth = new ServiceAccountAuth({
      tokenEndpoint: 'http://127.0.0.1:1/realms/agentcube/protocol/openid-connect/token',
      clientId: SDK.clientId,
      clientSecret: SDK.secret,
      sleep: async (ms) => {
        sleeps.push(ms);
      },
    });
    const err = await rejection(auth.getToken());
    expect(err.code).toBe('ERR_TOKEN_ENDPOINT_UNAVAILABLE');
    expect(err.attempts).toBe(4);
    expect(sleeps).toHaveLength(3);
  });

  it('wrapFetch: Keycloak accepts the attached token (userinfo), for ServiceAccountAuth and TokenAuth', async () => {
    const sa = new ServiceAccountAuth({
      tokenEndpoint: kc.tokenEndpoint(A.realm),
      clientId: SDK.clientId,
      clientSecret: SDK.secret,
      scope: 'openid',
    });
    const userinfo = `${kc.issuer(A.realm)}/protocol/openid-connect/userinfo`;
    const viaSa = await sa.wrapFetch(fetch)(userinfo);
    expect(viaSa.status).toBe(200);
    expect(((await viaSa.json()) as { sub?: string }).sub).toBe(SDK.serviceAccountId);

    const viaToken = await new TokenAuth(await sa.getToken()).wrapFetch(fetch)(userinfo);
    expect(viaToken.status).toBe(200);
    await viaToken.arrayBuffer();
    const bogus = await new TokenAuth('not-a-token').wrapFetch(fetch)(userinfo);
    expect(bogus.status).toBe(401);
    await bogus.arrayBuffer();
  });
});

/** Runs a command, collecting stdout+stderr; never rejects. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, output: `${output}\n${e.message}` });
    });
  });
}

/** Counts from pytest's closing line, e.g. "57 passed, 1 skipped in 3.10s". */
function pytestSummary(output: string): Record<string, number> {
  const line = output
    .trim()
    .split('\n')
    .reverse()
    .find((l) => / in [\d.]+s\b/.test(l) && /\d+ (passed|failed|error)/.test(l));
  const counts: Record<string, number> = {};
  for (const m of (line ?? '').matchAll(/(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)/g)) {
    if (m[1] !== undefined && m[2] !== undefined) counts[m[2]] = Number(m[1]);
  }
  return counts;
}

describe('Python SDK (pytest) against Keycloak', () => {
  it('provisions the venv and passes every test, the Keycloak ones included (none skipped)', async () => {
    const prov = await run('bash', [join(REPO_ROOT, 'scripts', 'provision', 'python-sdk.sh')], process.env, 15 * 60_000);
    expect(prov.code, prov.output).toBe(0);
    const python = /^SDK_PYTHON=(.+)$/m.exec(prov.output)?.[1]?.trim();
    expect(python, prov.output).toBeDefined();

    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PORTCULLIS_KEYCLOAK_URL: kc.url,
      PORTCULLIS_KEYCLOAK_REALM: A.realm,
      PORTCULLIS_SDK_CLIENT_ID: SDK.clientId,
      PORTCULLIS_SDK_CLIENT_SECRET: SDK.secret,
      PORTCULLIS_SDK_SERVICE_ACCOUNT_ID: SDK.serviceAccountId,
      PYTHONDONTWRITEBYTECODE: '1',
    };
    const res = await run(python ?? 'python3', ['-m', 'pytest', 'sdk/python/tests', '-q', '-p', 'no:cacheprovider'], env, 10 * 60_000);
    const summary = pytestSummary(res.output);
    expect(res.code, res.output).toBe(0);
    expect(summary.passed ?? 0, res.output).toBeGreaterThanOrEqual(50);
    expect(summary.failed ?? 0).toBe(0);
    expect(summary.skipped ?? 0, res.output).toBe(0);
    expect(res.output).not.toMatch(/skipped/i);
  }, 25 * 60_000);
});

interface FederationFile {
  identityProviders: { alias: string; providerId: string }[];
  identityProviderMappers: { name: string; identityProviderAlias: string; config: Record<string, string> }[];
}

describe('cloud federation fragments import into Keycloak', () => {
  const files = readdirSync(FEDERATION_DIR).filter((f) => f.endsWith('.json')).sort();

  it('covers AWS (OIDC), Google, Azure AD OIDC and Azure AD SAML, each mapping to sandbox:invoke', () => {
    const providers = files.flatMap((f) => (JSON.parse(readFileSync(join(FEDERATION_DIR, f), 'utf8')) as FederationFile).identityProviders);
    expect(providers.map((p) => `${p.alias}:${p.providerId}`).sort()).toEqual([
      'aws-cognito:oidc',
      'azure-ad-saml:saml',
      'azure-ad:oidc',
      'google:google',
    ]);
    for (const f of files) {
      const doc = JSON.parse(readFileSync(join(FEDERATION_DIR, f), 'utf8')) as FederationFile;
      expect(doc.identityProviderMappers.some((m) => m.config.role === 'sandbox:invoke'), f).toBe(true);
    }
  });

  it.each(files)('%s: partialImport answers 200, the providers and mappers are listed after', async (file) => {
    const doc = JSON.parse(readFileSync(join(FEDERATION_DIR, file), 'utf8')) as FederationFile;
    const realm = encodeURIComponent(A.realm);
    for (let round = 1; round <= 2; round++) {
      // The second round proves a re-import is clean too (ifResourceExists: OVERWRITE).
      const res = await kc.adminFetch(`/realms/${realm}/partialImport`, { method: 'POST', body: JSON.stringify(doc) });
      const body = await res.text();
      expect(res.status, body).toBe(200);
      const result = JSON.parse(body) as { added: number; overwritten: number; skipped: number };
      expect(result.skipped, body).toBe(0);
      expect(result.added + result.overwritten, body).toBe(doc.identityProviders.length + doc.identityProviderMappers.length);
    }

    const listed = await kc.adminFetch(`/realms/${realm}/identity-provider/instances`);
    expect(listed.status).toBe(200);
    const instances = (await listed.json()) as { alias: string; providerId: string; enabled: boolean }[];
    for (const idp of doc.identityProviders) {
      expect(instances, idp.alias).toContainEqual(expect.objectContaining({ alias: idp.alias, providerId: idp.providerId, enabled: true }));
      const mres = await kc.adminFetch(`/realms/${realm}/identity-provider/instances/${encodeURIComponent(idp.alias)}/mappers`);
      expect(mres.status).toBe(200);
      const mappers = (await mres.json()) as { name: string; config: Record<string, string> }[];
      for (const m of doc.identityProviderMappers.filter((x) => x.identityProviderAlias === idp.alias)) {
        expect(mappers, m.name).toContainEqual(expect.objectContaining({ name: m.name, config: expect.objectContaining(m.config) }));
      }
    }
  });

  it('the realm login page offers every imported broker', async () => {
    // The account console is a built-in client with the browser flow (PKCE required).
    const issuer = kc.issuer(A.realm);
    const url = new URL(`${issuer}/protocol/openid-connect/auth`);
    url.search = new URLSearchParams({
      client_id: 'account-console',
      redirect_uri: `${issuer}/account/`,
      response_type: 'code',
      scope: 'openid',
      code_challenge: 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM',
      code_challenge_method: 'S256',
    }).toString();
    const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
    const html = await res.text();
    expect(res.status, html.slice(0, 500)).toBe(200);
    for (const alias of ['aws-cognito', 'azure-ad', 'azure-ad-saml', 'google']) {
      expect(html, alias).toContain(`/realms/${A.realm}/broker/${alias}/login`);
    }
  });
});
