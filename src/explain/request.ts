import type { CheckInput } from '../core/types.js';

/**
 * A request to explain: what an operator types (`-X POST -H 'k: v' URL`) or
 * pastes (`curl -X POST -H ... URL`), turned into the pipeline's CheckInput.
 */
export interface ExplainRequest {
  method: string;
  url: string;
  headers: [string, string][];
  peer?: string;
  contextExtensions?: Record<string, string>;
}

export class ExplainInputError extends Error {
  override readonly name = 'ExplainInputError';
}

/** Splits a shell command line the way a POSIX shell would for quotes and backslashes (no expansion). */
export function shellSplit(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else cur += c;
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else if (c === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1] as string)) cur += line[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === '\\') {
      if (line[i + 1] === '\n') i++;
      else if (i + 1 < line.length) {
        cur += line[++i];
        inWord = true;
      }
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new ExplainInputError(`unterminated ${quote} quote`);
  if (inWord) out.push(cur);
  return out;
}

const VALUE_FLAGS_IGNORED = new Set(['-o', '--output', '-m', '--max-time', '--connect-timeout', '-w', '--write-out', '-A', '--user-agent-file', '--cacert', '--cert', '--key', '-E', '--resolve', '--retry']);

/** Parses curl-style arguments (with or without the leading `curl`). */
export function parseCurlArgs(args: readonly string[]): ExplainRequest {
  const a = args[0] === 'curl' ? args.slice(1) : [...args];
  let method: string | undefined;
  let url: string | undefined;
  let hasData = false;
  let head = false;
  let peer: string | undefined;
  const headers: [string, string][] = [];
  const ext: Record<string, string> = {};
  for (let i = 0; i < a.length; i++) {
    const arg = a[i] as string;
    const next = (): string => {
      const v = a[++i];
      if (v === undefined) throw new ExplainInputError(`${arg} needs a value`);
      return v;
    };
    if (arg === '-X' || arg === '--request') method = next().toUpperCase();
    else if (arg.startsWith('-X') && arg.length > 2) method = arg.slice(2).toUpperCase();
    else if (arg === '-H' || arg === '--header') {
      const h = next();
      const c = h.indexOf(':');
      if (c <= 0) throw new ExplainInputError(`header "${h}" is not "Name: value"`);
      headers.push([h.slice(0, c).trim().toLowerCase(), h.slice(c + 1).trim()]);
    } else if (arg === '-b' || arg === '--cookie') headers.push(['cookie', next()]);
    else if (arg === '-A' || arg === '--user-agent') headers.push(['user-agent', next()]);
    else if (arg === '-e' || arg === '--referer') headers.push(['referer', next()]);
    else if (arg === '-u' || arg === '--user') headers.push(['authorization', `Basic ${Buffer.from(next()).toString('base64')}`]);
    else if (/^--data(-raw|-binary|-urlencode|-ascii)?$/.test(arg) || arg === '-d' || arg === '--json' || arg === '-F' || arg === '--form') {
      next();
      hasData = true;
    } else if (arg === '-I' || arg === '--head') head = true;
    else if (arg === '--url') url = next();
    else if (arg === '--peer') peer = next();
    else if (arg === '--context' || arg === '--context-extension') {
      const kv = next();
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new ExplainInputError(`${arg} takes KEY=VALUE`);
      ext[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else if (VALUE_FLAGS_IGNORED.has(arg)) next();
    else if (arg.startsWith('-')) continue; // -s, -v, -k, -i, --compressed, ...: no effect on the decision
    else if (url === undefined) url = arg;
    else throw new ExplainInputError(`unexpected argument "${arg}" (one URL per request)`);
  }
  if (!url) throw new ExplainInputError('no URL given');
  const m = method ?? (head ? 'HEAD' : hasData ? 'POST' : 'GET');
  return { method: m, url, headers, peer, contextExtensions: Object.keys(ext).length > 0 ? ext : undefined };
}

export function toCheckInput(req: ExplainRequest): CheckInput {
  let u: URL;
  try {
    u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(req.url) ? req.url : `http://${req.url}`);
  } catch {
    throw new ExplainInputError(`"${req.url}" is not a URL`);
  }
  const headers = new Map<string, string>();
  const counts = new Map<string, number>();
  for (const [k, v] of req.headers) {
    const name = k.toLowerCase();
    const prev = headers.get(name);
    headers.set(name, prev === undefined ? v : `${prev},${v}`);
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  const host = headers.get('host') ?? u.host;
  return {
    method: req.method.toUpperCase(),
    host,
    path: u.pathname || '/',
    query: u.search.startsWith('?') ? u.search.slice(1) : u.search,
    headers,
    headerCounts: counts,
    peerPrincipal: req.peer,
    contextExtensions: new Map(Object.entries(req.contextExtensions ?? {})),
  };
}
