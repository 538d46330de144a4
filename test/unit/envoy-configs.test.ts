/**
 * Static checks of everything under envoy/: every file parses (all YAML
 * documents), and names, ports and paths agree with portcullis's defaults
 * (gRPC 9191, HTTP 9192, admin 9901; no HTTP path prefix) and with each other.
 * The local bootstraps are also started for real by test/e2e/envoy.test.ts.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { at, isObj, list, mappings, type Obj } from '../helpers/yaml-tree.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ENVOY_DIR = join(ROOT, 'envoy');

/** portcullis's default listeners (src/config/schema.ts, config/default.yaml). */
const DEFAULTS = { grpc: 9191, http: 9192, admin: 9901 } as const;
const SERVICE_FQDN = 'portcullis.agentcube-system.svc.cluster.local';
const EXT_AUTHZ_TYPE = 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz';
const PER_ROUTE_TYPE = 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute';

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return yamlFiles(p);
    return /\.ya?ml$/.test(name) ? [p] : [];
  });
}

function loadDocs(file: string): Obj[] {
  return parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
    const v: unknown = d.toJS();
    if (!isObj(v)) throw new Error(`${file}: a document is not a mapping`);
    return v;
  });
}

function docsOfKind(files: string[], kind: string): { file: string; doc: Obj }[] {
  return files.flatMap((file) => loadDocs(file).filter((d) => d.kind === kind).map((doc) => ({ file, doc })));
}

/** Route names defined by portcullis's embedded default configuration. */
function defaultRouteNames(): Set<string> {
  const path = join(ROOT, 'config', 'default.yaml');
  if (!existsSync(path)) return new Set();
  const cfg: unknown = parse(readFileSync(path, 'utf8'));
  return new Set(list(cfg, 'routes').map((r) => String(at(r, 'name'))));
}

const allFiles = yamlFiles(ENVOY_DIR);

describe('envoy/: every file parses', () => {
  it('has local, gateway and istio configurations', () => {
    const dirs = new Set(allFiles.map((f) => relative(ENVOY_DIR, f).split('/')[0]));
    expect([...dirs].sort()).toEqual(expect.arrayContaining(['gateway', 'istio', 'local']));
  });

  it.each(allFiles.map((f) => [relative(ROOT, f)]))('%s is valid YAML with mapping documents', (rel) => {
    const docs = parseAllDocuments(readFileSync(join(ROOT, rel), 'utf8'));
    expect(docs.length).toBeGreaterThan(0);
    for (const d of docs) {
      expect(d.errors.map((e) => e.message)).toEqual([]);
      expect(d.warnings.map((e) => e.message)).toEqual([]);
      expect(isObj(d.toJS())).toBe(true);
    }
  });
});

