/**
 * A real SPIRE server and agent on one host, and Envoy sidecars that get their
 * certificates from it over SDS, for end-to-end tests.
 *
 * - Binaries come from scripts/provision/spire.sh (go install into .cache/bin,
 *   idempotent) and scripts/provision/envoy.sh (through ./envoy.ts).
 * - Node attestation: join_token. Workload attestation: unix. One host runs
 *   several workloads, so each Envoy runs under its own system user (created by
 *   the provisioning script) and entries select on `unix:uid:N`. The unix
 *   attestor's `unix:path` selector would not tell the Envoys apart: they all run
 *   the same binary.
 * - Everything lives in one temp directory (configs, sqlite, sockets); ports are
 *   free loopback ports. Processes are started in their own process groups and
 *   stopped as groups.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { ensureEnvoy, REPO_ROOT } from './envoy.js';
import { freePort } from './ports.js';

export const SPIRE_PROVISION_SCRIPT = join(REPO_ROOT, 'scripts', 'provision', 'spire.sh');
export const SIDECARS_DIR = join(REPO_ROOT, 'envoy', 'sidecars');
/** Directory the committed *-files.yaml sidecars read their SDS resource files from. */
export const COMMITTED_SDS_DIR = '/etc/envoy/sds';
/** Directory the committed SDS resource files (envoy/sidecars/sds/) read PEM files from. */
export const COMMITTED_CERT_DIR = '/var/run/secrets/workload-tls';

// ---------------------------------------------------------------------------
// Provisioning

export interface WorkloadUser {
  name: string;
  uid: number;
  gid: number;
}

export interface SpireBinaries {
  server: string;
  agent: string;
  spiffeHelper: string;
  /** e.g. "1.15.3" (what `spire-server --version` prints). */
  version: string;
  /** e.g. "v0.11.0" */
  spiffeHelperVersion: string;
  /** System users for workloads, by name (empty when provisioning did not run as root). */
  users: ReadonlyMap<string, WorkloadUser>;
  /** How long the provisioning script took, in ms (well under a second once built). */
  provisionMs: number;
}

let provisioned: Promise<SpireBinaries> | undefined;

/**
 * Runs scripts/provision/spire.sh once per process. The first run on a machine
 * builds SPIRE (minutes); later runs only check.
 */
export function ensureSpire(): Promise<SpireBinaries> {
  provisioned ??= runProvisioning();
  return provisioned;
}

function runProvisioning(): Promise<SpireBinaries> {
  const started = Date.now();
  return new Promise((resolvePromise, reject) => {
    execFile('bash', [SPIRE_PROVISION_SCRIPT], { cwd: REPO_ROOT, timeout: 40 * 60_000, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`SPIRE provisioning failed (${SPIRE_PROVISION_SCRIPT}):\n${stderr || error.message}`));
        return;
      }
      const vars = parseVars(stdout);
      const server = vars.get('SPIRE_SERVER_BIN');
      const agent = vars.get('SPIRE_AGENT_BIN');
      const helper = vars.get('SPIFFE_HELPER_BIN');
      if (!server || !agent || !helper) {
        reject(new Error(`SPIRE provisioning printed no binary paths:\n${stdout}\n${stderr}`));
        return;
      }
      const users = new Map<string, WorkloadUser>();
      for (const item of (vars.get('SPIRE_USERS') ?? '').split(',')) {
        const [name, uid, gid] = item.split(':');
        if (name && uid && gid) users.set(name, { name, uid: Number(uid), gid: Number(gid) });
      }
      resolvePromise({
        server,
        agent,
        spiffeHelper: helper,
        version: vars.get('SPIRE_VERSION') ?? 'unknown',
        spiffeHelperVersion: vars.get('SPIFFE_HELPER_VERSION') ?? 'unknown',
        users,
        provisionMs: Date.now() - started,
      });
    });
  });
}

function parseVars(stdout: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m?.[1] !== undefined && m[2] !== undefined) vars.set(m[1], m[2]);
  }
  return vars;
}

/** The workload user `name`, or a clear error naming what is missing. */
export function workloadUser(binaries: SpireBinaries, name: string): WorkloadUser {
  const user = binaries.users.get(name);
  if (!user) {
    throw new Error(`system user ${name} does not exist: run scripts/provision/spire.sh as root`);
  }
  return user;
}

