import { generateKeyPairSync } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { isDenial } from '../../../src/core/errors.js';
import { createJwsCodec, type JwsCodec, type ParsedJws } from '../../../src/stages/jws.js';
import { assemble, b64url, generateTestKey, rawSignature, segment, signRaw, signToken, type TestKey } from '../../helpers/tokens.js';

let rsa: TestKey;
let ec: TestKey;
let ps: TestKey;

beforeAll(async () => {
  [rsa, ec, ps] = await Promise.all([generateTestKey('RS256', 'rsa-1'), generateTestKey('ES256', 'ec-1'), generateTestKey('PS256', 'ps-1')]);
});

function parsed(codec: JwsCodec, token: string): ParsedJws {
  const r = codec.parse(token);
  if (isDenial(r)) throw new Error(`expected a parsed JWS, got ${r.reason}: ${r.message}`);
  return r;
}

/** What parsing decoded before the scratch buffer: Buffer.from + toString + JSON.parse. */
function reference(seg: string): unknown {
  return JSON.parse(Buffer.from(seg, 'base64url').toString('utf8'));
}

const CLAIMS = { iss: 'https://idp.example/realms/acme', sub: 'alice', exp: 2_000_000_000 };

describe('createJwsCodec: parse', () => {
  it('splits a token into header, payload, signing input and signature text', async () => {
    const codec = createJwsCodec();
    const token = await signToken(CLAIMS, { key: rsa });
    const [h, p, s] = token.split('.') as [string, string, string];
    const j = parsed(codec, token);
    expect(j.header).toEqual(reference(h));
    expect(j.payload).toEqual(reference(p));
    expect(j.alg).toBe('RS256');
    expect(j.kid).toBe('rsa-1');
    expect(j.signingInput).toBe(`${h}.${p}`);
    expect(j.signatureText).toBe(s);
  });

  it('decodes payloads exactly as Buffer.from(…, "base64url").toString() did: Unicode, invalid UTF-8, every length mod 4', () => {
    const codec = createJwsCodec();
    const header = segment({ alg: 'RS256' });
    const payloads = [
      { sub: 'zoë', name: '名前', emoji: '🚀' },
      { a: 'x' },
      { a: 'xy' },
      { a: 'xyz' },
      { roles: ['a', 'b'], nested: { deep: [1, 2, { x: null }] } },
    ];
    for (const p of payloads) {
      const seg = segment(p);
      expect(parsed(codec, assemble(header, seg, '')).payload).toEqual(reference(seg));
    }
    // bytes that are not UTF-8 inside a JSON string: both paths give U+FFFD
    const invalid = b64url(Buffer.concat([Buffer.from('{"s":"'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}')]));
    expect(parsed(codec, assemble(header, invalid, '')).payload).toEqual(reference(invalid));
  });

  it('parses payloads larger than the scratch buffer, and small ones after them', () => {
    const codec = createJwsCodec();
    const header = segment({ alg: 'RS256' });
    for (const size of [100, 20_000, 100, 80_000, 50, 40_000, 10]) {
      const seg = segment({ pad: 'p'.repeat(size), size });
      expect(parsed(codec, assemble(header, seg, '')).payload).toEqual({ pad: 'p'.repeat(size), size });
    }
  });

  it('refuses a payload or signature outside the base64url alphabet, or of an impossible length', () => {
    const codec = createJwsCodec();
    const header = segment({ alg: 'RS256' });
    const good = segment(CLAIMS);
    const cases: [string, string][] = [
      [assemble(header, `${good}+`, ''), 'JWT payload is not base64url-encoded JSON'],
      [assemble(header, `${good}=`, ''), 'JWT payload is not base64url-encoded JSON'],
      [assemble(header, `${good.slice(0, good.length - (good.length % 4))}A`, ''), 'JWT payload is not base64url-encoded JSON'],
      [assemble(header, good, 'ab/c'), 'JWT signature is not base64url'],
      [assemble(header, good, 'abcde'), 'JWT signature is not base64url'],
    ];
    for (const [token, message] of cases) {
      const r = codec.parse(token);
      expect(isDenial(r) && r.message).toBe(message);
    }
  });

  it('decodes base64url itself exactly as Buffer.from(…, "base64url") did, for many payloads of every length', () => {
    // The codec decodes base64url in JavaScript (jws.ts says why); Node's decoder is the reference.
    const codec = createJwsCodec();
    const header = segment({ alg: 'RS256' });
    let seed = 7;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const pieces = ['a', 'Z', '9', ' ', '"', '\\', 'é', 'ß', '名', '🚀', '\u0000', '\uffff', '~', '{}', '+/='];
    for (let i = 0; i < 2000; i++) {
      let text = '';
      const len = next(40);
      for (let k = 0; k < len; k++) text += pieces[next(pieces.length)] as string;
      const seg = segment({ text, i });
      expect(parsed(codec, assemble(header, seg, '')).payload, seg).toEqual(reference(seg));
    }
  });

  it('ignores the spare bits of a final partial group, as the Node decoder does', () => {
    const codec = createJwsCodec();
    const header = segment({ alg: 'RS256' });
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    for (const p of [{ a: 'x' }, { a: 'xy' }, { a: 'xyz' }]) {
      const seg = segment(p);
      if (seg.length % 4 === 0) continue;
      // The last character carries 4 (length % 4 === 2) or 2 (=== 3) spare low bits: set them all.
      const spare = seg.length % 4 === 2 ? 15 : 3;
      const last = alphabet.indexOf(seg.slice(-1));
      const odd = seg.slice(0, -1) + (alphabet[last | spare] as string);
      expect(odd).not.toBe(seg);
      expect(parsed(codec, assemble(header, odd, '')).payload).toEqual(p);
    }
  });

  it('refuses non-ASCII characters in the header, payload and signature, also those whose low byte is a base64url letter', () => {
    const codec = createJwsCodec();
    const header = segment({ alg: 'RS256' });
    const good = segment(CLAIMS);
    // U+0141 and U+0161 end in the bytes of 'A' and 'a'; U+00E9 is Latin-1; U+D800 a lone surrogate.
    for (const c of ['\u0141', '\u0161', '\u00e9', '\ud800', '\u4141']) {
      const inPayload = `${good.slice(0, 8)}${c}${good.slice(9)}`;
      const inHeader = `${header.slice(0, 4)}${c}${header.slice(5)}`;
      const cases: [string, string][] = [
        [assemble(header, inPayload, ''), 'JWT payload is not base64url-encoded JSON'],
        [assemble(inHeader, good, ''), 'JWT header is not base64url-encoded JSON'],
        [assemble(header, good, `abc${c}`), 'JWT signature is not base64url'],
      ];
      for (const [token, message] of cases) {
        const r = codec.parse(token);
        expect(isDenial(r) && r.message, JSON.stringify(c)).toBe(message);
      }
    }
  });

  it('gives each header its own decoded value, also when two headers have the same length', () => {
    const codec = createJwsCodec();
    const p = segment(CLAIMS);
    const a = segment({ alg: 'RS256', kid: 'k-aaaa' });
    const b = segment({ alg: 'RS256', kid: 'k-bbbb' });
    expect(a.length).toBe(b.length);
    for (let i = 0; i < 3; i++) {
      expect(parsed(codec, assemble(a, p, '')).kid).toBe('k-aaaa');
      expect(parsed(codec, assemble(b, p, '')).kid).toBe('k-bbbb');
      expect(parsed(codec, assemble(a, p, '')).kid).toBe('k-aaaa');
    }
  });

  it('checks a cached header on every token (crit, enc, alg none, kid type)', () => {
    const codec = createJwsCodec();
    const p = segment(CLAIMS);
    const cases: [Record<string, unknown>, string][] = [
      [{ alg: 'RS256', crit: ['x'] }, 'crit_unsupported'],
      [{ alg: 'RS256', zip: 'DEF' }, 'token_encrypted'],
      [{ alg: 'NONE' }, 'alg_not_allowed'],
      [{ alg: 'RS256', kid: 7 }, 'token_malformed'],
    ];
    for (const [header, reason] of cases) {
      const h = segment(header);
      for (let i = 0; i < 3; i++) {
        const r = codec.parse(assemble(h, p, ''));
        expect(isDenial(r) && r.reason).toBe(reason);
      }
    }
  });

  it('hands out frozen headers, and still decodes new headers once its cache is full', () => {
    const codec = createJwsCodec({ headerCacheMax: 1 });
    const p = segment(CLAIMS);
    for (const kid of ['a', 'b', 'c', 'a', 'c']) {
      const j = parsed(codec, assemble(segment({ alg: 'RS256', kid }), p, ''));
      expect(j.kid).toBe(kid);
      if (kid === 'a') expect(Object.isFrozen(j.header)).toBe(true); // the one cached header
    }
  });
});

describe('createJwsCodec: verify', () => {
  it.each(['RS256', 'ES256', 'PS256'] as const)('verifies a %s signature and refuses a tampered one', async (alg) => {
    const codec = createJwsCodec();
    const key = alg === 'RS256' ? rsa : alg === 'ES256' ? ec : ps;
    const token = await signToken(CLAIMS, { key });
    expect(codec.verify(parsed(codec, token), key.publicKey)).toBe(true);
    const [h, , s] = token.split('.') as [string, string, string];
    const tampered = assemble(h, segment({ ...CLAIMS, sub: 'mallory' }), s);
    expect(codec.verify(parsed(codec, tampered), key.publicKey)).toBe(false);
  });

  it.each(['RS256', 'ES256'] as const)('decodes a %s signature exactly: spare bits ignored, any other change refused', async (alg) => {
    const codec = createJwsCodec();
    const key = alg === 'RS256' ? rsa : ec;
    const token = await signToken(CLAIMS, { key });
    const [h, p, s] = token.split('.') as [string, string, string];
    expect(s.length % 4).toBe(2); // 256 and 64 bytes: a final group of 2 characters, 4 spare bits
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const last = alphabet.indexOf(s.slice(-1));
    const spareSet = s.slice(0, -1) + (alphabet[last | 15] as string);
    expect(codec.verify(parsed(codec, assemble(h, p, spareSet)), key.publicKey)).toBe(true);
    // a data bit of the last character, and one character in the middle
    const dataBit = s.slice(0, -1) + (alphabet[last ^ 16] as string);
    expect(codec.verify(parsed(codec, assemble(h, p, dataBit)), key.publicKey)).toBe(false);
    const mid = s.length >> 1;
    const middle = s.slice(0, mid) + (s[mid] === 'A' ? 'B' : 'A') + s.slice(mid + 1);
    expect(codec.verify(parsed(codec, assemble(h, p, middle)), key.publicKey)).toBe(false);
  });

  it('verifies a parsed token after other tokens went through the scratch buffer (a key fetch in between)', async () => {
    const codec = createJwsCodec();
    const first = parsed(codec, await signToken(CLAIMS, { key: rsa }));
    const other = parsed(codec, await signToken({ ...CLAIMS, sub: 'bob', pad: 'x'.repeat(30_000) }, { key: ec }));
    expect(codec.verify(other, ec.publicKey)).toBe(true);
    expect(codec.verify(first, rsa.publicKey)).toBe(true);
    expect(codec.verify(first, ec.publicKey)).toBe(false);
  });

  it('verifies signing inputs beyond the scratch buffer, and small ones after them', async () => {
    const codec = createJwsCodec();
    for (const size of [10, 50_000, 10, 100_000, 10]) {
      const token = await signToken({ ...CLAIMS, pad: 'y'.repeat(size) }, { key: rsa });
      expect(codec.verify(parsed(codec, token), rsa.publicKey)).toBe(true);
      const [h, p, s] = token.split('.') as [string, string, string];
      // one flipped signature bit must fail, whatever was in the buffer before
      const sig = Buffer.from(s, 'base64url');
      sig[sig.length - 1] = (sig[sig.length - 1] as number) ^ 1;
      expect(codec.verify(parsed(codec, assemble(h, p, b64url(sig))), rsa.publicKey)).toBe(false);
    }
  });

  it('refuses an ES256 signature of the wrong length, an empty one and a truncated one', async () => {
    const codec = createJwsCodec();
    const input = assemble(segment({ alg: 'ES256', kid: 'ec-1' }), segment(CLAIMS));
    const sig = rawSignature('ES256', input, ec.privateKey);
    expect(sig.length).toBe(64);
    expect(codec.verify(parsed(codec, assemble(input, b64url(sig))), ec.publicKey)).toBe(true);
    for (const bad of [Buffer.concat([sig, Buffer.from([0])]), sig.subarray(0, 63), Buffer.alloc(0)]) {
      expect(codec.verify(parsed(codec, assemble(input, b64url(bad))), ec.publicKey)).toBe(false);
    }
    const der = rawSignature('ES256', input, ec.privateKey, { ecDer: true });
    expect(codec.verify(parsed(codec, assemble(input, b64url(der))), ec.publicKey)).toBe(false);
  });

  it('keeps the key checks: family, public, 2048 bits', async () => {
    const codec = createJwsCodec();
    const rs = parsed(codec, await signToken(CLAIMS, { key: rsa }));
    expect(codec.verify(rs, ec.publicKey)).toBe(false);
    expect(codec.verify(rs, rsa.privateKey)).toBe(false);
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const weak = signRaw({ alg: 'RS256' }, CLAIMS, small.privateKey);
    expect(codec.verify(parsed(codec, weak), small.publicKey)).toBe(false);
    const es = parsed(codec, await signToken(CLAIMS, { key: ec }));
    expect(codec.verify(es, rsa.publicKey)).toBe(false);
    expect(codec.verify({ ...es, alg: 'HS256' }, ec.publicKey)).toBe(false);
  });
});
