import { describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Job } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import type { Store } from '../store/store.js';
import { LeaseLostError } from '../store/store.js';
import { storeVariants } from '../../test/jobs/stores.js';
import type { StoreVariant } from '../../test/jobs/stores.js';
import { JobAbortedError, JobEngine, JobWaitTimeoutError, isJobEnded } from './engine.js';
import type { JobEngineLogger, JobEngineOptions } from './engine.js';
import type { JobEvent } from './events.js';
import { waitUntilResumed } from './manual-action.js';
import { ManualClock } from './manual-clock.js';
import type { JobDefinition, StepContext } from './types.js';
import { isWaitRequest, skipStep } from './types.js';

const T = { timeout: 30_000 };

interface Gate {
  promise: Promise<void>;
  open(): void;
}

function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Waits for `p`, or rejects with the signal's reason as soon as it aborts. */
function untilOrAbort(signal: AbortSignal, p: Promise<void>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      },
      (err: unknown) => reject(err as Error),
    );
  });
}

/** Polls `fn` until it returns true, failing after `ms`. */
async function until(what: string, fn: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A view of the jobs repository whose every call fails while `net.partitioned` is set. */
function partitionable(jobs: Store['jobs'], net: { partitioned: boolean }): Store['jobs'] {
  return new Proxy(jobs, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]): Promise<unknown> =>
        net.partitioned
          ? Promise.reject(new Error('connection reset'))
          : Promise.resolve((value as (...a: unknown[]) => unknown).apply(target, args));
    },
  });
}

class MemoryLogger implements JobEngineLogger {
  readonly lines: { level: string; obj: object; msg?: string }[] = [];
  info(obj: object, msg?: string): void {
    this.lines.push({ level: 'info', obj, msg });
  }
  warn(obj: object, msg?: string): void {
    this.lines.push({ level: 'warn', obj, msg });
  }
  error(obj: object, msg?: string): void {
    this.lines.push({ level: 'error', obj, msg });
  }
}

interface Harness {
  store: Pick<Store, 'jobs'>;
  vaultId: string;
  engine(opts?: Partial<JobEngineOptions>): JobEngine;
  submit(engine: JobEngine, type: string, input?: unknown): Promise<Job>;
}

async function setup(t: TestContext, variant: StoreVariant): Promise<Harness> {
  const opened = await variant.open();
  const engines: JobEngine[] = [];
  t.after(async () => {
    for (const e of engines) await e.stop();
    await opened.close();
  });
  return {
    store: opened.store,
    vaultId: opened.vaultId,
    engine(opts = {}) {
      const e = new JobEngine({
        store: opened.store,
        pollMs: 20,
        leaseMs: 5000,
        renewEveryMs: 50,
        reapEveryMs: 50,
        stopTimeoutMs: 5000,
        ...opts,
      });
      engines.push(e);
      return e;
    },
    submit(engine, type, input = {}) {
      return engine.submit({
        type,
        vaultId: opened.vaultId,
        targetKind: 'test',
        targetId: 'target-1',
        targetName: 'target one',
        input,
      });
    },
  };
}

/** A job type whose steps record how often they ran. */
function counted<I>(
  type: string,
  steps: Record<string, (ctx: StepContext<I>) => Promise<unknown>>,
  extra: Partial<JobDefinition<I>> = {},
): JobDefinition<I> & { runs: Map<string, number> } {
  const runs = new Map<string, number>();
  return {
    type,
    displayName: `Test ${type}`,
    cancellable: true,
    runs,
    steps: Object.entries(steps).map(([name, fn]) => ({
      name,
      run(ctx: StepContext<I>) {
        runs.set(ctx.effectKey, (runs.get(ctx.effectKey) ?? 0) + 1);
        return fn(ctx);
      },
    })),
    ...extra,
  };
}

