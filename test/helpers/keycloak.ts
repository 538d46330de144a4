/**
 * A real Keycloak for tests: provisioned by scripts/provision/keycloak.sh (Maven Central
 * distribution + a JDK >= 21 found on the machine), started with `kc.sh start-dev` on a
 * free loopback port with the realms from deploy/keycloak/ imported, stopped after.
 *
 *   const kc = await startKeycloak();
 *   const token = await kc.passwordToken('agentcube', 'agentcube-cli', 'alice', 'alice-password');
 *   ...
 *   await kc.stop();
 *
 * Each run gets its own home under .cache/keycloak/runs/<id>/ (bin/kc.sh, conf/ and the
 * augmented lib/quarkus copied; the 170 MB of jars, themes and providers symlinked), so runs
 * never share a database, an import folder or a Quarkus build.
 *
 * Two caches make later starts fast (both live in .cache/keycloak/state/<version>/):
 * - dev-quarkus/: the Quarkus build `start-dev` makes on its first run (~25 s on 2 cores);
 *   copied into every later run, so start-dev does not rebuild.
 * - db/<hash>/h2/: the H2 database right after a clean import of the realm files, keyed by
 *   the Keycloak version, the realm files' contents and the admin credentials. A run starts
 *   from a copy of it instead of importing again (~14 s instead of ~35 s). It is built the
 *   first time (an extra import-only start, then a clean stop) and never reused for other
 *   realm contents. `fresh: true` (or PORTCULLIS_KEYCLOAK_FRESH=1) skips it and imports with
 *   --import-realm every time.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import {
  chmod,
  copyFile,
  cp,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..');
export const KEYCLOAK_PROVISION_SCRIPT = join(REPO_ROOT, 'scripts', 'provision', 'keycloak.sh');
export const KEYCLOAK_REALM_DIR = join(REPO_ROOT, 'deploy', 'keycloak');
/** The realm files imported by default (both realms). */
export const DEFAULT_REALM_FILES: readonly string[] = [
  join(KEYCLOAK_REALM_DIR, 'realm-agentcube.json'),
  join(KEYCLOAK_REALM_DIR, 'realm-tenant-b.json'),
];

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

// ---------------------------------------------------------------------------
// What the committed realm files contain (kept in step with deploy/keycloak/*.json by
// test/e2e/keycloak.test.ts).

export interface FixtureUser {
  username: string;
  password: string;
  /** The fixed user id, i.e. the `sub` of this user's tokens. */
  id: string;
  /** Realm roles assigned directly. */
  roles: readonly string[];
  /** Realm roles the token carries after composite expansion (the sandbox/admin ones). */
  effectiveRoles: readonly string[];
}

export interface FixtureRealm {
  realm: string;
  clients: {
    sdk: { clientId: 'agentcube-sdk'; secret: string; serviceAccountId: string };
    router: { clientId: 'agentcube-router'; secret: string };
    cli: { clientId: 'agentcube-cli' };
    audiences: readonly ['workloadmanager', 'picod'];
  };
  users: {
    alice: FixtureUser;
    bob: FixtureUser;
    carol: FixtureUser;
    dave: FixtureUser;
  };
}

function fixtureRealm(realm: string, n: 1 | 2, secretPrefix: string): FixtureRealm {
  const id = (prefix: string): string => `${prefix}-0000-4000-8000-00000000000${n}`;
  const user = (
    username: string,
    idPrefix: string,
    roles: readonly string[],
    effectiveRoles: readonly string[],
  ): FixtureUser => ({ username, password: `${username}-password`, id: id(idPrefix), roles, effectiveRoles });
  return {
    realm,
    clients: {
      sdk: { clientId: 'agentcube-sdk', secret: `${secretPrefix}sdk-secret`, serviceAccountId: id('5a000000') },
      router: { clientId: 'agentcube-router', secret: `${secretPrefix}router-secret` },
      cli: { clientId: 'agentcube-cli' },
      audiences: ['workloadmanager', 'picod'],
    },
    users: {
      alice: user('alice', 'a11ce000', ['sandbox:invoke'], ['sandbox:invoke']),
      bob: user('bob', 'b0b00000', ['sandbox:manage'], ['sandbox:manage', 'sandbox:invoke']),
      carol: user('carol', 'ca201000', ['admin'], ['admin', 'sandbox:manage', 'sandbox:invoke']),
      dave: user('dave', 'da7e0000', [], []),
    },
  };
}

