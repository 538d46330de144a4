import type { KeyObject } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { KeySource, ResolvedKey } from '../adapters/oidc/key-source.js';
import { denial, isDenial, type Denial } from '../core/errors.js';
import type { IssuerConfig } from '../config/schema.js';
import type { Clock, Principal } from '../core/types.js';
import { createJwsCodec, type JwsCodec, type ParsedJws } from './jws.js';
import { createRoleInterner, extractRoles, type RoleResolver } from './roles.js';

/** One configured issuer (a Keycloak realm = one tenant), ready for the hot path. */
export interface IssuerRuntime {
  name: string;
  issuer: string;
  audiences: ReadonlySet<string>;
  algorithms: ReadonlySet<string>;
  roleClaims: readonly (readonly string[])[];
  subjectClaim: string;
  clockSkewMs: number;
  keys: KeySource;
}

/** Role claim paths of an issuer: as configured, or Keycloak's realm roles plus client roles of each audience. */
export function roleClaimPaths(i: IssuerConfig): string[][] {
  if (i.roleClaims) return i.roleClaims.map((p) => (Array.isArray(p) ? p : p.split('.')));
  return [['realm_access', 'roles'], ...i.audiences.map((a) => ['resource_access', a, 'roles'])];
}

/** The hot-path form of one configured issuer, with its key source. */
export function issuerRuntimeOf(i: IssuerConfig, defaultClockSkewSeconds: number, keys: KeySource): IssuerRuntime {
  return {
    name: i.name,
    issuer: i.issuer,
    audiences: new Set(i.audiences),
    algorithms: new Set(i.algorithms),
    roleClaims: roleClaimPaths(i),
    subjectClaim: i.subjectClaim,
    clockSkewMs: (i.clockSkewSeconds ?? defaultClockSkewSeconds) * 1000,
    keys,
  };
}

export type VerifyResult = Principal | Denial;

export interface VerifyObserver {
  cacheHit(issuer: string): void;
  cacheMiss(): void;
}

export interface Verifier {
  /** Synchronous when the token is cached or the key is known; a promise only when a key must be fetched. */
  /** `dryRun` (explain): no cache writes, no metrics, no key refetch. */
  verify(token: string, source: string, dryRun?: boolean): VerifyResult | Promise<VerifyResult>;
  /** Issuer name of a token's `iss`, without verifying anything (for traces and fall-through ranking). */
  issuerNameOf(iss: string): string | undefined;
  cacheSize(): number;
}

export interface VerifierDeps {
  clock: Clock;
  issuers: readonly IssuerRuntime[];
  roles: RoleResolver;
  cacheMaxEntries: number;
  /**
   * Which verified tokens the cache takes: `second-use` (the default) caches a
   * token the second time it verifies within a window of `cacheMaxEntries`
   * other new tokens, `first-use` every token that verifies.
   */
  cacheAdmission?: CacheAdmission;
  observer?: VerifyObserver;
}

export type CacheAdmission = 'first-use' | 'second-use';

/**
 * The principal of a verified token, and the token cache's entry for it.
 *
 * Its claims are not kept: `claims` decodes them again from the token the
 * first time something reads them (a `{claims.NAME}` header template), and
 * keeps them from then on. The cache's entries live for thousands of
 * decisions, so each survives the young-generation collections that happen
 * meanwhile and is copied by them, and then moved to the old generation: the
 * parsed payload is a dozen small objects (an object per nesting level, an
 * array per list, a string per value) and was most of that copying. With many
 * different tokens, young-generation pauses were 4 ms at the median and set
 * the p99 latency (docs/design/performance.md §6).
 *
 * The key that verified the signature and the issuer it belongs to ride along
 * for the cache (a cached token is trusted only while its issuer still has
 * that key); they are not part of `Principal`.
 */
class VerifiedPrincipal implements Principal {
  private decodedClaims: Readonly<Record<string, unknown>> | undefined = undefined;
  constructor(
    readonly issuerName: string,
    readonly issuer: string,
    readonly sub: string,
    readonly qualifiedSub: string,
    readonly roles: readonly string[],
    readonly effectiveRoles: ReadonlySet<string>,
    readonly token: string,
    readonly expiresAt: number,
    readonly source: string,
    readonly kid: string | undefined,
    readonly alg: string,
    readonly runtime: IssuerRuntime,
    public key: KeyObject,
    /** The verifier's codec, which decoded the payload once already (the token verified, so it decodes). */
    private readonly codec: JwsCodec,
  ) {}

  get claims(): Readonly<Record<string, unknown>> {
    this.decodedClaims ??= this.codec.payload(this.token) ?? {};
    return this.decodedClaims;
  }

  /** The same principal found through another credential source. */
  withSource(source: string): VerifiedPrincipal {
    return new VerifiedPrincipal(
      this.issuerName,
      this.issuer,
      this.sub,
      this.qualifiedSub,
      this.roles,
      this.effectiveRoles,
      this.token,
      this.expiresAt,
      source,
      this.kid,
      this.alg,
      this.runtime,
      this.key,
      this.codec,
    );
  }
}

