import type { KubeConfig } from '@kubernetes/client-node';

/**
 * Where the API server and the credentials come from:
 *   - `path` given: that kubeconfig file (its current context);
 *   - inside a Pod (`KUBERNETES_SERVICE_HOST` set): the service account
 *     (token file re-read as the kubelet rotates it, cluster CA);
 *   - otherwise `$KUBECONFIG`, then `~/.kube/config`.
 *
 * `@kubernetes/client-node` is imported here, on first use, not when
 * portcullis starts: configurations without ownership routes never load it.
 * Rejects when the library cannot be loaded, the file cannot be read, or it
 * names no cluster.
 */
export async function loadKubeConfig(path: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<KubeConfig> {
  let lib: typeof import('@kubernetes/client-node');
  try {
    lib = await import('@kubernetes/client-node');
  } catch (err) {
    throw new Error(`@kubernetes/client-node cannot be loaded on Node ${process.version}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const { KubeConfig: KubeConfigClass } = lib;
  const kc = new KubeConfigClass();
  if (path) kc.loadFromFile(path);
  else if (env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  const cluster = kc.getCurrentCluster();
  if (!cluster || !cluster.server) throw new Error(`${path ?? 'the default kubeconfig'} names no current cluster`);
  return kc;
}
