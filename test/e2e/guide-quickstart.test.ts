import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { SANDBOX_CRD_PATH, startKubeApiServer, type KubeApiServer } from '../helpers/kube-apiserver.js';

/**
 * The user guide (docs/guide/), run for real. Every chapter with commands has a
 * script in scripts/guide/ that runs them exactly as printed, checks what they
 * answer and stops what it started; this file runs each script and checks its exit
 * status and output. test/unit/guide.test.ts checks that every command in the guide
 * is in one of those scripts (or in package.json, scripts/provision/, .ci/run or a
 * test).
 *
 * Real components: portcullis processes (bin/portcullis.js, built by `npm test`;
 * GUIDE_SKIP_INSTALL=1 keeps the scripts from running `npm ci` / `npm run build`
 * while other test files use dist/), curl and openssl; Envoy for the demo
 * (scripts/provision/envoy.sh); a Kubernetes API server (apiextensions-apiserver +
 * etcd, test/helpers/kube-apiserver.ts) for the ownership chapter.
 *
 * The scripts use fixed loopback ports (19191-19192, 19291-19292, 19901-19903; the
 * demo 9191, 9192, 9901, 10000, 15000, 8080), so they run one after the other.
 */

const ROOT = join(import.meta.dirname, '..', '..');
const SCRIPTS = join(ROOT, 'scripts', 'guide');

interface ScriptRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
  ms: number;
}

/** Runs scripts/guide/<name> in its own process group; on timeout the whole group is killed. */
function runGuideScript(name: string, opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ScriptRun> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [join(SCRIPTS, name)], {
      cwd: ROOT,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, GUIDE_SKIP_INSTALL: '1', ...opts.env },
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (output += c.toString('utf8')));
    const killGroup = (signal: NodeJS.Signals) => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      output += `\n[test] ${name} timed out after ${opts.timeoutMs ?? 120_000} ms: killing its process group\n`;
      killGroup('SIGTERM');
      setTimeout(() => killGroup('SIGKILL'), 5_000).unref();
    }, opts.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      killGroup('SIGKILL'); // nothing the script started may outlive it
      resolve({ code, signal, output, ms: Date.now() - started });
    });
  });
}

/** Asserts exit 0 and the script's own "passed" line; shows the output when not. */
function expectPassed(name: string, run: ScriptRun): void {
  const base = name.replace(/\.sh$/, '');
  expect(run.code, `${name} exited ${run.code} (signal ${run.signal}) after ${run.ms} ms:\n${run.output}`).toBe(0);
  expect(run.output).toContain(`guide: ${base} passed`);
  expect(run.output).not.toMatch(/guide: FAIL/);
}

beforeAll(() => {
  ensureBuilt();
});

describe('every guide script is run here', () => {
  it('lists each scripts/guide/*.sh except the shared library and the tool scripts it runs', () => {
    const scripts = readdirSync(SCRIPTS).filter((f) => f.endsWith('.sh'));
    const covered = ['quickstart.sh', 'demo.sh', 'mtls.sh', 'tenants.sh', 'sdk.sh', 'roles.sh', 'ownership.sh', 'operations.sh'];
    // lib.sh is sourced by all of them; validate-configmap.sh is run by operations.sh;
    // check.sh runs this file.
    const tools = ['lib.sh', 'validate-configmap.sh', 'check.sh'];
    expect(scripts.filter((s) => !covered.includes(s) && !tools.includes(s))).toEqual([]);
  });
});

describe('chapter 1: quick start', () => {
  it('quickstart.sh: default configuration, a development token, allow / 403 / 401 over HTTP, explain', async () => {
    const run = await runGuideScript('quickstart.sh');
    expectPassed('quickstart.sh', run);
    expect(run.output).toMatch(/^ {4}HTTP\/1\.1 200 OK$/m);
    expect(run.output).toMatch(/^ {4}x-user-sub: alice$/m);
    expect(run.output).toMatch(/^ {4}x-portcullis-reason: missing_role$/m);
    expect(run.output).toMatch(/^ {4}www-authenticate: Bearer realm="portcullis"$/m);
    expect(run.output).toMatch(/^ {4}decision: DENY 403 missing_role/m);
  });

  it('demo.sh: npm run demo --once (portcullis + Envoy + echo upstream), when its fixed ports are free', async (ctx) => {
    const run = await runGuideScript('demo.sh', { timeoutMs: 300_000 });
    if (run.code === 75) {
      ctx.skip(run.output.trim());
      return;
    }
    expectPassed('demo.sh', run);
    expect(run.output).toContain('self-check allowed: 200 (upstream saw x-user-sub=alice)');
    expect(run.output).toContain('self-check denied: 403 (reason=missing_role)');
  }, 300_000);
});

