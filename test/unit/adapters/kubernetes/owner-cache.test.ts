import { describe, expect, it } from 'vitest';
import { createOwnerCache, type OwnerCache, type RestartReason } from '../../../../src/adapters/kubernetes/owner-cache.js';
import { createFakeClock, settle, type FakeClock } from '../../../helpers/fake-clock.js';
import { createFakeKube, gone, OWNER_LABEL, refused, type FakeKube } from './fake-kube.js';

const REF = { group: 'agentcube.io', version: 'v1alpha1', resource: 'sandboxes', namespace: 'agentcube' };

interface Setup {
  kube: FakeKube;
  clock: FakeClock;
  cache: OwnerCache;
  restarts: RestartReason[];
}

function setup(opts: { maxStalenessMs?: number; idleTimeoutMs?: number } = {}): Setup {
  const kube = createFakeKube();
  const clock = createFakeClock(1_000_000);
  const restarts: RestartReason[] = [];
  const cache = createOwnerCache(
    { client: kube.client, clock: clock.clock, scheduler: clock.scheduler, onRestart: (r) => restarts.push(r) },
    {
      resource: REF,
      ownerLabel: OWNER_LABEL,
      maxStalenessMs: opts.maxStalenessMs ?? 60_000,
      idleTimeoutMs: opts.idleTimeoutMs,
      backoffMinMs: 500,
      backoffMaxMs: 4_000,
    },
  );
  return { kube, clock, cache, restarts };
}

async function synced(s: Setup): Promise<void> {
  s.cache.start();
  await settle();
  s.kube.current()?.open();
  expect(s.cache.status()).toMatchObject({ synced: true, connected: true });
}

