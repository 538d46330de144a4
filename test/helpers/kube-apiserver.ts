/**
 * A real Kubernetes API server for end-to-end tests: the standalone CRD server
 * (`k8s.io/apiextensions-apiserver`) on top of a throw-away etcd, both on loopback.
 *
 * It serves CustomResourceDefinitions and custom resources (get/list/watch, label
 * selectors, resourceVersions, 410 Gone) exactly like kube-apiserver does, because it
 * is the same code. It does NOT serve core resources (Pods, Namespaces, ...).
 *
 * Binaries are provisioned by `scripts/provision/kube-apiserver.sh` (first run builds
 * apiextensions-apiserver with `go install`, ~4.5 minutes on 2 cores; later runs are
 * instant). See docs/kubernetes-test-server.md.
 *
 * Usage (vitest):
 *   let kube: KubeApiServer;
 *   beforeAll(async () => { kube = await startKubeApiServer(); await kube.applyCrd(SANDBOX_CRD_PATH); });
 *   afterAll(async () => { await kube?.stop(); });
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';

const execFileAsync = promisify(execFile);

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const PROVISION_SCRIPT = path.join(REPO_ROOT, 'scripts', 'provision', 'kube-apiserver.sh');
export const SANDBOX_CRD_PATH = path.join(REPO_ROOT, 'deploy', 'crds', 'sandbox-crd.yaml');

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface KubeResponse {
  status: number;
  /** Parsed JSON body; the raw text when the body is not JSON; null when empty. */
  json: unknown;
}

export interface KubeRequestOptions {
  /** Content type of the body; default `application/json`, or
   *  `application/merge-patch+json` for PATCH. */
  contentType?: string;
  /** Per-request timeout in ms (default 30 000). */
  timeoutMs?: number;
}

export interface WatchEvent {
  type: string; // ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
  object: unknown;
}

export interface KubeWatch {
  /** HTTP status of the watch request (200 when the stream opened). */
  readonly status: number;
  /** Every event received so far, in order. */
  readonly events: readonly WatchEvent[];
  /** Resolves with the first not-yet-consumed event matching `predicate`
   *  (events before it are consumed too); rejects after `timeoutMs` or when the
   *  stream ends first. */
  next(predicate?: (event: WatchEvent) => boolean, timeoutMs?: number): Promise<WatchEvent>;
  /** True once the server closed the stream (e.g. API server stopped). */
  readonly ended: boolean;
  close(): void;
}

export interface KubeApiServer {
  /** https://127.0.0.1:<port> */
  url: string;
  /** CA that signed the serving and the client certificate (also the --client-ca-file). */
  caPem: string;
  /** Client certificate, subject O=system:masters (always allowed by the server). */
  clientCertPem: string;
  clientKeyPem: string;
  /** kubeconfig with embedded CA/cert/key, context `portcullis-e2e`, for
   *  `@kubernetes/client-node` `KubeConfig.loadFromFile()`. */
  kubeconfigPath: string;
  /** http://127.0.0.1:<port> of the etcd behind it. */
  etcdUrl: string;
  /** Temp directory with certificates, etcd data and logs (`etcd.log`, `apiserver.log`). */
  dir: string;
  /** One request with the client certificate. Objects are sent as JSON. */
  request(method: HttpMethod, path: string, body?: unknown, options?: KubeRequestOptions): Promise<KubeResponse>;
  /** Opens a watch stream (`path` should contain `watch=1`). */
  watch(path: string): Promise<KubeWatch>;
  /** Creates the CRD in the YAML file (or leaves an existing one) and waits until it is
   *  Established and its resource answers a list. Returns the CRD name. */
  applyCrd(path: string): Promise<string>;
  /** Stops and starts only the API server: same etcd, same port, same certificates.
   *  Default is a graceful stop (SIGTERM: open watches end cleanly); `{ signal: 'SIGKILL' }`
   *  simulates a crash (connections reset). Resolves when ready (see StartOptions). */
  restart(options?: RestartOptions): Promise<void>;
  /** Stops only the API server (the port then refuses connections) — for outage tests. */
  stopApiServer(options?: StopOptions): Promise<void>;
  /** Starts the API server again after stopApiServer() and waits until ready. */
  startApiServer(options?: StartOptions): Promise<void>;
  /** Stops both processes (whole process groups) and removes the temp directory
   *  (kept when KUBE_TEST_KEEP_DIR=1). Idempotent. */
  stop(): Promise<void>;
}

