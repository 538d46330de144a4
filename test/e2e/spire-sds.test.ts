/**
 * End to end: a real SPIRE server and agent (join_token node attestation, unix
 * workload attestation), three real Envoys from envoy/sidecars/ getting their
 * certificates over SDS from the agent socket, each running as its own system
 * user (entries select `unix:uid:N`), and the real portcullis (in-process) asked
 * by the ingress Envoys:
 *
 *   test ──▶ router-egress (uid portcullis-router)
 *              ├─ mTLS ─▶ workloadmanager-ingress (uid portcullis-workloadmanager) ──▶ echo
 *              └─ mTLS ─▶ picod-ingress (uid portcullis-picod) ──▶ echo
 *                              both ──ext_authz gRPC──▶ portcullis (createApp)
 *
 * Needs root (to run Envoys as other users). SPIRE and Envoy are installed by
 * their provisioning scripts on first use (SPIRE: a Go build of several minutes).
 */
import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify } from 'yaml';
import { createApp, type App } from '../../src/app.js';
import { startEchoUpstream, type EchoUpstream } from '../helpers/echo-upstream.js';
import { REPO_ROOT, sendRequest } from '../helpers/envoy.js';
import {
  ensureSpire,
  startSidecar,
  startSpiffeHelper,
  startSpire,
  validateSidecar,
  waitFor,
  workloadUser,
  writeFileSds,
  type Sidecar,
  type SpiffeHelper,
  type Spire,
  type WorkloadUser,
} from '../helpers/spire.js';

const TD = 'cluster.local';
const ID = {
  router: `spiffe://${TD}/ns/agentcube-system/sa/router`,
  workloadmanager: `spiffe://${TD}/ns/agentcube-system/sa/workloadmanager`,
  // PicoD runs in its sandbox's namespace; the Router's egress accepts any.
  picod: `spiffe://${TD}/ns/team-a/sa/picod`,
  // Registered in SPIRE, but not allowed on the peer-restricted route.
  intruder: `spiffe://${TD}/ns/agentcube-system/sa/intruder`,
  portcullis: `spiffe://${TD}/ns/agentcube-system/sa/portcullis`,
} as const;

const isRoot = process.getuid?.() === 0;

describe('envoy/sidecars: every committed config passes envoy --mode validate', () => {
  it.each([
    'router-egress.yaml',
    'workloadmanager-ingress.yaml',
    'picod-ingress.yaml',
    'router-egress-files.yaml',
    'workloadmanager-ingress-files.yaml',
    'picod-ingress-files.yaml',
  ])('%s', async (file) => {
    expect(await validateSidecar(file)).toContain('OK');
  }, 120_000);
});

