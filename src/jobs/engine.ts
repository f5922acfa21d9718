/**
 * The durable jobs engine (DESIGN §4 "Jobs", issue 2 item 4). It claims runnable jobs
 * of the types registered with it from the store under renewable leases, runs their
 * steps in order, records every step's state, parks jobs for manual actions, obeys
 * cancel requests, and recovers jobs whose worker vanished.
 *
 * Delivery is at-least-once per step: a step's effect and the record that the step
 * succeeded are two separate writes, so a worker that dies between them leaves the step
 * InProgress and the next worker runs it again. Steps must therefore be idempotent and
 * key their side effects with `ctx.effectKey` (`jobId:stepIndex`). See docs/jobs.md.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Job, JobError, JobState, JobStep } from '../domain/model.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { LeaseLostError } from '../store/store.js';
import type { Store } from '../store/store.js';
import { JobEvents } from './events.js';
import type { JobEventKind } from './events.js';
import type { ParkedStepOutput } from './manual-action.js';
import type { Clock, JobDefinition, StepContext, SubmitJob, WaitRequest } from './types.js';
import { isSkipRequest, isWaitRequest, systemClock } from './types.js';

/** pino-compatible logger; the engine logs structured objects with a message. */
export interface JobEngineLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const noopLogger: JobEngineLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };

/** Options of `JobEngine`; everything but `store` has a default. */
export interface JobEngineOptions {
  /** Where jobs live; the engine uses only `store.jobs`. */
  store: Pick<Store, 'jobs'>;
  /** Default: the system clock. Every time the engine writes or compares comes from it. */
  clock?: Clock;
  /** This worker's lease owner id. Default `host:pid:random`. */
  owner?: string;
  /** Lease length. Default 30000 ms. */
  leaseMs?: number;
  /** How often to look for claimable jobs besides being woken by submit/resume. Default 250 ms. */
  pollMs?: number;
  /** Jobs run at once by this engine. Default 4. */
  concurrency?: number;
  /** How often running jobs' leases are renewed (and cancel requests polled). Default leaseMs / 3. */
  renewEveryMs?: number;
  /** How often the reaper looks for jobs with expired leases. Default leaseMs / 2. */
  reapEveryMs?: number;
  /** How long `stop()` waits for running steps before abandoning them. Default leaseMs. */
  stopTimeoutMs?: number;
  /** Minimum time between two persisted progress reports of a step (100 % is always written). Default 1000 ms. */
  progressEveryMs?: number;
  /**
   * A job claimed more often than this (each takeover after a crashed or stalled worker
   * counts) fails with INTERNAL instead of running again, so a step that crashes the
   * process cannot loop forever. Default 5.
   */
  maxAttempts?: number;
  /** Default: logs nothing. */
  logger?: JobEngineLogger;
}

/** Why a running job's `AbortSignal` fired. */
export type JobAbortReason = 'cancelled' | 'lease-lost' | 'stopping';

/** The `signal.reason` of an aborted step. */
export class JobAbortedError extends Error {
  constructor(
    readonly jobId: string,
    readonly why: JobAbortReason,
  ) {
    super(`job ${jobId} aborted: ${why}`);
    this.name = 'JobAbortedError';
  }
}

/** Thrown by `JobEngine.waitFor` when the job did not reach the awaited state in time. */
export class JobWaitTimeoutError extends Error {
  constructor(
    readonly jobId: string,
    readonly timeoutMs: number,
    readonly lastState: JobState | undefined,
  ) {
    super(
      `job ${jobId} did not reach the awaited state within ${timeoutMs} ms (last state ${lastState ?? 'unknown'})`,
    );
    this.name = 'JobWaitTimeoutError';
  }
}

const ENDED: readonly JobState[] = ['Succeeded', 'Failed', 'Cancelled'];

/** True when the job is in a final state (Succeeded, Failed, Cancelled). */
export function isJobEnded(state: JobState): boolean {
  return ENDED.includes(state);
}

/** True when the job ended or is parked waiting for an operator (what `--wait` waits for). */
export function isJobSettled(state: JobState): boolean {
  return isJobEnded(state) || state === 'WaitingForAction';
}