describe('chapter 3: workload identity', () => {
  it('mtls.sh: --mtls-* flags, allowed and refused clients, rotation on disk', async () => {
    const run = await runGuideScript('mtls.sh');
    expectPassed('mtls.sh', run);
    expect(run.output).toMatch(/^ {4}x-portcullis-reason: peer_not_allowed$/m);
    expect(run.output).toContain('new handshakes get the renewed certificate');
  }, 60_000);
});

describe('chapter 4: Keycloak and tenants', () => {
  it('tenants.sh: --keycloak-* flags validated; two issuers, issuer-qualified identities, routes[].issuers', async () => {
    const run = await runGuideScript('tenants.sh');
    expectPassed('tenants.sh', run);
    expect(run.output).toMatch(/^ {4}x-user-id: agentcube\/alice$/m);
    expect(run.output).toMatch(/^ {4}x-user-id: tenant-b\/alice$/m);
    expect(run.output).toMatch(/^ {4}x-portcullis-reason: issuer_not_allowed$/m);
  }, 60_000);
});

describe('chapter 5: SDKs', () => {
  it('sdk.sh: TokenAuth in TypeScript and Python through portcullis', async () => {
    const run = await runGuideScript('sdk.sh');
    expectPassed('sdk.sh', run);
    expect(run.output).toContain('typescript: 200 sub=alice');
    expect(run.output).toContain('python: 200 sub=alice');
  }, 60_000);
});

describe('chapter 6: roles', () => {
  it('roles.sh: realm and client roles, inheritance, allOf, a shadow roll-out then enforced by a reload', async () => {
    const run = await runGuideScript('roles.sh');
    expectPassed('roles.sh', run);
    expect(run.output).toMatch(/^ {4}x-user-effective-roles: admin,sandbox:invoke,sandbox:manage$/m);
    expect(run.output).toMatch(/^ {4}portcullis_shadow_would_deny_total\{route="sandbox-list",requirement="roles",reason="missing_role"\} 1$/m);
  }, 60_000);
});

describe('chapter 7: ownership, against a real API server', () => {
  let kube: KubeApiServer | undefined;

  beforeAll(async () => {
    kube = await startKubeApiServer();
    await kube.applyCrd(SANDBOX_CRD_PATH);
    const r = await kube.request('POST', '/apis/agentcube.io/v1alpha1/namespaces/agentcube/sandboxes', {
      apiVersion: 'agentcube.io/v1alpha1',
      kind: 'Sandbox',
      metadata: { name: 's1', labels: { 'agentcube.io/owner': 'dev.alice' } },
      spec: { image: 'python:3.12' },
    });
    if (r.status !== 201) throw new Error(`creating sandbox s1: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  });

  afterAll(async () => {
    await kube?.stop();
  });

  it('ownership.sh: cache synced, owner allowed, others not_owner, unknown resource_not_found, explain, metrics', async () => {
    const run = await runGuideScript('ownership.sh', { env: { KUBECONFIG: kube?.kubeconfigPath } });
    expectPassed('ownership.sh', run);
    expect(run.output).toMatch(/^ {4}x-portcullis-owner: dev\.alice$/m);
    expect(run.output).toMatch(/^ {4}x-portcullis-reason: not_owner$/m);
    expect(run.output).toMatch(/^ {4}x-portcullis-reason: resource_not_found$/m);
  }, 90_000);
});

describe('chapter 9: operations', () => {
  it('operations.sh: ConfigMap validation, health, metrics, logs, reloads (refused and applied), graceful stop', async () => {
    const run = await runGuideScript('operations.sh');
    expectPassed('operations.sh', run);
    expect(run.output).toContain('deploy/portcullis/configmap.yaml (data.portcullis.yaml): ok');
    expect(run.output).toMatch(/^ {4}portcullis_config_reloads_total\{result="invalid"\} 1$/m);
  }, 60_000);
});
