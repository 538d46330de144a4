import { createApp } from '../app.js';
import type { DecisionTrace } from '../pipeline/decide.js';
import { explainResult, formatExplain, type ExplainResult } from './format.js';
import { ExplainInputError, parseCurlArgs, shellSplit, toCheckInput, type ExplainRequest } from './request.js';

export const EXPLAIN_USAGE = `usage:
  portcullis explain [--admin URL | --config FILE] [--json] [--peer SPIFFE_ID] [--context KEY=VALUE] <request>

<request> is a curl command line, typed or pasted (with or without the word "curl"):
  portcullis explain -X POST -H 'authorization: Bearer eyJ…' http://router.example/v1/sandboxes/s1/invoke
  portcullis explain "curl -s -X POST -H 'authorization: Bearer eyJ…' http://router.example/v1/sandboxes/s1/invoke"

--admin URL   ask the running portcullis at its admin address (default http://127.0.0.1:9901): its live configuration
--config FILE evaluate against FILE in this process instead (fetches the issuers' keys first)
--json        print the full JSON result instead of the readable trace
Nothing is counted as traffic: no metrics, no recent-decisions entry, no cache writes, no key refetch.
`;

interface ExplainCli {
  admin: string;
  config?: string;
  json: boolean;
  request: ExplainRequest;
}

export function parseExplainArgs(argv: readonly string[]): ExplainCli {
  let admin = 'http://127.0.0.1:9901';
  let config: string | undefined;
  let json = false;
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--admin') admin = argv[++i] ?? admin;
    else if (a === '--config') config = argv[++i];
    else if (a === '--json') json = true;
    else rest.push(a);
  }
  const args = rest.length === 1 && /\s/.test(rest[0] as string) ? shellSplit(rest[0] as string) : rest;
  if (args.length === 0) throw new ExplainInputError('no request given');
  return { admin: admin.replace(/\/+$/, ''), config, json, request: parseCurlArgs(args) };
}

async function viaAdmin(admin: string, request: ExplainRequest, fetchFn: typeof fetch): Promise<ExplainResult> {
  const res = await fetchFn(`${admin}/debug/explain`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ method: request.method, url: request.url, headers: request.headers, peer: request.peer, contextExtensions: request.contextExtensions }),
  });
  const body = (await res.json()) as ExplainResult & { error_description?: string };
  if (!res.ok) throw new ExplainInputError(body.error_description ?? `admin answered ${res.status}`);
  return body;
}

async function viaConfig(file: string, request: ExplainRequest): Promise<ExplainResult> {
  const app = createApp({
    configPath: file,
    overrides: { grpc: '127.0.0.1:0', http: 'off', admin: '127.0.0.1:0', logLevel: 'silent' },
    defaultMetrics: false,
  });
  await app.start();
  try {
    // Give the issuers a moment to load their keys; explain never triggers a refetch itself.
    const deadline = Date.now() + 5_000;
    while (!app.readiness().ready && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const trace: DecisionTrace = {};
    const d = await app.evaluate(toCheckInput(request), trace, { dryRun: true });
    return explainResult(d, trace);
  } finally {
    await app.stop();
  }
}

export async function runExplain(argv: readonly string[], out: (s: string) => void, fetchFn: typeof fetch = fetch): Promise<number> {
  let cli: ExplainCli;
  try {
    cli = parseExplainArgs(argv);
  } catch (err) {
    out(`${(err as Error).message}\n\n${EXPLAIN_USAGE}`);
    return 2;
  }
  try {
    const result = cli.config ? await viaConfig(cli.config, cli.request) : await viaAdmin(cli.admin, cli.request, fetchFn);
    out(cli.json ? `${JSON.stringify(result, null, 2)}\n` : formatExplain(result));
    return result.decision === 'allow' ? 0 : 1;
  } catch (err) {
    const msg = err instanceof ExplainInputError ? err.message : `cannot explain: ${(err as Error).message}${cli.config ? '' : ` (is portcullis running with its admin port at ${cli.admin}?)`}`;
    out(`${msg}\n`);
    return 2;
  }
}
