import { describe, expect, it } from 'vitest';
import { denyBody, toCheckInput, toCheckResponse } from '../../../../src/adapters/envoy/grpc-mapping.js';
import type { Allow, Deny } from '../../../../src/core/types.js';
import type { CheckRequest__Output } from '../../../../src/generated/envoy/service/auth/v3/CheckRequest.js';
import type { AttributeContext__Output } from '../../../../src/generated/envoy/service/auth/v3/AttributeContext.js';
import type { HeaderValue__Output } from '../../../../src/generated/envoy/config/core/v3/HeaderValue.js';

type HttpRequest = NonNullable<NonNullable<AttributeContext__Output['request']>['http']>;

function hv(key: string, value: string, raw = false): HeaderValue__Output {
  return raw ? { key, value: '', raw_value: Buffer.from(value) } : { key, value, raw_value: Buffer.alloc(0) };
}

function httpRequest(over: Partial<HttpRequest> = {}): HttpRequest {
  return {
    id: '1',
    method: 'POST',
    headers: {},
    header_map: null,
    path: '/v1/sandboxes/sb-1/invoke',
    host: 'router.example',
    scheme: 'https',
    query: '',
    fragment: '',
    size: '0',
    protocol: 'HTTP/1.1',
    body: '',
    raw_body: Buffer.alloc(0),
    ...over,
  };
}

function checkRequest(http: HttpRequest | null, over: Partial<AttributeContext__Output> = {}): CheckRequest__Output {
  return {
    attributes: {
      source: null,
      destination: null,
      request: { time: null, http },
      context_extensions: {},
      metadata_context: null,
      tls_session: null,
      route_metadata_context: null,
      ...over,
    },
  };
}

function peer(principal: string): NonNullable<AttributeContext__Output['source']> {
  return { address: null, service: '', labels: {}, principal, certificate: '' };
}

describe('toCheckInput', () => {
  it('maps method, host, path, headers and context extensions', () => {
    const input = toCheckInput(
      checkRequest(httpRequest({ headers: { Authorization: 'Bearer t', 'x-a': '1' } }), {
        context_extensions: { route: 'invoke', other: 'x' },
        source: peer('spiffe://cluster.local/ns/a/sa/router'),
      }),
    );
    expect(input).toBeDefined();
    expect(input?.method).toBe('POST');
    expect(input?.host).toBe('router.example');
    expect(input?.path).toBe('/v1/sandboxes/sb-1/invoke');
    expect(input?.query).toBe('');
    expect([...(input?.headers ?? [])]).toEqual([
      ['authorization', 'Bearer t'],
      ['x-a', '1'],
    ]);
    expect(input?.headerCounts).toBeUndefined();
    expect([...(input?.contextExtensions ?? [])]).toEqual([
      ['route', 'invoke'],
      ['other', 'x'],
    ]);
    expect(input?.peerPrincipal).toBe('spiffe://cluster.local/ns/a/sa/router');
  });

  it('splits the query string off the path', () => {
    const input = toCheckInput(checkRequest(httpRequest({ path: '/v1/x?access_token=abc&b=2' })));
    expect(input?.path).toBe('/v1/x');
    expect(input?.query).toBe('access_token=abc&b=2');
  });

  it('keeps an explicit query field and still strips the path', () => {
    const input = toCheckInput(checkRequest(httpRequest({ path: '/v1/x?a=1', query: 'a=1' })));
    expect(input?.path).toBe('/v1/x');
    expect(input?.query).toBe('a=1');
  });

  it('reads header_map (raw headers), joining and counting duplicates', () => {
    const input = toCheckInput(
      checkRequest(
        httpRequest({
          headers: { ignored: 'yes' },
          header_map: {
            headers: [
              hv('Authorization', 'Bearer a'),
              hv('authorization', 'Bearer b', true),
              hv('x-one', 'v', true),
              hv(':path', '/v1/x'),
            ],
          },
        }),
      ),
    );
    expect(input?.headers.get('authorization')).toBe('Bearer a,Bearer b');
    expect(input?.headerCounts?.get('authorization')).toBe(2);
    expect(input?.headers.get('x-one')).toBe('v');
    expect(input?.headerCounts?.get('x-one')).toBe(1);
    expect(input?.headers.has('ignored')).toBe(false);
  });

  it('joins repeated cookie entries of header_map as one cookie string ("; "), like the HTTP mode', () => {
    const input = toCheckInput(
      checkRequest(httpRequest({ header_map: { headers: [hv('cookie', 'theme=dark'), hv('cookie', 'access_token=abc', true)] } })),
    );
    expect(input?.headers.get('cookie')).toBe('theme=dark; access_token=abc');
    expect(input?.headerCounts?.get('cookie')).toBe(2);
  });

  it('falls back to pseudo-headers for method, host and path', () => {
    const input = toCheckInput(
      checkRequest(
        httpRequest({
          method: '',
          host: '',
          path: '',
          headers: { ':method': 'GET', ':authority': 'api.example', ':path': '/p?q=1' },
        }),
      ),
    );
    expect(input?.method).toBe('GET');
    expect(input?.host).toBe('api.example');
    expect(input?.path).toBe('/p');
  });

  it('has no peer principal when Envoy reports none', () => {
    expect(toCheckInput(checkRequest(httpRequest(), { source: peer('') }))?.peerPrincipal).toBeUndefined();
    expect(toCheckInput(checkRequest(httpRequest()))?.peerPrincipal).toBeUndefined();
  });

  it('returns undefined without HTTP attributes', () => {
    expect(toCheckInput({ attributes: null })).toBeUndefined();
    expect(toCheckInput(checkRequest(null))).toBeUndefined();
    const noRequest = checkRequest(null);
    if (noRequest.attributes) noRequest.attributes.request = null;
    expect(toCheckInput(noRequest)).toBeUndefined();
  });
});

