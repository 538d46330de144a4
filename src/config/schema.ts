import { z } from 'zod';

/**
 * The configuration file's shape. Everything a user can write is here, with
 * its default; docs/configuration.md documents every key (a test checks that
 * each key below is mentioned there).
 */

const ADDRESS = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+|\*):(\d{1,5})$/;
const address = z.string().superRefine((s, ctx) => {
  const m = ADDRESS.exec(s);
  if (!m) ctx.addIssue({ code: 'custom', message: 'expected host:port, e.g. 127.0.0.1:9191 or [::1]:9191' });
  else if (Number(m[2]) > 65535) ctx.addIssue({ code: 'custom', message: 'port must be 0..65535' });
});

const SUPPORTED_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
export type Algorithm = (typeof SUPPORTED_ALGS)[number];

const algorithm = z.string().superRefine((v, ctx) => {
  if (v.toLowerCase() === 'none') {
    ctx.addIssue({ code: 'custom', message: '"none" is never allowed: unsigned tokens prove nothing' });
  } else if (/^HS/i.test(v)) {
    ctx.addIssue({
      code: 'custom',
      message: `${v} is not allowed: HMAC algorithms would let anyone holding the issuer's published key forge tokens`,
    });
  } else if (!(SUPPORTED_ALGS as readonly string[]).includes(v)) {
    ctx.addIssue({ code: 'custom', message: `unsupported algorithm "${v}"; supported: ${SUPPORTED_ALGS.join(', ')}` });
  }
});

const seconds = z.number().positive();

const jwksSettings = z
  .strictObject({
    refreshSeconds: seconds.default(300),
    maxStalenessSeconds: seconds.default(86_400),
    /** Must be positive: without a cooldown every token with a made-up kid would make us call the IdP. */
    kidMissCooldownSeconds: z.number().positive().default(30),
    timeoutMs: z.number().int().positive().default(5_000),
    retryMinSeconds: seconds.default(1),
  })
  .refine((j) => j.maxStalenessSeconds >= j.refreshSeconds, {
    message: 'maxStalenessSeconds must be at least refreshSeconds: keys would expire before the next refresh',
    path: ['maxStalenessSeconds'],
  })
  .prefault({});

/** A claim path: dotted string (`realm_access.roles`) or explicit segments (`[resource_access, my.client, roles]`). */
const claimPath = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

const EXCHANGE_SECRET_FORMS = ['clientSecret', 'clientSecretFile', 'clientSecretEnv', 'privateKeyJwt'] as const;
const issuerExchange = z
  .strictObject({
    clientId: z.string().min(1),
    clientSecret: z.string().min(1).optional(),
    clientSecretFile: z.string().min(1).optional(),
    clientSecretEnv: z.string().min(1).optional(),
    privateKeyJwt: z
      .strictObject({
        keyFile: z.string().min(1),
        alg: z.enum(['RS256', 'ES256', 'PS256']),
        kid: z.string().min(1).optional(),
      })
      .optional(),
    /** Default: the discovery document's `token_endpoint`. */
    tokenEndpoint: z.url({ protocol: /^https?$/ }).optional(),
    timeoutMs: z.number().int().positive().default(5_000),
  })
  .superRefine((e, ctx) => {
    const given = EXCHANGE_SECRET_FORMS.filter((k) => e[k] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        message: `exactly one of ${EXCHANGE_SECRET_FORMS.join(', ')} is needed${given.length > 1 ? ` (got ${given.join(' and ')})` : ''}`,
      });
    }
  });

const issuer = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'letters, digits, "_", "." and "-" only'),
  issuer: z.url(),
  jwksUri: z.url().optional(),
  discoveryUrl: z.url().optional(),
  audiences: z.array(z.string().min(1)).min(1, 'at least one audience: a token for another service must not be accepted here'),
  algorithms: z.array(algorithm).min(1).default(['RS256', 'ES256']),
  /** Where roles live in the token; defaults to Keycloak's realm roles and each audience's client roles. */
  roleClaims: z.array(claimPath).optional(),
  subjectClaim: z.string().min(1).default('sub'),
  clockSkewSeconds: z.number().nonnegative().optional(),
  jwks: jwksSettings,
  /** portcullis's own client at this issuer, for RFC 8693 token exchange (routes with `exchange`). */
  exchange: issuerExchange.optional(),
});

