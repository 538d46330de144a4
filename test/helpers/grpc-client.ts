import {
  credentials,
  makeClientConstructor,
  type CallOptions,
  type Client,
  type ClientReadableStream,
  type ServiceDefinition,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadSync, type EnumTypeDefinition } from '@grpc/proto-loader';
import { service as healthService } from 'grpc-health-check';
import { envoyProtoIncludeDirs, loadAuthorizationClient, PROTO_LOADER_OPTIONS } from '../../src/adapters/envoy/protos.js';
import type { HeaderValueOption__Output } from '../../src/generated/envoy/config/core/v3/HeaderValueOption.js';
import type { CheckInput, Decision } from '../../src/core/types.js';
import type { CheckRequest } from '../../src/generated/envoy/service/auth/v3/CheckRequest.js';
import type { CheckResponse__Output } from '../../src/generated/envoy/service/auth/v3/CheckResponse.js';
import type { Struct__Output } from '../../src/generated/google/protobuf/Struct.js';
import type { Value__Output } from '../../src/generated/google/protobuf/Value.js';

/**
 * A real gRPC client for `envoy.service.auth.v3.Authorization/Check`, built
 * from Envoy's own protos (the same files the server loads), plus a
 * `grpc.health.v1.Health` client and helpers that read a CheckResponse the
 * way Envoy does.
 */
export type { CheckRequest, CheckResponse__Output };

type AuthorizationCtor = ReturnType<typeof loadAuthorizationClient>;
let authorizationCtor: AuthorizationCtor | undefined;
let httpStatusByName: Map<string, number> | undefined;

export interface AuthzClient {
  /** Resolves with the CheckResponse; rejects only on a gRPC error (which portcullis must never return). */
  check(request: CheckRequest, opts?: { deadlineMs?: number }): Promise<CheckResponse__Output>;
  close(): void;
}

/** `compression` makes grpc-js compress every request message with that algorithm. */
export function createAuthzClient(address: string, opts: { compression?: 'deflate' | 'gzip' } = {}): AuthzClient {
  authorizationCtor ??= loadAuthorizationClient();
  const channelOptions = opts.compression ? { 'grpc.default_compression_algorithm': opts.compression === 'deflate' ? 1 : 2 } : {};
  const client = new authorizationCtor(address, credentials.createInsecure(), channelOptions);
  return {
    check(request, opts = {}) {
      return new Promise((resolve, reject) => {
        const options: CallOptions = { deadline: Date.now() + (opts.deadlineMs ?? 15_000) };
        client.Check(request, options, (err, res) => {
          if (err) reject(err);
          else if (!res) reject(new Error('Check returned neither an error nor a response'));
          else resolve(res);
        });
      });
    },
    close: () => client.close(),
  };
}

export type HealthStatus = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

interface HealthStub extends Client {
  Check(
    request: { service: string },
    options: CallOptions,
    callback: (err: ServiceError | null, res?: { status: HealthStatus }) => void,
  ): void;
  Watch(request: { service: string }, options: CallOptions): ClientReadableStream<{ status: HealthStatus }>;
}

export interface HealthWatch {
  /** Every status the server has sent so far, in order. */
  statuses: HealthStatus[];
  /** Resolves when a status arrives that makes `until` true. */
  next(until: (s: HealthStatus[]) => boolean): Promise<HealthStatus[]>;
  /** Resolves with the gRPC status code the stream ended with. */
  ended: Promise<number>;
  cancel(): void;
}

export interface HealthClient {
  /** Status of `service` ('' = the whole server). */
  check(service?: string): Promise<HealthStatus>;
  watch(service?: string): HealthWatch;
  close(): void;
}

export function createHealthClient(address: string): HealthClient {
  const Ctor = makeClientConstructor(healthService as unknown as ServiceDefinition, 'grpc.health.v1.Health');
  const client = new Ctor(address, credentials.createInsecure()) as unknown as HealthStub;
  return {
    check(service = '') {
      return new Promise((resolve, reject) => {
        client.Check({ service }, { deadline: Date.now() + 10_000 }, (err, res) => {
          if (err) reject(err);
          else resolve(res?.status ?? 'UNKNOWN');
        });
      });
    },
    watch(service = '') {
      const call = client.Watch({ service }, {});
      const statuses: HealthStatus[] = [];
      const waiters = new Set<() => void>();
      call.on('data', (res: { status: HealthStatus }) => {
        statuses.push(res.status);
        for (const w of waiters) w();
      });
      const ended = new Promise<number>((resolve) => {
        call.on('error', (err: ServiceError) => resolve(err.code));
        call.on('status', (st: { code: number }) => resolve(st.code));
      });
      return {
        statuses,
        next: (until) =>
          new Promise((resolve) => {
            const test = () => {
              if (until(statuses)) {
                waiters.delete(test);
                resolve([...statuses]);
              }
            };
            waiters.add(test);
            test();
          }),
        ended,
        cancel: () => call.cancel(),
      };
    },
    close: () => client.close(),
  };
}

/** What a test needs of an HTTP request to build the CheckRequest Envoy would send. */
export interface RequestSpec {
  method?: string;
  host?: string;
  /** Path, optionally with `?query`. */
  path: string;
  /** Header names are lower-cased, as Envoy sends them. */
  headers?: Record<string, string>;
  /** Peer SPIFFE ID (`attributes.source.principal`). */
  peer?: string;
  contextExtensions?: Record<string, string>;
}

