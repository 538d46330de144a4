import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..');
export const PROVISION_SCRIPT = join(REPO_ROOT, 'scripts', 'provision', 'envoy.sh');

export type EnvoyMode = 'grpc' | 'http';

/** The committed bootstrap for each mode. */
export const BOOTSTRAPS: Readonly<Record<EnvoyMode, string>> = {
  grpc: join(REPO_ROOT, 'envoy', 'local', 'envoy-grpc.yaml'),
  http: join(REPO_ROOT, 'envoy', 'local', 'envoy-http.yaml'),
};

/** Names used in the committed bootstraps; rendering keys on them. */
export const NAMES = {
  listener: 'ingress',
  upstreamCluster: 'echo_upstream',
  authzCluster: { grpc: 'portcullis_grpc', http: 'portcullis_http' },
} as const;

// ---------------------------------------------------------------------------
// Provisioning

export interface EnvoyBinary {
  bin: string;
  /** e.g. "1.40.0" */
  version: string;
  /** The build string from `envoy --version`, e.g. "<sha>/1.40.0/Clean/RELEASE/BoringSSL". */
  versionLine: string;
  /** How long the provisioning script took, in ms (≈0.3 s when already installed). */
  provisionMs: number;
}

let provisioned: Promise<EnvoyBinary> | undefined;

/**
 * Runs scripts/provision/envoy.sh once per process (it is idempotent and
 * serialised with a lock across processes) and returns the binary it reports.
 */
export function ensureEnvoy(): Promise<EnvoyBinary> {
  provisioned ??= runProvisioning();
  return provisioned;
}

function runProvisioning(): Promise<EnvoyBinary> {
  const started = Date.now();
  return new Promise((resolvePromise, reject) => {
    execFile(
      'bash',
      [PROVISION_SCRIPT],
      { cwd: REPO_ROOT, timeout: 10 * 60_000, maxBuffer: 1 << 20 },
      (error, stdout, stderr) => {
        if (error) {
          reject(new Error(`Envoy provisioning failed (${PROVISION_SCRIPT}):\n${stderr || error.message}`));
          return;
        }
        const vars = new Map<string, string>();
        for (const line of stdout.split('\n')) {
          const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
          if (m?.[1] !== undefined && m[2] !== undefined) vars.set(m[1], m[2]);
        }
        const bin = vars.get('ENVOY_BIN');
        if (!bin) {
          reject(new Error(`provisioning printed no ENVOY_BIN:\n${stdout}\n${stderr}`));
          return;
        }
        resolvePromise({
          bin,
          version: vars.get('ENVOY_VERSION') ?? 'unknown',
          versionLine: vars.get('ENVOY_VERSION_LINE') ?? '',
          provisionMs: Date.now() - started,
        });
      },
    );
  });
}

/**
 * Runs `envoy --mode validate -c FILE` and resolves with Envoy's output;
 * rejects with that output when Envoy refuses the file.
 */
export async function validateBootstrap(path: string): Promise<string> {
  const { bin } = await ensureEnvoy();
  return new Promise((resolvePromise, reject) => {
    execFile(bin, ['--mode', 'validate', '-c', path, '-l', 'warning', '--base-id', String(uniqueBaseId())], { timeout: 60_000 }, (error, stdout, stderr) => {
      const out = `${stdout}${stderr}`;
      if (error) reject(new Error(`envoy --mode validate -c ${path} failed:\n${out}`));
      else resolvePromise(out);
    });
  });
}

// ---------------------------------------------------------------------------
// Rendering a committed bootstrap with other ports

export interface RenderOptions {
  mode: EnvoyMode;
  /** Address Envoy's listener and admin bind to (default 127.0.0.1). */
  bindHost?: string;
  /** Envoy listener port; 0 lets the kernel pick (read back through the admin API). */
  listenerPort?: number;
  /** Envoy admin port; 0 lets the kernel pick. */
  adminPort?: number;
  /** host:port of portcullis's gRPC (grpc mode) or HTTP (http mode) listener. */
  authzHost?: string;
  authzPort: number;
  upstreamHost?: string;
  upstreamPort: number;
  /** Where the access log is written. */
  accessLogPath: string;
  /** Overrides the ext_authz service timeout: protobuf Duration JSON, seconds only ("1s", "0.3s"). */
  authzTimeout?: string;
}