export interface StopOptions {
  /** SIGTERM (default, graceful) or SIGKILL (crash). */
  signal?: 'SIGTERM' | 'SIGKILL';
}

export interface StartOptions {
  /** Default true: after /readyz, also wait until the watch cache of every resource
   *  whose CRD was applied through applyCrd() is initialised. A freshly started API
   *  server answers 429 "storage is (re)initializing" for those until then (with
   *  etcd 3.6 even for plain lists); pass false to test a client against that window. */
  waitForWatchCaches?: boolean;
}

export type RestartOptions = StopOptions & StartOptions;

export interface StartKubeApiServerOptions {
  /** Pass-through extra flags for apiextensions-apiserver. */
  extraApiServerFlags?: string[];
  /** Readiness timeout per start (default 90 s). */
  readyTimeoutMs?: number;
}

interface Binaries {
  apiserver: string;
  etcd: string;
}

let provisioned: Promise<Binaries> | undefined;

/** Runs the provisioning script once per process and returns the binary paths. */
export function provisionKubeApiServer(): Promise<Binaries> {
  provisioned ??= (async () => {
    const { stdout, stderr, code } = await run('bash', [PROVISION_SCRIPT], { cwd: REPO_ROOT });
    if (code !== 0) {
      throw new Error(`${PROVISION_SCRIPT} failed (exit ${code}):\n${stderr}${stdout}`);
    }
    const apiserver = /^APIEXTENSIONS_APISERVER=(.+)$/m.exec(stdout)?.[1];
    const etcd = /^ETCD=(.+)$/m.exec(stdout)?.[1];
    if (!apiserver || !etcd) {
      throw new Error(`${PROVISION_SCRIPT} printed no binary paths:\n${stdout}\n${stderr}`);
    }
    return { apiserver: apiserver.trim(), etcd: etcd.trim() };
  })();
  provisioned.catch(() => {
    provisioned = undefined;
  });
  return provisioned;
}

