import type { Clock, FetchLike, Sleep } from '../../../src/client/index.js';

/** One request the code under test made. */
export interface SeenRequest {
  url: string;
  method: string;
  headers: Headers;
  body: string;
}

/** What the fake answers: a Response, or an Error to throw (a network failure). */
export type Reply = Response | Error | ((req: SeenRequest) => Response | Error | Promise<Response | Error>);

export const ENDPOINT = 'https://idp.test/realms/agentcube/protocol/openid-connect/token';
export const ISSUER = 'https://idp.test/realms/agentcube';

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

/** A token response; `expiresIn: null` leaves `expires_in` out. */
export function tokenReply(accessToken: string, expiresIn: number | null = 300): Response {
  return json(200, { access_token: accessToken, token_type: 'Bearer', ...(expiresIn === null ? {} : { expires_in: expiresIn }) });
}

/** An unsigned JWT-shaped string with the given payload (the client only reads `exp`). */
export function fakeJwt(payload: Record<string, unknown>): string {
  const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'RS256', typ: 'JWT' })}.${b64(payload)}.c2ln`;
}

/**
 * A fetch that answers from a script, in order, and records every request.
 * When the script runs out, the `fallback` reply is used (default: a token reply).
 */
export function fakeFetch(script: Reply[] = [], fallback?: Reply): { fetch: FetchLike; seen: SeenRequest[] } {
  const seen: SeenRequest[] = [];
  let n = 0;
  const fetch: FetchLike = async (input, init) => {
    const req = new Request(input, init);
    const seenReq: SeenRequest = { url: req.url, method: req.method, headers: req.headers, body: await req.text() };
    seen.push(seenReq);
    n += 1;
    const reply = script.shift() ?? fallback ?? tokenReply(`token-${n}`);
    const r = typeof reply === 'function' ? await reply(seenReq) : reply;
    if (r instanceof Error) throw r;
    return r;
  };
  return { fetch, seen };
}

/** A clock the test moves, and a sleep that records the delay and advances that clock instead of waiting. */
export function fakeTime(start = 1_700_000_000_000): { clock: Clock; sleep: Sleep; sleeps: number[]; advance(ms: number): void } {
  let now = start;
  const sleeps: number[] = [];
  return {
    clock: { now: () => now },
    sleep: async (ms) => {
      sleeps.push(ms);
      now += ms;
    },
    sleeps,
    advance: (ms) => {
      now += ms;
    },
  };
}

/** A network failure as undici reports one. */
export function networkError(code = 'ECONNREFUSED'): Error {
  return new TypeError('fetch failed', { cause: Object.assign(new Error(`connect ${code}`), { code }) });
}
