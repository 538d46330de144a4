/**
 * Which Kubernetes collection a cache watches, and the URL paths for it.
 * `group: ''` is the core API group (`/api/v1/...`, e.g. Pods); anything
 * else lives under `/apis/<group>/<version>/...` (e.g. Sandboxes).
 */
export interface ResourceRef {
  group: string;
  version: string;
  /** Plural resource name, e.g. `sandboxes`, `pods`. */
  resource: string;
  /** Watch one namespace; undefined = every namespace. */
  namespace?: string;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Object names of most resources (Sandboxes, Pods) are DNS subdomains. */
export function isObjectName(s: string): boolean {
  return s.length > 0 && s.length <= 253 && DNS_SUBDOMAIN.test(s);
}

export function isNamespaceName(s: string): boolean {
  return s.length > 0 && s.length <= 63 && DNS_LABEL.test(s);
}

function prefix(ref: ResourceRef): string {
  return ref.group === '' ? `/api/${ref.version}` : `/apis/${ref.group}/${ref.version}`;
}

/** The collection a list or watch reads: one namespace or all of them. */
export function collectionPath(ref: ResourceRef): string {
  return ref.namespace ? `${prefix(ref)}/namespaces/${ref.namespace}/${ref.resource}` : `${prefix(ref)}/${ref.resource}`;
}

/** One object. Callers check the names first (isObjectName/isNamespaceName); encoding is a second guard. */
export function objectPath(ref: ResourceRef, namespace: string, name: string): string {
  return `${prefix(ref)}/namespaces/${encodeURIComponent(namespace)}/${ref.resource}/${encodeURIComponent(name)}`;
}

/** `sandboxes.agentcube.io/v1alpha1`, `pods/v1`: for logs and health. */
export function describeResource(ref: ResourceRef): string {
  const gr = ref.group === '' ? ref.resource : `${ref.resource}.${ref.group}`;
  return `${gr}/${ref.version}${ref.namespace ? ` in ${ref.namespace}` : ''}`;
}