/** Realms, clients, secrets, users, passwords and fixed user ids of deploy/keycloak/*.json. */
export const KEYCLOAK_FIXTURES: { agentcube: FixtureRealm; tenantB: FixtureRealm } = {
  agentcube: fixtureRealm('agentcube', 1, 'agentcube-'),
  tenantB: fixtureRealm('tenant-b', 2, 'tenant-b-'),
};

// ---------------------------------------------------------------------------
// Provisioning

export interface KeycloakInstallation {
  version: string;
  keycloakHome: string;
  javaHome: string;
  provisionLog: string;
  /** How long scripts/provision/keycloak.sh took (≈0.1 s when already installed). */
  provisionMs: number;
}

let installation: KeycloakInstallation | undefined;

/** Runs scripts/provision/keycloak.sh (idempotent, once per process) and returns what it printed. */
export function provisionKeycloak(): KeycloakInstallation {
  if (installation) return installation;
  const started = Date.now();
  const res = spawnSync('bash', [KEYCLOAK_PROVISION_SCRIPT], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    timeout: 30 * 60_000,
    maxBuffer: 1 << 20,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (res.error) throw new Error(`Keycloak provisioning could not run: ${res.error.message}`);
  if (res.status !== 0) {
    throw new Error(
      `Keycloak provisioning failed (${KEYCLOAK_PROVISION_SCRIPT}, exit ${String(res.status ?? res.signal)}):\n${res.stderr}`,
    );
  }
  const vars = new Map<string, string>();
  for (const line of res.stdout.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m?.[1] !== undefined && m[2] !== undefined) vars.set(m[1], m[2]);
  }
  const keycloakHome = vars.get('KEYCLOAK_HOME');
  const javaHome = vars.get('JAVA_HOME');
  if (!keycloakHome || !javaHome) {
    throw new Error(`Keycloak provisioning printed no KEYCLOAK_HOME/JAVA_HOME:\n${res.stdout}\n${res.stderr}`);
  }
  installation = {
    version: vars.get('KEYCLOAK_VERSION') ?? basename(keycloakHome),
    keycloakHome,
    javaHome,
    provisionLog: vars.get('KEYCLOAK_PROVISION_LOG') ?? '',
    provisionMs: Date.now() - started,
  };
  return installation;
}

// ---------------------------------------------------------------------------
// Public API

export interface StartKeycloakOptions {
  /** Realm JSON files to import (default: DEFAULT_REALM_FILES, i.e. agentcube + tenant-b). */
  realmFiles?: readonly string[];
  /** Realm whose discovery document signals readiness (default: the first file's `realm`). */
  readyRealm?: string;
  /** Loopback port (default: a free one). */
  port?: number;
  /** Master-realm admin created at first start (default admin / admin). */
  adminUsername?: string;
  adminPassword?: string;
  /**
   * Import with --import-realm on every start instead of copying the cached database
   * (default: false, or true when PORTCULLIS_KEYCLOAK_FRESH=1).
   */
  fresh?: boolean;
  /** Deadline for one start, from spawn to the discovery document answering (default 420 s; a
   *  first start on a busy 2-core machine was seen to take ~180 s). */
  startTimeoutMs?: number;
  /** Extra environment for kc.sh (e.g. KC_LOG_LEVEL, KC_SPI_...). */
  env?: Readonly<Record<string, string>>;
  /** Extra kc.sh arguments appended after the defaults (e.g. `--log-level=debug`). */
  extraArgs?: readonly string[];
  /** Keep the run directory (database, log) after stop() for inspection. */
  keepRunDir?: boolean;
}

export interface TokenResponse {
  access_token: string;
  token_type?: string;
  expires_in?: number;
  refresh_token?: string;
  issued_token_type?: string;
  scope?: string;
  [extra: string]: unknown;
}

