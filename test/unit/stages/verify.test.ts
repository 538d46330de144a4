import { createPublicKey, generateKeyPairSync, type JsonWebKeyInput } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { createStaticKeySource, type KeyLookup, type KeySource } from '../../../src/adapters/oidc/key-source.js';
import { isDenial, type Denial } from '../../../src/core/errors.js';
import type { ReasonCode } from '../../../src/core/reasons.js';
import type { Principal } from '../../../src/core/types.js';
import { createRoleResolver } from '../../../src/stages/roles.js';
import {
  createVerifier,
  tokenCacheKey,
  type CacheAdmission,
  type IssuerRuntime,
  type Verifier,
  type VerifierDeps,
  type VerifyObserver,
  type VerifyResult,
} from '../../../src/stages/verify.js';
import { createFakeClock, type FakeClock } from '../../helpers/fake-clock.js';
import {
  assemble,
  b64url,
  decodeSegment,
  generateTestKey,
  hmacToken,
  publicPem,
  rawToken,
  resolvedKeyOf,
  segment,
  signRaw,
  signToken,
  splitToken,
  type TestKey,
} from '../../helpers/tokens.js';

const T0 = 1_700_000_000_000;
const NOW_S = T0 / 1000;
const SKEW_MS = 30_000;
const ISS = 'https://idp.example/realms/acme';
const OTHER_ISS = 'https://idp.example/realms/globex';
const SOURCE = 'header:authorization';

const ROLE_GRAPH = { admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] };

let rsa: TestKey;
let ec: TestKey;
let ps: TestKey;
/** A different RSA key that claims the same kid as `rsa`. */
let impostor: TestKey;

beforeAll(async () => {
  [rsa, ec, ps, impostor] = await Promise.all([
    generateTestKey('RS256', 'rsa-1'),
    generateTestKey('ES256', 'ec-1'),
    generateTestKey('PS256', 'ps-1'),
    generateTestKey('RS256', 'rsa-1'),
  ]);
});

function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: ISS,
    aud: 'router',
    sub: 'alice',
    iat: NOW_S,
    exp: NOW_S + 300,
    realm_access: { roles: ['admin'] },
    resource_access: { router: { roles: ['viewer'] }, other: { roles: ['not-mine'] } },
    ...extra,
  };
}

function without(name: string): Record<string, unknown> {
  const c = claims();
  delete c[name];
  return c;
}

function issuerRuntime(keys: KeySource, over: Partial<IssuerRuntime> = {}): IssuerRuntime {
  return {
    name: 'acme',
    issuer: ISS,
    audiences: new Set(['router']),
    algorithms: new Set(['RS256', 'ES256', 'PS256']),
    roleClaims: [
      ['realm_access', 'roles'],
      ['resource_access', 'router', 'roles'],
    ],
    subjectClaim: 'sub',
    clockSkewMs: SKEW_MS,
    keys,
    ...over,
  };
}

function staticKeys(): KeySource {
  return createStaticKeySource([resolvedKeyOf(rsa), resolvedKeyOf(ec), resolvedKeyOf(ps)]);
}

interface Counting extends VerifyObserver {
  hits: string[];
  misses: number;
}

function countingObserver(): Counting {
  const o: Counting = {
    hits: [],
    misses: 0,
    cacheHit(issuer) {
      o.hits.push(issuer);
    },
    cacheMiss() {
      o.misses += 1;
    },
  };
  return o;
}

interface Setup {
  verifier: Verifier;
  fake: FakeClock;
  observer: Counting;
}

/** Cache mechanics are tested with first-use admission (every verified token cached); admission has its own tests. */
function setup(opts: { issuers?: IssuerRuntime[]; cacheMaxEntries?: number; cacheAdmission?: CacheAdmission; fake?: FakeClock } = {}): Setup {
  const fake = opts.fake ?? createFakeClock(T0);
  const observer = countingObserver();
  const deps: VerifierDeps = {
    clock: fake.clock,
    issuers: opts.issuers ?? [issuerRuntime(staticKeys())],
    roles: createRoleResolver(ROLE_GRAPH),
    cacheMaxEntries: opts.cacheMaxEntries ?? 100,
    cacheAdmission: opts.cacheAdmission ?? 'first-use',
    observer,
  };
  return { verifier: createVerifier(deps), fake, observer };
}

/** The verify result when it must be synchronous (key known or cached). */
function now(r: VerifyResult | Promise<VerifyResult>): VerifyResult {
  if (r instanceof Promise) throw new Error('expected a synchronous verify result');
  return r;
}

function expectDenial(r: VerifyResult, reason: ReasonCode, status?: number): Denial {
  if (!isDenial(r)) throw new Error(`expected denial ${reason}, got principal ${r.qualifiedSub}`);
  expect(r.reason).toBe(reason);
  if (status !== undefined) expect(r.status).toBe(status);
  return r;
}

function expectPrincipal(r: VerifyResult): Principal {
  if (isDenial(r)) throw new Error(`expected a principal, got denial ${r.reason}: ${r.message}`);
  return r;
}