export async function startKubeApiServer(options: StartKubeApiServerOptions = {}): Promise<KubeApiServer> {
  const bins = await provisionKubeApiServer();
  const readyTimeoutMs = options.readyTimeoutMs ?? 90_000;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'portcullis-kube-'));
  const managed: Managed[] = [];
  let stopped = false;

  /** Starts `proc` and waits for `probe`; on failure the process is stopped again. */
  const startManaged = async (proc: Managed, what: string, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> => {
    managed.push(proc);
    proc.start();
    try {
      await waitFor(what, proc, timeoutMs, probe);
    } catch (err) {
      await proc.stop();
      managed.splice(managed.indexOf(proc), 1);
      throw err;
    }
  };

  const cleanup = async (): Promise<void> => {
    for (const m of managed.reverse()) await m.stop();
    if (process.env.KUBE_TEST_KEEP_DIR !== '1') await rm(dir, { recursive: true, force: true });
  };

  try {
    const pki = await makePki(dir);

    // --- etcd ------------------------------------------------------------------
    const etcd = await startWithFreePorts(2, async ([clientPort, peerPort]) => {
      if (clientPort === undefined || peerPort === undefined) throw new Error('no free ports');
      const etcdUrl = `http://127.0.0.1:${clientPort}`;
      const peerUrl = `http://127.0.0.1:${peerPort}`;
      const proc = new Managed('etcd', bins.etcd, [
        '--name', 'portcullis-e2e',
        // a fresh data dir per attempt: a failed attempt may have recorded its peer URL
        '--data-dir', path.join(dir, `etcd-data-${clientPort}`),
        '--listen-client-urls', etcdUrl,
        '--advertise-client-urls', etcdUrl,
        '--listen-peer-urls', peerUrl,
        '--initial-advertise-peer-urls', peerUrl,
        '--initial-cluster', `portcullis-e2e=${peerUrl}`,
        '--initial-cluster-state', 'new',
      ], path.join(dir, 'etcd.log'));
      await startManaged(proc, `etcd at ${etcdUrl}`, 30_000, async () => {
        const res = await plainGet(`${etcdUrl}/health`);
        return res.status === 200 && /"health":\s*"true"/.test(res.text);
      });
      return { proc, etcdUrl };
    });

    // --- apiextensions-apiserver ---------------------------------------------------
    const dummyKubeconfig = path.join(dir, 'unreachable.kubeconfig');
    await writeFile(dummyKubeconfig, UNREACHABLE_KUBECONFIG);
    const apiserverArgs = (port: number): string[] => [
      '--etcd-servers', etcd.etcdUrl,
      '--bind-address', '127.0.0.1',
      '--secure-port', String(port),
      '--cert-dir', path.join(dir, 'apiserver-certs'),
      '--tls-cert-file', pki.serverCertFile,
      '--tls-private-key-file', pki.serverKeyFile,
      '--client-ca-file', pki.caFile,
      // do not read the extension-apiserver-authentication ConfigMap from a (missing) kube-apiserver
      '--authentication-skip-lookup',
      // delegated authn/authz need kubeconfigs to start; nothing ever reaches them for
      // system:masters (authorization "always allow groups")
      '--authentication-kubeconfig', dummyKubeconfig,
      '--authorization-kubeconfig', dummyKubeconfig,
      '--kubeconfig', dummyKubeconfig,
      // APF would read FlowSchemas from the missing kube-apiserver
      '--enable-priority-and-fairness=false',
      // these admission plugins need the core API (Namespaces, webhooks, policies)
      '--disable-admission-plugins',
      'NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy',
      // without it, SIGTERM waits up to --request-timeout (60 s) for open watches;
      // with it, watches are closed (clean end of stream) and the process exits in ~2.5 s
      '--shutdown-watch-termination-grace-period=2s',
      ...(options.extraApiServerFlags ?? []),
    ];

    let apiPort = 0;
    let api: Managed | undefined;
    const launchApi = async (port: number): Promise<Managed> => {
      const proc = new Managed('apiextensions-apiserver', bins.apiserver, apiserverArgs(port), path.join(dir, 'apiserver.log'));
      await startManaged(proc, `apiextensions-apiserver on 127.0.0.1:${port}`, readyTimeoutMs, async () => {
        const res = await tlsRequest(pki, port, 'GET', READYZ_PATH, undefined, undefined, 2_000);
        return res.status === 200;
      });
      return proc;
    };
    await startWithFreePorts(1, async ([port]) => {
      if (port === undefined) throw new Error('no free port');
      api = await launchApi(port);
      apiPort = port;
    });

    const url = `https://127.0.0.1:${apiPort}`;
    const kubeconfigPath = path.join(dir, 'kubeconfig');
    await writeFile(kubeconfigPath, kubeconfigFor(url, pki));

    const appliedCollections = new Set<string>();
    const stopApiServer = async (opts?: StopOptions): Promise<void> => {
      if (api) {
        await api.stop(opts?.signal);
        managed.splice(managed.indexOf(api), 1);
        api = undefined;
      }
    };
    const startApiServer = async (opts?: StartOptions): Promise<void> => {
      if (stopped) throw new Error('kube test server already stopped');
      if (api) return;
      // The port was ours a moment ago; Go sets SO_REUSEADDR, so rebinding works
      // despite connections in TIME_WAIT. Retry briefly in case the kernel disagrees.
      let lastErr: unknown;
      for (let attempt = 0; attempt < 5 && !api; attempt++) {
        try {
          api = await launchApi(apiPort);
        } catch (err) {
          lastErr = err;
          await sleep(500);
        }
      }
      if (!api) throw lastErr instanceof Error ? lastErr : new Error(String(lastErr));
      if (opts?.waitForWatchCaches !== false) {
        const deadline = Date.now() + readyTimeoutMs;
        for (const collectionPath of appliedCollections) await waitForWatchCache(request, collectionPath, deadline);
      }
    };

    const request = (method: HttpMethod, p: string, body?: unknown, opts?: KubeRequestOptions): Promise<KubeResponse> =>
      tlsRequest(pki, apiPort, method, p, body, opts?.contentType, opts?.timeoutMs ?? 30_000).then((r) => ({
        status: r.status,
        json: parseBody(r.text),
      }));

    const server: KubeApiServer = {
      url,
      caPem: pki.caPem,
      clientCertPem: pki.clientCertPem,
      clientKeyPem: pki.clientKeyPem,
      kubeconfigPath,
      etcdUrl: etcd.etcdUrl,
      dir,
      request,
      watch: (p) => openWatch(pki, apiPort, p),
      applyCrd: async (file) => {
        const { name, collectionPath } = await applyCrd(request, file);
        appliedCollections.add(collectionPath);
        return name;
      },
      restart: async (opts?: RestartOptions) => {
        await stopApiServer(opts);
        await startApiServer(opts);
      },
      stopApiServer,
      startApiServer,
      stop: async () => {
        if (stopped) return;
        stopped = true;
        api = undefined;
        await cleanup();
      },
    };
    return server;
  } catch (err) {
    stopped = true;
    const logs = await collectLogs(dir);
    await cleanup();
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`starting the Kubernetes test API server failed: ${msg}${logs}`);
  }
}

