/**
 * h2spec (github.com/summerwind/h2spec, installed by scripts/provision/h2spec.sh)
 * against portcullis's own HTTP/2 layer (src/adapters/envoy/h2/connection.ts),
 * every section (generic, http2 = RFC 7540/9113, hpack = RFC 7541) with --strict.
 *
 * Two servers:
 *   1. The real gRPC port (`createGrpcServer`). Every case must pass except the
 *      ones listed in GRPC_NOT_APPLICABLE, each with the reason it cannot apply
 *      to a gRPC-only server (printed when the test runs). They all come from one
 *      fact: h2spec's requests are `GET /` (and a few `POST /` without a gRPC
 *      content type), which the gRPC port answers at once with a bodiless 405
 *      (or 415), closing the stream, where h2spec expects the stream to stay
 *      open or a response body to flow-control.
 *   2. The same HTTP/2 layer (`H2Connection`) with a plain handler that answers
 *      every request once it has ended, with a small body. Nothing is exempt
 *      there: the cases that do not apply to the gRPC port run against the
 *      HTTP/2 layer itself and must pass.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGrpcServer, type GrpcServer } from '../../src/adapters/envoy/grpc-server.js';
import { H2Connection, type H2Handler } from '../../src/adapters/envoy/h2/connection.js';
import { encodeHeaderBlock } from '../../src/adapters/envoy/h2/hpack.js';
import { denial } from '../../src/core/errors.js';
import type { Decision } from '../../src/core/types.js';
import { toDeny } from '../../src/pipeline/decide.js';
import { ensureH2spec, runH2spec, type H2specCase, type H2specRun } from '../helpers/h2spec.js';

/** h2spec v2.2.1 has 146 cases over the three sections; fewer means a section did not run. */
const MIN_CASES = 146;

interface Exemption {
  /** h2spec's case title, checked so that a renumbering cannot exempt another case. */
  title: string;
  /** What h2spec reports for the case against the gRPC port ('failed', or 'skipped' by h2spec itself). */
  outcome: 'failed' | 'skipped';
  reason: string;
}

const EARLY_ANSWER =
  "the gRPC port answers h2spec's GET (405) or non-gRPC POST (415) as soon as its HEADERS arrive, with END_STREAM, " +
  'then RST_STREAM(NO_ERROR) because the client had not ended the stream (RFC 9113 §8.1); after a RST_STREAM it sent, ' +
  'an endpoint MUST ignore the frames the client sends on that stream (RFC 9113 §5.1, "closed"), so the error h2spec ' +
  'provokes on that stream never comes';
const NO_BODY =
  "the gRPC port's 405 answer to GET / has no body, so there is no DATA frame for the case to flow-control";

/**
 * Cases that do not apply to the gRPC port, keyed by h2spec's id (section / number within it).
 * Each is run, and passes, against the bare HTTP/2 layer below.
 */
const GRPC_NOT_APPLICABLE: Readonly<Record<string, Exemption>> = {
  'generic/2/2': { title: 'Sends a WINDOW_UPDATE frame on half-closed (remote) stream', outcome: 'failed', reason: `expects a DATA frame: ${NO_BODY}` },
  'generic/2/3': { title: 'Sends a PRIORITY frame on half-closed (remote) stream', outcome: 'failed', reason: `expects a DATA frame: ${NO_BODY}` },
  'http2/5.1/8': { title: 'closed: Sends a DATA frame after sending RST_STREAM frame', outcome: 'failed', reason: EARLY_ANSWER },
  'http2/5.1/9': { title: 'closed: Sends a HEADERS frame after sending RST_STREAM frame', outcome: 'failed', reason: EARLY_ANSWER },
  'http2/5.1.2/1': {
    title: 'Sends HEADERS frames that causes their advertised concurrent stream limit to be exceeded',
    outcome: 'failed',
    reason:
      "h2spec opens SETTINGS_MAX_CONCURRENT_STREAMS + 1 GET streams and relies on a zero window to keep their response bodies (and so the streams) open; the 405 answers have no body, so every stream closes at once and the limit is never reached (the limit is tested with pending gRPC calls in test/unit/adapters/envoy/h2/connection.test.ts)",
  },
  'http2/6.9.1/3': {
    title: 'Sends multiple WINDOW_UPDATE frames increasing the flow control window to above 2^31-1 on a stream',
    outcome: 'failed',
    reason: EARLY_ANSWER,
  },
  'http2/8.1/1': { title: 'Sends a second HEADERS frame without the END_STREAM flag', outcome: 'failed', reason: EARLY_ANSWER },
  'http2/8.1.2.1/3': { title: 'Sends a HEADERS frame that contains a pseudo-header field as trailers', outcome: 'failed', reason: EARLY_ANSWER },
  'http2/8.1.2.6/1': {
    title: 'Sends a HEADERS frame with the "content-length" header field which does not equal the DATA frame payload length',
    outcome: 'failed',
    reason: EARLY_ANSWER,
  },
  'http2/8.1.2.6/2': {
    title: 'Sends a HEADERS frame with the "content-length" header field which does not equal the sum of the multiple DATA frames payload length',
    outcome: 'failed',
    reason: EARLY_ANSWER,
  },
  'http2/6.5.3/1': { title: 'Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE', outcome: 'skipped', reason: `h2spec skips it: ${NO_BODY}` },
  'http2/6.9.1/1': {
    title: 'Sends SETTINGS frame to set the initial window size to 1 and sends HEADERS frame',
    outcome: 'skipped',
    reason: `h2spec skips it: ${NO_BODY}`,
  },
  'http2/6.9.2/1': { title: 'Changes SETTINGS_INITIAL_WINDOW_SIZE after sending HEADERS frame', outcome: 'skipped', reason: `h2spec skips it: ${NO_BODY}` },
  'http2/6.9.2/2': { title: 'Sends a SETTINGS frame for window size to be negative', outcome: 'skipped', reason: `h2spec skips it: ${NO_BODY}` },
};

