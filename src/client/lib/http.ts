/** Small helpers for talking to an IdP without leaking what must not leak. */

const MAX_IDP_TEXT = 300;

/** Origin and path of a URL: no user-info, no query (which may carry secrets). */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid url)';
  }
}

export function isHttpUrl(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  try {
    const u = new URL(value);
    return (u.protocol === 'https:' || u.protocol === 'http:') && u.username === '' && u.password === '';
  } catch {
    return false;
  }
}

/**
 * Text an IdP sent, made safe to put in an error message: control characters
 * removed, shortened, and every occurrence of a secret replaced.
 */
export function sanitizeIdpText(value: unknown, secrets: readonly string[]): string | undefined {
  if (typeof value !== 'string') return undefined;
  let text = value.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  for (const s of secrets) if (s.length > 0) text = text.split(s).join('[redacted]');
  if (text.length === 0) return undefined;
  return text.length > MAX_IDP_TEXT ? `${text.slice(0, MAX_IDP_TEXT - 1)}…` : text;
}

/** `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1 asks for it in Basic credentials). */
function formEncode(value: string): string {
  return new URLSearchParams([['', value]]).toString().slice(1);
}

/** `Basic base64(formencode(client_id) ":" formencode(client_secret))`, RFC 6749 §2.3.1. */
export function basicAuthorization(clientId: string, clientSecret: string): string {
  const bytes = new TextEncoder().encode(`${formEncode(clientId)}:${formEncode(clientSecret)}`);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return `Basic ${btoa(binary)}`;
}

/** One line from a thrown value (a network error's `cause.code` included), with user-info stripped from URLs. */
export function shortErrorMessage(err: unknown): string {
  let msg = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error ? (err.cause as { code?: unknown } | undefined) : undefined;
  if (cause && typeof cause.code === 'string') msg += ` (${cause.code})`;
  msg = msg.replace(/\/\/[^/\s@]*@/g, '//').replace(/\s+/g, ' ').trim();
  return msg.length > 200 ? `${msg.slice(0, 199)}…` : msg;
}

/** Seconds of a `Retry-After` header (delta-seconds form only), or undefined. */
export function retryAfterMs(res: Response): number | undefined {
  const v = res.headers.get('retry-after');
  if (v === null || !/^\d{1,6}$/.test(v.trim())) return undefined;
  return Number(v.trim()) * 1000;
}

/** Reads the body as JSON object; undefined when it is not one. Never throws. */
export async function readJsonObject(res: Response, maxChars = 64 * 1024): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await res.text();
  } catch {
    return undefined;
  }
  if (text.length > maxChars) return undefined;
  try {
    const parsed: unknown = JSON.parse(text);
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
      ? (parsed as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** The `exp` claim of a JWT, read without verification (only to time a refresh), in ms; undefined if not a JWT. */
export function jwtExpiryMs(token: string): number | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === undefined) return undefined;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const payload: unknown = JSON.parse(json);
    if (typeof payload !== 'object' || payload === null) return undefined;
    const exp = (payload as { exp?: unknown }).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
