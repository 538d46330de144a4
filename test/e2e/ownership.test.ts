/**
 * Ownership end to end, against a real Kubernetes API server
 * (apiextensions-apiserver + etcd from test/helpers/kube-apiserver.ts):
 * the Sandbox CRD is applied, sandboxes with owner labels are created through
 * the API, and portcullis runs in-process (createApp) with a route that
 * requires the caller to own the sandbox named in the path.
 *
 * Callers: the development issuer (`dev`, identity `dev.<sub>`) and a second
 * realm (`realm2`, a JWKS server of this test) whose `alice` is another person
 * than dev's `alice`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startJwksServer, type JwksServer } from '../helpers/jwks-server.js';
import { SANDBOX_CRD_PATH, startKubeApiServer, type KubeApiServer } from '../helpers/kube-apiserver.js';
import { bearer, httpCheck, metricValue, pollUntil, scrapeMetrics, startTestApp, type HttpReply, type TestApp } from '../integration/harness.js';

const NS = 'agentcube';
const SANDBOXES = `/apis/agentcube.io/v1alpha1/namespaces/${NS}/sandboxes`;
const OWNER = 'agentcube.io/owner';

let kube: KubeApiServer;
let realm2: JwksServer;
let t: TestApp;
const tokens: Record<string, string> = {};

function sandbox(name: string, owner?: string): Record<string, unknown> {
  return {
    apiVersion: 'agentcube.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { name, labels: owner ? { [OWNER]: owner } : {} },
    spec: { image: 'python:3.12' },
  };
}

async function create(name: string, owner?: string): Promise<void> {
  const r = await kube.request('POST', SANDBOXES, sandbox(name, owner));
  if (r.status !== 201) throw new Error(`creating sandbox ${name}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
}

async function relabel(name: string, owner: string | null): Promise<void> {
  const r = await kube.request('PATCH', `${SANDBOXES}/${name}`, { metadata: { labels: { [OWNER]: owner } } });
  if (r.status !== 200) throw new Error(`patching sandbox ${name}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
}

async function devToken(sub: string): Promise<string> {
  const res = await fetch(`http://${t.addresses.admin}/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ sub, roles: ['sandbox:invoke'] }),
  });
  if (res.status !== 200) throw new Error(`dev token: HTTP ${res.status}`);
  return ((await res.json()) as { access_token: string }).access_token;
}

/** What portcullis answers Envoy (HTTP ext_authz) for `who` invoking sandbox `id`. */
async function invoke(who: string, id: string): Promise<string> {
  const token = tokens[who];
  if (!token) throw new Error(`no token for ${who}`);
  const r = await httpCheck(t.http, { method: 'POST', path: `/v1/sandboxes/${id}/invoke`, headers: bearer(token) });
  return outcome(r);
}

function outcome(r: HttpReply): string {
  return r.status === 200 ? 'allow' : `${r.status} ${String(r.headers['x-portcullis-reason'] ?? '')}`;
}

