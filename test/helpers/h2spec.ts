import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from './envoy.js';

export const H2SPEC_PROVISION_SCRIPT = join(REPO_ROOT, 'scripts', 'provision', 'h2spec.sh');

export interface H2specBinary {
  bin: string;
  /** The module version installed, e.g. "v2.2.1+incompatible". */
  version: string;
}

let provisioned: Promise<H2specBinary> | undefined;

/**
 * Runs scripts/provision/h2spec.sh once per process (idempotent, serialised
 * with a lock across processes) and returns the binary it reports.
 */
export function ensureH2spec(): Promise<H2specBinary> {
  provisioned ??= new Promise((resolve, reject) => {
    execFile('bash', [H2SPEC_PROVISION_SCRIPT], { cwd: REPO_ROOT, timeout: 10 * 60_000, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`h2spec provisioning failed (${H2SPEC_PROVISION_SCRIPT}):\n${stderr || error.message}`));
        return;
      }
      const vars = new Map<string, string>();
      for (const line of stdout.split('\n')) {
        const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
        if (m?.[1] !== undefined && m[2] !== undefined) vars.set(m[1], m[2]);
      }
      const bin = vars.get('H2SPEC');
      if (!bin) {
        reject(new Error(`provisioning printed no H2SPEC:\n${stdout}\n${stderr}`));
        return;
      }
      resolve({ bin, version: vars.get('H2SPEC_VERSION') ?? 'unknown' });
    });
  });
  return provisioned;
}

export type CaseOutcome = 'passed' | 'failed' | 'skipped';

export interface H2specCase {
  /** h2spec's id of the case, e.g. "http2/6.5.3/1" or "generic/1/1" (the `package` attribute plus the case number within it). */
  id: string;
  /** The section title, e.g. "6.5.3. Settings Synchronization". */
  section: string;
  /** The case's description, e.g. "Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE". */
  title: string;
  outcome: CaseOutcome;
  /** The failure or error text (expected / actual), for failed cases. */
  detail: string;
}

export interface H2specRun {
  exitCode: number;
  stdout: string;
  stderr: string;
  cases: H2specCase[];
}

const decodeXml = (s: string): string =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#x([0-9a-fA-F]+);/g, (_, h: string) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#([0-9]+);/g, (_, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&amp;/g, '&');

const attr = (tag: string, name: string): string => decodeXml(new RegExp(`\\b${name}="([^"]*)"`).exec(tag)?.[1] ?? '');

/**
 * Parses h2spec's JUnit report (`-j FILE`): one <testsuite> per section
 * (name = section title, package = its id such as "http2/6.5.3"), one
 * <testcase> per case in h2spec's order (classname = the case's description),
 * with <failure>, <error> or <skipped> children. A case's number is its
 * position in its section, as in h2spec's own output when every case runs.
 */
export function parseJunitReport(xml: string): H2specCase[] {
  const cases: H2specCase[] = [];
  const suiteRe = /<testsuite\b([^>]*)>([\s\S]*?)<\/testsuite>/g;
  for (let s = suiteRe.exec(xml); s; s = suiteRe.exec(xml)) {
    const suiteTag = s[1] ?? '';
    const body = s[2] ?? '';
    const pkg = attr(suiteTag, 'package');
    const section = attr(suiteTag, 'name');
    const caseRe = /<testcase\b([^>]*?)(?:\/>|>([\s\S]*?)<\/testcase>)/g;
    let n = 0;
    for (let c = caseRe.exec(body); c; c = caseRe.exec(body)) {
      n++;
      const inner = c[2] ?? '';
      const failed = /<(failure|error)\b/.test(inner);
      const skipped = /<skipped\b/.test(inner);
      cases.push({
        id: `${pkg}/${n}`,
        section,
        title: attr(c[1] ?? '', 'classname'),
        outcome: failed ? 'failed' : skipped ? 'skipped' : 'passed',
        detail: failed ? decodeXml(inner.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim()) : '',
      });
    }
  }
  return cases;
}

/** Runs h2spec against host:port (plain TCP) and parses its JUnit report. */
export async function runH2spec(
  bin: string,
  opts: { host: string; port: number; reportPath: string; strict?: boolean; timeoutSec?: number; specs?: string[] },
): Promise<H2specRun> {
  const args = [...(opts.specs ?? []), '-h', opts.host, '-p', String(opts.port), '-j', opts.reportPath, '-o', String(opts.timeoutSec ?? 2)];
  if (opts.strict) args.push('--strict');
  const { exitCode, stdout, stderr } = await new Promise<{ exitCode: number; stdout: string; stderr: string }>((resolve) => {
    execFile(bin, args, { timeout: 10 * 60_000, maxBuffer: 16 << 20, env: { ...process.env, NO_COLOR: '1' } }, (error, out, err) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ exitCode: code, stdout: out, stderr: err });
    });
  });
  let xml = '';
  try {
    xml = await readFile(opts.reportPath, 'utf8');
  } catch {
    throw new Error(`h2spec wrote no report (exit ${exitCode}):\n${stdout}\n${stderr}`);
  }
  return { exitCode, stdout, stderr, cases: parseJunitReport(xml) };
}
