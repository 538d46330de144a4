import { describe, expect, it } from 'vitest';
import { runCodecCheck } from '../../../../bench/codec-check.js';
import { createCheckRequestDecoder, createCheckResponseEncoder, encodeCheckResponse } from '../../../../src/adapters/envoy/grpc-mapping.js';
import type { Decision } from '../../../../src/core/types.js';
import { loadAuthorizationService } from '../../../../src/adapters/envoy/protos.js';

const check = loadAuthorizationService().Check;
if (!check) throw new Error('no Check method in the Authorization service');

/** A CheckRequest's wire bytes, as Envoy would send them, from a proto-loader-shaped object. */
function wire(http: Record<string, unknown> | undefined, attrs: Record<string, unknown> = {}): Buffer {
  return check!.requestSerialize({ attributes: { ...(http ? { request: { http } } : {}), ...attrs } });
}

function http(headers: Record<string, string>, over: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: '1', method: 'POST', host: 'router.example', path: '/v1/sandboxes/sb-1/invoke', scheme: 'http', protocol: 'HTTP/1.1', headers, ...over };
}

describe('CheckRequest decoder', () => {
  it('decodes what protobufjs + toCheckInput decode, byte for byte, for random requests and responses (seeded)', () => {
    // Random allows/denies and CheckRequests: header_map, raw values, mixed-case, long and
    // non-ASCII names, unknown fields, missing messages; a default and a 16-slot name table.
    for (const seed of [1, 2, 3]) expect(runCodecCheck(1_500, seed)).toEqual({ responses: 1_500, requests: 1_500 });
  });

  it('maps the request fields and keeps header values as sent', () => {
    const d = createCheckRequestDecoder();
    const input = d.decode(
      wire(http({ ':authority': 'router.example', authorization: 'Bearer abc', 'x-request-id': 'r1' }, { path: '/v1/x?a=1&b=2' }), {
        source: { principal: 'spiffe://cluster.local/ns/a/sa/b' },
        context_extensions: { tenant: 'acme' },
      }),
    );
    expect(input).toMatchObject({ method: 'POST', host: 'router.example', path: '/v1/x', query: 'a=1&b=2', peerPrincipal: 'spiffe://cluster.local/ns/a/sa/b' });
    expect([...(input?.headers ?? [])]).toEqual([
      [':authority', 'router.example'],
      ['authorization', 'Bearer abc'],
      ['x-request-id', 'r1'],
    ]);
    expect([...(input?.contextExtensions ?? [])]).toEqual([['tenant', 'acme']]);
    expect(input?.headerCounts).toBeUndefined();
  });

  it('lowercases header names, also once a name is in its table', () => {
    const d = createCheckRequestDecoder();
    for (let round = 0; round < 3; round++) {
      const input = d.decode(wire(http({ 'X-User-Sub': 'spoofed', 'x-user-sub': 'also', Authorization: 'Bearer t' })));
      // Both spellings are one header: the later entry wins, as toCheckInput does.
      expect(input?.headers.get('x-user-sub')).toBe('also');
      expect(input?.headers.get('authorization')).toBe('Bearer t');
      expect(input?.headers.has('X-User-Sub')).toBe(false);
    }
  });

  it('returns the right name when names keep replacing each other in a small table', () => {
    // 16 slots, 300 names of the same length: every slot is replaced many times over.
    const d = createCheckRequestDecoder({ nameSlots: 16 });
    const names = Array.from({ length: 300 }, (_, i) => `x-h${String(i).padStart(3, '0')}`);
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < names.length; i += 3) {
        const batch = names.slice(i, i + 3);
        const input = d.decode(wire(http(Object.fromEntries(batch.map((n) => [n, `v-${n}`])))));
        expect([...(input?.headers ?? [])]).toEqual(batch.map((n) => [n, `v-${n}`]));
      }
    }
  });

  it('decodes long and non-ASCII header names, which the table does not keep', () => {
    const d = createCheckRequestDecoder();
    const long = `x-${'a'.repeat(100)}`;
    for (let round = 0; round < 2; round++) {
      const input = d.decode(wire(http({ [long]: '1', 'X-ÜNÏ': '2' })));
      expect(input?.headers.get(long)).toBe('1');
      expect(input?.headers.get('x-ünï')).toBe('2');
    }
  });

  it('prefers header_map (encode_raw_headers): duplicates joined and counted, cookies with "; "', () => {
    const d = createCheckRequestDecoder();
    const input = d.decode(
      wire(
        http(
          { ignored: 'when header_map has entries' },
          {
            header_map: {
              headers: [
                { key: 'Cookie', raw_value: Buffer.from('a=1') },
                { key: 'cookie', raw_value: Buffer.from('b=2') },
                { key: 'x-dup', value: 'one' },
                { key: 'X-Dup', raw_value: Buffer.from('two') },
              ],
            },
          },
        ),
      ),
    );
    expect([...(input?.headers ?? [])]).toEqual([
      ['cookie', 'a=1; b=2'],
      ['x-dup', 'one,two'],
    ]);
    expect([...(input?.headerCounts ?? [])]).toEqual([
      ['cookie', 2],
      ['x-dup', 2],
    ]);
  });

  it('falls back to pseudo-headers for method, host and path', () => {
    const input = createCheckRequestDecoder().decode(
      wire(http({ ':method': 'GET', ':authority': 'pseudo.example', ':path': '/p?q=1' }, { method: '', host: '', path: '' })),
    );
    expect(input).toMatchObject({ method: 'GET', host: 'pseudo.example', path: '/p', query: '' });
  });

  it('has no input without HTTP attributes, and throws on a truncated message', () => {
    const d = createCheckRequestDecoder();
    expect(d.decode(Buffer.alloc(0))).toBeUndefined();
    expect(d.decode(wire(undefined))).toBeUndefined();
    const full = wire(http({ authorization: 'Bearer abc' }));
    for (let cut = 1; cut < 6; cut++) expect(() => d.decode(full.subarray(0, full.length - cut))).toThrow(RangeError);
  });
});

describe('CheckResponse encoder', () => {
  it('frames the same bytes as encodeCheckResponse, also after its size plan has grown for a large decision', () => {
    const encoder = createCheckResponseEncoder();
    const small: Decision = { kind: 'allow', route: 'r', headersToSet: [{ name: 'x-user-sub', value: 'alice' }], headersToRemove: [], metadata: { route: 'r', decision: 'allow' } };
    // 50 headers and 40 roles: several hundred sizes, past the plan's first 64 slots.
    const large: Decision = {
      kind: 'allow',
      route: 'r',
      headersToSet: Array.from({ length: 50 }, (_, i) => ({ name: `x-h${i}`, value: `v${i}` })),
      headersToRemove: ['x-spoofed'],
      metadata: { route: 'r', roles: Array.from({ length: 40 }, (_, i) => `role-${i}`), decision: 'allow' },
    };
    const deny: Decision = { kind: 'deny', route: 'r', status: 403, reason: 'missing_role', message: 'nope', headers: [], metadata: { route: 'r', decision: 'deny' } };
    for (const d of [small, large, small, deny, large, deny]) {
      const body = encodeCheckResponse(d);
      const frame = encoder.frame(d);
      expect(frame[0]).toBe(0);
      expect(frame.readUInt32BE(1)).toBe(body.length);
      expect(frame.subarray(5).equals(body)).toBe(true);
      const decoded = check!.responseDeserialize(frame.subarray(5)) as { ok_response?: { headers: unknown[] } | null };
      if (d === large) expect(decoded.ok_response?.headers).toHaveLength(50);
    }
  });
});
