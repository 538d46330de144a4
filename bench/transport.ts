/**
 * `npm run bench:transport`: the gRPC transport alone, without Envoy. h2load
 * (Debian's nghttp2-client, installed by scripts/provision/bench-tools.sh)
 * sends the same Check request — an Envoy-shaped CheckRequest, 276 bytes on
 * the wire — over one HTTP/2 connection with 32 streams in flight to the two
 * transport floors of bench/grpc-floor.ts (decode into a CheckInput + a
 * precomputed allow, no decision):
 *   lean   portcullis's own HTTP/2 layer (src/adapters/envoy/h2/, grpc-server.ts)
 *   http2  node:http2, the transport portcullis used before
 * in alternating rounds, and prints requests per second and the server's CPU
 * microseconds per request (from /proc). Environment: TRANSPORT_REQUESTS
 * (200000), TRANSPORT_ROUNDS (3), TRANSPORT_STREAMS (32).
 * Writes bench/results/transport-latest.json.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadAuthorizationClient } from '../src/adapters/envoy/protos.js';
import { cpuTicks, spawnManaged } from './lib/procs.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const REQUESTS = Number(process.env.TRANSPORT_REQUESTS ?? '200000');
const ROUNDS = Number(process.env.TRANSPORT_ROUNDS ?? '3');
const STREAMS = Number(process.env.TRANSPORT_STREAMS ?? '32');

function checkBody(): Buffer {
  const Ctor = loadAuthorizationClient() as unknown as { service: { Check: { requestSerialize: (v: unknown) => Buffer } } };
  const path = '/v1/sandboxes/sbx-0/invoke';
  const headers = {
    ':authority': 'router.bench',
    ':method': 'POST',
    ':path': path,
    ':scheme': 'http',
    'x-request-id': '2f9c5a0e-1b7d-4c7e-9a3b-1f2e3d4c5b6a',
    'x-forwarded-proto': 'http',
    'content-length': '0',
  };
  const m = Ctor.service.Check.requestSerialize({ attributes: { request: { http: { id: '1', method: 'POST', host: 'router.bench', path, scheme: 'http', protocol: 'HTTP/1.1', headers } } } });
  const f = Buffer.alloc(5 + m.length);
  f.writeUInt32BE(m.length, 1);
  m.copy(f, 5);
  return f;
}

async function main(): Promise<void> {
  const tools = execFileSync('bash', [join(ROOT, 'scripts', 'provision', 'bench-tools.sh')], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const h2load = /^H2LOAD=(.*)$/m.exec(tools)?.[1];
  if (!h2load) throw new Error('bench-tools.sh printed no H2LOAD');
  const bodyFile = join(ROOT, '.cache', 'bench', 'check-request.bin');
  mkdirSync(dirname(bodyFile), { recursive: true });
  writeFileSync(bodyFile, checkBody());
  const results: { transport: string; round: number; rps: number; cpuUsPerRequest: number }[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const transport of round % 2 === 1 ? ['lean', 'http2'] : ['http2', 'lean']) {
      const { proc, value: port } = await spawnManaged(transport, process.execPath, [join(ROOT, 'dist', 'bench', 'grpc-floor.js'), transport], (out) => {
        const m = /LISTENING (\d+)/.exec(out);
        return m ? Number(m[1]) : undefined;
      });
      try {
        const args = ['-n', String(REQUESTS), '-c', '1', '-m', String(STREAMS), '-d', bodyFile, '-H', 'content-type: application/grpc', '-H', 'te: trailers'];
        // Warm-up (JIT), then the measured run.
        execFileSync(h2load, [...args.slice(0, 1), String(Math.min(20_000, REQUESTS)), ...args.slice(2), `http://127.0.0.1:${port}/envoy.service.auth.v3.Authorization/Check`], { stdio: 'ignore' });
        const before = cpuTicks(proc.pid);
        const out = execFileSync(h2load, [...args, `http://127.0.0.1:${port}/envoy.service.auth.v3.Authorization/Check`], { encoding: 'utf8' });
        const ticks = cpuTicks(proc.pid) - before;
        const rps = Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out)?.[1] ?? 'NaN');
        const ok = /(\d+) 2xx/.exec(out)?.[1];
        if (Number(ok) !== REQUESTS) throw new Error(`${transport}: not every request got 200:\n${out}`);
        const cpuUs = Math.round(((ticks / 100) * 1e6) / REQUESTS * 10) / 10;
        results.push({ transport, round, rps: Math.round(rps), cpuUsPerRequest: cpuUs });
        process.stdout.write(`round ${round} ${transport.padEnd(5)} ${String(Math.round(rps)).padStart(7)} req/s, server CPU ${cpuUs} µs/request\n`);
      } finally {
        await proc.stop();
      }
    }
  }
  const median = (t: string, k: 'rps' | 'cpuUsPerRequest'): number => {
    const v = results.filter((r) => r.transport === t).map((r) => r[k]).sort((a, b) => a - b);
    return v[Math.floor((v.length - 1) / 2)] ?? Number.NaN;
  };
  const summary = {
    lean: { rps: median('lean', 'rps'), cpuUsPerRequest: median('lean', 'cpuUsPerRequest') },
    http2: { rps: median('http2', 'rps'), cpuUsPerRequest: median('http2', 'cpuUsPerRequest') },
  };
  process.stdout.write(
    `median: lean ${summary.lean.rps} req/s (${summary.lean.cpuUsPerRequest} µs CPU/request), node:http2 ${summary.http2.rps} req/s (${summary.http2.cpuUsPerRequest} µs); ` +
      `${(summary.lean.rps / summary.http2.rps).toFixed(2)}× the throughput\n`,
  );
  const meta = { date: new Date().toISOString(), command: 'npm run bench:transport', cores: cpus().length, cpuModel: cpus()[0]?.model, node: process.version, loadavg: loadavg(), requests: REQUESTS, streams: STREAMS, rounds: ROUNDS };
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', 'transport-latest.json'), `${JSON.stringify({ meta, summary, results }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
