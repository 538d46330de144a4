import type { Clock, Scheduler, TimerHandle } from '../../core/types.js';
import type { KubeClient, ObjectMeta, WatchEnd, WatchEvent, WatchHandle } from './client.js';
import type { ResourceRef } from './resource.js';

/**
 * Who owns each object of one Kubernetes collection, kept current by a list
 * followed by a watch (an informer that stores only `namespace/name → owner`,
 * never whole objects).
 *
 * - The watch resumes from the last resourceVersion it saw (events and
 *   bookmarks) after a disconnect; `410 Gone` (the version was compacted away)
 *   triggers a fresh list. While relisting or reconnecting, the previous
 *   contents keep answering.
 * - Bounded staleness: while the watch is open the cache is current; once it
 *   is not, answers are served for `maxStalenessMs` after the last moment the
 *   cache was known to be current, then lookups say `unavailable`.
 * - A watch that stays silent (no event, no bookmark) for longer than the
 *   idle limit is assumed dead (a half-open TCP connection) and replaced.
 *
 * Lookups are synchronous map reads: the hot path never awaits.
 */
export type OwnerLookup =
  /** The object exists; `owner` is its owner label, null when unlabeled. */
  | { kind: 'hit'; owner: string | null }
  /** The cache is current and holds no such object. */
  | { kind: 'absent' }
  /** The cache cannot answer: never synced, or stale beyond the bound. */
  | { kind: 'unavailable'; why: 'not_synced' | 'stale' };

/** Why the watch was (re)started; the `reason` label of the restarts metric. */
export type RestartReason =
  /** The server ended the watch cleanly (its timeoutSeconds, or shutdown). */
  | 'closed'
  /** 410 Gone: the resourceVersion is too old; a full list follows. */
  | 'gone'
  /** Connection refused or lost, HTTP error, bad data. */
  | 'error'
  /** Nothing arrived for longer than the idle limit. */
  | 'idle'
  /** The list itself failed; retried with backoff. */
  | 'list_error';

export interface OwnerCacheStatus {
  synced: boolean;
  /** The watch stream is open. */
  connected: boolean;
  /** Lookups are answered (synced and within the staleness bound). */
  fresh: boolean;
  objects: number;
  resourceVersion?: string;
  /** Epoch ms of the last completed list. */
  lastSyncAt?: number;
  lastError?: string;
}

export interface OwnerCache {
  start(): void;
  stop(): void;
  lookup(namespace: string, name: string): OwnerLookup;
  /** Resolves once the first list completed (never rejects; may never resolve while the API is away). */
  whenSynced(): Promise<void>;
  status(): OwnerCacheStatus;
  /** Reads an owner label the same way cached objects are read (for direct GETs). */
  ownerOf(meta: ObjectMeta): string | null;
}

