/**
 * Runs portcullis for the load benchmark in its own process, the way
 * `bin/portcullis.js --config FILE` does (createApp → start), and prints one
 * line `READY {"grpc":…,"http":…,"admin":…}` once it listens, so the harness
 * can use port 0 everywhere. SIGTERM stops it (in-flight checks drain).
 * Usage: node dist/bench/portcullis-server.js CONFIG.yaml
 */
import { writeFileSync } from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { createApp } from '../src/app.js';

// BENCH_GC_LOG=FILE: record every garbage-collection pause and write them, by kind, to FILE on exit
// (diagnosing latency tails; the observer itself costs next to nothing per collection).
const gcLog = process.env.BENCH_GC_LOG;
const pauses: { kind: number; ms: number }[] = [];
const loopDelay = monitorEventLoopDelay({ resolution: 5 });
if (gcLog) {
  loopDelay.enable();
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) pauses.push({ kind: ((e as unknown as { detail?: { kind?: number } }).detail)?.kind ?? 0, ms: e.duration });
  }).observe({ entryTypes: ['gc'] });
}
function writeGcLog(): void {
  if (!gcLog) return;
  const kinds: Record<number, string> = { 1: 'scavenge', 2: 'mark-compact', 4: 'incremental', 8: 'weak-callbacks' };
  const summary: Record<string, { count: number; totalMs: number; p50: number; p99: number; max: number }> = {};
  for (const k of new Set(pauses.map((p) => p.kind))) {
    const ms = pauses.filter((p) => p.kind === k).map((p) => p.ms).sort((a, b) => a - b);
    const at = (q: number): number => Math.round((ms[Math.min(ms.length - 1, Math.floor(q * ms.length))] ?? 0) * 1000) / 1000;
    summary[kinds[k] ?? String(k)] = { count: ms.length, totalMs: Math.round(ms.reduce((a, b) => a + b, 0)), p50: at(0.5), p99: at(0.99), max: at(1) };
  }
  const ms = (ns: number): number => Math.round(ns / 1e4) / 100;
  const eventLoopDelayMs = { p50: ms(loopDelay.percentile(50)), p99: ms(loopDelay.percentile(99)), p999: ms(loopDelay.percentile(99.9)), max: ms(loopDelay.max) };
  writeFileSync(gcLog, `${JSON.stringify({ ...summary, eventLoopDelayMs }, null, 2)}\n`);
}

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: portcullis-server.js CONFIG.yaml\n');
  process.exit(2);
}
const app = createApp({ configPath });
const addresses = await app.start();
process.stdout.write(`READY ${JSON.stringify(addresses)}\n`);
let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  void app.stop().then(() => {
    writeGcLog();
    process.exit(0);
  });
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
