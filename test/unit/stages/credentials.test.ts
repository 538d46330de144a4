import { describe, expect, it } from 'vitest';
import { isDenial, type Denial } from '../../../src/core/errors.js';
import type { ReasonCode } from '../../../src/core/reasons.js';
import type { CheckInput } from '../../../src/core/types.js';
import {
  bearerToken,
  collectCandidates,
  parseCredentialSource,
  type Candidate,
  type CredentialSource,
  type SourceNote,
} from '../../../src/stages/credentials.js';

const MAX = 8192;
const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln';
const TOKEN2 = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnMg';

function input(headers: Record<string, string>, opts: { query?: string; counts?: Record<string, number> } = {}): CheckInput {
  const out: CheckInput = {
    method: 'GET',
    host: 'router.example',
    path: '/v1/x',
    query: opts.query ?? '',
    headers: new Map(Object.entries(headers)),
    contextExtensions: new Map(),
  };
  if (opts.counts) out.headerCounts = new Map(Object.entries(opts.counts));
  return out;
}

function sources(...specs: string[]): CredentialSource[] {
  return specs.map(parseCredentialSource);
}

function ok(r: Candidate[] | Denial): Candidate[] {
  if (isDenial(r)) throw new Error(`expected candidates, got ${r.reason}: ${r.message}`);
  return r;
}

function denied(r: Candidate[] | Denial, reason: ReasonCode, status?: number): Denial {
  if (!isDenial(r)) throw new Error(`expected ${reason}, got ${JSON.stringify(r)}`);
  expect(r.reason).toBe(reason);
  if (status !== undefined) expect(r.status).toBe(status);
  return r;
}

describe('parseCredentialSource', () => {
  it('parses kind and name; header names are lower-cased, cookie and query names are not', () => {
    expect(parseCredentialSource('header:Authorization')).toEqual({ kind: 'header', name: 'authorization', label: 'header:authorization' });
    expect(parseCredentialSource('cookie:Access_Token')).toEqual({ kind: 'cookie', name: 'Access_Token', label: 'cookie:Access_Token' });
    expect(parseCredentialSource('query:access_token')).toEqual({ kind: 'query', name: 'access_token', label: 'query:access_token' });
  });
});