beforeAll(async () => {
  kube = await startKubeApiServer();
  await kube.applyCrd(SANDBOX_CRD_PATH);
  await create('sbx-alice', 'dev.alice');
  await create('sbx-bob', 'dev.bob');
  await create('sbx-unlabeled');
  await create('sbx-doomed', 'dev.alice');

  realm2 = await startJwksServer({ audience: 'agentcube-router' });
  t = await startTestApp({
    listen: { grpc: '127.0.0.1:0', http: '127.0.0.1:0', admin: '127.0.0.1:0' },
    log: { level: 'warn' },
    development: { issuer: { enabled: true } },
    issuers: [{ name: 'realm2', issuer: realm2.issuer, audiences: [realm2.audience], algorithms: ['RS256', 'ES256'] }],
    kubernetes: {
      kubeconfig: kube.kubeconfigPath,
      resources: [
        {
          name: 'sandboxes',
          group: 'agentcube.io',
          version: 'v1alpha1',
          resource: 'sandboxes',
          namespace: NS,
          ownerLabel: OWNER,
          maxStalenessSeconds: 300,
          fallbackGet: { enabled: true, perSecond: 20 },
        },
      ],
    },
    routes: [
      {
        name: 'sandbox-invoke',
        match: { methods: ['POST'], path: '/v1/sandboxes/{id}/invoke' },
        require: { roles: { anyOf: ['sandbox:invoke'] }, owner: { resource: 'sandboxes' } },
      },
      {
        name: 'sandbox-create',
        match: { methods: ['POST'], path: '/v1/sandboxes' },
        require: { roles: { anyOf: ['sandbox:invoke'] } },
        headers: { 'x-portcullis-owner': '{issuer.name}.{sub}' },
      },
    ],
  });
  await pollUntil('portcullis ready (issuer keys, owner cache synced)', () => t.app.readiness().ready || undefined, 30_000);
  tokens.alice = await devToken('alice');
  tokens.bob = await devToken('bob');
  tokens.realm2alice = await realm2.sign({ sub: 'alice', realm_access: { roles: ['sandbox:invoke'] } });
}, 300_000);

afterAll(async () => {
  await t?.stop();
  await realm2?.close();
  await kube?.stop();
});

