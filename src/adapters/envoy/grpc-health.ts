import { readString, readVarint, skip, type Cursor } from './grpc-mapping.js';

/**
 * The two messages of the standard gRPC health service (grpc.health.v1,
 * https://github.com/grpc/grpc/blob/master/doc/health-checking.md), read and
 * written on the wire for portcullis's own gRPC transport (grpc-server.ts):
 *
 *   message HealthCheckRequest  { string service = 1; }
 *   message HealthCheckResponse { ServingStatus status = 1; }
 *   enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
 *
 * Tests check both against the proto definitions shipped by grpc-health-check
 * through a real @grpc/grpc-js client.
 */
export const HealthStatus = { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } as const;
export type HealthStatusCode = (typeof HealthStatus)[keyof typeof HealthStatus];

/** The `service` field of a HealthCheckRequest; throws RangeError on a malformed message. */
export function decodeHealthCheckRequest(buf: Buffer): string {
  const c: Cursor = { buf, pos: 0 };
  let service = '';
  while (c.pos < buf.length) {
    const tag = readVarint(c, buf.length);
    if (tag === 10) service = readString(c, buf.length);
    else skip(c, tag & 7, buf.length);
  }
  return service;
}

/** A HealthCheckResponse as one gRPC length-prefixed message. */
export function healthResponseFrame(status: HealthStatusCode): Buffer {
  // proto3 leaves a zero enum out: UNKNOWN is the empty message.
  return status === HealthStatus.UNKNOWN ? Buffer.from([0, 0, 0, 0, 0]) : Buffer.from([0, 0, 0, 0, 2, 0x08, status]);
}