describe('collectCandidates: Authorization header', () => {
  const auth = sources('header:authorization');

  it.each(['Bearer', 'bearer', 'BEARER', 'bEaReR'])('matches the scheme %s case-insensitively', (scheme) => {
    expect(ok(collectCandidates(input({ authorization: `${scheme} ${TOKEN}` }), auth, MAX))).toEqual([
      { token: TOKEN, source: 'header:authorization' },
    ]);
  });

  it('tolerates extra spaces around the token', () => {
    expect(ok(collectCandidates(input({ authorization: `  Bearer   ${TOKEN}  ` }), auth, MAX))).toEqual([
      { token: TOKEN, source: 'header:authorization' },
    ]);
  });

  it('skips another scheme (Basic) and records it as other_scheme', () => {
    const notes: SourceNote[] = [];
    expect(ok(collectCandidates(input({ authorization: 'Basic YWxpY2U6cHc=' }), auth, MAX, notes))).toEqual([]);
    expect(notes).toEqual([{ source: 'header:authorization', outcome: 'other_scheme' }]);
  });

  it('treats "Bearer" without a token and "Bearertoken" as another scheme', () => {
    expect(ok(collectCandidates(input({ authorization: 'Bearer' }), auth, MAX))).toEqual([]);
    expect(ok(collectCandidates(input({ authorization: 'Bearer   ' }), auth, MAX))).toEqual([]);
    expect(ok(collectCandidates(input({ authorization: `Bearer${TOKEN}` }), auth, MAX))).toEqual([]);
  });

  it('skips a Bearer credential that is not a single token, so a later source can still hold one', () => {
    const notes: SourceNote[] = [];
    const r = ok(
      collectCandidates(input({ authorization: `Bearer ${TOKEN} extra`, cookie: `access_token=${TOKEN2}` }), sources('header:authorization', 'cookie:access_token'), MAX, notes),
    );
    expect(r).toEqual([{ token: TOKEN2, source: 'cookie:access_token' }]);
    expect(notes[0]).toEqual({ source: 'header:authorization', outcome: 'other_scheme' });
  });

  it('records an absent header as absent', () => {
    const notes: SourceNote[] = [];
    expect(ok(collectCandidates(input({}), auth, MAX, notes))).toEqual([]);
    expect(notes).toEqual([{ source: 'header:authorization', outcome: 'absent' }]);
  });

  it('denies two Authorization values joined with a comma', () => {
    denied(collectCandidates(input({ authorization: `Bearer ${TOKEN}, Bearer ${TOKEN2}` }), auth, MAX), 'conflicting_credentials', 400);
    // even when the second is another scheme
    denied(collectCandidates(input({ authorization: `Bearer ${TOKEN},Basic eA==` }), auth, MAX), 'conflicting_credentials');
  });

  it('skips a single non-Bearer Authorization header whose auth-params contain commas (Digest, SigV4)', () => {
    // One header, one credential: RFC 7235 auth-params are comma-separated. Not two Authorization values.
    const digest = 'Digest username="alice", realm="r", nonce="abc", uri="/", response="6629fae49393a05397450978507c4ef1"';
    const sigv4 = 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7';
    for (const value of [digest, sigv4]) {
      const notes: SourceNote[] = [];
      const r = ok(
        collectCandidates(input({ authorization: value, cookie: `access_token=${TOKEN}` }, { counts: { authorization: 1 } }), sources('header:authorization', 'cookie:access_token'), MAX, notes),
      );
      expect(r).toEqual([{ token: TOKEN, source: 'cookie:access_token' }]);
      expect(notes[0]).toEqual({ source: 'header:authorization', outcome: 'other_scheme' });
    }
  });

  it('denies an Authorization header that appeared twice (headerCounts)', () => {
    denied(
      collectCandidates(input({ authorization: `Bearer ${TOKEN}` }, { counts: { authorization: 2 } }), auth, MAX),
      'conflicting_credentials',
      400,
    );
  });

  it('denies an oversized token with token_too_large, and accepts one exactly at the limit', () => {
    const big = 'a'.repeat(MAX + 1);
    denied(collectCandidates(input({ authorization: `Bearer ${big}` }), auth, MAX), 'token_too_large', 401);
    const atLimit = 'a'.repeat(MAX);
    expect(ok(collectCandidates(input({ authorization: `Bearer ${atLimit}` }), auth, MAX))).toHaveLength(1);
  });

  it('does not fall through past an oversized token', () => {
    const big = 'a'.repeat(MAX + 1);
    denied(
      collectCandidates(input({ authorization: `Bearer ${big}`, cookie: `access_token=${TOKEN}` }), sources('header:authorization', 'cookie:access_token'), MAX),
      'token_too_large',
    );
  });
});

describe('collectCandidates: custom header', () => {
  const custom = sources('header:X-Access-Token');

  it('takes the value as the token, with or without a Bearer prefix', () => {
    expect(ok(collectCandidates(input({ 'x-access-token': TOKEN }), custom, MAX))).toEqual([{ token: TOKEN, source: 'header:x-access-token' }]);
    expect(ok(collectCandidates(input({ 'x-access-token': `Bearer ${TOKEN}` }), custom, MAX))).toEqual([{ token: TOKEN, source: 'header:x-access-token' }]);
    expect(ok(collectCandidates(input({ 'x-access-token': `bearer ${TOKEN}` }), custom, MAX))).toEqual([{ token: TOKEN, source: 'header:x-access-token' }]);
  });

  it('ignores an empty custom header', () => {
    expect(ok(collectCandidates(input({ 'x-access-token': '   ' }), custom, MAX))).toEqual([]);
  });

  it('denies a repeated custom header', () => {
    denied(collectCandidates(input({ 'x-access-token': `${TOKEN},${TOKEN2}` }), custom, MAX), 'conflicting_credentials');
    denied(collectCandidates(input({ 'x-access-token': TOKEN }, { counts: { 'x-access-token': 2 } }), custom, MAX), 'conflicting_credentials');
  });

  it('denies an oversized custom header token', () => {
    denied(collectCandidates(input({ 'x-access-token': 'b'.repeat(MAX + 1) }), custom, MAX), 'token_too_large');
  });
});

