import type { KubeClient, ListPage, ObjectMeta, WatchEnd, WatchHandlers } from '../../../../src/adapters/kubernetes/client.js';
import { KubeError } from '../../../../src/adapters/kubernetes/errors.js';
import type { ResourceRef } from '../../../../src/adapters/kubernetes/resource.js';

/**
 * An in-memory stand-in for the Kubernetes API behind KubeClient: objects with
 * resourceVersions, lists in pages, watches the test drives event by event,
 * and failures on demand. Nothing runs until the test says so (no timers).
 */
export interface FakeWatch {
  readonly resourceVersion: string;
  readonly timeoutSeconds: number;
  stopped: boolean;
  ended: boolean;
  open(): void;
  end(e: WatchEnd): void;
  handlers: WatchHandlers;
}

export interface FakeKube {
  readonly client: KubeClient;
  readonly watches: FakeWatch[];
  readonly lists: { continue?: string; limit: number }[];
  readonly gets: { namespace: string; name: string }[];
  /** The watch currently running (last one, not ended or stopped). */
  current(): FakeWatch | undefined;
  /** Creates or updates an object; delivers MODIFIED/ADDED to the open watch when `notify`. */
  put(namespace: string, name: string, owner: string | undefined, notify?: boolean): ObjectMeta;
  remove(namespace: string, name: string, notify?: boolean): void;
  bookmark(): void;
  /** The next list calls fail with these errors, in order. */
  failLists: KubeError[];
  /** When set, get() answers with this instead of the stored objects. */
  getAnswer?: () => Promise<ObjectMeta | null>;
  /** Pending get() promises are held until release() when true. */
  holdGets: boolean;
  releaseGets(): void;
  rv(): string;
  closed: boolean;
}

export const OWNER_LABEL = 'agentcube.io/owner';

export function createFakeKube(pageSize = 2): FakeKube {
  let rv = 100;
  const objects = new Map<string, ObjectMeta>();
  const watches: FakeWatch[] = [];
  const lists: { continue?: string; limit: number }[] = [];
  const gets: { namespace: string; name: string }[] = [];
  const held: (() => void)[] = [];

  const meta = (namespace: string, name: string, owner: string | undefined): ObjectMeta => ({
    namespace,
    name,
    resourceVersion: String(++rv),
    labels: owner === undefined ? {} : { [OWNER_LABEL]: owner },
  });

  const fake: FakeKube = {
    watches,
    lists,
    gets,
    failLists: [],
    holdGets: false,
    closed: false,
    current: () => [...watches].reverse().find((w) => !w.ended && !w.stopped),
    rv: () => String(rv),
    put(namespace, name, owner, notify = true) {
      const k = `${namespace}/${name}`;
      const existed = objects.has(k);
      const m = meta(namespace, name, owner);
      objects.set(k, m);
      if (notify) fake.current()?.handlers.onEvent({ type: existed ? 'MODIFIED' : 'ADDED', object: m });
      return m;
    },
    remove(namespace, name, notify = true) {
      const k = `${namespace}/${name}`;
      const old = objects.get(k);
      if (!old) return;
      objects.delete(k);
      if (notify) fake.current()?.handlers.onEvent({ type: 'DELETED', object: { ...old, resourceVersion: String(++rv) } });
    },
    bookmark() {
      fake.current()?.handlers.onEvent({ type: 'BOOKMARK', resourceVersion: String(++rv) });
    },
    releaseGets() {
      for (const r of held.splice(0)) r();
    },
    client: {
      async list(_ref: ResourceRef, opts): Promise<ListPage> {
        lists.push({ continue: opts.continue, limit: opts.limit });
        const err = fake.failLists.shift();
        if (err) throw err;
        const all = [...objects.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
        const start = opts.continue ? Number(opts.continue) : 0;
        const size = Math.min(opts.limit, pageSize);
        const items = all.slice(start, start + size).map((m) => ({ ...m }));
        const next = start + size < all.length ? String(start + size) : undefined;
        return { items, resourceVersion: String(rv), continue: next };
      },
      watch(_ref, opts, handlers) {
        const w: FakeWatch = {
          resourceVersion: opts.resourceVersion,
          timeoutSeconds: opts.timeoutSeconds,
          stopped: false,
          ended: false,
          handlers,
          open() {
            if (!w.stopped) handlers.onOpen();
          },
          end(e) {
            if (w.stopped || w.ended) return;
            w.ended = true;
            handlers.onEnd(e);
          },
        };
        watches.push(w);
        return {
          stop() {
            w.stopped = true;
          },
        };
      },
      async get(_ref, namespace, name) {
        gets.push({ namespace, name });
        if (fake.holdGets) await new Promise<void>((resolve) => held.push(resolve));
        if (fake.getAnswer) return fake.getAnswer();
        const m = objects.get(`${namespace}/${name}`);
        return m ? { ...m } : null;
      },
      close() {
        fake.closed = true;
      },
    },
  };
  return fake;
}

export const gone = (): KubeError => new KubeError('ERR_KUBE_GONE', 'too old resource version', { status: 410 });
export const refused = (): KubeError => new KubeError('ERR_KUBE_NETWORK', 'connect ECONNREFUSED');
