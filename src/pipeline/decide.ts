import { denial, isDenial, type Denial } from '../core/errors.js';
import type { CheckInput, Decision, Deny, HeaderToSet, Principal, WouldDeny } from '../core/types.js';
import { collectCandidates, type Candidate, type SourceNote } from '../stages/credentials.js';
import { headersToRemove, principalMetadata, renderHeaders } from '../stages/response.js';
import { checkRoles } from '../stages/roles.js';
import type { Verifier, VerifyResult } from '../stages/verify.js';
import type { CompiledRoute, Policy } from './policy.js';
import { splitRequestPath, type Matched } from './route-table.js';
import type { RouteStage, StageContext, StageOutput, StageResult } from './stage.js';

/**
 * The pipeline, top to bottom:
 *
 *   route       → table match (host, method, path) or context_extensions name
 *   allow       → `deny` routes stop here
 *   before      → optional stages on the connection (peer SPIFFE ID)
 *   credentials → ordered sources, fall-through to the next on an unusable token
 *   verify      → issuer by `iss`, key by `kid`, signature, claims (cached)
 *   roles       → anyOf / allOf over the inheritance closure
 *   after       → optional stages for the caller (ownership, exchange, hop token)
 *   response    → headers to set, spoofed owned headers to remove, metadata
 *
 * Anonymous routes skip credentials, verify, roles and after-stages.
 * Nothing here throws to the caller: an unexpected error is a deny
 * (`internal_error`), never an allow. The result is synchronous unless a
 * signing key, an owner or an exchanged token had to be fetched.
 *
 * Shadow mode: a requirement (or a whole route) marked shadow is evaluated and
 * its would-be denial recorded in `wouldDeny`, but it does not change the answer.
 */
export interface DecisionTrace {
  route?: { name: string; by: 'context_extensions' | 'table' | 'none'; params?: Record<string, string>; shadow?: boolean };
  sources?: SourceNote[];
  tokens?: { source: string; issuer?: string; kid?: string; alg?: string; cached?: boolean; result: string }[];
  roles?: { required?: string; found: string[]; result: string; shadow?: boolean };
  headersSet?: string[];
  headersRemoved?: string[];
  /** What each optional stage recorded, by stage name. */
  stages?: Record<string, unknown>;
  /** The stage that decided a deny (or would have, in shadow mode). */
  deniedBy?: string;
}

export interface DecideOptions {
  /** explain: no cache writes, no remote calls that count, no refetches. */
  dryRun?: boolean;
}

export interface Decider {
  decide(input: CheckInput, trace?: DecisionTrace, opts?: DecideOptions): Decision | Promise<Decision>;
}

export interface DeciderDeps {
  policy: Policy;
  verifier: Verifier;
}

const NO_ROUTE = '(none)';

