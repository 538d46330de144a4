/**
 * The route table: picks the route for (host, method, path).
 *
 * Routes are grouped into host buckets (exact host, `*.suffix`, `prefix.*`,
 * any host); each bucket holds a segment trie. A lookup tries the buckets from
 * most to least specific host and walks one trie per bucket, so its cost
 * depends on the number of path segments and host labels, not on the number
 * of routes.
 *
 * Precedence (independent of configuration order):
 *  1. host: exact > `*.suffix` (longer suffix first) > `prefix.*` (longer
 *     prefix first) > any host. A bucket with no route for the request falls
 *     through to the next one.
 *  2. path, within a bucket, segment by segment: literal > `{param}` > `/**`,
 *     with backtracking when a more specific branch fails deeper down.
 *  3. method: a route listing the request method beats a route without
 *     methods on the same path template.
 * Two routes that would tie (same host pattern, same template up to parameter
 * names, overlapping methods) are a configuration error.
 */
import {
  MATCH_ALL_TEMPLATE,
  parseTemplate,
  splitRequestPath,
  templateShape,
  type PathTemplate,
} from './path.js';

export { splitRequestPath } from './path.js';
export type { PathCheck } from './path.js';

export interface RouteMatchSpec {
  hosts?: readonly string[];
  methods?: readonly string[];
  path?: string;
}

export interface Routable {
  readonly name: string;
  readonly match: RouteMatchSpec;
}

export interface RouteTableIssue {
  /** Index of the offending route in the input list. */
  index: number;
  /** Config path, e.g. `routes[3].match.path`. */
  path: string;
  message: string;
}

export interface Matched<R> {
  readonly route: R;
  /** Path parameters by name: a frozen null-prototype object (built when first read). */
  readonly params: Readonly<Record<string, string>>;
}

export interface RouteTable<R extends Routable> {
  /**
   * The route for a request, or undefined when none matches (including when
   * the path is rejected by `splitRequestPath`). `path` has no query string
   * and is not yet percent-decoded; `host` may carry a port.
   */
  match(host: string, method: string, path: string): Matched<R> | undefined;
  byName(name: string): R | undefined;
  readonly size: number;
}

export type BuildResult<R extends Routable> =
  | { ok: true; table: RouteTable<R> }
  | { ok: false; issues: RouteTableIssue[] };

// ---------------------------------------------------------------------------
// Host patterns

type HostPattern =
  | { readonly kind: 'any' }
  | { readonly kind: 'exact'; readonly host: string }
  | { readonly kind: 'suffix'; readonly suffix: string }
  | { readonly kind: 'prefix'; readonly prefix: string };

type HostParse = { ok: true; pattern: HostPattern } | { ok: false; message: string };

const LABEL = /^[a-z0-9_-]+$/;
const IPV6 = /^[0-9a-f:.]+$/;
const METHOD = /^[A-Z]+$/;

function checkLabels(name: string): string | undefined {
  for (const label of name.split('.')) {
    if (label === '') return 'host pattern has an empty label';
    if (label.includes('*')) {
      return "'*' is only allowed alone, as the whole first label (*.example.com) or as the whole last label (router.*)";
    }
    if (!LABEL.test(label)) return `host pattern label '${label}' may only contain letters, digits, '-' and '_'`;
  }
  return undefined;
}

function isIPv6(s: string): boolean {
  return IPV6.test(s) && s.indexOf(':') !== s.lastIndexOf(':');
}

function parseHostPattern(input: unknown): HostParse {
  if (typeof input !== 'string') return { ok: false, message: 'host pattern must be a string' };
  if (input === '') return { ok: false, message: 'host pattern must not be empty' };
  if (/\s/.test(input)) return { ok: false, message: 'host pattern must not contain spaces' };
  let p = input.toLowerCase();
  if (p === '*') return { ok: true, pattern: { kind: 'any' } };
  if (p.startsWith('[')) {
    const close = p.indexOf(']');
    if (close === p.length - 1 && isIPv6(p.slice(1, close))) {
      return { ok: true, pattern: { kind: 'exact', host: p.slice(1, close) } };
    }
    if (close !== -1 && p.charCodeAt(close + 1) === 0x3a) {
      return { ok: false, message: 'host pattern must not include a port (ports are ignored when matching)' };
    }
    return { ok: false, message: 'invalid IPv6 host pattern' };
  }
  if (p.includes(':')) {
    if (isIPv6(p)) return { ok: true, pattern: { kind: 'exact', host: p } };
    return { ok: false, message: 'host pattern must not include a port (ports are ignored when matching)' };
  }
  if (p.startsWith('*.')) {
    let suffix = p.slice(2);
    if (suffix.length > 1 && suffix.endsWith('.')) suffix = suffix.slice(0, -1);
    const bad = checkLabels(suffix);
    return bad ? { ok: false, message: bad } : { ok: true, pattern: { kind: 'suffix', suffix } };
  }
  if (p.length > 1 && p.endsWith('.')) p = p.slice(0, -1);
  if (p.endsWith('.*')) {
    const prefix = p.slice(0, -2);
    const bad = checkLabels(prefix);
    return bad ? { ok: false, message: bad } : { ok: true, pattern: { kind: 'prefix', prefix } };
  }
  const bad = checkLabels(p);
  return bad ? { ok: false, message: bad } : { ok: true, pattern: { kind: 'exact', host: p } };
}

