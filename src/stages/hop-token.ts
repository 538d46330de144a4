import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { LRUCache } from 'lru-cache';
import type { Registry } from 'prom-client';
import type { Config, RouteConfig } from '../config/schema.js';
import { compileTemplate, type CompiledTemplate } from '../config/template.js';
import { ConfigError, denial, PortcullisError, type ConfigIssue } from '../core/errors.js';
import type { Clock, Scheduler, TimerHandle } from '../core/types.js';
import type { Logger } from '../observability/logger.js';
import { createDeferredCounter, type BoundCount } from '../observability/metrics.js';
import type { RouteStage, StageFactory, StageResult } from '../pipeline/stage.js';
import type { StageModule } from './registry.js';

/**
 * Minted hop tokens: for latency-critical hops (sandbox daemons), portcullis
 * signs a short-lived JWT itself instead of relying on per-hop mTLS. Per hop,
 * `mode: mtls` (default; Envoy's mTLS carries the workload identity, nothing is
 * injected) or `mode: jwt` (a token for the hop's audience carrying the
 * caller's identity and the target resource, in `Authorization: Bearer`).
 *
 * Keys: generated in memory and rotated with overlap (the previous key stays
 * published for a token lifetime plus margin), or read from `keyFiles` so
 * several replicas sign with the same published keys. JWKS at
 * `GET /.well-known/jwks.json` on the admin port.
 */
interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: Record<string, unknown>;
  createdAt: number;
  /** When it stopped signing; it stays published until every token it signed has expired. */
  retiredAt?: number;
}

interface HopSettings {
  mode: 'mtls' | 'jwt';
  audience: string;
  header: string;
}

