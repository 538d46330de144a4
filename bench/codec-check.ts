/**
 * Equivalence check of the hot-path gRPC codec (src/adapters/envoy/grpc-mapping.ts)
 * against protobufjs (what @grpc/proto-loader uses), run first by
 * `npm run bench:micro`, by the unit suite (test/unit/adapters/envoy/grpc-codec.test.ts)
 * and on its own with `node dist/bench/codec-check.js [rounds] [seed]`:
 *
 * - encodeCheckResponse(d) must be byte-identical to protobufjs's encoding of
 *   toCheckResponse(d), for allows and denies of every shape, and the server's
 *   encoder (createCheckResponseEncoder, which reuses its size plan from call to
 *   call) must frame exactly those bytes;
 * - createCheckRequestDecoder().decode(bytes) must equal
 *   toCheckInput(protobufjs decode of bytes), for requests with and without
 *   header_map, raw values, context extensions, peer principals, unknown fields,
 *   and header names that repeat, differ in case, are long or not ASCII — through
 *   a decoder with the default name table and one with a 16-slot table whose
 *   slots keep being replaced;
 * - truncated messages must be refused (throw).
 *
 * Random but reproducible: every run draws from a seeded generator, and a
 * failure names its seed.
 */
import { createCheckRequestDecoder, createCheckResponseEncoder, encodeCheckResponse, toCheckInput, toCheckResponse } from '../src/adapters/envoy/grpc-mapping.js';
import { loadAuthorizationService } from '../src/adapters/envoy/protos.js';
import type { CheckInput, Decision } from '../src/core/types.js';
import type { CheckRequest__Output } from '../src/generated/envoy/service/auth/v3/CheckRequest.js';

type Rnd = (n: number) => number;

/** mulberry32: a small seeded generator; rnd(n) is an integer in [0, n). */
function seeded(seed: number): Rnd {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const WORDS = ['alice', 'bob', 'sandbox:invoke', 'x-user-sub', 'émile', 'ключ', '日本', 'a"b\\c', '', 'x'.repeat(300), '🙂'];
/**
 * Header names: the usual ones, mixed case, long (past the name table's 64 bytes), not ASCII, odd.
 * Not "__proto__": protobufjs decodes maps into plain objects and drops it (our decoder keeps it).
 */
const NAMES = [
  ':authority', ':method', ':path', ':scheme', 'authorization', 'content-length', 'user-agent', 'x-request-id', 'x-forwarded-proto', 'cookie',
  'X-H1', 'x-h1', 'X-Mixed-Case', 'x-mixed-case', `x-${'long'.repeat(16)}`, `x-${'long'.repeat(16)}z`, 'x-ünï', 'x-日本', '', '__proto__', '123', 'x-a', 'x-b', 'x-c',
];

function randomDecision(rnd: Rnd): Decision {
  const word = (): string => WORDS[rnd(WORDS.length)] as string;
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

function token(rnd: Rnd): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  let t = '';
  for (let i = 20 + rnd(40); i > 0; i--) t += alphabet[rnd(64)];
  return t;
}

function randomRequest(rnd: Rnd): Record<string, unknown> {
  const word = (): string => WORDS[rnd(WORDS.length)] as string;
  const name = (): string => NAMES[rnd(NAMES.length)] as string;
  // A plain object, as protobufjs takes a map: each name once, in insertion order
  // (integer-like names such as "123" first, as JavaScript orders them).
  const headers: Record<string, string> = {};
  for (let i = rnd(10); i > 0; i--) Object.defineProperty(headers, name(), { value: word(), enumerable: true, writable: true, configurable: true });
  if (rnd(2)) headers.authorization = `Bearer ${token(rnd)}`;
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
        const h: Record<string, unknown> = { key: [name(), 'Cookie', 'x-dup'][rnd(3)] };
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

/** A CheckInput as comparable text: Map contents in order, and the keys an absent field leaves out. */
function canonical(i: CheckInput | undefined): string {
  if (!i) return 'undefined';
  return JSON.stringify({ ...i, headers: [...i.headers], headerCounts: i.headerCounts ? [...i.headerCounts] : undefined, contextExtensions: [...i.contextExtensions] });
}

export function runCodecCheck(rounds = 5_000, seed = 1): { responses: number; requests: number } {
  const check = loadAuthorizationService().Check;
  if (!check) throw new Error('no Check method');
  const rnd = seeded(seed);
  const encoder = createCheckResponseEncoder();
  for (let n = 0; n < rounds; n++) {
    const d = randomDecision(rnd);
    const ours = encodeCheckResponse(d);
    const theirs = check.responseSerialize(toCheckResponse(d));
    if (!ours.equals(theirs)) throw new Error(`seed ${seed}: encodeCheckResponse differs from protobufjs for ${JSON.stringify(d)}:\n${ours.toString('hex')}\n${theirs.toString('hex')}`);
    const frame = encoder.frame(d);
    if (frame[0] !== 0 || frame.readUInt32BE(1) !== theirs.length || !frame.subarray(5).equals(theirs)) {
      throw new Error(`seed ${seed}: the server's encoder frames other bytes for ${JSON.stringify(d)}:\n${frame.toString('hex')}\n${theirs.toString('hex')}`);
    }
  }
  const decoder = createCheckRequestDecoder();
  const decoders = [decoder, createCheckRequestDecoder({ nameSlots: 16 })];
  for (let n = 0; n < rounds; n++) {
    const req = randomRequest(rnd);
    const wire = check.requestSerialize(req);
    const b = canonical(toCheckInput(check.requestDeserialize(wire) as CheckRequest__Output));
    for (const d of decoders) {
      const a = canonical(d.decode(wire));
      if (a !== b) throw new Error(`seed ${seed}: the CheckRequest decoder differs from protobufjs for ${JSON.stringify(req)}:\n${a}\n${b}`);
    }
    if (wire.length > 2) {
      let threw = false;
      try {
        decoder.decode(wire.subarray(0, wire.length - 1 - rnd(Math.min(wire.length - 1, 5))));
      } catch {
        threw = true;
      }
      // A cut can land on a field boundary of the outermost message only when that message ends there;
      // every CheckRequest here is one length-delimited field, so any cut must be refused.
      if (!threw) throw new Error(`seed ${seed}: a truncated CheckRequest was accepted: ${wire.toString('hex')}`);
    }
  }
  return { responses: rounds, requests: rounds };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = runCodecCheck(Number(process.argv[2] ?? '20000'), Number(process.argv[3] ?? String(Date.now() % 1e9)));
  process.stdout.write(`codec check: ${r.responses} responses byte-identical, ${r.requests} requests decode to the same CheckInput\n`);
}
