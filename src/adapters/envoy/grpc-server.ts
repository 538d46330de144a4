import { experimental, Server, ServerCredentials, type sendUnaryData, type ServerUnaryCall, type ServiceDefinition } from '@grpc/grpc-js';
import { uriSans } from '../tls/cert-watcher.js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import { denial } from '../../core/errors.js';
import type { CheckInput, Decision } from '../../core/types.js';
import type { CheckRequest__Output } from '../../generated/envoy/service/auth/v3/CheckRequest.js';
import type { CheckResponse } from '../../generated/envoy/service/auth/v3/CheckResponse.js';
import { toDeny } from '../../pipeline/decide.js';
import { decodeCheckRequest, encodeCheckResponse, toCheckInput } from './grpc-mapping.js';
import { loadAuthorizationService } from './protos.js';

export type DecisionHandler = (input: CheckInput) => Decision | Promise<Decision>;

export interface GrpcServer {
  listen(address: string): Promise<string>;
  setServing(serving: boolean): void;
  /** Stops accepting calls, lets in-flight calls finish, forces after graceMs. */
  shutdown(graceMs: number): Promise<void>;
}

export const AUTH_SERVICE_NAME = 'envoy.service.auth.v3.Authorization';

export function createGrpcServer(deps: {
  handle: DecisionHandler;
  onMalformed: () => Decision;
  /** mTLS: certificates from a provider that follows file rotation; clients checked by their URI SANs. */
  tls?: { provider: experimental.CertificateProvider; clientAllowed: (uris: string[]) => boolean; onClientRefused: () => Decision };
}): GrpcServer {
  // Channelz (gRPC's introspection service) is not served by portcullis; with it off grpc-js skips
  // its per-call and per-stream bookkeeping (timestamps, counters, closures) on the hot path.
  const server = new Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024, 'grpc.enable_channelz': 0 });
  const health = new HealthImplementation({ '': 'NOT_SERVING', [AUTH_SERVICE_NAME]: 'NOT_SERVING' });
  health.addToServer(server);

  // The hot path skips proto-loader's object codec: the request is decoded into only the
  // fields toCheckInput() reads, and the response is written straight from the Decision
  // (bytes identical to protobufjs's encoding of toCheckResponse(d)); see grpc-mapping.ts.
  const service = loadAuthorizationService();
  const check = service.Check;
  if (!check) throw new Error('Authorization service has no Check method');
  const codec: ServiceDefinition = {
    ...service,
    Check: {
      ...check,
      // A message that does not decode must still get a CheckResponse (malformed_request), not
      // grpc-js's INTERNAL error: it becomes a request without attributes, which Check denies.
      requestDeserialize: (buf: Buffer) => {
        try {
          return decodeCheckRequest(buf);
        } catch {
          return { attributes: null };
        }
      },
      responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : check.responseSerialize(v)),
    },
  };
  const respond = (cb: sendUnaryData<CheckResponse>, d: Decision) => cb(null, encodeCheckResponse(d) as unknown as CheckResponse);

  server.addService(codec, {
    Check(call: ServerUnaryCall<CheckRequest__Output, CheckResponse>, cb: sendUnaryData<CheckResponse>) {
      if (deps.tls) {
        const cert = call.getAuthContext().sslPeerCertificate;
        if (!deps.tls.clientAllowed(uriSans(cert?.subjectaltname))) {
          respond(cb, deps.tls.onClientRefused());
          return;
        }
      }
      let input: CheckInput | undefined;
      try {
        input = toCheckInput(call.request);
      } catch {
        input = undefined;
      }
      if (!input) {
        respond(cb, deps.onMalformed());
        return;
      }
      const d = deps.handle(input);
      if (d instanceof Promise) {
        d.then(
          (res) => respond(cb, res),
          () => respond(cb, toDeny(denial('internal_error', 'internal error'), 'portcullis')),
        );
      } else respond(cb, d);
    },
  });

  return {
    listen(address) {
      return new Promise((resolve, reject) => {
        const creds = deps.tls
          ? experimental.createCertificateProviderServerCredentials(deps.tls.provider, deps.tls.provider, true)
          : ServerCredentials.createInsecure();
        server.bindAsync(address, creds, (err, port) => {
          if (err) reject(err);
          else resolve(`${address.slice(0, address.lastIndexOf(':'))}:${port}`);
        });
      });
    },
    setServing(serving) {
      const s: ServingStatus = serving ? 'SERVING' : 'NOT_SERVING';
      health.setStatus('', s);
      health.setStatus(AUTH_SERVICE_NAME, s);
    },
    shutdown(graceMs) {
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        timer.unref();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