export interface OwnerCacheSettings {
  resource: ResourceRef;
  ownerLabel: string;
  maxStalenessMs: number;
  /** Objects per list page (default 500). */
  pageSize?: number;
  /** Per list page (default 60 s). */
  listTimeoutMs?: number;
  /** Asked of the server: end each watch after this long (default 300 s); the watch then resumes. */
  watchTimeoutSeconds?: number;
  /**
   * A watch silent this long is replaced (default: maxStalenessMs, at least 90 s — the API server sends a
   * bookmark about once a minute — and at most watchTimeoutSeconds + 30 s, by when the server must have ended it).
   */
  idleTimeoutMs?: number;
  /** A watch request without an answer (response headers) this long is abandoned (default 30 s). */
  openTimeoutMs?: number;
  /** Retry delays after failures: doubling from min to max (defaults 500 ms, 10 s). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
}

export interface OwnerCacheDeps {
  client: KubeClient;
  clock: Clock;
  scheduler: Scheduler;
  onRestart?(reason: RestartReason, error?: string): void;
  onSynced?(objects: number): void;
}

/** A watch that ends cleanly sooner than this without delivering anything is treated as a failure (no tight loop). */
const MIN_HEALTHY_WATCH_MS = 1_000;

export function createOwnerCache(deps: OwnerCacheDeps, settings: OwnerCacheSettings): OwnerCache {
  const { client, clock, scheduler } = deps;
  const ref = settings.resource;
  const label = settings.ownerLabel;
  const pageSize = settings.pageSize ?? 500;
  const listTimeoutMs = settings.listTimeoutMs ?? 60_000;
  const watchTimeoutSeconds = settings.watchTimeoutSeconds ?? 300;
  const idleTimeoutMs = settings.idleTimeoutMs ?? Math.min(watchTimeoutSeconds * 1000 + 30_000, Math.max(settings.maxStalenessMs, 90_000));
  const openTimeoutMs = settings.openTimeoutMs ?? 30_000;
  const backoffMinMs = settings.backoffMinMs ?? 500;
  const backoffMaxMs = settings.backoffMaxMs ?? 10_000;

  let owners = new Map<string, string | null>();
  /** Owner strings shared between objects (many sandboxes, few owners); rebuilt with each list. */
  let interned = new Map<string, string>();
  let resourceVersion: string | undefined;
  let synced = false;
  let connected = false;
  let running = false;
  let lastSyncAt: number | undefined;
  /** Until when the contents were known to be current (while disconnected). */
  let lastGoodAt = 0;
  let lastHeardAt = 0;
  let lastError: string | undefined;
  let failures = 0;
  let watch: WatchHandle | undefined;
  let retryTimer: TimerHandle | undefined;
  let idleTimer: TimerHandle | undefined;
  /** Bumped on stop and on each new list/watch: callbacks of older ones are ignored. */
  let epoch = 0;
  let syncWaiters: (() => void)[] = [];

  const key = (namespace: string, name: string): string => `${namespace}/${name}`;

  function ownerOf(meta: ObjectMeta): string | null {
    const v = meta.labels[label];
    if (!v) return null;
    const shared = interned.get(v);
    if (shared !== undefined) return shared;
    interned.set(v, v);
    return v;
  }

  function clearTimers(): void {
    if (retryTimer) scheduler.clearTimeout(retryTimer);
    if (idleTimer) scheduler.clearTimeout(idleTimer);
    retryTimer = undefined;
    idleTimer = undefined;
  }

  function backoff(): number {
    failures++;
    return Math.min(backoffMaxMs, backoffMinMs * 2 ** (failures - 1));
  }

  function later(fn: () => void, ms: number): void {
    if (retryTimer) scheduler.clearTimeout(retryTimer);
    retryTimer = scheduler.setTimeout(() => {
      retryTimer = undefined;
      fn();
    }, ms);
    retryTimer.unref?.();
  }

  function restart(reason: RestartReason, error?: string): void {
    if (error !== undefined) lastError = error;
    deps.onRestart?.(reason, error);
  }

  async function list(): Promise<void> {
    const mine = ++epoch;
    const next = new Map<string, string | null>();
    const previousInterned = interned;
    interned = new Map();
    let rv = '';
    let cont: string | undefined;
    try {
      do {
        const page = await client.list(ref, { limit: pageSize, continue: cont, timeoutMs: listTimeoutMs });
        if (mine !== epoch) return;
        for (const item of page.items) next.set(key(item.namespace, item.name), ownerOf(item));
        rv = page.resourceVersion;
        cont = page.continue;
      } while (cont);
    } catch (err) {
      if (mine !== epoch) return;
      interned = previousInterned;
      restart('list_error', err instanceof Error ? err.message : String(err));
      later(() => void list(), backoff());
      return;
    }
    owners = next;
    resourceVersion = rv;
    const now = clock.now();
    synced = true;
    lastSyncAt = now;
    lastGoodAt = now;
    lastHeardAt = now;
    failures = 0;
    deps.onSynced?.(owners.size);
    const waiters = syncWaiters;
    syncWaiters = [];
    for (const w of waiters) w();
    startWatch();
  }

  /** Replaces the watch when nothing arrives in time: no answer to the request, or silence once open. */
  function armIdle(mine: number, ms: number): void {
    if (idleTimer) scheduler.clearTimeout(idleTimer);
    idleTimer = scheduler.setTimeout(() => {
      idleTimer = undefined;
      if (mine !== epoch) return;
      const wasOpen = connected;
      watch?.stop();
      watch = undefined;
      connected = false;
      if (wasOpen) {
        lastGoodAt = lastHeardAt; // the connection may have been dead all along
        restart('idle', `no watch event for ${ms} ms`);
        startWatch();
      } else {
        restart('idle', `the watch request got no answer within ${ms} ms`);
        later(startWatch, backoff());
      }
    }, ms);
    idleTimer.unref?.();
  }

  function startWatch(): void {
    const mine = ++epoch;
    const openedAt = clock.now();
    let delivered = false;
    const from = resourceVersion ?? '';
    armIdle(mine, openTimeoutMs);
    watch = client.watch(ref, { resourceVersion: from, timeoutSeconds: watchTimeoutSeconds }, {
      onOpen() {
        if (mine !== epoch) return;
        connected = true;
        lastHeardAt = clock.now();
        armIdle(mine, idleTimeoutMs);
      },
      onEvent(e: WatchEvent) {
        if (mine !== epoch) return;
        delivered = true;
        failures = 0;
        lastHeardAt = clock.now();
        armIdle(mine, idleTimeoutMs);
        if (e.type === 'BOOKMARK') {
          resourceVersion = e.resourceVersion;
          return;
        }
        const k = key(e.object.namespace, e.object.name);
        if (e.type === 'DELETED') owners.delete(k);
        else owners.set(k, ownerOf(e.object));
        resourceVersion = e.object.resourceVersion;
      },
      onEnd(end: WatchEnd) {
        if (mine !== epoch) return;
        watch = undefined;
        if (idleTimer) scheduler.clearTimeout(idleTimer);
        idleTimer = undefined;
        if (connected) lastGoodAt = clock.now();
        connected = false;
        if (end.kind === 'error' && end.error.code === 'ERR_KUBE_GONE') {
          restart('gone', end.error.message);
          void list();
          return;
        }
        if (end.kind === 'closed' && (delivered || clock.now() - openedAt >= MIN_HEALTHY_WATCH_MS)) {
          restart('closed');
          startWatch();
          return;
        }
        restart('error', end.kind === 'error' ? end.error.message : 'watch closed at once');
        later(startWatch, backoff());
      },
    });
  }

  function fresh(): boolean {
    return synced && (connected || clock.now() - lastGoodAt <= settings.maxStalenessMs);
  }

  return {
    start() {
      if (running) return;
      running = true;
      void list();
    },
    stop() {
      running = false;
      epoch++;
      clearTimers();
      watch?.stop();
      watch = undefined;
      connected = false;
    },
    lookup(namespace, name) {
      if (!synced) return { kind: 'unavailable', why: 'not_synced' };
      if (!connected && clock.now() - lastGoodAt > settings.maxStalenessMs) return { kind: 'unavailable', why: 'stale' };
      const owner = owners.get(key(namespace, name));
      return owner === undefined ? { kind: 'absent' } : { kind: 'hit', owner };
    },
    whenSynced() {
      return synced ? Promise.resolve() : new Promise((resolve) => syncWaiters.push(resolve));
    },
    status() {
      return { synced, connected, fresh: fresh(), objects: owners.size, resourceVersion, lastSyncAt, lastError };
    },
    ownerOf,
  };
}
