/**
 * The restart-durability test of issue 2: a worker process is SIGKILLed in the middle of
 * a multi-step job — after step 3's side effect, before step 3 is recorded as done — and
 * a new worker process takes the job over once the lease expires. The job must end
 * Succeeded with every step done in order, steps 1–2 must not run again, and every keyed
 * effect must have happened exactly once.
 */
import { after, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Job } from '../../src/domain/model.js';
import type { StoreConfig } from '../../src/store/store.js';
import { JobEngine, isJobEnded } from '../../src/jobs/engine.js';
import { BLOCKING_STEP, EFFECTS_JOB_TYPE, effectsJob, readLog } from '../fixtures/job-effects.js';
import { storeVariants } from './stores.js';

const WORKER = fileURLToPath(new URL('../fixtures/job-worker.js', import.meta.url));
const LEASE_MS = 1500;

interface Worker {
  child: ChildProcess;
  owner: string;
  stderr(): string;
  exited: Promise<void>;
}

const children = new Set<ChildProcess>();

after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Starts a worker process and resolves once it is claiming jobs. */
async function startWorker(config: StoreConfig, dir: string): Promise<Worker> {
  const child = spawn(process.execPath, ['--enable-source-maps', WORKER], {
    env: {
      ...process.env,
      OSR_JOB_STORE: JSON.stringify(config),
      OSR_JOB_DIR: dir,
      OSR_JOB_LEASE_MS: String(LEASE_MS),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let err = '';
  let out = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const owner = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`worker did not start within 15 s: ${err}`)), 15_000);
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /^ready (\S+)$/m.exec(out);
      if (m?.[1] !== undefined) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`worker exited (${code ?? signal}) before it was ready: ${err}`));
    });
  });
  return { child, owner, stderr: () => err, exited };
}

/** Polls `fn` until it returns a value, failing after `ms`. */
async function until<T>(what: string, fn: () => Promise<T | undefined>, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function stopWorker(w: Worker, signal: NodeJS.Signals): Promise<void> {
  if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill(signal);
  await w.exited;
}

for (const variant of storeVariants()) {
  void describe(`jobs survive a killed worker (${variant.name})`, () => {
    void it(
      'resumes the job in a new process; no step effect happens twice',
      { timeout: 60_000 },
      async (t) => {
        const opened = await variant.open();
        const dir = await mkdtemp(join(tmpdir(), 'osr-crash-'));
        const workers: Worker[] = [];
        t.after(async () => {
          for (const w of workers) await stopWorker(w, 'SIGKILL');
          await opened.close();
          await rm(dir, { recursive: true, force: true });
        });

        // The test process only submits and observes; it never starts its engine.
        const submitter = new JobEngine({ store: opened.store });
        submitter.register(effectsJob(dir));
        const job = await submitter.submit({
          type: EFFECTS_JOB_TYPE,
          vaultId: opened.vaultId,
          targetKind: 'test',
          targetId: 'crash',
          targetName: 'crash test',
          input: { label: 'crash' },
        });
        const key = (i: number): string => `${job.id}:${i}`;

        const first = await startWorker(opened.config, dir);
        workers.push(first);
        await until(
          'step 3 to run its effect in the first worker',
          async () => {
            const j = await opened.store.jobs.get(job.id);
            const inStep3 = j.steps[BLOCKING_STEP]?.state === 'InProgress';
            return inStep3 && readLog(dir, 'effects.log').includes(key(BLOCKING_STEP)) ? j : undefined;
          },
          20_000,
        );
        await stopWorker(first, 'SIGKILL');
        const killed = await opened.store.jobs.get(job.id);
        assert.equal(killed.state, 'InProgress');
        assert.deepEqual(
          killed.steps.map((s) => s.state),
          ['Succeeded', 'Succeeded', 'InProgress', 'NotStarted', 'NotStarted'],
        );

        await writeFile(join(dir, 'release'), '');
        const second = await startWorker(opened.config, dir);
        workers.push(second);
        const done = await until<Job>(
          'the job to end in the second worker',
          async () => {
            const j = await opened.store.jobs.get(job.id);
            return isJobEnded(j.state) ? j : undefined;
          },
          30_000,
        ).catch((err: unknown) => {
          throw new Error(`${String(err)}\nsecond worker log:\n${second.stderr()}`);
        });

        assert.equal(done.state, 'Succeeded', second.stderr());
        assert.equal(done.error, null);
        assert.equal(done.attempts, 2);
        assert.deepEqual(
          done.steps.map((s) => s.state),
          ['Succeeded', 'Succeeded', 'Succeeded', 'Succeeded', 'Succeeded'],
        );
        done.steps.forEach((s, i) => {
          assert.deepEqual(s.output, { step: i + 1, label: 'crash' });
          assert.ok(s.startedAt !== null && s.endedAt !== null && s.startedAt <= s.endedAt);
          const prev = done.steps[i - 1];
          if (prev?.endedAt)
            assert.ok(prev.endedAt <= s.startedAt, `step ${i + 1} started after step ${i} ended`);
        });

        // Each keyed effect exactly once, in step order.
        assert.deepEqual(readLog(dir, 'effects.log'), [0, 1, 2, 3, 4].map(key));
        // Steps 1–2 ran once; step 3 ran again after the takeover (at-least-once); 4–5 once.
        const executions = readLog(dir, 'executions.log');
        const count = (i: number): number => executions.filter((k) => k === key(i)).length;
        assert.deepEqual([0, 1, 2, 3, 4].map(count), [1, 1, 2, 1, 1]);
        assert.match(second.stderr(), new RegExp(`"attempts":2`));

        await stopWorker(second, 'SIGTERM');
        assert.equal(second.child.exitCode, 0, second.stderr());
      },
    );
  });
}
