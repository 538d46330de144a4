import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { decodeProtectedHeader, SignJWT, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type Addresses, type App } from '../../src/app.js';
import type { Clock } from '../../src/core/types.js';
import { checkRequest, createAuthzClient, readCheckResponse, type AuthzClient, type CheckOutcome, type RequestSpec } from '../helpers/grpc-client.js';
import { startJwksServer, type JwksServer } from '../helpers/jwks-server.js';
import { decodeSegment, splitToken } from '../helpers/tokens.js';
import { getText, issuerEntry, LogSink, LOOPBACK_LISTEN, makeTempDir, pollUntil, writeConfig } from './harness.js';

/**
 * The hybrid hop mode end to end between two portcullis instances: A (in
 * front of the Router) mints hop tokens and publishes their keys on its admin
 * port; B (in front of PicoD) trusts A as an ordinary issuer via that JWKS.
 */

const HOP_ISS = 'https://portcullis.agentcube-system.svc/hop';

interface Running {
  app: App;
  addresses: Addresses;
  grpc: AuthzClient;
  logs: LogSink;
  stop(): Promise<void>;
}

async function start(config: Record<string, unknown>, clock?: Clock): Promise<Running> {
  const tmp = makeTempDir('portcullis-hop-it-');
  const configPath = join(tmp.dir, 'portcullis.yaml');
  writeConfig(configPath, config);
  const logs = new LogSink();
  let app: App;
  let addresses: Addresses;
  try {
    app = createApp({ configPath, logDestination: logs, defaultMetrics: false, clock });
    addresses = await app.start();
  } catch (err) {
    tmp.remove();
    throw err;
  }
  const grpc = createAuthzClient(addresses.grpc);
  await pollUntil('issuer keys to load', () => app.readiness().ready || undefined);
  return {
    app,
    addresses,
    grpc,
    logs,
    async stop() {
      grpc.close();
      await app.stop();
      tmp.remove();
    },
  };
}

async function check(r: Running, spec: RequestSpec): Promise<CheckOutcome> {
  return readCheckResponse(await r.grpc.check(checkRequest(spec)));
}

function bearerOf(o: CheckOutcome): string {
  expect(o.decision).toBe('allow');
  const v = o.headers.authorization;
  expect(v).toMatch(/^Bearer /);
  return (v as string).slice('Bearer '.length);
}