describe.each([
  ['envoy-grpc.yaml', 'grpc'],
  ['envoy-http.yaml', 'http'],
] as const)('envoy/local/%s', (file, mode) => {
  const doc = loadDocs(join(ENVOY_DIR, 'local', file))[0] as Obj;
  const clusters = list(doc, 'static_resources.clusters');
  const cluster = (name: string): unknown => clusters.find((c) => at(c, 'name') === name);
  const endpointPort = (name: string): unknown =>
    at(cluster(name), 'load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.port_value');
  const listener = list(doc, 'static_resources.listeners').find((l) => at(l, 'name') === 'ingress');
  const hcm = mappings(listener).find((m) => at(m, '@type') === 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager');
  const filters = list(hcm, 'http_filters');
  const authz = mappings(doc).filter((m) => m['@type'] === EXT_AUTHZ_TYPE);
  const routes = list(hcm, 'route_config.virtual_hosts.0.routes');
  const perRoute = (r: unknown): unknown => at(r, ['typed_per_filter_config', 'envoy.filters.http.ext_authz']);

  it('has exactly one ext_authz filter, before the router', () => {
    expect(authz).toHaveLength(1);
    const names = filters.map((f) => at(f, 'name'));
    expect(names.indexOf('envoy.filters.http.ext_authz')).toBeGreaterThanOrEqual(0);
    expect(names.indexOf('envoy.filters.http.ext_authz')).toBeLessThan(names.indexOf('envoy.filters.http.router'));
    expect(names[names.length - 1]).toBe('envoy.filters.http.router');
  });

  it('fails closed, speaks transport V3 and sends the peer certificate', () => {
    const cfg = authz[0] as Obj;
    expect(cfg.failure_mode_allow).toBe(false);
    expect(cfg.transport_api_version).toBe('V3');
    expect(cfg.include_peer_certificate).toBe(true);
    expect(cfg.with_request_body).toBeUndefined();
  });

  if (mode === 'grpc') {
    it('points gRPC at portcullis_grpc:9191 over HTTP/2', () => {
      const cfg = authz[0] as Obj;
      expect(at(cfg, 'http_service')).toBeUndefined();
      expect(at(cfg, 'grpc_service.envoy_grpc.cluster_name')).toBe('portcullis_grpc');
      expect(endpointPort('portcullis_grpc')).toBe(DEFAULTS.grpc);
      const opts = at(cluster('portcullis_grpc'), [
        'typed_extension_protocol_options',
        'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
      ]);
      expect(at(opts, '@type')).toBe('type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions');
      expect(at(opts, 'explicit_http_config.http2_protocol_options')).toBeDefined();
    });
  } else {
    it('points HTTP at portcullis_http:9192 with no path prefix and the header lists portcullis needs', () => {
      const cfg = authz[0] as Obj;
      expect(at(cfg, 'grpc_service')).toBeUndefined();
      expect(at(cfg, 'http_service.server_uri.cluster')).toBe('portcullis_http');
      expect(new URL(String(at(cfg, 'http_service.server_uri.uri'))).port).toBe(String(DEFAULTS.http));
      expect(endpointPort('portcullis_http')).toBe(DEFAULTS.http);
      expect(at(cfg, 'http_service.path_prefix') ?? '').toBe('');
      const patterns = (p: string): unknown[] => list(cfg, `${p}.patterns`);
      expect(patterns('http_service.authorization_response.allowed_upstream_headers')).toEqual(
        expect.arrayContaining([{ prefix: 'x-portcullis-' }, { prefix: 'x-user-' }, { exact: 'authorization' }]),
      );
      expect(patterns('http_service.authorization_response.dynamic_metadata_from_headers')).toEqual(
        expect.arrayContaining([{ prefix: 'x-portcullis-' }]),
      );
      expect(patterns('http_service.authorization_response.allowed_client_headers')).toEqual(
        expect.arrayContaining([{ exact: 'www-authenticate' }, { prefix: 'x-portcullis-' }]),
      );
      expect(patterns('allowed_headers')).toEqual(
        expect.arrayContaining([
          { exact: 'authorization' },
          { exact: 'cookie' },
          { prefix: 'x-portcullis-' },
          { prefix: 'x-user-' },
        ]),
      );
    });
  }

  it('listens on 10000, forwards to the upstream on 8080, and keeps its admin off 9901', () => {
    expect(at(listener, 'address.socket_address.port_value')).toBe(10000);
    expect(endpointPort('echo_upstream')).toBe(8080);
    expect(at(doc, 'admin.address.socket_address.port_value')).not.toBe(DEFAULTS.admin);
    expect(at(doc, 'admin.address.socket_address.address')).toBe('127.0.0.1');
  });

  it('disables ext_authz for /healthz and names the admin-only route on /admin', () => {
    const health = routes.find((r) => at(r, 'match.path') === '/healthz');
    expect(at(perRoute(health), '@type')).toBe(PER_ROUTE_TYPE);
    expect(at(perRoute(health), 'disabled')).toBe(true);
    const admin = routes.find((r) => at(r, 'match.prefix') === '/admin');
    expect(at(perRoute(admin), '@type')).toBe(PER_ROUTE_TYPE);
    expect(at(perRoute(admin), 'check_settings.context_extensions.route')).toBe('admin-only');
    const known = defaultRouteNames();
    if (known.size > 0) expect([...known]).toContain('admin-only');
    // Every route reaches the upstream cluster.
    for (const r of routes) expect(at(r, 'route.cluster')).toBe('echo_upstream');
  });

  it("logs portcullis's dynamic metadata in the access log", () => {
    const format = at(mappings(hcm).find((m) => m['@type'] === 'type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog'), 'log_format.json_format');
    const text = JSON.stringify(format);
    const key = (k: string): string => (mode === 'grpc' ? k : `x-portcullis-${k}`);
    for (const k of ['sub', 'route', 'reason', 'tenant']) {
      expect(text).toContain(`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:${key(k)})%`);
    }
  });
});

describe('envoy/gateway', () => {
  const files = yamlFiles(join(ENVOY_DIR, 'gateway'));
  // One definition of the Service: deploy/portcullis/service.yaml (the gateway folder adds only what Envoy Gateway needs).
  const services = docsOfKind(yamlFiles(join(ENVOY_DIR, '..', 'deploy', 'portcullis')), 'Service');
  const backends = docsOfKind(files, 'Backend');
  const policies = docsOfKind(files, 'SecurityPolicy');

  it('defines the portcullis Service with the default gRPC (h2c) and HTTP ports', () => {
    expect(services).toHaveLength(1);
    const svc = services[0]?.doc;
    expect(`${String(at(svc, 'metadata.name'))}.${String(at(svc, 'metadata.namespace'))}.svc.cluster.local`).toBe(SERVICE_FQDN);
    const ports = list(svc, 'spec.ports');
    const grpc = ports.find((p) => at(p, 'port') === DEFAULTS.grpc);
    const http = ports.find((p) => at(p, 'port') === DEFAULTS.http);
    expect([DEFAULTS.grpc, 'grpc']).toContain(at(grpc, 'targetPort'));
    expect(at(grpc, 'appProtocol')).toBe('kubernetes.io/h2c');
    expect([DEFAULTS.http, 'http']).toContain(at(http, 'targetPort'));
    expect(docsOfKind(files, 'Service')).toHaveLength(0);
    expect(ports.some((p) => at(p, 'port') === DEFAULTS.admin)).toBe(false);
  });

  it('has Backends for both modes pointing at the Service name and default ports', () => {
    const byName = new Map(backends.map((b) => [String(at(b.doc, 'metadata.name')), b.doc]));
    const grpc = byName.get('portcullis-grpc');
    const http = byName.get('portcullis-http');
    expect(at(grpc, 'spec.endpoints.0.fqdn.hostname')).toBe(SERVICE_FQDN);
    expect(at(grpc, 'spec.endpoints.0.fqdn.port')).toBe(DEFAULTS.grpc);
    expect(list(grpc, 'spec.appProtocols')).toContain('gateway.envoyproxy.io/h2c');
    expect(at(http, 'spec.endpoints.0.fqdn.hostname')).toBe(SERVICE_FQDN);
    expect(at(http, 'spec.endpoints.0.fqdn.port')).toBe(DEFAULTS.http);
  });

  it('has a gRPC and an HTTP SecurityPolicy, both fail-closed, each on the right port', () => {
    const grpc = policies.filter((p) => at(p.doc, 'spec.extAuth.grpc') !== undefined);
    const http = policies.filter((p) => at(p.doc, 'spec.extAuth.http') !== undefined);
    expect(grpc).toHaveLength(1);
    expect(http).toHaveLength(1);
    for (const { doc } of policies) {
      expect(at(doc, 'apiVersion')).toBe('gateway.envoyproxy.io/v1alpha1');
      expect(at(doc, 'spec.extAuth.failOpen')).toBe(false);
      expect(list(doc, 'spec.targetRefs').length).toBeGreaterThan(0);
      const svc = services[0]?.doc;
      const mode = at(doc, 'spec.extAuth.grpc') !== undefined ? 'grpc' : 'http';
      for (const ref of list(doc, `spec.extAuth.${mode}.backendRefs`)) {
        expect(at(ref, 'port')).toBe(DEFAULTS[mode]);
        expect(at(ref, 'name')).toBe(at(svc, 'metadata.name'));
        expect(at(ref, 'namespace')).toBe(at(svc, 'metadata.namespace'));
      }
    }
    // HTTP mode: no path (portcullis sees the original path); identity headers go upstream.
    const httpAuth = at(http[0]?.doc, 'spec.extAuth') as Obj;
    expect(at(httpAuth, 'http.path')).toBeUndefined();
    expect(list(httpAuth, 'http.headersToBackend')).toEqual(
      expect.arrayContaining(['x-portcullis-sub', 'x-portcullis-route', 'x-user-sub']),
    );
    expect(list(httpAuth, 'headersToExtAuth')).toEqual(expect.arrayContaining(['authorization', 'cookie']));
  });

  it('lets the policies reference the Service across namespaces (ReferenceGrant)', () => {
    const grants = docsOfKind(files, 'ReferenceGrant');
    const svc = services[0]?.doc;
    const grant = grants.find((g) => at(g.doc, 'metadata.namespace') === at(svc, 'metadata.namespace'));
    expect(list(grant?.doc, 'spec.from')).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ kind: 'SecurityPolicy', namespace: at(policies[0]?.doc, 'metadata.namespace') }),
      ]),
    );
  });
});

