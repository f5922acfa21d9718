/**
 * What every workflow step needs, passed in once by `createWorkflows`.
 */
import type { Store } from '../store/store.js';
import type { JobEngine } from '../jobs/engine.js';
import type { Clock } from '../jobs/types.js';
import type { AgentCommands } from './agent-commands.js';

export interface WorkflowDeps {
  store: Store;
  engine: JobEngine;
  commands: AgentCommands;
  clock: Clock;
  /** How often a step waiting for agent reports re-reads the store. */
  pollMs: number;
  /** Waits `ms` or until `signal` aborts (then rejects). */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

/** A sleep that honours an abort signal. */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
