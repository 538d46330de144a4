import { status as grpcStatus } from '@grpc/grpc-js';
import type { CheckInput, Decision } from '../../core/types.js';
import type { CheckRequest__Output } from '../../generated/envoy/service/auth/v3/CheckRequest.js';
import type { CheckResponse } from '../../generated/envoy/service/auth/v3/CheckResponse.js';
import type { HeaderValueOption } from '../../generated/envoy/config/core/v3/HeaderValueOption.js';
import type { Struct } from '../../generated/google/protobuf/Struct.js';
import type { Value } from '../../generated/google/protobuf/Value.js';
import type { StatusCode } from '../../generated/envoy/type/v3/StatusCode.js';

/** Maps Envoy's CheckRequest to the pipeline's input; undefined when the request carries no HTTP attributes. */
export function toCheckInput(req: CheckRequest__Output): CheckInput | undefined {
  const attrs = req.attributes;
  const http = attrs?.request?.http;
  if (!attrs || !http) return undefined;
  const headers = new Map<string, string>();
  let counts: Map<string, number> | undefined;
  const list = http.header_map?.headers;
  if (list && list.length > 0) {
    // encode_raw_headers: repeated headers arrive one by one, so duplicates can be counted.
    counts = new Map();
    for (const h of list) {
      const name = h.key.toLowerCase();
      const value = h.raw_value && h.raw_value.length > 0 ? h.raw_value.toString('utf8') : h.value;
      const prev = headers.get(name);
      headers.set(name, prev === undefined ? value : `${prev},${value}`);
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
  } else {
    for (const k in http.headers) headers.set(k.toLowerCase(), http.headers[k] as string);
  }
  let path = http.path;
  let query = http.query;
  const q = path.indexOf('?');
  if (q >= 0) {
    if (!query) query = path.slice(q + 1);
    path = path.slice(0, q);
  }
  const ext = new Map<string, string>();
  for (const k in attrs.context_extensions) ext.set(k, attrs.context_extensions[k] as string);
  return {
    method: http.method || headers.get(':method') || '',
    host: http.host || headers.get(':authority') || headers.get('host') || '',
    path: path || headers.get(':path')?.split('?')[0] || '',
    query,
    headers,
    headerCounts: counts,
    peerPrincipal: attrs.source?.principal || undefined,
    contextExtensions: ext,
  };
}

function toValue(v: string | string[]): Value {
  return Array.isArray(v)
    ? { listValue: { values: v.map((s) => ({ stringValue: s })) } }
    : { stringValue: v };
}

function toStruct(md: Record<string, string | string[]>): Struct {
  const fields: Record<string, Value> = {};
  for (const k in md) fields[k] = toValue(md[k] as string | string[]);
  return { fields };
}

const OVERWRITE = 'OVERWRITE_IF_EXISTS_OR_ADD' as const;

function headerOptions(list: readonly { name: string; value: string }[]): HeaderValueOption[] {
  return list.map((h) => ({ header: { key: h.name, value: h.value }, append_action: OVERWRITE }));
}

/** Maps a decision to Envoy's CheckResponse. Every outcome is a response, never a gRPC error. */
export function toCheckResponse(d: Decision): CheckResponse {
  if (d.kind === 'allow') {
    return {
      status: { code: grpcStatus.OK, message: '' },
      ok_response: { headers: headerOptions(d.headersToSet), headers_to_remove: d.headersToRemove },
      dynamic_metadata: toStruct(d.metadata),
    };
  }
  const code =
    d.status === 401 ? grpcStatus.UNAUTHENTICATED : d.status >= 500 ? grpcStatus.UNAVAILABLE : grpcStatus.PERMISSION_DENIED;
  return {
    status: { code, message: d.reason },
    denied_response: {
      status: { code: d.status as StatusCode },
      headers: headerOptions([
        ...d.headers,
        { name: 'x-portcullis-reason', value: d.reason },
        { name: 'content-type', value: 'application/json' },
      ]),
      body: denyBody(d.reason, d.message),
    },
    dynamic_metadata: toStruct(d.metadata),
  };
}

export function denyBody(reason: string, message: string): string {
  return JSON.stringify({ error: reason, message });
}