// ---------------------------------------------------------------------------------------
// CRDs

async function applyCrd(
  request: (m: HttpMethod, p: string, b?: unknown) => Promise<KubeResponse>,
  file: string,
): Promise<{ name: string; collectionPath: string }> {
  const doc: unknown = parseYaml(await readFile(file, 'utf8'));
  if (!isRecord(doc) || doc.kind !== 'CustomResourceDefinition') {
    throw new Error(`${file}: not a CustomResourceDefinition`);
  }
  const name = isRecord(doc.metadata) ? doc.metadata.name : undefined;
  const spec = isRecord(doc.spec) ? doc.spec : undefined;
  if (typeof name !== 'string' || !spec) throw new Error(`${file}: CRD without metadata.name or spec`);

  const created = await request('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', doc);
  if (created.status !== 201 && created.status !== 409) {
    throw new Error(`creating CRD ${name} failed: HTTP ${created.status} ${JSON.stringify(created.json)}`);
  }

  const deadline = Date.now() + 60_000;
  let establishedAt: number;
  for (;;) {
    const res = await request('GET', `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`);
    const at = res.status === 200 ? crdEstablishedAt(res.json) : undefined;
    if (at !== undefined) {
      establishedAt = at;
      break;
    }
    if (Date.now() > deadline) throw new Error(`CRD ${name} not Established after 60 s: ${JSON.stringify(res.json)}`);
    await sleep(100);
  }

  // Established means the handler serves it. Also wait until the resource's watch
  // cache is initialised (see waitForWatchCache).
  const group = spec.group;
  const plural = isRecord(spec.names) ? spec.names.plural : undefined;
  const versions = Array.isArray(spec.versions) ? spec.versions : [];
  const served = versions.find((v): v is Record<string, unknown> => isRecord(v) && v.served === true);
  if (typeof group !== 'string' || typeof plural !== 'string' || !served || typeof served.name !== 'string') {
    throw new Error(`${file}: CRD without spec.group, spec.names.plural or a served version`);
  }
  const collectionPath = `/apis/${group}/${served.name}/${plural}`;
  await waitForWatchCache(request, collectionPath, deadline);

  // The CRD handler sleeps 2 s in every create that arrives within 2 s of the
  // Established transition (customresource_handler.go, "justCreated", meant for HA
  // servers). Wait that window out here so that test timings do not depend on it.
  // lastTransitionTime has second precision (rounded down), so this is conservative.
  const wait = establishedAt + 2_100 - Date.now();
  if (wait > 0) await sleep(wait);
  return { name, collectionPath };
}