/** A key source whose get() answers from a switchable function. */
function switchableKeys(inner: KeySource): { source: KeySource; set(mode: 'normal' | 'unavailable' | 'unknown_kid'): void } {
  let mode: 'normal' | 'unavailable' | 'unknown_kid' = 'normal';
  const answer = (kid: string | undefined, alg: string): KeyLookup => (mode === 'normal' ? inner.get(kid, alg) : mode);
  return {
    source: {
      ...inner,
      get: answer,
      resolve: (kid, alg) => Promise.resolve(answer(kid, alg)),
    },
    set(m) {
      mode = m;
    },
  };
}

describe('verify: valid tokens', () => {
  it.each(['RS256', 'ES256', 'PS256'] as const)('accepts a valid %s token and builds the principal', async (alg) => {
    const key = alg === 'RS256' ? rsa : alg === 'ES256' ? ec : ps;
    const { verifier } = setup();
    const token = await signToken(claims(), { key });
    const p = expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(p.issuerName).toBe('acme');
    expect(p.issuer).toBe(ISS);
    expect(p.sub).toBe('alice');
    expect(p.qualifiedSub).toBe('acme/alice');
    expect(p.source).toBe(SOURCE);
    expect(p.token).toBe(token);
    expect(p.expiresAt).toBe((NOW_S + 300) * 1000);
    // realm roles and the configured client's roles, not another client's
    expect([...p.roles].sort()).toEqual(['admin', 'viewer']);
    // admin ⊇ sandbox:manage ⊇ sandbox:invoke
    expect([...p.effectiveRoles].sort()).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage', 'viewer']);
    expect(p.claims.sub).toBe('alice');
    expect(p.kid).toBe(key.kid);
    expect(p.alg).toBe(alg);
  });

  it('gives principals read-only roles, shared between tokens with the same roles', async () => {
    const { verifier } = setup();
    const a = expectPrincipal(now(verifier.verify(await signToken(claims({ sub: 'a' }), { key: rsa }), SOURCE)));
    const b = expectPrincipal(now(verifier.verify(await signToken(claims({ sub: 'b' }), { key: ec }), SOURCE)));
    expect(b.roles).toBe(a.roles);
    expect(b.effectiveRoles).toBe(a.effectiveRoles);
    expect(Object.isFrozen(a.roles)).toBe(true);
    expect(() => (a.effectiveRoles as Set<string>).add('root')).toThrow(TypeError);
    const c = expectPrincipal(now(verifier.verify(await signToken(claims({ sub: 'c', resource_access: {} }), { key: rsa }), SOURCE)));
    expect(c.roles).toEqual(['admin']);
    expect([...c.effectiveRoles].sort()).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage']);
    expect([...a.effectiveRoles].sort()).toEqual(['admin', 'sandbox:invoke', 'sandbox:manage', 'viewer']);
  });

  it('computes the closure from a middle role only downwards', async () => {
    const { verifier } = setup();
    const token = await signToken(claims({ realm_access: { roles: ['sandbox:manage'] }, resource_access: {} }), { key: rsa });
    const p = expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(p.roles).toEqual(['sandbox:manage']);
    expect([...p.effectiveRoles].sort()).toEqual(['sandbox:invoke', 'sandbox:manage']);
  });

  it('accepts a token without roles claims (no roles)', async () => {
    const { verifier } = setup();
    const c = claims();
    delete c.realm_access;
    delete c.resource_access;
    const p = expectPrincipal(now(verifier.verify(await signToken(c, { key: ec }), SOURCE)));
    expect(p.roles).toEqual([]);
    expect(p.effectiveRoles.size).toBe(0);
  });

  it('accepts an aud array that contains one configured audience', async () => {
    const { verifier } = setup();
    const token = await signToken(claims({ aud: ['account', 'router'] }), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
  });

  it('uses the configured subject claim', async () => {
    const { verifier } = setup({ issuers: [issuerRuntime(staticKeys(), { subjectClaim: 'preferred_username' })] });
    const token = await signToken(claims({ preferred_username: 'alice.a' }), { key: rsa });
    const p = expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(p.sub).toBe('alice.a');
    expect(p.qualifiedSub).toBe('acme/alice.a');
  });

  it('chooses the issuer by iss among several', async () => {
    const { verifier } = setup({
      issuers: [
        issuerRuntime(staticKeys()),
        issuerRuntime(createStaticKeySource([resolvedKeyOf(ec)]), { name: 'globex', issuer: OTHER_ISS }),
      ],
    });
    const p = expectPrincipal(now(verifier.verify(await signToken(claims({ iss: OTHER_ISS }), { key: ec }), SOURCE)));
    expect(p.qualifiedSub).toBe('globex/alice');
    expect(verifier.issuerNameOf(OTHER_ISS)).toBe('globex');
    expect(verifier.issuerNameOf('https://nobody.example')).toBeUndefined();
  });
});

describe('verify: algorithms', () => {
  it('refuses alg "none" (any case)', () => {
    const { verifier } = setup();
    for (const alg of ['none', 'None', 'NONE']) {
      const token = rawToken({ alg, typ: 'JWT' }, claims());
      expectDenial(now(verifier.verify(token, SOURCE)), 'alg_not_allowed', 401);
    }
  });

  it('refuses HS256 signed with the issuer RSA public key as HMAC secret', () => {
    const { verifier } = setup();
    const pem = publicPem(rsa.publicKey);
    for (const secret of [pem, Buffer.from(pem), rsa.publicKey.export({ type: 'spki', format: 'der' })]) {
      const token = hmacToken({ alg: 'HS256', typ: 'JWT', kid: rsa.kid }, claims(), secret);
      expectDenial(now(verifier.verify(token, SOURCE)), 'alg_not_allowed', 401);
    }
  });

  it('refuses HS256 even if an allowlist named it and a key source handed out the RSA key', () => {
    // The config schema refuses HS*; this is the second line of defence in the signature check.
    const keys: KeySource = { ...staticKeys(), get: () => resolvedKeyOf(rsa) };
    const { verifier } = setup({ issuers: [issuerRuntime(keys, { algorithms: new Set(['RS256', 'HS256']) })] });
    const token = hmacToken({ alg: 'HS256', kid: rsa.kid }, claims(), publicPem(rsa.publicKey));
    expectDenial(now(verifier.verify(token, SOURCE)), 'signature_invalid');
  });

  it('refuses an alg outside the issuer allowlist', async () => {
    const { verifier } = setup({ issuers: [issuerRuntime(staticKeys(), { algorithms: new Set(['RS256']) })] });
    expectDenial(now(verifier.verify(await signToken(claims(), { key: ec }), SOURCE)), 'alg_not_allowed', 401);
    expectDenial(now(verifier.verify(await signToken(claims(), { key: ps }), SOURCE)), 'alg_not_allowed');
    expectPrincipal(now(verifier.verify(await signToken(claims(), { key: rsa }), SOURCE)));
  });

  it('refuses an ES256 signature in DER encoding', async () => {
    const { verifier } = setup();
    const der = signRaw({ alg: 'ES256', kid: ec.kid }, claims(), ec.privateKey, { ecDer: true });
    expectDenial(now(verifier.verify(der, SOURCE)), 'signature_invalid', 401);
    // the same bytes in raw (IEEE P1363) form verify
    const raw = signRaw({ alg: 'ES256', kid: ec.kid }, claims(), ec.privateKey);
    expectPrincipal(now(verifier.verify(raw, SOURCE)));
  });

  it('refuses a signature from an RSA key under 2048 bits', () => {
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 });
    // createStaticKeySource refuses short keys, so hand the key out directly.
    const keys: KeySource = {
      get: () => ({ key: small.publicKey, kty: 'RSA', kid: 'small' }),
      resolve: () => Promise.resolve({ key: small.publicKey, kty: 'RSA', kid: 'small' }),
      start: () => undefined,
      stop: () => undefined,
      refresh: () => Promise.resolve(),
      status: () => ({ ready: true, keyCount: 1, skippedKeyCount: 0, consecutiveFailures: 0, state: 'fresh' }),
    };
    const { verifier } = setup({ issuers: [issuerRuntime(keys)] });
    const token = signRaw({ alg: 'RS256', kid: 'small' }, claims(), small.privateKey);
    expectDenial(now(verifier.verify(token, SOURCE)), 'signature_invalid', 401);
  });

  it('refuses an RS256 header on a token signed with an EC key (key family mismatch)', () => {
    const keys: KeySource = {
      ...staticKeys(),
      get: () => resolvedKeyOf(ec),
    };
    const { verifier } = setup({ issuers: [issuerRuntime(keys)] });
    const token = signRaw({ alg: 'RS256', kid: ec.kid }, claims(), rsa.privateKey);
    expectDenial(now(verifier.verify(token, SOURCE)), 'signature_invalid');
  });
});

