/**
 * Static checks of deploy/spire/ (Kubernetes manifests for SPIRE) and of the
 * SPIRE-facing parts of envoy/sidecars/: every object is well-formed and in
 * agentcube-system, the ClusterSPIFFEIDs produce IDs of the documented form,
 * and names shared between files (agent socket, trust domain, cluster name,
 * server socket, SPIFFE IDs, SDS resource files) agree.
 * test/e2e/spire-sds.test.ts runs the sidecars against a real SPIRE.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { at, isObj, list, mappings, type Obj } from '../helpers/yaml-tree.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEPLOY_DIR = join(ROOT, 'deploy', 'spire');
const SIDECARS_DIR = join(ROOT, 'envoy', 'sidecars');
const NAMESPACE = 'agentcube-system';
const ID_TEMPLATE = 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}';

/** Kinds that live outside any namespace (everything else must be in agentcube-system). */
const CLUSTER_SCOPED = new Set([
  'Namespace',
  'ClusterRole',
  'ClusterRoleBinding',
  'ClusterSPIFFEID',
  'ClusterFederatedTrustDomain',
  'ClusterStaticEntry',
  'CustomResourceDefinition',
  'ValidatingWebhookConfiguration',
  'MutatingWebhookConfiguration',
  'StorageClass',
]);
/** Build files that are not Kubernetes objects. */
const NOT_APPLIED = new Set(['Kustomization']);

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return yamlFiles(p);
    return /\.ya?ml$/.test(e.name) ? [p] : [];
  });
}

interface Doc {
  file: string;
  doc: Obj;
}

const deployFiles = yamlFiles(DEPLOY_DIR);
const docs: Doc[] = deployFiles.flatMap((file) =>
  parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => d.toJS() as unknown)
    .filter((v): v is Obj => isObj(v))
    .map((doc) => ({ file: relative(ROOT, file), doc })),
);
const objects = docs.filter((d) => !NOT_APPLIED.has(String(d.doc.kind)));

function find(kind: string, name: string): Obj {
  const found = objects.find((d) => d.doc.kind === kind && at(d.doc, 'metadata.name') === name);
  if (!found) throw new Error(`no ${kind} ${name} in deploy/spire`);
  return found.doc;
}

function configMapFile(name: string, key: string): string {
  const v = at(find('ConfigMap', name), ['data', key]);
  if (typeof v !== 'string') throw new Error(`ConfigMap ${name} has no ${key}`);
  return v;
}

/** The string value of `key = "value"` in an HCL text (first occurrence). */
function hclValue(hcl: string, key: string): string | undefined {
  return new RegExp(`^\\s*${key}\\s*=\\s*"([^"]*)"`, 'm').exec(hcl)?.[1];
}

const serverConf = configMapFile('spire-server', 'server.conf');
const agentConf = configMapFile('spire-agent', 'agent.conf');
const cmConfig = parse(configMapFile('spire-controller-manager', 'controller-manager.yaml')) as unknown;
const trustDomain = hclValue(serverConf, 'trust_domain') ?? '';
const agentSocket = hclValue(agentConf, 'socket_path') ?? '';
const idFor = (ns: string, sa: string): string => `spiffe://${trustDomain}/ns/${ns}/sa/${sa}`;

function podSpec(kind: string, name: string): Obj {
  const spec = at(find(kind, name), 'spec.template.spec');
  if (!isObj(spec)) throw new Error(`${kind} ${name} has no pod spec`);
  return spec;
}

function container(spec: Obj, name: string): Obj {
  const c = list(spec, 'containers').find((x) => at(x, 'name') === name);
  if (!isObj(c)) throw new Error(`no container ${name}`);
  return c;
}

/** Where `container` mounts volume `volume`. */
function mountPath(c: Obj, volume: string): string | undefined {
  const m = list(c, 'volumeMounts').find((x) => at(x, 'name') === volume);
  const p = at(m, 'mountPath');
  return typeof p === 'string' ? p : undefined;
}

