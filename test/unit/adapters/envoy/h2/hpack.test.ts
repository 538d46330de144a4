import { once } from 'node:events';
import { connect, constants, sensitiveHeaders, type ClientHttp2Session, type OutgoingHttpHeaders } from 'node:http2';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createHpackDecoder,
  encodeHeaderBlock,
  HpackError,
  type HpackDecoder,
} from '../../../../../src/adapters/envoy/h2/hpack.js';
import { huffmanDecode, huffmanEncode } from '../../../../../src/adapters/envoy/h2/huffman.js';

/**
 * HPACK (RFC 7541) for the hand-written HTTP/2 server: the RFC's Appendix C
 * examples, header blocks produced by a real encoder (node:http2's nghttp2
 * client, captured off a raw socket), a model-checked random walk over every
 * representation, the Huffman code, malformed input, and the response encoder.
 */

type Field = [string, string];

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

function decodeList(decoder: HpackDecoder, block: Buffer): Field[] {
  const out: Field[] = [];
  decoder.decode(block, (name, value) => out.push([name, value]));
  return out;
}

function newDecoder(maxTableSize = 4096, maxHeaderListSize = 1 << 24): HpackDecoder {
  return createHpackDecoder({ maxTableSize, maxHeaderListSize });
}

/** mulberry32: a seeded PRNG, so a failing random case can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('RFC 7541 Appendix C examples', () => {
  it('C.2.1 literal header field with indexing', () => {
    const d = newDecoder();
    expect(decodeList(d, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'))).toEqual([
      ['custom-key', 'custom-header'],
    ]);
    expect(d.tableSize).toBe(55);
  });

  it('C.2.2 literal header field without indexing', () => {
    const d = newDecoder();
    expect(decodeList(d, hex('040c 2f73 616d 706c 652f 7061 7468'))).toEqual([[':path', '/sample/path']]);
    expect(d.tableSize).toBe(0);
  });

  it('C.2.3 literal header field never indexed', () => {
    const d = newDecoder();
    expect(decodeList(d, hex('1008 7061 7373 776f 7264 0673 6563 7265 74'))).toEqual([['password', 'secret']]);
    expect(d.tableSize).toBe(0);
  });

  it('C.2.4 indexed header field', () => {
    const d = newDecoder();
    expect(decodeList(d, hex('82'))).toEqual([[':method', 'GET']]);
    expect(d.tableSize).toBe(0);
  });

  const requests: { list: Field[]; size: number }[] = [
    {
      list: [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']],
      size: 57,
    },
    {
      list: [
        [':method', 'GET'],
        [':scheme', 'http'],
        [':path', '/'],
        [':authority', 'www.example.com'],
        ['cache-control', 'no-cache'],
      ],
      size: 110,
    },
    {
      list: [
        [':method', 'GET'],
        [':scheme', 'https'],
        [':path', '/index.html'],
        [':authority', 'www.example.com'],
        ['custom-key', 'custom-value'],
      ],
      size: 164,
    },
  ];

  it('C.3 requests without Huffman coding, on one decoder', () => {
    const d = newDecoder();
    const blocks = [
      '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
      '8286 84be 5808 6e6f 2d63 6163 6865',
      '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65',
    ];
    blocks.forEach((block, i) => {
      expect(decodeList(d, hex(block))).toEqual(requests[i]?.list);
      expect(d.tableSize).toBe(requests[i]?.size);
    });
  });

  it('C.4 requests with Huffman coding, on one decoder', () => {
    const d = newDecoder();
    const blocks = [
      '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff',
      '8286 84be 5886 a8eb 1064 9cbf',
      '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf',
    ];
    blocks.forEach((block, i) => {
      expect(decodeList(d, hex(block))).toEqual(requests[i]?.list);
      expect(d.tableSize).toBe(requests[i]?.size);
    });
  });

  const responses: { list: Field[]; size: number }[] = [
    {
      list: [
        [':status', '302'],
        ['cache-control', 'private'],
        ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
        ['location', 'https://www.example.com'],
      ],
      size: 222,
    },
    {
      list: [
        [':status', '307'],
        ['cache-control', 'private'],
        ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
        ['location', 'https://www.example.com'],
      ],
      size: 222,
    },
    {
      list: [
        [':status', '200'],
        ['cache-control', 'private'],
        ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
        ['location', 'https://www.example.com'],
        ['content-encoding', 'gzip'],
        ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
      ],
      size: 215,
    },
  ];

  it('C.5 responses without Huffman coding, evicting from a 256-octet table', () => {
    const d = newDecoder(256);
    const blocks = [
      `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
       2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
       6c65 2e63 6f6d`,
      '4803 3330 37c1 c0bf',
      `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
       54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
       5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
       3d31`,
    ];
    blocks.forEach((block, i) => {
      expect(decodeList(d, hex(block))).toEqual(responses[i]?.list);
      expect(d.tableSize).toBe(responses[i]?.size);
    });
  });

  it('C.6 responses with Huffman coding, evicting from a 256-octet table', () => {
    const d = newDecoder(256);
    const blocks = [
      `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
       2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`,
      '4883 640e ffc1 c0bf',
      `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
       77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
       9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
    ];
    blocks.forEach((block, i) => {
      expect(decodeList(d, hex(block))).toEqual(responses[i]?.list);
      expect(d.tableSize).toBe(responses[i]?.size);
    });
  });
});

// --- Cross-implementation: header blocks from node:http2's client (nghttp2) -------------------

interface SentRequest {
  headers: OutgoingHttpHeaders;
  path: string;
  /** The regular (non-pseudo) fields node puts on the wire, in order, names lowercased. */
  expected: Field[];
}