describe('verify: time claims', () => {
  it('refuses an expired token', async () => {
    const { verifier } = setup();
    const token = await signToken(claims({ iat: NOW_S - 600, exp: NOW_S - 60 }), { key: rsa });
    expectDenial(now(verifier.verify(token, SOURCE)), 'token_expired', 401);
  });

  it('respects clock skew for exp: just inside is valid, at the edge is expired', async () => {
    const { verifier } = setup();
    const skewS = SKEW_MS / 1000;
    const inside = await signToken(claims({ iat: NOW_S - 600, exp: NOW_S - skewS + 1 }), { key: rsa });
    const edge = await signToken(claims({ iat: NOW_S - 600, exp: NOW_S - skewS }), { key: rsa });
    const outside = await signToken(claims({ iat: NOW_S - 600, exp: NOW_S - skewS - 1 }), { key: rsa });
    expectPrincipal(now(verifier.verify(inside, SOURCE)));
    expectDenial(now(verifier.verify(edge, SOURCE)), 'token_expired');
    expectDenial(now(verifier.verify(outside, SOURCE)), 'token_expired');
  });

  it('refuses nbf in the future, respecting skew', async () => {
    const { verifier } = setup();
    const skewS = SKEW_MS / 1000;
    const far = await signToken(claims({ nbf: NOW_S + 3600 }), { key: rsa });
    const inside = await signToken(claims({ nbf: NOW_S + skewS }), { key: rsa });
    const outside = await signToken(claims({ nbf: NOW_S + skewS + 1 }), { key: rsa });
    expectDenial(now(verifier.verify(far, SOURCE)), 'token_not_yet_valid', 401);
    expectPrincipal(now(verifier.verify(inside, SOURCE)));
    expectDenial(now(verifier.verify(outside, SOURCE)), 'token_not_yet_valid');
  });

  it('refuses iat in the future, respecting skew', async () => {
    const { verifier } = setup();
    const skewS = SKEW_MS / 1000;
    const far = await signToken(claims({ iat: NOW_S + 3600, exp: NOW_S + 7200 }), { key: rsa });
    const inside = await signToken(claims({ iat: NOW_S + skewS }), { key: rsa });
    const outside = await signToken(claims({ iat: NOW_S + skewS + 1 }), { key: rsa });
    expectDenial(now(verifier.verify(far, SOURCE)), 'token_issued_in_future', 401);
    expectPrincipal(now(verifier.verify(inside, SOURCE)));
    expectDenial(now(verifier.verify(outside, SOURCE)), 'token_issued_in_future');
  });

  it('uses each issuer its own skew (zero skew: expired at exp)', async () => {
    const { verifier } = setup({ issuers: [issuerRuntime(staticKeys(), { clockSkewMs: 0 })] });
    expectDenial(now(verifier.verify(await signToken(claims({ exp: NOW_S }), { key: rsa }), SOURCE)), 'token_expired');
    expectPrincipal(now(verifier.verify(await signToken(claims({ exp: NOW_S + 1 }), { key: rsa }), SOURCE)));
    expectDenial(now(verifier.verify(await signToken(claims({ nbf: NOW_S + 1 }), { key: rsa }), SOURCE)), 'token_not_yet_valid');
  });

  it('reads time from the injected clock', async () => {
    const fake = createFakeClock(T0);
    const { verifier } = setup({ fake, cacheMaxEntries: 0 });
    const token = await signToken(claims({ nbf: NOW_S + 120, iat: NOW_S, exp: NOW_S + 600 }), { key: rsa });
    expectDenial(now(verifier.verify(token, SOURCE)), 'token_not_yet_valid');
    fake.advance(120_000);
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    fake.advance(600_000);
    expectDenial(now(verifier.verify(token, SOURCE)), 'token_expired');
  });
});