function hostPatternKey(p: HostPattern): string {
  switch (p.kind) {
    case 'any':
      return '*';
    case 'exact':
      return p.host;
    case 'suffix':
      return `*.${p.suffix}`;
    case 'prefix':
      return `${p.prefix}.*`;
  }
}

/**
 * Lower-cases the request host and removes the port (`host:port`,
 * `[v6]:port`), IPv6 brackets and a trailing dot.
 */
function normalizeRequestHost(host: string): string {
  let h = host;
  if (h.charCodeAt(0) === 0x5b /* [ */) {
    const close = h.indexOf(']');
    if (close !== -1) h = h.slice(1, close);
  } else {
    const colon = h.indexOf(':');
    // Exactly one colon: host:port. More than one: a bare IPv6 address.
    if (colon !== -1 && colon === h.lastIndexOf(':')) h = h.slice(0, colon);
  }
  if (h.length > 1 && h.charCodeAt(h.length - 1) === 0x2e) h = h.slice(0, -1);
  return h.toLowerCase();
}

// ---------------------------------------------------------------------------
// Segment trie

interface Entry<R> {
  readonly route: R;
  readonly index: number;
  /** Parameter names in the order their segments appear. */
  readonly paramNames: readonly string[];
}

interface Terminal<R> {
  readonly byMethod: Map<string, Entry<R>>;
  any: Entry<R> | undefined;
}

interface TrieNode<R> {
  literals: Map<string, TrieNode<R>> | undefined;
  param: TrieNode<R> | undefined;
  /** Routes whose template ends exactly here. */
  end: Terminal<R> | undefined;
  /** Routes whose template ends here with `/**`. */
  glob: Terminal<R> | undefined;
}

function newNode<R>(): TrieNode<R> {
  return { literals: undefined, param: undefined, end: undefined, glob: undefined };
}

function pick<R>(t: Terminal<R> | undefined, method: string): Entry<R> | undefined {
  if (t === undefined) return undefined;
  return t.byMethod.get(method) ?? t.any;
}

/**
 * Depth-first search: literal child, then the param child, then `**`. Each
 * trie node is reached through its single parent, so a lookup visits every
 * node at most once and never more than the nodes along the request's path.
 * `values` collects param values (pushed on the way down, popped on failure).
 */
function walk<R>(node: TrieNode<R>, segs: readonly string[], depth: number, method: string, values: string[]): Entry<R> | undefined {
  if (depth === segs.length) return pick(node.end, method) ?? pick(node.glob, method);
  const seg = segs[depth] as string;
  if (node.literals !== undefined) {
    const child = node.literals.get(seg);
    if (child !== undefined) {
      const found = walk(child, segs, depth + 1, method, values);
      if (found !== undefined) return found;
    }
  }
  if (node.param !== undefined) {
    values.push(seg);
    const found = walk(node.param, segs, depth + 1, method, values);
    if (found !== undefined) return found;
    values.pop();
  }
  return pick(node.glob, method);
}

// ---------------------------------------------------------------------------
// Table

interface Buckets<R> {
  readonly exact: Map<string, TrieNode<R>>;
  readonly suffix: Map<string, TrieNode<R>>;
  readonly prefix: Map<string, TrieNode<R>>;
  any: TrieNode<R> | undefined;
}

function bucketFor<R>(b: Buckets<R>, p: HostPattern): TrieNode<R> {
  let map: Map<string, TrieNode<R>>;
  let key: string;
  switch (p.kind) {
    case 'any':
      b.any ??= newNode();
      return b.any;
    case 'exact':
      map = b.exact;
      key = p.host;
      break;
    case 'suffix':
      map = b.suffix;
      key = p.suffix;
      break;
    case 'prefix':
      map = b.prefix;
      key = p.prefix;
      break;
  }
  let node = map.get(key);
  if (node === undefined) {
    node = newNode();
    map.set(key, node);
  }
  return node;
}