interface CapturedBlock {
  streamId: number;
  block: Buffer;
  /** Flags of the HEADERS frame, and how many CONTINUATION frames followed it. */
  flags: number;
  continuations: number;
}

const FRAME_HEADERS = 0x1;
const FRAME_CONTINUATION = 0x9;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
const PREFACE_LENGTH = 24;

/**
 * Listens on a raw TCP socket and reassembles the header blocks of the HTTP/2
 * connection that arrives, resolving once `count` blocks have been seen.
 * `serverSettings` is the payload of the SETTINGS frame sent to the client.
 */
function startCapture(
  count: number,
  serverSettings: Buffer,
): { server: Server; blocks: Promise<CapturedBlock[]>; listening: Promise<number> } {
  let resolve!: (b: CapturedBlock[]) => void;
  let reject!: (e: Error) => void;
  const blocks = new Promise<CapturedBlock[]>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const server = createServer((socket: Socket) => {
    const settings = Buffer.alloc(9);
    settings.writeUIntBE(serverSettings.length, 0, 3);
    settings[3] = 0x4;
    socket.write(Buffer.concat([settings, serverSettings]));
    const captured: CapturedBlock[] = [];
    let pending = Buffer.alloc(0);
    let prefaceSeen = false;
    let fragments: Buffer[] = [];
    let blockStream = 0;
    let blockFlags = 0;
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!prefaceSeen) {
        if (pending.length < PREFACE_LENGTH) return;
        if (pending.subarray(0, PREFACE_LENGTH).toString('latin1') !== 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n') {
          reject(new Error('no HTTP/2 preface'));
          return;
        }
        pending = pending.subarray(PREFACE_LENGTH);
        prefaceSeen = true;
      }
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        const type = pending[3] as number;
        const flags = pending[4] as number;
        const streamId = pending.readUInt32BE(5) & 0x7fffffff;
        let payload = pending.subarray(9, 9 + length);
        pending = pending.subarray(9 + length);
        if (type === FRAME_HEADERS) {
          if (flags & FLAG_PADDED) payload = payload.subarray(1, payload.length - (payload[0] as number));
          if (flags & FLAG_PRIORITY) payload = payload.subarray(5);
          fragments = [payload];
          blockStream = streamId;
          blockFlags = flags;
        } else if (type === FRAME_CONTINUATION) {
          if (streamId !== blockStream) reject(new Error(`CONTINUATION for stream ${streamId}, expected ${blockStream}`));
          fragments.push(payload);
        } else {
          continue;
        }
        if (flags & FLAG_END_HEADERS) {
          captured.push({ streamId, block: Buffer.concat(fragments), flags: blockFlags, continuations: fragments.length - 1 });
          fragments = [];
          if (captured.length === count) resolve(captured);
        }
      }
    });
  });
  const listening = new Promise<number>((res) => {
    server.listen(0, '127.0.0.1', () => res((server.address() as AddressInfo).port));
  });
  return { server, blocks, listening };
}

const NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
const LETTERS = 'abcdefghijklmnopqrstuvwxyz0123456789-_./=';