describe('verify: issuer and audience', () => {
  it('refuses a token whose iss is not configured, even when signed by a configured key', async () => {
    const { verifier } = setup();
    const token = await signToken(claims({ iss: 'https://evil.example/realms/acme' }), { key: rsa });
    expectDenial(now(verifier.verify(token, SOURCE)), 'unknown_issuer', 401);
  });

  it('refuses a token without iss or with a non-string iss', async () => {
    const { verifier } = setup();
    expectDenial(now(verifier.verify(await signToken(without('iss'), { key: rsa }), SOURCE)), 'unknown_issuer');
    expectDenial(now(verifier.verify(await signToken(claims({ iss: 42 }), { key: rsa }), SOURCE)), 'unknown_issuer');
  });

  it('does not match iss loosely (trailing slash, case)', async () => {
    const { verifier } = setup();
    expectDenial(now(verifier.verify(await signToken(claims({ iss: `${ISS}/` }), { key: rsa }), SOURCE)), 'unknown_issuer');
    expectDenial(now(verifier.verify(await signToken(claims({ iss: ISS.toUpperCase() }), { key: rsa }), SOURCE)), 'unknown_issuer');
  });

  it('refuses a wrong audience, a missing one and an array with none configured', async () => {
    const { verifier } = setup();
    for (const aud of ['account', ['account', 'other'], [], undefined, 7]) {
      const c = claims({ aud });
      if (aud === undefined) delete c.aud;
      expectDenial(now(verifier.verify(await signToken(c, { key: rsa }), SOURCE)), 'audience_mismatch', 401);
    }
  });

  it('checks the audience of the issuer the token names, not of another issuer', async () => {
    const { verifier } = setup({
      issuers: [
        issuerRuntime(staticKeys()),
        issuerRuntime(staticKeys(), { name: 'globex', issuer: OTHER_ISS, audiences: new Set(['globex-api']) }),
      ],
    });
    const token = await signToken(claims({ iss: OTHER_ISS, aud: 'router' }), { key: rsa });
    expectDenial(now(verifier.verify(token, SOURCE)), 'audience_mismatch');
  });
});

