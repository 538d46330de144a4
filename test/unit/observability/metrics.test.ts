import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { createDeferredCounter, createMetrics } from '../../../src/observability/metrics.js';

/** The value of one exposition line, e.g. `portcullis_decisions_total{route="a",decision="allow",reason=""}`. */
function valueOf(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('decision counts', () => {
  it('hands counted decisions to portcullis_decisions_total by route, decision and reason when the metrics are read', async () => {
    const m = createMetrics({ defaultMetrics: false });
    for (let i = 0; i < 3; i++) m.counts.decision('invoke', 'allow', '');
    m.counts.decision('invoke', 'deny', 'token_expired');
    m.counts.decision('invoke', 'deny', 'token_expired');
    m.counts.decision('invoke', 'deny', 'missing_role');
    m.counts.decision('(none)', 'deny', 'no_route');
    const text = await m.registry.metrics();
    expect(valueOf(text, 'portcullis_decisions_total{route="invoke",decision="allow",reason=""}')).toBe(3);
    expect(valueOf(text, 'portcullis_decisions_total{route="invoke",decision="deny",reason="token_expired"}')).toBe(2);
    expect(valueOf(text, 'portcullis_decisions_total{route="invoke",decision="deny",reason="missing_role"}')).toBe(1);
    expect(valueOf(text, 'portcullis_decisions_total{route="(none)",decision="deny",reason="no_route"}')).toBe(1);
    expect(text).not.toContain('route="(none)",decision="allow"');
  });

  it('adds what was counted since the last read, once (reading twice does not count twice)', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.counts.decision('invoke', 'allow', '');
    await m.registry.metrics();
    const again = await m.registry.metrics();
    expect(valueOf(again, 'portcullis_decisions_total{route="invoke",decision="allow",reason=""}')).toBe(1);
    m.counts.decision('invoke', 'allow', '');
    m.counts.decision('invoke', 'allow', '');
    expect(valueOf(await m.registry.metrics(), 'portcullis_decisions_total{route="invoke",decision="allow",reason=""}')).toBe(3);
  });

  it('hands token-cache hits and misses to portcullis_token_cache_total', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.counts.tokenCacheMiss();
    for (let i = 0; i < 4; i++) m.counts.tokenCacheHit();
    let text = await m.registry.metrics();
    expect(valueOf(text, 'portcullis_token_cache_total{result="hit"}')).toBe(4);
    expect(valueOf(text, 'portcullis_token_cache_total{result="miss"}')).toBe(1);
    m.counts.tokenCacheHit();
    text = await m.registry.metrics();
    expect(valueOf(text, 'portcullis_token_cache_total{result="hit"}')).toBe(5);
    expect(valueOf(text, 'portcullis_token_cache_total{result="miss"}')).toBe(1);
  });

  it('keeps the counts apart per metrics instance (no shared state)', async () => {
    const a = createMetrics({ defaultMetrics: false });
    const b = createMetrics({ defaultMetrics: false });
    a.counts.decision('invoke', 'allow', '');
    expect(valueOf(await b.registry.metrics(), 'portcullis_decisions_total{route="invoke",decision="allow",reason=""}')).toBeUndefined();
    expect(valueOf(await a.registry.metrics(), 'portcullis_decisions_total{route="invoke",decision="allow",reason=""}')).toBe(1);
  });
});

describe('deferred counters', () => {
  it('hand bound counts to the counter when the metrics are read, once, alongside direct increments', async () => {
    const registry = new Registry();
    const d = createDeferredCounter({ name: 'test_total', help: 'test', labelNames: ['issuer', 'result'], registers: [registry] });
    const hit = d.bind({ issuer: 'a', result: 'hit' });
    // The same label values (in any order) are the same count.
    expect(d.bind({ result: 'hit', issuer: 'a' })).toBe(hit);
    const other = d.bind({ issuer: 'b', result: 'hit' });
    hit.inc();
    hit.inc();
    other.inc();
    d.counter.inc({ issuer: 'a', result: 'miss' });
    d.counter.inc({ issuer: 'a', result: 'hit' });
    const text = await registry.metrics();
    expect(valueOf(text, 'test_total{issuer="a",result="hit"}')).toBe(3);
    expect(valueOf(text, 'test_total{issuer="b",result="hit"}')).toBe(1);
    expect(valueOf(text, 'test_total{issuer="a",result="miss"}')).toBe(1);
    // Reading again adds nothing; later increments are added to what was handed over.
    expect(valueOf(await registry.metrics(), 'test_total{issuer="a",result="hit"}')).toBe(3);
    hit.inc();
    expect(valueOf(await registry.metrics(), 'test_total{issuer="a",result="hit"}')).toBe(4);
  });
});
