/**
 * Why a request to the Kubernetes API failed. `switch (err.code)` narrows;
 * tests assert on the code, never on the message.
 */
export type KubeErrorCode =
  /** 410: the resourceVersion (or list continue token) is older than what the server keeps: relist. */
  | 'ERR_KUBE_GONE'
  /** Any other non-2xx answer (401/403 usually mean RBAC, 5xx an unhealthy server). */
  | 'ERR_KUBE_HTTP'
  /** No answer: connection refused or reset, TLS failure, DNS. */
  | 'ERR_KUBE_NETWORK'
  /** No answer in time (request deadline or an idle watch). */
  | 'ERR_KUBE_TIMEOUT'
  /** An answer that is not the JSON we asked for. */
  | 'ERR_KUBE_DECODE';

export class KubeError extends Error {
  readonly code: KubeErrorCode;
  /** HTTP status (or the status inside a watch ERROR event), when there was one. */
  readonly status?: number;
  constructor(code: KubeErrorCode, message: string, options?: { status?: number; cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.code = code;
    this.status = options?.status;
    this.name = 'KubeError';
  }
}

export function kubeErrorFromStatus(status: number, message: string): KubeError {
  return new KubeError(status === 410 ? 'ERR_KUBE_GONE' : 'ERR_KUBE_HTTP', message, { status });
}
