import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createHttpAuthzServer, type HttpAuthzServer } from '../../../../src/adapters/envoy/http-server.js';
import type { Allow, CheckInput, Decision, Deny } from '../../../../src/core/types.js';

/**
 * HTTP ext_authz mode on 127.0.0.1:0. Requests are written as raw bytes so
 * repeated headers and exact header bytes can be checked.
 */

interface RawResponse {
  status: number;
  /** Header lines in order, names lower-cased, values as latin1 (the raw bytes). */
  headers: [string, string][];
  body: string;
}

let servers: HttpAuthzServer[] = [];

afterEach(async () => {
  await Promise.all(servers.map((s) => s.shutdown(0)));
  servers = [];
});

async function start(
  handle: (input: CheckInput) => Decision | Promise<Decision>,
  opts: { pathPrefix?: string; onError?: () => Decision } = {},
): Promise<number> {
  const server = createHttpAuthzServer({
    handle,
    onError: opts.onError ?? (() => internalError),
    pathPrefix: opts.pathPrefix ?? '',
  });
  servers.push(server);
  const bound = await server.listen('127.0.0.1:0');
  return Number(bound.slice(bound.lastIndexOf(':') + 1));
}

function parseResponse(raw: Buffer): RawResponse {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const [statusLine = '', ...lines] = text.slice(0, end).split('\r\n');
  const headers = lines.map((l): [string, string] => {
    const i = l.indexOf(':');
    return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
  });
  let body = text.slice(end + 4);
  if (headers.some(([n, v]) => n === 'transfer-encoding' && v.toLowerCase() === 'chunked')) body = dechunk(body);
  return { status: Number(statusLine.split(' ')[1]), headers, body: Buffer.from(body, 'latin1').toString('utf8') };
}

