import { createServer, type AddressInfo } from 'node:net';

/**
 * Returns a TCP port on 127.0.0.1 that was free a moment ago. The port is
 * released before it is returned, so another process can take it in between:
 * prefer listening on port 0 and reading the real port back where the server
 * allows it; use this only when a port must be written into a config first.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const [port] = await freePorts(1, host);
  if (port === undefined) throw new Error('freePorts returned nothing');
  return port;
}

/** `count` distinct free ports (all held open together, then released). */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => listenOnZero(host)),
  );
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return ports;
}

function listenOnZero(host: string): Promise<ReturnType<typeof createServer>> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => resolve(server));
  });
}

/** Splits "host:port" (or "[v6]:port") into its parts. */
export function splitHostPort(address: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(address);
  if (!m || m[1] === undefined || m[2] === undefined) {
    throw new Error(`not a host:port address: ${address}`);
  }
  return { host: m[1], port: Number(m[2]) };
}