describe('ownership against a real API server', () => {
  it('readiness reports the owner cache synced with the objects created', async () => {
    // Ready comes with the list; the watch that follows it connects a moment later (on a busy machine, later still).
    const stage = await pollUntil('the owner cache watch connected', () => {
      const s = t.app.readiness().stages.find((x) => x.name === 'ownership:sandboxes');
      return s && (s.detail as { connected?: boolean } | undefined)?.connected ? s : undefined;
    }, 30_000);
    expect(stage).toMatchObject({ ready: true, detail: { synced: true, connected: true, objects: 4 } });
  });

  it('the owner is allowed; another user is 403 not_owner', async () => {
    expect(await invoke('alice', 'sbx-alice')).toBe('allow');
    expect(await invoke('bob', 'sbx-bob')).toBe('allow');
    expect(await invoke('bob', 'sbx-alice')).toBe('403 not_owner');
    expect(await invoke('alice', 'sbx-bob')).toBe('403 not_owner');
  });

  it('the same sub from another realm is not the owner (identity is issuer-qualified)', async () => {
    expect(await invoke('realm2alice', 'sbx-alice')).toBe('403 not_owner');
  });

  it('an unlabeled sandbox has no owner: 403 not_owner', async () => {
    expect(await invoke('alice', 'sbx-unlabeled')).toBe('403 not_owner');
  });

  it('an unknown sandbox is 403 resource_not_found (not 404), after one direct GET', async () => {
    expect(await invoke('alice', 'sbx-nobody')).toBe('403 resource_not_found');
    const m = await scrapeMetrics(t.addresses.admin);
    expect(metricValue(m, 'portcullis_owner_lookups_total', { resource: 'sandboxes', result: 'get_not_found' })).toBeGreaterThanOrEqual(1);
  });

  it('a creation route injects the caller identity the WorkloadManager copies into the owner label; a spoofed copy is replaced', async () => {
    const r = await httpCheck(t.http, {
      method: 'POST',
      path: '/v1/sandboxes',
      headers: { ...bearer(tokens.alice ?? ''), 'x-portcullis-owner': 'dev.bob' },
    });
    expect(r.status).toBe(200);
    expect(r.headers['x-portcullis-owner']).toBe('dev.alice');
    // the WorkloadManager's part, done here through the API: the new sandbox is alice's
    await create('sbx-new', String(r.headers['x-portcullis-owner']));
    await pollUntil('new sandbox visible', async () => (await invoke('alice', 'sbx-new')) === 'allow' || undefined, 10_000);
    expect(await invoke('bob', 'sbx-new')).toBe('403 not_owner');
  });

  it('a label change is reflected within seconds', async () => {
    await relabel('sbx-bob', 'dev.alice');
    await pollUntil('bob loses sbx-bob', async () => (await invoke('bob', 'sbx-bob')) === '403 not_owner' || undefined, 10_000);
    expect(await invoke('alice', 'sbx-bob')).toBe('allow');
    await relabel('sbx-bob', 'dev.bob');
    await pollUntil('bob owns sbx-bob again', async () => (await invoke('bob', 'sbx-bob')) === 'allow' || undefined, 10_000);
    await relabel('sbx-bob', null);
    await pollUntil('label removed', async () => (await invoke('bob', 'sbx-bob')) === '403 not_owner' || undefined, 10_000);
    await relabel('sbx-bob', 'dev.bob');
    await pollUntil('label back', async () => (await invoke('bob', 'sbx-bob')) === 'allow' || undefined, 10_000);
  }, 60_000);

  it('a deletion is reflected within seconds', async () => {
    expect(await invoke('alice', 'sbx-doomed')).toBe('allow');
    const r = await kube.request('DELETE', `${SANDBOXES}/sbx-doomed`);
    expect(r.status).toBe(200);
    await pollUntil('deleted sandbox refused', async () => (await invoke('alice', 'sbx-doomed')) === '403 resource_not_found' || undefined, 10_000);
  }, 30_000);

  it('API server restarted during traffic: decisions continue from the cache, and the watch resumes', async () => {
    const seen = new Map<string, number>();
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        for (const [who, id] of [
          ['alice', 'sbx-alice'],
          ['bob', 'sbx-alice'],
        ] as const) {
          const o = `${who}@${id}: ${await invoke(who, id)}`;
          seen.set(o, (seen.get(o) ?? 0) + 1);
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await kube.restart();
    stop = true;
    await traffic;
    expect([...seen.keys()].sort()).toEqual(['alice@sbx-alice: allow', 'bob@sbx-alice: 403 not_owner']);
    expect(seen.get('alice@sbx-alice: allow')).toBeGreaterThan(10);

    // A change made after the restart arrives through the resumed watch (label changes are never fetched by GET).
    await relabel('sbx-alice', 'dev.bob');
    await pollUntil('change after restart seen', async () => (await invoke('bob', 'sbx-alice')) === 'allow' || undefined, 30_000);
    expect(await invoke('alice', 'sbx-alice')).toBe('403 not_owner');
    await relabel('sbx-alice', 'dev.alice');
    await pollUntil('restored', async () => (await invoke('alice', 'sbx-alice')) === 'allow' || undefined, 10_000);
    const m = await scrapeMetrics(t.addresses.admin);
    const restarts = ['closed', 'error', 'gone', 'idle', 'list_error'].reduce(
      (n, reason) => n + metricValue(m, 'portcullis_owner_watch_restarts_total', { resource: 'sandboxes', reason }),
      0,
    );
    expect(restarts).toBeGreaterThanOrEqual(1);
    expect(metricValue(m, 'portcullis_owner_watch_connected', { resource: 'sandboxes' })).toBe(1);
  }, 120_000);

  it('API server down: known sandboxes answer from the cache, unknown ones are 503 owner_unavailable; back up, changes flow again', async () => {
    await kube.stopApiServer();
    try {
      await pollUntil('watch noticed the outage', () => t.app.readiness().stages[0]?.detail?.connected === false || undefined, 10_000);
      expect(await invoke('alice', 'sbx-alice')).toBe('allow');
      expect(await invoke('bob', 'sbx-alice')).toBe('403 not_owner');
      expect(await invoke('alice', 'sbx-unknown')).toBe('503 owner_unavailable');
      // readiness stays up: the outage is bounded per lookup by maxStalenessSeconds
      expect(t.app.readiness().ready).toBe(true);
    } finally {
      await kube.startApiServer();
    }
    await create('sbx-after-outage', 'dev.bob');
    await pollUntil('object created after the outage', async () => (await invoke('bob', 'sbx-after-outage')) === 'allow' || undefined, 30_000);
    await pollUntil('watch connected again', () => t.app.readiness().stages[0]?.detail?.connected === true || undefined, 30_000);
  }, 120_000);
});
