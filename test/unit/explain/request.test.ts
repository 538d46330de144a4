import { describe, expect, it } from 'vitest';
import { ExplainInputError, parseCurlArgs, shellSplit, toCheckInput } from '../../../src/explain/request.js';
import { redactValue } from '../../../src/explain/format.js';

describe('shellSplit', () => {
  it('splits like a POSIX shell: quotes, escapes, continuation lines', () => {
    expect(shellSplit(`curl -H 'authorization: Bearer a.b.c' "http://x/y z" a\\ b`)).toEqual(['curl', '-H', 'authorization: Bearer a.b.c', 'http://x/y z', 'a b']);
    expect(shellSplit(`curl \\\n  -X POST \\\n  http://x/`)).toEqual(['curl', '-X', 'POST', 'http://x/']);
    expect(shellSplit(`a "b \\"c\\" d" ''`)).toEqual(['a', 'b "c" d', '']);
  });
  it('refuses an unterminated quote', () => {
    expect(() => shellSplit(`curl -H 'x: y`)).toThrow(ExplainInputError);
  });
});

describe('parseCurlArgs', () => {
  it('reads method, headers, cookies and the URL, with or without the word curl', () => {
    const r = parseCurlArgs(shellSplit(`curl -s -X post -H 'Authorization: Bearer t' -b 'access_token=c' --compressed https://router.example/v1/sandboxes/s1/invoke?x=1`));
    expect(r.method).toBe('POST');
    expect(r.url).toBe('https://router.example/v1/sandboxes/s1/invoke?x=1');
    expect(r.headers).toEqual([
      ['authorization', 'Bearer t'],
      ['cookie', 'access_token=c'],
    ]);
    expect(parseCurlArgs(['-XDELETE', 'http://h/a']).method).toBe('DELETE');
  });
  it('infers the method: data means POST, -I means HEAD, otherwise GET', () => {
    expect(parseCurlArgs(['-d', '{}', 'http://h/']).method).toBe('POST');
    expect(parseCurlArgs(['--json', '{}', 'http://h/']).method).toBe('POST');
    expect(parseCurlArgs(['-I', 'http://h/']).method).toBe('HEAD');
    expect(parseCurlArgs(['http://h/']).method).toBe('GET');
  });
  it('takes a peer SPIFFE ID and context extensions, as Envoy would send them', () => {
    const r = parseCurlArgs(['--peer', 'spiffe://td/ns/a/sa/router', '--context', 'route=admin-only', 'http://h/x']);
    expect(r.peer).toBe('spiffe://td/ns/a/sa/router');
    expect(r.contextExtensions).toEqual({ route: 'admin-only' });
  });
  it('gives a clear error for what it cannot use', () => {
    expect(() => parseCurlArgs(['-H'])).toThrow('-H needs a value');
    expect(() => parseCurlArgs(['-H', 'no-colon', 'http://h/'])).toThrow('is not "Name: value"');
    expect(() => parseCurlArgs(['-s'])).toThrow('no URL given');
    expect(() => parseCurlArgs(['http://a/', 'http://b/'])).toThrow('one URL per request');
  });
});

describe('toCheckInput', () => {
  it('builds the pipeline input: host from the URL or a Host header, path and query split, repeated headers counted', () => {
    const i = toCheckInput({ method: 'get', url: 'router.example:8443/a/b?q=1', headers: [['X-A', '1'], ['x-a', '2'], ['Host', 'other.example']] });
    expect(i.method).toBe('GET');
    expect(i.host).toBe('other.example');
    expect(i.path).toBe('/a/b');
    expect(i.query).toBe('q=1');
    expect(i.headers.get('x-a')).toBe('1,2');
    expect(i.headerCounts?.get('x-a')).toBe(2);
    expect(() => toCheckInput({ method: 'GET', url: 'http://[bad', headers: [] })).toThrow(ExplainInputError);
  });
});

describe('redactValue', () => {
  it('never shows a credential, only its scheme', () => {
    expect(redactValue('authorization', 'Bearer eyJhbGciOi.eyJzdWIi.sig')).toBe('Bearer [REDACTED]');
    expect(redactValue('cookie', 'session=abc')).toBe('[REDACTED]');
    expect(redactValue('x-hop', 'token eyJhbGciOi.eyJzdWIi.sig here')).toBe('token [REDACTED_JWT] here');
    expect(redactValue('x-user-sub', 'alice')).toBe('alice');
  });
});