export const CREDENTIAL_SOURCE = /^(header|cookie|query):([A-Za-z0-9!#$%&'*+.^_`|~-]+)$/;
const credentialSource = z
  .string()
  .regex(CREDENTIAL_SOURCE, 'expected header:NAME, cookie:NAME or query:NAME');

const roleList = z.array(z.string().min(1)).min(1);
const roleRequirement = z.union([
  z.strictObject({ anyOf: roleList }),
  z.strictObject({ allOf: roleList }),
]);

const headerName = z.string().regex(/^[a-z0-9!#$%&'*+.^_`|~-]+$/, 'header names are lower-case tokens');
const headerTemplates = z.record(headerName, z.union([z.string(), z.null()]));

const routeExchange = z.strictObject({
  audience: z.string().min(1),
  scope: z.string().min(1).optional(),
  /** Header the exchanged token goes into. */
  header: headerName.default('authorization'),
  /** Auth scheme before the token; '' = the raw token. */
  scheme: z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]*$/, 'an auth scheme token (e.g. Bearer) or empty').default('Bearer'),
  /** What happens to the caller's own token upstream. */
  inbound: z.enum(['drop', 'keep', 'move']).default('drop'),
  moveTo: headerName.default('x-portcullis-original-authorization'),
  /** A token with less than this left is never injected; cached tokens are renewed this long before expiry. */
  marginSeconds: z.number().nonnegative().default(30),
});

/** Kubernetes names: a DNS label (namespace, plural), a DNS subdomain (group), a label key (`prefix/name`). */
const dnsLabel = z.string().max(63).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a lower-case DNS label (a-z, 0-9, "-")');
const dnsSubdomain = z
  .string()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'a lower-case DNS subdomain, e.g. agentcube.io');
const labelKey = z.string().superRefine((v, ctx) => {
  const slash = v.lastIndexOf('/');
  const prefix = slash >= 0 ? v.slice(0, slash) : undefined;
  const name = v.slice(slash + 1);
  const prefixOk = prefix === undefined || (prefix.length <= 253 && dnsSubdomain.safeParse(prefix).success);
  if (!prefixOk || name.length > 63 || !/^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/.test(name)) {
    ctx.addIssue({ code: 'custom', message: 'not a Kubernetes label key: [DNS-subdomain "/"] name of at most 63 letters, digits, "-", "_", "."' });
  }
});

/** A watched collection whose objects carry an owner label (a Sandbox custom resource, or Pods). */
const kubernetesResource = z.strictObject({
  /** What routes call it (`require.owner.resource`). */
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'letters, digits, "_", "." and "-" only'),
  /** API group; '' for the core group (pods). */
  group: z.union([z.literal(''), dnsSubdomain]),
  version: z.string().regex(/^v[0-9]+((alpha|beta)[0-9]+)?$/, 'a Kubernetes API version, e.g. v1 or v1alpha1'),
  /** Plural resource name, e.g. sandboxes, pods. */
  resource: dnsLabel,
  /** Watch one namespace; omitted = every namespace (routes then name the namespace). */
  namespace: dnsLabel.optional(),
  ownerLabel: labelKey.default('agentcube.io/owner'),
  /** While the watch is down, answer from the cache this long; then owner_unavailable. */
  maxStalenessSeconds: z.number().positive().default(300),
  fallbackGet: z
    .strictObject({
      enabled: z.boolean().default(true),
      perSecond: z.number().positive().default(5),
      timeoutMs: z.number().int().positive().default(2_000),
    })
    .prefault({}),
});

