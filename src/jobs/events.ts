/**
 * A small typed subscription for job changes, so `osr job watch`, SSE and tests can
 * follow jobs without polling the store. It reports what *this* engine did; changes made
 * by another control-plane instance are only visible in the store.
 */
import type { Job } from '../domain/model.js';

/** Why a job event was emitted. */
export type JobEventKind =
  'submitted' | 'started' | 'step' | 'waiting' | 'resumed' | 'cancel-requested' | 'released' | 'ended';

/** A change to one job, with the job as this engine last knew it. */
export interface JobEvent {
  kind: JobEventKind;
  job: Job;
}

/** Listener for `JobEvents.on('job', …)`. */
export type JobListener = (event: JobEvent) => void;

/**
 * Typed event channel with one event name, `'job'`. Listeners run synchronously in
 * emission order; a listener that throws does not stop the others or the engine (the
 * error is reported through `onListenerError`).
 */
export class JobEvents {
  readonly #listeners = new Set<JobListener>();

  constructor(private readonly onListenerError: (err: unknown) => void = () => undefined) {}

  /** Subscribes; returns a function that unsubscribes. */
  on(event: 'job', listener: JobListener): () => void {
    void event;
    this.#listeners.add(listener);
    return () => this.off('job', listener);
  }

  /** Unsubscribes a listener added with `on`. */
  off(event: 'job', listener: JobListener): void {
    void event;
    this.#listeners.delete(listener);
  }

  /** Number of current listeners (for tests and leak checks). */
  listenerCount(): number {
    return this.#listeners.size;
  }

  /** Delivers an event to every listener. */
  emit(event: JobEvent): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(event);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}