export interface RawTokenResult {
  status: number;
  body: Record<string, unknown>;
}

export interface ExchangeParams {
  /** The token to exchange (it must carry the requesting client in `aud`). */
  subjectToken: string;
  /** `audience=` values (Keycloak narrows the result's `aud` to these). */
  audience?: string | readonly string[];
  scope?: string;
  /** The requesting client (default: the realm's agentcube-router fixture client). */
  clientId?: string;
  clientSecret?: string;
  requestedTokenType?: string;
}

export interface Keycloak {
  /** Base URL, e.g. http://127.0.0.1:43123 (no trailing slash). */
  url: string;
  port: number;
  version: string;
  javaHome: string;
  keycloakHome: string;
  /** This run's home (data/, conf/, keycloak.log). Removed by stop() unless keepRunDir. */
  runDir: string;
  /** Keycloak's stdout+stderr. */
  logFile: string;
  adminUsername: string;
  adminPassword: string;
  /** Milliseconds from spawn to ready, for the latest start. */
  startupMs: number;
  /** True if the latest start copied the cached database instead of importing. */
  fromDbCache: boolean;
  /** `${url}/realms/${realm}` — the `iss` of the realm's tokens. */
  issuer(realm: string): string;
  discoveryUrl(realm: string): string;
  tokenEndpoint(realm: string): string;
  jwksUri(realm: string): string;
  /** Password grant (direct access grant); returns the access token. Throws on non-200. */
  passwordToken(realm: string, clientId: string, username: string, password: string): Promise<string>;
  /** Client-credentials grant for a confidential client; returns the access token. Throws on non-200. */
  clientCredentialsToken(realm: string, clientId: string, clientSecret: string): Promise<string>;
  /** RFC 8693 standard token exchange; returns the whole response. Throws on non-200. */
  exchangeToken(realm: string, params: ExchangeParams): Promise<TokenResponse>;
  /** Any POST to the token endpoint, not throwing on errors (for negative tests). */
  tokenRequest(
    realm: string,
    form: Readonly<Record<string, string | readonly string[]>>,
    basicAuth?: { clientId: string; clientSecret: string },
  ): Promise<RawTokenResult>;
  /** An admin access token from the master realm (admin-cli, password grant). */
  adminToken(): Promise<string>;
  /** fetch() against `${url}/admin/realms/...` with an admin token (path starts with `/`). */
  adminFetch(path: string, init?: RequestInit): Promise<Response>;
  /**
   * Adds a new generated RSA signing key (RS256) with a priority above the existing ones,
   * so it becomes the active key for new tokens; the old key stays published in the JWKS.
   * Returns the new key's `kid`.
   */
  rotateSigningKey(realm: string): Promise<string>;
  /** Stops the Keycloak process but keeps the port, data and keys (for "IdP down" tests). */
  shutdown(): Promise<void>;
  /** Starts it again after shutdown() on the same port with the same data; waits until ready. */
  restart(): Promise<void>;
  /** Whether the Keycloak process is running. */
  isRunning(): boolean;
  /** Stops Keycloak (process group) and removes the run directory. Idempotent. */
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------
// Implementation

const POLL_MS = 250;

function cacheRoot(inst: KeycloakInstallation): string {
  return dirname(inst.keycloakHome); // .cache/keycloak
}

function stateDir(inst: KeycloakInstallation): string {
  return join(cacheRoot(inst), 'state', inst.version);
}

function newRunId(tag: string): string {
  return `${new Date().toISOString().replace(/[:.]/g, '-')}-${process.pid}-${randomBytes(3).toString('hex')}${tag}`;
}

function realmNameOf(file: string): string {
  const parsed: unknown = JSON.parse(readFileSync(file, 'utf8'));
  if (typeof parsed === 'object' && parsed !== null && 'realm' in parsed && typeof parsed.realm === 'string') {
    return parsed.realm;
  }
  throw new Error(`${file}: not a realm representation (no "realm" string)`);
}

function dbCacheKey(inst: KeycloakInstallation, files: readonly string[], user: string, pass: string): string {
  const h = createHash('sha256');
  h.update(`portcullis-kc-db-v1\0${inst.version}\0${user}\0${pass}\0`);
  for (const f of files) {
    h.update(`${basename(f)}\0`);
    h.update(readFileSync(f));
    h.update('\0');
  }
  return h.digest('hex').slice(0, 20);
}

/** Builds a per-run Keycloak home that shares the read-only parts of the distribution. */
async function makeRunHome(
  inst: KeycloakInstallation,
  dir: string,
  realmFiles: readonly string[],
  h2From: string | undefined,
): Promise<void> {
  const dist = inst.keycloakHome;
  await mkdir(join(dir, 'bin'), { recursive: true });
  await mkdir(join(dir, 'lib'), { recursive: true });
  await mkdir(join(dir, 'data', 'import'), { recursive: true });
  // kc.sh resolves its home from its own real path, so it must be a copy, not a link.
  await copyFile(join(dist, 'bin', 'kc.sh'), join(dir, 'bin', 'kc.sh'));
  await chmod(join(dir, 'bin', 'kc.sh'), 0o755);
  await cp(join(dist, 'conf'), join(dir, 'conf'), { recursive: true });
  await symlink(join(dist, 'lib', 'lib'), join(dir, 'lib', 'lib'));
  await symlink(join(dist, 'themes'), join(dir, 'themes'));
  await symlink(join(dist, 'providers'), join(dir, 'providers'));
  await cp(join(dist, 'lib', 'app'), join(dir, 'lib', 'app'), { recursive: true });
  await copyFile(join(dist, 'lib', 'quarkus-run.jar'), join(dir, 'lib', 'quarkus-run.jar'));
  const devQuarkus = join(stateDir(inst), 'dev-quarkus');
  const quarkusFrom = existsSync(join(devQuarkus, 'quarkus-application.dat')) ? devQuarkus : join(dist, 'lib', 'quarkus');
  await cp(quarkusFrom, join(dir, 'lib', 'quarkus'), { recursive: true });
  for (const f of realmFiles) await copyFile(f, join(dir, 'data', 'import', basename(f)));
  if (h2From) await cp(h2From, join(dir, 'data', 'h2'), { recursive: true });
}

/** Copies `src` to `dest` through a temporary sibling and a rename, so readers never see half a copy. */
async function publishDir(src: string, dest: string): Promise<void> {
  if (existsSync(dest)) return;
  await mkdir(dirname(dest), { recursive: true });
  const tmp = `${dest}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await cp(src, tmp, { recursive: true });
  try {
    await rename(tmp, dest);
  } catch {
    // another process published it first
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Runs `fn` while holding a lock directory (mkdir is atomic), so parallel test workers do not
 * build the same cache twice on 2 cores. A lock whose holder process is gone is broken.
 */
async function withDirLock<T>(lockDir: string, waitMs: number, fn: () => Promise<T>): Promise<T> {
  await mkdir(dirname(lockDir), { recursive: true });
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      await mkdir(lockDir);
      await writeFile(join(lockDir, 'pid'), `${process.pid}\n`);
      break;
    } catch (e) {
      if (!(e instanceof Error && 'code' in e && e.code === 'EEXIST')) throw e;
      const holder = Number((await readFile(join(lockDir, 'pid'), 'utf8').catch(() => '')).trim());
      const age = Date.now() - (await stat(lockDir).catch(() => ({ mtimeMs: Date.now() }))).mtimeMs;
      if ((holder > 0 && !isAlive(holder)) || (holder === 0 && age > 60_000)) {
        await rm(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for lock ${lockDir} (held by pid ${holder})`);
      await sleep(500);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lockDir, { recursive: true, force: true });
  }
}

