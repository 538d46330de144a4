import type { ReasonCode } from './reasons.js';

/** Wall clock in milliseconds since the epoch. Injected everywhere time is read. */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** The `fetch` signature portcullis depends on; injected so tests use fake servers. */
export type FetchFn = (input: string | URL, init?: RequestInit) => Promise<Response>;

/**
 * What an adapter extracts from Envoy's CheckRequest (gRPC) or from the
 * forwarded request (HTTP mode). Header names are lower-case. A header that
 * appeared more than once keeps every value (Envoy joins repeated headers with
 * ',' in gRPC mode; the adapter records the raw value it was given).
 */
export interface CheckInput {
  method: string;
  host: string;
  /** Path without query string, not yet percent-decoded. */
  path: string;
  /** Raw query string without the leading '?', or '' when there is none. */
  query: string;
  headers: ReadonlyMap<string, string>;
  /** Number of times each header appeared, where the transport can tell (HTTP mode); 1 otherwise. */
  headerCounts?: ReadonlyMap<string, number>;
  /** SPIFFE ID (URI SAN) of the peer workload, as Envoy reports it. */
  peerPrincipal?: string;
  /** Envoy per-route `context_extensions`. */
  contextExtensions: ReadonlyMap<string, string>;
}

/** An authenticated caller, produced by the verify stage. */
export interface Principal {
  /** Issuer name from configuration (the tenant). */
  issuerName: string;
  /** The token's `iss` claim. */
  issuer: string;
  sub: string;
  /** Issuer-qualified subject: `<issuer name>/<sub>`; unique across realms. */
  qualifiedSub: string;
  /** Roles found in the token, before inheritance. */
  roles: readonly string[];
  /** Roles after inheritance closure (what checks use). */
  effectiveRoles: ReadonlySet<string>;
  claims: Readonly<Record<string, unknown>>;
  /** The raw token (never logged). */
  token: string;
  /** Token expiry in ms since epoch. */
  expiresAt: number;
  /** Which credential source it came from, e.g. `header:authorization`. */
  source: string;
  /** Key id and algorithm of the verified signature (for traces). */
  kid?: string;
  alg?: string;
}

/** A requirement in shadow mode that would have denied the request. */
export interface WouldDeny {
  requirement: string;
  reason: ReasonCode;
  status: number;
  message: string;
}

export interface HeaderToSet {
  name: string;
  value: string;
}

export interface Allow {
  kind: 'allow';
  route: string;
  principal?: Principal;
  headersToSet: HeaderToSet[];
  headersToRemove: string[];
  metadata: Record<string, string | string[]>;
  /** Shadow-mode requirements that would have denied this request. */
  wouldDeny?: WouldDeny[];
}

export interface Deny {
  kind: 'deny';
  route?: string;
  status: number;
  reason: ReasonCode;
  /** Safe to show to the client: never contains secrets. */
  message: string;
  /** Extra headers for the client (WWW-Authenticate, ...). */
  headers: HeaderToSet[];
  principal?: Principal;
  metadata: Record<string, string | string[]>;
}

export type Decision = Allow | Deny;

/** Timers, injected so background work (JWKS refresh, cache sweeps) is driven by tests, not by waiting. */
export interface Scheduler {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export interface TimerHandle {
  /** Lets the process exit while the timer is pending (node `unref`). */
  unref?(): void;
}

export const systemScheduler: Scheduler = {
  setTimeout: (fn, ms) => {
    const t = globalThis.setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof globalThis.setTimeout>),
};