describe('deploy/spire: the server and agent configs pass spire-server / spire-agent validate', () => {
  it.each([
    ['spire-server.yaml', 'spire-server', 'server.conf', 'server'],
    ['spire-agent.yaml', 'spire-agent', 'agent.conf', 'agent'],
  ] as const)('%s ConfigMap %s: %s', async (file, configMap, key, which) => {
    const binaries = await ensureSpire();
    const docs = parseAllDocuments(await readFile(join(REPO_ROOT, 'deploy', 'spire', file), 'utf8')).map((d) => d.toJS() as unknown);
    const cm = docs.find((d): d is { kind: string; metadata: { name: string }; data: Record<string, string> } =>
      typeof d === 'object' && d !== null && (d as { kind?: unknown }).kind === 'ConfigMap' && (d as { metadata?: { name?: unknown } }).metadata?.name === configMap);
    const text = cm?.data[key];
    expect(text).toBeTruthy();
    const dir = await mkdtemp(join(tmpdir(), 'portcullis-spire-validate-'));
    try {
      await writeFile(join(dir, key), text ?? '');
      const r = await run(which === 'server' ? binaries.server : binaries.agent, ['validate', '-config', join(dir, key)]);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/configuration file is valid/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 40 * 60_000);
});

/** pino destination that keeps parsed lines. */
class LogSink {
  readonly lines: Record<string, unknown>[] = [];
  write(msg: string): void {
    for (const line of msg.split('\n')) {
      if (!line.trim()) continue;
      try {
        this.lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        this.lines.push({ msg: line });
      }
    }
  }
  decisions(): Record<string, unknown>[] {
    return this.lines.filter((l) => l.msg === 'decision');
  }
}

const ROUTE_HEADER = { 'x-portcullis-route': '{route}' };

/**
 * portcullis in-process (createApp) with anonymous routes for now, the route
 * name as a header, and one route only the Router may call (peer stage).
 */
async function startPortcullis(listenTls?: Record<string, unknown>): Promise<{ app: App; logs: LogSink; grpcPort: number; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-spire-e2e-'));
  const configPath = join(dir, 'portcullis.yaml');
  await writeFile(
    configPath,
    stringify({
      listen: { grpc: '127.0.0.1:0', http: 'off', admin: '127.0.0.1:0', ...(listenTls ? { tls: listenTls } : {}) },
      server: { watchConfig: false },
      routes: [
        { name: 'router-only', match: { path: '/v1/internal/**' }, allow: 'anonymous', require: { peers: [ID.router] }, headers: ROUTE_HEADER },
        { name: 'workloadmanager-list', match: { path: '/v1/sandboxes' }, allow: 'anonymous', headers: ROUTE_HEADER },
        { name: 'workloadmanager', match: { path: '/v1/sandboxes/**' }, allow: 'anonymous', headers: ROUTE_HEADER },
        { name: 'picod', match: { path: '/api/**' }, allow: 'anonymous', headers: ROUTE_HEADER },
      ],
    }),
  );
  const logs = new LogSink();
  const app = createApp({ configPath, logDestination: logs, defaultMetrics: false });
  const addresses = await app.start();
  return { app, logs, grpcPort: Number(addresses.grpc.split(':').pop()), dir };
}

interface TlsAttempt {
  ok: boolean;
  status?: number;
  error?: string;
}

/** One HTTPS request straight to an ingress Envoy, optionally with a client certificate. */
function directHttps(port: number, client?: { cert: string; key: string }): Promise<TlsAttempt> {
  return new Promise((resolvePromise) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path: '/v1/sandboxes',
        method: 'GET',
        agent: false,
        timeout: 5000,
        // The test checks the server side (client authentication), not the server's certificate.
        rejectUnauthorized: false,
        ...(client ?? {}),
      },
      (res) => {
        res.resume();
        res.on('end', () => resolvePromise({ ok: true, status: res.statusCode }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err: NodeJS.ErrnoException) => resolvePromise({ ok: false, error: `${err.code ?? ''} ${err.message}` }));
    req.end();
  });
}

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((res) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      res({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: `${stdout}${stderr}` });
    });
  });
}

