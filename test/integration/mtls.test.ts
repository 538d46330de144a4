import { writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { credentials, status as grpcStatus, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAuthorizationClient } from '../../src/adapters/envoy/protos.js';
import { createApp, type Addresses, type App } from '../../src/app.js';
import { checkRequest, readCheckResponse, type CheckOutcome, type RequestSpec } from '../helpers/grpc-client.js';
import { startJwksServer, type JwksServer } from '../helpers/jwks-server.js';
import {
  createPki,
  INTRUDER_ID,
  ROUTER_ID,
  SERVER_ID,
  tlsPaths,
  writeTlsFilesAtomic,
  type KeyPair,
  type TestCa,
  type TestPki,
  type TlsPaths,
} from '../helpers/pki.js';
import { freePort } from '../helpers/ports.js';
import { issuerEntry, LogSink, LOOPBACK_LISTEN, makeTempDir, pollUntil, writeConfig } from './harness.js';

/**
 * portcullis's own listeners over mTLS (Envoy → portcullis): client
 * certificates required and checked against a SPIFFE allowlist, on both the
 * gRPC and the HTTP ext_authz ports; the serving certificate files rotated on
 * disk while checks run, with no failed check.
 */

type AuthorizationCtor = ReturnType<typeof loadAuthorizationClient>;
let Authorization: AuthorizationCtor;

interface Identity {
  cert: string;
  key: string;
}

interface TlsAuthzClient {
  check(spec: RequestSpec): Promise<CheckOutcome>;
  close(): void;
}

/** A gRPC ext_authz client over TLS. `fresh` gives it its own subchannel pool, so it opens its own connection. */
function grpcClient(address: string, caPem: string, identity: Identity | undefined, opts: { fresh?: boolean } = {}): TlsAuthzClient {
  const creds: ChannelCredentials = identity
    ? credentials.createSsl(Buffer.from(caPem), Buffer.from(identity.key), Buffer.from(identity.cert))
    : credentials.createSsl(Buffer.from(caPem));
  const client = new Authorization(address, creds, opts.fresh ? { 'grpc.use_local_subchannel_pool': 1 } : {});
  return {
    check(spec) {
      return new Promise((resolve, reject) => {
        client.Check(checkRequest(spec), { deadline: Date.now() + 10_000 }, (err, res) => {
          if (err) reject(err);
          else if (!res) reject(new Error('no response'));
          else resolve(readCheckResponse(res));
        });
      });
    },
    close: () => client.close(),
  };
}

interface HttpsReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
}

/** A check on the HTTP ext_authz port over TLS, on a new connection each time. */
function httpsCheck(address: string, caPem: string, identity: Identity | undefined, spec: { path: string; headers?: Record<string, string> }): Promise<HttpsReply> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: address.slice(0, i),
        port: Number(address.slice(i + 1)),
        method: 'GET',
        path: spec.path,
        headers: { host: 'wlm.example', 'content-length': '0', ...spec.headers },
        // The Host header names the checked request's authority; TLS verifies portcullis's own name.
        servername: 'localhost',
        ca: caPem,
        cert: identity?.cert,
        key: identity?.key,
        agent: false,
        timeout: 10_000,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('HTTPS check timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** Opens a new TLS connection and returns the serial of the certificate the server presents. */
function servedSerial(address: string, caPem: string, identity: Identity, alpn: string[]): Promise<string> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      { host: address.slice(0, i), port: Number(address.slice(i + 1)), ca: caPem, cert: identity.cert, key: identity.key, ALPNProtocols: alpn, servername: 'localhost' },
      () => {
        const serial = socket.getPeerCertificate().serialNumber;
        socket.destroy();
        resolve(serial);
      },
    );
    socket.setTimeout(10_000, () => socket.destroy(new Error('TLS connect timed out')));
    socket.on('error', reject);
  });
}

const PUBLIC: RequestSpec = { path: '/public' };