describe('owner cache', () => {
  it('is unavailable until the first list completes, then answers from the list (all pages)', async () => {
    const s = setup();
    s.kube.put('agentcube', 'a', 'dev.alice', false);
    s.kube.put('agentcube', 'b', 'dev.bob', false);
    s.kube.put('agentcube', 'c', undefined, false);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'unavailable', why: 'not_synced' });
    await synced(s);
    expect(s.kube.lists).toHaveLength(2); // fake pages hold 2 objects
    expect(s.kube.lists[1]?.continue).toBe('2');
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
    expect(s.cache.lookup('agentcube', 'b')).toEqual({ kind: 'hit', owner: 'dev.bob' });
    expect(s.cache.lookup('agentcube', 'c')).toEqual({ kind: 'hit', owner: null });
    expect(s.cache.lookup('agentcube', 'zzz')).toEqual({ kind: 'absent' });
    expect(s.cache.lookup('other', 'a')).toEqual({ kind: 'absent' });
    expect(s.cache.status().objects).toBe(3);
  });

  it('starts the watch at the list resourceVersion and applies added, modified and deleted objects', async () => {
    const s = setup();
    s.kube.put('agentcube', 'a', 'dev.alice', false);
    const listRv = s.kube.rv();
    await synced(s);
    expect(s.kube.watches[0]?.resourceVersion).toBe(listRv);
    s.kube.put('agentcube', 'new', 'dev.carol');
    expect(s.cache.lookup('agentcube', 'new')).toEqual({ kind: 'hit', owner: 'dev.carol' });
    s.kube.put('agentcube', 'a', 'dev.bob');
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.bob' });
    s.kube.put('agentcube', 'a', undefined);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: null });
    s.kube.remove('agentcube', 'a');
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'absent' });
    expect(s.cache.status().resourceVersion).toBe(s.kube.rv());
  });

  it('an empty owner label counts as no owner', async () => {
    const s = setup();
    s.kube.put('agentcube', 'a', '', false);
    await synced(s);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: null });
  });

  it('resumes the watch from the last resourceVersion seen (event or bookmark) after a disconnect, with backoff', async () => {
    const s = setup();
    await synced(s);
    s.kube.put('agentcube', 'a', 'dev.alice');
    s.kube.bookmark();
    const seen = s.kube.rv();
    s.kube.current()?.end({ kind: 'error', error: refused() });
    expect(s.cache.status().connected).toBe(false);
    expect(s.restarts).toEqual(['error']);
    expect(s.kube.watches).toHaveLength(1); // waits before retrying
    s.clock.advance(499);
    expect(s.kube.watches).toHaveLength(1);
    s.clock.advance(1);
    expect(s.kube.watches).toHaveLength(2);
    expect(s.kube.watches[1]?.resourceVersion).toBe(seen);
    expect(s.kube.lists).toHaveLength(1); // no relist
    // a second failure in a row waits twice as long
    s.kube.current()?.end({ kind: 'error', error: refused() });
    s.clock.advance(999);
    expect(s.kube.watches).toHaveLength(2);
    s.clock.advance(1);
    expect(s.kube.watches).toHaveLength(3);
    s.kube.current()?.open();
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
  });

  it('a clean end of the watch (server timeout) resumes at once from the same resourceVersion', async () => {
    const s = setup();
    await synced(s);
    s.kube.put('agentcube', 'a', 'dev.alice');
    const seen = s.kube.rv();
    s.clock.advance(30_000);
    s.kube.current()?.end({ kind: 'closed' });
    expect(s.restarts).toEqual(['closed']);
    expect(s.kube.watches).toHaveLength(2);
    expect(s.kube.watches[1]?.resourceVersion).toBe(seen);
  });

  it('410 Gone relists, and the old contents keep answering meanwhile', async () => {
    const s = setup();
    s.kube.put('agentcube', 'a', 'dev.alice', false);
    await synced(s);
    // changes the cache never saw as events
    s.kube.put('agentcube', 'a', 'dev.bob', false);
    s.kube.put('agentcube', 'b', 'dev.carol', false);
    s.kube.current()?.end({ kind: 'error', error: gone() });
    expect(s.restarts).toEqual(['gone']);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
    await settle();
    expect(s.kube.lists.length).toBe(2);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.bob' });
    expect(s.cache.lookup('agentcube', 'b')).toEqual({ kind: 'hit', owner: 'dev.carol' });
    expect(s.kube.watches.at(-1)?.resourceVersion).toBe(s.kube.rv());
  });

  it('serves within maxStaleness after the watch drops, then reports stale; reconnecting makes it fresh again', async () => {
    const s = setup({ maxStalenessMs: 10_000 });
    s.kube.put('agentcube', 'a', 'dev.alice', false);
    await synced(s);
    s.clock.advance(60_000); // long quiet but connected: still current
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
    s.kube.current()?.end({ kind: 'error', error: refused() });
    s.kube.failLists.push(refused());
    // every reconnect fails
    for (let t = 0; t < 10_000; t += 100) {
      s.kube.current()?.end({ kind: 'error', error: refused() });
      s.clock.advance(100);
    }
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
    expect(s.cache.lookup('agentcube', 'nope')).toEqual({ kind: 'absent' });
    s.kube.current()?.end({ kind: 'error', error: refused() });
    s.clock.advance(1);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'unavailable', why: 'stale' });
    expect(s.cache.status()).toMatchObject({ synced: true, connected: false, fresh: false });
    s.clock.advance(10_000);
    s.kube.current()?.open();
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
  });

  it('replaces a watch that stays silent beyond the idle limit; staleness counts from the last thing heard', async () => {
    const s = setup({ maxStalenessMs: 30_000, idleTimeoutMs: 20_000 });
    await synced(s);
    s.clock.advance(19_999);
    expect(s.kube.watches).toHaveLength(1);
    s.kube.bookmark(); // anything heard re-arms the idle timer
    s.clock.advance(19_999);
    expect(s.kube.watches).toHaveLength(1);
    s.clock.advance(1);
    expect(s.restarts).toEqual(['idle']);
    expect(s.kube.watches[0]?.stopped).toBe(true);
    expect(s.kube.watches).toHaveLength(2);
    // the new watch never opens: 20 s of silence already count against the 30 s bound
    s.clock.advance(10_000);
    expect(s.cache.lookup('agentcube', 'x')).toEqual({ kind: 'absent' });
    s.clock.advance(1);
    expect(s.cache.lookup('agentcube', 'x')).toEqual({ kind: 'unavailable', why: 'stale' });
  });

  it('abandons a watch request that gets no answer, and retries with backoff', async () => {
    const s = setup();
    s.cache.start();
    await settle(); // listed; the watch request is sent but never answered
    expect(s.kube.watches).toHaveLength(1);
    s.clock.advance(29_999);
    expect(s.kube.watches[0]?.stopped).toBe(false);
    s.clock.advance(1);
    expect(s.kube.watches[0]?.stopped).toBe(true);
    expect(s.restarts).toEqual(['idle']);
    s.clock.advance(500);
    expect(s.kube.watches).toHaveLength(2);
    expect(s.kube.watches[1]?.resourceVersion).toBe(s.kube.watches[0]?.resourceVersion);
  });

  it('retries a failed list with backoff and stays unavailable meanwhile', async () => {
    const s = setup();
    s.kube.failLists.push(refused(), refused());
    s.kube.put('agentcube', 'a', 'dev.alice', false);
    s.cache.start();
    await settle();
    expect(s.restarts).toEqual(['list_error']);
    expect(s.cache.status()).toMatchObject({ synced: false, lastError: 'connect ECONNREFUSED' });
    await s.clock.advanceAsync(500);
    expect(s.restarts).toEqual(['list_error', 'list_error']);
    await s.clock.advanceAsync(999);
    expect(s.kube.lists).toHaveLength(2);
    await s.clock.advanceAsync(1);
    expect(s.cache.status().synced).toBe(true);
    expect(s.cache.lookup('agentcube', 'a')).toEqual({ kind: 'hit', owner: 'dev.alice' });
  });

  it('a watch the server closes at once without events backs off instead of looping', async () => {
    const s = setup();
    await synced(s);
    s.kube.current()?.end({ kind: 'closed' });
    expect(s.restarts).toEqual(['error']);
    expect(s.kube.watches).toHaveLength(1);
    s.clock.advance(500);
    expect(s.kube.watches).toHaveLength(2);
  });

  it('whenSynced resolves after the first list; stop ends the watch and ignores late callbacks', async () => {
    const s = setup();
    let done = false;
    void s.cache.whenSynced().then(() => (done = true));
    await synced(s);
    expect(done).toBe(true);
    const w = s.kube.current();
    s.cache.stop();
    expect(w?.stopped).toBe(true);
    w?.handlers.onEvent({ type: 'ADDED', object: { namespace: 'agentcube', name: 'late', resourceVersion: '999', labels: {} } });
    expect(s.cache.lookup('agentcube', 'late')).not.toEqual({ kind: 'hit', owner: null });
    expect(s.clock.pending()).toHaveLength(0);
  });
});
