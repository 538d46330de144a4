// Generates TypeScript types for Envoy's ext_authz protos (from @grpc/grpc-js-xds's
// copy of the Envoy API) with the same options src/adapters/envoy/protos.ts passes to
// @grpc/proto-loader at run time, so the types and the runtime agree.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const deps = join(root, 'node_modules/@grpc/grpc-js-xds/deps');
// GEN_PROTO_OUT lets the freshness test generate into a temporary folder.
const out = process.env.GEN_PROTO_OUT ?? join(root, 'src/generated');
rmSync(out, { recursive: true, force: true });
execFileSync(
  join(root, 'node_modules/.bin/proto-loader-gen-types'),
  [
    '--keepCase', '--longs=String', '--enums=String', '--defaults', '--oneofs',
    '--grpcLib=@grpc/grpc-js', '--importFileExtension=.js', '--outDir', out,
    'envoy/service/auth/v3/external_auth.proto',
    ...['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => `--includeDirs=${join(deps, d)}`),
  ],
  { stdio: 'inherit' },
);
