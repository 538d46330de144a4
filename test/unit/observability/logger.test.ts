import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, redactText } from '../../../src/observability/logger.js';

const JWT = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA';

/** A destination stream that keeps every log line, parsed. */
function capture(): { stream: Writable; lines: () => Record<string, unknown>[]; raw: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  const raw = () => chunks.join('');
  return {
    stream,
    raw,
    lines: () =>
      raw()
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('createLogger', () => {
  it('redacts tokens, authorization, cookies and secrets', () => {
    const out = capture();
    const log = createLogger({ level: 'info', destination: out.stream });
    log.info(
      {
        token: JWT,
        headers: { authorization: 'Bearer x-secret-bearer', cookie: 'a=cookie-secret', accept: '*/*' },
        client_secret: 'client-secret-value',
        clientSecret: 'client-secret-camel',
        access_token: JWT,
        exchange: { subject_token: JWT, refresh_token: 'refresh-secret', password: 'pw-secret' },
      },
      'decision',
    );
    const raw = out.raw();
    for (const secret of [JWT, 'x-secret-bearer', 'cookie-secret', 'client-secret-value', 'client-secret-camel', 'refresh-secret', 'pw-secret']) {
      expect(raw).not.toContain(secret);
    }
    const [line] = out.lines();
    expect(line?.token).toBe('[REDACTED]');
    expect(line?.client_secret).toBe('[REDACTED]');
    expect(line?.headers).toEqual({ authorization: '[REDACTED]', cookie: '[REDACTED]', accept: '*/*' });
    expect((line?.exchange as Record<string, unknown>).subject_token).toBe('[REDACTED]');
    expect(line?.msg).toBe('decision');
  });

  it('writes JSON lines with a level label, the service name and an ISO time', () => {
    const out = capture();
    const log = createLogger({ level: 'info', destination: out.stream });
    log.warn({ route: 'r' }, 'hello');
    const [line] = out.lines();
    expect(line?.level).toBe('warn');
    expect(line?.service).toBe('portcullis');
    expect(line?.route).toBe('r');
    expect(typeof line?.time).toBe('string');
    expect(Number.isNaN(Date.parse(line?.time as string))).toBe(false);
  });

  it('respects the level', () => {
    const out = capture();
    const log = createLogger({ level: 'warn', destination: out.stream });
    log.info('hidden');
    log.error('shown');
    expect(out.lines().map((l) => l.msg)).toEqual(['shown']);
  });
});

describe('redactText', () => {
  it('hides JWTs in free text', () => {
    const s = redactText(`token ${JWT} rejected`);
    expect(s).not.toContain(JWT);
    expect(s).toBe('token [REDACTED_JWT] rejected');
  });

  it('hides bearer and basic credentials, any case', () => {
    expect(redactText('Authorization: Bearer abc.def-123')).toBe('Authorization: Bearer [REDACTED]');
    expect(redactText('authorization: bearer opaque')).toBe('authorization: bearer [REDACTED]');
    expect(redactText('Basic YWxpY2U6cHc=')).toBe('Basic [REDACTED]');
  });

  it('leaves other text alone', () => {
    expect(redactText('no route matches GET /v1/x')).toBe('no route matches GET /v1/x');
  });
});
