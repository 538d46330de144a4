# Benchmark set-up 5: the same check as portcullis and Envoy's jwt_authn + rbac,
# written the way OPA-Envoy users write it.
#
# - Token: Authorization: Bearer <JWT>.
# - Verification: io.jwt.decode_verify against the realm's JWKS, with the
#   issuer and audience constraints (exp/nbf are checked by the builtin).
#   The JWKS comes from a DATA FILE (data.bench.jwks, written by bench/load.ts
#   from the same keys the JWKS endpoint serves), not from http.send: that is
#   the cheapest way to give OPA the keys, so it favours OPA.
# - Role: realm_access.roles must contain sandbox:invoke, on
#   POST /v1/sandboxes/{id}/invoke.
# - Answer: allowed, with the caller's sub in x-user-sub upstream.
package envoy.authz

import rego.v1

default allow := {"allowed": false, "http_status": 403}

bearer := t if {
	v := input.attributes.request.http.headers.authorization
	startswith(v, "Bearer ")
	t := substring(v, 7, -1)
}

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer, {
		"cert": data.bench.jwks,
		"iss": data.bench.issuer,
		"aud": data.bench.audience,
	})
	valid
}

allow := {"allowed": true, "headers": {"x-user-sub": claims.sub}} if {
	input.attributes.request.http.method == "POST"
	count(input.parsed_path) == 4
	input.parsed_path[0] == "v1"
	input.parsed_path[1] == "sandboxes"
	input.parsed_path[3] == "invoke"
	"sandbox:invoke" in claims.realm_access.roles
}
