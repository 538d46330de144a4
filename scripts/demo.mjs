#!/usr/bin/env node
// npm run demo — portcullis behind a real Envoy, on your machine.
//
//   client ──▶ Envoy :10000 ──ext_authz gRPC──▶ portcullis :9191 (embedded default config)
//                     └──── allowed ───────────▶ echo upstream :8080
//
// Starts portcullis with its embedded default configuration (no --config: dev
// issuer on, admin on 127.0.0.1:9901), Envoy with envoy/local/envoy-grpc.yaml
// exactly as committed, and an echo upstream that answers with the request it
// received. Mints two development tokens, prints a curl line that is allowed
// and one that is denied, checks both once itself, then keeps running until
// Ctrl-C (or exits right away with --once).
//
// Needs `npm run build` first (done here if dist/ is missing) and Python 3 with
// venv (Envoy comes from PyPI via scripts/provision/envoy.sh).
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, createWriteStream } from 'node:fs';
import { createServer, request } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ONCE = process.argv.includes('--once');
const LOG_DIR = join(ROOT, '.cache', 'demo');
const PORTS = { envoy: 10000, envoyAdmin: 15000, upstream: 8080, grpc: 9191, http: 9192, admin: 9901 };

const children = [];
let upstreamServer;
let stopping = false;

function log(msg) {
  process.stdout.write(`[demo] ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  return new Promise((res, rej) => {
    execFile(cmd, args, { cwd: ROOT, maxBuffer: 1 << 22, ...opts }, (err, stdout, stderr) => {
      if (err) rej(new Error(`${cmd} ${args.join(' ')} failed:\n${stderr || err.message}`));
      else res(stdout);
    });
  });
}

function httpCall({ port, method = 'GET', path = '/', headers = {}, body }) {
  return new Promise((res, rej) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false, timeout: 5000 }, (r) => {
      const chunks = [];
      r.on('data', (c) => chunks.push(c));
      r.on('end', () => res({ status: r.statusCode ?? 0, headers: r.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', rej);
    req.end(body);
  });
}

async function waitFor(what, deadlineMs, check) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    if (stopping) throw new Error(`stopped while waiting for ${what}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function startChild(name, cmd, args, { onLine } = {}) {
  const logFile = join(LOG_DIR, `${name}.log`);
  const out = createWriteStream(logFile);
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let pending = '';
  child.stdout.on('data', (chunk) => {
    out.write(chunk);
    pending += chunk.toString('utf8');
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      onLine?.(line);
    }
  });
  child.stderr.on('data', (chunk) => out.write(chunk));
  child.on('exit', (code, signal) => {
    out.end();
    if (!stopping) {
      log(`${name} exited unexpectedly (code ${code}, signal ${signal}); see ${logFile}`);
      void shutdown(1);
    }
  });
  children.push({ name, child });
  return { child, logFile };
}

function startUpstream() {
  return new Promise((res, rej) => {
    upstreamServer = createServer((req, rsp) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const payload = JSON.stringify(
          { method: req.method, path: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') },
          null,
          2,
        );
        rsp.writeHead(200, { 'content-type': 'application/json' });
        rsp.end(`${payload}\n`);
      });
    });
    upstreamServer.once('error', rej);
    upstreamServer.listen(PORTS.upstream, '127.0.0.1', () => res());
  });
}

async function devToken(sub, roles) {
  const r = await httpCall({
    port: PORTS.admin,
    method: 'POST',
    path: '/dev/token',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ sub, roles, ttlSeconds: 3600 }),
  });
  if (r.status !== 200) throw new Error(`POST /dev/token → ${r.status} ${r.body}`);
  return JSON.parse(r.body).access_token;
}

async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  log('stopping…');
  await Promise.all(
    children.map(
      ({ child }) =>
        new Promise((res) => {
          if (child.exitCode !== null || child.signalCode !== null) return res();
          const t = setTimeout(() => child.kill('SIGKILL'), 5000);
          child.once('exit', () => {
            clearTimeout(t);
            res();
          });
          child.kill('SIGTERM');
        }),
    ),
  );
  await new Promise((res) => (upstreamServer ? upstreamServer.close(() => res()) : res()));
  log('stopped');
  process.exit(code);
}

