import http from 'node:http';
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Scheduler, TimerHandle } from '../../core/types.js';
import { KubeError, kubeErrorFromStatus } from './errors.js';
import { collectionPath, objectPath, type ResourceRef } from './resource.js';

/**
 * The three Kubernetes API calls the owner cache needs — list, watch, get —
 * over node's http(s) with the connection settings and credentials of a
 * `@kubernetes/client-node` KubeConfig (in-cluster service-account token,
 * client certificates, exec plugins, proxies: whatever the kubeconfig says).
 *
 * Every call asks for metadata only (`PartialObjectMetadata`), so neither a
 * list of 100,000 Sandboxes nor a watch event carries specs or statuses; the
 * same code serves custom resources and core ones (Pods, group '').
 */
export interface ObjectMeta {
  /** '' for cluster-scoped objects. */
  namespace: string;
  name: string;
  resourceVersion: string;
  labels: Readonly<Record<string, string>>;
}

export interface ListPage {
  items: ObjectMeta[];
  /** The collection's resourceVersion: where a watch continues from. */
  resourceVersion: string;
  /** Token for the next page; absent on the last one. */
  continue?: string;
}

export type WatchEvent =
  | { type: 'ADDED' | 'MODIFIED' | 'DELETED'; object: ObjectMeta }
  | { type: 'BOOKMARK'; resourceVersion: string };

/** How a watch ended: the server closed it cleanly (timeoutSeconds, shutdown), or an error (410 Gone among them). */
export type WatchEnd = { kind: 'closed' } | { kind: 'error'; error: KubeError };

export interface WatchHandlers {
  /** The server accepted the watch (HTTP 200). */
  onOpen(): void;
  onEvent(event: WatchEvent): void;
  /** Called once, unless stop() came first. */
  onEnd(end: WatchEnd): void;
}

export interface WatchHandle {
  /** Ends the watch; no handler is called afterwards. */
  stop(): void;
}

export interface KubeClient {
  list(ref: ResourceRef, opts: { limit: number; continue?: string; timeoutMs: number }): Promise<ListPage>;
  watch(ref: ResourceRef, opts: { resourceVersion: string; timeoutSeconds: number }, handlers: WatchHandlers): WatchHandle;
  /** Resolves null when the object does not exist (404). */
  get(ref: ResourceRef, namespace: string, name: string, opts: { timeoutMs: number }): Promise<ObjectMeta | null>;
  /** Aborts every request in flight. */
  close(): void;
}

export interface KubeClientDeps {
  kubeConfig: KubeConfig;
  /** Request deadlines run on it. */
  scheduler: Scheduler;
}

const ACCEPT_ONE = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json';
const ACCEPT_LIST = 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json';
const MAX_BODY_BYTES = 64 * 1024 * 1024;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads the fields the cache needs from any object or PartialObjectMetadata. */
export function toObjectMeta(obj: unknown): ObjectMeta | undefined {
  if (!isRecord(obj) || !isRecord(obj.metadata)) return undefined;
  const m = obj.metadata;
  if (typeof m.name !== 'string' || typeof m.resourceVersion !== 'string') return undefined;
  const labels: Record<string, string> = {};
  if (isRecord(m.labels)) for (const [k, v] of Object.entries(m.labels)) if (typeof v === 'string') labels[k] = v;
  return { namespace: typeof m.namespace === 'string' ? m.namespace : '', name: m.name, resourceVersion: m.resourceVersion, labels };
}

/** `metav1.Status` message, for errors; the raw text when the body is something else. */
function statusMessage(text: string): string {
  try {
    const v: unknown = JSON.parse(text);
    if (isRecord(v) && typeof v.message === 'string') return v.message;
  } catch {
    // not JSON
  }
  return text.slice(0, 200);
}