/** Removes run directories left behind by processes that died without stop(). */
async function pruneStaleRuns(runsDir: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(runsDir);
  } catch {
    return;
  }
  const cutoff = Date.now() - 6 * 60 * 60_000;
  for (const e of entries) {
    const dir = join(runsDir, e);
    try {
      const pidText = await readFile(join(dir, 'kc.pid'), 'utf8').catch(() => '');
      const pid = Number(pidText.trim());
      const alive = pid > 0 && isAlive(pid);
      const st = await stat(dir);
      if (!alive && st.mtimeMs < cutoff) await rm(dir, { recursive: true, force: true });
    } catch {
      // ignore
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function logTail(file: string, lines = 40): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

interface RunningProcess {
  child: ChildProcess;
  exited: Promise<number | null>;
  hasExited: () => boolean;
}

/** Every Keycloak process group this module started, killed if the test process exits abruptly. */
const liveGroups = new Set<number>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const pgid of liveGroups) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

function spawnKeycloak(
  inst: KeycloakInstallation,
  runDir: string,
  port: number,
  opts: { adminUsername: string; adminPassword: string; importRealm: boolean; env: Readonly<Record<string, string>>; extraArgs: readonly string[] },
): RunningProcess {
  const logFile = join(runDir, 'keycloak.log');
  const fd = openSync(logFile, 'a');
  const args = [
    join(runDir, 'bin', 'kc.sh'),
    'start-dev',
    ...(opts.importRealm ? ['--import-realm'] : []),
    '--http-host=127.0.0.1',
    `--http-port=${port}`,
    ...opts.extraArgs,
  ];
  const child = spawn('bash', args, {
    cwd: runDir,
    detached: true, // own process group: stop() signals kc.sh and the JVM together
    stdio: ['ignore', fd, fd],
    env: {
      ...process.env,
      ...opts.env,
      JAVA_HOME: inst.javaHome,
      JAVA: join(inst.javaHome, 'bin', 'java'),
      KC_BOOTSTRAP_ADMIN_USERNAME: opts.adminUsername,
      KC_BOOTSTRAP_ADMIN_PASSWORD: opts.adminPassword,
    },
  });
  closeSync(fd);
  let done = false;
  const exited = new Promise<number | null>((res) => {
    child.once('exit', (code) => {
      done = true;
      if (child.pid !== undefined) liveGroups.delete(child.pid);
      res(code);
    });
    child.once('error', () => {
      done = true;
      res(null);
    });
  });
  if (child.pid !== undefined) {
    liveGroups.add(child.pid);
    installExitHook();
    void writeFile(join(runDir, 'kc.pid'), `${child.pid}\n`).catch(() => undefined);
  }
  return { child, exited, hasExited: () => done };
}

async function killGroup(proc: RunningProcess, graceMs = 30_000): Promise<void> {
  const pid = proc.child.pid;
  if (pid === undefined || proc.hasExited()) return;
  const signal = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-pid, sig);
    } catch {
      // already gone
    }
  };
  signal('SIGTERM');
  const timer = new Promise<'timeout'>((res) => setTimeout(() => res('timeout'), graceMs).unref());
  if ((await Promise.race([proc.exited, timer])) === 'timeout') {
    signal('SIGKILL');
    await proc.exited;
  }
  // kc.sh may exit before the JVM it started; make sure nothing of the group is left.
  const deadline = Date.now() + 10_000;
  while (groupAlive(pid) && Date.now() < deadline) await sleep(100);
  if (groupAlive(pid)) signal('SIGKILL');
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