interface RunningJob {
  /** The job as this engine last wrote it. */
  job: Job;
  def: JobDefinition<unknown>;
  abort: AbortController;
  /** Set once the job must no longer be touched by this engine (lease lost or abandoned at stop). */
  lost: boolean;
  cancelSeen: boolean;
  lastRenewedMs: number;
  lastProgressMs: number;
  /** Set after an unexpected failure: the job is retried at the next poll, not at once. */
  retryLater: boolean;
  done: Promise<void>;
}

/**
 * Runs durable jobs. One engine per process is typical; several engines (in one or many
 * processes) may share a store and never run the same job at once.
 */
export class JobEngine {
  /** 'job' events for every change this engine makes to a job. */
  readonly events: JobEvents;
  /** This worker's lease owner id. */
  readonly owner: string;

  readonly #store: Pick<Store, 'jobs'>;
  readonly #clock: Clock;
  readonly #leaseMs: number;
  readonly #pollMs: number;
  readonly #concurrency: number;
  readonly #renewEveryMs: number;
  readonly #reapEveryMs: number;
  readonly #stopTimeoutMs: number;
  readonly #progressEveryMs: number;
  readonly #maxAttempts: number;
  readonly #log: JobEngineLogger;

  readonly #defs = new Map<string, JobDefinition<unknown>>();
  readonly #running = new Map<string, RunningJob>();
  #started = false;
  #stopping = false;
  #timers: NodeJS.Timeout[] = [];
  #renewTimer: NodeJS.Timeout | undefined;
  #wakeScheduled = false;
  #ticking: Promise<void> | undefined;
  #tickAgain = false;
  #renewing = false;
  #reaping = false;

