/**
 * The protected application of every benchmark set-up: a plain node:http
 * server (HTTP/1.1 keep-alive) answering each request with 200 and a 2-byte
 * body. Runs in its own process so its CPU shows up like a real upstream's.
 * Prints `LISTENING <port>` once bound. Usage: node dist/bench/upstream.js [port]
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const server = createServer((req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
  res.end('ok');
});
// Never close an idle keep-alive connection: set-ups sit idle for minutes between their
// turns, and a server-side close racing Envoy's reuse of the connection is a 503.
server.keepAliveTimeout = 0;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${(server.address() as AddressInfo).port}\n`);
});
const stop = (): void => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