const kubernetesSection = z
  .strictObject({
    /** Omitted: in-cluster service account when KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG or ~/.kube/config. */
    kubeconfig: z.string().min(1).optional(),
    resources: z
      .array(kubernetesResource)
      .default([])
      .superRefine((list, ctx) => {
        const seen = new Set<string>();
        list.forEach((r, i) => {
          if (seen.has(r.name)) ctx.addIssue({ code: 'custom', message: `duplicate resource name "${r.name}"`, path: [i, 'name'] });
          seen.add(r.name);
        });
      }),
  })
  .prefault({});

const ownerRequirement = z.strictObject({
  /** A `kubernetes.resources[].name`. */
  resource: z.string().min(1),
  /** Template for the object's name. */
  name: z.string().min(1).default('{path.id}'),
  /** Template for its namespace, for resources watched across namespaces. */
  namespace: z.string().min(1).optional(),
  /** Template for what the owner label must equal; issuer-qualified because sub is unique only within a realm. */
  identity: z.string().min(1).default('{issuer.name}.{sub}'),
});

const route = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.:-]*$/, 'letters, digits, "_", ".", ":" and "-" only'),
  match: z
    .strictObject({
      hosts: z.array(z.string().min(1)).min(1).optional(),
      methods: z.array(z.string().regex(/^[A-Za-z]+$/, 'an HTTP method')).min(1).optional(),
      path: z.string().startsWith('/').optional(),
    })
    .prefault({}),
  /** `authenticated` (default): a valid token is required. `anonymous`: no credentials looked at. `deny`: always 403. */
  allow: z.enum(['authenticated', 'anonymous', 'deny']).default('authenticated'),
  issuers: z.array(z.string().min(1)).min(1).optional(),
  credentials: z.array(credentialSource).min(1).optional(),
  require: z
    .strictObject({
      roles: roleRequirement.optional(),
      /** Allowed peer workload SPIFFE IDs (exact, `.../prefix/*`, or `spiffe://td/*`). */
      peers: z.array(z.string().min(1)).min(1).optional(),
      /** Requirements evaluated in shadow mode: recorded and counted as would_deny, not enforced. */
      shadow: z.array(z.string().min(1)).min(1).optional(),
      /** The resource named in the path must be owned by the caller (see top-level `kubernetes`). */
      owner: ownerRequirement.optional(),
    })
    .prefault({}),
  headers: headerTemplates.optional(),
  /** The whole route in shadow mode: every denial is recorded and counted as would_deny; the request is allowed. */
  shadow: z.boolean().default(false),
  /** RFC 8693: swap the caller's token for one with this audience and inject it upstream. */
  exchange: routeExchange.optional(),
  /** The next hop: in jwt mode a minted hop token is injected (see top-level `hops`, `hopTokens`). */
  hop: z
    .strictObject({
      to: z.string().min(1),
      /** The target resource carried in the token's `target` claim. */
      target: z.string().default('{path.id}'),
    })
    .optional(),
});

const developmentIssuer = z
  .strictObject({
    enabled: z.boolean().default(false),
    name: z.string().default('dev'),
    audience: z.string().default('portcullis-dev'),
    maxTtlSeconds: z.number().int().positive().default(3_600),
    algorithm: z.enum(['ES256', 'RS256']).default('ES256'),
  })
  .prefault({});