for (const variant of storeVariants()) {
  void describe(`JobEngine (${variant.name})`, () => {
    void it('runs steps in order and passes outputs to later steps', T, async (t) => {
      const h = await setup(t, variant);
      const engine = h.engine();
      const ended: Job[] = [];
      const def = counted<{ base: number }>(
        'sum',
        {
          first: (ctx) => Promise.resolve({ x: ctx.input.base + 1 }),
          second: (ctx) => Promise.resolve({ y: (ctx.outputs.first as { x: number }).x * 10 }),
          third: async (ctx) => {
            await ctx.progress(50);
            return `y=${(ctx.outputs.second as { y: number }).y}`;
          },
        },
        {
          onSuccess(job) {
            ended.push(job);
            return Promise.resolve();
          },
        },
      );
      engine.register(def);
      const events: JobEvent[] = [];
      engine.events.on('job', (e) => events.push(e));
      engine.start();
      const submitted = await h.submit(engine, 'sum', { base: 4 });
      assert.equal(submitted.state, 'NotStarted');
      assert.deepEqual(
        submitted.steps.map((s) => [s.name, s.state]),
        [
          ['first', 'NotStarted'],
          ['second', 'NotStarted'],
          ['third', 'NotStarted'],
        ],
      );
      const done = await engine.waitFor(submitted.id);
      assert.equal(done.state, 'Succeeded');
      assert.equal(done.error, null);
      assert.ok(done.startedAt !== null && done.endedAt !== null);
      assert.deepEqual(
        done.steps.map((s) => [s.name, s.state, s.output]),
        [
          ['first', 'Succeeded', { x: 5 }],
          ['second', 'Succeeded', { y: 50 }],
          ['third', 'Succeeded', 'y=50'],
        ],
      );
      for (const s of done.steps)
        assert.ok(s.startedAt !== null && s.endedAt !== null && s.startedAt <= s.endedAt);
      assert.deepEqual([...def.runs.values()], [1, 1, 1]);
      assert.equal(ended.length, 1);
      assert.equal(ended[0]?.state, 'Succeeded');
      const kinds = events.filter((e) => e.job.id === submitted.id).map((e) => e.kind);
      assert.equal(kinds[0], 'submitted');
      assert.ok(kinds.includes('started'));
      assert.equal(kinds.at(-1), 'ended');
    });

    void it(
      'fails the job and the step with the OsrError fields; other errors become INTERNAL',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const engine = h.engine();
        const onEnd: Job[] = [];
        const def = counted(
          'fail',
          {
            prepare: () => Promise.resolve('ok'),
            'power on': () =>
              Promise.reject(new OsrError('TARGET_HOST_OUT_OF_MEMORY', 'host h1 has 512 MB free')),
            never: () => Promise.resolve('unreachable'),
          },
          {
            onEnd(job) {
              onEnd.push(job);
              return Promise.resolve();
            },
          },
        );
        engine.register(def);
        engine.register(counted('crash', { boom: () => Promise.reject(new TypeError('x is undefined')) }));
        engine.start();
        const job = await engine.waitFor((await h.submit(engine, 'fail')).id);
        assert.equal(job.state, 'Failed');
        assert.equal(job.error?.code, 'TARGET_HOST_OUT_OF_MEMORY');
        assert.equal(job.error?.seedCode, 8038);
        assert.equal(job.error?.message, 'host h1 has 512 MB free');
        assert.match(job.error?.possibleCauses ?? '', /memory/);
        assert.match(job.error?.recommendedAction ?? '', /memory/);
        assert.deepEqual(
          job.steps.map((s) => s.state),
          ['Succeeded', 'Failed', 'NotStarted'],
        );
        assert.deepEqual(job.steps[1]?.error, job.error);
        assert.ok(job.steps[1]?.endedAt);
        assert.equal(def.runs.get(`${job.id}:2`), undefined);
        assert.equal(onEnd.length, 1);
        assert.equal(onEnd[0]?.state, 'Failed');

        const crashed = await engine.waitFor((await h.submit(engine, 'crash')).id);
        assert.equal(crashed.state, 'Failed');
        assert.equal(crashed.error?.code, 'INTERNAL');
        assert.equal(crashed.steps[0]?.error?.code, 'INTERNAL');
        assert.equal(crashed.steps[0]?.error?.message, 'x is undefined');
      },
    );

    void it('refuses unknown types at submit and never claims types it does not know', T, async (t) => {
      const h = await setup(t, variant);
      const a = h.engine();
      const submitter = h.engine();
      a.register(counted('known', { only: () => Promise.resolve(1) }));
      submitter.register(counted('other', { only: () => Promise.resolve(2) }));
      await assert.rejects(
        h.submit(a, 'other'),
        (e: unknown) => e instanceof OsrError && e.code === 'VALIDATION_FAILED',
      );
      assert.throws(
        () => a.register(counted('known', { x: () => Promise.resolve(0) })),
        (e: unknown) => e instanceof OsrError && e.code === 'ALREADY_EXISTS',
      );
      a.start();
      const other = await h.submit(submitter, 'other');
      const known = await a.waitFor((await h.submit(a, 'known')).id);
      assert.equal(known.state, 'Succeeded');
      // a has claimed and finished a later job; the unknown type was never touched.
      const stillOther = await h.store.jobs.get(other.id);
      assert.equal(stillOther.state, 'NotStarted');
      assert.equal(stillOther.attempts, 0);
    });

    void it(
      'cancels a running cancellable job: the step sees the abort, step and job end Cancelled',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const engine = h.engine();
        const other = h.engine(); // cancels through the store only; does not run the job
        let sawAbort: unknown;
        const onEnd: Job[] = [];
        const def = counted(
          'long',
          {
            quick: () => Promise.resolve(1),
            slow: async (ctx) => {
              try {
                await untilOrAbort(ctx.signal, new Promise(() => undefined));
              } catch (err) {
                sawAbort = err;
                throw err;
              }
            },
            after: () => Promise.resolve(3),
          },
          {
            onEnd(job) {
              onEnd.push(job);
              return Promise.resolve();
            },
          },
        );
        engine.register(def);
        engine.start();
        for (const canceller of [engine, other]) {
          sawAbort = undefined;
          const job = await h.submit(engine, 'long');
          await engine.waitFor(job.id, (j) => j.steps[1]?.state === 'InProgress');
          const requested = await canceller.cancel(job.id);
          assert.equal(requested.cancelRequested, true);
          const done = await engine.waitFor(job.id);
          assert.equal(
            done.state,
            'Cancelled',
            `cancel through ${canceller === engine ? 'runner' : 'other'}`,
          );
          assert.deepEqual(
            done.steps.map((s) => s.state),
            ['Succeeded', 'Cancelled', 'NotStarted'],
          );
          assert.ok(done.steps[1]?.endedAt);
          assert.ok(sawAbort instanceof JobAbortedError && sawAbort.why === 'cancelled');
          assert.equal(onEnd.at(-1)?.id, job.id);
          assert.equal(onEnd.at(-1)?.state, 'Cancelled');
        }
        assert.equal(onEnd.length, 2);
        await assert.rejects(
          engine.cancel((await h.store.jobs.list()).items[0]?.id ?? 'none'),
          (e: unknown) => e instanceof OsrError && e.code === 'JOB_NOT_CANCELLABLE',
        );
      },
    );

    void it(
      'refuses to cancel a non-cancellable type unless forced; a not-started job cancels at once',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const engine = h.engine();
        const g = gate();
        const onEnd: Job[] = [];
        engine.register(
          counted(
            'failover',
            { run: (ctx) => untilOrAbort(ctx.signal, g.promise), next: () => Promise.resolve(2) },
            {
              cancellable: false,
              onEnd(job) {
                onEnd.push(job);
                return Promise.resolve();
              },
            },
          ),
        );
        // Not started yet: cancelled at once by the store, onEnd called by the engine.
        const waiting = await h.submit(engine, 'failover');
        await assert.rejects(
          engine.cancel(waiting.id),
          (e: unknown) => e instanceof OsrError && e.code === 'JOB_NOT_CANCELLABLE',
        );
        const cancelledAtOnce = await engine.cancel(waiting.id, { force: true });
        assert.equal(cancelledAtOnce.state, 'Cancelled');
        assert.equal(onEnd.length, 1);

        engine.start();
        const job = await h.submit(engine, 'failover');
        await engine.waitFor(job.id, (j) => j.steps[0]?.state === 'InProgress');
        await assert.rejects(
          engine.cancel(job.id),
          (e: unknown) => e instanceof OsrError && e.code === 'JOB_NOT_CANCELLABLE',
        );
        assert.equal((await h.store.jobs.get(job.id)).cancelRequested, false);
        await engine.cancel(job.id, { force: true });
        const done = await engine.waitFor(job.id);
        assert.equal(done.state, 'Cancelled');
        assert.equal(done.steps[0]?.state, 'Cancelled');
        assert.equal(onEnd.length, 2);
        g.open();
      },
    );

    void it('parks a job for a manual action and resumes it with the comment', T, async (t) => {
      const h = await setup(t, variant);
      const engine = h.engine();
      const def = counted('drill', {
        'create test machine': () => Promise.resolve('vm-1'),
        'complete test': (ctx) => {
          const answer = waitUntilResumed(ctx, 'complete-test', 'Check the test machine, then resume.');
          if (isWaitRequest(answer)) return Promise.resolve(answer);
          return Promise.resolve({ notes: answer });
        },
        cleanup: (ctx) => Promise.resolve(`removed ${String(ctx.outputs['create test machine'])}`),
      });
      engine.register(def);
      engine.start();
      const job = await h.submit(engine, 'drill');
      const parked = await engine.waitFor(job.id);
      assert.equal(parked.state, 'WaitingForAction');
      assert.equal(parked.waiting?.name, 'complete-test');
      assert.equal(parked.waiting?.prompt, 'Check the test machine, then resume.');
      assert.equal(parked.steps[1]?.state, 'InProgress');
      assert.equal(parked.steps[2]?.state, 'NotStarted');
      await assert.rejects(
        engine.resume((await h.submit(engine, 'drill')).id, 'too early'),
        (e: unknown) => e instanceof OsrError && e.code === 'JOB_NOT_WAITING',
      );

      const resumed = await engine.resume(job.id, 'looks good');
      assert.notEqual(resumed.state, 'WaitingForAction');
      const done = await engine.waitFor(job.id, (j) => isJobEnded(j.state));
      assert.equal(done.state, 'Succeeded');
      assert.deepEqual(done.steps[1]?.output, { notes: 'looks good' });
      assert.equal(done.steps[2]?.output, 'removed vm-1');
      assert.equal(done.comments.at(-1)?.text, 'looks good');
      assert.equal(def.runs.get(`${job.id}:0`), 1);
      assert.equal(def.runs.get(`${job.id}:1`), 2);
    });

    void it(
      'cancels a resumed job that no worker has picked up yet when it is next claimed',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const onEnd: Job[] = [];
        const def = counted(
          'approve',
          {
            approve: (ctx) => Promise.resolve(waitUntilResumed(ctx, 'approve', 'Approve?')),
            act: () => Promise.resolve('acted'),
          },
          {
            onEnd(job) {
              onEnd.push(job);
              return Promise.resolve();
            },
          },
        );
        const engine = h.engine();
        engine.register(def);
        engine.start();
        const job = await h.submit(engine, 'approve');
        assert.equal((await engine.waitFor(job.id)).state, 'WaitingForAction');
        await engine.stop();
        await engine.resume(job.id, 'go');
        const requested = await engine.cancel(job.id);
        assert.equal(requested.state, 'InProgress');
        assert.equal(requested.cancelRequested, true);
        engine.start();
        const done = await engine.waitFor(job.id);
        assert.equal(done.state, 'Cancelled');
        assert.deepEqual(
          done.steps.map((s) => s.state),
          ['Cancelled', 'NotStarted'],
        );
        assert.equal(def.runs.get(`${job.id}:0`), 1, 'the cancelled step did not run again');
        assert.equal(onEnd.length, 1);
      },
    );

    void it(
      'a step that returns skipStep ends Skipped with its reason; later steps see its output; it is not run again after a hand-back',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const g = gate();
        const def = counted<{ shutdown: boolean }>('skips', {
          'shut down': (ctx) =>
            Promise.resolve(
              ctx.input.shutdown ? { stopped: true } : skipStep('not requested', { requested: false }),
            ),
          wait: (ctx) => untilOrAbort(ctx.signal, g.promise).then(() => 'waited'),
          report: (ctx) => Promise.resolve({ sawSkipped: ctx.outputs['shut down'] }),
        });
        const a = h.engine();
        a.register(def);
        a.start();
        const job = await h.submit(a, 'skips', { shutdown: false });
        const parked = await a.waitFor(job.id, (j) => j.steps[1]?.state === 'InProgress');
        const skipped = parked.steps[0];
        assert.equal(skipped?.state, 'Skipped');
        assert.equal(skipped?.skipReason, 'not requested');
        assert.deepEqual(skipped?.output, { requested: false });
        assert.ok(skipped?.startedAt !== null && skipped?.endedAt !== null);
        const stopped = a.stop();
        g.open();
        await stopped;
        const b = h.engine();
        b.register(def);
        b.start();
        const done = await b.waitFor(job.id);
        assert.equal(done.state, 'Succeeded');
        assert.deepEqual(
          done.steps.map((s) => [s.name, s.state, s.skipReason]),
          [
            ['shut down', 'Skipped', 'not requested'],
            ['wait', 'Succeeded', null],
            ['report', 'Succeeded', null],
          ],
        );
        assert.deepEqual(done.steps[2]?.output, { sawSkipped: { requested: false } });
        assert.equal(def.runs.get(`${job.id}:0`), 1, 'the skipped step ran once');

        const asked = await b.waitFor((await h.submit(b, 'skips', { shutdown: true })).id);
        assert.deepEqual(
          asked.steps.map((s) => [s.state, s.skipReason]),
          [
            ['Succeeded', null],
            ['Succeeded', null],
            ['Succeeded', null],
          ],
        );
      },
    );

    void it('stops at a step boundary, hands the job back, and another engine continues it', T, async (t) => {
      const h = await setup(t, variant);
      const g = gate();
      const def = counted('two', {
        one: (ctx) => untilOrAbort(ctx.signal, g.promise).then(() => 'one'),
        two: () => Promise.resolve('two'),
      });
      const a = h.engine();
      a.register(def);
      a.start();
      const job = await h.submit(a, 'two');
      await a.waitFor(job.id, (j) => j.steps[0]?.state === 'InProgress');
      const stopped = a.stop();
      g.open();
      await stopped;
      const handedBack = await h.store.jobs.get(job.id);
      assert.equal(handedBack.state, 'InProgress');
      assert.deepEqual(
        handedBack.steps.map((s) => s.state),
        ['Succeeded', 'NotStarted'],
      );
      const b = h.engine();
      b.register(def);
      b.start();
      const done = await b.waitFor(job.id);
      assert.equal(done.state, 'Succeeded');
      assert.deepEqual([...def.runs.values()], [1, 1]);
    });

    void it(
      'after losing its lease the old worker stops and the new owner finishes the job once',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const clock = new ManualClock();
        // Engine A's view of the store: every call fails while partitioned, as on a network split.
        const net = { partitioned: false };
        const jobsA = partitionable(h.store.jobs, net);
        const effects = new Map<string, number>();
        let aborts = 0;
        const g = gate();
        const def: JobDefinition = {
          type: 'effect',
          displayName: 'Effect',
          cancellable: true,
          steps: ['s0', 's1', 's2'].map((name) => ({
            name,
            async run(ctx) {
              if (name === 's1') {
                try {
                  await untilOrAbort(ctx.signal, g.promise);
                } catch (err) {
                  aborts++;
                  throw err;
                }
              }
              effects.set(ctx.effectKey, (effects.get(ctx.effectKey) ?? 0) + 1);
              return name;
            },
          })),
        };
        const logA = new MemoryLogger();
        const a = h.engine({
          store: { jobs: jobsA },
          clock,
          leaseMs: 10_000,
          renewEveryMs: 20,
          logger: logA,
        });
        const b = h.engine({ clock, leaseMs: 10_000, owner: 'engine-b' });
        a.register(def);
        b.register(def);
        a.start();
        const job = await h.submit(a, 'effect');
        await a.waitFor(job.id, (j) => j.steps[1]?.state === 'InProgress');
        net.partitioned = true;
        clock.advance(10_001);
        b.start();
        await until('A to abandon the job', () => a.runningJobIds().length === 0);
        assert.equal(aborts, 1);
        assert.ok(logA.lines.some((l) => l.level === 'error' || l.level === 'warn'));
        g.open();
        const done = await b.waitFor(job.id);
        net.partitioned = false;
        assert.equal(done.state, 'Succeeded');
        assert.ok(done.attempts >= 2);
        assert.deepEqual(
          done.steps.map((s) => s.state),
          ['Succeeded', 'Succeeded', 'Succeeded'],
        );
        assert.deepEqual([...effects.entries()].sort(), [
          [`${job.id}:0`, 1],
          [`${job.id}:1`, 1],
          [`${job.id}:2`, 1],
        ]);
        // The old owner is fenced out of the job.
        await assert.rejects(
          async () => h.store.jobs.renewLease(job.id, a.owner, 10_000, clock.now().toISOString()),
          LeaseLostError,
        );
      },
    );

    void it('a worker whose renewal is refused aborts the running step at once', T, async (t) => {
      const h = await setup(t, variant);
      const clock = new ManualClock();
      let sawAbort: unknown;
      const def = counted('stuck', {
        wait: (ctx) =>
          untilOrAbort(ctx.signal, new Promise(() => undefined)).catch((err: unknown) => {
            sawAbort = err;
            throw err;
          }),
      });
      // A's renewals stall (a slow database) while another worker takes the job over.
      const renewals: { stall?: Gate } = {};
      const jobsA = Object.create(h.store.jobs) as Store['jobs'];
      jobsA.renewLease = async (...args) => {
        if (renewals.stall) await renewals.stall.promise;
        return h.store.jobs.renewLease(...args);
      };
      const log = new MemoryLogger();
      // A neither polls nor reaps here, so only its stalled renewal touches the job.
      const a = h.engine({
        store: { jobs: jobsA },
        clock,
        leaseMs: 10_000,
        renewEveryMs: 20,
        pollMs: 600_000,
        reapEveryMs: 600_000,
        logger: log,
      });
      a.register(def);
      const job = await h.submit(a, 'stuck');
      a.start();
      await a.waitFor(job.id, (j) => j.steps[0]?.state === 'InProgress');
      const stall = gate();
      renewals.stall = stall;
      clock.advance(60_000);
      // PostgreSQL's SKIP LOCKED passes over the row while A's last renewal still holds it.
      let stolen: Job | undefined;
      await until('another worker to take the job', async () => {
        stolen = await h.store.jobs.claim('engine-b', 10_000, clock.now().toISOString(), ['stuck']);
        return stolen !== undefined;
      });
      assert.equal(stolen?.id, job.id);
      stall.open();
      await until('A to abandon the job', () => a.runningJobIds().length === 0);
      assert.ok(sawAbort instanceof JobAbortedError && sawAbort.why === 'lease-lost');
      assert.ok(log.lines.some((l) => l.msg?.includes('lease lost at renewal')));
      const after = await h.store.jobs.get(job.id);
      assert.equal(after.state, 'InProgress');
      assert.equal(
        after.steps[0]?.state,
        'InProgress',
        'the old worker wrote nothing after losing the lease',
      );
      await h.store.jobs.finish(job.id, 'engine-b', 'Succeeded', null, clock.now().toISOString());
    });

    void it('never runs a second copy of a job it reclaims after its own lease was reaped', T, async (t) => {
      const h = await setup(t, variant);
      const clock = new ManualClock();
      const g = gate();
      const def = counted('slow-db', {
        one: (ctx) => untilOrAbort(ctx.signal, g.promise).then(() => 'one'),
        two: () => Promise.resolve('two'),
      });
      const renewals: { stall?: Gate } = {};
      const jobsA = Object.create(h.store.jobs) as Store['jobs'];
      jobsA.renewLease = async (...args) => {
        if (renewals.stall) await renewals.stall.promise;
        return h.store.jobs.renewLease(...args);
      };
      const log = new MemoryLogger();
      const a = h.engine({ store: { jobs: jobsA }, clock, leaseMs: 10_000, renewEveryMs: 20, logger: log });
      a.register(def);
      const job = await h.submit(a, 'slow-db');
      a.start();
      await a.waitFor(job.id, (j) => j.steps[0]?.state === 'InProgress');
      const stall = gate();
      renewals.stall = stall;
      // A's renewals hang past the lease, so its own reaper frees the job and its claim loop takes it back.
      clock.advance(10_001);
      await until('A to reclaim its own job', () =>
        log.lines.some((l) => l.msg?.startsWith('reclaimed a job')),
      );
      stall.open();
      g.open();
      const done = await a.waitFor(job.id);
      assert.equal(done.state, 'Succeeded');
      assert.deepEqual([...def.runs.values()], [1, 1]);
    });

    void it('two engines on one store never run the same job at the same time', T, async (t) => {
      const h = await setup(t, variant);
      const active = new Set<string>();
      const executions = new Map<string, number>();
      let overlaps = 0;
      const def: JobDefinition = {
        type: 'busy',
        displayName: 'Busy',
        cancellable: true,
        steps: ['a', 'b', 'c'].map((name) => ({
          name,
          async run(ctx) {
            if (active.has(ctx.job.id)) overlaps++;
            active.add(ctx.job.id);
            executions.set(ctx.effectKey, (executions.get(ctx.effectKey) ?? 0) + 1);
            await new Promise((r) => setTimeout(r, 2 + Math.floor(Math.random() * 5)));
            active.delete(ctx.job.id);
            return name;
          },
        })),
      };
      const owners = new Map<string, Set<string>>();
      const engines = [h.engine({ concurrency: 3 }), h.engine({ concurrency: 3 })];
      for (const e of engines) {
        e.register(def);
        e.events.on('job', (ev) => {
          if (ev.kind === 'started') owners.set(ev.job.id, (owners.get(ev.job.id) ?? new Set()).add(e.owner));
        });
      }
      const jobs = await Promise.all(Array.from({ length: 16 }, () => h.submit(engines[0]!, 'busy')));
      for (const e of engines) e.start();
      const done = await Promise.all(jobs.map((j) => engines[0]!.waitFor(j.id)));
      assert.ok(done.every((j) => j.state === 'Succeeded'));
      assert.equal(overlaps, 0);
      assert.equal(executions.size, 16 * 3);
      assert.ok([...executions.values()].every((n) => n === 1));
      assert.ok([...owners.values()].every((s) => s.size === 1));
      const byEngine = engines.map((e) => [...owners.values()].filter((s) => s.has(e.owner)).length);
      assert.equal(
        byEngine.reduce((a, b) => a + b, 0),
        16,
      );
    });

    void it(
      'the reaper recovers a job whose worker vanished once the clock passes its lease',
      T,
      async (t) => {
        const h = await setup(t, variant);
        const clock = new ManualClock();
        const log = new MemoryLogger();
        const def = counted('orphan', { one: () => Promise.resolve(1), two: () => Promise.resolve(2) });
        // Polling is off so that only the reaper can make the job claimable again.
        const engine = h.engine({ clock, leaseMs: 10_000, reapEveryMs: 20, pollMs: 600_000, logger: log });
        engine.register(def);
        const job = await h.submit(engine, 'orphan');
        // A worker claims the job and vanishes without a trace.
        const ghost = await h.store.jobs.claim('ghost', 10_000, clock.now().toISOString(), ['orphan']);
        assert.equal(ghost?.id, job.id);
        engine.start();
        await new Promise((r) => setTimeout(r, 100));
        assert.equal((await h.store.jobs.get(job.id)).state, 'InProgress');
        assert.equal(def.runs.size, 0, 'a live lease is respected');
        clock.advance(10_001);
        const done = await engine.waitFor(job.id);
        assert.equal(done.state, 'Succeeded');
        assert.ok(done.attempts >= 1);
        const reaped = log.lines.find((l) => /reaped/.test(l.msg ?? ''));
        assert.deepEqual((reaped?.obj as { jobIds?: string[] } | undefined)?.jobIds, [job.id]);
      },
    );

    void it('gives up on a job whose workers keep dying instead of running it forever', T, async (t) => {
      const h = await setup(t, variant);
      const clock = new ManualClock();
      const def = counted('poison', { crash: () => Promise.resolve('never') });
      const engine = h.engine({ clock, leaseMs: 1000, maxAttempts: 2 });
      engine.register(def);
      const job = await h.submit(engine, 'poison');
      for (const ghost of ['ghost-1', 'ghost-2']) {
        const claimed = await h.store.jobs.claim(ghost, 1000, clock.now().toISOString(), ['poison']);
        assert.equal(claimed?.id, job.id);
        await h.store.jobs.updateStep(job.id, ghost, 0, { state: 'InProgress' }, clock.now().toISOString());
        clock.advance(1001);
      }
      engine.start();
      const done = await engine.waitFor(job.id);
      assert.equal(done.state, 'Failed');
      assert.equal(done.error?.code, 'INTERNAL');
      assert.equal(done.steps[0]?.state, 'Failed');
      assert.equal(def.runs.size, 0);
    });

    void it('waitFor times out with JobWaitTimeoutError', T, async (t) => {
      const h = await setup(t, variant);
      const engine = h.engine();
      engine.register(counted('idle', { one: () => Promise.resolve(1) }));
      const job = await h.submit(engine, 'idle');
      await assert.rejects(engine.waitFor(job.id, undefined, 50), (e: unknown) => {
        return e instanceof JobWaitTimeoutError && e.lastState === 'NotStarted';
      });
      assert.equal(engine.events.listenerCount(), 0);
    });
  });
}