  constructor(options: JobEngineOptions) {
    this.#store = options.store;
    this.#clock = options.clock ?? systemClock;
    this.owner = options.owner ?? `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
    this.#leaseMs = positive(options.leaseMs ?? 30_000, 'leaseMs');
    this.#pollMs = positive(options.pollMs ?? 250, 'pollMs');
    this.#concurrency = positive(options.concurrency ?? 4, 'concurrency');
    this.#renewEveryMs = positive(
      options.renewEveryMs ?? Math.max(1, Math.floor(this.#leaseMs / 3)),
      'renewEveryMs',
    );
    this.#reapEveryMs = positive(
      options.reapEveryMs ?? Math.max(1, Math.floor(this.#leaseMs / 2)),
      'reapEveryMs',
    );
    this.#stopTimeoutMs = options.stopTimeoutMs ?? this.#leaseMs;
    this.#progressEveryMs = options.progressEveryMs ?? 1000;
    this.#maxAttempts = positive(options.maxAttempts ?? 5, 'maxAttempts');
    this.#log = options.logger ?? noopLogger;
    this.events = new JobEvents((err) => this.#log.error({ err }, 'job event listener threw'));
  }

  /**
   * Registers a job type. Only registered types are submitted and claimed by this engine;
   * jobs of other types stay in the store for an engine that knows them.
   */
  register<I>(def: JobDefinition<I>): void {
    if (this.#defs.has(def.type)) {
      throw new OsrError('ALREADY_EXISTS', `job type '${def.type}' is already registered`, {
        details: { type: def.type },
      });
    }
    const names = def.steps.map((s) => s.name);
    if (names.length === 0 || new Set(names).size !== names.length) {
      throw new OsrError(
        'VALIDATION_FAILED',
        `job type '${def.type}' needs at least one step and unique step names`,
        {
          details: { type: def.type, steps: names },
        },
      );
    }
    this.#defs.set(def.type, def);
    this.#wake();
  }

  /** The registered job types. */
  types(): string[] {
    return [...this.#defs.keys()];
  }

  /**
   * Creates a job of a registered type with all its steps NotStarted and wakes the claim
   * loop. Refuses an unregistered type with VALIDATION_FAILED.
   */
  async submit<I>(job: SubmitJob<I>): Promise<Job> {
    const def = this.#defs.get(job.type);
    if (def === undefined) {
      throw new OsrError('VALIDATION_FAILED', `unknown job type '${job.type}'`, {
        details: { type: job.type },
      });
    }
    const created = await this.#store.jobs.create(
      {
        ...(job.id === undefined ? {} : { id: job.id }),
        vaultId: job.vaultId,
        type: job.type,
        displayName: def.displayName,
        targetKind: job.targetKind,
        targetId: job.targetId,
        targetName: job.targetName,
        input: job.input,
        stepNames: def.steps.map((s) => s.name),
        cancellable: def.cancellable,
      },
      this.#nowIso(),
    );
    this.#emit('submitted', created);
    this.#wake();
    return created;
  }

  /** Starts the claim loop, lease renewal and the reaper. Idempotent. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#stopping = false;
    this.#timers = [
      setInterval(() => this.#wake(), this.#pollMs),
      setInterval(() => this.#reap(), this.#reapEveryMs),
    ];
    this.#renewTimer = setInterval(() => this.#renewAll(), this.#renewEveryMs);
    for (const t of [...this.#timers, this.#renewTimer]) t.unref();
    this.#log.info({ owner: this.owner, types: this.types() }, 'job engine started');
    this.#wake();
  }

  /**
   * Stops claiming and waits (up to `stopTimeoutMs`) for running steps to finish; jobs
   * are not aborted but handed back at their next step boundary (lease released, so
   * another worker continues them). Steps still running after the timeout are aborted
   * with reason 'stopping' and their leases released.
   */
  async stop(): Promise<void> {
    if (!this.#started || this.#stopping) return;
    this.#stopping = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    await this.#ticking;
    const pending = [...this.#running.values()];
    const finished = await settleWithin(
      pending.map((r) => r.done),
      this.#stopTimeoutMs,
    );
    if (!finished) {
      const left = [...this.#running.values()];
      this.#log.warn(
        { jobIds: left.map((r) => r.job.id) },
        'steps still running at stop; abandoning their jobs',
      );
      await Promise.all(
        left.map(async (run) => {
          this.#markLost(run, 'stopping');
          await this.#releaseQuietly(run);
        }),
      );
    }
    clearInterval(this.#renewTimer);
    this.#renewTimer = undefined;
    this.#started = false;
    this.#stopping = false;
    this.#log.info({ owner: this.owner }, 'job engine stopped');
  }

  /**
   * Requests cancellation. A NotStarted or WaitingForAction job is cancelled at once (and
   * its type's `onEnd` called here); a running one is aborted at once if this engine runs
   * it, else by its worker at the next lease renewal or step boundary. Refuses with
   * JOB_NOT_CANCELLABLE when the job has ended, or when its type is not cancellable and
   * `force` is not set.
   */
  async cancel(jobId: string, opts: { force?: boolean } = {}): Promise<Job> {
    const job = await this.#store.jobs.get(jobId);
    if (isJobEnded(job.state)) {
      throw new OsrError('JOB_NOT_CANCELLABLE', `job ${jobId} has already ended (${job.state})`, {
        details: { jobId, state: job.state },
      });
    }
    if (!job.cancellable && opts.force !== true) {
      throw new OsrError('JOB_NOT_CANCELLABLE', `jobs of type '${job.type}' cannot be cancelled`, {
        details: { jobId, type: job.type },
      });
    }
    const updated = await this.#store.jobs.requestCancel(jobId, this.#nowIso(), {
      force: opts.force === true,
    });
    this.#log.info({ jobId, force: opts.force === true, state: updated.state }, 'job cancel requested');
    this.#emit('cancel-requested', updated);
    const run = this.#running.get(jobId);
    if (run !== undefined) this.#seeCancel(run);
    if (updated.state === 'Cancelled') {
      const def = this.#defs.get(updated.type);
      if (def !== undefined) await this.#runHook(def, 'onEnd', updated);
      this.#emit('ended', updated);
    }
    return updated;
  }

  /**
   * Resumes a WaitingForAction job with an operator comment: it becomes claimable and
   * the parked step runs again, seeing the comment in `ctx.comments`. Refuses with
   * JOB_NOT_WAITING otherwise.
   */
  async resume(jobId: string, comment: string): Promise<Job> {
    const updated = await this.#store.jobs.resume(jobId, comment, this.#nowIso());
    this.#log.info({ jobId }, 'job resumed');
    this.#emit('resumed', updated);
    this.#wake();
    return updated;
  }

  /**
   * Resolves with the stored job once `predicate` holds (default: the job ended or is
   * waiting for an operator). Checks the store at once, on every event of this engine
   * for the job, and every `pollMs` (so it also sees jobs run by other workers). Rejects
   * with JobWaitTimeoutError after `timeoutMs` (default 60000; pass Infinity for none).
   */
  waitFor(
    jobId: string,
    predicate: (job: Job) => boolean = (j) => isJobSettled(j.state),
    timeoutMs = 60_000,
  ): Promise<Job> {
    return new Promise<Job>((resolve, reject) => {
      let last: JobState | undefined;
      let checking = false;
      let again = false;
      let done = false;
      const finish = (fn: () => void): void => {
        if (done) return;
        done = true;
        clearInterval(poll);
        if (timer !== undefined) clearTimeout(timer);
        unsubscribe();
        fn();
      };
      const check = async (): Promise<void> => {
        if (checking) {
          again = true;
          return;
        }
        checking = true;
        try {
          do {
            again = false;
            const job = await this.#store.jobs.get(jobId);
            last = job.state;
            if (predicate(job)) {
              finish(() => resolve(job));
              return;
            }
          } while (again && !done);
        } finally {
          checking = false;
        }
      };
      const run = (): void => {
        if (done) return;
        check().catch((err: unknown) =>
          finish(() => reject(err instanceof Error ? err : new Error(String(err)))),
        );
      };
      const unsubscribe = this.events.on('job', (e) => {
        if (e.job.id === jobId) run();
      });
      const poll = setInterval(run, this.#pollMs);
      const timer = Number.isFinite(timeoutMs)
        ? setTimeout(() => finish(() => reject(new JobWaitTimeoutError(jobId, timeoutMs, last))), timeoutMs)
        : undefined;
      run();
    });
  }

  /** Ids of the jobs this engine is running now. */
  runningJobIds(): string[] {
    return [...this.#running.keys()];
  }

  // ---- claim loop -------------------------------------------------------------------

  #wake(): void {
    if (!this.#started || this.#stopping || this.#wakeScheduled) return;
    this.#wakeScheduled = true;
    setImmediate(() => {
      this.#wakeScheduled = false;
      this.#tick();
    });
  }

  #tick(): void {
    if (this.#ticking !== undefined) {
      this.#tickAgain = true;
      return;
    }
    this.#ticking = this.#claimWhileRoom()
      .catch((err: unknown) => this.#log.error({ err, owner: this.owner }, 'claiming jobs failed'))
      .finally(() => {
        this.#ticking = undefined;
      });
  }

  async #claimWhileRoom(): Promise<void> {
    do {
      this.#tickAgain = false;
      const types = this.types();
      while (!this.#stopping && types.length > 0 && this.#running.size < this.#concurrency) {
        const now = this.#clock.now();
        const job = await this.#store.jobs.claim(this.owner, this.#leaseMs, now.toISOString(), types);
        if (job === undefined) break;
        const current = this.#running.get(job.id);
        if (current === undefined) {
          this.#launch(job, now.getTime());
          continue;
        }
        // Our own job came back: its lease expired (renewals were slow) and was reaped, and
        // we claimed it again. Never run a second copy: the running one simply holds the
        // new lease, unless it is already giving the job up.
        if (!current.lost) {
          current.lastRenewedMs = now.getTime();
          this.#log.warn(
            { jobId: job.id },
            'reclaimed a job this worker is still running; keeping the running copy',
          );
          continue;
        }
        await this.#store.jobs.releaseLease(job.id, this.owner);
        break;
      }
    } while (this.#tickAgain && !this.#stopping);
  }

  #launch(job: Job, claimedMs: number): void {
    const def = this.#defs.get(job.type);
    const run: RunningJob = {
      job,
      def: def ?? { type: job.type, displayName: job.displayName, cancellable: false, steps: [] },
      abort: new AbortController(),
      lost: false,
      cancelSeen: false,
      lastRenewedMs: claimedMs,
      lastProgressMs: 0,
      retryLater: false,
      done: Promise.resolve(),
    };
    this.#running.set(job.id, run);
    this.#log.info(
      { jobId: job.id, type: job.type, attempts: job.attempts, owner: this.owner },
      'job claimed',
    );
    this.#emit('started', job);
    run.done = (def === undefined ? this.#releaseQuietly(run) : this.#runJob(run))
      .catch((err: unknown) => this.#log.error({ err, jobId: job.id }, 'job runner failed'))
      .finally(() => {
        this.#running.delete(job.id);
        if (!run.retryLater) this.#wake();
      });
  }

  // ---- running a job ----------------------------------------------------------------

  async #runJob(run: RunningJob): Promise<void> {
    try {
      await this.#runSteps(run);
    } catch (err) {
      if (err instanceof LeaseLostError || run.lost) {
        this.#markLost(run, 'lease-lost');
        this.#abandoned(run);
        return;
      }
      // A store failure mid-job: hand the job back so it is retried (its steps are idempotent).
      this.#log.error({ err, jobId: run.job.id }, 'job interrupted by an unexpected error; releasing it');
      run.retryLater = true;
      await this.#releaseQuietly(run);
    }
  }

  async #runSteps(run: RunningJob): Promise<void> {
    const steps = run.job.steps;
    if (run.job.cancelRequested) {
      // e.g. cancelled after a resume, before any worker picked the job up again
      return this.#endCancelled(run, steps.find((s) => s.state === 'InProgress')?.index);
    }
    // A previous worker recorded the outcome but died before ending the job.
    const failed = steps.find((s) => s.state === 'Failed');
    if (failed !== undefined)
      return this.#endFailed(run, undefined, failed.error ?? unknownStepError(failed));
    if (steps.some((s) => s.state === 'Cancelled')) return this.#endCancelled(run, undefined);
    if (run.job.attempts > this.#maxAttempts) {
      const current = steps.find((s) => s.state === 'InProgress');
      const err = new OsrError(
        'INTERNAL',
        `job was taken over ${run.job.attempts - 1} times after its worker stopped (crashed or lost its lease); giving up`,
        {
          details: { attempts: run.job.attempts, step: current?.name ?? null },
          possibleCauses:
            'A step keeps crashing or stalling the control plane, or workers keep losing their leases.',
          recommendedAction:
            'Check the server log around the job’s steps, fix the cause, then run the operation again.',
        },
      );
      return this.#endFailed(run, current?.index, err.toJobError());
    }

    let first = true;
    for (const step of steps) {
      if (step.state === 'Succeeded' || step.state === 'Skipped') continue;
      if (this.#stopping) return this.#handBack(run);
      if (!first) await this.#refreshCancel(run);
      first = false;
      if (run.cancelSeen) return this.#endCancelled(run, undefined);

      const stepDef = run.def.steps[step.index];
      if (stepDef === undefined || stepDef.name !== step.name) {
        const err = new OsrError(
          'INTERNAL',
          `job type '${run.job.type}' has no step '${step.name}' at index ${step.index}`,
          {
            details: { jobId: run.job.id, step: step.name, index: step.index },
          },
        );
        return this.#endFailed(run, step.index, err.toJobError());
      }
      if (step.state !== 'InProgress') {
        await this.#patchStep(run, step.index, {
          state: 'InProgress',
          startedAt: this.#nowIso(),
          endedAt: null,
          error: null,
        });
      }

      let result: unknown;
      let failure: unknown;
      let threw = false;
      try {
        result = await stepDef.run(this.#context(run, step.index));
      } catch (err) {
        threw = true;
        failure = err;
      }
      if (run.lost) return this.#abandoned(run);
      if (run.cancelSeen) return this.#endCancelled(run, step.index);
      if (threw) {
        this.#log.warn({ jobId: run.job.id, step: step.name, err: failure }, 'job step failed');
        return this.#endFailed(run, step.index, toOsrError(failure).toJobError());
      }
      if (isWaitRequest(result)) return this.#park(run, step.index, result);
      if (isSkipRequest(result)) {
        this.#log.info({ jobId: run.job.id, step: step.name, reason: result.reason }, 'job step skipped');
        await this.#patchStep(run, step.index, {
          state: 'Skipped',
          endedAt: this.#nowIso(),
          skipReason: result.reason,
          output: result.output,
        });
        continue;
      }
      await this.#patchStep(run, step.index, {
        state: 'Succeeded',
        endedAt: this.#nowIso(),
        output: result ?? null,
      });
    }
    await this.#end(run, 'Succeeded', null);
  }

  #context(run: RunningJob, index: number): StepContext<unknown> {
    const job: Job = {
      ...run.job,
      steps: run.job.steps.map((s) => ({ ...s })),
      comments: [...run.job.comments],
    };
    const outputs: Record<string, unknown> = {};
    for (const s of job.steps)
      if (s.state === 'Succeeded' || s.state === 'Skipped') outputs[s.name] = s.output;
    const step = job.steps[index];
    return {
      job,
      input: job.input,
      stepIndex: index,
      stepName: step?.name ?? '',
      outputs,
      signal: run.abort.signal,
      effectKey: `${job.id}:${index}`,
      comments: job.comments,
      clock: this.#clock,
      progress: (percent) => this.#progress(run, index, percent),
    };
  }

  async #progress(run: RunningJob, index: number, percent: number): Promise<void> {
    if (run.lost || run.abort.signal.aborted)
      throw run.abort.signal.reason ?? new JobAbortedError(run.job.id, 'lease-lost');
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    const nowMs = this.#clock.now().getTime();
    if (value < 100 && nowMs - run.lastProgressMs < this.#progressEveryMs) return;
    run.lastProgressMs = nowMs;
    try {
      await this.#patchStep(run, index, { progress: value });
    } catch (err) {
      if (err instanceof LeaseLostError) this.#markLost(run, 'lease-lost');
      throw err;
    }
  }

  async #patchStep(
    run: RunningJob,
    index: number,
    patch: Partial<Omit<JobStep, 'index' | 'name'>>,
  ): Promise<void> {
    const now = this.#nowIso();
    await this.#store.jobs.updateStep(run.job.id, this.owner, index, patch, now);
    run.job = {
      ...run.job,
      updatedAt: now,
      steps: run.job.steps.map((s) => (s.index === index ? { ...s, ...patch } : s)),
    };
    this.#emit('step', run.job);
  }

  async #park(run: RunningJob, index: number, req: WaitRequest): Promise<void> {
    const since = this.#nowIso();
    const output: ParkedStepOutput = {
      __osrParked: { ...req.waiting, since, commentCount: run.job.comments.length },
    };
    await this.#patchStep(run, index, { output });
    await this.#store.jobs.park(run.job.id, this.owner, req.waiting, since);
    run.job = { ...run.job, state: 'WaitingForAction', waiting: { ...req.waiting, since }, updatedAt: since };
    this.#log.info(
      { jobId: run.job.id, step: run.job.steps[index]?.name, waiting: req.waiting.name },
      'job waiting for action',
    );
    this.#emit('waiting', run.job);
  }

  #abandoned(run: RunningJob): void {
    const why =
      run.abort.signal.reason instanceof JobAbortedError ? run.abort.signal.reason.why : 'lease-lost';
    this.#log.warn(
      { jobId: run.job.id, owner: this.owner, why },
      'job abandoned by this worker; its lease is not held',
    );
  }

  async #handBack(run: RunningJob): Promise<void> {
    await this.#store.jobs.releaseLease(run.job.id, this.owner);
    this.#log.info({ jobId: run.job.id }, 'job handed back (engine stopping)');
    this.#emit('released', run.job);
  }

  async #endCancelled(run: RunningJob, index: number | undefined): Promise<void> {
    if (index !== undefined)
      await this.#patchStep(run, index, { state: 'Cancelled', endedAt: this.#nowIso() });
    await this.#end(run, 'Cancelled', null);
  }

  async #endFailed(run: RunningJob, index: number | undefined, error: JobError): Promise<void> {
    if (index !== undefined)
      await this.#patchStep(run, index, { state: 'Failed', endedAt: this.#nowIso(), error });
    await this.#end(run, 'Failed', error);
  }

  async #end(
    run: RunningJob,
    state: 'Succeeded' | 'Failed' | 'Cancelled',
    error: JobError | null,
  ): Promise<void> {
    const endedAt = this.#nowIso();
    const final: Job = { ...run.job, state, error, waiting: null, endedAt, updatedAt: endedAt };
    // Hooks run before the end is recorded, while the lease is held: a crash in between
    // runs them again on takeover (at-least-once, like steps).
    await this.#runHook(run.def, state === 'Succeeded' ? 'onSuccess' : 'onEnd', final);
    if (run.lost) return this.#abandoned(run);
    await this.#store.jobs.finish(run.job.id, this.owner, state, error, endedAt);
    run.job = final;
    this.#log.info({ jobId: final.id, type: final.type, state, code: error?.code }, 'job ended');
    this.#emit('ended', final);
  }

  async #runHook(def: JobDefinition<unknown>, hook: 'onEnd' | 'onSuccess', job: Job): Promise<void> {
    try {
      await def[hook]?.(job, { clock: this.#clock });
    } catch (err) {
      // The job's outcome stands; the failed hook is reported, not retried.
      this.#log.error({ err, jobId: job.id, hook }, 'job end hook failed');
    }
  }

  // ---- leases, cancel, reaper -------------------------------------------------------

  #renewAll(): void {
    if (this.#renewing || this.#running.size === 0) return;
    this.#renewing = true;
    Promise.all([...this.#running.values()].map((run) => this.#renewOne(run)))
      .catch((err: unknown) => this.#log.error({ err }, 'lease renewal round failed'))
      .finally(() => {
        this.#renewing = false;
      });
  }

  async #renewOne(run: RunningJob): Promise<void> {
    if (run.lost || isJobEnded(run.job.state) || run.job.state === 'WaitingForAction') return;
    const now = this.#clock.now();
    try {
      await this.#store.jobs.renewLease(run.job.id, this.owner, this.#leaseMs, now.toISOString());
      run.lastRenewedMs = now.getTime();
    } catch (err) {
      if (err instanceof LeaseLostError) {
        this.#log.warn(
          { jobId: run.job.id, owner: this.owner },
          'lease lost at renewal; aborting the job here',
        );
        this.#markLost(run, 'lease-lost');
        return;
      }
      // Without a renewal for a whole lease another worker may own the job already.
      if (now.getTime() - run.lastRenewedMs >= this.#leaseMs) {
        this.#log.error(
          { err, jobId: run.job.id },
          'lease could not be renewed before it expired; aborting the job here',
        );
        this.#markLost(run, 'lease-lost');
      } else {
        this.#log.warn({ err, jobId: run.job.id }, 'lease renewal failed; will retry');
      }
      return;
    }
    await this.#refreshCancel(run).catch((err: unknown) =>
      this.#log.warn({ err, jobId: run.job.id }, 'checking for a cancel request failed'),
    );
  }

  async #refreshCancel(run: RunningJob): Promise<void> {
    if (run.cancelSeen || run.lost) return;
    const stored = await this.#store.jobs.find(run.job.id);
    if (stored?.cancelRequested === true) this.#seeCancel(run);
  }

  #seeCancel(run: RunningJob): void {
    if (run.cancelSeen) return;
    run.cancelSeen = true;
    run.job = { ...run.job, cancelRequested: true };
    run.abort.abort(new JobAbortedError(run.job.id, 'cancelled'));
  }

  #markLost(run: RunningJob, why: 'lease-lost' | 'stopping'): void {
    if (run.lost) return;
    run.lost = true;
    if (!run.abort.signal.aborted) run.abort.abort(new JobAbortedError(run.job.id, why));
  }

  async #releaseQuietly(run: RunningJob): Promise<void> {
    try {
      await this.#store.jobs.releaseLease(run.job.id, this.owner);
      this.#emit('released', run.job);
    } catch (err) {
      if (err instanceof LeaseLostError) return;
      this.#log.error({ err, jobId: run.job.id }, 'releasing a job lease failed; it will expire');
    }
  }

  #reap(): void {
    if (this.#reaping || this.#stopping) return;
    this.#reaping = true;
    this.#store.jobs
      .reapExpired(this.#nowIso())
      .then((ids) => {
        if (ids.length > 0) {
          this.#log.warn(
            { jobIds: ids, owner: this.owner },
            'reaped jobs whose worker stopped renewing its lease',
          );
          this.#wake();
        }
      })
      .catch((err: unknown) => this.#log.error({ err }, 'reaping expired jobs failed'))
      .finally(() => {
        this.#reaping = false;
      });
  }

  // ---- helpers ----------------------------------------------------------------------

  #nowIso(): string {
    return this.#clock.now().toISOString();
  }

  #emit(kind: JobEventKind, job: Job): void {
    this.events.emit({ kind, job });
  }
}

function positive(n: number, name: string): number {
  if (!(n > 0))
    throw new OsrError('VALIDATION_FAILED', `${name} must be positive`, { details: { [name]: n } });
  return n;
}

function unknownStepError(step: JobStep): JobError {
  return new OsrError('INTERNAL', `step '${step.name}' failed`).toJobError();
}

/** Resolves true when all promises settled within `ms`, false on timeout. */
async function settleWithin(promises: Promise<unknown>[], ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([Promise.allSettled(promises).then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
