import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type Addresses, type App } from '../../src/app.js';

/**
 * The debug page in a real headless browser (Debian's Chromium driven by
 * playwright-core): it loads, a denied request shows up among recent
 * decisions, and explaining it shows the stage that denied.
 */
const CONFIG = `
listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0, admin: 127.0.0.1:0 }
development: { issuer: { enabled: true } }
roles: { admin: [sandbox:manage], "sandbox:manage": [sandbox:invoke] }
routes:
  - name: sandbox-invoke
    match: { methods: [POST], path: "/v1/sandboxes/{id}/invoke" }
    require: { roles: { anyOf: [sandbox:invoke] } }
  - name: admin
    match: { path: "/admin/**" }
    require: { roles: { anyOf: [admin] } }
  - name: canary
    match: { path: "/canary/**" }
    require: { roles: { anyOf: [admin] }, shadow: [roles] }
`;

function httpCall(url: string, method: string, headers: Record<string, string>, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (res) => {
      let data = '';
      res.on('data', (c: Buffer) => (data += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: data }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('debug page in headless Chromium', () => {
  let dir: string;
  let app: App;
  let addr: Addresses;
  let browser: Browser;
  let token: string;

  beforeAll(async () => {
    const out = execFileSync('bash', ['scripts/provision/chromium.sh'], { encoding: 'utf8' });
    const bin = /CHROMIUM_BIN=(\S+)/.exec(out)?.[1];
    if (!bin) throw new Error(`chromium provisioning printed no path:\n${out}`);
    dir = mkdtempSync(join(tmpdir(), 'portcullis-debug-'));
    writeFileSync(join(dir, 'config.yaml'), CONFIG);
    app = createApp({ configPath: join(dir, 'config.yaml'), defaultMetrics: false, logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
    addr = await app.start();
    const minted = await httpCall(`http://${addr.admin}/dev/token`, 'POST', { 'content-type': 'application/json' }, JSON.stringify({ sub: 'alice', roles: ['sandbox:invoke'] }));
    token = (JSON.parse(minted.body) as { access_token: string }).access_token;
    browser = await chromium.launch({ executablePath: bin, args: ['--no-sandbox', '--disable-gpu'] });
  });

  afterAll(async () => {
    await browser?.close();
    await app?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('shows a denied request and explains which stage denied it', async () => {
    // Real traffic through the HTTP ext_authz port: one allow, one deny, one shadow would-deny.
    expect((await httpCall(`http://${addr.http}/v1/sandboxes/s1/invoke`, 'POST', { authorization: `Bearer ${token}` })).status).toBe(200);
    expect((await httpCall(`http://${addr.http}/admin/settings`, 'GET', { authorization: `Bearer ${token}` })).status).toBe(403);
    expect((await httpCall(`http://${addr.http}/canary/x`, 'GET', { authorization: `Bearer ${token}` })).status).toBe(200);

    const page = await browser.newPage();
    await page.goto(`http://${addr.admin}/debug`);
    await expect.poll(() => page.locator('#status').textContent()).toContain('dev');

    const denied = page.locator('#decisions tbody tr.deny');
    await denied.first().waitFor();
    expect(await denied.first().locator('td.reason').textContent()).toBe('missing_role');
    expect(await denied.first().textContent()).toContain('/admin/settings');
    // The shadow route's allow is marked with what it would have denied.
    expect(await page.locator('#decisions tbody').textContent()).toContain('shadow: roles:missing_role');
    // No token ever reaches the page.
    expect(await page.content()).not.toContain(token);

    // Filter to the deny only.
    await page.selectOption('#filter select[name=decision]', 'deny');
    await page.click('#filter button[type=submit]');
    await expect.poll(() => page.locator('#decisions tbody tr').count()).toBe(1);

    // Explain it: the explain button fills the form; add the credentials and run.
    await denied.first().locator('button.explain').click();
    const cmd = await page.inputValue('#curl');
    expect(cmd).toContain('/admin/settings');
    await page.fill('#curl', `curl -H 'authorization: Bearer ${token}' http://${addr.http}/admin/settings`);
    await page.click('#explain-button');
    const output = page.locator('#explain-output');
    await expect.poll(() => output.textContent()).toContain('denied by: roles');
    const text = (await output.textContent()) ?? '';
    expect(text).toContain('DENY 403 missing_role');
    expect(text).toContain('route:    admin');
    expect(text).not.toContain(token);
    await page.close();
  });

  it('explain has no side effects on traffic metrics or recent decisions', async () => {
    const before = await httpCall(`http://${addr.admin}/debug/decisions?limit=1000`, 'GET', {});
    const metricsBefore = (await httpCall(`http://${addr.admin}/metrics`, 'GET', {})).body.match(/^portcullis_decisions_total.*$/gm)?.join('\n');
    const r = await httpCall(`http://${addr.admin}/debug/explain`, 'POST', { 'content-type': 'application/json' },
      JSON.stringify({ curl: `curl -X POST -H 'authorization: Bearer ${token}' http://router/v1/sandboxes/s9/invoke` }));
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as { decision: string }).decision).toBe('allow');
    const after = await httpCall(`http://${addr.admin}/debug/decisions?limit=1000`, 'GET', {});
    const metricsAfter = (await httpCall(`http://${addr.admin}/metrics`, 'GET', {})).body.match(/^portcullis_decisions_total.*$/gm)?.join('\n');
    expect(JSON.parse(after.body)).toEqual(JSON.parse(before.body));
    expect(metricsAfter).toBe(metricsBefore);
  });
});