describe.skipIf(!isRoot)('SPIRE + Envoy SDS: Router → WorkloadManager / PicoD over mTLS, portcullis sees the peer', () => {
  let spire: Spire;
  let app: App;
  let logs: LogSink;
  let tmp: string;
  let wmEcho: EchoUpstream;
  let picodEcho: EchoUpstream;
  let wmIngress: Sidecar;
  let picodIngress: Sidecar;
  let routerEgress: Sidecar;
  const timings: Record<string, number> = {};
  const sidecars: Sidecar[] = [];

  const egressUrl = (listener: string): string => `http://127.0.0.1:${routerEgress.port(listener)}`;

  beforeAll(async () => {
    const t0 = Date.now();
    const binaries = await ensureSpire();
    timings.provisionSpireMs = binaries.provisionMs;
    const users: Record<'router' | 'workloadmanager' | 'picod' | 'intruder', WorkloadUser> = {
      router: workloadUser(binaries, 'portcullis-router'),
      workloadmanager: workloadUser(binaries, 'portcullis-workloadmanager'),
      picod: workloadUser(binaries, 'portcullis-picod'),
      intruder: workloadUser(binaries, 'portcullis-intruder'),
    };

    spire = await startSpire({ trustDomain: TD });
    timings.spireServerReadyMs = spire.timings.serverReadyMs;
    timings.spireAgentReadyMs = spire.timings.agentReadyMs;
    for (const [k, user] of Object.entries(users) as [keyof typeof ID, WorkloadUser][]) {
      await spire.createEntry({ spiffeId: ID[k], selectors: [`unix:uid:${user.uid}`] });
    }
    const svidWaits = await Promise.all(
      (Object.entries(users) as [keyof typeof ID, WorkloadUser][]).map(([k, user]) => spire.waitForSvid(ID[k], user)),
    );
    timings.entryToSvidMaxMs = Math.max(...svidWaits);

    // The real portcullis, in-process.
    const pc = await startPortcullis();
    app = pc.app;
    logs = pc.logs;
    tmp = pc.dir;
    const grpcPort = pc.grpcPort;

    wmEcho = await startEchoUpstream();
    picodEcho = await startEchoUpstream();

    const ingress = (file: string, user: WorkloadUser, echo: EchoUpstream, id: string): Promise<Sidecar> =>
      startSidecar({
        file,
        user,
        agentSocketPath: spire.agentSocketPath,
        clusters: { local_app: { host: '127.0.0.1', port: echo.port }, portcullis_grpc: { host: '127.0.0.1', port: grpcPort } },
        // portcullis runs here without its own TLS listener (that is covered elsewhere).
        plaintextClusters: ['portcullis_grpc'],
        expectCertificates: [id],
      });
    [wmIngress, picodIngress] = await Promise.all([
      ingress('workloadmanager-ingress.yaml', users.workloadmanager, wmEcho, ID.workloadmanager),
      ingress('picod-ingress.yaml', users.picod, picodEcho, ID.picod),
    ]);
    sidecars.push(wmIngress, picodIngress);
    timings.ingressSidecarStartupMs = Math.max(wmIngress.startupMs, picodIngress.startupMs);
    routerEgress = await startSidecar({
      file: 'router-egress.yaml',
      user: users.router,
      agentSocketPath: spire.agentSocketPath,
      clusters: { workloadmanager: { host: '127.0.0.1', port: wmIngress.port('ingress') } },
      expectCertificates: [ID.router],
    });
    sidecars.push(routerEgress);
    timings.egressSidecarStartupMs = routerEgress.startupMs;
    timings.setupTotalMs = Date.now() - t0;
  }, 45 * 60_000);

  afterAll(async () => {
    for (const s of sidecars) await s.stop();
    await app?.stop();
    await wmEcho?.close();
    await picodEcho?.close();
    await spire?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
    console.info(`[spire-sds e2e timings] ${JSON.stringify(timings)}`);
  }, 60_000);

  it('each Envoy holds the SVID registered for its uid, and only that one', async () => {
    expect(await routerEgress.certificateUris()).toContain(ID.router);
    expect(await wmIngress.certificateUris()).toContain(ID.workloadmanager);
    expect(await picodIngress.certificateUris()).toContain(ID.picod);
    for (const other of [ID.workloadmanager, ID.picod, ID.intruder]) {
      expect(await routerEgress.certificateUris()).not.toContain(other);
    }
  });

  it('a request through the Router egress reaches the WorkloadManager over mTLS, and portcullis sees the Router as peer', async () => {
    const before = wmEcho.count();
    const t = Date.now();
    const res = await sendRequest({ url: egressUrl('egress_workloadmanager'), method: 'POST', path: '/v1/sandboxes/sb-1/start', body: '{}' });
    timings.firstRequestMs = Date.now() - t;
    expect(res.status).toBe(200);
    expect(wmEcho.count()).toBe(before + 1);
    const seen = wmEcho.last();
    expect(seen?.path).toBe('/v1/sandboxes/sb-1/start');
    // portcullis allowed it on the named route ...
    expect(seen?.headers['x-portcullis-route']).toBe('workloadmanager');
    // ... and the WorkloadManager's Envoy tells the app who called (peer certificate URI SAN).
    expect(String(seen?.headers['x-forwarded-client-cert'])).toContain(`URI=${ID.router}`);

    const decision = logs.decisions().find((l) => l.path === '/v1/sandboxes/sb-1/start');
    expect(decision).toMatchObject({ decision: 'allow', route: 'workloadmanager', peer: ID.router });

    const out = await routerEgress.waitForAccessLog((l) => l.path === '/v1/sandboxes/sb-1/start');
    expect(out).toMatchObject({ status: 200, upstream_peer_uri_san: ID.workloadmanager });
    const inb = await wmIngress.waitForAccessLog((l) => l.path === '/v1/sandboxes/sb-1/start');
    expect(inb).toMatchObject({ status: 200, peer_uri_san: ID.router });
  });

  it('the PicoD hop: the Router names the sandbox address, the PicoD Envoy (any namespace) is accepted', async () => {
    const res = await sendRequest({
      url: egressUrl('egress_picod'),
      path: '/api/execute',
      method: 'POST',
      headers: { 'x-picod-address': `127.0.0.1:${picodIngress.port('ingress')}` },
      body: '{"cmd":"true"}',
    });
    expect(res.status).toBe(200);
    expect(picodEcho.last()?.path).toBe('/api/execute');
    expect(picodEcho.last()?.headers['x-portcullis-route']).toBe('picod');
    expect(logs.decisions().find((l) => l.path === '/api/execute')).toMatchObject({ decision: 'allow', peer: ID.router });
    const out = await routerEgress.waitForAccessLog((l) => l.path === '/api/execute');
    expect(out.upstream_peer_uri_san).toBe(ID.picod);
  });

  it('the Router egress refuses a server with the wrong SPIFFE ID (PicoD hop pointed at the WorkloadManager)', async () => {
    const before = wmEcho.count();
    const res = await sendRequest({
      url: egressUrl('egress_picod'),
      path: '/api/execute-wrong-server',
      headers: { 'x-picod-address': `127.0.0.1:${wmIngress.port('ingress')}` },
    });
    expect(res.status).toBe(503);
    expect(wmEcho.count()).toBe(before);
    const out = await routerEgress.waitForAccessLog((l) => l.path === '/api/execute-wrong-server');
    expect(String(out.upstream_failure)).toMatch(/CERTIFICATE_VERIFY_FAILED|verify/i);
  });

  it('a client without a SPIRE identity is rejected at the TLS layer (no certificate)', async () => {
    const decisions = logs.decisions().length;
    const before = wmEcho.count();
    const attempt = await directHttps(wmIngress.port('ingress'));
    expect(attempt.ok).toBe(false);
    expect(attempt.error).toMatch(/CERTIFICATE_REQUIRED|certificate required|ECONNRESET|socket hang up|handshake/i);
    // curl agrees: 35 (handshake failed), 55 (send failed) or 56 (receive failed: the server's alert),
    // depending on when the TLS 1.3 server's certificate_required alert arrives.
    const curl = await run('curl', ['-sk', '-o', '/dev/null', '--max-time', '5', `https://127.0.0.1:${wmIngress.port('ingress')}/v1/sandboxes`]);
    expect([35, 55, 56]).toContain(curl.code);
    expect(wmEcho.count()).toBe(before);
    expect(logs.decisions().length).toBe(decisions);
  });

  it("a certificate claiming the Router's SPIFFE ID from another CA is rejected at the TLS layer", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'portcullis-spoof-'));
    try {
      const key = join(dir, 'key.pem');
      const cert = join(dir, 'cert.pem');
      const gen = await run('openssl', [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
        '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=spoof',
        '-addext', `subjectAltName=URI:${ID.router}`,
      ]);
      expect(gen.code, gen.out).toBe(0);
      const before = wmEcho.count();
      const attempt = await directHttps(wmIngress.port('ingress'), {
        cert: await readFile(cert, 'utf8'),
        key: await readFile(key, 'utf8'),
      });
      expect(attempt.ok).toBe(false);
      expect(attempt.error).toMatch(/UNKNOWN_CA|unknown ca|ECONNRESET|socket hang up|alert/i);
      expect(wmEcho.count()).toBe(before);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  describe('peer policy: another registered workload', () => {
    let intruderEgress: Sidecar;

    beforeAll(async () => {
      const binaries = await ensureSpire();
      // The Router's egress config, run by another workload with its own SVID.
      intruderEgress = await startSidecar({
        file: 'router-egress.yaml',
        user: workloadUser(binaries, 'portcullis-intruder'),
        agentSocketPath: spire.agentSocketPath,
        replace: { [ID.router]: ID.intruder },
        clusters: { workloadmanager: { host: '127.0.0.1', port: wmIngress.port('ingress') } },
        expectCertificates: [ID.intruder],
      });
      sidecars.push(intruderEgress);
    }, 120_000);

    it('completes mTLS (same trust domain) but portcullis answers 403 on a route only the Router may call', async () => {
      const before = wmEcho.count();
      const res = await sendRequest({ url: `http://127.0.0.1:${intruderEgress.port('egress_workloadmanager')}`, path: '/v1/internal/drain' });
      expect(res.status).toBe(403);
      expect(res.headers['x-portcullis-reason']).toBe('peer_not_allowed');
      expect(wmEcho.count()).toBe(before);
      await waitFor('the deny in the decision log', Date.now() + 5000, () =>
        logs.decisions().some((l) => l.path === '/v1/internal/drain' && l.decision === 'deny'),
      );
      expect(logs.decisions().find((l) => l.path === '/v1/internal/drain')).toMatchObject({ peer: ID.intruder, reason: 'peer_not_allowed' });

      const ok = await sendRequest({ url: egressUrl('egress_workloadmanager'), path: '/v1/internal/drain' });
      expect(ok.status).toBe(200);
      expect(wmEcho.last()?.headers['x-portcullis-route']).toBe('router-only');
    });
  });
});