type Obj = Record<string, unknown>;

const STDOUT_ACCESS_LOG = 'type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog';
const FILE_ACCESS_LOG = 'type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog';

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function obj(v: unknown, what: string): Obj {
  if (!isObj(v)) throw new Error(`bootstrap: ${what} is not a mapping`);
  return v;
}

function arr(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`bootstrap: ${what} is not a list`);
  return v;
}

function byName(list: unknown[], name: string, what: string): Obj {
  const found = list.find((x) => isObj(x) && x.name === name);
  if (!isObj(found)) throw new Error(`bootstrap: no ${what} named ${name}`);
  return found;
}

function setClusterEndpoint(cluster: Obj, host: string, port: number): void {
  const la = obj(cluster.load_assignment, `cluster ${String(cluster.name)}.load_assignment`);
  for (const group of arr(la.endpoints, 'load_assignment.endpoints')) {
    for (const lb of arr(obj(group, 'endpoints[]').lb_endpoints, 'lb_endpoints')) {
      const ep = obj(obj(lb, 'lb_endpoints[]').endpoint, 'endpoint');
      obj(ep.address, 'endpoint.address').socket_address = { address: host, port_value: port };
    }
  }
}

/** Visits every mapping in the tree. */
function walk(node: unknown, visit: (o: Obj) => void): void {
  if (Array.isArray(node)) {
    for (const x of node) walk(x, visit);
  } else if (isObj(node)) {
    visit(node);
    for (const v of Object.values(node)) walk(v, visit);
  }
}

/**
 * Returns the committed bootstrap text of `opts.mode` with its listener,
 * admin, authz cluster, upstream cluster and access-log path rewritten.
 * Everything else (filters, per-route settings, formats) is left as committed,
 * so the tests exercise the files users copy.
 */
export function renderBootstrap(sourceYaml: string, opts: RenderOptions): string {
  const doc = obj(parse(sourceYaml), 'document');
  const bindHost = opts.bindHost ?? '127.0.0.1';

  obj(obj(doc.admin, 'admin').address, 'admin.address').socket_address = {
    address: bindHost,
    port_value: opts.adminPort ?? 0,
  };

  const resources = obj(doc.static_resources, 'static_resources');
  const listener = byName(arr(resources.listeners, 'listeners'), NAMES.listener, 'listener');
  obj(listener.address, 'listener.address').socket_address = {
    address: bindHost,
    port_value: opts.listenerPort ?? 0,
  };

  const clusters = arr(resources.clusters, 'clusters');
  const authzHost = opts.authzHost ?? '127.0.0.1';
  setClusterEndpoint(byName(clusters, NAMES.authzCluster[opts.mode], 'cluster'), authzHost, opts.authzPort);
  setClusterEndpoint(
    byName(clusters, NAMES.upstreamCluster, 'cluster'),
    opts.upstreamHost ?? '127.0.0.1',
    opts.upstreamPort,
  );

  // The committed access log goes to Envoy's stdout (or a file); the harness
  // writes the same format to a file it can read.
  let accessLogs = 0;
  let authzFilters = 0;
  walk(listener, (o) => {
    if (!Array.isArray(o.access_log)) return;
    for (const entry of o.access_log) {
      if (!isObj(entry) || !isObj(entry.typed_config)) continue;
      const tc = entry.typed_config;
      if (tc['@type'] === STDOUT_ACCESS_LOG || tc['@type'] === FILE_ACCESS_LOG) {
        entry.name = 'envoy.access_loggers.file';
        entry.typed_config = { '@type': FILE_ACCESS_LOG, path: opts.accessLogPath, log_format: tc.log_format };
        accessLogs += 1;
      }
    }
  });
  walk(listener, (o) => {
    if (o['@type'] === 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz') {
      authzFilters += 1;
      if (isObj(o.http_service)) {
        const uri = obj(o.http_service.server_uri, 'http_service.server_uri');
        uri.uri = `http://${authzHost}:${opts.authzPort}`;
        if (opts.authzTimeout) uri.timeout = opts.authzTimeout;
      }
      if (isObj(o.grpc_service) && opts.authzTimeout) o.grpc_service.timeout = opts.authzTimeout;
    }
  });
  if (accessLogs === 0) throw new Error('bootstrap: no file access log to redirect');
  if (authzFilters !== 1) throw new Error(`bootstrap: expected one ext_authz filter, found ${authzFilters}`);
  return stringify(doc, { lineWidth: 0 });
}

