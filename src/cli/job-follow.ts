/**
 * Following a job until it ends or parks (`osr job watch`, and `--wait` on every long
 * operation): polls `GET /jobs/{id}`, shows a progress bar on a terminal or step
 * changes as lines elsewhere, and reports the end with the exit code DESIGN §5 asks
 * for (0 when Succeeded or WaitingForAction, non-zero when Failed or Cancelled).
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Job, JobState, JobStep } from '../domain/model.js';
import { jobOf } from './client.js';
import type { OsrClient } from './client.js';
import { EXIT_CODES } from './errors.js';
import { ProgressBar, elapsed, formatJobError, stepLabel } from './output.js';
import type { Output } from './output.js';

/** States at which following stops: the job ended, or waits for an operator. */
export const SETTLED_STATES: readonly JobState[] = ['Succeeded', 'Failed', 'Cancelled', 'WaitingForAction'];

export interface FollowOptions {
  out: Output;
  /** 'bar': a progress bar on a terminal (lines elsewhere); 'lines': step changes as lines. */
  style: 'bar' | 'lines';
  /** Poll interval; default 500 ms. */
  intervalMs?: number;
  /** Stops following (the returned promise rejects with the abort reason). */
  signal?: AbortSignal;
}

/** True when following a job in this state should stop. */
export function isSettled(state: JobState): boolean {
  return SETTLED_STATES.includes(state);
}

/** Exit code for a settled job: 0 for Succeeded/WaitingForAction, 3 for Failed/Cancelled. */
export function exitCodeOf(job: Job): number {
  return job.state === 'Succeeded' || job.state === 'WaitingForAction' ? EXIT_CODES.ok : EXIT_CODES.jobFailed;
}

/**
 * Polls the job until it settles and returns its last state. With `--json` nothing is
 * printed while following.
 */
export async function followJob(client: OsrClient, jobId: string, options: FollowOptions): Promise<Job> {
  const { out } = options;
  const interval = options.intervalMs ?? 500;
  const bar = new ProgressBar(out.stderr);
  const useBar = !out.json && options.style === 'bar' && bar.active;
  const printLines = !out.json && !useBar;
  const seen = new Map<number, JobStep['state']>();
  try {
    for (;;) {
      const job = await client.getJob(jobId);
      if (useBar) bar.update(job);
      if (printLines) {
        for (const step of job.steps) {
          if (seen.get(step.index) === step.state) continue;
          if (!(step.state === 'NotStarted' && !seen.has(step.index))) out.line(describeStep(job, step));
          seen.set(step.index, step.state);
        }
      }
      if (isSettled(job.state)) return job;
      await delay(interval, undefined, { signal: options.signal });
    }
  } finally {
    bar.finish();
  }
}

/** `[2/5] Create replica disks: Succeeded (1.2s)`; a Skipped step adds its reason. */
export function describeStep(job: Job, step: JobStep): string {
  const took = step.state === 'NotStarted' ? '' : ` (${elapsed(step.startedAt, step.endedAt)})`;
  const progress = step.state === 'InProgress' && step.progress !== null ? ` ${step.progress}%` : '';
  const error = step.error ? ` — ${step.error.message} (${step.error.code})` : '';
  const skipped = step.state === 'Skipped' && step.skipReason !== null ? ` — ${step.skipReason}` : '';
  return `${stepLabel(job, step)}: ${step.state}${progress}${took}${error}${skipped}`;
}

/**
 * Prints how a settled job ended — the job JSON with `--json`; otherwise its state, the
 * operator prompt when it waits, and the error (code, message, causes, action) when it
 * failed — and returns the exit code.
 */
export function reportSettledJob(out: Output, job: Job): number {
  if (out.json) {
    out.printJson(job);
    return exitCodeOf(job);
  }
  const took = elapsed(job.startedAt ?? job.createdAt, job.endedAt);
  out.line(`Job ${job.id} (${job.displayName}) ${job.state} after ${took}`);
  if (job.state === 'WaitingForAction' && job.waiting) {
    out.line(`Waiting for: ${job.waiting.name} — ${job.waiting.prompt}`);
    if (job.type === 'TestFailover' && job.waiting.name === 'complete-test') {
      out.line(`Complete the test with: osr test-cleanup ${job.targetName} --notes TEXT`);
    } else {
      out.line(`Resume it with: osr job resume ${job.id} --comment TEXT`);
    }
  }
  const error = job.error ?? job.steps.find((s) => s.error !== null)?.error ?? null;
  if (error) for (const l of formatJobError(error)) out.line(l);
  return exitCodeOf(job);
}

/**
 * Handles the answer of a long operation (202 `{job, …}`): prints it (the API's JSON
 * with `--json`), or with `wait` follows the job with a progress bar and reports how
 * it ended, setting the process exit code.
 */
export async function handleStartedJob(
  client: OsrClient,
  out: Output,
  body: unknown,
  options: { wait: boolean; intervalMs?: number },
): Promise<Job> {
  const job = jobOf(body);
  if (!options.wait) {
    out.result(body, () => {
      out.line(`Started job ${job.id}: ${job.displayName} (${job.state})`);
      out.line(`Follow it with: osr job watch ${job.id}`);
    });
    return job;
  }
  if (!out.json) out.line(`Started job ${job.id}: ${job.displayName}`);
  let settled = await followJob(client, job.id, { out, style: 'bar', intervalMs: options.intervalMs });
  // The operation is done only when the jobs it handed its item over to are done too
  // (Enable protection → Finalize protection: the item is Protected only after the latter).
  for (let next = await handedOverTo(client, settled); next !== undefined;) {
    if (!out.json) {
      reportSettledJob(out, settled);
      out.line(`Then job ${next.id}: ${next.displayName}`);
    }
    settled = await followJob(client, next.id, { out, style: 'bar', intervalMs: options.intervalMs });
    next = await handedOverTo(client, settled);
  }
  process.exitCode = reportSettledJob(out, settled);
  return settled;
}

/**
 * The job a Succeeded job handed its target over to before it ended, if any (Enable
 * protection submits Finalize protection as its last step). While a job holds its item
 * no operation can start another job on it, so a job on the same target created while
 * this one ran was started by it.
 */
export async function handedOverTo(client: OsrClient, job: Job): Promise<Job | undefined> {
  if (job.state !== 'Succeeded' || job.endedAt === null) return undefined;
  const ended = Date.parse(job.endedAt);
  const page = await client.listJobs({ target: job.targetId, since: job.createdAt, limit: 100 });
  return page.items
    .filter((j) => j.id !== job.id && Date.parse(j.createdAt) <= ended)
    .sort((a, b) => Date.parse(a.createdAt) - Date.parse(b.createdAt))[0];
}
