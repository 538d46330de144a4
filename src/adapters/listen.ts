import type { AddressInfo, Server } from 'node:net';

/**
 * Starts `server` on a configured `host:port` (`[::1]:9191`, `*:0` for every
 * interface) and resolves with the address it listens on: the configured host
 * with the real port (port 0 picks a free one). Rejects when the port cannot
 * be bound. Shared by the gRPC, HTTP ext_authz and admin listeners.
 */
export function listenOn(server: Server, address: string): Promise<string> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(address.slice(i + 1)), host === '*' ? undefined : host, () => {
      server.off('error', reject);
      resolve(`${address.slice(0, i)}:${(server.address() as AddressInfo).port}`);
    });
  });
}
