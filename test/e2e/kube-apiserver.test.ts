/**
 * End-to-end check of the Kubernetes test API server itself (test/helpers/kube-apiserver.ts):
 * a Sandbox CRD, owner labels, label selectors, a watch that sees a label change, and
 * an API server restart that keeps the data (etcd stays up).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import { parse as parseYaml } from 'yaml';
import {
  SANDBOX_CRD_PATH,
  startKubeApiServer,
  type KubeApiServer,
  type KubeWatch,
  type WatchEvent,
} from '../helpers/kube-apiserver.js';

const OWNER_LABEL = 'agentcube.io/owner';
const SANDBOXES = '/apis/agentcube.io/v1alpha1/namespaces/default/sandboxes';

interface ObjectMeta {
  name: string;
  resourceVersion: string;
  labels?: Record<string, string>;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function meta(obj: unknown): ObjectMeta {
  if (!isRecord(obj) || !isRecord(obj.metadata)) throw new Error(`not a Kubernetes object: ${JSON.stringify(obj)}`);
  const m = obj.metadata;
  if (typeof m.name !== 'string' || typeof m.resourceVersion !== 'string') {
    throw new Error(`object without name/resourceVersion: ${JSON.stringify(m)}`);
  }
  const labels: Record<string, string> = {};
  if (isRecord(m.labels)) {
    for (const [k, v] of Object.entries(m.labels)) if (typeof v === 'string') labels[k] = v;
  }
  return { name: m.name, resourceVersion: m.resourceVersion, labels };
}

function list(json: unknown): { resourceVersion: string; items: ObjectMeta[] } {
  if (!isRecord(json) || !Array.isArray(json.items) || !isRecord(json.metadata)) {
    throw new Error(`not a list: ${JSON.stringify(json)}`);
  }
  const rv = json.metadata.resourceVersion;
  if (typeof rv !== 'string') throw new Error('list without resourceVersion');
  return { resourceVersion: rv, items: json.items.map(meta) };
}

function sandbox(name: string, owner: string): Record<string, unknown> {
  return {
    apiVersion: 'agentcube.io/v1alpha1',
    kind: 'Sandbox',
    metadata: { name, labels: { [OWNER_LABEL]: owner } },
    spec: { image: 'python:3.12', anything: { goes: true } },
  };
}

const selector = (owner: string): string => `labelSelector=${encodeURIComponent(`${OWNER_LABEL}=${owner}`)}`;

describe('Kubernetes test API server (apiextensions-apiserver + etcd)', () => {
  let kube: KubeApiServer;
  const watches: KubeWatch[] = [];

  beforeAll(async () => {
    kube = await startKubeApiServer();
    await kube.applyCrd(SANDBOX_CRD_PATH);
  });

  afterAll(async () => {
    for (const w of watches) w.close();
    await kube?.stop();
  });

  it('exposes connection material and a kubeconfig', async () => {
    expect(kube.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(kube.caPem).toContain('BEGIN CERTIFICATE');
    expect(kube.clientCertPem).toContain('BEGIN CERTIFICATE');
    expect(kube.clientKeyPem).toContain('PRIVATE KEY');
    const kc: unknown = parseYaml(await readFile(kube.kubeconfigPath, 'utf8'));
    expect(kc).toMatchObject({
      kind: 'Config',
      'current-context': 'portcullis-e2e',
      clusters: [{ cluster: { server: kube.url } }],
    });
  });

  it('has the Sandbox CRD established', async () => {
    const res = await kube.request('GET', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sandboxes.agentcube.io');
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ spec: { group: 'agentcube.io', names: { kind: 'Sandbox', plural: 'sandboxes' } } });
    // Applying again is a no-op.
    await expect(kube.applyCrd(SANDBOX_CRD_PATH)).resolves.toBe('sandboxes.agentcube.io');
  });

  it('does not serve data to a client without a certificate from the client CA', async () => {
    // Anonymous requests go to the (unreachable) delegated authorizer: 500/403, never data.
    const status = await new Promise<number>((resolve, reject) => {
      https
        .get(`${kube.url}${SANDBOXES}`, { ca: kube.caPem, agent: false }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', reject);
    });
    expect(status).not.toBe(200);
    expect(status).toBeGreaterThanOrEqual(400);
  });

  it('creates sandboxes with owner labels in namespace default (no Namespace object needed)', async () => {
    const a = await kube.request('POST', SANDBOXES, sandbox('sb-alice-1', 'alice'));
    expect(a.status, JSON.stringify(a.json)).toBe(201);
    const b = await kube.request('POST', SANDBOXES, sandbox('sb-bob-1', 'bob'));
    expect(b.status, JSON.stringify(b.json)).toBe(201);
    expect(meta(a.json).labels?.[OWNER_LABEL]).toBe('alice');

    const dup = await kube.request('POST', SANDBOXES, sandbox('sb-alice-1', 'alice'));
    expect(dup.status).toBe(409);

    // Core resources are not served by the CRD server.
    const ns = await kube.request('GET', '/api/v1/namespaces/default');
    expect(ns.status).toBe(404);
  });

  it('lists by label selector, in one namespace and across namespaces', async () => {
    const alice = await kube.request('GET', `${SANDBOXES}?${selector('alice')}`);
    expect(alice.status).toBe(200);
    expect(list(alice.json).items.map((i) => i.name)).toEqual(['sb-alice-1']);

    const all = await kube.request('GET', `/apis/agentcube.io/v1alpha1/sandboxes?labelSelector=${encodeURIComponent(OWNER_LABEL)}`);
    expect(all.status).toBe(200);
    expect(list(all.json).items.map((i) => i.name).sort()).toEqual(['sb-alice-1', 'sb-bob-1']);

    const one = await kube.request('GET', `${SANDBOXES}/sb-bob-1`);
    expect(one.status).toBe(200);
    expect(meta(one.json).labels?.[OWNER_LABEL]).toBe('bob');

    const missing = await kube.request('GET', `${SANDBOXES}/nope`);
    expect(missing.status).toBe(404);
  });

  it('watches from a resourceVersion and sees a label change', async () => {
    const listed = list((await kube.request('GET', SANDBOXES)).json);
    const watch = await kube.watch(
      `/apis/agentcube.io/v1alpha1/sandboxes?watch=1&allowWatchBookmarks=true&resourceVersion=${listed.resourceVersion}`,
    );
    watches.push(watch);
    expect(watch.status).toBe(200);

    const patched = await kube.request('PATCH', `${SANDBOXES}/sb-bob-1`, {
      metadata: { labels: { [OWNER_LABEL]: 'carol' } },
    });
    expect(patched.status, JSON.stringify(patched.json)).toBe(200);

    const ev: WatchEvent = await watch.next((e) => e.type === 'MODIFIED' && meta(e.object).name === 'sb-bob-1', 10_000);
    expect(meta(ev.object).labels?.[OWNER_LABEL]).toBe('carol');

    const del = await kube.request('DELETE', `${SANDBOXES}/sb-alice-1`);
    expect(del.status).toBe(200);
    const gone = await watch.next((e) => e.type === 'DELETED', 10_000);
    expect(meta(gone.object).name).toBe('sb-alice-1');

    // Re-create for the restart test.
    expect((await kube.request('POST', SANDBOXES, sandbox('sb-alice-1', 'alice'))).status).toBe(201);
    await watch.next((e) => e.type === 'ADDED' && meta(e.object).name === 'sb-alice-1', 10_000);
  });

  it('answers 410 Gone (Expired) for a watch from a resourceVersion that is too old', async () => {
    // What an informer sees after a long disconnect: it must relist.
    const watch = await kube.watch(`${SANDBOXES}?watch=1&resourceVersion=1`);
    watches.push(watch);
    expect(watch.status).toBe(200);
    const ev = await watch.next(() => true, 10_000);
    expect(ev.type).toBe('ERROR');
    expect(ev.object).toMatchObject({ kind: 'Status', code: 410, reason: 'Expired' });
  });

  it('keeps the objects across an API server restart, and a watch can resume', async () => {
    const before = list((await kube.request('GET', SANDBOXES)).json);
    const watch = await kube.watch(`${SANDBOXES}?watch=1&resourceVersion=${before.resourceVersion}`);
    watches.push(watch);
    expect(watch.status).toBe(200);

    const t0 = Date.now();
    await kube.restart();
    const restartMs = Date.now() - t0;
    console.log(`apiextensions-apiserver restart took ${restartMs} ms`);

    // The old watch stream ends with the old process.
    await expect(watch.next(() => false, 10_000)).rejects.toThrow(/ended/);
    expect(watch.ended).toBe(true);

    const after = await kube.request('GET', `${SANDBOXES}?${selector('carol')}`);
    expect(after.status).toBe(200);
    expect(list(after.json).items.map((i) => i.name)).toEqual(['sb-bob-1']);
    const everything = list((await kube.request('GET', SANDBOXES)).json);
    expect(everything.items.map((i) => i.name).sort()).toEqual(['sb-alice-1', 'sb-bob-1']);

    // Resume the watch from the last resourceVersion seen before the restart.
    const resumed = await kube.watch(`${SANDBOXES}?watch=1&resourceVersion=${everything.resourceVersion}`);
    watches.push(resumed);
    expect(resumed.status).toBe(200);
    const patched = await kube.request('PATCH', `${SANDBOXES}/sb-alice-1`, {
      metadata: { labels: { [OWNER_LABEL]: 'dave' } },
    });
    expect(patched.status).toBe(200);
    const ev = await resumed.next((e) => e.type === 'MODIFIED', 10_000);
    expect(meta(ev.object).labels?.[OWNER_LABEL]).toBe('dave');
  });

  it('survives a crash (SIGKILL) of the API server as well', async () => {
    const watch = await kube.watch(`${SANDBOXES}?watch=1`);
    watches.push(watch);
    const t0 = Date.now();
    await kube.restart({ signal: 'SIGKILL' });
    console.log(`apiextensions-apiserver crash + start took ${Date.now() - t0} ms`);
    await expect(watch.next(() => false, 10_000)).rejects.toThrow(/ended/);

    const res = await kube.request('GET', `${SANDBOXES}?${selector('dave')}`);
    expect(res.status).toBe(200);
    expect(list(res.json).items.map((i) => i.name)).toEqual(['sb-alice-1']);
  });

  it('refuses connections while the API server is stopped, then serves again', async () => {
    await kube.stopApiServer();
    await expect(kube.request('GET', SANDBOXES, undefined, { timeoutMs: 2_000 })).rejects.toThrow(/ECONNREFUSED/);
    await kube.startApiServer();
    const res = await kube.request('GET', SANDBOXES);
    expect(res.status).toBe(200);
    expect(list(res.json).items).toHaveLength(2);
  });
});