let h2spec: string;
let workDir: string;

beforeAll(async () => {
  h2spec = (await ensureH2spec()).bin;
  workDir = await mkdtemp(join(tmpdir(), 'portcullis-h2spec-'));
});
afterAll(async () => {
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

const describeCase = (c: H2specCase): string => `${c.id} "${c.section} — ${c.title}": ${c.outcome}${c.detail ? ` (${c.detail})` : ''}`;

function summary(run: H2specRun): string {
  const counts = { passed: 0, failed: 0, skipped: 0 };
  for (const c of run.cases) counts[c.outcome]++;
  return `${run.cases.length} cases: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`;
}

async function h2specAgainst(port: number, name: string): Promise<H2specRun> {
  const run = await runH2spec(h2spec, { host: '127.0.0.1', port, reportPath: join(workDir, `${name}.xml`), strict: true });
  expect(run.cases.length, `h2spec ran too few cases (exit ${run.exitCode}):\n${run.stdout}\n${run.stderr}`).toBeGreaterThanOrEqual(MIN_CASES);
  return run;
}

describe('h2spec against the gRPC port (createGrpcServer)', () => {
  let server: GrpcServer | undefined;
  afterAll(async () => {
    await server?.shutdown(0);
  });

  it('passes every case except the ones that cannot apply to a gRPC-only server', { timeout: 300_000 }, async () => {
    const allow = (): Decision => ({ kind: 'allow', route: 'r', headersToSet: [], headersToRemove: [], metadata: { route: 'r', decision: 'allow' } });
    server = createGrpcServer({ handle: allow, onMalformed: () => toDeny(denial('malformed_request', 'malformed'), 'h2spec') });
    const address = await server.listen('127.0.0.1:0');
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    const run = await h2specAgainst(port, 'grpc');

    const unexpected: string[] = [];
    const exempted: string[] = [];
    for (const c of run.cases) {
      const ex = GRPC_NOT_APPLICABLE[c.id];
      if (ex && ex.title === c.title) {
        exempted.push(`  ${c.id} (${c.outcome}) "${c.title}"\n      not applicable: ${ex.reason}`);
        // An exempt case that now passes is fine; one that fails differently from what the list says is not.
        if (c.outcome !== 'passed' && c.outcome !== ex.outcome) unexpected.push(describeCase(c));
      } else if (c.outcome !== 'passed') unexpected.push(describeCase(c));
    }
    // Every exemption must still name a case h2spec runs (a stale entry would hide nothing, but says something false).
    for (const [id, ex] of Object.entries(GRPC_NOT_APPLICABLE)) {
      if (!run.cases.some((c) => c.id === id && c.title === ex.title)) unexpected.push(`exemption ${id} "${ex.title}" matches no h2spec case`);
    }
    console.log(`h2spec --strict against the gRPC port: ${summary(run)}\nexempt (${exempted.length}):\n${exempted.join('\n')}`);
    expect(unexpected, `h2spec cases that failed against the gRPC port:\n${unexpected.join('\n')}\n\n${run.stdout}`).toEqual([]);
  });
});

describe('h2spec against the bare HTTP/2 layer (H2Connection, plain handler)', () => {
  let server: Server | undefined;
  afterAll(async () => {
    const s = server;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  });

  it('passes every case, none exempt and none skipped', { timeout: 300_000 }, async () => {
    const head = encodeHeaderBlock([
      [':status', '200'],
      ['content-type', 'text/plain'],
    ]);
    const body = Buffer.from('portcullis h2spec\n');
    // Answers every request once the client has ended it, with a body (so there is DATA to flow-control).
    const handler: H2Handler = {
      onHeaders: () => false,
      onRequest: (stream) => stream.respond(head, body, undefined),
      onBodyTooLarge: (stream) => stream.respond(encodeHeaderBlock([[':status', '413']]), undefined, undefined),
    };
    const srv = createServer((socket) => void new H2Connection({ socket, handler }));
    server = srv;
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const run = await h2specAgainst((srv.address() as AddressInfo).port, 'plain');
    console.log(`h2spec --strict against the bare HTTP/2 layer: ${summary(run)}`);
    const notPassed = run.cases.filter((c) => c.outcome !== 'passed').map(describeCase);
    expect(notPassed, `h2spec cases that did not pass against H2Connection:\n${notPassed.join('\n')}\n\n${run.stdout}`).toEqual([]);
  });
});