describe('verify: keys and signatures', () => {
  it('answers unknown_kid for a kid the (static) key source does not know', async () => {
    const { verifier } = setup();
    const token = await signToken(claims(), { key: rsa, kid: 'nobody' });
    const r = await verifier.verify(token, SOURCE);
    expectDenial(r, 'unknown_kid', 401);
  });

  it('refuses a payload tampered with after signing', async () => {
    const { verifier } = setup();
    const [h, p, s] = splitToken(await signToken(claims(), { key: rsa }));
    const payload = decodeSegment(p);
    payload.sub = 'admin';
    payload.realm_access = { roles: ['admin', 'superuser'] };
    expectDenial(now(verifier.verify(assemble(h, segment(payload), s), SOURCE)), 'signature_invalid', 401);
  });

  it('refuses a header tampered with after signing', async () => {
    const { verifier } = setup();
    const [, p, s] = splitToken(await signToken(claims(), { key: rsa }));
    const header = segment({ alg: 'RS256', kid: rsa.kid, typ: 'at+jwt' });
    expectDenial(now(verifier.verify(assemble(header, p, s), SOURCE)), 'signature_invalid');
  });

  it('refuses a signature by another key that claims the same kid', async () => {
    const { verifier } = setup();
    const token = await signToken(claims(), { key: impostor, kid: rsa.kid });
    expectDenial(now(verifier.verify(token, SOURCE)), 'signature_invalid', 401);
  });

  it('refuses a token whose signature is empty or truncated', async () => {
    const { verifier } = setup();
    const [h, p, s] = splitToken(await signToken(claims(), { key: ec }));
    expectDenial(now(verifier.verify(assemble(h, p, ''), SOURCE)), 'signature_invalid');
    expectDenial(now(verifier.verify(assemble(h, p, s.slice(0, 40)), SOURCE)), 'signature_invalid');
  });

  it('answers jwks_unavailable (503) when the key source is unavailable', async () => {
    const sw = switchableKeys(staticKeys());
    sw.set('unavailable');
    const { verifier } = setup({ issuers: [issuerRuntime(sw.source)] });
    // get() says 'unavailable'; resolve() may join a fetch in flight, so the answer may be a promise.
    const r = await verifier.verify(await signToken(claims(), { key: rsa }), SOURCE);
    expectDenial(r, 'jwks_unavailable', 503);
  });

  it('answers jwks_unavailable when resolve() rejects', async () => {
    const inner = staticKeys();
    const keys: KeySource = { ...inner, get: () => 'unknown_kid', resolve: () => Promise.reject(new Error('boom')) };
    const { verifier } = setup({ issuers: [issuerRuntime(keys)] });
    const r = await verifier.verify(await signToken(claims(), { key: rsa }), SOURCE);
    expectDenial(r, 'jwks_unavailable', 503);
  });

  it('waits for resolve() when get() does not know the kid yet, then verifies', async () => {
    const inner = staticKeys();
    const keys: KeySource = { ...inner, get: () => 'unknown_kid', resolve: (kid, alg) => inner.resolve(kid, alg) };
    const { verifier } = setup({ issuers: [issuerRuntime(keys)] });
    const pending = verifier.verify(await signToken(claims(), { key: rsa }), SOURCE);
    expect(pending).toBeInstanceOf(Promise);
    expect(expectPrincipal(await pending).qualifiedSub).toBe('acme/alice');
  });
});

describe('verify: token structure', () => {
  it('refuses a JWE (five parts) as token_encrypted', () => {
    const { verifier } = setup();
    const jwe = assemble(segment({ alg: 'RSA-OAEP', enc: 'A256GCM' }), 'ZW5jcnlwdGVka2V5', 'aXY', 'Y2lwaGVydGV4dA', 'dGFn');
    expectDenial(now(verifier.verify(jwe, SOURCE)), 'token_encrypted', 401);
  });

  it('refuses a three-part token whose header says enc', async () => {
    const { verifier } = setup();
    const token = rawToken({ alg: 'RS256', enc: 'A256GCM', kid: rsa.kid }, claims(), 'c2ln');
    expectDenial(now(verifier.verify(token, SOURCE)), 'token_encrypted');
  });

  it.each([
    ['two parts', () => assemble(segment({ alg: 'RS256' }), segment(claims()))],
    ['four parts', () => assemble(segment({ alg: 'RS256' }), segment(claims()), 'c2ln', 'eHh4')],
    ['six parts', () => assemble('a', 'b', 'c', 'd', 'e', 'f')],
    ['one part', () => 'eyJhbGciOiJSUzI1NiJ9'],
    ['empty', () => ''],
    ['only dots', () => '..'],
    ['header not base64url', () => assemble('eyJhbGciOiJSUzI1NiJ9!', segment(claims()), 'c2ln')],
    ['header in base64 with +/', () => assemble(Buffer.from('{"alg":"RS256","x":"??>"}').toString('base64'), segment(claims()), 'c2ln')],
    ['payload not base64url', () => assemble(segment({ alg: 'RS256' }), 'e30*', 'c2ln')],
    ['signature not base64url', () => assemble(segment({ alg: 'RS256' }), segment(claims()), 'c2ln$')],
    ['header not JSON', () => assemble(b64url('not json'), segment(claims()), 'c2ln')],
    ['header a JSON array', () => assemble(segment(['alg', 'RS256']), segment(claims()), 'c2ln')],
    ['header a JSON string', () => assemble(segment('RS256'), segment(claims()), 'c2ln')],
    ['payload not JSON', () => assemble(segment({ alg: 'RS256' }), b64url('{"sub":'), 'c2ln')],
    ['payload JSON null', () => assemble(segment({ alg: 'RS256' }), segment(null), 'c2ln')],
    ['header without alg', () => rawToken({ typ: 'JWT' }, claims(), 'c2ln')],
    ['non-string alg', () => rawToken({ alg: 256 }, claims(), 'c2ln')],
    ['non-string kid', () => rawToken({ alg: 'RS256', kid: 7 }, claims(), 'c2ln')],
    ['impossible base64 length', () => assemble('eyJhbGciOiJSUzI1NiJ9a', segment(claims()), 'c2ln')],
  ])('refuses a malformed token: %s', (_name, build) => {
    const { verifier } = setup();
    expectDenial(now(verifier.verify(build(), SOURCE)), 'token_malformed', 401);
  });

  it('refuses an unknown crit header even with a valid signature', () => {
    const { verifier } = setup();
    const token = signRaw({ alg: 'RS256', kid: rsa.kid, crit: ['http://example.com/must'], 'http://example.com/must': true }, claims(), rsa.privateKey);
    expectDenial(now(verifier.verify(token, SOURCE)), 'crit_unsupported', 401);
  });
});