/** The CheckRequest Envoy's ext_authz filter sends for an HTTP request (headers map incl. pseudo-headers). */
export function checkRequest(spec: RequestSpec): CheckRequest {
  const method = spec.method ?? 'GET';
  const host = spec.host ?? 'router.example';
  const q = spec.path.indexOf('?');
  const headers: Record<string, string> = { ':authority': host, ':method': method, ':path': spec.path, ':scheme': 'http' };
  for (const [k, v] of Object.entries(spec.headers ?? {})) headers[k.toLowerCase()] = v;
  return {
    attributes: {
      source: spec.peer ? { principal: spec.peer } : undefined,
      request: {
        http: {
          id: '1',
          method,
          host,
          path: spec.path,
          query: q >= 0 ? spec.path.slice(q + 1) : '',
          scheme: 'http',
          protocol: 'HTTP/1.1',
          headers,
        },
      },
      context_extensions: spec.contextExtensions ?? {},
    },
  };
}

/** HTTP status number of an Envoy `type.v3.StatusCode` enum value (the loader decodes enums as names). */
export function httpStatusNumber(code: string | number): number {
  if (typeof code === 'number') return code;
  if (!httpStatusByName) {
    const def = loadSync('envoy/type/v3/http_status.proto', { ...PROTO_LOADER_OPTIONS, includeDirs: envoyProtoIncludeDirs() });
    const e = def['envoy.type.v3.StatusCode'] as EnumTypeDefinition;
    const values = (e.type as { value: { name: string; number: number }[] }).value;
    httpStatusByName = new Map(values.map((v) => [v.name, v.number]));
  }
  const n = httpStatusByName.get(code);
  if (n === undefined) throw new Error(`unknown envoy.type.v3.StatusCode ${code}`);
  return n;
}

/** Header options as a name → value record (names lower-cased; the last value wins). */
export function headerRecord(list: readonly HeaderValueOption__Output[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const h of list ?? []) {
    if (!h.header) continue;
    const raw = h.header.raw_value;
    out[h.header.key.toLowerCase()] = raw && raw.length > 0 ? Buffer.from(raw).toString('utf8') : h.header.value;
  }
  return out;
}

function valueToJs(v: Value__Output): unknown {
  switch (v.kind) {
    case 'stringValue':
      return v.stringValue;
    case 'numberValue':
      return v.numberValue;
    case 'boolValue':
      return v.boolValue;
    case 'nullValue':
      return null;
    case 'listValue':
      return (v.listValue?.values ?? []).map(valueToJs);
    case 'structValue':
      return structToJs(v.structValue);
    default:
      return undefined;
  }
}

export function structToJs(s: Struct__Output | null | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) out[k] = valueToJs(v);
  return out;
}

/** A CheckResponse read the way Envoy applies it. */
export interface CheckOutcome {
  decision: 'allow' | 'deny';
  /** google.rpc.Code of CheckResponse.status. */
  grpcCode: number;
  /** 200 on allow, denied_response.status otherwise. */
  status: number;
  /** x-portcullis-reason on deny, '' on allow. */
  reason: string;
  /** ok_response.headers on allow, denied_response.headers on deny. */
  headers: Record<string, string>;
  /** Append action of each header set on allow. */
  appendActions: Record<string, string>;
  headersToRemove: string[];
  /** Parsed JSON body of a deny; undefined on allow. */
  body?: { error: string; message: string };
  metadata: Record<string, unknown>;
}

export function readCheckResponse(res: CheckResponse__Output): CheckOutcome {
  const grpcCode = res.status?.code ?? 0;
  const metadata = structToJs(res.dynamic_metadata);
  if (res.ok_response && res.http_response === 'ok_response') {
    const appendActions: Record<string, string> = {};
    for (const h of res.ok_response.headers) if (h.header) appendActions[h.header.key] = String(h.append_action);
    return {
      decision: 'allow',
      grpcCode,
      status: 200,
      reason: '',
      headers: headerRecord(res.ok_response.headers),
      appendActions,
      headersToRemove: [...res.ok_response.headers_to_remove],
      metadata,
    };
  }
  if (res.denied_response && res.http_response === 'denied_response') {
    const headers = headerRecord(res.denied_response.headers);
    return {
      decision: 'deny',
      grpcCode,
      status: httpStatusNumber(res.denied_response.status?.code ?? 'Empty'),
      reason: headers['x-portcullis-reason'] ?? '',
      headers,
      appendActions: {},
      headersToRemove: [],
      body: JSON.parse(res.denied_response.body) as { error: string; message: string },
      metadata,
    };
  }
  throw new Error(`CheckResponse has neither ok_response nor denied_response: ${JSON.stringify(res)}`);
}

/** A decision handler for transport tests: allows, and echoes the request's path in `x-seen-path`. */
export const allowEchoingPath = (input: CheckInput): Decision => ({
  kind: 'allow',
  route: 'r',
  headersToSet: [{ name: 'x-seen-path', value: input.path }],
  headersToRemove: [],
  metadata: { route: 'r', decision: 'allow' },
});
