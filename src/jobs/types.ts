/**
 * The jobs engine's public contract (DESIGN §4 "Jobs"). A job type is a list of
 * named steps; each step is an idempotent async function. The engine persists every
 * step's state, runs jobs under renewable leases, resumes them after a crash at the
 * first step not recorded as done, and parks them in WaitingForAction for manual
 * actions. Workflows (src/workflows) register job types; the API submits, cancels and
 * resumes jobs through `JobEngine`.
 */
import type { Job, JobWaiting } from '../domain/model.js';

/** Time source; tests inject a controllable one. */
export interface Clock {
  now(): Date;
}

/** The real clock. */
export const systemClock: Clock = { now: () => new Date() };

/** What a step function receives. */
export interface StepContext<I = unknown> {
  readonly job: Job;
  readonly input: I;
  /** Index and name of the running step. */
  readonly stepIndex: number;
  readonly stepName: string;
  /** Outputs of earlier steps by step name (what they returned). */
  readonly outputs: Readonly<Record<string, unknown>>;
  /** Aborted when the job is cancelled or the lease is lost; long steps must honour it. */
  readonly signal: AbortSignal;
  /** A stable key for this step's side effects (`jobId:stepIndex`), for idempotency. */
  readonly effectKey: string;
  /** The operator comments given when the job was resumed from WaitingForAction. */
  readonly comments: readonly { at: string; text: string }[];
  readonly clock: Clock;
  /** Reports step progress 0–100 (persisted, throttled). */
  progress(percent: number): Promise<void>;
}

/**
 * What a step may return: a value (stored as its output), `waitFor(...)` to park the
 * job in WaitingForAction (when resumed the *same* step runs again, and sees the
 * comment in `ctx.comments`, so it decides whether to wait again), or `skipStep(...)`
 * when the step had nothing to do: it ends Skipped with the reason shown to operators.
 */
export type StepResult = unknown;

/** A step of a job type. */
export interface StepDefinition<I = unknown> {
  name: string;
  run(ctx: StepContext<I>): Promise<StepResult>;
}

/** A job type. */
export interface JobDefinition<I = unknown> {
  type: string;
  displayName: string;
  /** Whether an operator may cancel it (checked before cancel is accepted). */
  cancellable: boolean;
  steps: StepDefinition<I>[];
  /** Called once when the job ends Failed or Cancelled (e.g. release the item, start a compensating job). */
  onEnd?(job: Job, ctx: { clock: Clock }): Promise<void>;
  /** Called once when the job ends Succeeded. */
  onSuccess?(job: Job, ctx: { clock: Clock }): Promise<void>;
}

/** Submitting a job. */
export interface SubmitJob<I = unknown> {
  /** Optional id chosen by the caller (e.g. recorded on the target before submitting). */
  id?: string;
  type: string;
  vaultId: string;
  targetKind: string;
  targetId: string;
  targetName: string;
  input: I;
}

/** Marker a step returns to park its job (see `waitFor`). */
export interface WaitRequest {
  readonly __osrWait: true;
  readonly waiting: Omit<JobWaiting, 'since'>;
}

/** Park the job in WaitingForAction with a name and a prompt for the operator. */
export function waitFor(name: string, prompt: string): WaitRequest {
  return { __osrWait: true, waiting: { name, prompt } };
}

/** True when a step result asks to park the job. */
export function isWaitRequest(v: unknown): v is WaitRequest {
  return typeof v === 'object' && v !== null && (v as { __osrWait?: unknown }).__osrWait === true;
}

/** Marker a step returns when it did nothing (see `skipStep`). */
export interface SkipRequest {
  readonly __osrSkip: true;
  readonly reason: string;
  readonly output: unknown;
}

/**
 * Ends the step as Skipped, with `reason` stored on the step (`JobStep.skipReason`) for
 * the API and the CLI, and `output` (default null) stored as its output for later steps.
 * A step that did nothing must say so this way rather than succeed silently.
 */
export function skipStep(reason: string, output?: unknown): SkipRequest {
  return { __osrSkip: true, reason, output: output ?? null };
}

/** True when a step result asks to end the step as Skipped. */
export function isSkipRequest(v: unknown): v is SkipRequest {
  return typeof v === 'object' && v !== null && (v as { __osrSkip?: unknown }).__osrSkip === true;
}