describe('envoy/istio', () => {
  const files = yamlFiles(join(ENVOY_DIR, 'istio'));
  const operators = docsOfKind(files, 'IstioOperator');
  const providers = operators.flatMap((o) => list(o.doc, 'spec.meshConfig.extensionProviders'));
  const policies = docsOfKind(files, 'AuthorizationPolicy');

  it('registers a gRPC and an HTTP extension provider on the default ports, fail-closed', () => {
    const grpc = providers.find((p) => at(p, 'envoyExtAuthzGrpc') !== undefined);
    const http = providers.find((p) => at(p, 'envoyExtAuthzHttp') !== undefined);
    expect(at(grpc, 'envoyExtAuthzGrpc.service')).toBe(SERVICE_FQDN);
    expect(at(grpc, 'envoyExtAuthzGrpc.port')).toBe(DEFAULTS.grpc);
    expect(at(grpc, 'envoyExtAuthzGrpc.failOpen')).toBe(false);
    expect(at(http, 'envoyExtAuthzHttp.service')).toBe(SERVICE_FQDN);
    expect(at(http, 'envoyExtAuthzHttp.port')).toBe(DEFAULTS.http);
    expect(at(http, 'envoyExtAuthzHttp.failOpen')).toBe(false);
    expect(at(http, 'envoyExtAuthzHttp.pathPrefix')).toBeUndefined();
    expect(list(http, 'envoyExtAuthzHttp.headersToUpstreamOnAllow')).toEqual(
      expect.arrayContaining(['x-portcullis-*', 'x-user-*']),
    );
    expect(list(http, 'envoyExtAuthzHttp.includeRequestHeadersInCheck')).toEqual(
      expect.arrayContaining(['authorization', 'cookie', 'x-portcullis-*', 'x-user-*']),
    );
    expect(list(http, 'envoyExtAuthzHttp.headersToDownstreamOnDeny')).toContain('www-authenticate');
  });

  it('has CUSTOM AuthorizationPolicies naming a registered provider, skipping /healthz', () => {
    const names = new Set(providers.map((p) => at(p, 'name')));
    expect(policies.length).toBeGreaterThan(0);
    for (const { doc } of policies) {
      expect(at(doc, 'spec.action')).toBe('CUSTOM');
      expect(names.has(at(doc, 'spec.provider.name'))).toBe(true);
      const notPaths = list(doc, 'spec.rules').flatMap((r) => list(r, 'to').flatMap((t) => list(t, 'operation.notPaths')));
      expect(notPaths).toContain('/healthz');
    }
  });
});