// ---------------------------------------------------------------------------
// Processes

interface Managed {
  readonly child: ChildProcess;
  output(): string;
  exited(): boolean;
  /** SIGTERM to the process group, SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

interface SpawnOptions {
  uid?: number;
  gid?: number;
  /** Called with each complete stdout line (stderr is only kept for output()). */
  onStdoutLine?: (line: string) => void;
}

function spawnManaged(command: string, args: string[], opts: SpawnOptions = {}): Managed {
  // detached: the child leads its own process group, so stop() reaches anything it forks.
  const child = spawn(command, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
    ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
  });
  let out = '';
  let partial = '';
  const keep = (text: string): void => {
    out += text;
    if (out.length > 400_000) out = out.slice(-200_000);
  };
  child.stdout?.on('data', (b: Buffer) => {
    const text = b.toString('utf8');
    keep(text);
    if (!opts.onStdoutLine) return;
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) opts.onStdoutLine(line);
  });
  child.stderr?.on('data', (b: Buffer) => keep(b.toString('utf8')));
  let hasExited = false;
  const exit = new Promise<void>((res) => {
    child.once('exit', () => {
      hasExited = true;
      res();
    });
    child.once('error', (err) => {
      keep(`\n[spawn error] ${err.message}\n`);
      hasExited = true;
      res();
    });
  });
  const signalGroup = (signal: NodeJS.Signals): void => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, signal);
    } catch {
      // the group is already gone
    }
  };
  return {
    child,
    output: () => out,
    exited: () => hasExited,
    stop: async (graceMs = 5000) => {
      if (!hasExited) {
        signalGroup('SIGTERM');
        const timer = setTimeout(() => signalGroup('SIGKILL'), graceMs);
        await exit;
        clearTimeout(timer);
      }
      // Anything the leader left behind in its group.
      signalGroup('SIGKILL');
    },
  };
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never rejects on a non-zero exit (see `code`). */
function run(command: string, args: string[], opts: { uid?: number; gid?: number; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolvePromise) => {
    execFile(
      command,
      args,
      {
        timeout: opts.timeoutMs ?? 30_000,
        maxBuffer: 4 << 20,
        ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
        ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolvePromise({ code, stdout, stderr: stderr || (error && code === -1 ? error.message : '') });
      },
    );
  });
}

