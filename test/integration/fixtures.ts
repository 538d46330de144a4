import type { JwksServer } from '../helpers/jwks-server.js';
import { issuerEntry, LOOPBACK_LISTEN } from './harness.js';

/**
 * The configuration most integration tests run: two tenants (two issuers,
 * each its own JWKS server), role inheritance and a small route table that
 * covers every stage the core has.
 */
export const ROUTES = [
  {
    name: 'sandbox-invoke',
    match: { methods: ['POST'], path: '/v1/sandboxes/{id}/invoke' },
    require: { roles: { anyOf: ['sandbox:invoke'] } },
    headers: { 'x-user-sub': '{sub}', 'x-user-tenant': '{issuer.name}', 'x-user-sandbox': '{path.id}' },
  },
  // Authenticated, no role, only the default x-portcullis-* headers: an inbound x-user-sub is a spoof to remove.
  { name: 'profile', match: { methods: ['GET'], path: '/v1/profile' } },
  { name: 'admin', match: { path: '/admin/**' }, require: { roles: { allOf: ['admin'] } } },
  { name: 'tenant-b-only', match: { path: '/v1/b/{id}' }, issuers: ['tenant-b'] },
  { name: 'health', match: { path: '/healthz' }, allow: 'anonymous' },
  { name: 'closed', match: { path: '/closed' }, allow: 'deny' },
];

export const ROLE_INHERITANCE = { admin: ['sandbox:manage'], 'sandbox:manage': ['sandbox:invoke'] };

export function twoTenantConfig(a: JwksServer, b: JwksServer, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: { ...LOOPBACK_LISTEN },
    server: { watchConfig: false, shutdownGraceSeconds: 5 },
    issuers: [issuerEntry('tenant-a', a), issuerEntry('tenant-b', b)],
    roles: ROLE_INHERITANCE,
    routes: ROUTES,
    ...extra,
  };
}

/** Keycloak-shaped claims: realm roles in realm_access.roles. */
export function userClaims(sub: string, roles: string[] = []): Record<string, unknown> {
  return { sub, realm_access: { roles } };
}
