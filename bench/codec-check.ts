/**
 * Equivalence check of the hot-path gRPC codec (src/adapters/envoy/grpc-mapping.ts)
 * against protobufjs (what @grpc/proto-loader uses), run first by
 * `npm run bench:micro` and on its own with `node dist/bench/codec-check.js`:
 *
 * - encodeCheckResponse(d) must be byte-identical to protobufjs's encoding of
 *   toCheckResponse(d), for allows and denies of every shape;
 * - toCheckInput(decodeCheckRequest(bytes)) must equal
 *   toCheckInput(protobufjs decode of bytes), for requests with and without
 *   header_map, raw values, context extensions, peer principals, unknown fields;
 * - truncated messages must be refused (throw).
 */
import { randomBytes } from 'node:crypto';
import { decodeCheckRequest, encodeCheckResponse, toCheckInput, toCheckResponse } from '../src/adapters/envoy/grpc-mapping.js';
import { loadAuthorizationService } from '../src/adapters/envoy/protos.js';
import type { CheckInput, Decision } from '../src/core/types.js';
import type { CheckRequest__Output } from '../src/generated/envoy/service/auth/v3/CheckRequest.js';

function rnd(n: number): number {
  return Math.floor(Math.random() * n);
}

const WORDS = ['alice', 'bob', 'sandbox:invoke', 'x-user-sub', 'émile', 'ключ', '日本', 'a"b\\c', '', 'x'.repeat(300), '🙂'];
const word = (): string => WORDS[rnd(WORDS.length)] as string;

function randomDecision(): Decision {
  const md: Record<string, string | string[]> = { route: word() };
  if (rnd(2)) md.sub = word();
  if (rnd(2)) md.roles = Array.from({ length: rnd(4) }, word);
  if (rnd(3) === 0) md.would_deny = [word()];
  const headers = Array.from({ length: rnd(6) }, () => ({ name: `x-${rnd(1000)}`, value: word() }));
  if (rnd(2)) {
    return { kind: 'allow', route: word(), headersToSet: headers, headersToRemove: Array.from({ length: rnd(3) }, () => `x-user-${rnd(9)}`), metadata: md };
  }
  const status = [400, 401, 403, 503][rnd(4)] as number;
  return { kind: 'deny', status, reason: 'token_expired', message: word(), headers, metadata: md };
}

function randomRequest(): Record<string, unknown> {
  const headers: Record<string, string> = {};
  for (let i = rnd(8); i > 0; i--) headers[rnd(2) ? `X-H${rnd(5)}` : `x-h${rnd(5)}`] = word();
  if (rnd(2)) headers.authorization = `Bearer ${randomBytes(20).toString('base64url')}`;
  const http: Record<string, unknown> = {
    id: String(rnd(1e9)),
    method: ['GET', 'POST', ''][rnd(3)],
    headers,
    path: ['/v1/sandboxes/a/invoke', '/x?y=1&z=2', '/日本?q', ''][rnd(4)],
    host: ['router.bench', '', 'h:8080'][rnd(3)],
    scheme: 'http',
    query: ['', 'a=b'][rnd(2)],
    fragment: '',
    size: String(rnd(100)),
    protocol: 'HTTP/1.1',
    body: rnd(4) === 0 ? 'body' : '',
  };
  if (rnd(2)) {
    http.header_map = {
      headers: Array.from({ length: rnd(6) }, () => {
        const h: Record<string, unknown> = { key: rnd(2) ? 'Cookie' : 'x-dup' };
        if (rnd(2)) h.raw_value = Buffer.from(word());
        else h.value = word();
        return h;
      }),
    };
  }
  const attributes: Record<string, unknown> = {
    request: rnd(8) === 0 ? undefined : { time: { seconds: '1700000000', nanos: 5 }, http: rnd(8) === 0 ? undefined : http },
    destination: { address: { socket_address: { address: '127.0.0.1', port_value: 10000 } }, principal: 'spiffe://d' },
    metadata_context: { filter_metadata: { f: { fields: { a: { stringValue: 'b' } } } } },
    tls_session: { sni: 'x' },
  };
  if (rnd(2)) attributes.source = { address: { socket_address: { address: '10.0.0.1', port_value: 1 } }, principal: rnd(2) ? 'spiffe://cluster.local/ns/a/sa/b' : '', certificate: 'pem' };
  if (rnd(2)) attributes.context_extensions = { route: word(), other: word() };
  return rnd(10) === 0 ? {} : { attributes };
}

function canonical(i: CheckInput | undefined): string {
  if (!i) return 'undefined';
  return JSON.stringify({ ...i, headers: [...i.headers], headerCounts: i.headerCounts ? [...i.headerCounts] : undefined, contextExtensions: [...i.contextExtensions] });
}

export function runCodecCheck(rounds = 5_000): { responses: number; requests: number } {
  const check = loadAuthorizationService().Check;
  if (!check) throw new Error('no Check method');
  for (let n = 0; n < rounds; n++) {
    const d = randomDecision();
    const ours = encodeCheckResponse(d);
    const theirs = check.responseSerialize(toCheckResponse(d));
    if (!ours.equals(theirs)) throw new Error(`encodeCheckResponse differs from protobufjs for ${JSON.stringify(d)}:\n${ours.toString('hex')}\n${theirs.toString('hex')}`);
  }
  for (let n = 0; n < rounds; n++) {
    const req = randomRequest();
    const wire = check.requestSerialize(req);
    const a = canonical(toCheckInput(decodeCheckRequest(wire)));
    const b = canonical(toCheckInput(check.requestDeserialize(wire) as CheckRequest__Output));
    if (a !== b) throw new Error(`decodeCheckRequest differs from protobufjs for ${JSON.stringify(req)}:\n${a}\n${b}`);
    if (wire.length > 2) {
      let threw = false;
      try {
        decodeCheckRequest(wire.subarray(0, wire.length - 1 - rnd(Math.min(wire.length - 1, 5))));
      } catch {
        threw = true;
      }
      // A cut can land on a field boundary of the outermost message only when that message ends there;
      // every CheckRequest here is one length-delimited field, so any cut must be refused.
      if (!threw) throw new Error(`a truncated CheckRequest was accepted: ${wire.toString('hex')}`);
    }
  }
  return { responses: rounds, requests: rounds };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = runCodecCheck(Number(process.argv[2] ?? '20000'));
  process.stdout.write(`codec check: ${r.responses} responses byte-identical, ${r.requests} requests decode to the same CheckInput\n`);
}