/**
 * The token cache is keyed by the token's last TOKEN_KEY_CHARS characters (the
 * end of its signature), not by the whole token: V8 hashes a string key in full
 * the first time it is looked up, and every request brings a new string, so a
 * whole-token key costs a hash over ~1 KB per decision, hit or miss. An entry
 * is used only when its principal's token equals the presented one exactly;
 * two different tokens that end alike (a signature copied onto another
 * payload) are simply a miss for the one that is not cached.
 */
const TOKEN_KEY_CHARS = 32;

export function tokenCacheKey(token: string): string {
  return token.length > TOKEN_KEY_CHARS ? token.slice(-TOKEN_KEY_CHARS) : token;
}

/**
 * The token cache's admission filter: the "doorkeeper" of TinyLFU (Einziger,
 * Friedman, Manes: "TinyLFU: A Highly Efficient Cache Admission Policy").
 *
 * A token that verifies is cached only if it verified once before within the
 * last `window` first sightings. Tokens used once, or so rarely that they would
 * be evicted before their next use, then cost no cache insert and no eviction,
 * and never push out tokens that are in use: with 20,000 tokens cycling
 * through a 10,000-entry LRU every entry used to be inserted, evicted unused
 * and collected from the old generation, which made young-generation pauses
 * several milliseconds long (docs/design/performance.md §8). A token in use
 * is cached from its second request on; the price is one more verification per
 * token, not per request.
 *
 * A Bloom filter over the token's last characters (its signature: random),
 * 16 bits per token of the window and 4 probes, cleared after `window` first
 * sightings. A Bloom filter never forgets a token it holds, so every token that
 * comes back within the window is admitted. (A direct-mapped table of
 * fingerprints, the first version, did forget: two tokens sharing a slot
 * overwrote each other, and when both were in use neither was ever cached —
 * about 30 of 1,000 users, each paying a signature check on every request.)
 * A false positive (≈ 0.2 % when the window is full) only caches a token on
 * its first use, as without the filter; the cache itself still keys and
 * compares whole tokens.
 *
 * Exported for its unit tests; the verifier is its only user.
 */
export interface Doorkeeper {
  /** True when `token` was seen since the last clear; otherwise remembers it. */
  admit(token: string): boolean;
}

const FINGERPRINT_CHARS = 24;
const DOORKEEPER_PROBES = 4;

export function createDoorkeeper(window: number): Doorkeeper {
  let bits = 1024;
  while (bits < 16 * window) bits *= 2;
  const words = new Int32Array(bits >>> 5);
  const mask = bits - 1;
  let inserted = 0;
  return {
    admit(token) {
      // FNV-1a over the end of the signature, and a second hash from it (murmur3's
      // finaliser): the probes are h1 + i·h2 (Kirsch and Mitzenmacher).
      let h1 = 0x811c9dc5;
      for (let i = Math.max(0, token.length - FINGERPRINT_CHARS); i < token.length; i++) {
        h1 ^= token.charCodeAt(i);
        h1 = Math.imul(h1, 0x01000193);
      }
      let h2 = h1 ^ (h1 >>> 16);
      h2 = Math.imul(h2, 0x85ebca6b);
      h2 ^= h2 >>> 13;
      h2 = Math.imul(h2, 0xc2b2ae35);
      h2 = (h2 ^ (h2 >>> 16)) | 1;
      let present = true;
      for (let i = 0; i < DOORKEEPER_PROBES; i++) {
        const bit = (h1 + Math.imul(i, h2)) & mask;
        const word = bit >>> 5;
        const flag = 1 << (bit & 31);
        const w = words[word] as number;
        if ((w & flag) === 0) {
          present = false;
          words[word] = w | flag;
        }
      }
      if (present) return true;
      if (++inserted >= window) {
        words.fill(0);
        inserted = 0;
      }
      return false;
    },
  };
}

function numericClaim(payload: Readonly<Record<string, unknown>>, name: string): number | undefined | Denial {
  const v = payload[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) return denial('claims_invalid', `claim "${name}" is not a number`);
  return v;
}

