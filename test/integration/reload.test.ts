import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/core/errors.js';
import { checkRequest, readCheckResponse, type CheckOutcome } from '../helpers/grpc-client.js';
import { startJwksServer, type JwksServer } from '../helpers/jwks-server.js';
import { userClaims } from './fixtures.js';
import {
  bearer,
  httpCheck,
  metricValue,
  pollUntil,
  scrapeMetrics,
  startTestApp,
  waitReady,
  writeConfig,
  type TestApp,
} from './harness.js';

/**
 * Config reload: built fully, swapped atomically, no failed request while it
 * happens; an invalid file is refused (log line + metric) and the previous
 * configuration keeps serving.
 */

/** Hand-written YAML, as a user would: path templates quoted inside flow mappings. */
function configText(idp: JwksServer, role: string, opts: { watch?: boolean; extraRoute?: string } = {}): string {
  return `listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0 }
server: { watchConfig: ${opts.watch ?? false}, shutdownGraceSeconds: 5 }
issuers:
  - name: acme
    issuer: ${idp.issuer}
    audiences: [${idp.audience}]
routes:
  - name: jobs
    match: { methods: [POST], path: "/v1/jobs/{id}/run" }
    require:
      roles: { anyOf: [${role}] }
    headers: { x-user-job: "{path.id}" }
${opts.extraRoute ?? ''}`;
}

const RUN = { method: 'POST', path: '/v1/jobs/j1/run' };

/** Every response must be a well-formed CheckResponse that is one of the two decisions the configs can produce. */
function isWellFormed(o: CheckOutcome): boolean {
  if (o.decision === 'allow') return o.grpcCode === 0 && o.status === 200 && o.headers['x-user-job'] === 'j1';
  return o.status === 403 && o.reason === 'missing_role' && o.body?.error === 'missing_role';
}

describe('reload during traffic (app.reload)', () => {
  let idp: JwksServer;
  let t: TestApp;
  let tokenX: string;
  let tokenY: string;

  beforeAll(async () => {
    idp = await startJwksServer();
    t = await startTestApp(configText(idp, 'role-x'));
    await waitReady(t);
    tokenX = await idp.sign(userClaims('xavier', ['role-x']));
    tokenY = await idp.sign(userClaims('yvonne', ['role-y']));
  });

  afterAll(async () => {
    await t?.stop();
    await idp?.close();
  });

  async function decide(token: string): Promise<CheckOutcome> {
    return readCheckResponse(await t.grpc.check(checkRequest({ ...RUN, headers: bearer(token) })));
  }

  it('swaps to a new valid config with zero failed requests; later decisions follow the new config', async () => {
    expect((await decide(tokenX)).decision).toBe('allow');
    expect((await decide(tokenY)).reason).toBe('missing_role');

    const BATCHES = 10;
    const PER_BATCH = 50;
    let started = 0;
    let done = 0;
    const results: { batch: number; who: 'x' | 'y'; outcome?: CheckOutcome; error?: string }[] = [];

    const traffic = (async () => {
      for (let b = 0; b < BATCHES; b++) {
        started = b + 1;
        await Promise.all(
          Array.from({ length: PER_BATCH }, async (_, i) => {
            const who = i % 2 === 0 ? 'x' : 'y';
            const token = who === 'x' ? tokenX : tokenY;
            try {
              // Mostly gRPC, every fifth over the HTTP port: both adapters share the swapped runtime.
              if (i % 5 === 4) {
                const r = await httpCheck(t.http, { ...RUN, headers: bearer(token) });
                const outcome: CheckOutcome =
                  r.status === 200
                    ? { decision: 'allow', grpcCode: 0, status: 200, reason: '', headers: { 'x-user-job': String(r.headers['x-user-job']) }, appendActions: {}, headersToRemove: [], metadata: {} }
                    : { decision: 'deny', grpcCode: -1, status: r.status, reason: String(r.headers['x-portcullis-reason']), headers: {}, appendActions: {}, headersToRemove: [], body: JSON.parse(r.body) as { error: string; message: string }, metadata: {} };
                results.push({ batch: b, who, outcome });
              } else {
                results.push({ batch: b, who, outcome: await decide(token) });
              }
            } catch (err) {
              results.push({ batch: b, who, error: String(err) });
            }
          }),
        );
        done = b + 1;
      }
    })();

    await pollUntil('two batches of traffic', () => done >= 2);
    writeConfig(t.configPath, configText(idp, 'role-y'));
    const reloaded = await t.app.reload();
    const firstBatchAfterReload = started; // batches with a higher index started after the swap
    await traffic;

    expect(reloaded).toEqual({ ok: true });
    expect(results).toHaveLength(BATCHES * PER_BATCH);
    expect(results.filter((r) => r.error !== undefined)).toEqual([]);
    expect(results.filter((r) => !r.outcome || !isWellFormed(r.outcome))).toEqual([]);
    // Before the reload started: the old rule.
    for (const r of results.filter((x) => x.batch < 2)) expect(r.outcome?.decision).toBe(r.who === 'x' ? 'allow' : 'deny');
    // Batches that started after reload() resolved: the new rule only.
    expect(firstBatchAfterReload).toBeLessThan(BATCHES);
    const after = results.filter((x) => x.batch >= firstBatchAfterReload);
    expect(after.length).toBeGreaterThan(0);
    for (const r of after) expect(r.outcome?.decision, `batch ${r.batch} ${r.who}`).toBe(r.who === 'y' ? 'allow' : 'deny');

    expect((await decide(tokenX)).reason).toBe('missing_role');
    expect((await decide(tokenY)).decision).toBe('allow');
    const m = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(m, 'portcullis_config_reloads_total', { result: 'ok' })).toBe(1);
    expect(metricValue(m, 'portcullis_config_last_reload_successful')).toBe(1);
    expect(t.logs.withMsg('configuration reloaded')).toHaveLength(1);
  });

  it('refuses an invalid config during traffic: {ok:false} with issues, metric, log line naming the paths; old config keeps serving', async () => {
    const bad = `${configText(idp, 'role-z').replace('grpc: 127.0.0.1:0', 'grpc: not-an-address')}
  - name: tenant-only
    issuers: [nobody]
    match: { path: /tenant }
`;
    writeConfig(t.configPath, bad);
    const inflight = Array.from({ length: 100 }, (_, i) => decide(i % 2 === 0 ? tokenX : tokenY).then((o) => ({ o, i })));
    const res = await t.app.reload();
    const during = await Promise.all(inflight);

    expect(res.ok).toBe(false);
    if (res.ok) return;
    expect(res.error).toBeInstanceOf(ConfigError);
    const issues = (res.error as ConfigError).issues;
    const paths = issues.map((i) => i.path);
    expect(paths).toContain('listen.grpc');

    const m = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(m, 'portcullis_config_reloads_total', { result: 'invalid' })).toBe(1);
    expect(metricValue(m, 'portcullis_config_reloads_total', { result: 'ok' })).toBe(1);
    expect(metricValue(m, 'portcullis_config_last_reload_successful')).toBe(0);

    const line = t.logs.find((l) => l.msg === 'configuration refused; the previous configuration keeps serving');
    expect(line).toBeDefined();
    expect(line?.level).toBe('error');
    const logged = JSON.stringify(line);
    for (const p of paths) expect(logged).toContain(p);

    // Still the config from the previous test (role-y), during and after the refused reload.
    for (const { o, i } of during) {
      expect(isWellFormed(o)).toBe(true);
      expect(o.decision).toBe(i % 2 === 0 ? 'deny' : 'allow');
    }
    expect((await decide(tokenY)).decision).toBe('allow');
    expect((await decide(tokenX)).reason).toBe('missing_role');

    // issue 2: "validated ... with every error reported by path": the unknown issuer is a problem too.
    expect(paths).toContain('routes[1].issuers[0]');
  });

  it('refuses a config whose only problem is a cross-reference (unknown issuer), naming its path', async () => {
    writeConfig(
      t.configPath,
      `${configText(idp, 'role-z')}
  - name: tenant-only
    issuers: [nobody]
    match: { path: /tenant }
`,
    );
    const res = await t.app.reload();
    expect(res.ok).toBe(false);
    if (res.ok) return;
    expect((res.error as ConfigError).issues).toEqual([expect.objectContaining({ path: 'routes[1].issuers[0]', message: expect.stringContaining('nobody') })]);
    expect((await decide(tokenY)).decision).toBe('allow');
    const m = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(m, 'portcullis_config_reloads_total', { result: 'invalid' })).toBe(2);
  });

  it('refuses a file that is not YAML and keeps serving', async () => {
    writeConfig(t.configPath, 'routes: [ { name: x, match: { path: /v1/{id} } }\n');
    const res = await t.app.reload();
    expect(res.ok).toBe(false);
    expect((await decide(tokenY)).decision).toBe('allow');
  });

  it('jwks.kidMissCooldownSeconds: 0 is refused with its path, and the running config keeps serving', async () => {
    // A zero cooldown would let every made-up kid trigger an IdP call; the schema refuses it
    // (so `portcullis validate` and reload agree), rather than failing later in the key source.
    const text = configText(idp, 'role-y').replace(
      `audiences: [${idp.audience}]`,
      `audiences: [${idp.audience}]\n    jwks: { kidMissCooldownSeconds: 0 }`,
    );
    writeConfig(t.configPath, text);
    const res = await t.app.reload();
    expect(res.ok).toBe(false);
    if (!res.ok) expect(res.error.message).toContain('issuers[0].jwks.kidMissCooldownSeconds');
    expect((await decide(tokenY)).decision).toBe('allow');
  });
});

