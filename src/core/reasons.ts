/**
 * Every deny carries exactly one of these codes. The list is closed: the
 * reason header, the JSON body, the decision log line and the
 * `portcullis_decisions_total{reason}` label all use these strings.
 * docs/decisions.md documents each one; a test keeps the two in step.
 */
export const REASONS = {
  // 400: the request itself is unusable
  malformed_request: 400,
  conflicting_credentials: 400,
  // 401: no usable credentials
  missing_credentials: 401,
  token_too_large: 401,
  token_malformed: 401,
  token_encrypted: 401,
  unknown_issuer: 401,
  issuer_not_allowed: 401,
  alg_not_allowed: 401,
  crit_unsupported: 401,
  unknown_kid: 401,
  signature_invalid: 401,
  token_expired: 401,
  token_not_yet_valid: 401,
  token_issued_in_future: 401,
  audience_mismatch: 401,
  claims_invalid: 401,
  // 403: the caller is known (or the request is understood) but not allowed
  no_route: 403,
  route_denied: 403,
  missing_role: 403,
  peer_missing: 403,
  peer_not_allowed: 403,
  not_owner: 403,
  resource_not_found: 403,
  // 503: a dependency this decision needs is unavailable
  jwks_unavailable: 503,
  owner_unavailable: 503,
  exchange_failed: 503,
  shutting_down: 503,
  // 500: a bug; still a deny, never an allow
  internal_error: 500,
} as const;

export type ReasonCode = keyof typeof REASONS;
export type DenyStatus = (typeof REASONS)[ReasonCode];

export function statusOf(code: ReasonCode): DenyStatus {
  return REASONS[code];
}

export const REASON_CODES = Object.keys(REASONS) as ReasonCode[];