describe.skipIf(!isRoot)('SPIRE SVID rotation (20 s TTL) during traffic', () => {
  const TTL_SECONDS = 20;
  let spire: Spire;
  let pc: Awaited<ReturnType<typeof startPortcullis>>;
  let echo: EchoUpstream;
  let wm: Sidecar;
  let router: Sidecar;

  beforeAll(async () => {
    const binaries = await ensureSpire();
    const routerUser = workloadUser(binaries, 'portcullis-router');
    const wmUser = workloadUser(binaries, 'portcullis-workloadmanager');
    spire = await startSpire({ trustDomain: TD, x509SvidTtlSeconds: TTL_SECONDS });
    await spire.createEntry({ spiffeId: ID.router, selectors: [`unix:uid:${routerUser.uid}`] });
    await spire.createEntry({ spiffeId: ID.workloadmanager, selectors: [`unix:uid:${wmUser.uid}`] });
    await Promise.all([spire.waitForSvid(ID.router, routerUser), spire.waitForSvid(ID.workloadmanager, wmUser)]);
    pc = await startPortcullis();
    echo = await startEchoUpstream();
    wm = await startSidecar({
      file: 'workloadmanager-ingress.yaml',
      user: wmUser,
      agentSocketPath: spire.agentSocketPath,
      clusters: { local_app: { host: '127.0.0.1', port: echo.port }, portcullis_grpc: { host: '127.0.0.1', port: pc.grpcPort } },
      plaintextClusters: ['portcullis_grpc'],
      expectCertificates: [ID.workloadmanager],
    });
    router = await startSidecar({
      file: 'router-egress.yaml',
      user: routerUser,
      agentSocketPath: spire.agentSocketPath,
      clusters: { workloadmanager: { host: '127.0.0.1', port: wm.port('ingress') } },
      expectCertificates: [ID.router],
    });
  }, 5 * 60_000);

  afterAll(async () => {
    await router?.stop();
    await wm?.stop();
    await echo?.close();
    await pc?.app.stop();
    if (pc) await rm(pc.dir, { recursive: true, force: true });
    await spire?.stop();
  }, 60_000);

  it('the agent pushes renewed SVIDs to both Envoys over SDS; no request fails, no Envoy restarts', async () => {
    const serialsOf = async (s: Sidecar, id: string): Promise<string[]> =>
      // One entry per TLS context that uses the SVID; the same certificate may appear more than once.
      [...new Set((await s.ownCertificates()).filter((c) => c.uris.includes(id)).map((c) => c.serial))];
    const first = { wm: await serialsOf(wm, ID.workloadmanager), router: await serialsOf(router, ID.router) };
    expect(first.wm).toHaveLength(1);
    expect(first.router).toHaveLength(1);
    const pids = [wm.pid, router.pid];
    const statuses: number[] = [];
    const started = Date.now();
    // Bounded by count and time: the agent renews at half the TTL (≈10 s here).
    const deadline = started + 4 * TTL_SECONDS * 1000;
    let rotatedAt = 0;
    for (let i = 0; i < 20_000 && Date.now() < deadline; i++) {
      const r = await sendRequest({ url: `http://127.0.0.1:${router.port('egress_workloadmanager')}`, path: `/v1/sandboxes/rot-${i}` });
      statuses.push(r.status);
      if (!rotatedAt && i % 10 === 0) {
        const [w, rt] = await Promise.all([serialsOf(wm, ID.workloadmanager), serialsOf(router, ID.router)]);
        if (w.length === 1 && rt.length === 1 && w[0] !== first.wm[0] && rt[0] !== first.router[0]) rotatedAt = Date.now();
      }
      // Keep going a little after both rotated, on the new certificates.
      if (rotatedAt && Date.now() - rotatedAt > 1000) break;
    }
    expect(rotatedAt, 'both SVIDs rotated before the deadline').toBeGreaterThan(0);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect([wm.pid, router.pid]).toEqual(pids);
    console.info(`[spire rotation e2e] both SVIDs renewed ${rotatedAt - started} ms into the traffic; ${statuses.length} requests, all 200`);
  }, 5 * 60_000);
});

