import type { Clock } from '../../core/types.js';
import type { KubeClient, ObjectMeta } from './client.js';
import { KubeError } from './errors.js';
import type { ResourceRef } from './resource.js';
import { createTokenBucket } from './token-bucket.js';

/**
 * One direct GET for an object the cache does not know (yet): a Sandbox
 * created a moment ago whose watch event has not arrived, or any lookup while
 * the cache is not usable. Rate-limited by a token bucket so that a flood of
 * requests for made-up names cannot become a flood on the API server;
 * concurrent lookups of the same object share one request.
 */
export type DirectLookup =
  | { kind: 'found'; owner: string | null }
  | { kind: 'not_found' }
  | { kind: 'error'; error: KubeError };

export interface FallbackGet {
  /** undefined when the rate limit says no. */
  get(namespace: string, name: string): Promise<DirectLookup> | undefined;
}

export interface FallbackGetDeps {
  client: KubeClient;
  clock: Clock;
  ownerOf(meta: ObjectMeta): string | null;
}

export interface FallbackGetSettings {
  resource: ResourceRef;
  perSecond: number;
  timeoutMs: number;
}

export function createFallbackGet(deps: FallbackGetDeps, settings: FallbackGetSettings): FallbackGet {
  const bucket = createTokenBucket(deps.clock, settings.perSecond);
  const pending = new Map<string, Promise<DirectLookup>>();
  return {
    get(namespace, name) {
      const k = `${namespace}/${name}`;
      const shared = pending.get(k);
      if (shared) return shared;
      if (!bucket.take()) return undefined;
      const p = deps.client.get(settings.resource, namespace, name, { timeoutMs: settings.timeoutMs }).then(
        (meta): DirectLookup => (meta ? { kind: 'found', owner: deps.ownerOf(meta) } : { kind: 'not_found' }),
        (err: unknown): DirectLookup => ({
          kind: 'error',
          error: err instanceof KubeError ? err : new KubeError('ERR_KUBE_NETWORK', String(err), { cause: err }),
        }),
      );
      pending.set(k, p);
      void p.finally(() => pending.delete(k));
      return p;
    },
  };
}