describe('verify: required claims', () => {
  it('refuses a token without exp', async () => {
    const { verifier } = setup();
    expectDenial(now(verifier.verify(await signToken(without('exp'), { key: rsa }), SOURCE)), 'claims_invalid', 401);
  });

  it.each([['string', String(NOW_S + 300)], ['null', null], ['object', { v: 1 }], ['boolean', true]])(
    'refuses a non-numeric exp (%s)',
    (_kind, exp) => {
      const { verifier } = setup();
      const token = signRaw({ alg: 'RS256', kid: rsa.kid }, claims({ exp }), rsa.privateKey);
      expectDenial(now(verifier.verify(token, SOURCE)), 'claims_invalid');
    },
  );

  it('refuses non-numeric nbf and iat', () => {
    const { verifier } = setup();
    const nbf = signRaw({ alg: 'RS256', kid: rsa.kid }, claims({ nbf: 'yesterday' }), rsa.privateKey);
    const iat = signRaw({ alg: 'RS256', kid: rsa.kid }, claims({ iat: '0' }), rsa.privateKey);
    expectDenial(now(verifier.verify(nbf, SOURCE)), 'claims_invalid');
    expectDenial(now(verifier.verify(iat, SOURCE)), 'claims_invalid');
  });

  it('refuses a token without sub, with an empty sub, or a non-string sub', async () => {
    const { verifier } = setup();
    expectDenial(now(verifier.verify(await signToken(without('sub'), { key: rsa }), SOURCE)), 'claims_invalid', 401);
    expectDenial(now(verifier.verify(await signToken(claims({ sub: '' }), { key: rsa }), SOURCE)), 'claims_invalid');
    expectDenial(now(verifier.verify(await signToken(claims({ sub: 12 }), { key: rsa }), SOURCE)), 'claims_invalid');
  });
});