describe.skipIf(!isRoot)('SPIRE mode, every hop mTLS: Envoy → portcullis too, with files written by spiffe-helper', () => {
  // Short enough that every SVID (both Envoys', portcullis's files) renews during the test.
  const TTL_SECONDS = 20;
  let spire: Spire;
  let helper: SpiffeHelper;
  let pc: Awaited<ReturnType<typeof startPortcullis>>;
  let echo: EchoUpstream;
  let wm: Sidecar;
  let router: Sidecar;

  /** Serial of the certificate portcullis serves on a fresh handshake (client: portcullis's own SVID files). */
  const servedSerial = async (): Promise<string> => {
    const [cert, key, ca] = await Promise.all([readFile(helper.certFile, 'utf8'), readFile(helper.keyFile, 'utf8'), readFile(helper.caFile, 'utf8')]);
    return new Promise((resolvePromise, reject) => {
      const sock = tlsConnect({ host: '127.0.0.1', port: pc.grpcPort, ca, cert, key, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
      sock.once('secureConnect', () => {
        resolvePromise(sock.getPeerCertificate().serialNumber);
        sock.destroy();
      });
      sock.once('error', reject);
    });
  };

  beforeAll(async () => {
    const binaries = await ensureSpire();
    const u = {
      router: workloadUser(binaries, 'portcullis-router'),
      wm: workloadUser(binaries, 'portcullis-workloadmanager'),
      authz: workloadUser(binaries, 'portcullis-authz'),
    };
    spire = await startSpire({ trustDomain: TD, x509SvidTtlSeconds: TTL_SECONDS });
    await spire.createEntry({ spiffeId: ID.router, selectors: [`unix:uid:${u.router.uid}`] });
    await spire.createEntry({ spiffeId: ID.workloadmanager, selectors: [`unix:uid:${u.wm.uid}`] });
    await spire.createEntry({ spiffeId: ID.portcullis, selectors: [`unix:uid:${u.authz.uid}`] });
    await Promise.all([
      spire.waitForSvid(ID.router, u.router),
      spire.waitForSvid(ID.workloadmanager, u.wm),
      spire.waitForSvid(ID.portcullis, u.authz),
    ]);
    helper = await startSpiffeHelper(spire, { user: u.authz, spiffeId: ID.portcullis });
    pc = await startPortcullis({
      certFile: helper.certFile,
      keyFile: helper.keyFile,
      caFile: helper.caFile,
      allowedClients: [ID.workloadmanager],
      reloadSeconds: 1,
    });
    echo = await startEchoUpstream();
    // The committed config as is: portcullis_grpc keeps its mTLS transport socket.
    wm = await startSidecar({
      file: 'workloadmanager-ingress.yaml',
      user: u.wm,
      agentSocketPath: spire.agentSocketPath,
      clusters: { local_app: { host: '127.0.0.1', port: echo.port }, portcullis_grpc: { host: '127.0.0.1', port: pc.grpcPort } },
      expectCertificates: [ID.workloadmanager],
    });
    router = await startSidecar({
      file: 'router-egress.yaml',
      user: u.router,
      agentSocketPath: spire.agentSocketPath,
      clusters: { workloadmanager: { host: '127.0.0.1', port: wm.port('ingress') } },
      expectCertificates: [ID.router],
    });
  }, 5 * 60_000);

  afterAll(async () => {
    await router?.stop();
    await wm?.stop();
    await echo?.close();
    await pc?.app.stop();
    if (pc) await rm(pc.dir, { recursive: true, force: true });
    await helper?.stop();
    await spire?.stop();
  }, 60_000);

  it('Router → WorkloadManager → portcullis, every hop on SPIRE identities', async () => {
    const res = await sendRequest({ url: `http://127.0.0.1:${router.port('egress_workloadmanager')}`, path: '/v1/sandboxes/all-mtls' });
    expect(res.status, res.body).toBe(200);
    expect(echo.last()?.headers['x-portcullis-route']).toBe('workloadmanager');
    expect(pc.logs.decisions().find((l) => l.path === '/v1/sandboxes/all-mtls')).toMatchObject({ decision: 'allow', peer: ID.router });
    expect(await servedSerial()).toBe(await helper.currentSerial());
  });

  it('all three SVIDs renew during traffic (spiffe-helper rewrites portcullis\'s files); no request fails', async () => {
    const uniq = async (s: Sidecar, id: string): Promise<string[]> =>
      [...new Set((await s.ownCertificates()).filter((c) => c.uris.includes(id)).map((c) => c.serial))];
    const first = { wm: await uniq(wm, ID.workloadmanager), router: await uniq(router, ID.router), pc: await servedSerial() };
    const statuses: number[] = [];
    const started = Date.now();
    const deadline = started + 4 * TTL_SECONDS * 1000;
    let done = 0;
    for (let i = 0; i < 20_000 && Date.now() < deadline; i++) {
      const r = await sendRequest({ url: `http://127.0.0.1:${router.port('egress_workloadmanager')}`, path: `/v1/sandboxes/all-${i}` });
      statuses.push(r.status);
      if (!done && i % 10 === 0) {
        const [w, rt, p] = await Promise.all([uniq(wm, ID.workloadmanager), uniq(router, ID.router), servedSerial()]);
        if (w[0] !== first.wm[0] && rt[0] !== first.router[0] && p !== first.pc) done = Date.now();
      }
      if (done && Date.now() - done > 1000) break;
    }
    expect(done, 'all three certificates renewed before the deadline').toBeGreaterThan(0);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    console.info(`[spire all-mTLS e2e] all SVIDs renewed ${done - started} ms into the traffic; ${statuses.length} requests, all 200`);
  }, 5 * 60_000);
});

// ---------------------------------------------------------------------------
// File mode: the *-files.yaml sidecars with PEM files rotated on disk

interface Pki {
  dir: string;
  /** Issues a leaf for `uri` signed by the test CA; returns PEM text and the serial (hex, as Envoy prints it). */
  issue(uri: string, serial: number): Promise<{ cert: string; key: string; serial: string }>;
  caPem: string;
}

async function makePki(): Promise<Pki> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-pki-'));
  const ca = await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.crt'), '-days', '1', '-subj', '/CN=portcullis test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  if (ca.code !== 0) throw new Error(`openssl CA: ${ca.out}`);
  return {
    dir,
    caPem: await readFile(join(dir, 'ca.crt'), 'utf8'),
    issue: async (uri, serial) => {
      const base = join(dir, `leaf-${serial}`);
      await writeFile(`${base}.ext`, `subjectAltName=URI:${uri}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n`);
      const csr = await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', '/O=agentcube']);
      if (csr.code !== 0) throw new Error(`openssl csr: ${csr.out}`);
      const hex = serial.toString(16).padStart(4, '0');
      const sign = await run('openssl', [
        'x509', '-req', '-in', `${base}.csr`, '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'),
        '-set_serial', `0x${hex}`, '-days', '1', '-out', `${base}.crt`, '-extfile', `${base}.ext`,
      ]);
      if (sign.code !== 0) throw new Error(`openssl x509: ${sign.out}`);
      return { cert: await readFile(`${base}.crt`, 'utf8'), key: await readFile(`${base}.key`, 'utf8'), serial: hex };
    },
  };
}