function randomString(rand: () => number, length: number, alphabet: 'printable' | 'letters' | 'latin1'): string {
  let s = '';
  for (let i = 0; i < length; i++) {
    let c: number;
    if (alphabet === 'letters') c = LETTERS.charCodeAt(Math.floor(rand() * LETTERS.length));
    else if (alphabet === 'printable' || rand() < 0.3) c = 0x20 + Math.floor(rand() * 95);
    else c = 0x80 + Math.floor(rand() * 128);
    s += String.fromCharCode(c);
  }
  return s;
}

function randomValue(rand: () => number, maxLength: number): string {
  const kinds = ['letters', 'printable', 'latin1'] as const;
  return randomString(rand, Math.floor(rand() * maxLength), kinds[Math.floor(rand() * 3)] as (typeof kinds)[number]);
}

/** Random requests over a small pool of names and values, so fields repeat and the dynamic table churns. */
function randomRequests(seed: number, count: number): SentRequest[] {
  const rand = prng(seed);
  const names = new Set<string>();
  while (names.size < 40) {
    const length = 1 + Math.floor(rand() * 24);
    let name = 'x-';
    for (let i = 0; i < length; i++) name += NAME_CHARS[Math.floor(rand() * NAME_CHARS.length)];
    if (![...names].some((n) => n.toLowerCase() === name.toLowerCase())) names.add(name);
  }
  const namePool = [...names];
  const valuePool = Array.from({ length: 60 }, () => randomValue(rand, 200));
  const requests: SentRequest[] = [];
  for (let r = 0; r < count; r++) {
    const path = `/envoy.service.auth.v3.Authorization/Check?r=${r}&q=${randomString(rand, Math.floor(rand() * 40), 'letters')}`;
    const headers: OutgoingHttpHeaders = { ':method': 'POST', ':path': path };
    const expected: Field[] = [];
    const picked = [...namePool].sort(() => rand() - 0.5).slice(0, 5 + Math.floor(rand() * 30));
    const sensitive: string[] = [];
    for (const name of picked) {
      const one = (): string => (rand() < 0.6 ? (valuePool[Math.floor(rand() * valuePool.length)] as string) : randomValue(rand, 400));
      const values = rand() < 0.15 ? [one(), one(), one()] : [one()];
      headers[name] = values.length === 1 ? values[0] : values;
      for (const v of values) expected.push([name.toLowerCase(), v]);
      if (rand() < 0.05) sensitive.push(name.toLowerCase());
    }
    if (r === Math.floor(count / 2)) {
      // One block larger than the 16 KiB default frame size: split into HEADERS + CONTINUATION.
      for (let i = 0; i < 12; i++) {
        const name = `x-big-${i}`;
        const value = randomString(rand, 2500, 'latin1');
        headers[name] = value;
        expected.push([name, value]);
      }
    }
    if (sensitive.length > 0) Object.assign(headers, { [sensitiveHeaders]: sensitive });
    requests.push({ headers, path, expected });
  }
  return requests;
}

const clients: ClientHttp2Session[] = [];
const servers: Server[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.destroy();
  for (const s of servers.splice(0)) s.close();
});

async function roundTripThroughNode(
  seed: number,
  opts: { serverSettings: Buffer; waitForSettings: boolean; maxTableSize: number },
): Promise<{ requests: SentRequest[]; blocks: CapturedBlock[]; decoder: HpackDecoder; clientTableSize: number }> {
  const requests = randomRequests(seed, 80);
  const capture = startCapture(requests.length, opts.serverSettings);
  servers.push(capture.server);
  const port = await capture.listening;
  const client = connect(`http://127.0.0.1:${port}`, {
    paddingStrategy: constants.PADDING_STRATEGY_MAX,
    maxSendHeaderBlockLength: 1 << 20,
    maxHeaderListPairs: 1000,
  });
  clients.push(client);
  client.on('error', () => undefined);
  if (opts.waitForSettings) await once(client, 'remoteSettings');
  requests.forEach((req, i) => {
    // Every third request asks for a priority, so HEADERS carries the PRIORITY flag.
    const stream = client.request(req.headers, i % 3 === 0 ? { endStream: true, exclusive: true, parent: 0 } : { endStream: true });
    stream.on('error', () => undefined);
  });
  const blocks = await capture.blocks;
  const clientTableSize = client.state.deflateDynamicTableSize ?? -1;
  client.destroy();

  const decoder = newDecoder(opts.maxTableSize);
  expect(blocks.map((b) => b.streamId)).toEqual(requests.map((_, i) => 2 * i + 1));
  blocks.forEach(({ block }, i) => {
    const req = requests[i] as SentRequest;
    const decoded = decodeList(decoder, block);
    expect(decoded.filter(([name]) => !name.startsWith(':')), `request ${i} (seed ${seed})`).toEqual(req.expected);
    const pseudo = new Map(decoded.filter(([name]) => name.startsWith(':')));
    expect(pseudo.get(':method')).toBe('POST');
    expect(pseudo.get(':path')).toBe(req.path);
    expect(pseudo.get(':scheme')).toBe('http');
    expect(pseudo.get(':authority')).toBe(`127.0.0.1:${port}`);
  });
  return { requests, blocks, decoder, clientTableSize };
}