function dechunk(text: string): string {
  let out = '';
  let at = 0;
  for (;;) {
    const eol = text.indexOf('\r\n', at);
    const size = parseInt(text.slice(at, eol), 16);
    if (!(size > 0)) return out;
    out += text.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

/**
 * Sends one raw HTTP/1.1 request (Connection: close) and reads the whole reply.
 * Resolves with `crashed` if the server throws out of its request handler
 * (an uncaught exception would take the whole portcullis process down).
 */
function send(port: number, head: string): Promise<RawResponse | { crashed: Error }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const onCrash = (err: Error): void => {
      socket.destroy();
      resolve({ crashed: err });
    };
    process.once('uncaughtException', onCrash);
    const socket = connect(port, '127.0.0.1', () => {
      socket.end(`${head}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      process.off('uncaughtException', onCrash);
      if (chunks.length > 0) resolve(parseResponse(Buffer.concat(chunks)));
    });
  });
}

async function request(port: number, head: string): Promise<RawResponse> {
  const r = await send(port, head);
  if ('crashed' in r) throw new Error(`the server threw out of its request handler: ${r.crashed.message}`);
  return r;
}

function values(r: RawResponse, name: string): string[] {
  return r.headers.filter(([n]) => n === name).map(([, v]) => v);
}

const internalError: Deny = {
  kind: 'deny',
  status: 500,
  reason: 'internal_error',
  message: 'internal error',
  headers: [],
  metadata: { route: '(none)', decision: 'deny', reason: 'internal_error' },
};

function allowWith(headersToSet: Allow['headersToSet'], headersToRemove: string[] = []): Allow {
  return { kind: 'allow', route: 'r', headersToSet, headersToRemove, metadata: { route: 'r', decision: 'allow' } };
}

describe('http ext_authz: request mapping', () => {
  it('maps method, host, path, query and headers (lower-case names, counts)', async () => {
    const seen: CheckInput[] = [];
    const port = await start((input) => {
      seen.push(input);
      return allowWith([]);
    });
    await request(port, 'POST /v1/sandboxes/sb-1/invoke?a=1&b=2 HTTP/1.1\r\nHost: router.example\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\nX-Custom: v');
    const input = seen[0];
    expect(input?.method).toBe('POST');
    expect(input?.host).toBe('router.example');
    expect(input?.path).toBe('/v1/sandboxes/sb-1/invoke');
    expect(input?.query).toBe('a=1&b=2');
    expect(input?.headers.get('x-custom')).toBe('v');
    expect(input?.headers.get('authorization')).toBe('Bearer a,Bearer b');
    expect(input?.headerCounts?.get('authorization')).toBe(2);
    expect(input?.headerCounts?.get('x-custom')).toBe(1);
    expect(input?.contextExtensions.size).toBe(0);
  });

  it('strips the configured path prefix', async () => {
    const seen: CheckInput[] = [];
    const port = await start(
      (input) => {
        seen.push(input);
        return allowWith([]);
      },
      { pathPrefix: '/authz' },
    );
    await request(port, 'GET /authz/v1/x?q=1 HTTP/1.1\r\nHost: h');
    await request(port, 'GET /authz HTTP/1.1\r\nHost: h');
    expect(seen.map((i) => [i.path, i.query])).toEqual([
      ['/v1/x', 'q=1'],
      ['/', ''],
    ]);
  });

  it('joins repeated Cookie header lines as one cookie string ("; ")', async () => {
    const seen: CheckInput[] = [];
    const port = await start((input) => {
      seen.push(input);
      return allowWith([]);
    });
    await request(port, 'GET / HTTP/1.1\r\nHost: h\r\nCookie: theme=dark\r\nCookie: access_token=abc');
    // RFC 9113 §8.2.3 / node's own req.headers.cookie: cookie lines join with "; ", not ",".
    expect(seen[0]?.headers.get('cookie')).toBe('theme=dark; access_token=abc');
  });
});

describe('http ext_authz: responses', () => {
  it('answers an allow with 200, the headers to set and x-envoy-auth-headers-to-remove', async () => {
    const port = await start(() =>
      allowWith(
        [
          { name: 'x-user-sub', value: 'alice' },
          { name: 'x-portcullis-tenant', value: 'acme' },
        ],
        ['x-portcullis-evil', 'x-user-role'],
      ),
    );
    const r = await request(port, 'GET / HTTP/1.1\r\nHost: h');
    expect(r.status).toBe(200);
    expect(values(r, 'x-user-sub')).toEqual(['alice']);
    expect(values(r, 'x-portcullis-tenant')).toEqual(['acme']);
    expect(values(r, 'x-envoy-auth-headers-to-remove')).toEqual(['x-portcullis-evil,x-user-role']);
  });

  it('sends no x-envoy-auth-headers-to-remove when nothing is removed', async () => {
    const port = await start(() => allowWith([]));
    const r = await request(port, 'GET / HTTP/1.1\r\nHost: h');
    expect(r.status).toBe(200);
    expect(values(r, 'x-envoy-auth-headers-to-remove')).toEqual([]);
  });

  it('answers a deny with its status, challenge, reason header and JSON body', async () => {
    const d: Deny = {
      kind: 'deny',
      route: 'r',
      status: 401,
      reason: 'token_expired',
      message: 'token has expired',
      headers: [{ name: 'www-authenticate', value: 'Bearer realm="portcullis", error="invalid_token"' }],
      metadata: {},
    };
    const port = await start(() => d);
    const r = await request(port, 'GET / HTTP/1.1\r\nHost: h');
    expect(r.status).toBe(401);
    expect(values(r, 'www-authenticate')).toEqual(['Bearer realm="portcullis", error="invalid_token"']);
    expect(values(r, 'x-portcullis-reason')).toEqual(['token_expired']);
    expect(values(r, 'content-type')).toEqual(['application/json']);
    expect(JSON.parse(r.body)).toEqual({ error: 'token_expired', message: 'token has expired' });
  });

  it('answers a promised decision', async () => {
    const port = await start(() => Promise.resolve(allowWith([{ name: 'x-user-sub', value: 'bob' }])));
    const r = await request(port, 'GET / HTTP/1.1\r\nHost: h');
    expect(r.status).toBe(200);
    expect(values(r, 'x-user-sub')).toEqual(['bob']);
  });

  it('answers the onError decision when the handler throws or rejects', async () => {
    const throwing = await start(() => {
      throw new Error('boom');
    });
    const rejecting = await start(() => Promise.reject(new Error('boom')));
    for (const port of [throwing, rejecting]) {
      const r = await request(port, 'GET / HTTP/1.1\r\nHost: h');
      expect(r.status).toBe(500);
      expect(values(r, 'x-portcullis-reason')).toEqual(['internal_error']);
    }
  });

  it('still answers (and stays up) when a header value holds characters outside Latin-1', async () => {
    // A Keycloak user may put any Unicode in their own name; {claims.name} renders it as is.
    const port = await start(() => allowWith([{ name: 'x-user-name', value: '山田 太郎' }]));
    const r = await send(port, 'GET / HTTP/1.1\r\nHost: h');
    if ('crashed' in r) throw new Error(`the server threw out of its request handler: ${r.crashed.message}`);
    expect([200, 500]).toContain(r.status);
    if (r.status === 200) expect(values(r, 'x-user-name')).toEqual([Buffer.from('山田 太郎', 'utf8').toString('latin1')]);
  });

  it('still answers (fail closed, process up) when a deny header value holds CR/LF', async () => {
    const d: Deny = {
      kind: 'deny',
      status: 401,
      reason: 'alg_not_allowed',
      message: 'x',
      headers: [{ name: 'www-authenticate', value: 'Bearer error_description="RS256\r\nset-cookie: a=b"' }],
      metadata: {},
    };
    const port = await start(() => d);
    const r = await send(port, 'GET / HTTP/1.1\r\nHost: h');
    if ('crashed' in r) throw new Error(`the server threw out of its request handler: ${r.crashed.message}`);
    expect(r.status).not.toBe(200);
    expect(values(r, 'set-cookie')).toEqual([]);
  });
});
