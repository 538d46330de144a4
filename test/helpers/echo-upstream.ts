import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the echo upstream saw for one request (and answers as JSON). */
export interface EchoedRequest {
  method: string;
  /** Path with query string, as received. */
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface EchoUpstream {
  readonly host: string;
  readonly port: number;
  readonly url: string;
  /** Every request received so far, oldest first. */
  readonly requests: readonly EchoedRequest[];
  /** Number of requests received so far. */
  count(): number;
  /** The last request received, if any. */
  last(): EchoedRequest | undefined;
  /** Requests whose path (with query) contains `needle`. */
  find(needle: string): EchoedRequest[];
  reset(): void;
  close(): Promise<void>;
}

export interface EchoUpstreamOptions {
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
}

/**
 * A plain HTTP/1.1 server standing in for the protected application: it
 * answers every request with 200 and a JSON body `{method, path, headers, body}`
 * describing what it received, and records the request.
 */
export async function startEchoUpstream(options: EchoUpstreamOptions = {}): Promise<EchoUpstream> {
  const host = options.host ?? '127.0.0.1';
  const requests: EchoedRequest[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen: EchoedRequest = {
        method: req.method ?? '',
        path: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      };
      requests.push(seen);
      const payload = JSON.stringify(seen);
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
        'x-echo-upstream': 'true',
      });
      res.end(payload);
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    host,
    port,
    url: `http://${host}:${port}`,
    requests,
    count: () => requests.length,
    last: () => requests[requests.length - 1],
    find: (needle) => requests.filter((r) => r.path.includes(needle)),
    reset: () => {
      requests.length = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