/**
 * A certificate directory laid out like a Kubernetes Secret volume: the files are
 * symlinks through `..data`, and an update swaps `..data` with one rename.
 */
async function writeSecretVolume(dir: string, version: number, files: Record<string, string>): Promise<void> {
  await mkdir(dir, { recursive: true });
  const versionDir = `..v${version}`;
  await mkdir(join(dir, versionDir));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, versionDir, name), text);
  await symlink(versionDir, join(dir, '..data_tmp'));
  await rename(join(dir, '..data_tmp'), join(dir, '..data'));
  for (const name of Object.keys(files)) {
    const exists = await lstat(join(dir, name)).then(() => true, () => false);
    if (!exists) await symlink(join('..data', name), join(dir, name));
  }
}

describe('file-based certificates (*-files.yaml): rotation on disk during traffic, no restart', () => {
  let pc: Awaited<ReturnType<typeof startPortcullis>>;
  let pki: Pki;
  let echo: EchoUpstream;
  let wm: Sidecar;
  let router: Sidecar;
  let work: string;
  const certDir = { wm: '', router: '' };
  const serials = { wm: '', router: '' };

  beforeAll(async () => {
    pki = await makePki();
    work = await mkdtemp(join(tmpdir(), 'portcullis-files-e2e-'));
    pc = await startPortcullis();
    echo = await startEchoUpstream();
    const prepare = async (who: 'wm' | 'router', uri: string, serial: number): Promise<string> => {
      certDir[who] = join(work, `${who}-certs`);
      const leaf = await pki.issue(uri, serial);
      serials[who] = leaf.serial;
      await writeSecretVolume(certDir[who], 1, { 'tls.crt': leaf.cert, 'tls.key': leaf.key, 'ca.crt': pki.caPem });
      const sdsDir = join(work, `${who}-sds`);
      await writeFileSds(sdsDir, certDir[who]);
      return sdsDir;
    };
    const wmSds = await prepare('wm', ID.workloadmanager, 0x101);
    const routerSds = await prepare('router', ID.router, 0x201);
    wm = await startSidecar({
      file: 'workloadmanager-ingress-files.yaml',
      sdsDir: wmSds,
      clusters: { local_app: { host: '127.0.0.1', port: echo.port }, portcullis_grpc: { host: '127.0.0.1', port: pc.grpcPort } },
      plaintextClusters: ['portcullis_grpc'],
      expectCertificates: [ID.workloadmanager],
    });
    router = await startSidecar({
      file: 'router-egress-files.yaml',
      sdsDir: routerSds,
      clusters: { workloadmanager: { host: '127.0.0.1', port: wm.port('ingress') } },
      expectCertificates: [ID.router],
    });
  }, 120_000);

  afterAll(async () => {
    await router?.stop();
    await wm?.stop();
    await echo?.close();
    await pc?.app.stop();
    for (const d of [pc?.dir, pki?.dir, work]) if (d) await rm(d, { recursive: true, force: true });
  }, 60_000);

  it('serves Router → WorkloadManager over mTLS with the PEM files, portcullis sees the Router', async () => {
    const res = await sendRequest({ url: `http://127.0.0.1:${router.port('egress_workloadmanager')}`, path: '/v1/sandboxes/file-1' });
    expect(res.status).toBe(200);
    expect(echo.last()?.headers['x-portcullis-route']).toBe('workloadmanager');
    expect(pc.logs.decisions().find((l) => l.path === '/v1/sandboxes/file-1')).toMatchObject({ decision: 'allow', peer: ID.router });
    expect((await wm.ownCertificates()).map((c) => c.serial)).toContain(serials.wm);
  });

  it('picks up rotated certificates on both sides while requests keep succeeding', async () => {
    const pidBefore = [wm.pid, router.pid];
    const statuses: number[] = [];
    let rotated = false;
    const traffic = (async () => {
      // Bounded: stops once rotation is observed and 50 more requests went through, or after 1500 requests.
      let after = 0;
      for (let i = 0; i < 1500 && after < 50; i++) {
        const r = await sendRequest({ url: `http://127.0.0.1:${router.port('egress_workloadmanager')}`, path: `/v1/sandboxes/rot-${i}` });
        statuses.push(r.status);
        if (rotated) after += 1;
      }
    })();

    const wmLeaf = await pki.issue(ID.workloadmanager, 0x102);
    const routerLeaf = await pki.issue(ID.router, 0x202);
    await writeSecretVolume(certDir.wm, 2, { 'tls.crt': wmLeaf.cert, 'tls.key': wmLeaf.key, 'ca.crt': pki.caPem });
    await writeSecretVolume(certDir.router, 2, { 'tls.crt': routerLeaf.cert, 'tls.key': routerLeaf.key, 'ca.crt': pki.caPem });
    const t = Date.now();
    await waitFor('both Envoys to load the new certificates', Date.now() + 15_000, async () => {
      const [a, b] = await Promise.all([wm.ownCertificates(), router.ownCertificates()]);
      return a.some((c) => c.serial === wmLeaf.serial) && b.some((c) => c.serial === routerLeaf.serial);
    });
    const reloadMs = Date.now() - t;
    rotated = true;
    await traffic;

    expect(statuses.length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect([wm.pid, router.pid]).toEqual(pidBefore);
    // Old certificates are gone from Envoy.
    expect((await wm.ownCertificates()).map((c) => c.serial)).not.toContain(serials.wm);
    expect((await router.ownCertificates()).map((c) => c.serial)).not.toContain(serials.router);
    console.info(`[files e2e] rotation picked up in ${reloadMs} ms; ${statuses.length} requests during rotation, all 200`);

    // A new handshake gets the new server certificate.
    const served = await new Promise<string>((resolvePromise, reject) => {
      const sock = tlsConnect({
        host: '127.0.0.1',
        port: wm.port('ingress'),
        ca: pki.caPem,
        cert: routerLeaf.cert,
        key: routerLeaf.key,
        checkServerIdentity: () => undefined,
      });
      sock.once('secureConnect', () => {
        resolvePromise(sock.getPeerCertificate().serialNumber);
        sock.destroy();
      });
      sock.once('error', reject);
    });
    expect(served.toLowerCase().replace(/^0+/, '')).toBe(wmLeaf.serial.replace(/^0+/, ''));
  });
});