/**
 * Waits until the API server's watch cache for a resource is initialised. The cache
 * is created lazily by the first request for the resource after a (re)start; until
 * it is ready, watches and lists that the cache must serve get 429 "storage is
 * (re)initializing" (Retry-After: 1). With etcd >= 3.5.13 / 3.6 that includes plain
 * consistent lists (resourceVersion unset). A list with resourceVersion=0 and a
 * label selector is always served by the cache (no delegation to etcd), so its
 * status tells whether the cache is ready.
 */
async function waitForWatchCache(
  request: (m: HttpMethod, p: string, b?: unknown) => Promise<KubeResponse>,
  collectionPath: string,
  deadline: number,
): Promise<void> {
  const probe = `${collectionPath}?resourceVersion=0&labelSelector=${encodeURIComponent('portcullis.test/probe=none')}`;
  for (;;) {
    const res = await request('GET', probe);
    if (res.status === 200) return;
    if (Date.now() > deadline) throw new Error(`GET ${probe} still HTTP ${res.status} after waiting: ${JSON.stringify(res.json)}`);
    await sleep(100);
  }
}

/** Established lastTransitionTime in ms since the epoch, or undefined when not Established. */
function crdEstablishedAt(obj: unknown): number | undefined {
  if (!isRecord(obj) || !isRecord(obj.status) || !Array.isArray(obj.status.conditions)) return undefined;
  for (const c of obj.status.conditions) {
    if (isRecord(c) && c.type === 'Established' && c.status === 'True') {
      const t = typeof c.lastTransitionTime === 'string' ? Date.parse(c.lastTransitionTime) : NaN;
      return Number.isNaN(t) ? Date.now() : t;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Processes

/** A child process in its own process group, output appended to a log file. */
class Managed {
  private proc: ChildProcess | undefined;
  private log: WriteStream | undefined;
  private exitPromise: Promise<void> = Promise.resolve();
  exited = true;
  exitInfo = '';

  constructor(
    readonly name: string,
    private readonly bin: string,
    private readonly args: string[],
    private readonly logFile: string,
  ) {}

  start(): void {
    this.log = createWriteStream(this.logFile, { flags: 'a' });
    this.log.write(`\n===== ${new Date().toISOString()} ${this.bin} ${this.args.join(' ')}\n`);
    const proc = spawn(this.bin, this.args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    this.exited = false;
    this.exitInfo = '';
    proc.stdout?.pipe(this.log, { end: false });
    proc.stderr?.pipe(this.log, { end: false });
    this.exitPromise = new Promise((resolve) => {
      proc.once('error', (err) => {
        this.exited = true;
        this.exitInfo = `failed to spawn: ${err.message}`;
        resolve();
      });
      proc.once('exit', (code, signal) => {
        this.exited = true;
        this.exitInfo = `exited with ${signal ?? `code ${code}`}`;
        resolve();
      });
    });
    liveGroups.add(proc);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    if (!this.exited) {
      signalGroup(proc, signal);
      const timer = setTimeout(() => signalGroup(proc, 'SIGKILL'), timeoutMs);
      await this.exitPromise;
      clearTimeout(timer);
    }
    // Also reap stragglers of the group (none expected).
    signalGroup(proc, 'SIGKILL');
    liveGroups.delete(proc);
    this.proc = undefined;
    const log = this.log;
    this.log = undefined;
    if (log) await new Promise<void>((resolve) => log.end(resolve));
  }
}

const liveGroups = new Set<ChildProcess>();
let exitHookInstalled = false;

function signalGroup(proc: ChildProcess, signal: NodeJS.Signals): void {
  if (proc.pid === undefined) return;
  try {
    process.kill(-proc.pid, signal);
  } catch {
    // group already gone
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort if a test run dies without calling stop(): never leave servers behind.
  process.once('exit', () => {
    for (const proc of liveGroups) signalGroup(proc, 'SIGKILL');
  });
}
installExitHook();

async function waitFor(what: string, proc: Managed, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exited) throw new Error(`${proc.name} ${proc.exitInfo} before ${what} became ready`);
    try {
      if (await probe()) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready after ${timeoutMs} ms`);
    await sleep(150);
  }
}

/** Picks free loopback ports and runs `fn`; retries with new ports when it fails
 *  (another process may grab a port between probing and binding). */
async function startWithFreePorts<T>(count: number, fn: (ports: number[]) => Promise<T>): Promise<T> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const ports = await freePorts(count);
    try {
      return await fn(ports);
    } catch (err) {
      lastErr = err;
    }
  }
  throw lastErr instanceof Error ? lastErr : new Error(String(lastErr));
}

async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const srv = net.createServer();
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => resolve());
      });
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') throw new Error('could not get a free port');
      ports.push(addr.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

async function collectLogs(dir: string): Promise<string> {
  let out = '';
  for (const name of ['etcd.log', 'apiserver.log']) {
    try {
      const text = await readFile(path.join(dir, name), 'utf8');
      out += `\n--- last lines of ${name} ---\n${text.split('\n').slice(-30).join('\n')}`;
    } catch {
      // no log
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Certificates (openssl CLI)

interface Pki {
  caFile: string;
  serverCertFile: string;
  serverKeyFile: string;
  caPem: string;
  clientCertPem: string;
  clientKeyPem: string;
}

async function makePki(dir: string): Promise<Pki> {
  const f = (name: string): string => path.join(dir, name);
  const openssl = async (...args: string[]): Promise<void> => {
    const r = await run('openssl', args, { cwd: dir });
    if (r.code !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await openssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '7',
    '-subj', '/CN=portcullis-e2e-ca', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature');

  await writeFile(f('server.ext'), [
    'basicConstraints=CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage=serverAuth',
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '',
  ].join('\n'));
  await openssl('req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
  await openssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'),
    '-set_serial', '2', '-days', '7', '-out', f('server.crt'), '-extfile', f('server.ext'));

  await writeFile(f('client.ext'), [
    'basicConstraints=CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage=clientAuth',
    '',
  ].join('\n'));
  await openssl('req', ...ec, '-keyout', f('client.key'), '-out', f('client.csr'),
    '-subj', '/O=system:masters/CN=portcullis-e2e-admin');
  await openssl('x509', '-req', '-in', f('client.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'),
    '-set_serial', '3', '-days', '7', '-out', f('client.crt'), '-extfile', f('client.ext'));

  return {
    caFile: f('ca.crt'),
    serverCertFile: f('server.crt'),
    serverKeyFile: f('server.key'),
    caPem: await readFile(f('ca.crt'), 'utf8'),
    clientCertPem: await readFile(f('client.crt'), 'utf8'),
    clientKeyPem: await readFile(f('client.key'), 'utf8'),
  };
}

const UNREACHABLE_KUBECONFIG = `apiVersion: v1
kind: Config
clusters:
- name: unreachable
  cluster:
    server: http://127.0.0.1:1
contexts:
- name: unreachable
  context:
    cluster: unreachable
    user: nobody
current-context: unreachable
users:
- name: nobody
  user:
    token: never-used
`;

function kubeconfigFor(url: string, pki: Pki): string {
  const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
  return `apiVersion: v1
kind: Config
clusters:
- name: portcullis-e2e
  cluster:
    server: ${url}
    certificate-authority-data: ${b64(pki.caPem)}
contexts:
- name: portcullis-e2e
  context:
    cluster: portcullis-e2e
    user: portcullis-e2e-admin
    namespace: default
current-context: portcullis-e2e
users:
- name: portcullis-e2e-admin
  user:
    client-certificate-data: ${b64(pki.clientCertPem)}
    client-key-data: ${b64(pki.clientKeyPem)}
`;
}

// ---------------------------------------------------------------------------------------
// HTTP

/** The informer-sync check never passes: the shared informers point at the
 *  unreachable --kubeconfig. Everything else (etcd, CRD informers) must be ready. */
const READYZ_PATH = '/readyz?exclude=informer-sync';

interface RawResponse {
  status: number;
  text: string;
}

function tlsRequest(
  pki: Pki,
  port: number,
  method: string,
  p: string,
  body: unknown,
  contentType: string | undefined,
  timeoutMs: number,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (payload !== undefined) {
      headers['content-type'] = contentType ?? (method === 'PATCH' ? 'application/merge-patch+json' : 'application/json');
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: p,
        headers,
        ca: pki.caPem,
        cert: pki.clientCertPem,
        key: pki.clientKeyPem,
        agent: false,
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${p} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

function plainGet(url: string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 2_000, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}

function openWatch(pki: Pki, port: number, p: string): Promise<KubeWatch> {
  return new Promise((resolve, reject) => {
    const events: WatchEvent[] = [];
    let cursor = 0;
    let ended = false;
    let endError: Error | undefined;
    const waiters = new Set<() => void>();
    const notify = (): void => {
      for (const w of [...waiters]) w();
    };

    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method: 'GET',
        path: p,
        headers: { accept: 'application/json' },
        ca: pki.caPem,
        cert: pki.clientCertPem,
        key: pki.clientKeyPem,
        agent: false,
      },
      (res) => {
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            const parsed = parseBody(line);
            if (isRecord(parsed) && typeof parsed.type === 'string') {
              events.push({ type: parsed.type, object: parsed.object });
            } else {
              events.push({ type: 'ERROR', object: parsed });
            }
          }
          notify();
        });
        const finish = (err?: Error): void => {
          if (ended) return;
          ended = true;
          endError = err;
          notify();
        };
        res.on('end', () => finish());
        res.on('close', () => finish());
        res.on('error', (err) => finish(err));

        const watch: KubeWatch = {
          status: res.statusCode ?? 0,
          events,
          get ended() {
            return ended;
          },
          next(predicate = () => true, timeoutMs = 10_000) {
            return new Promise<WatchEvent>((res2, rej2) => {
              const check = (): boolean => {
                while (cursor < events.length) {
                  const ev = events[cursor++];
                  if (ev && predicate(ev)) {
                    done();
                    res2(ev);
                    return true;
                  }
                }
                if (ended) {
                  done();
                  rej2(new Error(`watch ${p} ended${endError ? `: ${endError.message}` : ''} before a matching event`));
                  return true;
                }
                return false;
              };
              const timer = setTimeout(() => {
                done();
                rej2(new Error(`no matching watch event on ${p} within ${timeoutMs} ms (${events.length} events seen)`));
              }, timeoutMs);
              const waiter = (): void => {
                check();
              };
              const done = (): void => {
                clearTimeout(timer);
                waiters.delete(waiter);
              };
              if (!check()) waiters.add(waiter);
            });
          },
          close() {
            req.destroy();
          },
        };
        resolve(watch);
      },
    );
    req.on('error', (err) => {
      if (!ended) {
        ended = true;
        endError = err;
        notify();
      }
      reject(err);
    });
    req.end();
  });
}

// ---------------------------------------------------------------------------------------
// Small utilities

function parseBody(text: string): unknown {
  if (text === '') return null;
  try {
    const v: unknown = JSON.parse(text);
    return v;
  } catch {
    return text;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function run(cmd: string, args: string[], opts: { cwd: string }): Promise<{ code: number; stdout: string; stderr: string }> {
  return execFileAsync(cmd, args, { cwd: opts.cwd, maxBuffer: 16 * 1024 * 1024 }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: unknown) => {
      const e = err as { code?: unknown; stdout?: unknown; stderr?: unknown; message?: unknown };
      return {
        code: typeof e.code === 'number' ? e.code : 1,
        stdout: typeof e.stdout === 'string' ? e.stdout : '',
        stderr: typeof e.stderr === 'string' ? e.stderr : String(e.message ?? err),
      };
    },
  );
}