describe('collectCandidates: cookie', () => {
  const cookie = sources('cookie:access_token');

  it('reads the named cookie among others', () => {
    expect(ok(collectCandidates(input({ cookie: `theme=dark; access_token=${TOKEN}; lang=en` }), cookie, MAX))).toEqual([
      { token: TOKEN, source: 'cookie:access_token' },
    ]);
  });

  it('strips quotes around a cookie value', () => {
    expect(ok(collectCandidates(input({ cookie: `access_token="${TOKEN}"` }), cookie, MAX))).toEqual([
      { token: TOKEN, source: 'cookie:access_token' },
    ]);
  });

  it('does not match a cookie whose name merely contains the name', () => {
    expect(ok(collectCandidates(input({ cookie: `my_access_token=${TOKEN}; access_token_2=${TOKEN2}` }), cookie, MAX))).toEqual([]);
  });

  it('accepts the same cookie twice with the same value', () => {
    expect(ok(collectCandidates(input({ cookie: `access_token=${TOKEN}; access_token=${TOKEN}` }), cookie, MAX))).toEqual([
      { token: TOKEN, source: 'cookie:access_token' },
    ]);
  });

  it('denies the same cookie twice with different values', () => {
    denied(collectCandidates(input({ cookie: `access_token=${TOKEN}; access_token=${TOKEN2}` }), cookie, MAX), 'conflicting_credentials', 400);
  });

  it('denies an oversized cookie token', () => {
    denied(collectCandidates(input({ cookie: `access_token=${'c'.repeat(MAX + 1)}` }), cookie, MAX), 'token_too_large', 401);
  });

  it('ignores an empty cookie value', () => {
    expect(ok(collectCandidates(input({ cookie: 'access_token=; x=1' }), cookie, MAX))).toEqual([]);
  });
});

describe('collectCandidates: query', () => {
  const query = sources('query:access_token');

  it('reads the named query parameter', () => {
    expect(ok(collectCandidates(input({}, { query: `a=1&access_token=${TOKEN}` }), query, MAX))).toEqual([
      { token: TOKEN, source: 'query:access_token' },
    ]);
  });

  it('ignores the parameter when the query is empty or the value empty', () => {
    expect(ok(collectCandidates(input({}, { query: '' }), query, MAX))).toEqual([]);
    expect(ok(collectCandidates(input({}, { query: 'access_token=' }), query, MAX))).toEqual([]);
  });

  it('denies the parameter given twice with different values', () => {
    denied(collectCandidates(input({}, { query: `access_token=${TOKEN}&access_token=${TOKEN2}` }), query, MAX), 'conflicting_credentials');
  });

  it('denies an oversized query token', () => {
    denied(collectCandidates(input({}, { query: `access_token=${'q'.repeat(MAX + 1)}` }), query, MAX), 'token_too_large');
  });
});

