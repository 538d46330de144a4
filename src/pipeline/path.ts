/**
 * Request-path splitting and route path-template parsing.
 *
 * Both sides are reduced to percent-decoded segments so that a template
 * literal `sandboxes` matches a request segment `sand%62oxes`. Anything that
 * could make the authorizer and the upstream disagree about which resource a
 * path names (dot segments, encoded slashes or backslashes, NUL, `//`, bad
 * percent-encoding) is rejected instead of being normalized.
 */

export type PathCheck = { ok: true; segments: string[] } | { ok: false; message: string };

/** One segment of a parsed path template. */
export type TemplateSegment =
  | { readonly kind: 'literal'; readonly value: string }
  | { readonly kind: 'param'; readonly name: string };

export interface PathTemplate {
  /** Segments before an optional final `**`. Literals are percent-decoded. */
  readonly segments: readonly TemplateSegment[];
  /** True when the template ends in `/**` (zero or more further segments). */
  readonly glob: boolean;
}

export type TemplateParse = { ok: true; template: PathTemplate } | { ok: false; messages: string[] };

type SegmentCheck = { ok: true; value: string } | { ok: false; problem: string };

const PARAM_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PARAM_SEGMENT = /^\{([^{}]*)\}$/;

/** The template that matches every path (what an omitted `path` means). */
export const MATCH_ALL_TEMPLATE: PathTemplate = Object.freeze({ segments: Object.freeze([]), glob: true });

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}

/**
 * Validates one raw (still percent-encoded) segment and returns it decoded.
 * The segment contains no '/' (the caller split on it) and has already been
 * checked for raw backslash and NUL.
 */
function checkSegment(raw: string): SegmentCheck {
  let i = raw.indexOf('%');
  const encoded = i !== -1;
  while (i !== -1) {
    if (i + 2 >= raw.length || !isHex(raw.charCodeAt(i + 1)) || !isHex(raw.charCodeAt(i + 2))) {
      return { ok: false, problem: "invalid percent-encoding ('%' must be followed by two hex digits)" };
    }
    const hi = raw.charCodeAt(i + 1) | 0x20; // lower-cases A-F, leaves digits alone
    const lo = raw.charCodeAt(i + 2) | 0x20;
    if (hi === 0x32 && lo === 0x66) return { ok: false, problem: 'an encoded slash (%2F)' };
    if (hi === 0x35 && lo === 0x63) return { ok: false, problem: 'an encoded backslash (%5C)' };
    if (hi === 0x30 && lo === 0x30) return { ok: false, problem: 'an encoded NUL (%00)' };
    i = raw.indexOf('%', i + 3);
  }
  let value = raw;
  if (encoded) {
    try {
      value = decodeURIComponent(raw);
    } catch {
      return { ok: false, problem: 'invalid percent-encoding (not UTF-8)' };
    }
  }
  if (value === '.' || value === '..') {
    return { ok: false, problem: "a dot segment ('.' or '..', possibly percent-encoded)" };
  }
  // `..;x` is treated as `..` by some servlet containers: refuse it as well.
  const semi = value.indexOf(';');
  if (semi !== -1) {
    const head = value.slice(0, semi);
    if (head === '.' || head === '..') {
      return { ok: false, problem: "a dot segment with a ';' parameter ('..;')" };
    }
  }
  return { ok: true, value };
}

/**
 * Splits a request path (query already removed, not yet percent-decoded) into
 * percent-decoded segments. A single trailing slash is ignored, so `/a/b/`
 * and `/a/b` give the same segments and `/` gives none.
 */
export function splitRequestPath(path: string): PathCheck {
  if (path.length === 0) return { ok: false, message: 'path is empty' };
  if (path.charCodeAt(0) !== 0x2f) return { ok: false, message: "path must start with '/'" };
  if (path.includes('\\')) return { ok: false, message: 'path contains a backslash' };
  if (path.includes('\0')) return { ok: false, message: 'path contains a NUL character' };
  if (path.includes('//')) return { ok: false, message: "path contains an empty segment (repeated '/')" };
  const end = path.length > 1 && path.charCodeAt(path.length - 1) === 0x2f ? path.length - 1 : path.length;
  const segments: string[] = [];
  // The segments of path[1, end), found with indexOf rather than String#split,
  // which is a runtime call and about twice as slow for a short path; the first
  // problem found, segment by segment, is reported as before.
  for (let start = 1; start < end; ) {
    let slash = path.indexOf('/', start);
    if (slash === -1) slash = end; // otherwise slash <= end: path[end] is the trailing '/', if any
    const checked = checkSegment(path.slice(start, slash));
    if (!checked.ok) return { ok: false, message: `path contains ${checked.problem}` };
    segments.push(checked.value);
    start = slash + 1;
  }
  return { ok: true, segments };
}

/**
 * Parses a route path template such as `/v1/sandboxes/{id}/invoke` or
 * `/static/**`. Returns every problem found in the template.
 */
export function parseTemplate(template: unknown): TemplateParse {
  if (typeof template !== 'string') return { ok: false, messages: ['path template must be a string'] };
  if (!template.startsWith('/')) return { ok: false, messages: ["path template must start with '/'"] };
  const messages: string[] = [];
  if (template.includes('?') || template.includes('#')) {
    messages.push("path template must not contain '?' or '#' (the query is not part of the path)");
  }
  if (template.includes('\\')) messages.push('path template contains a backslash');
  if (template.includes('\0')) messages.push('path template contains a NUL character');
  if (template.includes('//')) messages.push("path template contains an empty segment (repeated '/')");
  if (messages.length > 0) return { ok: false, messages };

  const end = template.length > 1 && template.endsWith('/') ? template.length - 1 : template.length;
  const raw = end <= 1 ? [] : template.slice(1, end).split('/');
  const segments: TemplateSegment[] = [];
  const seen = new Set<string>();
  let glob = false;
  for (let k = 0; k < raw.length; k++) {
    const seg = raw[k] as string;
    const where = `segment ${k + 1} ('${seg}')`;
    if (seg === '**') {
      if (k !== raw.length - 1) messages.push(`${where}: '**' is only allowed as the last segment`);
      else glob = true;
      continue;
    }
    const param = PARAM_SEGMENT.exec(seg);
    if (param) {
      const name = param[1] as string;
      if (!PARAM_NAME.test(name)) {
        messages.push(`${where}: parameter name must match [A-Za-z_][A-Za-z0-9_]*`);
      } else if (seen.has(name)) {
        messages.push(`${where}: duplicate parameter name '${name}'`);
      } else {
        seen.add(name);
        segments.push({ kind: 'param', name });
      }
      continue;
    }
    if (seg.includes('{') || seg.includes('}')) {
      messages.push(`${where}: a parameter must be a whole segment, written {name}`);
      continue;
    }
    if (seg.includes('*')) {
      messages.push(`${where}: '*' is only allowed as a whole final segment '**'`);
      continue;
    }
    const checked = checkSegment(seg);
    if (!checked.ok) {
      messages.push(`${where}: contains ${checked.problem}`);
      continue;
    }
    segments.push({ kind: 'literal', value: checked.value });
  }
  if (messages.length > 0) return { ok: false, messages };
  return { ok: true, template: { segments, glob } };
}

/** Canonical form of a template with parameter names erased, e.g. `/v1/{}/**`. */
export function templateShape(template: PathTemplate): string {
  let out = '';
  for (const s of template.segments) out += s.kind === 'param' ? '/{}' : `/${s.value}`;
  if (template.glob) out += '/**';
  return out === '' ? '/' : out;
}