describe('reload on file change (server.watchConfig)', () => {
  let idp: JwksServer;
  let t: TestApp | undefined;

  beforeAll(async () => {
    idp = await startJwksServer();
  });
  afterEach(async () => {
    await t?.stop();
    t = undefined;
  });
  afterAll(async () => {
    await idp?.close();
  });

  it('applies a valid change without a call to reload(), and refuses an invalid one', async () => {
    const app = (t = await startTestApp(configText(idp, 'role-x', { watch: true })));
    await waitReady(app);
    const tokenX = await idp.sign(userClaims('xavier', ['role-x']));
    const decideX = async () => readCheckResponse(await app.grpc.check(checkRequest({ ...RUN, headers: bearer(tokenX) })));
    expect((await decideX()).decision).toBe('allow');

    writeConfig(app.configPath, configText(idp, 'role-y', { watch: true }));
    const denied = await pollUntil('the watcher to apply the new config', async () => {
      const o = await decideX();
      return o.decision === 'deny' ? o : undefined;
    });
    expect(denied.reason).toBe('missing_role');
    await pollUntil('the reload log line', () => app.logs.withMsg('configuration reloaded').length === 1);

    writeConfig(app.configPath, configText(idp, 'role-x', { watch: true }).replace('roles: { anyOf: [role-x] }', 'roles: { anyOf: [] }'));
    await pollUntil('the watcher to refuse the invalid file', async () => {
      const m = await scrapeMetrics(app.addresses.admin);
      return metricValue(m, 'portcullis_config_reloads_total', { result: 'invalid' }) === 1;
    });
    expect((await decideX()).reason).toBe('missing_role');
    const refused = app.logs.find((l) => l.msg === 'configuration refused; the previous configuration keeps serving');
    expect(JSON.stringify(refused)).toContain('routes[0].require.roles');
  });
});