describe('deploy/spire: every object', () => {
  it('parses, all documents are mappings without YAML errors', () => {
    expect(deployFiles.length).toBeGreaterThanOrEqual(4);
    for (const file of deployFiles) {
      for (const d of parseAllDocuments(readFileSync(file, 'utf8'))) {
        expect(d.errors.map((e) => `${relative(ROOT, file)}: ${e.message}`)).toEqual([]);
        expect(isObj(d.toJS())).toBe(true);
      }
    }
  });

  it.each(objects.map((d) => [`${d.file} ${String(d.doc.kind)}/${String(at(d.doc, 'metadata.name'))}`, d] as const))(
    '%s has apiVersion, kind, metadata.name and the right namespace',
    (_label, { doc }) => {
      expect(typeof doc.apiVersion).toBe('string');
      expect(typeof doc.kind).toBe('string');
      expect(typeof at(doc, 'metadata.name')).toBe('string');
      expect(String(at(doc, 'metadata.name'))).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      if (CLUSTER_SCOPED.has(String(doc.kind))) expect(at(doc, 'metadata.namespace')).toBeUndefined();
      else expect(at(doc, 'metadata.namespace')).toBe(NAMESPACE);
    },
  );

  it('has the server (StatefulSet), agent (DaemonSet) and controller manager with their configs', () => {
    expect(find('StatefulSet', 'spire-server')).toBeDefined();
    expect(find('Service', 'spire-server')).toBeDefined();
    expect(find('DaemonSet', 'spire-agent')).toBeDefined();
    for (const sa of ['spire-server', 'spire-agent']) expect(find('ServiceAccount', sa)).toBeDefined();
    expect(serverConf).toContain('NodeAttestor "k8s_psat"');
    expect(serverConf).toContain('Notifier "k8sbundle"');
    expect(agentConf).toContain('NodeAttestor "k8s_psat"');
    expect(agentConf).toContain('WorkloadAttestor "k8s"');
    expect(at(cmConfig, 'kind')).toBe('ControllerManagerConfig');
    expect(container(podSpec('StatefulSet', 'spire-server'), 'spire-controller-manager')).toBeDefined();
  });

  it('binds every (Cluster)RoleBinding to an existing role and ServiceAccount', () => {
    const bindings = objects.filter((d) => d.doc.kind === 'RoleBinding' || d.doc.kind === 'ClusterRoleBinding');
    expect(bindings.length).toBeGreaterThanOrEqual(4);
    for (const { doc } of bindings) {
      const roleKind = String(at(doc, 'roleRef.kind'));
      expect(find(roleKind, String(at(doc, 'roleRef.name')))).toBeDefined();
      if (doc.kind === 'RoleBinding') expect(roleKind).toBe('Role');
      for (const s of list(doc, 'subjects')) {
        expect(at(s, 'kind')).toBe('ServiceAccount');
        expect(at(s, 'namespace')).toBe(NAMESPACE);
        expect(find('ServiceAccount', String(at(s, 'name')))).toBeDefined();
      }
    }
  });

  it('grants what k8s_psat, k8sbundle and the controller manager need', () => {
    const rules = (kind: string, name: string): string =>
      JSON.stringify(list(find(kind, name), 'rules'));
    expect(rules('ClusterRole', 'agentcube-spire-server')).toContain('tokenreviews');
    const bundleRole = objects.find((d) => d.doc.kind === 'Role' && JSON.stringify(d.doc).includes('spire-bundle'));
    expect(JSON.stringify(bundleRole?.doc)).toContain('patch');
    const cm = rules('ClusterRole', 'agentcube-spire-controller-manager');
    for (const r of ['clusterspiffeids', 'pods', 'nodes', 'namespaces', 'validatingwebhookconfigurations']) expect(cm).toContain(r);
  });
});