function descend<R>(root: TrieNode<R>, template: PathTemplate): Terminal<R> {
  let node = root;
  for (const s of template.segments) {
    if (s.kind === 'param') {
      node.param ??= newNode();
      node = node.param;
    } else {
      node.literals ??= new Map();
      let child = node.literals.get(s.value);
      if (child === undefined) {
        child = newNode();
        node.literals.set(s.value, child);
      }
      node = child;
    }
  }
  if (template.glob) {
    node.glob ??= { byMethod: new Map(), any: undefined };
    return node.glob;
  }
  node.end ??= { byMethod: new Map(), any: undefined };
  return node.end;
}

/** A route-level `hosts`/`methods` list: undefined (absent) or a non-empty array. */
function listField(
  value: unknown,
  where: string,
  index: number,
  issues: RouteTableIssue[],
): readonly unknown[] | undefined | null {
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) {
    issues.push({ index, path: where, message: 'must be a list' });
    return null;
  }
  if (value.length === 0) {
    issues.push({ index, path: where, message: 'must not be empty (omit it to match any)' });
    return null;
  }
  return value as readonly unknown[];
}

interface Prepared<R> {
  readonly route: R;
  readonly index: number;
  readonly hosts: readonly HostPattern[];
  readonly methods: readonly string[];
  readonly template: PathTemplate;
}

function prepare<R extends Routable>(route: R, index: number, issues: RouteTableIssue[]): Prepared<R> | undefined {
  const at = `routes[${index}]`;
  const before = issues.length;
  const match: unknown = (route as { match?: unknown }).match;
  if (typeof match !== 'object' || match === null) {
    issues.push({ index, path: `${at}.match`, message: 'must be an object' });
    return undefined;
  }
  const spec = match as RouteMatchSpec;

  const hosts: HostPattern[] = [];
  const hostList = listField(spec.hosts, `${at}.match.hosts`, index, issues);
  if (hostList === undefined) {
    hosts.push({ kind: 'any' });
  } else if (hostList !== null) {
    const seen = new Set<string>();
    hostList.forEach((h, k) => {
      const parsed = parseHostPattern(h);
      if (!parsed.ok) {
        issues.push({ index, path: `${at}.match.hosts[${k}]`, message: parsed.message });
        return;
      }
      const key = hostPatternKey(parsed.pattern);
      if (!seen.has(key)) {
        seen.add(key);
        hosts.push(parsed.pattern);
      }
    });
  }

  const methods: string[] = [];
  const methodList = listField(spec.methods, `${at}.match.methods`, index, issues);
  if (methodList !== undefined && methodList !== null) {
    methodList.forEach((m, k) => {
      const upper = typeof m === 'string' ? m.toUpperCase() : '';
      if (!METHOD.test(upper)) {
        issues.push({ index, path: `${at}.match.methods[${k}]`, message: 'method must be a token of letters, e.g. GET' });
        return;
      }
      if (!methods.includes(upper)) methods.push(upper);
    });
  }

  let template = MATCH_ALL_TEMPLATE;
  if (spec.path !== undefined) {
    const parsed = parseTemplate(spec.path);
    if (parsed.ok) template = parsed.template;
    else for (const message of parsed.messages) issues.push({ index, path: `${at}.match.path`, message });
  }

  if (issues.length !== before) return undefined;
  return { route, index, hosts, methods, template };
}

function paramNamesOf(template: PathTemplate): string[] {
  const names: string[] = [];
  for (const s of template.segments) if (s.kind === 'param') names.push(s.name);
  return names;
}

function describe(route: Routable, index: number): string {
  return `routes[${index}] ('${String(route.name)}')`;
}

