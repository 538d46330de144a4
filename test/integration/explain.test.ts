import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type Addresses, type App } from '../../src/app.js';
import { runExplain } from '../../src/explain/cli.js';

/** `portcullis explain` against a live app (admin endpoint) and against a config file. */
const CONFIG = `
listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0 }
development: { issuer: { enabled: true } }
roles: { admin: [sandbox:manage], "sandbox:manage": [sandbox:invoke] }
routes:
  - name: sandbox-invoke
    match: { methods: [POST], path: "/v1/sandboxes/{id}/invoke" }
    require: { roles: { anyOf: [sandbox:invoke] } }
    headers: { x-user-sandbox: "{path.id}" }
  - name: admin
    match: { path: "/admin/**" }
    require: { roles: { anyOf: [admin] } }
  - name: workloads
    match: { path: "/internal/**" }
    allow: anonymous
    require: { peers: ["spiffe://td/ns/agentcube-system/sa/router"] }
`;

describe('portcullis explain', () => {
  let dir: string;
  let app: App;
  let addr: Addresses;
  let token: string;
  const out: string[] = [];
  const print = (s: string) => void out.push(s);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'portcullis-explain-'));
    writeFileSync(join(dir, 'config.yaml'), CONFIG);
    app = createApp({ configPath: join(dir, 'config.yaml'), defaultMetrics: false, logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
    addr = await app.start();
    const res = await fetch(`http://${addr.admin}/dev/token`, { method: 'POST', body: JSON.stringify({ sub: 'alice', roles: ['sandbox:invoke'] }) });
    token = ((await res.json()) as { access_token: string }).access_token;
  });
  afterAll(async () => {
    await app?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('explains a deny from the live configuration: the stage, the facts, no token', async () => {
    out.length = 0;
    const code = await runExplain(['--admin', `http://${addr.admin}`, '-H', `authorization: Bearer ${token}`, 'http://router.example/admin/settings'], print);
    const text = out.join('');
    expect(code).toBe(1);
    expect(text).toContain('decision: DENY 403 missing_role');
    expect(text).toContain('denied by: roles');
    expect(text).toContain('route:    admin (by table)');
    expect(text).toMatch(/header:authorization\s+valid\s+\(issuer=dev kid=\S+ alg=ES256\)/);
    expect(text).toContain('caller:   dev/alice');
    expect(text).not.toContain(token);
  });

  it('explains an allow given as one pasted curl command, with headers set and removed', async () => {
    out.length = 0;
    const code = await runExplain(
      ['--admin', `http://${addr.admin}`, `curl -s -X POST -H 'authorization: Bearer ${token}' -H 'x-user-sub: mallory' http://router.example/v1/sandboxes/s7/invoke`],
      print,
    );
    const text = out.join('');
    expect(code).toBe(0);
    expect(text).toContain('decision: ALLOW (200)');
    expect(text).toContain('params id=s7');
    expect(text).toContain('x-user-sandbox: s7');
    expect(text).toContain('headers removed: x-user-sub');
  });

  it('a peer-restricted route: --peer decides', async () => {
    out.length = 0;
    expect(await runExplain(['--admin', `http://${addr.admin}`, 'http://h/internal/x'], print)).toBe(1);
    expect(out.join('')).toContain('peer_missing');
    out.length = 0;
    expect(await runExplain(['--admin', `http://${addr.admin}`, '--peer', 'spiffe://td/ns/agentcube-system/sa/router', 'http://h/internal/x'], print)).toBe(0);
  });

  it('--json prints the full result; --config evaluates a file in-process', async () => {
    out.length = 0;
    expect(await runExplain(['--config', join(dir, 'config.yaml'), '--json', 'http://h/admin/x'], print)).toBe(1);
    const r = JSON.parse(out.join('')) as { decision: string; reason: string; deniedBy: string; trace: { route: { name: string } } };
    expect(r).toMatchObject({ decision: 'deny', reason: 'missing_credentials', deniedBy: 'credentials' });
    expect(r.trace.route.name).toBe('admin');
  });

  it('says what is wrong with a request it cannot explain, and when no portcullis answers', async () => {
    out.length = 0;
    expect(await runExplain(['--admin', `http://${addr.admin}`, '-H', 'broken', 'http://h/'], print)).toBe(2);
    expect(out.join('')).toContain('is not "Name: value"');
    out.length = 0;
    expect(await runExplain(['--admin', 'http://127.0.0.1:1', 'http://h/'], print)).toBe(2);
    expect(out.join('')).toContain('is portcullis running');
  });

  it('does not count as traffic', async () => {
    const metrics = await (await fetch(`http://${addr.admin}/metrics`)).text();
    expect(metrics).not.toMatch(/^portcullis_decisions_total\{/m);
    const recent = (await (await fetch(`http://${addr.admin}/debug/decisions`)).json()) as unknown[];
    expect(recent).toEqual([]);
  });
});