describe('header blocks encoded by node:http2 (nghttp2)', () => {
  it('decodes random requests that fill and evict a 4096-octet table, Huffman and raw, padded, prioritized, split', async () => {
    const { blocks, decoder, clientTableSize } = await roundTripThroughNode(0x5eed, {
      serverSettings: Buffer.alloc(0),
      waitForSettings: false,
      maxTableSize: 4096,
    });
    // The decoder's table must track the encoder's exactly.
    expect(decoder.tableSize).toBe(clientTableSize);
    expect(decoder.tableSize).toBeGreaterThan(3000);
    // The input exercised what it was meant to: Huffman strings, raw strings, and an oversized block.
    const all = Buffer.concat(blocks.map((b) => b.block));
    expect(all.length).toBeGreaterThan(4096 * 4);
    expect(blocks.some((b) => b.block.length > 16384 && b.continuations > 0)).toBe(true);
    expect(blocks.some((b) => (b.flags & FLAG_PADDED) !== 0)).toBe(true);
    expect(blocks.some((b) => (b.flags & FLAG_PRIORITY) !== 0)).toBe(true);
  });

  it('follows a dynamic table size update after the server advertises a smaller table', async () => {
    const settings = Buffer.alloc(6);
    settings.writeUInt16BE(0x1, 0); // SETTINGS_HEADER_TABLE_SIZE
    settings.writeUInt32BE(512, 2);
    const { blocks, decoder, clientTableSize } = await roundTripThroughNode(0xbeef, {
      serverSettings: settings,
      waitForSettings: true,
      maxTableSize: 512,
    });
    expect((blocks[0]?.block[0] as number) & 0xe0).toBe(0x20);
    expect(decoder.tableSize).toBe(clientTableSize);
    expect(decoder.tableSize).toBeLessThanOrEqual(512);
  });
});

// --- Model check: every representation against a reference table ------------------------------

const STATIC_FOR_MODEL: Field[] = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'],
  [':scheme', 'http'], [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'],
  [':status', '304'], [':status', '400'], [':status', '404'], [':status', '500'], ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''], ['accept', ''],
  ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''], ['cache-control', ''],
  ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''], ['etag', ''],
  ['expect', ''], ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''], ['if-modified-since', ''],
  ['if-none-match', ''], ['if-range', ''], ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''],
  ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''], ['proxy-authorization', ''], ['range', ''],
  ['referer', ''], ['refresh', ''], ['retry-after', ''], ['server', ''], ['set-cookie', ''],
  ['strict-transport-security', ''], ['transfer-encoding', ''], ['user-agent', ''], ['vary', ''], ['via', ''],
  ['www-authenticate', ''],
];

function pushInteger(out: number[], flags: number, value: number, prefixBits: number): void {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) {
    out.push(flags | value);
    return;
  }
  out.push(flags | mask);
  let rest = value - mask;
  while (rest >= 128) {
    out.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
}

function pushString(out: number[], s: string, huffman: boolean): void {
  const bytes = huffman ? huffmanEncode(s) : Buffer.from(s, 'latin1');
  pushInteger(out, huffman ? 0x80 : 0, bytes.length, 7);
  for (const b of bytes) out.push(b);
}

/** The dynamic table as RFC 7541 §4 describes it, newest entry first, with none of the decoder's tricks. */
class ModelTable {
  entries: Field[] = [];
  size = 0;
  constructor(private limit: number) {}
  setLimit(limit: number): void {
    this.limit = limit;
    while (this.size > limit) this.evict();
  }
  add(name: string, value: string): void {
    const size = name.length + value.length + 32;
    while (this.entries.length > 0 && this.size + size > this.limit) this.evict();
    if (size > this.limit) return;
    this.entries.unshift([name, value]);
    this.size += size;
  }
  private evict(): void {
    const [name, value] = this.entries.pop() as Field;
    this.size -= name.length + value.length + 32;
  }
}