const allow: Allow = {
  kind: 'allow',
  route: 'invoke',
  headersToSet: [
    { name: 'x-user-sub', value: 'alice' },
    { name: 'x-portcullis-tenant', value: 'acme' },
  ],
  headersToRemove: ['x-portcullis-evil'],
  metadata: { route: 'invoke', sub: 'alice', roles: ['admin', 'viewer'], decision: 'allow' },
};

function deny(status: number, reason: Deny['reason']): Deny {
  return {
    kind: 'deny',
    route: 'invoke',
    status,
    reason,
    message: `because ${reason}`,
    headers: status === 401 ? [{ name: 'www-authenticate', value: 'Bearer realm="portcullis"' }] : [],
    metadata: { route: 'invoke', decision: 'deny', reason },
  };
}

describe('toCheckResponse', () => {
  it('maps an allow to ok_response with overwrite headers, removals and metadata', () => {
    const r = toCheckResponse(allow);
    expect(r.status).toEqual({ code: 0, message: '' });
    expect(r.denied_response).toBeUndefined();
    expect(r.ok_response?.headers).toEqual([
      { header: { key: 'x-user-sub', value: 'alice' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
      { header: { key: 'x-portcullis-tenant', value: 'acme' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
    ]);
    expect(r.ok_response?.headers_to_remove).toEqual(['x-portcullis-evil']);
    expect(r.dynamic_metadata).toEqual({
      fields: {
        route: { stringValue: 'invoke' },
        sub: { stringValue: 'alice' },
        roles: { listValue: { values: [{ stringValue: 'admin' }, { stringValue: 'viewer' }] } },
        decision: { stringValue: 'allow' },
      },
    });
  });

  it.each([
    [401, 'token_expired', 16],
    [403, 'missing_role', 7],
    [503, 'jwks_unavailable', 14],
    [400, 'malformed_request', 7],
    [500, 'internal_error', 14],
  ] as const)('maps a %i deny (%s) to gRPC status %i', (status, reason, grpcCode) => {
    const r = toCheckResponse(deny(status, reason));
    expect(r.status).toEqual({ code: grpcCode, message: reason });
    expect(r.ok_response).toBeUndefined();
    expect(r.denied_response?.status).toEqual({ code: status });
  });

  it('puts the reason header, the challenge and a JSON body in denied_response', () => {
    const r = toCheckResponse(deny(401, 'token_expired'));
    expect(r.denied_response?.headers).toEqual([
      { header: { key: 'www-authenticate', value: 'Bearer realm="portcullis"' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
      { header: { key: 'x-portcullis-reason', value: 'token_expired' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
      { header: { key: 'content-type', value: 'application/json' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
    ]);
    expect(JSON.parse(r.denied_response?.body ?? '')).toEqual({ error: 'token_expired', message: 'because token_expired' });
    expect(r.dynamic_metadata).toEqual({
      fields: { route: { stringValue: 'invoke' }, decision: { stringValue: 'deny' }, reason: { stringValue: 'token_expired' } },
    });
  });

  it('escapes the message in the JSON body', () => {
    expect(JSON.parse(denyBody('no_route', 'a "quoted"\nmessage'))).toEqual({ error: 'no_route', message: 'a "quoted"\nmessage' });
  });
});
