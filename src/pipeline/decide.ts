import { denial, isDenial, type Denial } from '../core/errors.js';
import type { CheckInput, Decision, Deny, HeaderToSet, Principal } from '../core/types.js';
import { collectCandidates, type Candidate, type SourceNote } from '../stages/credentials.js';
import { headersToRemove, principalMetadata, renderHeaders } from '../stages/response.js';
import { checkRoles } from '../stages/roles.js';
import type { Verifier, VerifyResult } from '../stages/verify.js';
import type { CompiledRoute, Policy } from './policy.js';
import { splitRequestPath } from './route-table.js';
import type { RouteStage, StageContext, StageOutput, StageResult } from './stage.js';

/**
 * The pipeline, top to bottom:
 *
 *   route       → table match (host, method, path) or context_extensions name
 *   allow       → `deny` routes stop here; `anonymous` routes skip to response
 *   credentials → ordered sources, fall-through to the next on an unusable token
 *   verify      → issuer by `iss`, key by `kid`, signature, claims (cached)
 *   roles       → anyOf / allOf over the inheritance closure
 *   response    → headers to set, spoofed owned headers to remove, metadata
 *
 * Nothing here throws to the caller: an unexpected error is a deny
 * (`internal_error`), never an allow. The result is synchronous unless a
 * signing key had to be fetched.
 */
export interface DecisionTrace {
  route?: { name: string; by: 'context_extensions' | 'table' | 'none'; params?: Record<string, string> };
  sources?: SourceNote[];
  tokens?: { source: string; issuer?: string; result: string }[];
  roles?: { required?: string; found: string[] };
  headersSet?: string[];
  headersRemoved?: string[];
  /** What each optional stage recorded, by stage name. */
  stages?: Record<string, unknown>;
}

export interface Decider {
  decide(input: CheckInput, trace?: DecisionTrace): Decision | Promise<Decision>;
}

export interface DeciderDeps {
  policy: Policy;
  verifier: Verifier;
}

const NO_ROUTE = '(none)';

