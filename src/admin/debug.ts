import type { CheckInput, Decision } from '../core/types.js';

/**
 * Recent decisions for the debug page: a fixed-size ring buffer of redacted
 * summaries (no tokens, no headers, no query strings). Filled only by real
 * traffic, never by explain.
 */
export interface RecentDecision {
  time: string;
  route: string;
  decision: 'allow' | 'deny';
  status: number;
  reason?: string;
  sub?: string;
  tenant?: string;
  method: string;
  host: string;
  path: string;
  peer?: string;
  wouldDeny?: string[];
  latencyMs: number;
}

export interface DecisionFilter {
  route?: string;
  decision?: string;
  reason?: string;
  sub?: string;
  limit?: number;
}

export interface DecisionRing {
  /**
   * Records one decision. Runs on every request, so it allocates nothing:
   * the ring's slots are preallocated columns, and the summary objects the
   * debug page reads are built only by `list()`. (An object per decision,
   * alive for the ring's length, survived young-generation collections and
   * made them ≈ 3× longer; docs/design/performance.md, "Garbage".)
   */
  record(d: Decision, input: CheckInput, atMs: number, latencyMs: number): void;
  list(f: DecisionFilter): RecentDecision[];
  readonly capacity: number;
}

const ALLOW = 0;
const DENY = 1;

export function createDecisionRing(capacity: number): DecisionRing {
  const at = new Float64Array(capacity);
  const latency = new Float64Array(capacity);
  const status = new Uint16Array(capacity);
  const kind = new Uint8Array(capacity);
  // References to strings that already exist (route names, reason codes, the principal's
  // identity, the request's method/host/path/peer): no copies are made here.
  const route: string[] = new Array<string>(capacity).fill('');
  const reason: (string | undefined)[] = new Array<string | undefined>(capacity).fill(undefined);
  const sub: (string | undefined)[] = new Array<string | undefined>(capacity).fill(undefined);
  const tenant: (string | undefined)[] = new Array<string | undefined>(capacity).fill(undefined);
  const method: string[] = new Array<string>(capacity).fill('');
  const host: string[] = new Array<string>(capacity).fill('');
  const path: string[] = new Array<string>(capacity).fill('');
  const peer: (string | undefined)[] = new Array<string | undefined>(capacity).fill(undefined);
  const wouldDeny: (readonly { requirement: string; reason: string }[] | undefined)[] = new Array<undefined>(capacity).fill(undefined);
  let next = 0;
  let filled = 0;

  function entry(i: number): RecentDecision {
    const w = wouldDeny[i];
    return {
      time: new Date(at[i] as number).toISOString(),
      route: route[i] as string,
      decision: kind[i] === DENY ? 'deny' : 'allow',
      status: status[i] as number,
      reason: reason[i],
      sub: sub[i],
      tenant: tenant[i],
      method: method[i] as string,
      host: host[i] as string,
      path: path[i] as string,
      peer: peer[i],
      wouldDeny: w?.map((x) => `${x.requirement}:${x.reason}`),
      latencyMs: Math.round((latency[i] as number) * 1e3) / 1e3,
    };
  }

  return {
    capacity,
    record(d, input, atMs, latencyMs) {
      if (capacity === 0) return;
      const i = next;
      at[i] = atMs;
      latency[i] = latencyMs;
      route[i] = d.route ?? '(none)';
      method[i] = input.method;
      host[i] = input.host;
      path[i] = input.path;
      peer[i] = input.peerPrincipal;
      sub[i] = d.principal?.qualifiedSub;
      tenant[i] = d.principal?.issuerName;
      if (d.kind === 'deny') {
        kind[i] = DENY;
        status[i] = d.status;
        reason[i] = d.reason;
        wouldDeny[i] = undefined;
      } else {
        kind[i] = ALLOW;
        status[i] = 200;
        reason[i] = undefined;
        wouldDeny[i] = d.wouldDeny;
      }
      next = i + 1 === capacity ? 0 : i + 1;
      if (filled < capacity) filled++;
    },
    list(f) {
      const out: RecentDecision[] = [];
      const limit = f.limit ?? capacity;
      for (let n = 0; n < filled && out.length < limit; n++) {
        const i = (next - 1 - n + capacity * 2) % capacity;
        if (f.route && route[i] !== f.route) continue;
        if (f.decision && (kind[i] === DENY ? 'deny' : 'allow') !== f.decision) continue;
        if (f.reason && reason[i] !== f.reason) continue;
        if (f.sub && !(sub[i] ?? '').includes(f.sub)) continue;
        out.push(entry(i));
      }
      return out;
    },
  };
}

