import { execFile } from 'node:child_process';
import { ensureBuilt } from '../helpers/build.js';
import { Agent } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { checkRequest, createAuthzClient, readCheckResponse, type AuthzClient, type CheckOutcome } from '../helpers/grpc-client.js';
import { startJwksServer, JWKS_PATH, type JwksServer } from '../helpers/jwks-server.js';
import { PORTCULLIS_BIN, REPO_ROOT, startPortcullis, type PortcullisProcess } from '../helpers/portcullis-process.js';
import { userClaims } from './fixtures.js';
import { bearer, getText, httpCheck, makeTempDir, metricValue, pollUntil, scrapeMetrics, writeConfig } from './harness.js';

/**
 * The real process: `node bin/portcullis.js` built from this tree. Signals
 * (SIGHUP reload, SIGTERM drain), the `validate` command and the embedded
 * default configuration with its development issuer.
 */

function configText(idp: JwksServer, role: string, graceSeconds = 20): string {
  return `listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0 }
server: { watchConfig: false, shutdownGraceSeconds: ${graceSeconds} }
issuers:
  - name: acme
    issuer: ${idp.issuer}
    audiences: [${idp.audience}]
routes:
  - name: jobs
    match: { methods: [POST], path: "/v1/jobs/{id}/run" }
    require:
      roles: { anyOf: [${role}] }
    headers: { x-user-sub: "{sub}" }
`;
}

const RUN = { method: 'POST', path: '/v1/jobs/j1/run' };

function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [PORTCULLIS_BIN, ...args], { cwd: REPO_ROOT, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Resolves 'refused' once nothing listens on the address any more, 'open' while something accepts. */
function probe(address: string): Promise<'open' | 'refused'> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
    s.once('connect', () => {
      s.destroy();
      resolve('open');
    });
    s.once('error', () => resolve('refused'));
  });
}

async function waitReadyz(p: PortcullisProcess): Promise<void> {
  await pollUntil('/readyz 200', async () => (await getText(`http://${p.addresses.admin}/readyz`)).status === 200);
}

