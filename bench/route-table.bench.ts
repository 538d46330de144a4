/**
 * Route-table lookup cost for 10 vs 10,000 routes.
 * Run: npx vitest bench bench/route-table.bench.ts
 * Each bench iteration does BATCH lookups (per-call timer overhead would
 * otherwise dominate), so ns/lookup = 1e9 / (hz * BATCH) = 1e6 / hz.
 */
import { bench, describe } from 'vitest';
import { buildRouteTable, type RouteMatchSpec, type RouteTable } from '../src/pipeline/route-table.js';

interface BenchRoute {
  readonly name: string;
  readonly match: RouteMatchSpec;
}

const HOSTS = 100;
const BATCH = 1000;

function build(count: number): RouteTable<BenchRoute> {
  const routes: BenchRoute[] = [];
  for (let i = 0; i < count; i++) {
    routes.push({
      name: `route-${i}`,
      match: { hosts: [`h${i % HOSTS}.example.com`], methods: ['POST'], path: `/t${i}/sandboxes/{id}/invoke` },
    });
  }
  routes.push({ name: 'wild', match: { hosts: ['*.example.com'], path: '/v1/sandboxes/{id}/**' } });
  routes.push({ name: 'health', match: { path: '/healthz' } });
  const built = buildRouteTable(routes);
  if (!built.ok) throw new Error(JSON.stringify(built.issues));
  return built.table;
}

for (const count of [10, 10_000]) {
  const table = build(count);
  const last = count - 1;
  const host = `h${last % HOSTS}.example.com:443`;
  const path = `/t${last}/sandboxes/abc123/invoke`;
  if (table.match(host, 'POST', path)?.route.name !== `route-${last}`) throw new Error('bench setup: wrong match');

  describe(`${count} routes`, () => {
    bench('exact host, param route', () => {
      for (let k = 0; k < BATCH; k++) table.match(host, 'POST', path);
    });
    bench('fall through to *.suffix, /** route', () => {
      for (let k = 0; k < BATCH; k++) table.match('h3.example.com', 'GET', '/v1/sandboxes/abc/files/x/y');
    });
    bench('fall through to any host', () => {
      for (let k = 0; k < BATCH; k++) table.match('h3.example.com', 'GET', '/healthz');
    });
    bench('no match', () => {
      for (let k = 0; k < BATCH; k++) table.match('other.example.org', 'GET', '/nope/x');
    });
  });
}
