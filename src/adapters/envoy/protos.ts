import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { loadPackageDefinition, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options } from '@grpc/proto-loader';
import type { ProtoGrpcType } from '../../generated/external_auth.js';

/**
 * Envoy's own ext_authz protos, from the copy of the Envoy API that
 * @grpc/grpc-js-xds ships. The options must match scripts/gen-proto.mjs, which
 * generates src/generated/ from the same files.
 */
export const PROTO_LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

export function envoyProtoIncludeDirs(): string[] {
  const require = createRequire(import.meta.url);
  const xdsRoot = dirname(require.resolve('@grpc/grpc-js-xds/package.json'));
  return ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(xdsRoot, 'deps', d));
}

export function loadAuthorizationService(): ServiceDefinition {
  const def = loadSync('envoy/service/auth/v3/external_auth.proto', {
    ...PROTO_LOADER_OPTIONS,
    includeDirs: envoyProtoIncludeDirs(),
  });
  const pkg = loadPackageDefinition(def) as unknown as ProtoGrpcType;
  return pkg.envoy.service.auth.v3.Authorization.service;
}

/** The client constructor, for tests and the explain CLI. */
export function loadAuthorizationClient(): ProtoGrpcType['envoy']['service']['auth']['v3']['Authorization'] {
  const def = loadSync('envoy/service/auth/v3/external_auth.proto', {
    ...PROTO_LOADER_OPTIONS,
    includeDirs: envoyProtoIncludeDirs(),
  });
  return (loadPackageDefinition(def) as unknown as ProtoGrpcType).envoy.service.auth.v3.Authorization;
}
