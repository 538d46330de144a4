/**
 * Turns bench/results/latest.json into the tables of docs/benchmarks.md and
 * the summary `npm run bench` prints: throughput at saturation, latency at
 * fixed offered loads, ratios to set-ups 2 (Envoy jwt_authn + rbac) and 5
 * (OPA), and the issue's targets with met/missed.
 */
import type { BenchResults, Point, SetupResult, Workload } from '../load.js';

const WORKLOAD_TITLE: Record<Workload, string> = {
  same: 'same token',
  distinct: 'all different tokens (uncached verification)',
  users: '1,000 users, warm caches',
};

function sat(r: SetupResult | undefined): Point | undefined {
  return r?.points.find((p) => p.kind === 'saturation');
}

function at(r: SetupResult | undefined, rate: number): Point | undefined {
  return r?.points.find((p) => p.kind === 'fixed' && p.offered === rate);
}

function errs(p: Point): number {
  const e = p.errors;
  return e.status + e.connect + e.read + e.write + e.timeout;
}

const f = (n: number | undefined, d = 2): string => (n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(d));
const cpu = (p: Point, k: string): string => (p.cpu.usPerRequest[k] === undefined ? '–' : String(p.cpu.usPerRequest[k]));

export function renderMarkdown(res: BenchResults): { full: string; summary: string } {
  const m = res.meta;
  const find = (key: string, w: Workload): SetupResult | undefined => res.results.find((r) => r.key === key && r.workload === w);
  const baseline = (w: Workload): SetupResult | undefined => find('noauth', 'same') ?? find('noauth', w);
  const lines: string[] = [];
  const summary: string[] = [];
  const la = (v: unknown): string => (Array.isArray(v) ? v.map((x) => Number(x).toFixed(2)).join(' / ') : '?');

  lines.push(`Run: \`${String(m.command)}\` on ${String(m.date)} (finished ${String(m.finished)}).`);
  lines.push('');
  lines.push(`Machine: ${String(m.cores)} cores (${String(m.cpuModel)}), Linux ${String(m.kernel)}; load average (1/5/15 min) ${la(m.loadavgStart)} at the start, ${la(m.loadavgEnd)} at the end.`);
  lines.push(`Versions: Envoy ${String(m.envoy)} with \`--concurrency ${String(m.envoyConcurrency)}\`; node ${String(m.node)}; ${String(m.wrk)}; OPA ${String(m.opa)}.`);
  const satConnections = Array.isArray(m.saturationConnections) ? (m.saturationConnections as number[]) : [Number(m.connections)];
  lines.push(`Load: wrk, 1 thread, ${String(m.seconds)} s per point; saturation at ${satConnections.join(' and ')} connections in ${String(m.rounds)} rotated rounds each (per connection count the median run; a set-up's saturation is its best median; ${String(m.warmupSeconds)} s warm-up before the first run, 1 s before later ones); fixed loads at ${String(m.connections)} connections in ${String(m.fixedRounds ?? 1)} rotated rounds (the round with the median p99 reported, every round's p99 listed); ${String(m.tokenPool)} distinct RS256 tokens in the \`distinct\` pool.`);
  lines.push('');

  const workloads: Workload[] = ['same', 'distinct', 'users'];
  for (const w of workloads) {
    const rows = res.results.filter((r) => r.workload === w || (w !== 'same' && r.key === 'noauth' && r.workload === 'same'));
    if (!rows.some((r) => r.workload === w)) continue;
    lines.push(`### Saturation — ${WORKLOAD_TITLE[w]}`);
    lines.push('');
    lines.push('| # | set-up | req/s (best median) | connections | median at each count | each round (at that count) | p50 ms | p99 ms | p99.9 ms | errors | ÷ set-up 2 | ÷ set-up 5 | CPU µs/req: envoy | authorizer | upstream |');
    lines.push('|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    const native = sat(find('jwt-rbac', w === 'users' ? 'same' : w));
    const opa = sat(find('opa', w === 'users' ? 'same' : w));
    for (const r of rows) {
      const p = sat(r);
      if (!p) continue;
      const label = r.key === 'noauth' && w !== 'same' ? `${r.title} (same requests)` : r.title;
      lines.push(
        `| ${r.id} | ${label} | ${p.achieved} | ${p.connections ?? '–'} | ${Object.entries(r.saturationByConnections ?? {}).map(([c, v]) => `${c}: ${v}`).join(' · ')} | ` +
          `${(r.rounds ?? []).filter((x) => x.connections === p.connections).map((x) => x.achieved).join(', ')} | ${f(p.latencyMs.p50)} | ${f(p.latencyMs.p99)} | ${f(p.latencyMs.p999)} | ${errs(p)} | ` +
          `${native ? f(p.achieved / native.achieved) : '–'} | ${opa ? f(p.achieved / opa.achieved) : '–'} | ${cpu(p, 'envoy')} | ${cpu(p, 'authz')} | ${cpu(p, 'upstream')} |`,
      );
    }
    if (w === 'users') lines.push('', 'Ratios for this workload are to set-ups 2 and 5 with the same-token workload (they have no per-user state to warm).');
    // portcullis's token cache in the reported runs: the all-different-tokens workload must miss, the others hit.
    const cacheNotes: string[] = [];
    for (const r of rows) {
      if (r.workload !== w) continue;
      const runs = [...(r.rounds ?? []), ...r.points.filter((p) => p.kind === 'fixed')].filter((p) => p.tokenCache);
      if (runs.length === 0) continue;
      const hits = runs.reduce((a, p) => a + (p.tokenCache?.hits ?? 0), 0);
      const misses = runs.reduce((a, p) => a + (p.tokenCache?.misses ?? 0), 0);
      cacheNotes.push(`set-up ${r.id}: ${hits} hits, ${misses} misses`);
    }
    if (cacheNotes.length > 0) lines.push('', `portcullis's token cache in these saturation runs and the reported fixed-load runs: ${cacheNotes.join('; ')}.`);
    lines.push('');

    const rates = [...new Set(rows.flatMap((r) => r.points.filter((p) => p.kind === 'fixed').map((p) => p.offered)))].sort((a, b) => a - b);
    for (const rate of rates) {
      const base = at(baseline(w), rate);
      lines.push(`#### Fixed load ${rate} req/s — ${WORKLOAD_TITLE[w]}`);
      lines.push('');
      lines.push('| # | set-up | achieved req/s | p50 ms | p90 ms | p99 ms (median round) | p99 each round | p99.9 ms | p99 − no-auth p99 | errors |');
      lines.push('|---|---|---:|---:|---:|---:|---|---:|---:|---:|');
      for (const r of rows) {
        const p = at(r, rate);
        if (!p) continue;
        const delta = base && r.key !== 'noauth' ? f(p.latencyMs.p99 - base.latencyMs.p99) : '–';
        const each = (p.p99Rounds ?? [p.latencyMs.p99]).map((x) => f(x)).join(', ');
        lines.push(`| ${r.id} | ${r.title} | ${p.achieved} | ${f(p.latencyMs.p50)} | ${f(p.latencyMs.p90)} | ${f(p.latencyMs.p99)} | ${each} | ${f(p.latencyMs.p999)} | ${delta} | ${errs(p)} |`);
      }
      lines.push('');
    }
  }

  // Targets
  const half = (m.halfSaturationRps ?? {}) as Partial<Record<Workload, number>>;
  const targetRows: string[] = [];
  for (const w of ['same', 'distinct'] as const) {
    const g = sat(find('pc-grpc', w));
    const n = sat(find('jwt-rbac', w));
    const o = sat(find('opa', w));
    if (g && n) {
      const r = g.achieved / n.achieved;
      targetRows.push(`| gRPC throughput ≥ 0.8× jwt_authn + rbac (${w}) | ${g.achieved} / ${n.achieved} = ${f(r)}× | ${r >= 0.8 ? 'met' : 'missed'} |`);
    }
    if (g && o) {
      const r = g.achieved / o.achieved;
      targetRows.push(`| gRPC throughput ≥ 2× OPA (${w}) | ${g.achieved} / ${o.achieved} = ${f(r)}× | ${r >= 2 ? 'met' : 'missed'} |`);
    }
    const h = half[w];
    const gp = h ? at(find('pc-grpc', w), h) : undefined;
    const bp = h ? at(baseline(w), h) : undefined;
    if (h && gp && bp) {
      const d = gp.latencyMs.p99 - bp.latencyMs.p99;
      const rounds = (p: Point): string => (p.p99Rounds && p.p99Rounds.length > 1 ? p.p99Rounds.map((x) => f(x)).join(', ') : '');
      const spread = rounds(gp) && rounds(bp) ? ` (each round: ${rounds(gp)} against ${rounds(bp)})` : '';
      targetRows.push(`| p99 at half saturation (${h} req/s, ${w}) adds ≤ 1 ms over no-auth | ${f(gp.latencyMs.p99)} − ${f(bp.latencyMs.p99)} = ${f(d)} ms${spread} | ${d <= 1 ? 'met' : 'missed'} |`);
    }
  }
  if (targetRows.length > 0) {
    lines.push('### Targets (load)');
    lines.push('');
    lines.push('| target | measured | |');
    lines.push('|---|---|---|');
    lines.push(...targetRows);
    lines.push('');
  }
  const noteLines = new Set<string>();
  for (const r of res.results) {
    for (const n of r.notes) {
      if (n.startsWith('smoke')) continue;
      noteLines.add(n.startsWith('portcullis denials') ? `- set-up ${r.id}: ${n}` : `- set-up ${r.id} (${r.workload}): ${n}`);
    }
  }
  lines.push(...noteLines);
  const smoke = [...new Set(res.results.flatMap((r) => r.notes.filter((n) => n.startsWith('smoke')).map((n) => `set-up ${r.id}: ${n.slice(7)}`)))];
  if (smoke.length > 0) lines.push('', `Checks before measuring (the authorizer is live): ${smoke.join('; ')}.`);

  summary.push('set-up / workload                         sat req/s   p99 ms   ÷2     ÷5');
  for (const r of res.results) {
    const p = sat(r);
    if (!p) continue;
    const w = r.workload === 'users' ? 'same' : r.workload;
    const n = sat(find('jwt-rbac', w));
    const o = sat(find('opa', w));
    summary.push(
      `${`${r.id} ${r.title} / ${r.workload}`.padEnd(42)}${String(p.achieved).padStart(9)}${f(p.latencyMs.p99).padStart(9)}${(n ? f(p.achieved / n.achieved) : '–').padStart(7)}${(o ? f(p.achieved / o.achieved) : '–').padStart(7)}`,
    );
  }
  summary.push(...targetRows.map((t) => t.replace(/^\| /, '').replace(/ \|$/, '').replace(/ \| /g, ' : ')));
  return { full: lines.join('\n'), summary: summary.join('\n') };
}
