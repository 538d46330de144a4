import type { Decision } from '../core/types.js';
import type { DecisionTrace } from '../pipeline/decide.js';

/** Header names whose values are credentials: never shown, only their presence. */
const SECRET_HEADERS = /^(authorization|proxy-authorization|cookie|set-cookie|x-api-key)$/;
const JWT = /eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*/g;

export function redactValue(name: string, value: string): string {
  if (SECRET_HEADERS.test(name)) {
    const scheme = /^(\w+)\s/.exec(value)?.[1];
    return scheme ? `${scheme} [REDACTED]` : '[REDACTED]';
  }
  return value.replace(JWT, '[REDACTED_JWT]');
}

export interface ExplainResult {
  decision: 'allow' | 'deny';
  status: number;
  reason?: string;
  message?: string;
  route?: string;
  caller?: { sub: string; qualifiedSub: string; tenant: string; roles: readonly string[]; source: string };
  headersToSet: { name: string; value: string }[];
  headersToRemove: string[];
  wouldDeny?: { requirement: string; reason: string; status: number }[];
  deniedBy?: string;
  trace: DecisionTrace;
}

export function explainResult(d: Decision, trace: DecisionTrace): ExplainResult {
  const p = d.principal;
  return {
    decision: d.kind,
    status: d.kind === 'allow' ? 200 : d.status,
    reason: d.kind === 'deny' ? d.reason : undefined,
    message: d.kind === 'deny' ? d.message : undefined,
    route: d.route,
    caller: p ? { sub: p.sub, qualifiedSub: p.qualifiedSub, tenant: p.issuerName, roles: p.roles, source: p.source } : undefined,
    headersToSet: (d.kind === 'allow' ? d.headersToSet : d.headers).map((h) => ({ name: h.name, value: redactValue(h.name, h.value) })),
    headersToRemove: d.kind === 'allow' ? d.headersToRemove : [],
    wouldDeny: d.kind === 'allow' ? d.wouldDeny?.map((w) => ({ requirement: w.requirement, reason: w.reason, status: w.status })) : undefined,
    deniedBy: trace.deniedBy,
    trace,
  };
}

/** The human-readable form `portcullis explain` prints. */
export function formatExplain(r: ExplainResult): string {
  const t = r.trace;
  const lines: string[] = [];
  const verdict = r.decision === 'allow' ? `ALLOW (200)` : `DENY ${r.status} ${r.reason}`;
  lines.push(`decision: ${verdict}${r.message ? ` — ${r.message}` : ''}`);
  if (r.deniedBy) lines.push(`denied by: ${r.deniedBy}`);
  lines.push('');
  lines.push(`route:    ${t.route ? `${t.route.name} (by ${t.route.by}${t.route.shadow ? ', shadow' : ''})` : '(not reached)'}`);
  if (t.route?.params && Object.keys(t.route.params).length > 0) {
    lines.push(`          params ${Object.entries(t.route.params).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  if (t.stages?.peer) lines.push(`peer:     ${JSON.stringify(t.stages.peer)}`);
  if (t.sources) {
    lines.push(`credentials:`);
    for (const s of t.sources) lines.push(`  ${s.source.padEnd(28)} ${s.outcome}`);
  }
  if (t.tokens) {
    lines.push(`tokens:`);
    for (const tk of t.tokens) {
      const facts = [tk.issuer && `issuer=${tk.issuer}`, tk.kid && `kid=${tk.kid}`, tk.alg && `alg=${tk.alg}`].filter(Boolean).join(' ');
      lines.push(`  ${tk.source.padEnd(28)} ${tk.result}${facts ? `  (${facts})` : ''}`);
    }
  }
  if (r.caller) lines.push(`caller:   ${r.caller.qualifiedSub} roles=[${r.caller.roles.join(', ')}] from ${r.caller.source}`);
  if (t.roles) lines.push(`roles:    required ${t.roles.required}; have [${t.roles.found.join(', ')}] → ${t.roles.result}${t.roles.shadow ? ' (shadow)' : ''}`);
  for (const [name, facts] of Object.entries(t.stages ?? {})) {
    if (name !== 'peer') lines.push(`${`${name}:`.padEnd(10)}${JSON.stringify(facts)}`);
  }
  if (r.wouldDeny && r.wouldDeny.length > 0) {
    lines.push(`shadow:   would deny: ${r.wouldDeny.map((w) => `${w.requirement} → ${w.status} ${w.reason}`).join('; ')}`);
  }
  if (r.headersToSet.length > 0) {
    lines.push(r.decision === 'allow' ? 'headers set upstream:' : 'headers to the client:');
    for (const h of r.headersToSet) lines.push(`  ${h.name}: ${h.value}`);
  }
  if (r.headersToRemove.length > 0) lines.push(`headers removed: ${r.headersToRemove.join(', ')}`);
  return `${lines.join('\n')}\n`;
}