async function main() {
  mkdirSync(LOG_DIR, { recursive: true });
  process.on('SIGINT', () => void shutdown(0));
  process.on('SIGTERM', () => void shutdown(0));

  if (!existsSync(join(ROOT, 'dist', 'src', 'main.js'))) {
    log('dist/ missing: running npm run build');
    await run('npm', ['run', 'build']);
  }

  log('provisioning Envoy (scripts/provision/envoy.sh)');
  const prov = await run('bash', [join(ROOT, 'scripts', 'provision', 'envoy.sh')]);
  const envoyBin = /^ENVOY_BIN=(.*)$/m.exec(prov)?.[1];
  const envoyVersion = /^ENVOY_VERSION=(.*)$/m.exec(prov)?.[1];
  if (!envoyBin) throw new Error(`provisioning printed no ENVOY_BIN:\n${prov}`);
  log(`Envoy ${envoyVersion} at ${envoyBin}`);

  await startUpstream().catch((e) => {
    throw new Error(`echo upstream cannot listen on 127.0.0.1:${PORTS.upstream}: ${e.message}`);
  });
  log(`echo upstream on http://127.0.0.1:${PORTS.upstream}`);

  let ready = false;
  const pc = startChild('portcullis', process.execPath, [join(ROOT, 'bin', 'portcullis.js')], {
    onLine: (line) => {
      try {
        const j = JSON.parse(line);
        if (j.msg === 'portcullis ready') {
          ready = true;
          log(`portcullis ready: ${JSON.stringify(j.addresses)}`);
        }
      } catch {
        // not JSON
      }
    },
  });
  await waitFor('portcullis ready line', 20_000, async () => ready);

  const envoy = startChild(
    'envoy',
    envoyBin,
    [
      '-c', join(ROOT, 'envoy', 'local', 'envoy-grpc.yaml'),
      '--base-id', String((process.pid % 400_000) * 100 + 99),
      '-l', 'warning',
      '--concurrency', '1',
      '--file-flush-interval-msec', '100',
    ],
    {
      // the committed bootstrap writes its JSON access log to stdout
      onLine: (line) => {
        try {
          const j = JSON.parse(line);
          log(`access: ${j.method} ${j.path} → ${j.status} sub=${j.authz_sub ?? '-'} route=${j.authz_route ?? '-'} reason=${j.authz_reason ?? '-'}`);
        } catch {
          // Envoy's own log line
        }
      },
    },
  );
  await waitFor('Envoy /ready', 20_000, async () => (await httpCall({ port: PORTS.envoyAdmin, path: '/ready' })).status === 200);
  log(`Envoy listening on http://127.0.0.1:${PORTS.envoy} (admin 127.0.0.1:${PORTS.envoyAdmin})`);

  const allowed = await devToken('alice', ['sandbox:invoke']);
  const denied = await devToken('bob', []);
  const url = `http://127.0.0.1:${PORTS.envoy}/v1/sandboxes/sb-1/invoke`;
  const curl = (tok) => `curl -i -X POST ${url} -H 'authorization: Bearer ${tok}' -H 'x-user-sub: spoofed' -d '{"input":"hi"}'`;

  process.stdout.write(`
Allowed (alice has sandbox:invoke; the echo shows x-user-sub: alice, not the spoofed value):

  ${curl(allowed)}

Denied (bob has no roles → 403 missing_role):

  ${curl(denied)}

No token → 401 with WWW-Authenticate:

  curl -i -X POST ${url}

Mint more tokens:  curl -s -XPOST 127.0.0.1:${PORTS.admin}/dev/token -d '{"sub":"carol","roles":["admin"]}'
Logs: ${pc.logFile}, ${envoy.logFile}

`);

  // Check both lines once, so the demo proves what it prints.
  for (const [label, tok, expected] of [['allowed', allowed, 200], ['denied', denied, 403]]) {
    const r = await httpCall({
      port: PORTS.envoy,
      method: 'POST',
      path: '/v1/sandboxes/sb-1/invoke',
      headers: { authorization: `Bearer ${tok}`, 'x-user-sub': 'spoofed' },
      body: '{"input":"hi"}',
    });
    const detail = r.status === 200 ? `upstream saw x-user-sub=${JSON.parse(r.body).headers['x-user-sub']}` : `reason=${r.headers['x-portcullis-reason']}`;
    log(`self-check ${label}: ${r.status} (${detail})${r.status === expected ? '' : `  ✗ expected ${expected}`}`);
    if (r.status !== expected) process.exitCode = 1;
  }

  if (ONCE) {
    await shutdown(process.exitCode ?? 0);
    return;
  }
  log('running; Ctrl-C stops everything');
}

main().catch(async (err) => {
  log(`error: ${err instanceof Error ? err.message : String(err)}`);
  await shutdown(1);
});
