import { describe, expect, it } from 'vitest';
import { xfccUri } from '../../../../src/adapters/envoy/http-server.js';

describe('x-forwarded-client-cert (HTTP mode peer identity)', () => {
  it('reads the URI of the element the nearest Envoy added (the last one)', () => {
    expect(xfccUri('By=spiffe://td/ns/a/sa/wm;Hash=abc;URI=spiffe://td/ns/a/sa/router')).toBe('spiffe://td/ns/a/sa/router');
    expect(
      xfccUri('By=x;URI=spiffe://td/ns/a/sa/spoofed,By=spiffe://td/ns/a/sa/wm;Hash=h;Subject="CN=a,O=b";URI=spiffe://td/ns/a/sa/router'),
    ).toBe('spiffe://td/ns/a/sa/router');
  });
  it('quoted values may hold commas and semicolons', () => {
    expect(xfccUri('Hash=h;Subject="CN=x, O=y;z";URI=spiffe://td/ns/b/sa/c')).toBe('spiffe://td/ns/b/sa/c');
  });
  it('no URI, or an empty header, gives no peer', () => {
    expect(xfccUri('Hash=abc;DNS=example.com')).toBeUndefined();
    expect(xfccUri('')).toBeUndefined();
    expect(xfccUri('URI=')).toBeUndefined();
  });
});
