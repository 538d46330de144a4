import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { listenOn } from '../adapters/listen.js';

/**
 * The admin port (loopback by default): metrics, health, readiness, the
 * development issuer and debug endpoints. Handlers are registered by the
 * composition root; this module only routes and answers.
 */
export interface AdminReply {
  status: number;
  body: string | Buffer;
  contentType?: string;
  headers?: Record<string, string>;
}

export type AdminHandler = (req: IncomingMessage, body: Buffer) => AdminReply | Promise<AdminReply>;

export interface AdminServer {
  route(method: string, path: string, handler: AdminHandler): void;
  listen(address: string): Promise<string>;
  close(): Promise<void>;
}

const MAX_BODY = 64 * 1024;

export function json(status: number, value: unknown): AdminReply {
  return { status, body: JSON.stringify(value, null, 2), contentType: 'application/json' };
}

export function createAdminServer(): AdminServer {
  const routes = new Map<string, AdminHandler>();
  const send = (res: ServerResponse, r: AdminReply) => {
    res.writeHead(r.status, { 'content-type': r.contentType ?? 'text/plain; charset=utf-8', 'cache-control': 'no-store', ...r.headers });
    res.end(r.body);
  };
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const handler = routes.get(`${req.method} ${path}`);
    if (!handler) {
      const other = [...routes.keys()].some((k) => k.endsWith(` ${path}`));
      send(res, json(other ? 405 : 404, { error: other ? 'method_not_allowed' : 'not_found' }));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        send(res, json(413, { error: 'body_too_large' }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (res.headersSent) return;
      Promise.resolve()
        .then(() => handler(req, Buffer.concat(chunks)))
        .then(
          (r) => send(res, r),
          (err: unknown) => send(res, json(500, { error: 'internal_error', message: err instanceof Error ? err.message : 'error' })),
        );
    });
  });
  return {
    route(method, path, handler) {
      routes.set(`${method} ${path}`, handler);
    },
    listen: (address) => listenOn(server, address),
    close() {
      return new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