describe('mTLS on the ext_authz listeners', () => {
  let pki: TestPki;
  let ca: TestCa;
  let otherCa: TestCa;
  let serverA: KeyPair;
  let serverB: KeyPair;
  let router: KeyPair;
  let intruder: KeyPair;
  let strangerRouter: KeyPair;
  let idp: JwksServer;
  let tmp: { dir: string; remove(): void };
  let paths: TlsPaths;
  let logs: LogSink;
  let app: App;
  let addr: Addresses;
  let http: string;

  beforeAll(async () => {
    Authorization = loadAuthorizationClient();
    pki = createPki();
    ca = pki.createCa('agentcube-ca');
    otherCa = pki.createCa('stranger-ca');
    serverA = ca.server(SERVER_ID);
    serverB = ca.server(SERVER_ID);
    router = ca.client(ROUTER_ID);
    intruder = ca.client(INTRUDER_ID);
    strangerRouter = otherCa.client(ROUTER_ID);
    idp = await startJwksServer();
    tmp = makeTempDir('portcullis-mtls-');
    paths = tlsPaths(tmp.dir);
    writeTlsFilesAtomic(paths, { cert: serverA.cert, key: serverA.key, ca: ca.cert });
    const configPath = join(tmp.dir, 'portcullis.yaml');
    writeConfig(configPath, {
      // The files and the allowlist come from the --mtls-* flags (overrides below); the file only sets the poll period.
      listen: { ...LOOPBACK_LISTEN, tls: { reloadSeconds: 0.1 } },
      server: { watchConfig: false, shutdownGraceSeconds: 2 },
      issuers: [issuerEntry('tenant-a', idp)],
      routes: [
        { name: 'public', match: { path: '/public' }, allow: 'anonymous' },
        { name: 'private', match: { path: '/private' } },
      ],
    });
    logs = new LogSink();
    app = createApp({
      configPath,
      logDestination: logs,
      defaultMetrics: false,
      overrides: { mtlsCertFile: paths.certFile, mtlsKeyFile: paths.keyFile, mtlsCaFile: paths.caFile, mtlsAllowedClients: [ROUTER_ID] },
    });
    addr = await app.start();
    http = addr.http ?? '';
    await pollUntil('issuer keys', () => app.readiness().ready || undefined);
  });

  afterAll(async () => {
    await app?.stop();
    await idp?.close();
    tmp?.remove();
    pki?.remove();
  });

  describe('gRPC port', () => {
    it('a client with an allowed certificate gets normal decisions', async () => {
      const c = grpcClient(addr.grpc, ca.cert, router);
      try {
        expect((await c.check(PUBLIC)).decision).toBe('allow');
        const noToken = await c.check({ path: '/private' });
        expect({ decision: noToken.decision, status: noToken.status, reason: noToken.reason }).toEqual({ decision: 'deny', status: 401, reason: 'missing_credentials' });
        const token = await idp.sign({ sub: 'alice' });
        const ok = await c.check({ path: '/private', headers: { authorization: `Bearer ${token}` } });
        expect(ok.decision).toBe('allow');
        expect(ok.headers['x-portcullis-sub']).toBe('alice');
      } finally {
        c.close();
      }
    });

    it('a client whose certificate is not on the allowlist gets a deny with reason peer_not_allowed', async () => {
      const c = grpcClient(addr.grpc, ca.cert, intruder);
      try {
        const r = await c.check(PUBLIC);
        expect({ decision: r.decision, status: r.status, reason: r.reason }).toEqual({ decision: 'deny', status: 403, reason: 'peer_not_allowed' });
      } finally {
        c.close();
      }
    });

    it.each([
      ['no client certificate', undefined],
      ['a certificate from another CA (with an allowed SPIFFE ID)', 'stranger'],
    ] as const)('%s fails the TLS handshake (gRPC UNAVAILABLE)', async (_what, which) => {
      const c = grpcClient(addr.grpc, ca.cert, which === 'stranger' ? strangerRouter : undefined, { fresh: true });
      try {
        const err = await c.check(PUBLIC).then(
          () => undefined,
          (e: unknown) => e as ServiceError,
        );
        expect(err?.code).toBe(grpcStatus.UNAVAILABLE);
      } finally {
        c.close();
      }
    });
  });

  describe('HTTP port', () => {
    it('a client with an allowed certificate gets normal decisions', async () => {
      expect((await httpsCheck(http, ca.cert, router, { path: '/public' })).status).toBe(200);
      const denied = await httpsCheck(http, ca.cert, router, { path: '/private' });
      expect(denied.status).toBe(401);
      expect(denied.headers['x-portcullis-reason']).toBe('missing_credentials');
      const token = await idp.sign({ sub: 'alice' });
      const ok = await httpsCheck(http, ca.cert, router, { path: '/private', headers: { authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      expect(ok.headers['x-portcullis-sub']).toBe('alice');
    });

    it('a client whose certificate is not on the allowlist gets 403 peer_not_allowed', async () => {
      const r = await httpsCheck(http, ca.cert, intruder, { path: '/public' });
      expect(r.status).toBe(403);
      expect(r.headers['x-portcullis-reason']).toBe('peer_not_allowed');
    });

    it.each([
      ['no client certificate', undefined],
      ['a certificate from another CA', 'stranger'],
    ] as const)('%s fails the TLS handshake', async (_what, which) => {
      const err = await httpsCheck(http, ca.cert, which === 'stranger' ? strangerRouter : undefined, { path: '/public' }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(err).toBeInstanceOf(Error);
    });

    it('a plain-HTTP request to the TLS port gets no decision', async () => {
      const outcome = await fetch(`http://${http}/public`, { signal: AbortSignal.timeout(10_000) }).then(
        (r) => r.status,
        () => 'refused',
      );
      expect(outcome).not.toBe(200);
    });
  });

  it('the serving certificate is the one from the files (its SPIFFE ID, its serial) on both ports', async () => {
    expect(await servedSerial(addr.grpc, ca.cert, router, ['h2'])).toBe(serverA.serial);
    expect(await servedSerial(http, ca.cert, router, ['http/1.1'])).toBe(serverA.serial);
  });

  it('rotating the files on disk during traffic: new connections get the new certificate, no check fails; a broken key file is ignored', async () => {
    const existing = grpcClient(addr.grpc, ca.cert, router);
    const failures: string[] = [];
    let checks = 0;
    let freshChannels = 0;
    let httpChecks = 0;
    let running = true;
    const MAX_FRESH = 150;

    const oneCheck = async (c: TlsAuthzClient, label: string): Promise<void> => {
      try {
        const r = await c.check(PUBLIC);
        if (r.decision !== 'allow') failures.push(`${label}: ${r.decision} ${r.reason}`);
      } catch (err) {
        failures.push(`${label}: ${(err as Error).message}`);
      }
      checks++;
    };

    const loop = (async () => {
      while (running) {
        await oneCheck(existing, 'existing channel');
        if (freshChannels < MAX_FRESH) {
          freshChannels++;
          const fresh = grpcClient(addr.grpc, ca.cert, router, { fresh: true });
          await oneCheck(fresh, `fresh channel #${freshChannels}`);
          fresh.close();
          try {
            const r = await httpsCheck(http, ca.cert, router, { path: '/public' });
            if (r.status !== 200) failures.push(`https #${freshChannels}: ${r.status}`);
          } catch (err) {
            failures.push(`https #${freshChannels}: ${(err as Error).message}`);
          }
          httpChecks++;
        }
      }
    })();

    try {
      await pollUntil('traffic to start', () => checks >= 5 || undefined);
      writeTlsFilesAtomic(paths, { cert: serverB.cert, key: serverB.key, ca: ca.cert });
      await pollUntil('a new gRPC connection to see the new certificate', async () => (await servedSerial(addr.grpc, ca.cert, router, ['h2'])) === serverB.serial || undefined);
      await pollUntil('a new HTTPS connection to see the new certificate', async () => (await servedSerial(http, ca.cert, router, ['http/1.1'])) === serverB.serial || undefined);
      expect(logs.find((l) => l.msg === 'TLS certificate reloaded')).toMatchObject({ uris: [SERVER_ID] });
      // Keep the traffic going a little after the swap, then stop it.
      const after = checks;
      await pollUntil('checks after the rotation', () => checks >= after + 5 || undefined);
    } finally {
      running = false;
      await loop;
    }
    expect(failures).toEqual([]);
    expect(checks).toBeGreaterThanOrEqual(10);
    expect(httpChecks).toBeGreaterThan(0);

    // A broken key file: the old (rotated) certificate keeps serving, and the log says why.
    const mark = logs.lines.length;
    writeFileSync(paths.keyFile, '-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n');
    const line = await pollUntil('a log line about unusable TLS files', () =>
      logs.lines.slice(mark).find((l) => l.msg === 'new TLS files are not usable; the previous certificate keeps serving'),
    );
    expect(String(line.error)).toContain(paths.keyFile);
    expect(await servedSerial(addr.grpc, ca.cert, router, ['h2'])).toBe(serverB.serial);
    expect(await servedSerial(http, ca.cert, router, ['http/1.1'])).toBe(serverB.serial);
    const fresh = grpcClient(addr.grpc, ca.cert, router, { fresh: true });
    try {
      expect((await fresh.check(PUBLIC)).decision).toBe('allow');
    } finally {
      fresh.close();
    }
    expect((await httpsCheck(http, ca.cert, router, { path: '/public' })).status).toBe(200);
    expect((await existing.check(PUBLIC)).decision).toBe('allow');
    existing.close();

    // Fixed files are picked up again.
    writeTlsFilesAtomic(paths, { cert: serverA.cert, key: serverA.key, ca: ca.cert });
    await pollUntil('the repaired files to be served', async () => (await servedSerial(addr.grpc, ca.cert, router, ['h2'])) === serverA.serial || undefined);
  });

  it('the client CA file is re-read too: a CA added to the bundle is trusted on new connections, and distrusted once removed', async () => {
    const strangerCheck = async (): Promise<'allow' | 'refused'> => {
      const c = grpcClient(addr.grpc, ca.cert, strangerRouter, { fresh: true });
      try {
        return (await c.check(PUBLIC)).decision === 'allow' ? 'allow' : 'refused';
      } catch {
        return 'refused';
      } finally {
        c.close();
      }
    };
    const strangerHttps = (): Promise<number> =>
      httpsCheck(http, ca.cert, strangerRouter, { path: '/public' }).then(
        (r) => r.status,
        () => 0,
      );
    expect(await strangerCheck()).toBe('refused');
    writeTlsFilesAtomic(paths, { cert: serverA.cert, key: serverA.key, ca: `${ca.cert}${otherCa.cert}` });
    await pollUntil('gRPC to trust the added CA', async () => (await strangerCheck()) === 'allow' || undefined);
    await pollUntil('HTTPS to trust the added CA', async () => (await strangerHttps()) === 200 || undefined);
    // The original CA's clients are still fine.
    expect((await httpsCheck(http, ca.cert, router, { path: '/public' })).status).toBe(200);

    writeTlsFilesAtomic(paths, { cert: serverA.cert, key: serverA.key, ca: ca.cert });
    await pollUntil('gRPC to distrust the removed CA', async () => (await strangerCheck()) === 'refused' || undefined);
    await pollUntil('HTTPS to distrust the removed CA', async () => (await strangerHttps()) === 0 || undefined);
  });
});

describe('unusable TLS files at start-up', () => {
  it('a key that does not match the certificate fails start() with a clear message and leaves nothing listening', async () => {
    const pki = createPki();
    const tmp = makeTempDir('portcullis-mtls-bad-');
    try {
      const ca = pki.createCa('agentcube-ca');
      const one = ca.server();
      const two = ca.server();
      const paths = tlsPaths(tmp.dir);
      writeTlsFilesAtomic(paths, { cert: one.cert, key: two.key, ca: ca.cert });
      const adminPort = await freePort();
      const configPath = join(tmp.dir, 'portcullis.yaml');
      writeConfig(configPath, {
        listen: { grpc: '127.0.0.1:0', http: '127.0.0.1:0', admin: `127.0.0.1:${adminPort}`, tls: { ...paths } },
        server: { watchConfig: false, shutdownGraceSeconds: 1 },
        routes: [{ name: 'public', match: { path: '/public' }, allow: 'anonymous' }],
      });
      const app = createApp({ configPath, logDestination: new LogSink(), defaultMetrics: false });
      const err = await app.start().then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      if (!err) await app.stop();
      expect(err?.message).toBe(`${paths.keyFile} does not match the certificate in ${paths.certFile}`);
      // The admin port it had opened is released again.
      const free = await new Promise<boolean>((resolve) => {
        const probe = createNetServer();
        probe.once('error', () => resolve(false));
        probe.listen(adminPort, '127.0.0.1', () => probe.close(() => resolve(true)));
      });
      expect(free, 'admin port still bound after a failed start()').toBe(true);
    } finally {
      tmp.remove();
      pki.remove();
    }
  });
});