// ---------------------------------------------------------------------------
// Running Envoy

/** One JSON access-log line (the keys are those of the committed json_format). */
export type AccessLogEntry = Record<string, unknown>;

export interface EnvoyProcess {
  readonly mode: EnvoyMode;
  readonly binary: EnvoyBinary;
  readonly pid: number;
  readonly listenerPort: number;
  readonly adminPort: number;
  /** http://127.0.0.1:<listener> */
  readonly url: string;
  readonly adminUrl: string;
  readonly configPath: string;
  readonly accessLogPath: string;
  /** How long from spawn to /ready answering 200, in ms. */
  readonly startupMs: number;
  /** Envoy's own log output so far (stderr and stdout). */
  output(): string;
  readAccessLog(): Promise<AccessLogEntry[]>;
  /** Polls the access log until an entry satisfies `predicate`. */
  waitForAccessLog(predicate: (e: AccessLogEntry) => boolean, timeoutMs?: number): Promise<AccessLogEntry>;
  /** GET on the admin API, e.g. "/stats?filter=ext_authz". */
  admin(path: string): Promise<string>;
  /** SIGTERM, then SIGKILL if still running after `graceMs`. Removes the temp dir. */
  stop(graceMs?: number): Promise<void>;
}

export interface StartEnvoyOptions extends Omit<RenderOptions, 'accessLogPath'> {
  /** Deadline for /ready (default 30 s). */
  readyTimeoutMs?: number;
  /** Envoy log level (default "warning"). */
  logLevel?: string;
  /** Keep the temp dir on stop (for debugging). */
  keepTempDir?: boolean;
  /** Bootstrap to render instead of the committed one for `mode`. */
  bootstrapPath?: string;
}

let baseIdCounter = 0;

/** A base id no other Envoy started by this or a concurrent test process uses. */
function uniqueBaseId(): number {
  baseIdCounter = (baseIdCounter + 1) % 100;
  return (process.pid % 400_000) * 100 + baseIdCounter;
}

