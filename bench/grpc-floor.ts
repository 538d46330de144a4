/**
 * The transport floor of a gRPC ext_authz server in Node, for docs/benchmarks.md
 * ("what limits portcullis over gRPC"): node:http2 only — no @grpc/grpc-js, no
 * decision. Each Check call is read, decoded with portcullis's fast codec,
 * mapped with toCheckInput(), and answered with one precomputed allow.
 * `npm run bench` runs it as set-up "3f" when BENCH_FLOOR=1; it ALLOWS
 * EVERYTHING and is never a configuration to deploy.
 * Usage: node dist/bench/grpc-floor.js  → prints `LISTENING <port>`.
 */
import { createServer, constants, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { decodeCheckRequest, encodeCheckResponse, toCheckInput } from '../src/adapters/envoy/grpc-mapping.js';

const body = encodeCheckResponse({ kind: 'allow', route: 'floor', headersToSet: [{ name: 'x-user-sub', value: 'floor' }], headersToRemove: [], metadata: { route: 'floor', decision: 'allow' } });
const frame = Buffer.alloc(5 + body.length);
frame.writeUInt32BE(body.length, 1);
body.copy(frame, 5);

const server = createServer();
server.on('stream', (stream: ServerHttp2Stream) => {
  // A stream Envoy resets (or a session that goes away) must not take the process down.
  stream.on('error', () => undefined);
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  stream.on('end', () => {
    if (stream.destroyed || stream.closed) return;
    try {
      const msg = Buffer.concat(chunks);
      const input = toCheckInput(decodeCheckRequest(msg.subarray(5)));
      if (!input) {
        stream.respond({ [constants.HTTP2_HEADER_STATUS]: 200, 'content-type': 'application/grpc', 'grpc-status': '13' }, { endStream: true });
        return;
      }
      stream.respond({ [constants.HTTP2_HEADER_STATUS]: 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(frame);
    } catch (err) {
      process.stderr.write(`grpc-floor: ${(err as Error).message}\n`);
      stream.destroy();
    }
  });
});
server.on('sessionError', () => undefined);
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => process.exit(0));
