/**
 * Manual actions (R-PLAN-2, R-TF-2): a step parks its job in WaitingForAction until an
 * operator resumes it with a comment. The engine records, in the parked step's output,
 * when it parked and how many comments the job had then, so that on the re-run the step
 * can tell a comment given for *this* wait from older ones.
 */
import type { StepContext, WaitRequest } from './types.js';
import { waitFor } from './types.js';

/** What the engine keeps in a step's output while that step is parked. */
export interface ParkRecord {
  name: string;
  prompt: string;
  /** ISO time the job parked. */
  since: string;
  /** `job.comments.length` when it parked: later comments answer this wait. */
  commentCount: number;
}

/** Output of a parked step (until the step succeeds and its real output replaces it). */
export interface ParkedStepOutput {
  __osrParked: ParkRecord;
}

/** The park record kept in a step's output, if the step is (or was last) parked. */
export function parkRecordOf(output: unknown): ParkRecord | undefined {
  if (typeof output !== 'object' || output === null) return undefined;
  const rec = (output as { __osrParked?: unknown }).__osrParked;
  if (typeof rec !== 'object' || rec === null) return undefined;
  const r = rec as Partial<ParkRecord>;
  if (typeof r.name !== 'string' || typeof r.since !== 'string' || typeof r.commentCount !== 'number') {
    return undefined;
  }
  return {
    name: r.name,
    prompt: typeof r.prompt === 'string' ? r.prompt : '',
    since: r.since,
    commentCount: r.commentCount,
  };
}

/**
 * The usual body of a manual-action step. The first time it returns `waitFor(name,
 * prompt)` (return that from the step to park the job); after the operator resumed the
 * job it returns the text of the latest comment given since the step parked, so the step
 * can go on:
 *
 * ```ts
 * async run(ctx) {
 *   const answer = waitUntilResumed(ctx, 'complete-test', 'Check the test machine, then resume.');
 *   if (isWaitRequest(answer)) return answer;
 *   return { notes: answer };
 * }
 * ```
 */
export function waitUntilResumed(
  ctx: StepContext<unknown>,
  name: string,
  prompt: string,
): WaitRequest | string {
  const parked = parkRecordOf(ctx.job.steps[ctx.stepIndex]?.output);
  if (parked !== undefined && parked.name === name) {
    const latest = ctx.comments.slice(parked.commentCount).at(-1);
    if (latest !== undefined) return latest.text;
  }
  return waitFor(name, prompt);
}
