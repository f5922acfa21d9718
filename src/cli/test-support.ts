/**
 * Helpers for the CLI's unit tests: an in-memory output stream and a job builder.
 * Not used by the CLI itself.
 */
import type { Job, JobStep } from '../domain/model.js';
import type { OutputStream } from './output.js';

/** An output stream that keeps what was written. */
export class MemoryStream implements OutputStream {
  text = '';
  constructor(
    readonly isTTY = false,
    readonly columns?: number,
  ) {}
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
}

/** A job with the given steps (name → state) and overrides. */
export function makeJob(steps: [string, JobStep['state'], number?][], overrides: Partial<Job> = {}): Job {
  return {
    id: 'job-1',
    vaultId: 'v',
    type: 'test',
    displayName: 'Test job',
    targetKind: 'item',
    targetId: 'i',
    targetName: 'web',
    state: 'InProgress',
    input: {},
    steps: steps.map(([name, state, progress], index) => ({
      index,
      name,
      state,
      startedAt: state === 'NotStarted' ? null : '2024-01-01T00:00:00.000Z',
      endedAt:
        state === 'Succeeded' || state === 'Failed' || state === 'Skipped'
          ? '2024-01-01T00:00:01.500Z'
          : null,
      progress: progress ?? null,
      error: null,
      skipReason: state === 'Skipped' ? 'nothing to do' : null,
      output: null,
    })),
    error: null,
    waiting: null,
    comments: [],
    cancellable: true,
    cancelRequested: false,
    attempts: 1,
    createdAt: '2024-01-01T00:00:00.000Z',
    startedAt: '2024-01-01T00:00:00.000Z',
    endedAt: null,
    updatedAt: '2024-01-01T00:00:00.000Z',
    ...overrides,
  };
}
