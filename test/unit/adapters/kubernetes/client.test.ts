import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { KubeConfig } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createKubeClient, type KubeClient, type WatchEnd, type WatchEvent } from '../../../../src/adapters/kubernetes/client.js';
import { KubeError } from '../../../../src/adapters/kubernetes/errors.js';
import { systemScheduler } from '../../../../src/core/types.js';
import { createFakeClock } from '../../../helpers/fake-clock.js';

/**
 * The real client against a node:http server on 127.0.0.1:0 that speaks the
 * parts of the Kubernetes list/watch/get protocol the client uses.
 */
/** Loaded like the app loads it (on first use), so a library that cannot load on this Node fails one test, clearly. */
const lib = await import('@kubernetes/client-node').catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));

it('@kubernetes/client-node loads on this Node version', () => {
  if (lib instanceof Error) {
    throw new Error(
      `@kubernetes/client-node cannot be imported on Node ${process.version} (${lib.message}). ` +
        'Version 2.x needs Node >= 22.19 (undici 8); on Node 20 use @kubernetes/client-node@^1.4.0.',
    );
  }
});

const REF = { group: 'agentcube.io', version: 'v1alpha1', resource: 'sandboxes', namespace: 'agentcube' };
const COLLECTION = '/apis/agentcube.io/v1alpha1/namespaces/agentcube/sandboxes';

function obj(name: string, rv: string, owner?: string): Record<string, unknown> {
  return {
    kind: 'PartialObjectMetadata',
    apiVersion: 'meta.k8s.io/v1',
    metadata: { name, namespace: 'agentcube', resourceVersion: rv, labels: owner ? { 'agentcube.io/owner': owner, other: 'x' } : undefined },
  };
}

interface Seen {
  path: string;
  query: URLSearchParams;
  accept: string | undefined;
  authorization: string | undefined;
}

let server: Server;
let seen: Seen[];
let handler: (req: IncomingMessage, res: ServerResponse, url: URL) => void;
let client: KubeClient;
let kc: KubeConfig;

function kubeConfigFor(url: string): KubeConfig {
  if (lib instanceof Error) throw lib;
  const k = new lib.KubeConfig();
  k.loadFromOptions({
    clusters: [{ name: 'fake', server: url, skipTLSVerify: true }],
    users: [{ name: 'u', token: 'sa-token' }],
    contexts: [{ name: 'fake', cluster: 'fake', user: 'u' }],
    currentContext: 'fake',
  });
  return k;
}

const describeWithLib = describe.skipIf(lib instanceof Error);