describe('verify: cache', () => {
  it('serves the second verify of the same token from the cache', async () => {
    const { verifier, observer } = setup();
    const token = await signToken(claims(), { key: rsa });
    const first = expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(observer.misses).toBe(1);
    expect(observer.hits).toEqual([]);
    const second = expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(observer.hits).toEqual(['acme']);
    expect(observer.misses).toBe(1);
    expect(second.qualifiedSub).toBe(first.qualifiedSub);
    expect(verifier.cacheSize()).toBe(1);
  });

  it('reports the source of the current request for a cached token', async () => {
    const { verifier, observer } = setup();
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    const again = expectPrincipal(now(verifier.verify(token, 'cookie:access_token')));
    expect(observer.hits).toHaveLength(1);
    expect(again.source).toBe('cookie:access_token');
  });

  it('gives a cached principal its claims, decoded from the token when first read, through any source', async () => {
    const { verifier, observer } = setup();
    const all = claims({ email: 'alice@example.com', address: { country: 'NZ' }, groups: ['g1', 'g2'] });
    const token = await signToken(all, { key: rsa });
    const first = expectPrincipal(now(verifier.verify(token, SOURCE)));
    const cached = expectPrincipal(now(verifier.verify(token, SOURCE)));
    const viaCookie = expectPrincipal(now(verifier.verify(token, 'cookie:access_token')));
    expect(observer.hits).toHaveLength(2);
    expect(cached).toBe(first);
    for (const p of [first, viaCookie]) {
      expect(p.claims).toEqual(all);
      // Decoded once per principal, then kept.
      expect(p.claims).toBe(p.claims);
    }
    expect(viaCookie.source).toBe('cookie:access_token');
    expect(viaCookie.qualifiedSub).toBe('acme/alice');
    expect([...viaCookie.effectiveRoles].sort()).toEqual([...first.effectiveRoles].sort());
  });

  it('keeps no decoded claims in a cache entry until something reads them', async () => {
    const { verifier } = setup();
    const token = await signToken(claims({ note: 'x'.repeat(64) }), { key: rsa });
    const p = expectPrincipal(now(verifier.verify(token, SOURCE)));
    // No own property of the cached principal holds the parsed payload yet.
    const holdsPayload = (): boolean => Object.values(p).some((v) => typeof v === 'object' && v !== null && 'realm_access' in v);
    expect(holdsPayload()).toBe(false);
    expect(p.claims.note).toBe('x'.repeat(64));
    expect(holdsPayload()).toBe(true);
  });

  it('admission second-use (the default): a token is cached when it verifies the second time, then served from the cache', async () => {
    const fake = createFakeClock(T0);
    const observer = countingObserver();
    const verifier = createVerifier({ clock: fake.clock, issuers: [issuerRuntime(staticKeys())], roles: createRoleResolver(ROLE_GRAPH), cacheMaxEntries: 100, observer });
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(verifier.cacheSize()).toBe(0);
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(verifier.cacheSize()).toBe(1);
    expect(observer.misses).toBe(2);
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(observer.hits).toEqual(['acme', 'acme']);
    expect(observer.misses).toBe(2);
  });

  it('admission second-use: tokens used once never enter the cache, and do not push out a token in use', async () => {
    const { verifier, observer } = setup({ cacheMaxEntries: 4, cacheAdmission: 'second-use' });
    const hot = await signToken(claims({ sub: 'hot' }), { key: rsa });
    expectPrincipal(now(verifier.verify(hot, SOURCE)));
    expectPrincipal(now(verifier.verify(hot, SOURCE)));
    expect(verifier.cacheSize()).toBe(1);
    // Many single-use tokens: with first-use admission these would have evicted `hot` from a 4-entry LRU.
    for (let i = 0; i < 10; i++) expectPrincipal(now(verifier.verify(await signToken(claims({ sub: `once-${i}` }), { key: rsa }), SOURCE)));
    expect(verifier.cacheSize()).toBe(1);
    const hitsBefore = observer.hits.length;
    expect(expectPrincipal(now(verifier.verify(hot, SOURCE))).sub).toBe('hot');
    expect(observer.hits.length).toBe(hitsBefore + 1);
  });

  it('admission second-use forgets a first sighting after a window of cacheMaxEntries other new tokens', async () => {
    const { verifier } = setup({ cacheMaxEntries: 3, cacheAdmission: 'second-use' });
    const late = await signToken(claims({ sub: 'late' }), { key: rsa });
    expectPrincipal(now(verifier.verify(late, SOURCE)));
    for (let i = 0; i < 3; i++) expectPrincipal(now(verifier.verify(await signToken(claims({ sub: `other-${i}` }), { key: rsa }), SOURCE)));
    // Its first sighting has been forgotten: this is a first use again, not cached.
    expectPrincipal(now(verifier.verify(late, SOURCE)));
    expect(verifier.cacheSize()).toBe(0);
    expectPrincipal(now(verifier.verify(late, SOURCE)));
    expect(verifier.cacheSize()).toBe(1);
  });

  it('admission first-use caches every token that verifies', async () => {
    const { verifier } = setup({ cacheAdmission: 'first-use' });
    expectPrincipal(now(verifier.verify(await signToken(claims(), { key: rsa }), SOURCE)));
    expect(verifier.cacheSize()).toBe(1);
  });

  it('does not cache denials', async () => {
    const { verifier, observer } = setup();
    const token = await signToken(claims({ aud: 'other' }), { key: rsa });
    expectDenial(now(verifier.verify(token, SOURCE)), 'audience_mismatch');
    expectDenial(now(verifier.verify(token, SOURCE)), 'audience_mismatch');
    expect(observer.hits).toEqual([]);
    expect(observer.misses).toBe(2);
    expect(verifier.cacheSize()).toBe(0);
  });

  it('lets a cached entry expire with the token', async () => {
    const fake = createFakeClock(T0);
    const { verifier, observer } = setup({ fake });
    const token = await signToken(claims({ exp: NOW_S + 60 }), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    fake.advance(60_000 + SKEW_MS - 1);
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(observer.hits).toHaveLength(1);
    fake.advance(1);
    expectDenial(now(verifier.verify(token, SOURCE)), 'token_expired');
    expect(observer.hits).toHaveLength(1);
    expect(verifier.cacheSize()).toBe(0);
  });

  it('is bounded by cacheMaxEntries (least recently used goes first)', async () => {
    const { verifier, observer } = setup({ cacheMaxEntries: 2 });
    const tokens = await Promise.all(['a', 'b', 'c'].map((sub) => signToken(claims({ sub }), { key: ec })));
    for (const t of tokens) expectPrincipal(now(verifier.verify(t, SOURCE)));
    expect(verifier.cacheSize()).toBe(2);
    expect(observer.misses).toBe(3);
    // 'c' and 'b' are cached; 'a' was evicted
    expectPrincipal(now(verifier.verify(tokens[2] as string, SOURCE)));
    expect(observer.hits).toHaveLength(1);
    expectPrincipal(now(verifier.verify(tokens[0] as string, SOURCE)));
    expect(observer.misses).toBe(4);
    expect(verifier.cacheSize()).toBe(2);
  });

  it('caches nothing when cacheMaxEntries is 0', async () => {
    const { verifier, observer } = setup({ cacheMaxEntries: 0 });
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(observer.hits).toEqual([]);
    expect(verifier.cacheSize()).toBe(0);
  });

  it('denies a cached token with jwks_unavailable once the key source becomes unavailable', async () => {
    const sw = switchableKeys(staticKeys());
    const { verifier, observer } = setup({ issuers: [issuerRuntime(sw.source)] });
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    sw.set('unavailable');
    expectDenial(now(verifier.verify(token, SOURCE)), 'jwks_unavailable', 503);
    expect(observer.hits).toEqual([]);
    sw.set('normal');
    expectPrincipal(now(verifier.verify(token, SOURCE)));
  });

  it('does not keep trusting a cached token when its kid now names a different key', async () => {
    // The IdP replaced the key behind kid "rsa-1" (e.g. after a compromise): tokens of the old key are no longer provable.
    let current = rsa;
    const inner = staticKeys();
    const keys: KeySource = {
      ...inner,
      get: (kid, alg) => (kid === rsa.kid ? resolvedKeyOf(current) : inner.get(kid, alg)),
    };
    const { verifier } = setup({ issuers: [issuerRuntime(keys)] });
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    current = impostor;
    expectDenial(now(verifier.verify(token, SOURCE)), 'signature_invalid');
  });

  it('keeps the cache hit when a refetch rebuilt the same key as a new KeyObject', async () => {
    const inner = staticKeys();
    const keys: KeySource = {
      ...inner,
      get: (kid, alg) =>
        kid === rsa.kid
          ? { key: createPublicKey({ key: rsa.publicJwk as JsonWebKeyInput['key'], format: 'jwk' }), kty: 'RSA', kid }
          : inner.get(kid, alg),
    };
    const { verifier, observer } = setup({ issuers: [issuerRuntime(keys)] });
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expect(observer.hits).toHaveLength(2);
    expect(observer.misses).toBe(1);
  });

  it('keys the cache by the token\'s tail but serves an entry only to the very token it was made for', async () => {
    const { verifier, observer } = setup();
    const token = await signToken(claims(), { key: rsa });
    const [h, , s] = token.split('.') as [string, string, string];
    // Same signature (so same last characters), another payload: must not get alice's cached principal.
    const forged = assemble(h, segment(claims({ sub: 'mallory' })), s);
    expect(tokenCacheKey(forged)).toBe(tokenCacheKey(token));
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    expectDenial(now(verifier.verify(forged, SOURCE)), 'signature_invalid');
    expect(observer.hits).toEqual([]);
    expect(observer.misses).toBe(2);
    // the real token's entry is untouched by the forgery
    expect(expectPrincipal(now(verifier.verify(token, SOURCE))).sub).toBe('alice');
    expect(observer.hits).toEqual(['acme']);
    expect(verifier.cacheSize()).toBe(1);
    // dryRun (explain) too
    expectDenial(now(verifier.verify(forged, SOURCE, true)), 'signature_invalid');
    expect(verifier.cacheSize()).toBe(1);
  });

  it('leaves an entry to its own token: a token with the same tail neither uses nor removes it', async () => {
    const fake = createFakeClock(T0);
    const { verifier, observer } = setup({ fake });
    const token = await signToken(claims({ exp: NOW_S + 60 }), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    fake.advance(60_000 + SKEW_MS); // the cached entry is now expired: its own token would remove it
    const [h, , s] = token.split('.') as [string, string, string];
    const forged = assemble(h, segment(claims({ exp: NOW_S + 3600 })), s);
    expectDenial(now(verifier.verify(forged, SOURCE)), 'signature_invalid');
    expect(verifier.cacheSize()).toBe(1);
    expectDenial(now(verifier.verify(token, SOURCE)), 'token_expired');
    expect(verifier.cacheSize()).toBe(0);
    expect(observer.hits).toEqual([]);
  });

  it('uses short tokens whole as their cache key', () => {
    expect(tokenCacheKey('a.b.c')).toBe('a.b.c');
    const long = `${'h'.repeat(40)}.${'p'.repeat(40)}.${'s'.repeat(10)}0123456789abcdefghijklmnopqrstuv`;
    expect(tokenCacheKey(long)).toBe('0123456789abcdefghijklmnopqrstuv');
  });

  it('drops a cached token whose key was withdrawn', async () => {
    const sw = switchableKeys(staticKeys());
    const { verifier } = setup({ issuers: [issuerRuntime(sw.source)] });
    const token = await signToken(claims(), { key: rsa });
    expectPrincipal(now(verifier.verify(token, SOURCE)));
    sw.set('unknown_kid');
    expectDenial(await verifier.verify(token, SOURCE), 'unknown_kid');
    expect(verifier.cacheSize()).toBe(0);
  });
});