/** The debug page: plain HTML and a little script against the JSON endpoints next to it. */
export const DEBUG_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>portcullis debug</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}
 h1{font-size:1.3rem} h2{font-size:1.1rem;margin-top:1.5rem}
 table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:.25rem .4rem;text-align:left;vertical-align:top}
 tr.deny td.decision{color:#b00020;font-weight:600} tr.allow td.decision{color:#0a7d32}
 input,select,textarea,button{font:inherit} textarea{width:100%;height:4.5rem}
 pre{background:#f6f6f6;padding:.6rem;overflow:auto;white-space:pre-wrap}
 .row{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center}
 button.explain{font-size:.8rem}
</style></head>
<body>
<h1>portcullis</h1>
<section id="status-section"><h2>Issuers and caches</h2><div id="status">loading…</div></section>
<section><h2>Explain a request</h2>
 <form id="explain-form">
  <label for="curl">curl command (or method and URL with -H headers)</label>
  <textarea id="curl" name="curl" placeholder="curl -X POST -H 'authorization: Bearer …' http://router.example/v1/sandboxes/s1/invoke"></textarea>
  <div class="row"><label>peer SPIFFE ID <input id="peer" name="peer" size="50"></label><button type="submit" id="explain-button">Explain</button></div>
 </form>
 <pre id="explain-output" aria-live="polite"></pre>
</section>
<section><h2>Recent decisions</h2>
 <form id="filter" class="row">
  <label>route <input name="route" size="14"></label>
  <label>decision <select name="decision"><option value="">any</option><option>allow</option><option>deny</option></select></label>
  <label>reason <input name="reason" size="16"></label>
  <label>subject <input name="sub" size="16"></label>
  <button type="submit">Filter</button>
 </form>
 <table id="decisions"><thead><tr><th>time</th><th>decision</th><th>status</th><th>reason</th><th>route</th><th>subject</th><th>request</th><th></th></tr></thead><tbody></tbody></table>
</section>
<script>
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
async function loadStatus() {
  const s = await (await fetch('debug/status')).json();
  const rows = s.issuers.map((i) => '<tr><td>' + esc(i.name) + '</td><td>' + esc(i.state) + '</td><td>' + esc(i.keyCount) + '</td><td>' + esc(i.lastSuccessAt || '') + '</td><td>' + esc(i.lastError || '') + '</td></tr>').join('');
  document.getElementById('status').innerHTML = '<table><thead><tr><th>issuer</th><th>key state</th><th>keys</th><th>last fetch</th><th>last error</th></tr></thead><tbody>' + rows + '</tbody></table>'
    + '<p>token cache: ' + esc(s.tokenCache.size) + ' entries; hits ' + esc(s.tokenCache.hits) + ', misses ' + esc(s.tokenCache.misses) + '</p>';
}
let current = [];
async function loadDecisions() {
  const q = new URLSearchParams(new FormData(document.getElementById('filter')));
  for (const [k, v] of [...q]) if (!v) q.delete(k);
  current = await (await fetch('debug/decisions?' + q)).json();
  document.querySelector('#decisions tbody').innerHTML = current.map((d, i) => '<tr class="' + esc(d.decision) + '"><td>' + esc(d.time) + '</td><td class="decision">' + esc(d.decision)
    + (d.wouldDeny ? ' <small>(shadow: ' + esc(d.wouldDeny.join(', ')) + ')</small>' : '') + '</td><td>' + esc(d.status) + '</td><td class="reason">' + esc(d.reason || '')
    + '</td><td>' + esc(d.route) + '</td><td>' + esc(d.sub || '') + '</td><td>' + esc(d.method + ' ' + d.host + d.path) + '</td><td><button class="explain" data-i="' + i + '">explain</button></td></tr>').join('');
}
document.getElementById('filter').addEventListener('submit', (e) => { e.preventDefault(); loadDecisions(); });
document.querySelector('#decisions').addEventListener('click', (e) => {
  const b = e.target.closest('button.explain'); if (!b) return;
  const d = current[Number(b.dataset.i)];
  document.getElementById('curl').value = 'curl -X ' + d.method + ' http://' + d.host + d.path + "  # add the request's credentials with -H";
  document.getElementById('peer').value = d.peer || '';
  document.getElementById('curl').focus();
});
document.getElementById('explain-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const res = await fetch('debug/explain', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ curl: document.getElementById('curl').value, peer: document.getElementById('peer').value || undefined, format: 'text' }) });
  const body = await res.json();
  document.getElementById('explain-output').textContent = body.text || body.error_description || JSON.stringify(body, null, 2);
});
loadStatus(); loadDecisions(); setInterval(() => { loadStatus(); loadDecisions(); }, 5000);
</script>
</body></html>
`;
