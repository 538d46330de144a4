import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type Agent, type IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createApp, type Addresses, type App } from '../../src/app.js';
import { createAuthzClient, createHealthClient, type AuthzClient, type HealthClient } from '../helpers/grpc-client.js';
import type { JwksServer } from '../helpers/jwks-server.js';

/**
 * Shared plumbing for the integration tests: config files, an in-process app
 * with its logs captured, polling with a deadline, metrics scraping and
 * HTTP ext_authz requests shaped like Envoy's `http_service`.
 */

/** pino destination that keeps every line (parsed) in memory. */
export class LogSink {
  readonly lines: Record<string, unknown>[] = [];
  write(msg: string): void {
    for (const line of msg.split('\n')) {
      if (!line.trim()) continue;
      try {
        this.lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        this.lines.push({ msg: line });
      }
    }
  }
  find(pred: (line: Record<string, unknown>) => boolean): Record<string, unknown> | undefined {
    return this.lines.find(pred);
  }
  withMsg(msg: string): Record<string, unknown>[] {
    return this.lines.filter((l) => l.msg === msg);
  }
}

export function makeTempDir(prefix = 'portcullis-it-'): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Writes YAML (an object is stringified) atomically: a watcher never sees a half-written file. */
export function writeConfig(path: string, config: Record<string, unknown> | string): void {
  const text = typeof config === 'string' ? config : stringify(config);
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

export const LOOPBACK_LISTEN = { grpc: '127.0.0.1:0', http: '127.0.0.1:0', admin: '127.0.0.1:0' } as const;

export function issuerEntry(name: string, idp: JwksServer, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, issuer: idp.issuer, audiences: [idp.audience], algorithms: ['RS256', 'ES256'], ...extra };
}

export interface TestApp {
  app: App;
  addresses: Addresses;
  /** The HTTP ext_authz address (always on in these tests). */
  http: string;
  logs: LogSink;
  configPath: string;
  grpc: AuthzClient;
  health: HealthClient;
  stop(): Promise<void>;
}

/** Writes `config` to a temp file, creates and starts the app. Does not wait for keys (see waitReady). */
export async function startTestApp(config: Record<string, unknown> | string): Promise<TestApp> {
  const tmp = makeTempDir();
  const configPath = join(tmp.dir, 'portcullis.yaml');
  writeConfig(configPath, config);
  const logs = new LogSink();
  const app = createApp({ configPath, logDestination: logs, defaultMetrics: false });
  let addresses: Addresses;
  try {
    addresses = await app.start();
  } catch (err) {
    tmp.remove();
    throw err;
  }
  const grpc = createAuthzClient(addresses.grpc);
  const health = createHealthClient(addresses.grpc);
  return {
    app,
    addresses,
    http: addresses.http ?? '',
    logs,
    configPath,
    grpc,
    health,
    async stop() {
      grpc.close();
      health.close();
      await app.stop();
      tmp.remove();
    },
  };
}

/**
 * Calls `fn` until it returns something other than undefined/false, or throws
 * after `timeoutMs`. The pause between attempts only yields the event loop;
 * nothing here asserts on time.
 */
export async function pollUntil<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until every issuer of the app has loaded keys. */
export function waitReady(t: TestApp): Promise<true> {
  return pollUntil('issuer keys to load (readiness)', () => t.app.readiness().ready || undefined);
}

export async function getText(url: string): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, text: await res.text() };
}

export async function scrapeMetrics(admin: string): Promise<string> {
  const r = await getText(`http://${admin}/metrics`);
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return r.text;
}

function parseLabels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (let m = re.exec(s); m; m = re.exec(s)) out[m[1] as string] = (m[2] as string).replace(/\\(.)/g, (_x, c: string) => (c === 'n' ? '\n' : c));
  return out;
}

/** Value of the sample `name{labels}` (labels matched exactly, in any order); 0 when absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = parseLabels(m[2] ?? '');
    const want = Object.entries(labels);
    if (Object.keys(got).length !== want.length) continue;
    if (want.every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}

export interface HttpReply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/**
 * A request as Envoy's `http_service` sends it to the HTTP ext_authz port:
 * the original method, path and (allowed) headers, no body.
 */
export function httpCheck(
  address: string,
  spec: {
    method?: string;
    path: string;
    host?: string;
    headers?: Record<string, string | string[]>;
    /** Connection reuse: an Agent (pooling, like Envoy), false for a one-shot connection; default: the global agent. */
    agent?: Agent | false;
    onSocket?: (socket: Socket) => void;
  },
): Promise<HttpReply> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: address.slice(0, i),
        port: Number(address.slice(i + 1)),
        method: spec.method ?? 'GET',
        path: spec.path,
        headers: { host: spec.host ?? 'router.example', 'content-length': '0', ...spec.headers },
        timeout: 15_000,
        ...(spec.agent !== undefined ? { agent: spec.agent } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    if (spec.onSocket) req.once('socket', spec.onSocket);
    req.on('timeout', () => req.destroy(new Error('HTTP check timed out')));
    req.on('error', reject);
    req.end();
  });
}

export function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}
