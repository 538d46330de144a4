/**
 * Transport floors of a gRPC ext_authz server in Node, for docs/benchmarks.md
 * ("what limits portcullis over gRPC"): no decision at all. Each Check call is
 * read, decoded into a CheckInput with portcullis's codec, and
 * answered with one precomputed allow.
 *   node dist/bench/grpc-floor.js lean   portcullis's own transport (createGrpcServer:
 *                                        h2/connection.ts + HPACK), set-up 7
 *   node dist/bench/grpc-floor.js http2  node:http2, what portcullis used before, set-up 8
 * `npm run bench` runs both when BENCH_FLOOR=1; they ALLOW EVERYTHING and are
 * never a configuration to deploy. Prints `LISTENING <port>`.
 */
import { createServer, constants, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { createCheckRequestDecoder, encodeCheckResponse } from '../src/adapters/envoy/grpc-mapping.js';
import { createGrpcServer } from '../src/adapters/envoy/grpc-server.js';
import type { Decision } from '../src/core/types.js';

const ALLOW: Decision = { kind: 'allow', route: 'floor', headersToSet: [{ name: 'x-user-sub', value: 'floor' }], headersToRemove: [], metadata: { route: 'floor', decision: 'allow' } };
const DENY: Decision = { kind: 'deny', route: 'floor', status: 400, reason: 'malformed_request', message: 'malformed', headers: [], metadata: { route: 'floor', decision: 'deny' } };

async function lean(): Promise<void> {
  const server = createGrpcServer({ handle: () => ALLOW, onMalformed: () => DENY });
  server.setServing(true);
  const address = await server.listen('127.0.0.1:0');
  process.stdout.write(`LISTENING ${address.slice(address.lastIndexOf(':') + 1)}\n`);
}

function http2(): void {
  const body = encodeCheckResponse(ALLOW);
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  const requests = createCheckRequestDecoder();
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
        const input = requests.decode(msg.subarray(5));
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
}

if (process.argv[2] === 'http2') http2();
else await lean();
process.on('SIGTERM', () => process.exit(0));
