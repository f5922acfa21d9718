/**
 * A clock that only moves when told, for tests that need lease expiry or reaping
 * without waiting in real time.
 */
import type { Clock } from './types.js';

/** A `Clock` whose time changes only through `advance` and `set`. */
export class ManualClock implements Clock {
  #ms: number;

  constructor(start: Date | string | number = '2030-01-01T00:00:00.000Z') {
    this.#ms = new Date(start).getTime();
  }

  now(): Date {
    return new Date(this.#ms);
  }

  /** Moves time forward by `ms` milliseconds. */
  advance(ms: number): void {
    this.#ms += ms;
  }

  /** Sets the time. */
  set(to: Date | string | number): void {
    this.#ms = new Date(to).getTime();
  }
}