export interface HopTokenServices {
  clock: Clock;
  scheduler: Scheduler;
  logger: Logger;
  registry: Registry;
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

function generateKey(clock: Clock): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = `hop-${clock.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  return { kid, privateKey, publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' }, createdAt: clock.now() };
}

function keyFromFile(file: string, clock: Clock): SigningKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(readFileSync(file));
  } catch (err) {
    throw new PortcullisError('ERR_CONFIG_READ', `cannot read hop-token signing key ${file}: ${(err as Error).message}`);
  }
  if (privateKey.asymmetricKeyType !== 'ec' || privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new PortcullisError('ERR_CONFIG_INVALID', `hop-token signing key ${file} must be an EC P-256 key (ES256)`);
  }
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' });
  // A stable kid from the public key, so every replica publishes the same one.
  const kid = `hop-${Buffer.from(`${jwk.x}${jwk.y}`).toString('base64url').slice(0, 16)}`;
  return { kid, privateKey, publicJwk: { ...jwk, kid, alg: 'ES256', use: 'sig' }, createdAt: clock.now() };
}

export function createHopTokenModule(services?: HopTokenServices): StageModule & {
  jwks(): { keys: Record<string, unknown>[] };
} {
  let keys: SigningKey[] = [];
  let keySpec = '';
  let rotationTimer: TimerHandle | undefined;
  let settings: Config['hopTokens'] | undefined;
  let pending: { settings: Config['hopTokens'] | undefined; keys: SigningKey[] | undefined; spec: string } | undefined;
  const cache = new LRUCache<string, { header: string; value: string; refreshAt: number }>({ max: 10_000 });
  const minted = services
    ? createDeferredCounter({ name: 'portcullis_hop_tokens_total', help: 'Hop tokens by hop and result (minted|cached)', labelNames: ['hop', 'result'], registers: [services.registry] })
    : undefined;
  /** The `cached` count of each hop, bound on first use (hops come from configuration). */
  const cachedCounts = new Map<string, BoundCount>();
  function countCached(hop: string): void {
    if (!minted) return;
    let c = cachedCounts.get(hop);
    if (c === undefined) {
      c = minted.bind({ hop, result: 'cached' });
      cachedCounts.set(hop, c);
    }
    c.inc();
  }

  function rotate(): void {
    if (!services || !settings || settings.keyFiles) return;
    const now = services.clock.now();
    const next = generateKey(services.clock);
    // Retired keys stay published until the last token they signed has expired (ttl + a minute of skew).
    const keepMs = (settings.ttlSeconds + 60) * 1000;
    const retired = keys.map((k) => (k.retiredAt === undefined ? { ...k, retiredAt: now } : k)).filter((k) => now - (k.retiredAt ?? now) < keepMs);
    keys = [next, ...retired];
    cache.clear();
    services.logger.info({ kid: next.kid }, 'hop-token signing key rotated');
    scheduleRotation();
  }

  function scheduleRotation(): void {
    if (!services || !settings || settings.keyFiles) return;
    if (rotationTimer) services.scheduler.clearTimeout(rotationTimer);
    rotationTimer = services.scheduler.setTimeout(rotate, settings.rotationSeconds * 1000);
  }

  function mint(hop: string, h: HopSettings, sub: string, tenant: string, qualified: string, target: string, dryRun: boolean): { header: string; value: string } {
    if (!services || !settings) throw new Error('hop tokens are not configured');
    const key = keys[0];
    if (!key) throw new Error('no hop-token signing key');
    // Everything that goes into the token is in the key, so a reload that changes the issuer or a hop's audience never serves an old token.
    const cacheKey = `${settings.issuer}\u0000${hop}\u0000${h.audience}\u0000${h.header}\u0000${qualified}\u0000${target}`;
    const now = services.clock.now();
    const hit = cache.get(cacheKey);
    if (hit && hit.refreshAt > now) {
      if (!dryRun) countCached(hop);
      return hit;
    }
    const iat = Math.floor(now / 1000);
    const exp = iat + settings.ttlSeconds;
    const header = b64({ alg: 'ES256', typ: 'JWT', kid: key.kid });
    const payload = b64({
      iss: settings.issuer,
      sub,
      aud: h.audience,
      iat,
      nbf: iat,
      exp,
      jti: randomBytes(12).toString('base64url'),
      tenant,
      qualified_sub: qualified,
      ...(target ? { target } : {}),
    });
    const input = `${header}.${payload}`;
    const sig = sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url');
    const out = { header: h.header, value: `Bearer ${input}.${sig}`, refreshAt: (exp - settings.marginSeconds) * 1000 };
    if (!dryRun) {
      cache.set(cacheKey, out);
      minted?.counter.inc({ hop, result: 'minted' });
    }
    return out;
  }

  const factory: StageFactory = {
    name: 'hop',
    compile(route: RouteConfig, at: string, config: Config) {
      const hop = route.hop;
      if (!hop) return undefined;
      const h = config.hops[hop.to];
      const issues: ConfigIssue[] = [];
      if (!h) issues.push({ path: `${at}.hop.to`, message: `unknown hop "${hop.to}"; configured: ${Object.keys(config.hops).join(', ') || '(none)'}` });
      const params = new Set([...(route.match.path ?? '').matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1] as string));
      const t = compileTemplate(hop.target, params);
      if (!t.ok) issues.push({ path: `${at}.hop.target`, message: t.message });
      if (h?.mode === 'jwt' && !config.hopTokens) issues.push({ path: `${at}.hop`, message: `hop "${hop.to}" is in jwt mode but hopTokens is not configured` });
      if (h && route.exchange && h.mode === 'jwt' && (route.exchange.header ?? 'authorization') === h.header) {
        issues.push({ path: `${at}.hop`, message: `the exchanged token and the hop token would both go into ${h.header}` });
      }
      if (issues.length > 0 || !h || !t.ok) return { issues };
      const target: CompiledTemplate = t.template;
      const name = hop.to;
      const stage: RouteStage = {
        name: 'hop',
        run(ctx): StageResult {
          if (h.mode === 'mtls') {
            if (ctx.trace) ctx.trace.hop = { to: name, mode: 'mtls', note: 'identity carried by the hop mTLS certificate; nothing injected' };
            return undefined;
          }
          const p = ctx.principal;
          if (!p) return undefined;
          const tgt = target.render({ principal: p, route: ctx.routeName, params: ctx.params });
          if (tgt.length === 0) {
            // A hop token without a target would be good for every resource behind the hop.
            if (ctx.trace) ctx.trace.hop = { to: name, mode: 'jwt', result: 'no_target' };
            return denial('malformed_request', `the ${name} hop token needs a target resource, and this request names none`);
          }
          const m = mint(name, h, p.sub, p.issuerName, p.qualifiedSub, tgt, ctx.dryRun === true);
          if (ctx.trace) ctx.trace.hop = { to: name, mode: 'jwt', audience: h.audience, target: tgt, header: m.header };
          return { headers: [{ name: m.header, value: m.value }], metadata: { hop: name } };
        },
      };
      return { phase: 'after', stage };
    },
  };

  return {
    factory,
    // prepare() only computes: the candidate config may still be refused by another
    // module, so nothing live changes before activated().
    async prepare(config) {
      pending = undefined;
      if (!services) return;
      const next = config.hopTokens;
      const spec = JSON.stringify(next?.keyFiles ?? null);
      let newKeys: SigningKey[] | undefined;
      if (next && (spec !== keySpec || keys.length === 0)) {
        try {
          newKeys = next.keyFiles ? next.keyFiles.map((f) => keyFromFile(f, services.clock)) : [generateKey(services.clock)];
        } catch (err) {
          throw new ConfigError([{ path: 'hopTokens.keyFiles', message: (err as Error).message }]);
        }
      }
      pending = { settings: next, keys: newKeys, spec };
    },
    activated() {
      if (!services || !pending) return;
      const p = pending;
      pending = undefined;
      const changed = JSON.stringify(p.settings) !== JSON.stringify(settings);
      settings = p.settings;
      if (p.keys) {
        // Keys that stop signing stay published until the tokens they signed have expired.
        const now = services.clock.now();
        const keepMs = ((settings?.ttlSeconds ?? 0) + 60) * 1000;
        const retired = keys
          .map((k) => (k.retiredAt === undefined ? { ...k, retiredAt: now } : k))
          .filter((k) => now - (k.retiredAt ?? now) < keepMs);
        keys = [...p.keys, ...retired];
        keySpec = p.spec;
        if (rotationTimer) services.scheduler.clearTimeout(rotationTimer);
        rotationTimer = undefined;
        scheduleRotation();
      }
      if (changed || p.keys) cache.clear();
    },
    async stop() {
      if (rotationTimer && services) services.scheduler.clearTimeout(rotationTimer);
    },
    jwks: () => {
      const now = services?.clock.now() ?? 0;
      const keepMs = ((settings?.ttlSeconds ?? 0) + 60) * 1000;
      return { keys: keys.filter((k) => k.retiredAt === undefined || now - k.retiredAt < keepMs).map((k) => k.publicJwk) };
    },
  };
}
