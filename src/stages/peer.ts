import type { Config, RouteConfig } from '../config/schema.js';
import { denial, type ConfigIssue } from '../core/errors.js';
import type { RouteStage, StageFactory, StageResult } from '../pipeline/stage.js';

/**
 * Workload identity: which peer workloads (SPIFFE IDs, as Envoy reports them in
 * `attributes.source.principal` from the mTLS peer certificate) may call a route.
 *
 * Patterns: an exact ID (`spiffe://td/ns/x/sa/router`), a path prefix ending in
 * `/*` (`spiffe://td/ns/agentcube-system/*`: any ID below that path), or a whole
 * trust domain (`spiffe://td/*`). Matching is on the normalised ID: the
 * trust domain is case-insensitive, the path is not.
 */
export interface SpiffeMatcher {
  matches(id: string): boolean;
}

const SPIFFE = /^spiffe:\/\/([a-z0-9._-]+)(\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$/i;

export function parseSpiffeId(id: string): { trustDomain: string; path: string } | undefined {
  const m = SPIFFE.exec(id);
  if (!m) return undefined;
  const path = m[2] ?? '';
  if (path.includes('//') || /\/\.\.?(\/|$)/.test(path) || path.endsWith('/')) return undefined;
  return { trustDomain: (m[1] as string).toLowerCase(), path };
}

export function compileSpiffePatterns(patterns: readonly string[]): { ok: true; matcher: SpiffeMatcher } | { ok: false; issues: { index: number; message: string }[] } {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const issues: { index: number; message: string }[] = [];
  patterns.forEach((p, index) => {
    const wildcard = p.endsWith('/*');
    const base = wildcard ? p.slice(0, -2) : p;
    if (base.includes('*')) {
      issues.push({ index, message: `"${p}": "*" is only allowed as a final "/*" segment` });
      return;
    }
    const parsed = parseSpiffeId(base);
    if (!parsed || (!wildcard && parsed.path === '')) {
      issues.push({ index, message: `"${p}" is not a SPIFFE ID pattern (spiffe://trust-domain/path, .../prefix/*, or spiffe://trust-domain/*)` });
      return;
    }
    const norm = `spiffe://${parsed.trustDomain}${parsed.path}`;
    if (wildcard) prefixes.push(`${norm}/`);
    else exact.add(norm);
  });
  if (issues.length > 0) return { ok: false, issues };
  return {
    ok: true,
    matcher: {
      matches(id) {
        const parsed = parseSpiffeId(id);
        if (!parsed || parsed.path === '') return false;
        const norm = `spiffe://${parsed.trustDomain}${parsed.path}`;
        if (exact.has(norm)) return true;
        for (const p of prefixes) if (norm.startsWith(p)) return true;
        return false;
      },
    },
  };
}

export function createPeerStage(patterns: readonly string[], matcher: SpiffeMatcher): RouteStage {
  const missing = denial('peer_missing', 'this route requires a peer workload identity (mTLS with a SPIFFE ID) and none was presented');
  const notAllowed = denial('peer_not_allowed', 'the calling workload is not allowed on this route');
  return {
    name: 'peer',
    run(ctx): StageResult {
      const peer = ctx.input.peerPrincipal;
      const ok = peer !== undefined && peer.length > 0 && matcher.matches(peer);
      if (ctx.trace) ctx.trace.peer = { presented: peer ?? null, allowed: patterns, result: ok ? 'allowed' : peer ? 'not_allowed' : 'missing' };
      if (!peer) return missing;
      return ok ? undefined : notAllowed;
    },
  };
}

export function createPeerStageFactory(): StageFactory {
  return {
    name: 'peer',
    compile(route: RouteConfig, at: string, _config: Config) {
      const peers = route.require.peers;
      if (!peers) return undefined;
      const c = compileSpiffePatterns(peers);
      if (!c.ok) {
        const issues: ConfigIssue[] = c.issues.map((i) => ({ path: `${at}.require.peers[${i.index}]`, message: i.message }));
        return { issues };
      }
      return { phase: 'before', stage: createPeerStage(peers, c.matcher) };
    },
  };
}