describe('collectCandidates: several sources', () => {
  it('returns every candidate in source order, with notes', () => {
    const notes: SourceNote[] = [];
    const r = ok(
      collectCandidates(
        input({ authorization: `Bearer ${TOKEN}`, cookie: `access_token=${TOKEN2}` }, { query: 'x=1' }),
        sources('header:authorization', 'query:access_token', 'cookie:access_token'),
        MAX,
        notes,
      ),
    );
    expect(r).toEqual([
      { token: TOKEN, source: 'header:authorization' },
      { token: TOKEN2, source: 'cookie:access_token' },
    ]);
    expect(notes).toEqual([
      { source: 'header:authorization', outcome: 'found' },
      { source: 'query:access_token', outcome: 'absent' },
      { source: 'cookie:access_token', outcome: 'found' },
    ]);
  });

  it('skips a Basic Authorization header and keeps the cookie', () => {
    const r = ok(
      collectCandidates(
        input({ authorization: 'Basic YWxpY2U6cHc=', cookie: `access_token=${TOKEN}` }),
        sources('header:authorization', 'cookie:access_token'),
        MAX,
      ),
    );
    expect(r).toEqual([{ token: TOKEN, source: 'cookie:access_token' }]);
  });
});

describe('bearerToken', () => {
  // The regular expression bearerToken stands in for (credentials.ts): its capture is the reference.
  const BEARER = /^bearer +(\S+) *$/i;
  const reference = (v: string): string | undefined => BEARER.exec(v)?.[1];

  it('answers exactly as the regular expression for white space a token cannot hold', () => {
    // Every character JavaScript's \s matches, and neighbours that it does not.
    const spaces = ['\t', '\n', '\v', '\f', '\r', ' ', '\u00a0', '\u1680', '\u2000', '\u2005', '\u200a', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\ufeff'];
    const others = ['\u0085', '\u180e', '\u200b', '\u00ff', '\u0141', '\ud83d', '\ud83d\ude80', 'é', '"', ',', '\u0000'];
    for (const c of [...spaces, ...others]) {
      for (const v of [`Bearer ${c}${TOKEN}`, `Bearer ${TOKEN}${c}`, `Bearer ${TOKEN.slice(0, 10)}${c}${TOKEN.slice(10)}`, `Bearer${c}${TOKEN}`, `Bearer ${TOKEN} ${c}`, `Bearer ${c}`]) {
        expect(bearerToken(v), JSON.stringify(v)).toBe(reference(v));
      }
    }
    // A non-ASCII white-space character inside the token: the regular expression refuses it.
    expect(bearerToken(`Bearer ${TOKEN.slice(0, 10)}\u2003${TOKEN.slice(10)}`)).toBeUndefined();
  });

  it('answers exactly as the regular expression for the scheme and the spaces around the token', () => {
    for (const v of [
      `Bearer ${TOKEN}`,
      `bEaReR ${TOKEN}`,
      `BEARER     ${TOKEN}   `,
      `Bearer  ${TOKEN} x`,
      `Bearer ${TOKEN}  y `,
      `Basic ${TOKEN}`,
      `Bearez ${TOKEN}`,
      `Bearer`,
      `Bearer `,
      `Bearer  `,
      `Bearer x`,
      `Bearer\t${TOKEN}`,
      ` Bearer ${TOKEN}`,
      `@EARER ${TOKEN}`, // 0x40 | 0x20 is 0x60, not 'b'
      `Bearer ${TOKEN}\u00a0`,
      '',
    ]) {
      expect(bearerToken(v), JSON.stringify(v)).toBe(reference(v));
    }
  });

  it('answers exactly as the regular expression on random values', () => {
    // A small deterministic generator: no test depends on Math.random.
    let seed = 12345;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const alphabet = ['a', 'B', '0', '-', '_', '.', ' ', ' ', '\t', '\u00a0', '\u2028', 'é', '\ud800', '\u3000', ','];
    const schemes = ['Bearer ', 'bearer  ', 'BEARER', 'Bearer\t', 'Basic ', ''];
    for (let i = 0; i < 5000; i++) {
      let v = schemes[next(schemes.length)] as string;
      const len = next(12);
      for (let k = 0; k < len; k++) v += alphabet[next(alphabet.length)] as string;
      expect(bearerToken(v), JSON.stringify(v)).toBe(reference(v));
    }
  });
});