/** Calls `check` until it returns true or the deadline passes (then throws, with the last error). */
export async function waitFor(what: string, deadline: number, check: () => Promise<boolean> | boolean, intervalMs = 50): Promise<void> {
  let last = '';
  for (;;) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
      if (err instanceof ProcessExitedError) throw err;
    }
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${last})` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

class ProcessExitedError extends Error {}

// ---------------------------------------------------------------------------
// SPIRE server + agent

export interface StartSpireOptions {
  trustDomain: string;
  /** default_x509_svid_ttl of the server, in seconds (default 3600). */
  x509SvidTtlSeconds?: number;
  /** ca_ttl of the server (default "24h"). */
  caTtl?: string;
  /** How often the agent syncs entries from the server (default "1s"; SPIRE's own default is 5 s). */
  agentSyncInterval?: string;
  /** How often the server reloads its entry cache (default "1s"; SPIRE's own default is 5 s). */
  serverCacheReloadInterval?: string;
  logLevel?: 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';
  /** Deadline for server and agent to become healthy (default 60 s). */
  readyTimeoutMs?: number;
  keepTempDir?: boolean;
}

export interface CreateEntryOptions {
  spiffeId: string;
  /** e.g. ["unix:uid:998"] */
  selectors: string[];
  /** X509-SVID TTL of this entry, in seconds (default: the server's default_x509_svid_ttl). */
  x509SvidTtlSeconds?: number;
  dnsNames?: string[];
}

export interface SpireEntry {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: string[];
}

export interface SpireTimings {
  /** spawn of spire-server → healthcheck passes */
  serverReadyMs: number;
  /** spawn of spire-agent → healthcheck passes (node attestation done) */
  agentReadyMs: number;
  /** startSpire() call → resolved */
  totalMs: number;
}

export interface Spire {
  readonly binaries: SpireBinaries;
  readonly trustDomain: string;
  readonly dir: string;
  readonly serverPort: number;
  readonly serverSocketPath: string;
  /** The Workload API / SDS socket (world-connectable; the agent attests callers). */
  readonly agentSocketPath: string;
  readonly joinToken: string;
  /** spiffe://<td>/spire/agent/join_token/<token>: the parent of entries created here. */
  readonly agentSpiffeId: string;
  readonly timings: SpireTimings;
  createEntry(opts: CreateEntryOptions): Promise<SpireEntry>;
  /**
   * Resolves once a process running as `user` gets an X509-SVID for `spiffeId`
   * from the agent (the agent has synced the entry). Returns how long that took.
   */
  waitForSvid(spiffeId: string, user: WorkloadUser, timeoutMs?: number): Promise<number>;
  /** The trust bundle (CA certificates) as PEM. */
  bundlePem(): Promise<string>;
  /** Runs `spire-server <args...> -socketPath <server socket>`. */
  serverCli(args: string[]): Promise<RunResult>;
  serverOutput(): string;
  agentOutput(): string;
  stop(): Promise<void>;
}

function hclString(s: string): string {
  return JSON.stringify(s);
}

export async function startSpire(options: StartSpireOptions): Promise<Spire> {
  const started = Date.now();
  const binaries = await ensureSpire();
  const td = options.trustDomain;
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-spire-'));
  // Workloads run as other users and must reach the agent socket below.
  await chmod(dir, 0o755);
  const socketsDir = join(dir, 'sockets');
  await mkdir(socketsDir, { mode: 0o755 });
  await chmod(socketsDir, 0o755);
  const serverSocketPath = join(dir, 'server.sock');
  const agentSocketPath = join(socketsDir, 'agent.sock');
  const serverPort = await freePort();
  const logLevel = options.logLevel ?? 'INFO';
  const deadline = started + (options.readyTimeoutMs ?? 60_000);

  const serverConf = `server {
  bind_address = "127.0.0.1"
  bind_port = "${serverPort}"
  socket_path = ${hclString(serverSocketPath)}
  trust_domain = ${hclString(td)}
  data_dir = ${hclString(join(dir, 'server-data'))}
  log_level = "${logLevel}"
  ca_key_type = "ec-p256"
  ca_ttl = ${hclString(options.caTtl ?? '24h')}
  default_x509_svid_ttl = "${options.x509SvidTtlSeconds ?? 3600}s"
  experimental {
    # How often the server reloads its in-memory entry cache (default 5 s): new
    # entries reach agents only after a reload.
    cache_reload_interval = ${hclString(options.serverCacheReloadInterval ?? '1s')}
  }
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = ${hclString(join(dir, 'server-data', 'datastore.sqlite3'))}
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`;
  await writeFile(join(dir, 'server.conf'), serverConf);

  const processes: Managed[] = [];
  const stopAll = async (): Promise<void> => {
    for (const p of [...processes].reverse()) await p.stop();
    if (!options.keepTempDir) await rm(dir, { recursive: true, force: true });
  };

  const serverCli = (args: string[]): Promise<RunResult> => run(binaries.server, [...args, '-socketPath', serverSocketPath]);

  try {
    const serverStarted = Date.now();
    const server = spawnManaged(binaries.server, ['run', '-config', join(dir, 'server.conf')]);
    processes.push(server);
    await waitFor('spire-server healthcheck', deadline, async () => {
      if (server.exited()) throw new ProcessExitedError('spire-server exited during startup');
      return (await serverCli(['healthcheck'])).code === 0;
    });
    const serverReadyMs = Date.now() - serverStarted;

    // The agent trusts the server through its bundle, fetched over the admin socket
    // (no insecure_bootstrap).
    const bundle = await serverCli(['bundle', 'show', '-format', 'pem']);
    if (bundle.code !== 0) throw new Error(`spire-server bundle show failed: ${bundle.stderr}`);
    await writeFile(join(dir, 'bundle.pem'), bundle.stdout);

    const tokenRun = await serverCli(['token', 'generate', '-ttl', '600']);
    const joinToken = /Token:\s*(\S+)/.exec(tokenRun.stdout)?.[1];
    if (tokenRun.code !== 0 || !joinToken) throw new Error(`spire-server token generate failed: ${tokenRun.stdout}${tokenRun.stderr}`);
    const agentSpiffeId = `spiffe://${td}/spire/agent/join_token/${joinToken}`;

    const agentConf = `agent {
  data_dir = ${hclString(join(dir, 'agent-data'))}
  log_level = "${logLevel}"
  server_address = "127.0.0.1"
  server_port = "${serverPort}"
  socket_path = ${hclString(agentSocketPath)}
  trust_bundle_path = ${hclString(join(dir, 'bundle.pem'))}
  trust_domain = ${hclString(td)}
  experimental {
    sync_interval = ${hclString(options.agentSyncInterval ?? '1s')}
  }
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`;
    await writeFile(join(dir, 'agent.conf'), agentConf);
    const agentStarted = Date.now();
    const agent = spawnManaged(binaries.agent, ['run', '-config', join(dir, 'agent.conf'), '-joinToken', joinToken]);
    processes.push(agent);
    await waitFor('spire-agent healthcheck', deadline, async () => {
      if (agent.exited()) throw new ProcessExitedError('spire-agent exited during startup');
      return (await run(binaries.agent, ['healthcheck', '-socketPath', agentSocketPath])).code === 0;
    });
    const agentReadyMs = Date.now() - agentStarted;

    return {
      binaries,
      trustDomain: td,
      dir,
      serverPort,
      serverSocketPath,
      agentSocketPath,
      joinToken,
      agentSpiffeId,
      timings: { serverReadyMs, agentReadyMs, totalMs: Date.now() - started },
      createEntry: async (opts) => {
        const args = ['entry', 'create', '-parentID', agentSpiffeId, '-spiffeID', opts.spiffeId, '-output', 'json'];
        for (const s of opts.selectors) args.push('-selector', s);
        for (const d of opts.dnsNames ?? []) args.push('-dns', d);
        if (opts.x509SvidTtlSeconds !== undefined) args.push('-x509SVIDTTL', String(opts.x509SvidTtlSeconds));
        const r = await serverCli(args);
        if (r.code !== 0) throw new Error(`spire-server entry create ${opts.spiffeId} failed: ${r.stdout}${r.stderr}`);
        return { id: entryIdFrom(r.stdout), spiffeId: opts.spiffeId, parentId: agentSpiffeId, selectors: opts.selectors };
      },
      waitForSvid: async (spiffeId, user, timeoutMs = 30_000) => {
        const t0 = Date.now();
        await waitFor(`an X509-SVID for ${spiffeId} (as ${user.name})`, t0 + timeoutMs, async () => {
          const r = await run(
            binaries.agent,
            ['api', 'fetch', 'x509', '-socketPath', agentSocketPath, '-timeout', '2s', '-output', 'json'],
            { uid: user.uid, gid: user.gid, timeoutMs: 10_000 },
          );
          if (r.code !== 0) throw new Error(`spire-agent api fetch x509: ${r.stderr || r.stdout}`.trim());
          return r.stdout.includes(spiffeId);
        }, 100);
        return Date.now() - t0;
      },
      bundlePem: async () => {
        const r = await serverCli(['bundle', 'show', '-format', 'pem']);
        if (r.code !== 0) throw new Error(`spire-server bundle show failed: ${r.stderr}`);
        return r.stdout;
      },
      serverCli,
      serverOutput: () => server.output(),
      agentOutput: () => agent.output(),
      stop: stopAll,
    };
  } catch (err) {
    const logs = processes.map((p) => `--- ${p.child.spawnfile} ---\n${p.output().slice(-3000)}`).join('\n');
    await stopAll();
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`${msg}\n${logs}`);
  }
}