describe('hop tokens between two portcullis instances', () => {
  let idp: JwksServer;
  let a: Running;
  let b: Running;
  /** B's clock runs this far ahead of the real one (to see A's tokens expire without waiting). */
  let bSkewMs = 0;

  beforeAll(async () => {
    idp = await startJwksServer({ audience: 'router', alg: 'ES256' });
    a = await start({
      listen: { ...LOOPBACK_LISTEN },
      server: { watchConfig: false, shutdownGraceSeconds: 2 },
      issuers: [issuerEntry('acme', idp)],
      hopTokens: { issuer: HOP_ISS, ttlSeconds: 120, marginSeconds: 10 },
      hops: {
        picod: { mode: 'jwt', audience: 'picod' },
        wlm: { mode: 'jwt', audience: 'workloadmanager' },
      },
      routes: [
        { name: 'invoke', match: { methods: ['POST'], path: '/v1/sandboxes/{id}/invoke' }, hop: { to: 'picod' } },
        { name: 'manage', match: { methods: ['POST'], path: '/v1/sandboxes/{id}' }, hop: { to: 'wlm' } },
      ],
    });
    const bClock: Clock = { now: () => Date.now() + bSkewMs };
    b = await start(
      {
        listen: { ...LOOPBACK_LISTEN, http: 'off' },
        server: { watchConfig: false, shutdownGraceSeconds: 2 },
        issuers: [
          {
            name: 'portcullis-hop',
            issuer: HOP_ISS,
            jwksUri: `http://${a.addresses.admin}/.well-known/jwks.json`,
            audiences: ['picod'],
            algorithms: ['ES256'],
            clockSkewSeconds: 0,
          },
        ],
        routes: [
          {
            name: 'picod-exec',
            match: { path: '/api/{id}/**' },
            headers: { 'x-hop-target': '{claims.target}', 'x-hop-user': '{claims.qualified_sub}' },
          },
        ],
      },
      bClock,
    );
  });

  afterAll(async () => {
    await b?.stop();
    await a?.stop();
    await idp?.close();
  });

  it('A publishes its hop-token keys at /.well-known/jwks.json on the admin port (public keys only)', async () => {
    const r = await getText(`http://${a.addresses.admin}/.well-known/jwks.json`);
    expect(r.status).toBe(200);
    const body = JSON.parse(r.text) as { keys: JWK[] };
    expect(body.keys.length).toBeGreaterThanOrEqual(1);
    for (const k of body.keys) {
      expect(k).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
      expect(k.kid).toBeTruthy();
      expect(k.d).toBeUndefined();
    }
  });

  it('the token A injects (from its allow response) is accepted by B', async () => {
    const user = await idp.sign({ sub: 'alice' });
    const fromA = await check(a, { method: 'POST', path: '/v1/sandboxes/sb-42/invoke', headers: { authorization: `Bearer ${user}` } });
    const hop = bearerOf(fromA);
    expect(hop).not.toBe(user);
    const [, payload] = splitToken(hop);
    expect(decodeSegment(payload)).toMatchObject({ iss: HOP_ISS, aud: 'picod', sub: 'alice', tenant: 'acme', qualified_sub: 'acme/alice', target: 'sb-42' });
    const body = JSON.parse((await getText(`http://${a.addresses.admin}/.well-known/jwks.json`)).text) as { keys: JWK[] };
    expect(body.keys.map((k) => k.kid)).toContain(decodeProtectedHeader(hop).kid);

    const atB = await check(b, { method: 'POST', host: 'picod.sb-42', path: '/api/sb-42/exec', headers: { authorization: `Bearer ${hop}` } });
    expect(atB.decision).toBe('allow');
    expect(atB.headers).toMatchObject({ 'x-portcullis-sub': 'alice', 'x-portcullis-tenant': 'portcullis-hop', 'x-hop-target': 'sb-42', 'x-hop-user': 'acme/alice' });
  });

  it('a token A minted for another audience (the workloadmanager hop) is refused by B with audience_mismatch', async () => {
    const user = await idp.sign({ sub: 'alice' });
    const forWlm = bearerOf(await check(a, { method: 'POST', path: '/v1/sandboxes/sb-42', headers: { authorization: `Bearer ${user}` } }));
    expect(decodeSegment(splitToken(forWlm)[1])).toMatchObject({ aud: 'workloadmanager' });
    const atB = await check(b, { path: '/api/sb-42/exec', headers: { authorization: `Bearer ${forWlm}` } });
    expect({ decision: atB.decision, status: atB.status, reason: atB.reason }).toEqual({ decision: 'deny', status: 401, reason: 'audience_mismatch' });
  });

  it('B refuses a token signed by a key A never published, and a forged signature under A\'s kid', async () => {
    const user = await idp.sign({ sub: 'alice' });
    const real = bearerOf(await check(a, { method: 'POST', path: '/v1/sandboxes/sb-1/invoke', headers: { authorization: `Bearer ${user}` } }));
    const claims = decodeSegment(splitToken(real)[1]);
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const unknownKid = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: 'hop-not-published' }).sign(privateKey);
    const forged = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: decodeProtectedHeader(real).kid }).sign(privateKey);
    const r1 = await check(b, { path: '/api/sb-1/exec', headers: { authorization: `Bearer ${unknownKid}` } });
    expect({ decision: r1.decision, reason: r1.reason }).toEqual({ decision: 'deny', reason: 'unknown_kid' });
    const r2 = await check(b, { path: '/api/sb-1/exec', headers: { authorization: `Bearer ${forged}` } });
    expect({ decision: r2.decision, reason: r2.reason }).toEqual({ decision: 'deny', reason: 'signature_invalid' });
  });

  it('B refuses A\'s token once it has expired', async () => {
    const user = await idp.sign({ sub: 'bob' });
    const hop = bearerOf(await check(a, { method: 'POST', path: '/v1/sandboxes/sb-7/invoke', headers: { authorization: `Bearer ${user}` } }));
    expect((await check(b, { path: '/api/sb-7/exec', headers: { authorization: `Bearer ${hop}` } })).decision).toBe('allow');
    bSkewMs = 121_000;
    try {
      const r = await check(b, { path: '/api/sb-7/exec', headers: { authorization: `Bearer ${hop}` } });
      expect({ decision: r.decision, reason: r.reason }).toEqual({ decision: 'deny', reason: 'token_expired' });
    } finally {
      bSkewMs = 0;
    }
  });
});