export function createVerifier(deps: VerifierDeps): Verifier {
  const { clock, roles, observer } = deps;
  const byIss = new Map<string, IssuerRuntime>();
  for (const i of deps.issuers) byIss.set(i.issuer, i);
  const codec = createJwsCodec();
  const heldRoles = createRoleInterner(roles);
  const cache =
    deps.cacheMaxEntries > 0 ? new LRUCache<string, VerifiedPrincipal>({ max: deps.cacheMaxEntries }) : undefined;
  const doorkeeper = cache && deps.cacheAdmission !== 'first-use' ? createDoorkeeper(deps.cacheMaxEntries) : undefined;

  function checkClaims(parsed: ParsedJws, issuer: IssuerRuntime, key: KeyObject, token: string, source: string): VerifiedPrincipal | Denial {
    const p = parsed.payload;
    const now = clock.now();
    const skew = issuer.clockSkewMs;
    const exp = numericClaim(p, 'exp');
    if (isDenial(exp)) return exp;
    if (exp === undefined) return denial('claims_invalid', 'token has no "exp" claim; tokens without expiry are not accepted');
    if (now - skew >= exp * 1000) return denial('token_expired', 'token has expired');
    const nbf = numericClaim(p, 'nbf');
    if (isDenial(nbf)) return nbf;
    if (nbf !== undefined && now + skew < nbf * 1000) return denial('token_not_yet_valid', 'token is not valid yet ("nbf")');
    const iat = numericClaim(p, 'iat');
    if (isDenial(iat)) return iat;
    if (iat !== undefined && now + skew < iat * 1000) return denial('token_issued_in_future', 'token was issued in the future ("iat")');
    const aud = p.aud;
    let audOk = false;
    if (typeof aud === 'string') audOk = issuer.audiences.has(aud);
    else if (Array.isArray(aud)) for (const a of aud) if (typeof a === 'string' && issuer.audiences.has(a)) audOk = true;
    if (!audOk) return denial('audience_mismatch', `token audience is not one of: ${[...issuer.audiences].join(', ')}`);
    const sub = p[issuer.subjectClaim];
    if (typeof sub !== 'string' || sub.length === 0) {
      return denial('claims_invalid', `token has no "${issuer.subjectClaim}" claim`);
    }
    const held = heldRoles.hold(extractRoles(p, issuer.roleClaims));
    return new VerifiedPrincipal(
      issuer.name,
      issuer.issuer,
      sub,
      `${issuer.name}/${sub}`,
      held.roles,
      held.effectiveRoles,
      token,
      exp * 1000,
      source,
      parsed.kid,
      parsed.alg,
      issuer,
      key,
      codec,
    );
  }

  function finish(parsed: ParsedJws, issuer: IssuerRuntime, key: ResolvedKey, token: string, source: string, dryRun: boolean): VerifyResult {
    if (!codec.verify(parsed, key.key)) return denial('signature_invalid', 'token signature does not verify');
    const result = checkClaims(parsed, issuer, key.key, token, source);
    if (isDenial(result)) return result;
    if (cache && !dryRun && (doorkeeper === undefined || doorkeeper.admit(token))) cache.set(tokenCacheKey(token), result);
    return result;
  }

  function keyDenial(issuer: IssuerRuntime, lookup: 'unknown_kid' | 'unavailable', kid: string | undefined): Denial {
    return lookup === 'unavailable'
      ? denial('jwks_unavailable', `signing keys of issuer "${issuer.name}" are not available`)
      : denial('unknown_kid', `no signing key ${kid === undefined ? 'without kid' : JSON.stringify(kid.slice(0, 64))} for this algorithm at issuer "${issuer.name}"`);
  }

  return {
    verify(token, source, dryRun = false) {
      if (cache) {
        const ck = tokenCacheKey(token);
        const found = cache.peek(ck);
        // Only this very token's entry counts (see tokenCacheKey).
        const hit = found !== undefined && found.token === token ? found : undefined;
        if (hit) {
          if (!dryRun) cache.get(ck); // recency, as a get() of the token did before
          if (clock.now() - hit.runtime.clockSkewMs < hit.expiresAt) {
            // A key that has since been withdrawn (or keys gone stale) ends the cached trust too.
            const k = hit.runtime.keys.get(hit.kid, hit.alg);
            // Same kid must still mean the same key (a refetch may build new KeyObjects for it).
            if (typeof k === 'object' && k.key !== hit.key && k.key.equals(hit.key)) hit.key = k.key;
            if (typeof k === 'object' && k.key === hit.key) {
              if (!dryRun) observer?.cacheHit(hit.issuerName);
              return hit.source === source ? hit : hit.withSource(source);
            }
            if (k === 'unavailable') return keyDenial(hit.runtime, k, hit.kid);
          }
          if (!dryRun) cache.delete(ck);
        }
      }
      if (!dryRun) observer?.cacheMiss();
      const jws = codec.parse(token);
      if (isDenial(jws)) return jws;
      const iss = jws.payload.iss;
      if (typeof iss !== 'string') return denial('unknown_issuer', 'token has no "iss" claim');
      const issuer = byIss.get(iss);
      if (!issuer) return denial('unknown_issuer', 'token issuer is not configured');
      if (!issuer.algorithms.has(jws.alg)) {
        return denial('alg_not_allowed', `algorithm ${JSON.stringify(jws.alg.slice(0, 20))} is not allowed for issuer "${issuer.name}"`);
      }
      const key = issuer.keys.get(jws.kid, jws.alg);
      if (typeof key === 'object') return finish(jws, issuer, key, token, source, dryRun);
      // 'unavailable' still goes through resolve(): it joins a fetch already in flight (the
      // first one after start), and answers at once otherwise.
      if (dryRun) return keyDenial(issuer, key, jws.kid);
      return issuer.keys.resolve(jws.kid, jws.alg).then(
        (k) => (typeof k === 'object' ? finish(jws, issuer, k, token, source, false) : keyDenial(issuer, k, jws.kid)),
        () => keyDenial(issuer, 'unavailable', jws.kid),
      );
    },
    issuerNameOf(iss) {
      return byIss.get(iss)?.name;
    },
    cacheSize() {
      return cache?.size ?? 0;
    },
  };
}