function bearerChallenge(realm: string, d: Denial): HeaderToSet {
  const esc = (s: string) => s.replace(/["\\]/g, "'");
  if (d.reason === 'missing_credentials') return { name: 'www-authenticate', value: `Bearer realm="${esc(realm)}"` };
  const error = d.status === 400 ? 'invalid_request' : 'invalid_token';
  return {
    name: 'www-authenticate',
    value: `Bearer realm="${esc(realm)}", error="${error}", error_description="${esc(d.message)}"`,
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

/**
 * Runs stages in order, synchronously while they answer synchronously.
 * Collects their outputs; stops at the first denial.
 */
function runStages(stages: readonly RouteStage[], ctx: StageContext, i: number, acc: StageOutput[]): Denial | StageOutput[] | Promise<Denial | StageOutput[]> {
  for (; i < stages.length; i++) {
    const r: StageResult | Promise<StageResult> = (stages[i] as RouteStage).run(ctx);
    if (r instanceof Promise) {
      const at = i;
      return r.then((res) => {
        if (isDenial(res)) return res;
        if (res) acc.push(res);
        return runStages(stages, ctx, at + 1, acc);
      });
    }
    if (isDenial(r)) return r;
    if (r) acc.push(r);
  }
  return acc;
}

function stageContext(input: CheckInput, routeName: string, params: Readonly<Record<string, string>>, principal: Principal | undefined, trace: DecisionTrace | undefined): StageContext {
  return { input, routeName, params, principal, trace: trace ? (trace.stages ??= {}) : undefined };
}

export function createDecider(deps: DeciderDeps): Decider {
  const { policy, verifier } = deps;

  function allow(
    input: CheckInput,
    route: CompiledRoute,
    params: Readonly<Record<string, string>>,
    principal: Principal | undefined,
    trace: DecisionTrace | undefined,
    outputs: readonly StageOutput[] = [],
  ): Decision {
    let set = renderHeaders(route.headers, principal, route.name, params);
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
    if (extraRemove) {
      for (const name of extraRemove) {
        if (!remove.includes(name) && !set.some((h) => h.name === name) && input.headers.has(name)) remove.push(name);
      }
    }
    if (trace) {
      trace.headersSet = set.map((h) => h.name);
      trace.headersRemoved = remove;
    }
    const metadata = principalMetadata(principal, route.name);
    if (extraMeta) Object.assign(metadata, extraMeta);
    metadata.decision = 'allow';
    return { kind: 'allow', route: route.name, principal, headersToSet: set, headersToRemove: remove, metadata };
  }

  function authorize(
    input: CheckInput,
    route: CompiledRoute,
    params: Readonly<Record<string, string>>,
    principal: Principal,
    trace: DecisionTrace | undefined,
    pre: StageOutput[] | undefined,
  ): Decision | Promise<Decision> {
    if (route.roles) {
      if (trace) trace.roles = { required: `${route.roles.mode}: ${route.roles.roles.join(', ')}`, found: [...principal.effectiveRoles] };
      const d = checkRoles(principal, route.roles);
      if (d) return toDeny(d, policy.authRealm, route.name, principal);
    }
    if (route.after.length === 0) return allow(input, route, params, principal, trace, pre);
    const r = runStages(route.after, stageContext(input, route.name, params, principal, trace), 0, pre ? [...pre] : []);
    const finish = (res: Denial | StageOutput[]): Decision =>
      isDenial(res) ? toDeny(res, policy.authRealm, route.name, principal) : allow(input, route, params, principal, trace, res);
    return r instanceof Promise ? r.then(finish) : finish(r);
  }

  /** Tries each candidate in order; the first valid token wins. */
  function authenticate(
    candidates: readonly Candidate[],
    i: number,
    route: CompiledRoute,
    best: Denial | undefined,
    trace: DecisionTrace | undefined,
  ): Principal | Denial | Promise<Principal | Denial> {
    for (; i < candidates.length; i++) {
      const c = candidates[i] as Candidate;
      const r = verifier.verify(c.token, c.source);
      if (r instanceof Promise) {
        const at = i;
        return r.then((res) => {
          const settled = settle(res, c, route, trace);
          if (!isDenial(settled)) return settled;
          return authenticate(candidates, at + 1, route, pick(best, settled), trace);
        });
      }
      const settled = settle(r, c, route, trace);
      if (!isDenial(settled)) return settled;
      best = pick(best, settled);
    }
    return best ?? denial('missing_credentials', 'no credentials');
  }

  function settle(r: VerifyResult, c: Candidate, route: CompiledRoute, trace: DecisionTrace | undefined): Principal | Denial {
    let out: Principal | Denial = r;
    if (!isDenial(r) && route.issuers && !route.issuers.has(r.issuerName)) {
      out = denial('issuer_not_allowed', `tokens of issuer "${r.issuerName}" are not accepted on this route`);
    }
    if (trace) {
      (trace.tokens ??= []).push({
        source: c.source,
        issuer: isDenial(r) ? undefined : r.issuerName,
        result: isDenial(out) ? out.reason : 'valid',
      });
    }
    return out;
  }

  function pick(best: Denial | undefined, d: Denial): Denial {
    return !best || failureRank(d) < failureRank(best) ? d : best;
  }

  function run(input: CheckInput, trace?: DecisionTrace): Decision | Promise<Decision> {
    let route: CompiledRoute | undefined;
    let params: Readonly<Record<string, string>> = {};
    const named = input.contextExtensions.get(policy.routeContextKey);
    if (named !== undefined) {
      route = policy.table.byName(named);
      if (trace) trace.route = { name: named, by: 'context_extensions' };
      if (!route) {
        return toDeny(denial('no_route', `Envoy names route "${named}", which is not configured`), policy.authRealm);
      }
    } else {
      const check = splitRequestPath(input.path);
      if (!check.ok) return toDeny(denial('malformed_request', `request path rejected: ${check.message}`), policy.authRealm);
      const m = policy.table.match(input.host, input.method, input.path);
      if (m) {
        route = m.route;
        params = m.params;
        if (trace) trace.route = { name: route.name, by: 'table', params: { ...params } };
      } else if (trace) trace.route = { name: NO_ROUTE, by: 'none' };
    }
    if (!route) {
      if (policy.onNoRoute === 'allow') {
        return { kind: 'allow', route: NO_ROUTE, headersToSet: [], headersToRemove: headersToRemove(input, policy.owned, []), metadata: { route: NO_ROUTE, decision: 'allow' } };
      }
      return toDeny(denial('no_route', 'no route matches this request'), policy.authRealm);
    }
    if (route.allow === 'deny') return toDeny(denial('route_denied', 'this route is closed'), policy.authRealm, route.name);
    if (route.before.length > 0) {
      const r = route;
      const p = params;
      const pre = runStages(route.before, stageContext(input, route.name, params, undefined, trace), 0, []);
      if (pre instanceof Promise) {
        return pre.then((res) => (isDenial(res) ? toDeny(res, policy.authRealm, r.name) : authenticated(input, r, p, trace, res)));
      }
      if (isDenial(pre)) return toDeny(pre, policy.authRealm, route.name);
      return authenticated(input, route, params, trace, pre);
    }
    return authenticated(input, route, params, trace, undefined);
  }

  function authenticated(
    input: CheckInput,
    route: CompiledRoute,
    params: Readonly<Record<string, string>>,
    trace: DecisionTrace | undefined,
    preOutputs: StageOutput[] | undefined,
  ): Decision | Promise<Decision> {
    if (route.allow === 'anonymous') return allow(input, route, params, undefined, trace, preOutputs);

    const notes: SourceNote[] | undefined = trace ? (trace.sources = []) : undefined;
    const candidates = collectCandidates(input, route.sources, policy.maxTokenBytes, notes);
    if (isDenial(candidates)) return toDeny(candidates, policy.authRealm, route.name);
    if (candidates.length === 0) {
      return toDeny(denial('missing_credentials', `no bearer token in ${route.sources.map((s) => s.label).join(', ')}`), policy.authRealm, route.name);
    }
    const r = route;
    const p = params;
    const authn = authenticate(candidates, 0, r, undefined, trace);
    if (authn instanceof Promise) {
      return authn.then((res) => (isDenial(res) ? toDeny(res, policy.authRealm, r.name) : authorize(input, r, p, res, trace, preOutputs)));
    }
    return isDenial(authn) ? toDeny(authn, policy.authRealm, r.name) : authorize(input, r, p, authn, trace, preOutputs);
  }

  const internal = (err: unknown): Deny =>
    toDeny(denial('internal_error', `internal error: ${err instanceof Error ? err.name : 'unknown'}`), policy.authRealm);

  return {
    decide(input, trace) {
      try {
        const d = run(input, trace);
        return d instanceof Promise ? d.catch(internal) : d;
      } catch (err) {
        return internal(err);
      }
    },
  };
}
