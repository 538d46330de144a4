import { describe, expect, it } from 'vitest';
import { createDecisionRing } from '../../../src/admin/debug.js';
import type { CheckInput, Decision, Principal } from '../../../src/core/types.js';

const input = (path: string, peer?: string): CheckInput => ({
  method: 'POST',
  host: 'router.example',
  path,
  query: '',
  headers: new Map([['authorization', 'Bearer secret-token']]),
  contextExtensions: new Map(),
  peerPrincipal: peer,
});
const principal = { qualifiedSub: 'agentcube.alice', issuerName: 'agentcube' } as unknown as Principal;
const allow = (route: string, wouldDeny?: { requirement: string; reason: string }[]): Decision =>
  ({ kind: 'allow', route, headersToSet: [], headersToRemove: [], metadata: {}, principal, wouldDeny }) as unknown as Decision;
const deny = (route: string): Decision =>
  ({ kind: 'deny', route, status: 403, reason: 'missing_role', message: 'no', headers: [], metadata: {}, principal }) as Decision;

describe('recent decisions ring (debug page)', () => {
  it('lists the newest first, keeps only `capacity` entries, and builds the summaries on read', () => {
    const ring = createDecisionRing(3);
    expect(ring.list({})).toEqual([]);
    for (let i = 1; i <= 5; i++) ring.record(allow('r'), input(`/p/${i}`), Date.UTC(2026, 0, 1, 0, 0, i), i + 0.12345);
    const list = ring.list({});
    expect(list.map((d) => d.path)).toEqual(['/p/5', '/p/4', '/p/3']);
    expect(list[0]).toEqual({
      time: '2026-01-01T00:00:05.000Z',
      route: 'r',
      decision: 'allow',
      status: 200,
      reason: undefined,
      sub: 'agentcube.alice',
      tenant: 'agentcube',
      method: 'POST',
      host: 'router.example',
      path: '/p/5',
      peer: undefined,
      wouldDeny: undefined,
      latencyMs: 5.123,
    });
    // Nothing from the request's headers is kept.
    expect(JSON.stringify(list)).not.toContain('secret-token');
  });

  it('records denials with status and reason, shadow would-denies, and the peer; filters by route, decision, reason, sub and limit', () => {
    const ring = createDecisionRing(10);
    ring.record(deny('admin'), input('/admin', 'spiffe://td/ns/x/sa/y'), 0, 1);
    ring.record(allow('invoke', [{ requirement: 'roles', reason: 'missing_role' }]), input('/v1/x'), 0, 1);
    ring.record(allow('invoke'), input('/v1/y'), 0, 1);
    const [newest, shadow, denied] = ring.list({});
    expect(denied).toMatchObject({ decision: 'deny', status: 403, reason: 'missing_role', peer: 'spiffe://td/ns/x/sa/y', route: 'admin' });
    expect(shadow).toMatchObject({ decision: 'allow', status: 200, wouldDeny: ['roles:missing_role'] });
    expect(newest?.wouldDeny).toBeUndefined();
    expect(ring.list({ route: 'invoke' }).map((d) => d.path)).toEqual(['/v1/y', '/v1/x']);
    expect(ring.list({ decision: 'deny' }).map((d) => d.path)).toEqual(['/admin']);
    expect(ring.list({ reason: 'missing_role' }).map((d) => d.path)).toEqual(['/admin']);
    expect(ring.list({ sub: 'alice' })).toHaveLength(3);
    expect(ring.list({ sub: 'bob' })).toHaveLength(0);
    expect(ring.list({ limit: 1 }).map((d) => d.path)).toEqual(['/v1/y']);
  });

  it('a slot reused by a later decision carries none of the earlier one (deny fields after an allow and back)', () => {
    const ring = createDecisionRing(1);
    ring.record(deny('a'), input('/a'), 0, 1);
    ring.record(allow('b', [{ requirement: 'ownership', reason: 'not_owner' }]), input('/b'), 0, 1);
    expect(ring.list({})).toMatchObject([{ decision: 'allow', status: 200, reason: undefined, wouldDeny: ['ownership:not_owner'] }]);
    ring.record(deny('c'), input('/c'), 0, 1);
    expect(ring.list({})).toMatchObject([{ decision: 'deny', status: 403, reason: 'missing_role', wouldDeny: undefined }]);
  });

  it('capacity 0 keeps nothing', () => {
    const ring = createDecisionRing(0);
    ring.record(allow('r'), input('/x'), 0, 1);
    expect(ring.list({})).toEqual([]);
  });
});
