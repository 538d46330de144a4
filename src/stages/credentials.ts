import { denial, type Denial } from '../core/errors.js';
import type { CheckInput } from '../core/types.js';

/**
 * Where a route looks for a bearer token, in order. `header:authorization`
 * expects the `Bearer` scheme (matched case-insensitively, RFC 7235); any
 * other header carries the token itself (an optional `Bearer ` prefix is
 * accepted); `cookie:NAME` and `query:NAME` carry the token as the value.
 */
export interface CredentialSource {
  kind: 'header' | 'cookie' | 'query';
  name: string;
  /** As written in config, e.g. `cookie:access_token`; used in traces and principals. */
  label: string;
}

export interface Candidate {
  token: string;
  source: string;
}

/** What each source gave, for the decision trace. */
export interface SourceNote {
  source: string;
  outcome: 'absent' | 'other_scheme' | 'found';
}

export function parseCredentialSource(spec: string): CredentialSource {
  const i = spec.indexOf(':');
  const kind = spec.slice(0, i) as CredentialSource['kind'];
  const name = kind === 'header' ? spec.slice(i + 1).toLowerCase() : spec.slice(i + 1);
  return { kind, name, label: `${kind}:${name}` };
}

const BEARER = /^bearer +(\S+) *$/i;

const BEARER_SCHEME = 'bearer';

/**
 * The token of `Bearer <token>`: exactly what BEARER captures, or undefined
 * when it does not match. Running the regular expression over a ~1 KB token
 * (its `\S+` tests every character against the Unicode white-space class) was
 * about 5 % of an uncached decision; the usual case is decided here with
 * native substring searches instead, and anything unusual still goes to the
 * regular expression.
 *
 * The shortcut answers only when the value is `bearer` (any case), one or more
 * spaces, a non-empty run X, and spaces to the end, where X contains none of
 * the ASCII white-space characters (\t \n \v \f \r space) and only ASCII (its
 * UTF-8 length equals its length): every other character JavaScript's `\s`
 * matches is at or above U+00A0. Then BEARER matches and captures X.
 */
export function bearerToken(v: string): string | undefined {
  if (v.length > 7 && v.charCodeAt(6) === 0x20) {
    let same = true;
    // c | 0x20 lower-cases an ASCII letter and equals a lower-case letter only for its two cases.
    for (let k = 0; k < 6; k++) if ((v.charCodeAt(k) | 0x20) !== BEARER_SCHEME.charCodeAt(k)) same = false;
    if (same) {
      let from = 7;
      while (v.charCodeAt(from) === 0x20) from++;
      let to = v.length;
      while (to > from && v.charCodeAt(to - 1) === 0x20) to--;
      const token = v.slice(from, to);
      if (
        token.length > 0 &&
        !token.includes(' ') &&
        !token.includes('\t') &&
        !token.includes('\n') &&
        !token.includes('\v') &&
        !token.includes('\f') &&
        !token.includes('\r') &&
        Buffer.byteLength(token, 'utf8') === token.length
      ) {
        return token;
      }
    }
  }
  return BEARER.exec(v)?.[1];
}

function cookieValues(header: string, name: string): string[] {
  const out: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    let v = part.slice(eq + 1).trim();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    if (v.length > 0) out.push(v);
  }
  return out;
}

/**
 * Collects candidate tokens from the route's sources, in order. Denies at once
 * for requests that are ambiguous (the same credential given twice with
 * different values) or that carry an oversized token: those never fall through.
 */
export function collectCandidates(
  input: CheckInput,
  sources: readonly CredentialSource[],
  maxTokenBytes: number,
  notes?: SourceNote[],
): Candidate[] | Denial {
  const out: Candidate[] = [];
  let query: URLSearchParams | undefined;
  for (const src of sources) {
    let values: string[] = [];
    let otherScheme = false;
    if (src.kind === 'header') {
      const raw = input.headers.get(src.name);
      if (raw !== undefined) {
        if ((input.headerCounts?.get(src.name) ?? 1) > 1) {
          return denial('conflicting_credentials', `the ${src.name} header appears more than once`);
        }
        if (src.name === 'authorization') {
          const v = raw.trim();
          if (/^bearer\s/i.test(v)) {
            // Envoy joins repeated headers with ','; a JWT never contains one.
            if (v.includes(',')) return denial('conflicting_credentials', 'more than one Authorization value');
            const tok = bearerToken(v);
            if (tok) values = [tok];
            else otherScheme = true; // not a single token: not usable here, later sources may hold one
          } else if (v.length > 0) otherScheme = true; // Basic, Digest, AWS4-HMAC-SHA256 ... (may hold commas)
        } else {
          const v = raw.trim();
          if (v.includes(',')) return denial('conflicting_credentials', `more than one ${src.name} value`);
          const tok = bearerToken(v) ?? v;
          if (tok.length > 0) values = [tok];
        }
      }
    } else if (src.kind === 'cookie') {
      const raw = input.headers.get('cookie');
      if (raw !== undefined) values = cookieValues(raw, src.name);
    } else {
      if (input.query.length > 0) {
        query ??= new URLSearchParams(input.query);
        values = query.getAll(src.name).filter((v) => v.length > 0);
      }
    }
    if (values.length > 1 && values.some((v) => v !== values[0])) {
      return denial('conflicting_credentials', `${src.label} is given more than once with different values`);
    }
    const tok = values[0];
    if (tok !== undefined) {
      if (tok.length > maxTokenBytes) {
        return denial('token_too_large', `token in ${src.label} is larger than ${maxTokenBytes} bytes`);
      }
      out.push({ token: tok, source: src.label });
    }
    notes?.push({ source: src.label, outcome: tok !== undefined ? 'found' : otherScheme ? 'other_scheme' : 'absent' });
  }
  return out;
}
