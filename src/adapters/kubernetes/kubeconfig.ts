import { KubeConfig } from '@kubernetes/client-node';

/**
 * Where the API server and the credentials come from:
 *   - `path` given: that kubeconfig file (its current context);
 *   - inside a Pod (`KUBERNETES_SERVICE_HOST` set): the service account
 *     (token file re-read as the kubelet rotates it, cluster CA);
 *   - otherwise `$KUBECONFIG`, then `~/.kube/config`.
 * Throws when the file cannot be read or names no cluster.
 */
export function loadKubeConfig(path: string | undefined, env: NodeJS.ProcessEnv = process.env): KubeConfig {
  const kc = new KubeConfig();
  if (path) kc.loadFromFile(path);
  else if (env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  const cluster = kc.getCurrentCluster();
  if (!cluster || !cluster.server) throw new Error(`${path ?? 'the default kubeconfig'} names no current cluster`);
  return kc;
}