describe('deploy/spire: ClusterSPIFFEIDs', () => {
  const ids = objects.filter((d) => d.doc.kind === 'ClusterSPIFFEID').map((d) => d.doc);

  it('register the Router, WorkloadManager, PicoD and portcullis', () => {
    const labels = ids.map((d) => JSON.stringify(at(d, 'spec.podSelector.matchLabels')));
    expect(ids).toHaveLength(4);
    for (const name of ['agentcube-router', 'workloadmanager', 'picod', 'portcullis']) {
      expect(labels.some((l) => l.includes(`"${name}"`))).toBe(true);
    }
  });

  it.each(ids.map((d) => [String(at(d, 'metadata.name')), d] as const))('%s uses the ns/<namespace>/sa/<service account> template', (_n, d) => {
    expect(at(d, 'apiVersion')).toBe('spire.spiffe.io/v1alpha1');
    expect(at(d, 'spec.spiffeIDTemplate')).toBe(ID_TEMPLATE);
    expect(isObj(at(d, 'spec.podSelector.matchLabels'))).toBe(true);
    const ns = at(d, 'spec.namespaceSelector.matchLabels');
    if (ns !== undefined) expect(ns).toEqual({ 'kubernetes.io/metadata.name': NAMESPACE });
  });
});

describe('deploy/spire: names shared between the server, agent and controller manager', () => {
  it('one trust domain everywhere', () => {
    expect(trustDomain).toMatch(/^[a-z0-9._-]+$/);
    expect(hclValue(agentConf, 'trust_domain')).toBe(trustDomain);
    expect(at(cmConfig, 'trustDomain')).toBe(trustDomain);
  });

  it('one k8s_psat cluster name (server allow-list, agent, controller manager)', () => {
    const agentCluster = hclValue(agentConf, 'cluster');
    expect(agentCluster).toBeTruthy();
    expect(serverConf).toMatch(new RegExp(`"${agentCluster ?? ''}"\\s*=\\s*\\{`));
    expect(at(cmConfig, 'clusterName')).toBe(agentCluster);
    expect(serverConf).toContain(`"${NAMESPACE}:spire-agent"`);
  });

  it('the controller manager reaches the server admin socket through a shared volume', () => {
    const serverSocket = hclValue(serverConf, 'socket_path') ?? '';
    expect(at(cmConfig, 'spireServerSocketPath')).toBe(serverSocket);
    const spec = podSpec('StatefulSet', 'spire-server');
    const socketDir = dirname(serverSocket);
    const volume = list(spec, 'volumes').find((v) => at(v, 'emptyDir') !== undefined && mountPath(container(spec, 'spire-server'), String(at(v, 'name'))) === socketDir);
    expect(volume).toBeDefined();
    expect(mountPath(container(spec, 'spire-controller-manager'), String(at(volume, 'name')))).toBe(socketDir);
  });

  it('the agent socket is in a hostPath directory mounted at the same path', () => {
    expect(agentSocket).toMatch(/^\/.+\.sock$/);
    const spec = podSpec('DaemonSet', 'spire-agent');
    const socketDir = dirname(agentSocket);
    const volume = list(spec, 'volumes').find((v) => at(v, 'hostPath.path') === socketDir);
    expect(volume).toBeDefined();
    expect(mountPath(container(spec, 'spire-agent'), String(at(volume, 'name')))).toBe(socketDir);
    expect(at(spec, 'hostPID')).toBe(true);
  });

  it('the agent trusts the bundle the server publishes, with the token audience the server expects', () => {
    const bundlePath = hclValue(agentConf, 'trust_bundle_path') ?? '';
    const spec = podSpec('DaemonSet', 'spire-agent');
    const volume = list(spec, 'volumes').find((v) => at(v, 'configMap.name') === 'spire-bundle');
    expect(mountPath(container(spec, 'spire-agent'), String(at(volume, 'name')))).toBe(dirname(bundlePath));
    expect(serverConf).toMatch(/config_map\s*=\s*"spire-bundle"/);
    const tokenPath = hclValue(agentConf, 'token_path') ?? '';
    const projected = list(spec, 'volumes').find((v) => at(v, 'projected') !== undefined);
    const source = list(projected, 'projected.sources')[0];
    expect(at(source, 'serviceAccountToken.audience')).toBe('spire-server');
    expect(join(mountPath(container(spec, 'spire-agent'), String(at(projected, 'name'))) ?? '', String(at(source, 'serviceAccountToken.path')))).toBe(tokenPath);
  });
});