/** Builds the table or returns every problem found (never throws for bad routes). */
export function buildRouteTable<R extends Routable>(routes: readonly R[]): BuildResult<R> {
  const issues: RouteTableIssue[] = [];
  const names = new Map<string, R>();
  const nameIndex = new Map<string, number>();
  const buckets: Buckets<R> = { exact: new Map(), suffix: new Map(), prefix: new Map(), any: undefined };
  const reported = new Set<string>();

  const conflict = (existing: Entry<R>, p: Prepared<R>, host: HostPattern, method: string | undefined): void => {
    const pair = `${existing.index}:${p.index}`;
    if (reported.has(pair)) return;
    reported.add(pair);
    const what =
      `host '${hostPatternKey(host)}', path '${templateShape(p.template)}'` +
      (method === undefined ? ', any method' : `, method ${method}`);
    const other = routes[existing.index] as R;
    issues.push({
      index: existing.index,
      path: `routes[${existing.index}].match`,
      message: `conflicts with ${describe(p.route, p.index)}: both match ${what}`,
    });
    issues.push({
      index: p.index,
      path: `routes[${p.index}].match`,
      message: `conflicts with ${describe(other, existing.index)}: both match ${what}`,
    });
  };

  routes.forEach((route, index) => {
    const name: unknown = (route as { name?: unknown }).name;
    if (typeof name !== 'string' || name === '') {
      issues.push({ index, path: `routes[${index}].name`, message: 'route name must be a non-empty string' });
    } else if (nameIndex.has(name)) {
      issues.push({
        index,
        path: `routes[${index}].name`,
        message: `duplicate route name '${name}' (also used by routes[${nameIndex.get(name) as number}])`,
      });
    } else {
      nameIndex.set(name, index);
      names.set(name, route);
    }

    const p = prepare(route, index, issues);
    if (p === undefined) return;
    const entry: Entry<R> = { route, index, paramNames: paramNamesOf(p.template) };
    for (const host of p.hosts) {
      const terminal = descend(bucketFor(buckets, host), p.template);
      if (p.methods.length === 0) {
        if (terminal.any !== undefined) conflict(terminal.any, p, host, undefined);
        else terminal.any = entry;
        continue;
      }
      for (const m of p.methods) {
        const existing = terminal.byMethod.get(m);
        if (existing !== undefined) conflict(existing, p, host, m);
        else terminal.byMethod.set(m, entry);
      }
    }
  });

  if (issues.length > 0) {
    issues.sort((a, b) => a.index - b.index); // stable: keeps discovery order per route
    return { ok: false, issues };
  }
  return { ok: true, table: new Table(buckets, names, routes.length) };
}

class Table<R extends Routable> implements RouteTable<R> {
  readonly #buckets: Buckets<R>;
  readonly #names: ReadonlyMap<string, R>;
  readonly size: number;

  constructor(buckets: Buckets<R>, names: ReadonlyMap<string, R>, size: number) {
    this.#buckets = buckets;
    this.#names = names;
    this.size = size;
  }

  byName(name: string): R | undefined {
    return this.#names.get(name);
  }

  match(host: string, method: string, path: string): Matched<R> | undefined {
    const split = splitRequestPath(path);
    if (!split.ok) return undefined;
    const segs = split.segments;
    const m = method.toUpperCase();
    const h = normalizeRequestHost(host);
    const b = this.#buckets;
    const values: string[] = [];

    if (h !== '') {
      const exact = b.exact.get(h);
      if (exact !== undefined) {
        const e = walk(exact, segs, 0, m, values);
        if (e !== undefined) return result(e, values);
      }
      // Wildcards need a well-formed dotted name (no empty labels).
      const wellFormed = h.charCodeAt(0) !== 0x2e && !h.endsWith('.') && !h.includes('..');
      if (wellFormed && b.suffix.size > 0) {
        // First dot = longest suffix; the part before it is at least one label.
        for (let i = h.indexOf('.'); i !== -1; i = h.indexOf('.', i + 1)) {
          const node = b.suffix.get(h.slice(i + 1));
          if (node === undefined) continue;
          const e = walk(node, segs, 0, m, values);
          if (e !== undefined) return result(e, values);
        }
      }
      if (wellFormed && b.prefix.size > 0) {
        // Last dot = longest prefix; the part after it is at least one label.
        for (let i = h.lastIndexOf('.'); i > 0; i = h.lastIndexOf('.', i - 1)) {
          const node = b.prefix.get(h.slice(0, i));
          if (node === undefined) continue;
          const e = walk(node, segs, 0, m, values);
          if (e !== undefined) return result(e, values);
        }
      }
    }
    if (b.any !== undefined) {
      const e = walk(b.any, segs, 0, m, values);
      if (e !== undefined) return result(e, values);
    }
    return undefined;
  }
}

/**
 * A match whose `params` object is built on first read, then kept. Most
 * decisions never read it (only `{path.*}` header templates, stages and
 * traces do), and building it — a null-prototype object, which V8 keeps in
 * dictionary mode, then frozen — was the dearest part of a lookup.
 */
class Match<R> implements Matched<R> {
  readonly route: R;
  readonly #names: readonly string[];
  readonly #values: readonly string[];
  #params: Readonly<Record<string, string>> | undefined;

  constructor(e: Entry<R>, values: readonly string[]) {
    this.route = e.route;
    this.#names = e.paramNames;
    this.#values = values;
  }

  get params(): Readonly<Record<string, string>> {
    if (this.#params === undefined) {
      const params = Object.create(null) as Record<string, string>;
      const names = this.#names;
      for (let k = 0; k < names.length; k++) params[names[k] as string] = this.#values[k] as string;
      this.#params = Object.freeze(params);
    }
    return this.#params;
  }
}

function result<R>(e: Entry<R>, values: readonly string[]): Matched<R> {
  return new Match(e, values);
}