// ---------------------------------------------------------------------------
// spiffe-helper: an SVID as PEM files (what portcullis's own listener reads)

export interface StartSpiffeHelperOptions {
  /** Run as this user: the agent attests spiffe-helper, so this picks the SVID. */
  user: WorkloadUser;
  /** The SPIFFE ID expected in the written certificate (start() waits for it). */
  spiffeId: string;
  readyTimeoutMs?: number;
}

export interface SpiffeHelper {
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
  /** Serial number of the certificate currently in certFile. */
  currentSerial(): Promise<string>;
  output(): string;
  stop(): Promise<void>;
}

/**
 * Runs spiffe-helper (daemon mode) against this SPIRE agent, writing tls.crt,
 * tls.key and ca.crt into a fresh directory owned by `user`, and rewriting them on
 * every SVID renewal. Note: spiffe-helper v0.11 writes the files in place
 * (certificate, then key, then bundle), not by rename.
 */
export async function startSpiffeHelper(spire: Spire, options: StartSpiffeHelperOptions): Promise<SpiffeHelper> {
  const started = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-spiffe-helper-'));
  await chmod(dir, 0o755);
  const certDir = join(dir, 'certs');
  await mkdir(certDir);
  await chown(certDir, options.user.uid, options.user.gid);
  const configPath = join(dir, 'helper.conf');
  await writeFile(
    configPath,
    [
      `agent_address = ${hclString(spire.agentSocketPath)}`,
      `cert_dir = ${hclString(certDir)}`,
      'svid_file_name = "tls.crt"',
      'svid_key_file_name = "tls.key"',
      'svid_bundle_file_name = "ca.crt"',
      'daemon_mode = true',
      '',
    ].join('\n'),
  );
  const files = { certFile: join(certDir, 'tls.crt'), keyFile: join(certDir, 'tls.key'), caFile: join(certDir, 'ca.crt') };
  const proc = spawnManaged(spire.binaries.spiffeHelper, ['-config', configPath], { uid: options.user.uid, gid: options.user.gid });
  const cleanup = async (): Promise<void> => {
    await proc.stop();
    await rm(dir, { recursive: true, force: true });
  };
  const certificate = async (): Promise<X509Certificate> => new X509Certificate(await readFile(files.certFile));
  try {
    await waitFor(`spiffe-helper to write ${options.spiffeId}`, started + (options.readyTimeoutMs ?? 30_000), async () => {
      if (proc.exited()) throw new ProcessExitedError('spiffe-helper exited');
      const cert = await certificate();
      await readFile(files.keyFile);
      await readFile(files.caFile);
      return (cert.subjectAltName ?? '').split(', ').includes(`URI:${options.spiffeId}`);
    });
  } catch (err) {
    const out = proc.output();
    await cleanup();
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`${msg}\n--- spiffe-helper output ---\n${out.slice(-3000)}`);
  }
  return {
    dir: certDir,
    ...files,
    currentSerial: async () => (await certificate()).serialNumber,
    output: () => proc.output(),
    stop: cleanup,
  };
}

