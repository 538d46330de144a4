import type { Clock, Scheduler, TimerHandle } from '../../src/core/types.js';

export interface FakeTimerHandle extends TimerHandle {
  readonly id: number;
  readonly dueAt: number;
  /** Whether the code under test called `unref()`. */
  readonly unrefed: boolean;
}

export interface FakeClock {
  readonly clock: Clock;
  readonly scheduler: Scheduler;
  now(): number;
  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way,
   * in (due time, creation) order, with `now()` set to each timer's due time.
   * Timers created by a firing timer fire too if they fall due within the window.
   */
  advance(ms: number): void;
  /**
   * Like advance, but lets pending promise callbacks run before and after each
   * timer, so async work started by one timer (a fetch that then reschedules)
   * can create the next timer before time moves past it.
   */
  advanceAsync(ms: number): Promise<void>;
  /** Timers scheduled and not yet fired or cleared, earliest first. */
  pending(): readonly FakeTimerHandle[];
}

/**
 * Lets every queued promise callback run (one turn of the event loop).
 * Not a sleep: no time passes on the fake clock and nothing waits on wall time.
 */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface Timer {
  handle: FakeTimerHandle & { unrefed: boolean };
  fn: () => void;
}

/** A clock and a scheduler that only move when the test says so. */
export function createFakeClock(startMs = 0): FakeClock {
  let now = startMs;
  let nextId = 1;
  const timers = new Map<TimerHandle, Timer>();

  const ordered = (): Timer[] =>
    [...timers.values()].sort((a, b) => a.handle.dueAt - b.handle.dueAt || a.handle.id - b.handle.id);

  const nextDue = (until: number): Timer | undefined => {
    const first = ordered()[0];
    return first && first.handle.dueAt <= until ? first : undefined;
  };

  const fire = (t: Timer): void => {
    timers.delete(t.handle);
    now = Math.max(now, t.handle.dueAt);
    t.fn();
  };

  const target = (ms: number): number => {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`advance: ms must be a non-negative number (got ${ms})`);
    return now + ms;
  };

  const scheduler: Scheduler = {
    setTimeout(fn, ms) {
      const handle = {
        id: nextId++,
        dueAt: now + Math.max(0, ms),
        unrefed: false,
        unref(): void {
          handle.unrefed = true;
        },
      };
      timers.set(handle, { handle, fn });
      return handle;
    },
    clearTimeout(handle) {
      timers.delete(handle);
    },
  };

  return {
    clock: { now: () => now },
    scheduler,
    now: () => now,
    advance(ms) {
      const until = target(ms);
      for (let t = nextDue(until); t; t = nextDue(until)) fire(t);
      now = until;
    },
    async advanceAsync(ms) {
      const until = target(ms);
      await settle();
      for (let t = nextDue(until); t; t = nextDue(until)) {
        fire(t);
        await settle();
      }
      now = until;
      await settle();
    },
    pending: () => ordered().map((t) => t.handle),
  };
}
