/**
 * Starting and stopping the benchmark's processes: Envoy (one worker), the
 * upstream, portcullis, the OPA ext_authz server; and running wrk.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { pollUntil, sendRequest } from '../../test/helpers/envoy.js';

/** CPU time of a process so far, in clock ticks (1/100 s): user + system from /proc/<pid>/stat; 0 once it is gone. */
export function cpuTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime + stime (fields 14, 15)
  } catch {
    return 0;
  }
}

export interface Managed {
  readonly name: string;
  readonly pid: number;
  output(): string;
  stop(): Promise<void>;
}

/** Spawns a process, collects its output, and resolves once `ready(output)` returns a value. */
export async function spawnManaged<T>(
  name: string,
  cmd: string,
  args: string[],
  ready: (out: string) => T | undefined,
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<{ proc: Managed; value: T }> {
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
  let out = '';
  const append = (b: Buffer): void => {
    out += b.toString('utf8');
    if (out.length > 400_000) out = out.slice(-200_000);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => {
    exited = true;
    resolve();
  }));
  const proc: Managed = {
    name,
    pid: child.pid ?? -1,
    output: () => out,
    stop: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exit;
      clearTimeout(t);
    },
  };
  let value: T | undefined;
  try {
    await pollUntil(Date.now() + (opts.timeoutMs ?? 30_000), () => {
      if (exited) throw new Error(`${name} exited during startup`);
      value = ready(out);
      return value !== undefined;
    }, `${name} to start`, 20);
  } catch (err) {
    await proc.stop();
    throw new Error(`${(err as Error).message}\n--- ${name} output ---\n${out.slice(-3000)}`);
  }
  return { proc, value: value as T };
}

// ---------------------------------------------------------------------------
// Envoy

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function setEndpoint(cluster: Obj, port: number): void {
  const la = cluster.load_assignment as Obj;
  for (const group of la.endpoints as Obj[]) {
    for (const lb of group.lb_endpoints as Obj[]) {
      ((lb.endpoint as Obj).address as Obj).socket_address = { address: '127.0.0.1', port_value: port };
    }
  }
}

function walk(node: unknown, visit: (o: Obj) => void): void {
  if (Array.isArray(node)) for (const x of node) walk(x, visit);
  else if (isObj(node)) {
    visit(node);
    for (const v of Object.values(node)) walk(v, visit);
  }
}

/** The committed bench bootstrap with loopback ports filled in (listener and admin: 0 = kernel picks). */
export function renderBenchBootstrap(source: string, ports: { upstream: number; authz?: number; jwks?: number }): string {
  const doc = parse(source) as Obj;
  ((doc.admin as Obj).address as Obj).socket_address = { address: '127.0.0.1', port_value: 0 };
  const res = doc.static_resources as Obj;
  for (const l of res.listeners as Obj[]) (l.address as Obj).socket_address = { address: '127.0.0.1', port_value: 0 };
  for (const c of res.clusters as Obj[]) {
    const port = c.name === 'upstream' ? ports.upstream : c.name === 'authz' ? ports.authz : c.name === 'jwks' ? ports.jwks : undefined;
    if (port === undefined) throw new Error(`bench bootstrap: no port for cluster ${String(c.name)}`);
    setEndpoint(c, port);
  }
  walk(res.listeners, (o) => {
    if (isObj(o.server_uri) && typeof o.server_uri.uri === 'string') o.server_uri.uri = `http://127.0.0.1:${ports.authz ?? 0}`;
    if (isObj(o.http_uri) && typeof o.http_uri.uri === 'string') o.http_uri.uri = `http://127.0.0.1:${ports.jwks ?? 0}/jwks`;
  });
  return stringify(doc, { lineWidth: 0 });
}

export interface BenchEnvoy extends Managed {
  readonly url: string;
  readonly port: number;
  readonly adminUrl: string;
  stats(filter: string): Promise<string>;
}

let baseId = 0;

export async function startBenchEnvoy(bin: string, bootstrapPath: string, ports: { upstream: number; authz?: number; jwks?: number }, concurrency: number): Promise<BenchEnvoy> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-bench-envoy-'));
  const config = join(dir, 'envoy.yaml');
  const adminPath = join(dir, 'admin-address');
  await writeFile(config, renderBenchBootstrap(await readFile(bootstrapPath, 'utf8'), ports));
  baseId = (baseId + 1) % 50;
  const args = [
    '-c', config,
    '--concurrency', String(concurrency),
    '--base-id', String((process.pid % 400_000) * 100 + 50 + baseId),
    '-l', 'warning',
    '--admin-address-path', adminPath,
    '--drain-time-s', '1',
    '--parent-shutdown-time-s', '2',
  ];
  const { proc } = await spawnManaged('envoy', bin, args, () => true);
  try {
    let admin = '';
    await pollUntil(Date.now() + 30_000, async () => {
      admin = (await readFile(adminPath, 'utf8').catch(() => '')).trim();
      if (!admin) return false;
      const r = await sendRequest({ url: `http://${admin}`, path: '/ready', timeoutMs: 1000 }).catch(() => undefined);
      return r?.status === 200;
    }, 'Envoy /ready');
    const adminUrl = `http://${admin}`;
    const listeners = JSON.parse((await sendRequest({ url: adminUrl, path: '/listeners?format=json' })).body) as {
      listener_statuses: { name: string; local_address: { socket_address: { port_value: number } } }[];
    };
    const port = listeners.listener_statuses.find((l) => l.name === 'ingress')?.local_address.socket_address.port_value;
    if (!port) throw new Error('Envoy listener "ingress" has no port');
    return {
      ...proc,
      name: 'envoy',
      url: `http://127.0.0.1:${port}`,
      port,
      adminUrl,
      stats: async (filter) => (await sendRequest({ url: adminUrl, path: `/stats?filter=${encodeURIComponent(filter)}` })).body,
      stop: async () => {
        await proc.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await proc.stop();
    await rm(dir, { recursive: true, force: true });
    throw new Error(`${(err as Error).message}\n--- envoy output ---\n${proc.output().slice(-3000)}`);
  }
}

// ---------------------------------------------------------------------------
// wrk

export interface WrkResult {
  requests: number;
  /** Lines of the requests file sent so far, this run included: the next run's `start`. */
  next: number;
  duration_us: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  latency_us: { min: number; mean: number; p50: number; p90: number; p99: number; p999: number; max: number; stdev: number };
}

/** `start`: lines of the requests file earlier runs sent (bench/wrk/bench.lua goes on from there). */
export function runWrk(wrk: string, script: string, url: string, o: { connections: number; seconds: number; requestsFile: string; rate: number; start?: number }): Promise<WrkResult> {
  return new Promise((resolve, reject) => {
    const args = ['-t1', `-c${o.connections}`, `-d${o.seconds}s`, '--timeout', '5s', '-s', script, `${url}/`, '--', o.requestsFile, String(o.rate), String(o.start ?? 0)];
    const child = spawn(wrk, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.once('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (code !== 0 || !line) {
        reject(new Error(`wrk ${args.join(' ')} failed (exit ${code}):\n${out}`));
        return;
      }
      resolve(JSON.parse(line.slice('RESULT '.length)) as WrkResult);
    });
  });
}
