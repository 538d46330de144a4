import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { configSchema, type Config } from '../../../../src/config/schema.js';
import { checkConfig } from '../../../../src/config/validate.js';
import { createStageModules } from '../../../../src/stages/registry.js';

/** deploy/portcullis/*.yaml, parsed: RBAC stays read-only and ports stay in step with the configuration. */
const DIR = join(import.meta.dirname, '..', '..', '..', '..', 'deploy', 'portcullis');

type Obj = Record<string, unknown> & { kind: string; metadata: { name: string; namespace?: string } };

const docs: Obj[] = readdirSync(DIR)
  .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
  .flatMap((f) =>
    parseAllDocuments(readFileSync(join(DIR, f), 'utf8')).map((d) => {
      if (d.errors.length > 0) throw new Error(`${f}: ${d.errors.map((e) => e.message).join('; ')}`);
      return d.toJS() as Obj;
    }),
  );

function one(kind: string): Obj {
  const found = docs.filter((d) => d.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0] as Obj;
}

// Small typed accessors into the parsed YAML.
const at = (v: unknown, ...path: (string | number)[]): unknown =>
  path.reduce<unknown>((cur, k) => (cur !== null && typeof cur === 'object' ? (cur as Record<string | number, unknown>)[k] : undefined), v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const portOf = (address: string): number => Number(address.slice(address.lastIndexOf(':') + 1));

const configMap = one('ConfigMap');
const config: Config = configSchema.parse((parseAllDocuments(String(at(configMap, 'data', 'portcullis.yaml')))[0]?.toJS() ?? {}) as unknown);
const deployment = one('Deployment');
const container = list(at(deployment, 'spec', 'template', 'spec', 'containers'))[0];
const containerPort = (name: string): number => Number(at(list(at(container, 'ports')).find((p) => at(p, 'name') === name), 'containerPort'));

describe('deploy/portcullis manifests', () => {
  it('has every object the deployment needs', () => {
    expect(docs.map((d) => d.kind).sort()).toEqual(
      ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Role', 'RoleBinding', 'Service', 'ServiceAccount'].sort(),
    );
  });

  it('the ConfigMap holds a valid configuration (with every stage compiled)', () => {
    const checked = checkConfig(config, config.listen.admin, createStageModules().map((m) => m.factory));
    expect(checked.ok ? [] : checked.issues).toEqual([]);
    expect(config.development.issuer.enabled).toBe(false);
    expect(config.debug.enabled).toBe(false); // the admin port is reachable on the pod IP
  });

  it('RBAC: exactly get, list, watch on exactly the watched resources, in their namespace', () => {
    const role = one('Role');
    const rules = list(at(role, 'rules'));
    const watched = config.kubernetes.resources;
    expect(rules).toHaveLength(watched.length);
    for (const r of watched) {
      const rule = rules.find((x) => list(at(x, 'apiGroups')).includes(r.group) && list(at(x, 'resources')).includes(r.resource));
      expect(rule, `${r.resource}.${r.group}`).toBeDefined();
      expect(list(at(rule, 'apiGroups'))).toEqual([r.group]);
      expect(list(at(rule, 'resources'))).toEqual([r.resource]);
      expect([...list(at(rule, 'verbs'))].sort()).toEqual(['get', 'list', 'watch']);
      expect(at(rule, 'resourceNames')).toBeUndefined();
      expect(role.metadata.namespace).toBe(r.namespace);
    }
    const binding = one('RoleBinding');
    expect(at(binding, 'roleRef')).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
    expect(binding.metadata.namespace).toBe(role.metadata.namespace);
    const sa = one('ServiceAccount');
    expect(list(at(binding, 'subjects'))).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace }]);
    expect(at(deployment, 'spec', 'template', 'spec', 'serviceAccountName')).toBe(sa.metadata.name);
  });

  it('ports: Service and container match the listen addresses; probes hit the admin port', () => {
    const svc = one('Service');
    const svcPort = (name: string): unknown => list(at(svc, 'spec', 'ports')).find((p) => at(p, 'name') === name);
    expect(at(svcPort('grpc'), 'port')).toBe(portOf(config.listen.grpc));
    expect(at(svcPort('http'), 'port')).toBe(portOf(config.listen.http));
    expect(list(at(svc, 'spec', 'ports'))).toHaveLength(2); // admin is not exposed
    expect(containerPort('grpc')).toBe(portOf(config.listen.grpc));
    expect(containerPort('http')).toBe(portOf(config.listen.http));
    expect(containerPort('admin')).toBe(portOf(config.listen.admin));
    // kubelet probes connect to the pod IP: the admin port must not be loopback-only
    expect(config.listen.admin.startsWith('0.0.0.0:')).toBe(true);
    expect(at(container, 'livenessProbe', 'httpGet')).toEqual({ path: '/healthz', port: 'admin' });
    expect(at(container, 'readinessProbe', 'httpGet')).toEqual({ path: '/readyz', port: 'admin' });
    expect(list(at(container, 'args'))).toContain(`${String(at(container, 'volumeMounts', 0, 'mountPath'))}/portcullis.yaml`);
  });

  it('two replicas, a PodDisruptionBudget and an autoscaler on the same pods', () => {
    expect(at(deployment, 'spec', 'replicas')).toBe(2);
    const selector = at(deployment, 'spec', 'selector', 'matchLabels');
    expect(at(one('PodDisruptionBudget'), 'spec', 'selector', 'matchLabels')).toEqual(selector);
    expect(at(one('Service'), 'spec', 'selector')).toEqual(selector);
    const hpa = one('HorizontalPodAutoscaler');
    expect(at(hpa, 'spec', 'scaleTargetRef')).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name });
    expect(Number(at(hpa, 'spec', 'minReplicas'))).toBeGreaterThanOrEqual(2);
    expect(Number(at(deployment, 'spec', 'template', 'spec', 'terminationGracePeriodSeconds'))).toBeGreaterThan(config.server.shutdownGraceSeconds);
  });
});