beforeEach(async () => {
  if (lib instanceof Error) return;
  seen = [];
  handler = (_req, res) => {
    res.writeHead(500).end();
  };
  server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    seen.push({ path: url.pathname, query: url.searchParams, accept: req.headers.accept, authorization: req.headers.authorization });
    handler(req, res, url);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  kc = kubeConfigFor(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  client = createKubeClient({ kubeConfig: kc, scheduler: systemScheduler });
});

afterEach(async () => {
  if (lib instanceof Error) return;
  client.close();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

const json = (res: ServerResponse, status: number, body: unknown): void => {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
};

/** Collects a watch's callbacks; resolves `ended` with how it ended. */
function collect(): { opened: boolean; events: WatchEvent[]; ended: Promise<WatchEnd>; handlers: Parameters<KubeClient['watch']>[2] } {
  let resolveEnd: (e: WatchEnd) => void = () => undefined;
  const out = {
    opened: false,
    events: [] as WatchEvent[],
    ended: new Promise<WatchEnd>((r) => (resolveEnd = r)),
    handlers: {
      onOpen: () => void (out.opened = true),
      onEvent: (e: WatchEvent) => void out.events.push(e),
      onEnd: (e: WatchEnd) => resolveEnd(e),
    },
  };
  return out;
}

describeWithLib('kubernetes client', () => {
  it('lists metadata only, page by page, with the kubeconfig credentials', async () => {
    handler = (_req, res, url) => {
      if (url.searchParams.get('continue') === 'page2') {
        json(res, 200, { kind: 'PartialObjectMetadataList', metadata: { resourceVersion: '42' }, items: [obj('c', '40')] });
      } else {
        json(res, 200, { kind: 'PartialObjectMetadataList', metadata: { resourceVersion: '41', continue: 'page2' }, items: [obj('a', '10', 'dev.alice'), obj('b', '11')] });
      }
    };
    const first = await client.list(REF, { limit: 2, timeoutMs: 5_000 });
    expect(first).toEqual({
      resourceVersion: '41',
      continue: 'page2',
      items: [
        { namespace: 'agentcube', name: 'a', resourceVersion: '10', labels: { 'agentcube.io/owner': 'dev.alice', other: 'x' } },
        { namespace: 'agentcube', name: 'b', resourceVersion: '11', labels: {} },
      ],
    });
    const second = await client.list(REF, { limit: 2, continue: 'page2', timeoutMs: 5_000 });
    expect(second.continue).toBeUndefined();
    expect(second.items.map((i) => i.name)).toEqual(['c']);
    expect(seen[0]?.path).toBe(COLLECTION);
    expect(seen[0]?.query.get('limit')).toBe('2');
    expect(seen[0]?.accept).toContain('as=PartialObjectMetadataList;g=meta.k8s.io;v=v1');
    expect(seen[0]?.authorization).toBe('Bearer sa-token');
    expect(seen[1]?.query.get('continue')).toBe('page2');
  });

  it('uses /api/v1 for the core group and the cluster-wide path without a namespace', async () => {
    handler = (_req, res) => json(res, 200, { metadata: { resourceVersion: '1' }, items: [] });
    await client.list({ group: '', version: 'v1', resource: 'pods' }, { limit: 10, timeoutMs: 5_000 });
    await client.list({ group: '', version: 'v1', resource: 'pods', namespace: 'agentcube' }, { limit: 10, timeoutMs: 5_000 });
    expect(seen.map((s) => s.path)).toEqual(['/api/v1/pods', '/api/v1/namespaces/agentcube/pods']);
  });

  it('maps HTTP errors to codes: 410 is ERR_KUBE_GONE, 403 ERR_KUBE_HTTP with the status message', async () => {
    handler = (_req, res, url) =>
      url.searchParams.get('continue') === 'expired'
        ? json(res, 410, { kind: 'Status', code: 410, reason: 'Expired', message: 'continue token expired' })
        : json(res, 403, { kind: 'Status', code: 403, message: 'sandboxes is forbidden: no list' });
    const gone = await client.list(REF, { limit: 1, continue: 'expired', timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(KubeError);
    expect((gone as KubeError).code).toBe('ERR_KUBE_GONE');
    const forbidden = await client.list(REF, { limit: 1, timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect((forbidden as KubeError).code).toBe('ERR_KUBE_HTTP');
    expect((forbidden as KubeError).status).toBe(403);
    expect((forbidden as KubeError).message).toContain('forbidden');
  });

  it('get: the object, null on 404, names percent-encoded', async () => {
    handler = (_req, res, url) => (url.pathname.endsWith('/a') ? json(res, 200, obj('a', '7', 'dev.alice')) : json(res, 404, { kind: 'Status', code: 404 }));
    expect(await client.get(REF, 'agentcube', 'a', { timeoutMs: 5_000 })).toMatchObject({ name: 'a', labels: { 'agentcube.io/owner': 'dev.alice' } });
    expect(await client.get(REF, 'agentcube', 'missing', { timeoutMs: 5_000 })).toBeNull();
    await client.get(REF, 'agentcube', 'a b', { timeoutMs: 5_000 });
    expect(seen.at(-1)?.path).toBe(`${COLLECTION}/a%20b`);
    expect(seen[0]?.accept).toContain('as=PartialObjectMetadata;');
  });

  it('get: a server that does not answer is ERR_KUBE_TIMEOUT when the deadline (injected scheduler) passes', async () => {
    const clock = createFakeClock();
    const c = createKubeClient({ kubeConfig: kc, scheduler: clock.scheduler });
    let arrived: () => void = () => undefined;
    const requestSeen = new Promise<void>((r) => (arrived = r));
    handler = () => arrived(); // never answers
    const p = c.get(REF, 'agentcube', 'a', { timeoutMs: 2_000 }).catch((e: unknown) => e);
    await requestSeen;
    clock.advance(2_000);
    const err = await p;
    expect((err as KubeError).code).toBe('ERR_KUBE_TIMEOUT');
    c.close();
  });

  it('a connection refused is ERR_KUBE_NETWORK', async () => {
    const closed = kubeConfigFor('http://127.0.0.1:1');
    const c = createKubeClient({ kubeConfig: closed, scheduler: systemScheduler });
    const err = await c.get(REF, 'agentcube', 'a', { timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect((err as KubeError).code).toBe('ERR_KUBE_NETWORK');
  });

  it('watch: asks from a resourceVersion with bookmarks, delivers events in order, ends cleanly when the server closes', async () => {
    let stream: ServerResponse | undefined;
    let ready: () => void = () => undefined;
    const streaming = new Promise<void>((r) => (ready = r));
    handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.flushHeaders();
      stream = res;
      ready();
    };
    const w = collect();
    client.watch(REF, { resourceVersion: '41', timeoutSeconds: 300 }, w.handlers);
    await streaming;
    const send = (type: string, object: unknown): void => void stream?.write(`${JSON.stringify({ type, object })}\n`);
    send('ADDED', obj('a', '42', 'dev.alice'));
    // an event split across two chunks
    const line = JSON.stringify({ type: 'MODIFIED', object: obj('a', '43', 'dev.bob') });
    stream?.write(line.slice(0, 20));
    stream?.write(`${line.slice(20)}\n`);
    send('BOOKMARK', { kind: 'PartialObjectMetadata', metadata: { resourceVersion: '50' } });
    send('DELETED', obj('a', '51', 'dev.bob'));
    stream?.end();
    expect(await w.ended).toEqual({ kind: 'closed' });
    expect(w.opened).toBe(true);
    expect(w.events.map((e) => (e.type === 'BOOKMARK' ? `BOOKMARK ${e.resourceVersion}` : `${e.type} ${e.object.name} ${e.object.resourceVersion}`))).toEqual([
      'ADDED a 42',
      'MODIFIED a 43',
      'BOOKMARK 50',
      'DELETED a 51',
    ]);
    const q = seen[0]?.query;
    expect(q?.get('watch')).toBe('1');
    expect(q?.get('resourceVersion')).toBe('41');
    expect(q?.get('allowWatchBookmarks')).toBe('true');
    expect(q?.get('timeoutSeconds')).toBe('300');
  });

  it('watch: an ERROR event with 410 ends it as ERR_KUBE_GONE', async () => {
    handler = (_req, res) => {
      res.writeHead(200);
      res.write(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version: 1 (4)' } })}\n`);
    };
    const w = collect();
    client.watch(REF, { resourceVersion: '1', timeoutSeconds: 300 }, w.handlers);
    const end = await w.ended;
    expect(end.kind === 'error' && end.error.code).toBe('ERR_KUBE_GONE');
  });

  it('watch: HTTP 410 is ERR_KUBE_GONE, HTTP 500 ERR_KUBE_HTTP, and neither opens', async () => {
    let status = 410;
    handler = (_req, res) => json(res, status, { kind: 'Status', code: status, message: 'nope' });
    const w1 = collect();
    client.watch(REF, { resourceVersion: '1', timeoutSeconds: 300 }, w1.handlers);
    const e1 = await w1.ended;
    expect(e1.kind === 'error' && e1.error.code).toBe('ERR_KUBE_GONE');
    expect(w1.opened).toBe(false);
    status = 500;
    const w2 = collect();
    client.watch(REF, { resourceVersion: '1', timeoutSeconds: 300 }, w2.handlers);
    const e2 = await w2.ended;
    expect(e2.kind === 'error' && e2.error.code).toBe('ERR_KUBE_HTTP');
  });

  it('watch: a connection cut mid-stream ends with ERR_KUBE_NETWORK; stop() ends it silently', async () => {
    let streams: ServerResponse[] = [];
    let ready: () => void = () => undefined;
    let streaming = new Promise<void>((r) => (ready = r));
    handler = (_req, res) => {
      res.writeHead(200);
      res.write(`${JSON.stringify({ type: 'ADDED', object: obj('a', '5') })}\n`);
      streams.push(res);
      ready();
    };
    const w = collect();
    client.watch(REF, { resourceVersion: '1', timeoutSeconds: 300 }, w.handlers);
    await streaming;
    await new Promise<void>((r) => setImmediate(r));
    streams[0]?.socket?.destroy();
    const end = await w.ended;
    expect(end.kind === 'error' && end.error.code).toBe('ERR_KUBE_NETWORK');

    streams = [];
    streaming = new Promise<void>((r) => (ready = r));
    let ended = false;
    const h = client.watch(REF, { resourceVersion: '1', timeoutSeconds: 300 }, { onOpen: () => undefined, onEvent: () => undefined, onEnd: () => void (ended = true) });
    await streaming;
    h.stop();
    await new Promise<void>((r) => setImmediate(r));
    expect(ended).toBe(false);
  });
});