/** A header value built from text an attacker may influence (alg, kid, claims): printable ASCII only, bounded. */
function headerSafe(s: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[^\x20-\x7e]/g, '?').replace(/["\\]/g, "'");
  return clean.length > 200 ? `${clean.slice(0, 200)}...` : clean;
}

function bearerChallenge(realm: string, d: Denial): HeaderToSet {
  if (d.reason === 'missing_credentials') return { name: 'www-authenticate', value: `Bearer realm="${headerSafe(realm)}"` };
  const error = d.status === 400 ? 'invalid_request' : 'invalid_token';
  return {
    name: 'www-authenticate',
    value: `Bearer realm="${headerSafe(realm)}", error="${error}", error_description="${headerSafe(d.message)}"`,
  };
}

export function toDeny(d: Denial, realm: string, route?: string, principal?: Principal): Deny {
  const headers: HeaderToSet[] = [];
  if (d.status === 401 || (d.status === 400 && d.reason === 'conflicting_credentials')) headers.push(bearerChallenge(realm, d));
  const metadata = principalMetadata(principal, route ?? NO_ROUTE);
  metadata.decision = 'deny';
  metadata.reason = d.reason;
  return { kind: 'deny', route, status: d.status, reason: d.reason, message: d.message, headers, principal, metadata };
}

/** Lower is better: which failure to report when no source held a valid token. */
function failureRank(d: Denial): number {
  if (d.status === 503) return 0; // an outage must not be reported as a bad token
  if (d.reason === 'unknown_issuer' || d.reason === 'token_malformed') return 3;
  if (d.reason === 'issuer_not_allowed') return 2;
  return 1;
}

/** Per-decision state: only allocated fields that are used. */
interface Eval {
  input: CheckInput;
  route: CompiledRoute;
  /** The route match; its `params` are read only where needed (a table match builds them on first read). */
  matched: Matched<CompiledRoute>;
  trace: DecisionTrace | undefined;
  dryRun: boolean;
  wouldDeny: WouldDeny[] | undefined;
}

function shadowed(ev: Eval, requirement: string, d: Denial): void {
  (ev.wouldDeny ??= []).push({ requirement, reason: d.reason, status: d.status, message: d.message });
  if (ev.trace) ev.trace.deniedBy ??= `${requirement} (shadow)`;
}

/**
 * Runs stages in order, synchronously while they answer synchronously.
 * Collects their outputs; stops at the first enforced denial.
 */
function runStages(
  ev: Eval,
  stages: readonly RouteStage[],
  ctx: StageContext,
  i: number,
  acc: StageOutput[],
): Denial | StageOutput[] | Promise<Denial | StageOutput[]> {
  for (; i < stages.length; i++) {
    const stage = stages[i] as RouteStage;
    const r: StageResult | Promise<StageResult> = stage.run(ctx);
    if (r instanceof Promise) {
      const at = i;
      return r.then((res) => {
        if (isDenial(res)) {
          if (!ev.route.shadowRequirements.has(stage.name)) {
            if (ev.trace) ev.trace.deniedBy = stage.name;
            return res;
          }
          shadowed(ev, stage.name, res);
        } else if (res) acc.push(res);
        return runStages(ev, stages, ctx, at + 1, acc);
      });
    }
    if (isDenial(r)) {
      if (!ev.route.shadowRequirements.has(stage.name)) {
        if (ev.trace) ev.trace.deniedBy = stage.name;
        return r;
      }
      shadowed(ev, stage.name, r);
    } else if (r) acc.push(r);
  }
  return acc;
}

function stageContext(ev: Eval, principal: Principal | undefined): StageContext {
  return {
    input: ev.input,
    routeName: ev.route.name,
    params: ev.matched.params,
    principal,
    trace: ev.trace ? (ev.trace.stages ??= {}) : undefined,
    dryRun: ev.dryRun,
  };
}

export function createDecider(deps: DeciderDeps): Decider {
  const { policy, verifier } = deps;
  const realm = policy.authRealm;

  function allow(ev: Eval, principal: Principal | undefined, outputs: readonly StageOutput[] = []): Decision {
    const { input, route } = ev;
    let set = renderHeaders(route.headers, principal, route.name, ev.matched);
    let extraRemove: string[] | undefined;
    let extraMeta: Record<string, string | string[]> | undefined;
    for (const o of outputs) {
      if (o.headers && o.headers.length > 0) {
        const names = new Set(o.headers.map((h) => h.name));
        set = [...set.filter((h) => !names.has(h.name)), ...o.headers];
      }
      if (o.remove) (extraRemove ??= []).push(...o.remove);
      if (o.metadata) extraMeta = { ...extraMeta, ...o.metadata };
    }
    const remove = headersToRemove(input, policy.owned, set);
    // A header the route sets is portcullis's, owned or not: when it renders nothing
    // this time (claim absent), the client's copy must not pass in its place.
    for (const h of route.headers) {
      if (input.headers.has(h.name) && !remove.includes(h.name) && !set.some((x) => x.name === h.name)) remove.push(h.name);
    }
    if (extraRemove) {
      for (const name of extraRemove) {
        if (!remove.includes(name) && !set.some((h) => h.name === name) && input.headers.has(name)) remove.push(name);
      }
    }
    if (ev.trace) {
      ev.trace.headersSet = set.map((h) => h.name);
      ev.trace.headersRemoved = remove;
    }
    const metadata = principalMetadata(principal, route.name);
    if (extraMeta) Object.assign(metadata, extraMeta);
    metadata.decision = 'allow';
    if (ev.wouldDeny) metadata.would_deny = ev.wouldDeny.map((w) => w.reason);
    return { kind: 'allow', route: route.name, principal, headersToSet: set, headersToRemove: remove, metadata, wouldDeny: ev.wouldDeny };
  }

  function deny(ev: Eval, d: Denial, principal?: Principal): Deny {
    return toDeny(d, realm, ev.route.name, principal);
  }

  function authorize(ev: Eval, principal: Principal, pre: StageOutput[] | undefined): Decision | Promise<Decision> {
    const route = ev.route;
    if (route.roles) {
      const d = checkRoles(principal, route.roles);
      const shadow = route.shadowRequirements.has('roles');
      if (ev.trace) {
        ev.trace.roles = {
          required: `${route.roles.mode}: ${route.roles.roles.join(', ')}`,
          found: [...principal.effectiveRoles],
          result: d ? d.reason : 'ok',
          shadow: shadow || undefined,
        };
      }
      if (d) {
        if (!shadow) {
          if (ev.trace) ev.trace.deniedBy = 'roles';
          return deny(ev, d, principal);
        }
        shadowed(ev, 'roles', d);
      }
    }
    if (route.after.length === 0) return allow(ev, principal, pre);
    const r = runStages(ev, route.after, stageContext(ev, principal), 0, pre ? [...pre] : []);
    const finish = (res: Denial | StageOutput[]): Decision => (isDenial(res) ? deny(ev, res, principal) : allow(ev, principal, res));
    return r instanceof Promise ? r.then(finish) : finish(r);
  }

  /** Tries each candidate in order; the first valid token wins. */
  function authenticate(ev: Eval, candidates: readonly Candidate[], i: number, best: Denial | undefined): Principal | Denial | Promise<Principal | Denial> {
    for (; i < candidates.length; i++) {
      const c = candidates[i] as Candidate;
      const r = verifier.verify(c.token, c.source, ev.dryRun);
      if (r instanceof Promise) {
        const at = i;
        return r.then((res) => {
          const settled = settle(ev, res, c);
          if (!isDenial(settled)) return settled;
          return authenticate(ev, candidates, at + 1, pick(best, settled));
        });
      }
      const settled = settle(ev, r, c);
      if (!isDenial(settled)) return settled;
      best = pick(best, settled);
    }
    return best ?? denial('missing_credentials', 'no credentials');
  }

  function settle(ev: Eval, r: VerifyResult, c: Candidate): Principal | Denial {
    let out: Principal | Denial = r;
    const issuers = ev.route.issuers;
    if (!isDenial(r) && issuers && !issuers.has(r.issuerName)) {
      out = denial('issuer_not_allowed', `tokens of issuer "${r.issuerName}" are not accepted on this route`);
    }
    if (ev.trace) {
      (ev.trace.tokens ??= []).push({
        source: c.source,
        issuer: isDenial(r) ? undefined : r.issuerName,
        kid: isDenial(r) ? undefined : r.kid,
        alg: isDenial(r) ? undefined : r.alg,
        result: isDenial(out) ? out.reason : 'valid',
      });
    }
    return out;
  }

  function pick(best: Denial | undefined, d: Denial): Denial {
    return !best || failureRank(d) < failureRank(best) ? d : best;
  }

  function credentials(ev: Eval, pre: StageOutput[] | undefined): Decision | Promise<Decision> {
    const route = ev.route;
    if (route.allow === 'anonymous') return allow(ev, undefined, pre);
    const notes: SourceNote[] | undefined = ev.trace ? (ev.trace.sources = []) : undefined;
    const candidates = collectCandidates(ev.input, route.sources, policy.maxTokenBytes, notes);
    const authFailed = (d: Denial): Deny => {
      if (ev.trace) ev.trace.deniedBy = 'credentials';
      return deny(ev, d);
    };
    if (isDenial(candidates)) return authFailed(candidates);
    if (candidates.length === 0) {
      return authFailed(denial('missing_credentials', `no bearer token in ${route.sources.map((s) => s.label).join(', ')}`));
    }
    const authn = authenticate(ev, candidates, 0, undefined);
    if (authn instanceof Promise) return authn.then((res) => (isDenial(res) ? authFailed(res) : authorize(ev, res, pre)));
    return isDenial(authn) ? authFailed(authn) : authorize(ev, authn, pre);
  }

  function evaluate(ev: Eval): Decision | Promise<Decision> {
    const route = ev.route;
    if (route.allow === 'deny') {
      if (ev.trace) ev.trace.deniedBy = 'route';
      return deny(ev, denial('route_denied', 'this route is closed'));
    }
    if (route.before.length === 0) return credentials(ev, undefined);
    const pre = runStages(ev, route.before, stageContext(ev, undefined), 0, []);
    if (pre instanceof Promise) return pre.then((res) => (isDenial(res) ? deny(ev, res) : credentials(ev, res)));
    return isDenial(pre) ? deny(ev, pre) : credentials(ev, pre);
  }

  /** Shadow route: whatever it would deny is recorded and the request is allowed. */
  function shadowRoute(ev: Eval, d: Decision): Decision {
    if (d.kind === 'allow') return d;
    shadowed(ev, ev.trace?.deniedBy?.replace(/ \(shadow\)$/, '') ?? 'route', { denied: true, reason: d.reason, status: d.status, message: d.message });
    return allow(ev, d.principal);
  }

  function run(input: CheckInput, trace: DecisionTrace | undefined, dryRun: boolean): Decision | Promise<Decision> {
    let matched: Matched<CompiledRoute> | undefined;
    const named = input.contextExtensions.get(policy.routeContextKey);
    if (named !== undefined) {
      const byName = policy.table.byName(named);
      if (trace) trace.route = { name: named, by: 'context_extensions' };
      if (!byName) {
        if (trace) trace.deniedBy = 'route';
        return toDeny(denial('no_route', `Envoy names route "${headerSafe(named)}", which is not configured`), realm);
      }
      matched = { route: byName, params: {} };
    } else {
      // match() splits and checks the path itself and matches nothing when splitRequestPath
      // rejects it (RouteTable's contract), so the path is split again only when nothing matched.
      matched = policy.table.match(input.host, input.method, input.path);
      if (matched) {
        if (trace) trace.route = { name: matched.route.name, by: 'table', params: { ...matched.params } };
      } else {
        const check = splitRequestPath(input.path);
        if (!check.ok) {
          if (trace) trace.deniedBy = 'route';
          return toDeny(denial('malformed_request', `request path rejected: ${check.message}`), realm);
        }
        if (trace) trace.route = { name: NO_ROUTE, by: 'none' };
      }
    }
    if (!matched) {
      if (policy.onNoRoute === 'allow') {
        return { kind: 'allow', route: NO_ROUTE, headersToSet: [], headersToRemove: headersToRemove(input, policy.owned, []), metadata: { route: NO_ROUTE, decision: 'allow' } };
      }
      if (trace) trace.deniedBy = 'route';
      return toDeny(denial('no_route', 'no route matches this request'), realm);
    }
    const route = matched.route;
    if (trace?.route) trace.route.shadow = route.shadow || undefined;
    const ev: Eval = { input, route, matched, trace, dryRun, wouldDeny: undefined };
    const d = evaluate(ev);
    if (!route.shadow) return d;
    return d instanceof Promise ? d.then((r) => shadowRoute(ev, r)) : shadowRoute(ev, d);
  }

  const internal = (err: unknown): Deny =>
    toDeny(denial('internal_error', `internal error: ${err instanceof Error ? err.name : 'unknown'}`), realm);

  return {
    decide(input, trace, opts) {
      try {
        const d = run(input, trace, opts?.dryRun === true);
        return d instanceof Promise ? d.catch(internal) : d;
      } catch (err) {
        return internal(err);
      }
    },
  };
}