describe('decoder against a model of the dynamic table', () => {
  for (const [maxTableSize, seed] of [
    [4096, 1],
    [256, 2],
    [100, 3],
    [0, 4],
  ] as const) {
    it(`random blocks of every representation, table ${maxTableSize}`, () => {
      const rand = prng(seed);
      const pick = (n: number): number => Math.floor(rand() * n);
      const model = new ModelTable(maxTableSize);
      const decoder = newDecoder(maxTableSize);
      const shortString = (): string => (rand() < 0.3 ? '' : randomValue(rand, rand() < 0.9 ? 12 : 300));
      for (let blockNo = 0; blockNo < 400; blockNo++) {
        const out: number[] = [];
        const expected: Field[] = [];
        for (let u = rand() < 0.1 ? 1 + pick(2) : 0; u > 0; u--) {
          const limit = pick(maxTableSize + 1);
          pushInteger(out, 0x20, limit, 5);
          model.setLimit(limit);
        }
        for (let f = pick(24); f > 0; f--) {
          const kind = pick(4);
          const dynamicCount = model.entries.length;
          if (kind === 0) {
            // Indexed, static or dynamic.
            const index = 1 + pick(STATIC_FOR_MODEL.length + dynamicCount);
            pushInteger(out, 0x80, index, 7);
            expected.push(
              (index <= STATIC_FOR_MODEL.length ? STATIC_FOR_MODEL[index - 1] : model.entries[index - 62]) as Field,
            );
            continue;
          }
          const [flags, prefixBits] = ([[0x40, 6], [0x00, 4], [0x10, 4]] as const)[kind - 1] as readonly [number, number];
          const nameIndex = rand() < 0.4 ? 0 : 1 + pick(STATIC_FOR_MODEL.length + dynamicCount);
          let name: string;
          pushInteger(out, flags, nameIndex, prefixBits);
          if (nameIndex === 0) {
            name = shortString();
            pushString(out, name, rand() < 0.5);
          } else {
            name = ((nameIndex <= STATIC_FOR_MODEL.length ? STATIC_FOR_MODEL[nameIndex - 1] : model.entries[nameIndex - 62]) as Field)[0];
          }
          const value = shortString();
          pushString(out, value, rand() < 0.5);
          expected.push([name, value]);
          if (kind === 1) model.add(name, value);
        }
        expect(decodeList(decoder, Buffer.from(out)), `block ${blockNo}`).toEqual(expected);
        expect(decoder.tableSize, `block ${blockNo}`).toBe(model.size);
      }
    });
  }

  it('keeps maxTableSize / 32 entries of minimal size and indexes them all (multi-octet indexes)', () => {
    const d = newDecoder(4096);
    const block = Buffer.from(Array.from({ length: 129 }, () => [0x40, 0x00, 0x00]).flat());
    expect(decodeList(d, block)).toHaveLength(129);
    expect(d.tableSize).toBe(4096);
    const out: number[] = [];
    pushInteger(out, 0x80, 61 + 128, 7);
    expect(decodeList(d, Buffer.from(out))).toEqual([['', '']]);
    const beyond: number[] = [];
    pushInteger(beyond, 0x80, 61 + 129, 7);
    expect(() => d.decode(Buffer.from(beyond), () => undefined)).toThrow(HpackError);
  });

  it('evicts everything for an entry larger than the table, and on a size update to 0', () => {
    const d = newDecoder(256);
    decodeList(d, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'));
    expect(d.tableSize).toBe(55);
    const big: number[] = [0x40];
    pushString(big, 'n', false);
    pushString(big, 'v'.repeat(300), false);
    expect(decodeList(d, Buffer.from(big))).toEqual([['n', 'v'.repeat(300)]]);
    expect(d.tableSize).toBe(0);
    expect(() => d.decode(hex('be'), () => undefined)).toThrow(HpackError);

    const d2 = newDecoder(256);
    decodeList(d2, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'));
    // Two updates at the start of a block: down to 0 (evicts), back up to 256.
    expect(decodeList(d2, hex('20 3f e1 01 82'))).toEqual([[':method', 'GET']]);
    expect(d2.tableSize).toBe(0);
    expect(() => d2.decode(hex('be'), () => undefined)).toThrow(HpackError);
  });
});

// --- Huffman -----------------------------------------------------------------------------------

describe('Huffman code', () => {
  const decodeAll = (b: Buffer): string => huffmanDecode(b, 0, b.length);

  it('encodes the RFC 7541 Appendix C strings to the RFC octets', () => {
    expect(huffmanEncode('www.example.com').toString('hex')).toBe('f1e3c2e5f23a6ba0ab90f4ff');
    expect(huffmanEncode('no-cache').toString('hex')).toBe('a8eb10649cbf');
    expect(huffmanEncode('custom-key').toString('hex')).toBe('25a849e95ba97d7f');
    expect(huffmanEncode('custom-value').toString('hex')).toBe('25a849e95bb8e8b4bf');
    expect(huffmanEncode('302').toString('hex')).toBe('6402');
    expect(huffmanEncode('private').toString('hex')).toBe('aec3771a4b');
    expect(huffmanEncode('Mon, 21 Oct 2013 20:13:21 GMT').toString('hex')).toBe('d07abe941054d444a8200595040b8166e082a62d1bff');
    expect(huffmanEncode('https://www.example.com').toString('hex')).toBe('9d29ad171863c78f0b97c8e9ae82ae43d3');
    expect(huffmanEncode('').length).toBe(0);
  });

  it('round-trips every octet 0-255, alone and all together', () => {
    let all = '';
    for (let c = 0; c < 256; c++) {
      const s = String.fromCharCode(c);
      all += s;
      expect(decodeAll(huffmanEncode(s))).toBe(s);
      expect(decodeAll(huffmanEncode(s + s + 'a'))).toBe(s + s + 'a');
    }
    expect(decodeAll(huffmanEncode(all))).toBe(all);
    expect(decodeAll(huffmanEncode([...all].reverse().join('')))).toBe([...all].reverse().join(''));
  });

  it('round-trips random strings, and decodes a slice of a larger buffer', () => {
    const rand = prng(7);
    for (let i = 0; i < 500; i++) {
      const s = randomString(rand, Math.floor(rand() * 100), i % 2 ? 'latin1' : 'printable');
      const encoded = huffmanEncode(s);
      expect(decodeAll(encoded)).toBe(s);
      const framed = Buffer.concat([Buffer.from([0x00, 0xff]), encoded, Buffer.from([0x00])]);
      expect(huffmanDecode(framed, 2, 2 + encoded.length)).toBe(s);
    }
  });

  it('accepts up to 7 bits of EOS padding', () => {
    expect(decodeAll(Buffer.from([0x1f]))).toBe('a'); // 00011 + 111
    expect(decodeAll(Buffer.from([0x07]))).toBe('0'); // 00000 + 111
    expect(decodeAll(Buffer.alloc(5))).toBe('00000000'); // 8 × 00000, no padding at all
    expect(decodeAll(Buffer.alloc(0))).toBe('');
  });

  it('refuses EOS inside the string', () => {
    // 'a' (00011) then EOS (30 ones) then 5 bits of padding.
    expect(() => decodeAll(Buffer.from([0x1f, 0xff, 0xff, 0xff, 0xff]))).toThrow(HpackError);
    // EOS alone, padded with 2 ones.
    expect(() => decodeAll(Buffer.from([0xff, 0xff, 0xff, 0xff]))).toThrow(HpackError);
  });

  it('refuses padding longer than 7 bits', () => {
    expect(() => decodeAll(Buffer.from([0xff]))).toThrow(HpackError);
    expect(() => decodeAll(Buffer.from([0x1f, 0xff]))).toThrow(HpackError); // 'a' then 11 ones
    expect(() => decodeAll(Buffer.concat([huffmanEncode('www.example.com'), Buffer.from([0xff])]))).toThrow(HpackError);
  });

  it('refuses padding that is not the most significant bits of EOS', () => {
    expect(() => decodeAll(Buffer.from([0x18]))).toThrow(HpackError); // 'a' then 000
    expect(() => decodeAll(Buffer.from([0x1e]))).toThrow(HpackError); // 'a' then 110
    expect(() => decodeAll(Buffer.from([0xfe]))).toThrow(HpackError); // 1111111 0
  });
});

// --- Malformed blocks ----------------------------------------------------------------------------

describe('malformed header blocks throw HpackError', () => {
  const rejects = (block: string, decoder = newDecoder()): HpackError => {
    let caught: unknown;
    try {
      decoder.decode(hex(block), () => undefined);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(HpackError);
    expect((caught as HpackError).code).toBe('ERR_HPACK');
    expect((caught as HpackError).name).toBe('HpackError');
    return caught as HpackError;
  };

  it('index 0', () => {
    rejects('80');
  });

  it('index beyond the static and dynamic tables', () => {
    rejects('be'); // 62 with an empty dynamic table
    rejects('0f 30 01 61'); // literal whose name index 63 is beyond the table
    const d = newDecoder();
    decodeList(d, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'));
    expect(decodeList(d, hex('be'))).toEqual([['custom-key', 'custom-header']]);
    rejects('bf', d);
  });

  it('truncated integer', () => {
    rejects('ff');
    rejects('ff 80');
    rejects('3f');
  });

  it('integer overflow and overlong integers', () => {
    rejects('ff ff ff ff ff 0f'); // > 2^31 - 1
    rejects('7f ff ff ff ff ff ff ff ff ff ff 01'); // the brief's "0x7f followed by many 0xff"
    rejects('ff 80 80 80 80 80 00'); // small value, but 6 continuation octets
  });

  it('string length past the end of the block', () => {
    rejects('00 05 61 62'); // literal name
    rejects('04 05 61 62'); // value of :path
    rejects('00'); // no name length at all
    rejects('04'); // no value length at all
    rejects('04 7f ff ff ff 07'); // a length that is a valid integer but far past the end
  });

  it('invalid Huffman string inside a block', () => {
    rejects('04 81 ff'); // 8 bits of padding
  });

  it('dynamic table size update above the limit', () => {
    expect(decodeList(newDecoder(4096), hex('3f e1 1f 82'))).toEqual([[':method', 'GET']]); // 4096: fine
    rejects('3f e2 1f'); // 4097
    rejects('3f e1 01', newDecoder(255)); // 256 > 255
  });

  it('dynamic table size update after a header field', () => {
    rejects('82 20');
    rejects('20 82 3f e1 01');
  });

  it('header list over maxHeaderListSize, stopping as soon as it is passed', () => {
    const d = newDecoder(4096, 100); // :method GET = 7 + 3 + 32 = 42
    const seen: Field[] = [];
    expect(() => d.decode(hex('82 82 82 82'), (n, v) => seen.push([n, v]))).toThrow(HpackError);
    expect(seen).toEqual([
      [':method', 'GET'],
      [':method', 'GET'],
    ]);
    expect(decodeList(newDecoder(4096, 84), hex('82 82'))).toHaveLength(2); // exactly at the limit
  });

  it('leaves the decoder unusable after an error', () => {
    const d = newDecoder();
    rejects('80', d);
    rejects('82', d);
  });
});

// --- Encoder ---------------------------------------------------------------------------------------

describe('encodeHeaderBlock', () => {
  it('round-trips through a fresh decoder without touching its dynamic table', () => {
    const fields: Field[] = [
      [':status', '200'],
      ['content-type', 'application/grpc'],
      ['grpc-status', '0'],
      ['x-long', 'x'.repeat(300)],
      ['x-latin1', 'caf\xe9 \xff'],
      ['x-empty', ''],
      ['www-authenticate', 'Bearer'],
      ['content-type', 'again'],
    ];
    const block = encodeHeaderBlock(fields);
    const d = newDecoder();
    expect(decodeList(d, block)).toEqual(fields);
    expect(d.tableSize).toBe(0);
    expect(decodeList(d, block)).toEqual(fields);
  });

  it('uses static name indexes and raw literals without indexing', () => {
    // content-type is static index 31: 4-bit prefix 15, then 16.
    expect(encodeHeaderBlock([['content-type', 'application/grpc']]).toString('hex')).toBe(
      '0f10' + '10' + Buffer.from('application/grpc').toString('hex'),
    );
    expect(encodeHeaderBlock([[':status', '200']]).toString('hex')).toBe('0803323030');
    expect(encodeHeaderBlock([['grpc-status', '0']]).toString('hex')).toBe(
      '000b' + Buffer.from('grpc-status').toString('hex') + '0130',
    );
    expect(encodeHeaderBlock([]).length).toBe(0);
  });

  it('refuses strings that are not latin1', () => {
    expect(() => encodeHeaderBlock([['x-a', '\u0100']])).toThrow(RangeError);
  });
});