/** The entry ID from `spire-server entry create -output json`. */
function entryIdFrom(stdout: string): string {
  const parsed: unknown = JSON.parse(stdout);
  const results = isObj(parsed) && Array.isArray(parsed.results) ? parsed.results : [];
  const first: unknown = results[0];
  const entry = isObj(first) && isObj(first.entry) ? first.entry : undefined;
  if (entry && typeof entry.id === 'string') return entry.id;
  throw new Error(`no entry id in: ${stdout}`);
}

// ---------------------------------------------------------------------------
// Envoy sidecars from envoy/sidecars/

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function obj(v: unknown, what: string): Obj {
  if (!isObj(v)) throw new Error(`sidecar config: ${what} is not a mapping`);
  return v;
}

function arr(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`sidecar config: ${what} is not a list`);
  return v;
}

function walk(node: unknown, visit: (o: Obj) => void): void {
  if (Array.isArray(node)) {
    for (const x of node) walk(x, visit);
  } else if (isObj(node)) {
    visit(node);
    for (const v of Object.values(node)) walk(v, visit);
  }
}

export interface RenderSidecarOptions {
  /** Listener name → port on 127.0.0.1 (0 = the kernel picks; read back after start). Unlisted listeners get 0 too. */
  listeners?: Record<string, number>;
  /** Cluster name → the one endpoint it should use. */
  clusters?: Record<string, { host: string; port: number }>;
  /** Clusters whose transport_socket is dropped (e.g. portcullis_grpc when portcullis runs without TLS). */
  plaintextClusters?: string[];
  /** Replaces the pipe path of the spire_agent cluster. */
  agentSocketPath?: string;
  /** Files variants: the directory holding tls-certificate.yaml / validation-context.yaml (replaces /etc/envoy/sds). */
  sdsDir?: string;
  /** Plain string replacements applied to the file text first (e.g. another workload's SPIFFE ID). */
  replace?: Record<string, string>;
}