describe('the portcullis process', () => {
  let idp: JwksServer;
  let proc: PortcullisProcess | undefined;
  let client: AuthzClient | undefined;

  beforeAll(async () => {
    ensureBuilt();
    idp = await startJwksServer();
  });

  afterEach(async () => {
    client?.close();
    client = undefined;
    if (proc) await proc.kill();
    proc = undefined;
  });

  afterAll(async () => {
    await idp?.close();
  });

  async function decide(token: string): Promise<CheckOutcome> {
    return readCheckResponse(await (client as AuthzClient).check(checkRequest({ ...RUN, headers: bearer(token) })));
  }

  it('logs "portcullis ready" with its addresses, and SIGHUP reloads a changed file', async () => {
    proc = await startPortcullis({ config: configText(idp, 'role-x') });
    const p = proc;
    const ready = p.logs().find((l) => l.msg === 'portcullis ready');
    expect(ready).toMatchObject({ level: 'info', addresses: { grpc: p.addresses.grpc, http: p.addresses.http, admin: p.addresses.admin } });
    await waitReadyz(p);
    client = createAuthzClient(p.addresses.grpc);
    const tokenX = await idp.sign(userClaims('xavier', ['role-x']));
    const tokenY = await idp.sign(userClaims('yvonne', ['role-y']));
    expect((await decide(tokenX)).decision).toBe('allow');
    expect((await decide(tokenY)).reason).toBe('missing_role');

    writeConfig(p.configPath, configText(idp, 'role-y'));
    process.kill(p.pid, 'SIGHUP');
    await pollUntil('SIGHUP to apply the new config', async () => (await decide(tokenX)).decision === 'deny');
    expect((await decide(tokenY)).decision).toBe('allow');
    // The new config answers checks a moment before its log line has crossed the pipe to us.
    await pollUntil('the reload log line', () => p.logs().some((l) => l.msg === 'configuration reloaded'));

    // A broken file on SIGHUP is refused; the process keeps serving the last good config.
    writeConfig(p.configPath, 'listen: { grpc: nope }\n');
    process.kill(p.pid, 'SIGHUP');
    await pollUntil('the refusal', () => p.logs().some((l) => l.msg === 'configuration refused; the previous configuration keeps serving'));
    expect((await decide(tokenY)).decision).toBe('allow');
    const m = await scrapeMetrics(p.addresses.admin);
    expect(metricValue(m, 'portcullis_config_reloads_total', { result: 'invalid' })).toBe(1);

    const exit = await p.stop();
    proc = undefined;
    expect(exit).toEqual({ code: 0, signal: null });
  });

  it('SIGTERM drains: in-flight checks waiting on a slow JWKS all get answers, new connections are refused, exit 0', async () => {
    proc = await startPortcullis({ config: configText(idp, 'role-x') });
    const p = proc;
    await waitReadyz(p);
    client = createAuthzClient(p.addresses.grpc);
    const warm = await idp.sign(userClaims('warm', ['role-x']));
    expect((await decide(warm)).decision).toBe('allow');

    // The IdP rotates, and its JWKS endpoint becomes slow: answers wait behind a gate.
    idp.hold();
    await idp.addKey({ kid: `late-${p.pid}` });
    const GRPC = 6;
    const HTTP = 3;
    const tokens = await Promise.all(
      Array.from({ length: GRPC + HTTP }, (_, i) => idp.sign(userClaims(`user-${i}`, ['role-x']), { kid: `late-${p.pid}` })),
    );
    const before = await scrapeMetrics(p.addresses.admin);
    const misses = (s: string) => metricValue(s, 'portcullis_token_cache_total', { result: 'miss' });
    const jwksBefore = idp.requestCount(JWKS_PATH);

    const inflight: Promise<{ via: string; decision: string; status: number; reason: string }>[] = [];
    for (let i = 0; i < GRPC; i++) {
      inflight.push(decide(tokens[i] as string).then((o) => ({ via: 'grpc', decision: o.decision, status: o.status, reason: o.reason })));
    }
    for (let i = GRPC; i < GRPC + HTTP; i++) {
      inflight.push(
        httpCheck(p.addresses.http, { ...RUN, headers: bearer(tokens[i] as string), agent: false }).then((r) => ({
          via: 'http',
          decision: r.status === 200 ? 'allow' : 'deny',
          status: r.status,
          reason: String(r.headers['x-portcullis-reason'] ?? ''),
        })),
      );
    }
    // Every check has reached the verifier (a cache miss each) and the key fetch is parked at the gate.
    await pollUntil('all checks in flight', async () => misses(await scrapeMetrics(p.addresses.admin)) === misses(before) + GRPC + HTTP);
    await pollUntil('the JWKS request to be held', () => idp.heldCount() === 1);
    expect(idp.requestCount(JWKS_PATH)).toBe(jwksBefore + 1);

    process.kill(p.pid, 'SIGTERM');
    await pollUntil('the shutdown log line', () => p.logs().some((l) => l.msg === 'shutting down: finishing in-flight checks'));
    // No new connections while draining.
    await pollUntil('the gRPC port to refuse connections', async () => (await probe(p.addresses.grpc)) === 'refused');
    await pollUntil('the HTTP port to refuse connections', async () => (await probe(p.addresses.http)) === 'refused');
    const late = createAuthzClient(p.addresses.grpc);
    await expect(late.check(checkRequest({ ...RUN, headers: bearer(warm) }), { deadlineMs: 3_000 })).rejects.toThrow();
    late.close();

    idp.release();
    const answers = await Promise.all(inflight);
    expect(answers).toEqual(answers.map((a) => ({ via: a.via, decision: 'allow', status: 200, reason: '' })));
    const exit = await p.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(p.logs().some((l) => l.msg === 'stopped')).toBe(true);
    expect(await probe(p.addresses.grpc)).toBe('refused');
    expect(await probe(p.addresses.admin)).toBe('refused');
    proc = undefined;
  });

  it('SIGTERM drain closes pooled keep-alive HTTP connections once their in-flight answer is sent', async () => {
    // Envoy keeps http_service connections in a pool and never closes them itself; the drain must.
    // The grace period (30 s) is far beyond the deadline below, so a forced close cannot pass for a graceful one.
    proc = await startPortcullis({ config: configText(idp, 'role-x', 30) });
    const p = proc;
    await waitReadyz(p);
    const pool = new Agent({ keepAlive: true, maxSockets: 2 });
    const sockets = new Set<Socket>();
    const closed = new Set<Socket>();
    const track = (s: Socket) => {
      if (sockets.has(s)) return;
      sockets.add(s);
      s.once('close', () => closed.add(s));
    };
    try {
      idp.hold();
      await idp.addKey({ kid: `pooled-${p.pid}` });
      const tokens = await Promise.all([0, 1].map((i) => idp.sign(userClaims(`pooled-${i}`, ['role-x']), { kid: `pooled-${p.pid}` })));
      const before = await scrapeMetrics(p.addresses.admin);
      const misses = (s: string) => metricValue(s, 'portcullis_token_cache_total', { result: 'miss' });
      const inflight = tokens.map((tok) => httpCheck(p.addresses.http, { ...RUN, headers: bearer(tok), agent: pool, onSocket: track }));
      await pollUntil('both checks in flight', async () => misses(await scrapeMetrics(p.addresses.admin)) === misses(before) + 2);
      await pollUntil('the JWKS request to be held', () => idp.heldCount() === 1);

      process.kill(p.pid, 'SIGTERM');
      await pollUntil('the shutdown log line', () => p.logs().some((l) => l.msg === 'shutting down: finishing in-flight checks'));
      idp.release();
      const answers = await Promise.all(inflight);
      expect(answers.map((a) => a.status)).toEqual([200, 200]);
      expect(sockets.size).toBeGreaterThan(0);
      await pollUntil(
        'portcullis to close the pooled connections after answering (instead of waiting for the grace period)',
        () => closed.size === sockets.size,
        8_000,
      );
      const exit = await p.exited;
      expect(exit).toEqual({ code: 0, signal: null });
      proc = undefined;
    } finally {
      idp.release();
      pool.destroy();
    }
  });

  it('runs the embedded default config: a dev token is allowed on invoke and denied missing_role on /admin', async () => {
    proc = await startPortcullis({ args: ['--grpc-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0', '--admin-addr', '127.0.0.1:0'] });
    const p = proc;
    expect(p.logs().some((l) => l.msg === 'no --config given: using the embedded default configuration (development issuer enabled)')).toBe(true);
    const res = await fetch(`http://${p.addresses.admin}/dev/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ sub: 'alice', roles: ['sandbox:invoke'] }),
    });
    expect(res.status).toBe(200);
    const minted = (await res.json()) as { access_token: string; token_type: string; expires_in: number };
    expect(minted.token_type).toBe('Bearer');

    const ok = await httpCheck(p.addresses.http, { method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(minted.access_token) });
    expect(ok.status).toBe(200);
    expect(ok.headers['x-user-sub']).toBe('alice');
    expect(ok.headers['x-user-sandbox']).toBe('s1');

    const denied = await httpCheck(p.addresses.http, { method: 'GET', path: '/admin/x', headers: bearer(minted.access_token) });
    expect(denied.status).toBe(403);
    expect(denied.headers['x-portcullis-reason']).toBe('missing_role');
    expect(JSON.parse(denied.body)).toMatchObject({ error: 'missing_role' });

    client = createAuthzClient(p.addresses.grpc);
    const viaGrpc = readCheckResponse(await client.check(checkRequest({ method: 'POST', path: '/v1/sandboxes/s1/invoke', headers: bearer(minted.access_token) })));
    expect(viaGrpc).toMatchObject({ decision: 'allow', metadata: { sub: 'alice', tenant: 'dev' } });

    const exit = await p.stop();
    proc = undefined;
    expect(exit.code).toBe(0);
  });
});

describe('portcullis validate', () => {
  let dir: ReturnType<typeof makeTempDir>;
  beforeAll(() => {
    dir = makeTempDir('portcullis-validate-');
  });
  afterAll(() => dir?.remove());

  const good = `listen: { grpc: 127.0.0.1:9191, http: 127.0.0.1:9192, admin: 127.0.0.1:9901 }
issuers:
  - name: acme
    issuer: https://idp.example/realms/acme
    audiences: [router]
routes:
  - name: jobs
    match: { methods: [POST], path: "/v1/jobs/{id}/run" }
    issuers: [acme]
    require:
      roles: { anyOf: [role-x] }
`;

  it('exits 0 on a good file', async () => {
    const file = join(dir.dir, 'good.yaml');
    writeConfig(file, good);
    const r = await runCli(['validate', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${file}: ok`);
  });

  it('exits 1 on a bad file and prints each problem with its path', async () => {
    const file = join(dir.dir, 'bad.yaml');
    writeConfig(
      file,
      `listen: { grpc: not-an-address, admin: 127.0.0.1:9901 }
issuers:
  - name: acme
    issuer: not a url
    audiences: []
    algorithms: [none, HS256]
routes:
  - name: jobs
    allow: sometimes
    match: { path: "/v1/jobs/{id}/run" }
    credentials: [carrier-pigeon]
`,
    );
    const r = await runCli(['validate', file]);
    expect(r.code).toBe(1);
    const out = r.stdout + r.stderr;
    for (const path of [
      'listen.grpc',
      'issuers[0].issuer',
      'issuers[0].audiences',
      'issuers[0].algorithms[0]',
      'issuers[0].algorithms[1]',
      'routes[0].allow',
      'routes[0].credentials[0]',
    ]) {
      expect(out, path).toMatch(new RegExp(`^\\s*- ${path.replace(/[[\].]/g, '\\$&')}: `, 'm'));
    }
  });

  it('prints structural and cross-reference problems of one file together', async () => {
    const file = join(dir.dir, 'mixed.yaml');
    writeConfig(file, good.replace('grpc: 127.0.0.1:9191', 'grpc: not-an-address').replace('issuers: [acme]', 'issuers: [nobody]'));
    const r = await runCli(['validate', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^\s*- listen\.grpc: /m);
    expect(r.stdout).toMatch(/^\s*- routes\[0\]\.issuers\[0\]: .*nobody/m);
  });

  it('reports an unquoted path template in a flow mapping as a YAML problem with its line', async () => {
    const file = join(dir.dir, 'unquoted.yaml');
    writeConfig(file, good.replace('path: "/v1/jobs/{id}/run"', 'path: /v1/jobs/{id}/run'));
    const r = await runCli(['validate', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/line \d+, column \d+: YAML: .*must be quoted/);
  });
});