function networkError(err: unknown, what: string): KubeError {
  if (err instanceof KubeError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new KubeError('ERR_KUBE_NETWORK', `${what}: ${msg}`, { cause: err });
}

export function createKubeClient(deps: KubeClientDeps): KubeClient {
  const { kubeConfig, scheduler } = deps;
  const inFlight = new Set<http.ClientRequest>();
  let closed = false;

  function serverUrl(path: string, query: Record<string, string | number | boolean | undefined>): URL {
    const cluster = kubeConfig.getCurrentCluster();
    if (!cluster) throw new KubeError('ERR_KUBE_NETWORK', 'the kubeconfig has no current cluster');
    const url = new URL(cluster.server.replace(/\/+$/, '') + path);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, String(v));
    return url;
  }

  /** Sends a GET; resolves with the response once headers arrive. */
  async function open(url: URL, accept: string): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
    if (closed) throw new KubeError('ERR_KUBE_NETWORK', 'client closed');
    const opts: https.RequestOptions = {
      method: 'GET',
      protocol: url.protocol,
      hostname: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port || undefined,
      path: url.pathname + url.search,
      headers: { accept, 'user-agent': 'portcullis' },
    };
    await kubeConfig.applyToHTTPSOptions(opts);
    const send = url.protocol === 'http:' ? http.request : https.request;
    return new Promise((resolve, reject) => {
      const req = send(opts, (res) => resolve({ req, res }));
      inFlight.add(req);
      req.on('close', () => inFlight.delete(req));
      req.on('error', (err) => reject(networkError(err, `GET ${url.pathname}`)));
      req.end();
    });
  }

  /** A GET whose whole JSON body is read, within `timeoutMs`. */
  async function getJson(url: URL, accept: string, timeoutMs: number): Promise<{ status: number; body: unknown; text: string }> {
    let timer: TimerHandle | undefined;
    let request: http.ClientRequest | undefined;
    let timedOut = false;
    const deadline = new Promise<never>((_, reject) => {
      timer = scheduler.setTimeout(() => {
        timedOut = true;
        request?.destroy();
        reject(new KubeError('ERR_KUBE_TIMEOUT', `GET ${url.pathname}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref?.();
    });
    const exchange = (async () => {
      const { req, res } = await open(url, accept);
      request = req;
      if (timedOut) req.destroy(); // answered after the deadline: nobody waits for it
      const text = await new Promise<string>((resolve, reject) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) req.destroy(new Error(`response larger than ${MAX_BODY_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        res.on('error', (err) => reject(networkError(err, `GET ${url.pathname}`)));
        res.on('aborted', () => reject(new KubeError('ERR_KUBE_NETWORK', `GET ${url.pathname}: connection lost`)));
      });
      const status = res.statusCode ?? 0;
      if (status < 200 || status > 299) return { status, body: undefined, text };
      try {
        return { status, body: JSON.parse(text) as unknown, text };
      } catch (err) {
        throw new KubeError('ERR_KUBE_DECODE', `GET ${url.pathname}: answer is not JSON`, { status, cause: err });
      }
    })();
    exchange.catch(() => undefined); // the race below reports it; avoid an unhandled rejection after a timeout
    try {
      return await Promise.race([exchange, deadline]);
    } finally {
      if (timer) scheduler.clearTimeout(timer);
    }
  }

  return {
    async list(ref, opts) {
      const url = serverUrl(collectionPath(ref), { limit: opts.limit, continue: opts.continue });
      const r = await getJson(url, ACCEPT_LIST, opts.timeoutMs);
      if (r.status !== 200) throw kubeErrorFromStatus(r.status, `list ${url.pathname}: HTTP ${r.status}: ${statusMessage(r.text)}`);
      const body = r.body;
      if (!isRecord(body) || !Array.isArray(body.items) || !isRecord(body.metadata) || typeof body.metadata.resourceVersion !== 'string') {
        throw new KubeError('ERR_KUBE_DECODE', `list ${url.pathname}: not a list`, { status: r.status });
      }
      const items: ObjectMeta[] = [];
      for (const it of body.items) {
        const m = toObjectMeta(it);
        if (m) items.push(m);
      }
      const cont = body.metadata.continue;
      return { items, resourceVersion: body.metadata.resourceVersion, continue: typeof cont === 'string' && cont !== '' ? cont : undefined };
    },

    async get(ref, namespace, name, opts) {
      const url = serverUrl(objectPath(ref, namespace, name), {});
      const r = await getJson(url, ACCEPT_ONE, opts.timeoutMs);
      if (r.status === 404) return null;
      if (r.status !== 200) throw kubeErrorFromStatus(r.status, `get ${url.pathname}: HTTP ${r.status}: ${statusMessage(r.text)}`);
      const m = toObjectMeta(r.body);
      if (!m) throw new KubeError('ERR_KUBE_DECODE', `get ${url.pathname}: not an object`, { status: r.status });
      return m;
    },

    watch(ref, opts, handlers) {
      let stopped = false;
      let ended = false;
      let request: http.ClientRequest | undefined;
      const end = (e: WatchEnd): void => {
        if (stopped || ended) return;
        ended = true;
        request?.destroy();
        handlers.onEnd(e);
      };
      let url: URL;
      try {
        url = serverUrl(collectionPath(ref), {
          watch: 1,
          resourceVersion: opts.resourceVersion,
          allowWatchBookmarks: true,
          timeoutSeconds: opts.timeoutSeconds,
        });
      } catch (err) {
        queueMicrotask(() => end({ kind: 'error', error: networkError(err, 'watch') }));
        return { stop: () => void (stopped = true) };
      }
      open(url, ACCEPT_ONE).then(
        ({ req, res }) => {
          request = req;
          if (stopped) {
            req.destroy();
            return;
          }
          const status = res.statusCode ?? 0;
          if (status !== 200) {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              end({ kind: 'error', error: kubeErrorFromStatus(status, `watch ${url.pathname}: HTTP ${status}: ${statusMessage(Buffer.concat(chunks).toString('utf8'))}`) }),
            );
            res.on('error', (err) => end({ kind: 'error', error: networkError(err, `watch ${url.pathname}`) }));
            return;
          }
          handlers.onOpen();
          let buf = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            buf += chunk;
            for (let nl = buf.indexOf('\n'); nl >= 0 && !ended && !stopped; nl = buf.indexOf('\n')) {
              const line = buf.slice(0, nl).trim();
              buf = buf.slice(nl + 1);
              if (line) onLine(line);
            }
          });
          res.on('end', () => end({ kind: 'closed' }));
          res.on('aborted', () => end({ kind: 'error', error: new KubeError('ERR_KUBE_NETWORK', `watch ${url.pathname}: connection lost`) }));
          res.on('error', (err) => end({ kind: 'error', error: networkError(err, `watch ${url.pathname}`) }));
          res.on('close', () => end(res.complete ? { kind: 'closed' } : { kind: 'error', error: new KubeError('ERR_KUBE_NETWORK', `watch ${url.pathname}: connection lost`) }));
        },
        (err: unknown) => end({ kind: 'error', error: networkError(err, `watch ${url.pathname}`) }),
      );

      function onLine(line: string): void {
        let ev: unknown;
        try {
          ev = JSON.parse(line);
        } catch (err) {
          end({ kind: 'error', error: new KubeError('ERR_KUBE_DECODE', `watch ${url.pathname}: event is not JSON`, { cause: err }) });
          return;
        }
        if (!isRecord(ev) || typeof ev.type !== 'string') return;
        const obj = ev.object;
        switch (ev.type) {
          case 'ADDED':
          case 'MODIFIED':
          case 'DELETED': {
            const m = toObjectMeta(obj);
            if (m) handlers.onEvent({ type: ev.type, object: m });
            return;
          }
          case 'BOOKMARK': {
            const m = toObjectMeta(obj) ?? (isRecord(obj) && isRecord(obj.metadata) && typeof obj.metadata.resourceVersion === 'string' ? { resourceVersion: obj.metadata.resourceVersion } : undefined);
            if (m) handlers.onEvent({ type: 'BOOKMARK', resourceVersion: m.resourceVersion });
            return;
          }
          case 'ERROR': {
            const code = isRecord(obj) && typeof obj.code === 'number' ? obj.code : 500;
            const message = isRecord(obj) && typeof obj.message === 'string' ? obj.message : 'watch error';
            end({ kind: 'error', error: kubeErrorFromStatus(code, `watch ${url.pathname}: ${message}`) });
            return;
          }
          default:
            return;
        }
      }

      return {
        stop() {
          stopped = true;
          request?.destroy();
        },
      };
    },

    close() {
      closed = true;
      for (const r of inFlight) r.destroy();
      inFlight.clear();
    },
  };
}
