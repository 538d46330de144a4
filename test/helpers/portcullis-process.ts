import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..');
export const PORTCULLIS_BIN = join(REPO_ROOT, 'bin', 'portcullis.js');

/** host:port strings as logged in the ready line. */
export interface PortcullisAddresses {
  grpc: string;
  http: string;
  admin: string;
}

export interface DevTokenRequest {
  sub: string;
  roles?: string[];
  ttlSeconds?: number;
  [claim: string]: unknown;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface PortcullisProcess {
  readonly pid: number;
  readonly addresses: PortcullisAddresses;
  /** Port numbers of `addresses`. */
  readonly ports: { grpc: number; http: number; admin: number };
  readonly configPath: string;
  /** Spawn to ready line, in ms. */
  readonly startupMs: number;
  /** Resolves when the process has exited. */
  readonly exited: Promise<ExitStatus>;
  /** stdout lines parsed as JSON (pino), in order. */
  logs(): Record<string, unknown>[];
  /** Raw stdout + stderr so far. */
  output(): string;
  /** Mints a token from the built-in development issuer (POST /dev/token on the admin port). */
  devToken(request: DevTokenRequest): Promise<string>;
  /** SIGTERM (drain), SIGKILL after `graceMs`; resolves with the exit status. */
  stop(graceMs?: number): Promise<ExitStatus>;
  /** SIGKILL at once. */
  kill(): Promise<ExitStatus>;
}

export interface StartPortcullisOptions {
  /** A config object (written as YAML) or YAML text; omitted = no --config (embedded defaults). */
  config?: Record<string, unknown> | string;
  /** Extra CLI arguments. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Deadline for the ready line (default 20 s). */
  readyTimeoutMs?: number;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function portOf(address: string): number {
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  if (!Number.isInteger(port) || port <= 0) throw new Error(`no port in address ${address}`);
  return port;
}

/**
 * Spawns `node bin/portcullis.js --config FILE` (needs `npm run build` first)
 * and resolves once it logs `"msg":"portcullis ready"` with its addresses.
 */
export async function startPortcullis(options: StartPortcullisOptions = {}): Promise<PortcullisProcess> {
  if (!existsSync(PORTCULLIS_BIN)) {
    throw new Error(`${PORTCULLIS_BIN} not found: build portcullis first (npm run build)`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-proc-'));
  const configPath = join(dir, 'portcullis.yaml');
  const args = [PORTCULLIS_BIN];
  if (options.config !== undefined) {
    const text = typeof options.config === 'string' ? options.config : stringify(options.config);
    await writeFile(configPath, text);
    args.push('--config', configPath);
  }
  args.push(...(options.args ?? []));

  const started = Date.now();
  const child = spawn(process.execPath, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logLines: Record<string, unknown>[] = [];
  let raw = '';
  let pending = '';
  let onReady: ((addresses: PortcullisAddresses) => void) | undefined;

  child.stdout?.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    raw += text;
    pending += text;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        continue;
      }
      if (!isObj(parsed)) continue;
      logLines.push(parsed);
      if (parsed.msg === 'portcullis ready' && isObj(parsed.addresses) && onReady) {
        const a = parsed.addresses;
        if (typeof a.grpc === 'string' && typeof a.http === 'string' && typeof a.admin === 'string') {
          onReady({ grpc: a.grpc, http: a.http, admin: a.admin });
        }
      }
    }
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    raw += chunk.toString('utf8');
  });

  const exited = new Promise<ExitStatus>((res) => {
    child.once('exit', (code, signal) => res({ code, signal }));
  });
  let exitStatus: ExitStatus | undefined;
  void exited.then((s) => {
    exitStatus = s;
  });

  const timeoutMs = options.readyTimeoutMs ?? 20_000;
  let timer: NodeJS.Timeout | undefined;
  let addresses: PortcullisAddresses;
  try {
    addresses = await new Promise<PortcullisAddresses>((res, rej) => {
      onReady = res;
      timer = setTimeout(() => rej(new Error(`portcullis not ready within ${timeoutMs} ms`)), timeoutMs);
      void exited.then((s) =>
        rej(new Error(`portcullis exited before it was ready (code ${s.code}, signal ${s.signal})`)),
      );
      child.once('error', rej);
    });
  } catch (err) {
    if (!exitStatus) {
      child.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`${msg}\n--- node ${args.join(' ')} output ---\n${raw.slice(-4000)}`);
  } finally {
    clearTimeout(timer);
  }
  const startupMs = Date.now() - started;

  const terminate = async (signal: NodeJS.Signals, graceMs: number): Promise<ExitStatus> => {
    if (!exitStatus) {
      child.kill(signal);
      const killTimer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(killTimer);
    }
    await rm(dir, { recursive: true, force: true });
    return exitStatus ?? (await exited);
  };

  return {
    pid: child.pid ?? -1,
    addresses,
    ports: { grpc: portOf(addresses.grpc), http: portOf(addresses.http), admin: portOf(addresses.admin) },
    configPath,
    startupMs,
    exited,
    logs: () => logLines,
    output: () => raw,
    devToken: async (request) => {
      const res = await fetch(`http://${addresses.admin}/dev/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(request),
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`POST /dev/token → ${res.status}: ${text}`);
      const body: unknown = JSON.parse(text);
      if (!isObj(body) || typeof body.access_token !== 'string') {
        throw new Error(`POST /dev/token: no access_token in ${text}`);
      }
      return body.access_token;
    },
    stop: (graceMs = 10_000) => terminate('SIGTERM', graceMs),
    kill: () => terminate('SIGKILL', 0),
  };
}