async function waitReady(url: string, proc: RunningProcess, logFile: string, deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  let lastError = 'no answer yet';
  while (Date.now() < deadline) {
    if (proc.hasExited()) {
      throw new Error(`Keycloak exited before it was ready (waiting for ${url}). Log tail (${logFile}):\n${logTail(logFile)}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) {
        await res.arrayBuffer();
        return;
      }
      lastError = `HTTP ${res.status}`;
      await res.arrayBuffer();
    } catch (e) {
      lastError = e instanceof Error ? e.message : String(e);
    }
    await sleep(POLL_MS);
  }
  throw new Error(
    `Keycloak not ready within ${deadlineMs} ms (${url}: ${lastError}). Log tail (${logFile}):\n${logTail(logFile)}`,
  );
}

async function startOnce(
  inst: KeycloakInstallation,
  runDir: string,
  port: number,
  readyUrl: string,
  spawnOpts: Parameters<typeof spawnKeycloak>[3],
  timeoutMs: number,
): Promise<{ proc: RunningProcess; ms: number }> {
  const t0 = Date.now();
  const proc = spawnKeycloak(inst, runDir, port, spawnOpts);
  try {
    await waitReady(readyUrl, proc, join(runDir, 'keycloak.log'), timeoutMs);
  } catch (e) {
    await killGroup(proc, 5_000);
    throw e;
  }
  return { proc, ms: Date.now() - t0 };
}

/** Builds the cached dev Quarkus build and the imported database for these realm files. */
async function buildDbCache(
  inst: KeycloakInstallation,
  realmFiles: readonly string[],
  readyRealm: string,
  dbDir: string,
  spawnOpts: Omit<Parameters<typeof spawnKeycloak>[3], 'importRealm'>,
  timeoutMs: number,
): Promise<void> {
  const runsDir = join(cacheRoot(inst), 'runs');
  const dir = join(runsDir, newRunId('-dbcache'));
  await makeRunHome(inst, dir, realmFiles, undefined);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const { proc } = await startOnce(
    inst,
    dir,
    port,
    `${base}/realms/${readyRealm}/.well-known/openid-configuration`,
    { ...spawnOpts, importRealm: true },
    timeoutMs,
  );
  await killGroup(proc);
  const code = await proc.exited;
  // kc.sh reports 143 after forwarding SIGTERM; anything else may mean an unclean database.
  if (code !== 0 && code !== 143 && code !== null) {
    throw new Error(`Keycloak (db cache build) exited with ${code}. Log tail:\n${logTail(join(dir, 'keycloak.log'))}`);
  }
  await publishDir(join(dir, 'lib', 'quarkus'), join(stateDir(inst), 'dev-quarkus'));
  await publishDir(join(dir, 'data', 'h2'), dbDir);
  await rm(dir, { recursive: true, force: true });
}

/**
 * Provisions (if needed) and starts Keycloak on loopback with the realm files imported.
 * Resolves once `/realms/<readyRealm>/.well-known/openid-configuration` answers 200.
 */
export async function startKeycloak(opts: StartKeycloakOptions = {}): Promise<Keycloak> {
  const inst = provisionKeycloak();
  const realmFiles = (opts.realmFiles ?? DEFAULT_REALM_FILES).map((f) => resolve(f));
  if (realmFiles.length === 0) throw new Error('startKeycloak: realmFiles is empty');
  const firstRealm = realmFiles[0];
  if (firstRealm === undefined) throw new Error('startKeycloak: realmFiles is empty');
  const readyRealm = opts.readyRealm ?? realmNameOf(firstRealm);
  const adminUsername = opts.adminUsername ?? 'admin';
  const adminPassword = opts.adminPassword ?? 'admin';
  const timeoutMs = opts.startTimeoutMs ?? 420_000;
  const baseSpawn = { adminUsername, adminPassword, env: opts.env ?? {}, extraArgs: opts.extraArgs ?? [] };

  const runsDir = join(cacheRoot(inst), 'runs');
  await mkdir(runsDir, { recursive: true });
  await pruneStaleRuns(runsDir);

  let dbDir: string | undefined;
  const fresh = opts.fresh ?? process.env.PORTCULLIS_KEYCLOAK_FRESH === '1';
  if (!fresh) {
    dbDir = join(stateDir(inst), 'db', dbCacheKey(inst, realmFiles, adminUsername, adminPassword));
    if (!existsSync(dbDir)) {
      const target = dbDir;
      await withDirLock(`${target}.lock`, timeoutMs * 2, async () => {
        // another worker may have built it while we waited for the lock
        if (!existsSync(target)) await buildDbCache(inst, realmFiles, readyRealm, target, baseSpawn, timeoutMs);
      });
    }
  }

  const runDir = join(runsDir, newRunId(''));
  await makeRunHome(inst, runDir, realmFiles, dbDir);
  const logFile = join(runDir, 'keycloak.log');

  // The port is chosen before Keycloak binds it; retry on the rare lost race.
  let port = opts.port ?? (await freePort());
  let proc: RunningProcess | undefined;
  let startupMs = 0;
  for (let attempt = 1; ; attempt++) {
    const base = `http://127.0.0.1:${port}`;
    try {
      const r = await startOnce(
        inst,
        runDir,
        port,
        `${base}/realms/${readyRealm}/.well-known/openid-configuration`,
        { ...baseSpawn, importRealm: dbDir === undefined },
        timeoutMs,
      );
      proc = r.proc;
      startupMs = r.ms;
      break;
    } catch (e) {
      const portLost = /Address already in use|Port .* already|BindException/i.test(logTail(logFile, 200));
      if (!portLost || opts.port !== undefined || attempt >= 3) {
        throw e;
      }
      port = await freePort();
    }
  }

  const url = `http://127.0.0.1:${port}`;
  let current: RunningProcess | undefined = proc;
  let stopped = false;
  const issuer = (realm: string): string => `${url}/realms/${encodeURIComponent(realm)}`;
  const tokenEndpoint = (realm: string): string => `${issuer(realm)}/protocol/openid-connect/token`;

  const tokenRequest: Keycloak['tokenRequest'] = async (realm, form, basicAuth) => {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(form)) {
      if (typeof v === 'string') body.append(k, v);
      else for (const item of v) body.append(k, item);
    }
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    };
    if (basicAuth) {
      const enc = (s: string): string => encodeURIComponent(s);
      headers.authorization = `Basic ${Buffer.from(`${enc(basicAuth.clientId)}:${enc(basicAuth.clientSecret)}`).toString('base64')}`;
    }
    const res = await fetch(tokenEndpoint(realm), { method: 'POST', headers, body, signal: AbortSignal.timeout(30_000) });
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = { raw: text };
    }
    const obj = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : { raw: text };
    return { status: res.status, body: obj };
  };

  const expectToken = (what: string, r: RawTokenResult): TokenResponse => {
    const token = r.body.access_token;
    if (r.status !== 200 || typeof token !== 'string') {
      throw new Error(`${what}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
    }
    return { ...r.body, access_token: token };
  };

  const adminToken = async (): Promise<string> =>
    expectToken(
      'admin token',
      await tokenRequest('master', {
        grant_type: 'password',
        client_id: 'admin-cli',
        username: adminUsername,
        password: adminPassword,
      }),
    ).access_token;

  const adminFetch: Keycloak['adminFetch'] = async (path, init = {}) => {
    const headers = new Headers(init.headers);
    headers.set('authorization', `Bearer ${await adminToken()}`);
    if (init.body !== undefined && !headers.has('content-type')) headers.set('content-type', 'application/json');
    return fetch(`${url}/admin${path}`, { ...init, headers, signal: init.signal ?? AbortSignal.timeout(30_000) });
  };

  const handle: Keycloak = {
    url,
    port,
    version: inst.version,
    javaHome: inst.javaHome,
    keycloakHome: inst.keycloakHome,
    runDir,
    logFile,
    adminUsername,
    adminPassword,
    startupMs,
    fromDbCache: dbDir !== undefined,
    issuer,
    discoveryUrl: (realm) => `${issuer(realm)}/.well-known/openid-configuration`,
    tokenEndpoint,
    jwksUri: (realm) => `${issuer(realm)}/protocol/openid-connect/certs`,
    tokenRequest,
    async passwordToken(realm, clientId, username, password) {
      return expectToken(
        `password grant ${realm}/${clientId}/${username}`,
        await tokenRequest(realm, { grant_type: 'password', client_id: clientId, username, password, scope: 'openid' }),
      ).access_token;
    },
    async clientCredentialsToken(realm, clientId, clientSecret) {
      return expectToken(
        `client credentials ${realm}/${clientId}`,
        await tokenRequest(realm, { grant_type: 'client_credentials' }, { clientId, clientSecret }),
      ).access_token;
    },
    async exchangeToken(realm, p) {
      const fixture = Object.values(KEYCLOAK_FIXTURES).find((f) => f.realm === realm);
      const clientId = p.clientId ?? fixture?.clients.router.clientId;
      const clientSecret = p.clientSecret ?? fixture?.clients.router.secret;
      if (clientId === undefined || clientSecret === undefined) {
        throw new Error(`exchangeToken: no clientId/clientSecret given and realm ${realm} has no fixture`);
      }
      const form: Record<string, string | readonly string[]> = {
        grant_type: TOKEN_EXCHANGE_GRANT,
        subject_token: p.subjectToken,
        subject_token_type: ACCESS_TOKEN_TYPE,
        requested_token_type: p.requestedTokenType ?? ACCESS_TOKEN_TYPE,
      };
      if (p.audience !== undefined) form.audience = typeof p.audience === 'string' ? [p.audience] : p.audience;
      if (p.scope !== undefined) form.scope = p.scope;
      return expectToken(`token exchange ${realm}/${clientId}`, await tokenRequest(realm, form, { clientId, clientSecret }));
    },
    adminToken,
    adminFetch,
    async rotateSigningKey(realm) {
      const realmRes = await adminFetch(`/realms/${encodeURIComponent(realm)}`);
      if (!realmRes.ok) throw new Error(`rotateSigningKey: GET realm ${realm}: HTTP ${realmRes.status}`);
      const realmRep = (await realmRes.json()) as { id?: unknown };
      if (typeof realmRep.id !== 'string') throw new Error('rotateSigningKey: realm has no id');
      const keysBefore = await listKeys(adminFetch, realm);
      const topPriority = Math.max(100, ...keysBefore.map((k) => k.providerPriority ?? 0));
      const name = `rsa-rotated-${Date.now()}`;
      const create = await adminFetch(`/realms/${encodeURIComponent(realm)}/components`, {
        method: 'POST',
        body: JSON.stringify({
          name,
          providerId: 'rsa-generated',
          providerType: 'org.keycloak.keys.KeyProvider',
          parentId: realmRep.id,
          config: {
            priority: [String(topPriority + 10)],
            enabled: ['true'],
            active: ['true'],
            algorithm: ['RS256'],
            keySize: ['2048'],
          },
        }),
      });
      if (create.status !== 201) throw new Error(`rotateSigningKey: create component: HTTP ${create.status} ${await create.text()}`);
      const location = create.headers.get('location') ?? '';
      const componentId = location.slice(location.lastIndexOf('/') + 1);
      const after = await listKeys(adminFetch, realm);
      const added = after.find((k) => k.providerId === componentId && k.algorithm === 'RS256');
      if (!added?.kid) throw new Error(`rotateSigningKey: new key of component ${componentId} not listed`);
      return added.kid;
    },
    async shutdown() {
      if (current) {
        await killGroup(current);
        current = undefined;
      }
    },
    async restart() {
      if (stopped) throw new Error('restart(): Keycloak was stopped for good');
      if (current && !current.hasExited()) return;
      const r = await startOnce(
        inst,
        runDir,
        port,
        `${url}/realms/${readyRealm}/.well-known/openid-configuration`,
        { ...baseSpawn, importRealm: false },
        timeoutMs,
      );
      current = r.proc;
      handle.startupMs = r.ms;
    },
    isRunning() {
      return current !== undefined && !current.hasExited();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (current) await killGroup(current);
      current = undefined;
      if (!opts.keepRunDir) await rm(runDir, { recursive: true, force: true });
    },
  };
  return handle;
}

interface KeyMetadata {
  kid?: string;
  algorithm?: string;
  providerId?: string;
  providerPriority?: number;
  status?: string;
}

async function listKeys(adminFetch: Keycloak['adminFetch'], realm: string): Promise<KeyMetadata[]> {
  const res = await adminFetch(`/realms/${encodeURIComponent(realm)}/keys`);
  if (!res.ok) throw new Error(`GET keys of ${realm}: HTTP ${res.status}`);
  const body = (await res.json()) as { keys?: KeyMetadata[] };
  return body.keys ?? [];
}