/** Names of all listeners of a sidecar config. */
export function listenerNames(yamlText: string): string[] {
  const doc = obj(parse(yamlText), 'document');
  return arr(obj(doc.static_resources, 'static_resources').listeners, 'listeners').map((l) => String(obj(l, 'listener').name));
}

/**
 * Returns the committed sidecar config with addresses, ports and socket paths
 * rewritten for a test on loopback. Filters, TLS contexts, SDS secret names and
 * SAN matchers stay as committed, so the tests exercise the files users deploy.
 */
export function renderSidecar(yamlText: string, opts: RenderSidecarOptions): string {
  let text = yamlText;
  for (const [from, to] of Object.entries(opts.replace ?? {})) text = text.split(from).join(to);
  if (opts.sdsDir) text = text.split(COMMITTED_SDS_DIR).join(opts.sdsDir);
  const doc = obj(parse(text), 'document');
  obj(obj(doc.admin, 'admin').address, 'admin.address').socket_address = { address: '127.0.0.1', port_value: 0 };
  const resources = obj(doc.static_resources, 'static_resources');
  for (const l of arr(resources.listeners, 'listeners')) {
    const listener = obj(l, 'listener');
    const port = opts.listeners?.[String(listener.name)] ?? 0;
    obj(listener.address, 'listener.address').socket_address = { address: '127.0.0.1', port_value: port };
  }
  const clusters = arr(resources.clusters, 'clusters').map((c) => obj(c, 'cluster'));
  const cluster = (name: string): Obj => {
    const found = clusters.find((c) => c.name === name);
    if (!found) throw new Error(`sidecar config: no cluster named ${name}`);
    return found;
  };
  for (const [name, ep] of Object.entries(opts.clusters ?? {})) {
    const c = cluster(name);
    // A DNS name in the committed file becomes an IP literal here: STATIC is enough.
    if (c.type === 'STRICT_DNS' || c.type === 'LOGICAL_DNS') c.type = 'STATIC';
    c.load_assignment = {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: ep.host, port_value: ep.port } } } }] }],
    };
  }
  for (const name of opts.plaintextClusters ?? []) delete cluster(name).transport_socket;
  if (opts.agentSocketPath) {
    let pipes = 0;
    walk(cluster('spire_agent'), (o) => {
      if (isObj(o.pipe)) {
        o.pipe = { path: opts.agentSocketPath };
        pipes += 1;
      }
    });
    if (pipes !== 1) throw new Error(`sidecar config: expected one pipe address in spire_agent, found ${pipes}`);
  }
  return stringify(doc, { lineWidth: 0 });
}

/**
 * `envoy --mode validate` on a committed sidecar config. Files variants are
 * validated with their SDS resource directory pointed at envoy/sidecars/sds
 * (Envoy insists that a path_config_source exists).
 */