export const configSchema = z.strictObject({
  listen: z
    .strictObject({
      grpc: address.default('0.0.0.0:9191'),
      http: z.union([address, z.literal('off')]).default('0.0.0.0:9192'),
      admin: address.default('127.0.0.1:9901'),
      /** Prefix Envoy's http_service adds (`path_prefix`); stripped before matching. */
      httpPathPrefix: z.string().default(''),
      /** HTTP mode: take the peer SPIFFE ID from x-forwarded-client-cert (only when Envoy sanitizes it: SANITIZE_SET). */
      httpTrustXfcc: z.boolean().default(false),
      /** mTLS on the gRPC and HTTP ext_authz listeners (Envoy → portcullis). */
      tls: z
        .strictObject({
          certFile: z.string().min(1),
          keyFile: z.string().min(1),
          caFile: z.string().min(1),
          /** SPIFFE ID patterns of the clients (Envoys) allowed to ask; omitted = any certificate the CA signed. */
          allowedClients: z.array(z.string().min(1)).min(1).optional(),
          reloadSeconds: z.number().positive().default(5),
        })
        .optional(),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      /** Fraction of allow decisions logged (denies are always logged). */
      decisionSampleRate: z.number().min(0).max(1).default(1),
    })
    .prefault({}),
  server: z
    .strictObject({
      shutdownGraceSeconds: z.number().nonnegative().default(15),
      /** Watch the config file and reload on change (SIGHUP always reloads). */
      watchConfig: z.boolean().default(true),
    })
    .prefault({}),
  defaults: z
    .strictObject({
      onNoRoute: z.enum(['deny', 'allow']).default('deny'),
      credentials: z.array(credentialSource).min(1).default(['header:authorization']),
      clockSkewSeconds: z.number().nonnegative().default(30),
      maxTokenBytes: z.number().int().positive().default(8_192),
      /** Inbound headers portcullis owns: removed from every allowed request so clients cannot spoof them. */
      identityHeaders: z.array(z.string().min(1)).default(['x-portcullis-*', 'x-user-*']),
      /** Headers set on every authenticated allow (route `headers` add to or override these; null removes one). */
      headers: headerTemplates.default({
        'x-portcullis-sub': '{sub}',
        'x-portcullis-tenant': '{issuer.name}',
        'x-portcullis-roles': '{roles}',
        'x-portcullis-route': '{route}',
      }),
      /** context_extensions key whose value names the route to use. */
      routeContextKey: z.string().min(1).default('route'),
      /** realm in WWW-Authenticate. */
      authRealm: z.string().default('portcullis'),
    })
    .prefault({}),
  /** The debug page and explain endpoint on the admin port. */
  debug: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** Decisions kept for the debug page (redacted summaries). */
      recentDecisions: z.number().int().nonnegative().max(100_000).default(500),
    })
    .prefault({}),
  tokenCache: z
    .strictObject({
      maxEntries: z.number().int().nonnegative().default(10_000),
      /** second-use: cache a token from its second verification on (single-use tokens never churn the cache). */
      admission: z.enum(['second-use', 'first-use']).default('second-use'),
    })
    .prefault({}),
  issuers: z.array(issuer).default([]),
  development: z
    .strictObject({
      issuer: developmentIssuer,
    })
    .prefault({}),
  /** Role inheritance: each role lists the roles it includes. */
  roles: z.record(z.string().min(1), z.array(z.string().min(1))).default({}),
  routes: z.array(route).default([]),
  /** Where owners of resources come from (route `require.owner`). */
  kubernetes: kubernetesSection,
  /** portcullis as the issuer of short-lived hop tokens (hops in jwt mode). */
  hopTokens: z
    .strictObject({
      issuer: z.url(),
      ttlSeconds: z.number().int().positive().max(3_600).default(60),
      /** Re-mint when less than this is left. */
      marginSeconds: z.number().int().nonnegative().default(10),
      /** In-memory keys are replaced this often; the previous key stays published. */
      rotationSeconds: z.number().int().positive().default(86_400),
      /** PEM EC P-256 private keys shared by all replicas (first signs, all are published); omit to generate in memory. */
      keyFiles: z.array(z.string().min(1)).min(1).optional(),
    })
    .refine((h) => h.marginSeconds < h.ttlSeconds, { message: 'marginSeconds must be less than ttlSeconds', path: ['marginSeconds'] })
    .optional(),
  /** Named next hops and how each is secured: mtls (Envoy's certificates) or jwt (a minted hop token). */
  hops: z
    .record(
      z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/),
      z.strictObject({
        mode: z.enum(['mtls', 'jwt']).default('mtls'),
        audience: z.string().min(1),
        header: z.string().regex(/^[a-z0-9-]+$/).default('authorization'),
      }),
    )
    .default({}),
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type IssuerConfig = Config['issuers'][number];
export type RouteConfig = Config['routes'][number];