// ---------------------------------------------------------------------------
// envoy/sidecars against deploy/spire

const SDS_SIDECARS = ['router-egress.yaml', 'workloadmanager-ingress.yaml', 'picod-ingress.yaml'] as const;
const FILE_SIDECARS = SDS_SIDECARS.map((f) => f.replace('.yaml', '-files.yaml'));
const loadSidecar = (file: string): Obj => parse(readFileSync(join(SIDECARS_DIR, file), 'utf8')) as Obj;
const clusterOf = (doc: Obj, name: string): Obj | undefined =>
  list(doc, 'static_resources.clusters').find((c): c is Obj => isObj(c) && c.name === name);
const sdsCertNames = (node: unknown): string[] =>
  mappings(node).flatMap((m) => list(m, 'tls_certificate_sds_secret_configs').map((s) => String(at(s, 'name'))));
const sanMatchers = (node: unknown): unknown[] =>
  mappings(node).flatMap((m) => list(m, 'match_typed_subject_alt_names').map((s) => at(s, 'matcher')));

describe('envoy/sidecars (SDS from the SPIRE agent)', () => {
  it.each(SDS_SIDECARS.map((f) => [f]))('%s talks to the agent socket of deploy/spire over HTTP/2', (file) => {
    const doc = loadSidecar(file);
    const agent = clusterOf(doc, 'spire_agent');
    expect(at(agent, 'load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.pipe.path')).toBe(agentSocket);
    expect(at(agent, ['typed_extension_protocol_options', 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions', 'explicit_http_config', 'http2_protocol_options'])).toBeDefined();
    // Every SDS secret comes from that cluster; validation contexts are the agent's ROOTCA.
    const sds = mappings(doc).filter((m) => isObj(m.sds_config));
    expect(sds.length).toBeGreaterThanOrEqual(2);
    for (const s of sds) {
      expect(list(s, 'sds_config.api_config_source.grpc_services').map((g) => at(g, 'envoy_grpc.cluster_name'))).toEqual(['spire_agent']);
      expect(at(s, 'sds_config.resource_api_version')).toBe('V3');
    }
    for (const m of mappings(doc)) {
      if (isObj(m.validation_context_sds_secret_config)) expect(at(m, 'validation_context_sds_secret_config.name')).toBe('ROOTCA');
    }
    expect(at(doc, 'node.id')).toBeTruthy();
    expect(at(doc, 'node.cluster')).toBeTruthy();
  });

  it('router-egress presents the Router ID and accepts only the WorkloadManager / a PicoD', () => {
    const doc = loadSidecar('router-egress.yaml');
    const wm = clusterOf(doc, 'workloadmanager');
    const picod = clusterOf(doc, 'picod');
    expect(sdsCertNames(wm)).toEqual([idFor(NAMESPACE, 'router')]);
    expect(sdsCertNames(picod)).toEqual([idFor(NAMESPACE, 'router')]);
    expect(sanMatchers(wm)).toEqual([{ exact: idFor(NAMESPACE, 'workloadmanager') }]);
    const regex = String(at(sanMatchers(picod)[0], 'safe_regex.regex'));
    const full = new RegExp(`^(?:${regex})$`);
    expect(full.test(idFor('team-a', 'picod'))).toBe(true);
    expect(full.test(idFor(NAMESPACE, 'picod'))).toBe(true);
    expect(full.test(idFor(NAMESPACE, 'router'))).toBe(false);
    expect(full.test(`spiffe://evil.example/ns/${NAMESPACE}/sa/picod`)).toBe(false);
    expect(full.test(`${idFor('a', 'picod')}/x`)).toBe(false);
  });

  it.each([
    ['workloadmanager-ingress.yaml', idFor(NAMESPACE, 'workloadmanager')],
    ['picod-ingress.yaml', 'default'],
  ])('%s requires a client certificate, asks portcullis fail-closed with the peer certificate', (file, certName) => {
    const doc = loadSidecar(file);
    const listener = list(doc, 'static_resources.listeners').find((l) => at(l, 'name') === 'ingress');
    const tls = mappings(listener).find((m) => m['@type'] === 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext');
    expect(at(tls, 'require_client_certificate')).toBe(true);
    expect(sdsCertNames(tls)).toEqual([certName]);
    const authz = mappings(listener).filter((m) => m['@type'] === 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz');
    expect(authz).toHaveLength(1);
    expect(at(authz[0], 'include_peer_certificate')).toBe(true);
    expect(at(authz[0], 'failure_mode_allow')).toBe(false);
    expect(at(authz[0], 'transport_api_version')).toBe('V3');
    expect(at(authz[0], 'grpc_service.envoy_grpc.cluster_name')).toBe('portcullis_grpc');
    // Envoy → portcullis is mTLS with the same SVID, accepting only portcullis's ID.
    const pc = clusterOf(doc, 'portcullis_grpc');
    expect(at(pc, 'load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address')).toEqual({
      address: `portcullis.${NAMESPACE}.svc.cluster.local`,
      port_value: 9191,
    });
    expect(sdsCertNames(pc)).toEqual([certName]);
    expect(sanMatchers(pc)).toEqual([{ exact: idFor(NAMESPACE, 'portcullis') }]);
  });
});

describe('envoy/sidecars *-files.yaml (PEM files, reloaded on change)', () => {
  const sdsFiles = new Map(
    yamlFiles(join(SIDECARS_DIR, 'sds')).map((f) => [f.replace(join(SIDECARS_DIR, 'sds'), '/etc/envoy/sds'), parse(readFileSync(f, 'utf8')) as Obj]),
  );

  it.each(FILE_SIDECARS.map((f, i) => [f, SDS_SIDECARS[i] ?? ''] as const))('%s mirrors %s with file-based SDS', (file, twin) => {
    const doc = loadSidecar(file);
    const twinDoc = loadSidecar(twin);
    const names = (d: Obj, kind: string): unknown[] => list(d, `static_resources.${kind}`).map((x) => at(x, 'name'));
    expect(names(doc, 'listeners')).toEqual(names(twinDoc, 'listeners'));
    expect(names(doc, 'clusters')).toEqual(names(twinDoc, 'clusters').filter((n) => n !== 'spire_agent'));
    expect(JSON.stringify(doc)).not.toContain('spire_agent');
    // Same identity checks as the SDS twin.
    expect(sanMatchers(doc)).toEqual(sanMatchers(twinDoc));
    for (const m of mappings(doc).filter((x) => isObj(x.sds_config))) {
      const path = String(at(m, 'sds_config.path_config_source.path'));
      const secrets = list(sdsFiles.get(path), 'resources');
      expect(secrets.map((s) => at(s, 'name'))).toEqual([m.name]);
      expect(at(m, 'sds_config.path_config_source.watched_directory.path')).toBe(dirname(path));
    }
  });

  it('the SDS resource files name PEM files in one watched directory', () => {
    expect([...sdsFiles.keys()].sort()).toEqual(['/etc/envoy/sds/tls-certificate.yaml', '/etc/envoy/sds/validation-context.yaml']);
    const cert = list(sdsFiles.get('/etc/envoy/sds/tls-certificate.yaml'), 'resources')[0];
    const ca = list(sdsFiles.get('/etc/envoy/sds/validation-context.yaml'), 'resources')[0];
    const dir = String(at(cert, 'tls_certificate.watched_directory.path'));
    expect(at(cert, '@type')).toBe('type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret');
    expect(at(cert, 'tls_certificate.certificate_chain.filename')).toBe(`${dir}/tls.crt`);
    expect(at(cert, 'tls_certificate.private_key.filename')).toBe(`${dir}/tls.key`);
    expect(at(ca, 'validation_context.trusted_ca.filename')).toBe(`${dir}/ca.crt`);
    expect(at(ca, 'validation_context.watched_directory.path')).toBe(dir);
  });
});