export async function validateSidecar(file: string): Promise<string> {
  const { bin } = await ensureEnvoy();
  let path = join(SIDECARS_DIR, file);
  let tmp: string | undefined;
  const text = await readFile(path, 'utf8');
  if (text.includes(COMMITTED_SDS_DIR)) {
    tmp = await mkdtemp(join(tmpdir(), 'portcullis-sidecar-validate-'));
    path = join(tmp, file);
    await writeFile(path, text.split(COMMITTED_SDS_DIR).join(join(SIDECARS_DIR, 'sds')));
  }
  try {
    const r = await run(bin, ['--mode', 'validate', '-c', path, '-l', 'warning', '--disable-hot-restart'], { timeoutMs: 60_000 });
    const out = `${r.stdout}${r.stderr}`;
    if (r.code !== 0) throw new Error(`envoy --mode validate -c ${file} failed:\n${out}`);
    return out;
  } finally {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Writes copies of envoy/sidecars/sds/*.yaml into `sdsDir`, reading PEM files
 * (tls.crt, tls.key, ca.crt) from `certDir` instead of /var/run/secrets/workload-tls.
 * Pass `sdsDir` as `sdsDir` of a *-files.yaml sidecar.
 */
export async function writeFileSds(sdsDir: string, certDir: string): Promise<void> {
  await mkdir(sdsDir, { recursive: true });
  for (const name of ['tls-certificate.yaml', 'validation-context.yaml']) {
    const text = await readFile(join(SIDECARS_DIR, 'sds', name), 'utf8');
    await writeFile(join(sdsDir, name), text.split(COMMITTED_CERT_DIR).join(certDir));
  }
}

/** One JSON access-log line (keys of the committed json_format). */
export type AccessLogLine = Record<string, unknown>;

export interface StartSidecarOptions extends RenderSidecarOptions {
  /** File name under envoy/sidecars/, e.g. "router-egress.yaml". */
  file: string;
  /** Run Envoy as this user (the SPIRE agent attests it by uid). */
  user?: WorkloadUser;
  /** Resolve only once Envoy holds certificates with these URI SANs (e.g. its own SPIFFE ID). */
  expectCertificates?: string[];
  readyTimeoutMs?: number;
  logLevel?: string;
  keepTempDir?: boolean;
}

export interface Sidecar {
  readonly file: string;
  readonly pid: number;
  readonly adminUrl: string;
  readonly configPath: string;
  /** spawn → /ready 200 and expected certificates loaded, in ms */
  readonly startupMs: number;
  /** The bound port of a listener of the config. */
  port(listener: string): number;
  accessLog(): readonly AccessLogLine[];
  waitForAccessLog(predicate: (l: AccessLogLine) => boolean, timeoutMs?: number): Promise<AccessLogLine>;
  /** GET on the admin API. */
  admin(path: string): Promise<string>;
  /** URI SANs of the certificates Envoy currently holds (admin /certs), own and CA. */
  certificateUris(): Promise<string[]>;
  /** Envoy's own certificates in use (admin /certs cert_chain leaves): serial and URI SANs. */
  ownCertificates(): Promise<{ serial: string; uris: string[] }[]>;
  output(): string;
  stop(): Promise<void>;
}

export async function startSidecar(options: StartSidecarOptions): Promise<Sidecar> {
  const started = Date.now();
  const { bin } = await ensureEnvoy();
  const dir = await mkdtemp(join(tmpdir(), `portcullis-sidecar-${options.file.replace(/\.yaml$/, '')}-`));
  const configPath = join(dir, 'envoy.yaml');
  const adminAddressPath = join(dir, 'admin-address');
  const source = await readFile(join(SIDECARS_DIR, options.file), 'utf8');
  await writeFile(configPath, renderSidecar(source, options));
  if (options.user) {
    // Envoy (as the workload user) reads its config and writes the admin address file here.
    await chown(dir, options.user.uid, options.user.gid);
    await chown(configPath, options.user.uid, options.user.gid);
  }
  const accessLog: AccessLogLine[] = [];
  const args = [
    '-c', configPath,
    '--disable-hot-restart',
    '-l', options.logLevel ?? 'warning',
    '--concurrency', '1',
    '--admin-address-path', adminAddressPath,
    // Access logs (stdout here) are flushed on this interval (default 10 s).
    '--file-flush-interval-msec', '50',
    '--drain-time-s', '1',
    '--parent-shutdown-time-s', '2',
  ];
  const proc = spawnManaged(bin, args, {
    uid: options.user?.uid,
    gid: options.user?.gid,
    // The committed configs log requests as JSON to stdout; Envoy's own log is on stderr.
    onStdoutLine: (line) => {
      if (!line.startsWith('{')) return;
      try {
        const v: unknown = JSON.parse(line);
        if (isObj(v)) accessLog.push(v);
      } catch {
        // not an access-log line
      }
    },
  });
  const cleanup = async (): Promise<void> => {
    await proc.stop();
    if (!options.keepTempDir) await rm(dir, { recursive: true, force: true });
  };
  try {
    const deadline = started + (options.readyTimeoutMs ?? 30_000);
    let adminUrl = '';
    await waitFor('Envoy admin address file', deadline, async () => {
      if (proc.exited()) throw new ProcessExitedError('Envoy exited during startup');
      const a = (await readFile(adminAddressPath, 'utf8').catch(() => '')).trim();
      if (a) adminUrl = `http://${a}`;
      return a.length > 0;
    });
    await waitFor('Envoy /ready', deadline, async () => {
      if (proc.exited()) throw new ProcessExitedError('Envoy exited during startup');
      return (await httpGet(`${adminUrl}/ready`)).status === 200;
    });
    const certificateUris = async (): Promise<string[]> => urisFromCerts((await httpGet(`${adminUrl}/certs`)).body);
    const expected = options.expectCertificates ?? [];
    if (expected.length > 0) {
      await waitFor(`certificates ${expected.join(', ')} in Envoy`, deadline, async () => {
        if (proc.exited()) throw new ProcessExitedError('Envoy exited during startup');
        const uris = await certificateUris();
        return expected.every((u) => uris.includes(u));
      });
    }
    const ports = listenerPorts((await httpGet(`${adminUrl}/listeners?format=json`)).body);
    return {
      file: options.file,
      pid: proc.child.pid ?? -1,
      adminUrl,
      configPath,
      startupMs: Date.now() - started,
      port: (name) => {
        const p = ports.get(name);
        if (p === undefined) throw new Error(`no listener ${name} in ${options.file} (have: ${[...ports.keys()].join(', ')})`);
        return p;
      },
      accessLog: () => accessLog,
      waitForAccessLog: async (predicate, timeoutMs = 5000) => {
        let found: AccessLogLine | undefined;
        await waitFor('access log line', Date.now() + timeoutMs, () => {
          found = accessLog.find(predicate);
          return found !== undefined;
        }, 20);
        if (!found) throw new Error('unreachable');
        return found;
      },
      admin: async (path) => (await httpGet(`${adminUrl}${path}`)).body,
      certificateUris,
      ownCertificates: async () => ownCertificates((await httpGet(`${adminUrl}/certs`)).body),
      output: () => proc.output(),
      stop: cleanup,
    };
  } catch (err) {
    const out = proc.output();
    await cleanup();
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`${msg}\n--- envoy ${options.file} (${options.user?.name ?? 'root'}) output ---\n${out.slice(-4000)}`);
  }
}

/** URI SANs of every certificate in an admin /certs answer. */
function urisFromCerts(body: string): string[] {
  const uris: string[] = [];
  walk(JSON.parse(body) as unknown, (o) => {
    if (!Array.isArray(o.subject_alt_names)) return;
    for (const san of o.subject_alt_names) if (isObj(san) && typeof san.uri === 'string') uris.push(san.uri);
  });
  return uris;
}

function ownCertificates(body: string): { serial: string; uris: string[] }[] {
  const parsed: unknown = JSON.parse(body);
  const out: { serial: string; uris: string[] }[] = [];
  const certs = isObj(parsed) && Array.isArray(parsed.certificates) ? parsed.certificates : [];
  for (const c of certs) {
    const chain = isObj(c) && Array.isArray(c.cert_chain) ? c.cert_chain : [];
    const leaf: unknown = chain[0];
    if (!isObj(leaf)) continue;
    const sans = Array.isArray(leaf.subject_alt_names) ? leaf.subject_alt_names : [];
    out.push({
      serial: String(leaf.serial_number ?? ''),
      uris: sans.flatMap((san) => (isObj(san) && typeof san.uri === 'string' ? [san.uri] : [])),
    });
  }
  return out;
}

function listenerPorts(body: string): Map<string, number> {
  const parsed: unknown = JSON.parse(body);
  const ports = new Map<string, number>();
  const statuses = isObj(parsed) && Array.isArray(parsed.listener_statuses) ? parsed.listener_statuses : [];
  for (const s of statuses) {
    if (!isObj(s) || typeof s.name !== 'string') continue;
    const sa = isObj(s.local_address) ? s.local_address.socket_address : undefined;
    if (isObj(sa) && typeof sa.port_value === 'number') ports.set(s.name, sa.port_value);
  }
  return ports;
}

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(url, { agent: false, timeout: 5000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
    req.end();
  });
}