export async function startEnvoy(options: StartEnvoyOptions): Promise<EnvoyProcess> {
  const binary = await ensureEnvoy();
  const dir = await mkdtemp(join(tmpdir(), `portcullis-envoy-${options.mode}-`));
  const accessLogPath = join(dir, 'access.log');
  const configPath = join(dir, `envoy-${options.mode}.yaml`);
  const adminAddressPath = join(dir, 'admin-address');
  const source = await readFile(options.bootstrapPath ?? BOOTSTRAPS[options.mode], 'utf8');
  await writeFile(configPath, renderBootstrap(source, { ...options, accessLogPath }));
  await writeFile(accessLogPath, '');

  const args = [
    '-c', configPath,
    '--base-id', String(uniqueBaseId()),
    '-l', options.logLevel ?? 'warning',
    '--concurrency', '1',
    '--admin-address-path', adminAddressPath,
    // Access logs are buffered; flush often so tests can read them promptly.
    '--file-flush-interval-msec', '50',
    '--drain-time-s', '1',
    '--parent-shutdown-time-s', '2',
  ];
  const started = Date.now();
  const child = spawn(binary.bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const append = (b: Buffer): void => {
    out += b.toString('utf8');
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('exit', (code, signal) => res({ code, signal }));
  });
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
  });

  const cleanup = async (): Promise<void> => {
    if (!hasExited) {
      child.kill('SIGKILL');
      await exited;
    }
    if (!options.keepTempDir) await rm(dir, { recursive: true, force: true });
  };

  try {
    const deadline = started + (options.readyTimeoutMs ?? 30_000);
    // 1. the admin address file appears (admin port may be 0)
    let adminAddress = '';
    await pollUntil(deadline, async () => {
      if (hasExited) throw new Error('Envoy exited during startup');
      adminAddress = (await readFile(adminAddressPath, 'utf8').catch(() => '')).trim();
      return adminAddress.length > 0;
    }, 'Envoy admin address file');
    const adminUrl = `http://${adminAddress}`;
    // 2. /ready says LIVE
    await pollUntil(deadline, async () => {
      if (hasExited) throw new Error('Envoy exited during startup');
      const r = await sendRequest({ url: adminUrl, path: '/ready', timeoutMs: 1000 }).catch(() => undefined);
      return r?.status === 200;
    }, 'Envoy /ready');
    const startupMs = Date.now() - started;
    // 3. the listener's real port
    const listeners = await sendRequest({ url: adminUrl, path: '/listeners?format=json' });
    const listenerPort = findListenerPort(listeners.body, NAMES.listener);
    const adminPort = Number(adminAddress.split(':').pop());
    const bindHost = options.bindHost ?? '127.0.0.1';

    return {
      mode: options.mode,
      binary,
      pid: child.pid ?? -1,
      listenerPort,
      adminPort,
      url: `http://${bindHost}:${listenerPort}`,
      adminUrl,
      configPath,
      accessLogPath,
      startupMs,
      output: () => out,
      readAccessLog: () => readAccessLog(accessLogPath),
      waitForAccessLog: async (predicate, timeoutMs = 5000) => {
        let found: AccessLogEntry | undefined;
        await pollUntil(Date.now() + timeoutMs, async () => {
          found = (await readAccessLog(accessLogPath)).find(predicate);
          return found !== undefined;
        }, 'access log entry');
        if (!found) throw new Error('unreachable');
        return found;
      },
      admin: async (path) => (await sendRequest({ url: adminUrl, path })).body,
      stop: async (graceMs = 5000) => {
        if (!hasExited) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
          await exited;
          clearTimeout(timer);
        }
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`${msg}\n--- envoy ${args.join(' ')} output ---\n${out.slice(-4000)}`);
  }
}

function findListenerPort(body: string, name: string): number {
  const parsed: unknown = JSON.parse(body);
  const statuses = isObj(parsed) && Array.isArray(parsed.listener_statuses) ? parsed.listener_statuses : [];
  for (const s of statuses) {
    if (!isObj(s) || s.name !== name) continue;
    const sa = isObj(s.local_address) ? s.local_address.socket_address : undefined;
    if (isObj(sa) && typeof sa.port_value === 'number') return sa.port_value;
  }
  throw new Error(`listener ${name} not found in /listeners: ${body}`);
}

async function readAccessLog(path: string): Promise<AccessLogEntry[]> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const entries: AccessLogEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const v: unknown = JSON.parse(line);
      if (isObj(v)) entries.push(v);
    } catch {
      // a line being written; the next poll sees it whole
    }
  }
  return entries;
}

/** Calls `check` until it returns true or the deadline passes (then throws). */
export async function pollUntil(
  deadline: number,
  check: () => Promise<boolean> | boolean,
  what: string,
  intervalMs = 25,
): Promise<void> {
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err;
      if (err instanceof Error && /exited/.test(err.message)) throw err;
    }
    if (Date.now() >= deadline) {
      const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out waiting for ${what}${detail}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// ---------------------------------------------------------------------------
// A tiny HTTP client (node:http, so Host and any header can be set)

export interface SendRequestOptions {
  /** Base URL, e.g. http://127.0.0.1:10000 */
  url: string;
  method?: string;
  path?: string;
  headers?: OutgoingHttpHeaders;
  body?: string;
  timeoutMs?: number;
}

export interface SentResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json(): unknown;
}

export function sendRequest(opts: SendRequestOptions): Promise<SentResponse> {
  const base = new URL(opts.url);
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(
      {
        host: base.hostname,
        port: base.port,
        method: opts.method ?? 'GET',
        path: opts.path ?? '/',
        headers: opts.headers,
        agent: false,
        timeout: opts.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          resolvePromise({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body,
            json: () => {
              try {
                return JSON.parse(body) as unknown;
              } catch {
                return undefined;
              }
            },
          });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`request to ${opts.url}${opts.path ?? '/'} timed out`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

