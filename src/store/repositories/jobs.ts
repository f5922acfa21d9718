/**
 * Jobs and their steps (DESIGN §4 "Jobs"). Steps, comments, input, error and waiting are
 * JSON columns of the job row, so a page of jobs is one query. Every method that takes a
 * lease owner is fenced: it changes the job only while `owner` holds the lease, else it
 * throws `LeaseLostError` (and NOT_FOUND when the job does not exist).
 */
import { notFound, OsrError } from '../../domain/errors.js';
import type { Job, JobError, JobState, JobStep, JobWaiting } from '../../domain/model.js';
import { LeaseLostError, type JobListFilter, type JobRepository, type NewJob, type Page } from '../store.js';
import type { JobsTable } from '../schema.js';
import {
  countOf,
  fromJson,
  fromJsonRequired,
  inTransaction,
  isoTime,
  isoTimeOrNull,
  newId,
  paging,
  toBool,
  toInt,
  toJson,
  toJsonRequired,
  type StoreContext,
} from './context.js';

type Comment = { at: string; text: string };

const ENDED: readonly JobState[] = ['Succeeded', 'Failed', 'Cancelled'];

function toJob(r: JobsTable): Job {
  return {
    id: r.id,
    vaultId: r.vault_id,
    type: r.type,
    displayName: r.display_name,
    targetKind: r.target_kind,
    targetId: r.target_id,
    targetName: r.target_name,
    state: r.state as JobState,
    input: fromJson<unknown>(r.input),
    // Steps stored before `skipReason` existed lack it.
    steps: fromJsonRequired<JobStep[]>(r.steps).map((s) => ({ ...s, skipReason: s.skipReason ?? null })),
    error: fromJson<JobError>(r.error),
    waiting: fromJson<JobWaiting>(r.waiting),
    comments: fromJsonRequired<Comment[]>(r.comments),
    cancellable: toBool(r.cancellable),
    cancelRequested: toBool(r.cancel_requested),
    attempts: r.attempts,
    createdAt: r.created_at,
    startedAt: r.started_at,
    endedAt: r.ended_at,
    updatedAt: r.updated_at,
  };
}

function newStep(index: number, name: string): JobStep {
  return {
    index,
    name,
    state: 'NotStarted',
    startedAt: null,
    endedAt: null,
    progress: null,
    error: null,
    skipReason: null,
    output: null,
  };
}

/** `JobRepository` over Kysely; claiming is delegated to the dialect (`job-claim.ts`). */
export class KyselyJobRepository implements JobRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(job: NewJob, now: string): Promise<Job> {
    const at = isoTime(now, 'now');
    const row: JobsTable = {
      id: newId(job.id),
      vault_id: job.vaultId,
      type: job.type,
      display_name: job.displayName,
      target_kind: job.targetKind,
      target_id: job.targetId,
      target_name: job.targetName,
      state: 'NotStarted',
      input: toJson(job.input),
      steps: toJsonRequired(job.stepNames.map((name, i) => newStep(i, name))),
      error: null,
      waiting: null,
      comments: '[]',
      cancellable: toInt(job.cancellable),
      cancel_requested: 0,
      attempts: 0,
      lease_owner: null,
      lease_expires_at: null,
      created_at: at,
      started_at: null,
      ended_at: null,
      updated_at: at,
    };
    try {
      await this.ctx.db.insertInto('jobs').values(row).execute();
    } catch (err) {
      const kind = this.ctx.dialect.classifyError(err);
      if (kind === 'unique')
        throw new OsrError('ALREADY_EXISTS', `job '${row.id}' already exists`, { cause: err });
      if (kind === 'foreign-key') throw notFound('vault', job.vaultId);
      throw err;
    }
    return toJob(row);
  }

  async find(id: string): Promise<Job | undefined> {
    const r = await this.ctx.db.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
    return r && toJob(r);
  }

  async get(id: string): Promise<Job> {
    const j = await this.find(id);
    if (j === undefined) throw notFound('job', id);
    return j;
  }

  async list(filter?: JobListFilter): Promise<Page<Job>> {
    const { limit, offset } = paging(filter);
    let q = this.ctx.db.selectFrom('jobs');
    if (filter?.vaultId !== undefined) q = q.where('vault_id', '=', filter.vaultId);
    if (filter?.state !== undefined) {
      q = filter.state.length === 0 ? q.where('id', 'is', null) : q.where('state', 'in', filter.state);
    }
    if (filter?.type !== undefined) q = q.where('type', '=', filter.type);
    if (filter?.targetId !== undefined) q = q.where('target_id', '=', filter.targetId);
    if (filter?.since !== undefined) q = q.where('created_at', '>=', isoTime(filter.since, 'since'));
    if (filter?.until !== undefined) q = q.where('created_at', '<', isoTime(filter.until, 'until'));
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toJob), total: countOf(total) };
  }

  async claim(owner: string, leaseMs: number, now: string, types?: string[]): Promise<Job | undefined> {
    const r = await this.ctx.dialect.claimJob(this.ctx.db, owner, leaseMs, isoTime(now, 'now'), types);
    return r && toJob(r);
  }

  async renewLease(id: string, owner: string, leaseMs: number, now: string): Promise<void> {
    const at = isoTime(now, 'now');
    const r = await this.ctx.db
      .updateTable('jobs')
      .set({ lease_expires_at: new Date(Date.parse(at) + leaseMs).toISOString() })
      .where('id', '=', id)
      .where('lease_owner', '=', owner)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) await this.leaseLost(id, owner);
  }

  async releaseLease(id: string, owner: string): Promise<void> {
    const r = await this.ctx.db
      .updateTable('jobs')
      .set({ lease_owner: null, lease_expires_at: null })
      .where('id', '=', id)
      .where('lease_owner', '=', owner)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) await this.leaseLost(id, owner);
  }

  async updateStep(
    id: string,
    owner: string,
    index: number,
    patch: Partial<Omit<JobStep, 'index' | 'name'>>,
    now: string,
  ): Promise<void> {
    const at = isoTime(now, 'now');
    await this.fenced(id, owner, async (tx, row) => {
      const steps = fromJsonRequired<JobStep[]>(row.steps);
      const step = steps[index];
      if (step === undefined) throw notFound('job step', `${id}#${index}`);
      if (patch.state !== undefined) step.state = patch.state;
      if (patch.startedAt !== undefined) step.startedAt = isoTimeOrNull(patch.startedAt, 'startedAt');
      if (patch.endedAt !== undefined) step.endedAt = isoTimeOrNull(patch.endedAt, 'endedAt');
      if (patch.progress !== undefined) step.progress = patch.progress;
      if (patch.error !== undefined) step.error = patch.error;
      if (patch.skipReason !== undefined) step.skipReason = patch.skipReason;
      if ('output' in patch) step.output = patch.output ?? null;
      await tx.db
        .updateTable('jobs')
        .set({ steps: toJsonRequired(steps), updated_at: at })
        .where('id', '=', id)
        .execute();
    });
  }

  async appendSteps(id: string, owner: string, names: string[], now: string): Promise<void> {
    const at = isoTime(now, 'now');
    await this.fenced(id, owner, async (tx, row) => {
      const steps = fromJsonRequired<JobStep[]>(row.steps);
      for (const name of names) steps.push(newStep(steps.length, name));
      await tx.db
        .updateTable('jobs')
        .set({ steps: toJsonRequired(steps), updated_at: at })
        .where('id', '=', id)
        .execute();
    });
  }

  async finish(
    id: string,
    owner: string,
    state: 'Succeeded' | 'Failed' | 'Cancelled',
    error: JobError | null,
    now: string,
  ): Promise<void> {
    const at = isoTime(now, 'now');
    await this.fenced(id, owner, async (tx) => {
      await tx.db
        .updateTable('jobs')
        .set({
          state,
          error: toJson(error),
          waiting: null,
          lease_owner: null,
          lease_expires_at: null,
          ended_at: at,
          updated_at: at,
        })
        .where('id', '=', id)
        .execute();
    });
  }

  async park(id: string, owner: string, waiting: Omit<JobWaiting, 'since'>, now: string): Promise<void> {
    const at = isoTime(now, 'now');
    await this.fenced(id, owner, async (tx) => {
      const w: JobWaiting = { name: waiting.name, prompt: waiting.prompt, since: at };
      await tx.db
        .updateTable('jobs')
        .set({
          state: 'WaitingForAction',
          waiting: toJson(w),
          lease_owner: null,
          lease_expires_at: null,
          updated_at: at,
        })
        .where('id', '=', id)
        .execute();
    });
  }

  async resume(id: string, comment: string, now: string): Promise<Job> {
    const at = isoTime(now, 'now');
    return inTransaction(this.ctx, async (tx) => {
      const row = await lockJob(tx, id);
      if (row.state !== 'WaitingForAction') {
        throw new OsrError('JOB_NOT_WAITING', `job '${id}' is ${row.state}, not WaitingForAction`, {
          details: { id, state: row.state },
        });
      }
      const comments = [...fromJsonRequired<Comment[]>(row.comments), { at, text: comment }];
      const next: JobsTable = {
        ...row,
        state: 'InProgress',
        waiting: null,
        lease_owner: null,
        lease_expires_at: null,
        comments: toJsonRequired(comments),
        updated_at: at,
      };
      await tx.db
        .updateTable('jobs')
        .set({
          state: next.state,
          waiting: null,
          lease_owner: null,
          lease_expires_at: null,
          comments: next.comments,
          updated_at: at,
        })
        .where('id', '=', id)
        .execute();
      return toJob(next);
    });
  }

  async requestCancel(id: string, now: string, opts?: { force?: boolean }): Promise<Job> {
    const at = isoTime(now, 'now');
    return inTransaction(this.ctx, async (tx) => {
      const row = await lockJob(tx, id);
      if (ENDED.includes(row.state as JobState)) {
        throw new OsrError('JOB_NOT_CANCELLABLE', `job '${id}' has already ended (${row.state})`, {
          details: { id, state: row.state },
        });
      }
      if (!toBool(row.cancellable) && opts?.force !== true) {
        throw new OsrError('JOB_NOT_CANCELLABLE', `job '${id}' of type ${row.type} cannot be cancelled`, {
          details: { id, type: row.type },
        });
      }
      let next: JobsTable;
      if (row.state === 'NotStarted' || row.state === 'WaitingForAction') {
        // Nobody runs these jobs now, so they end at once; a worker cancels running ones at a step boundary.
        const steps = fromJsonRequired<JobStep[]>(row.steps).map((s) =>
          s.state === 'NotStarted' || s.state === 'InProgress'
            ? { ...s, state: 'Cancelled' as const, endedAt: at }
            : s,
        );
        next = {
          ...row,
          state: 'Cancelled',
          steps: toJsonRequired(steps),
          waiting: null,
          cancel_requested: 1,
          lease_owner: null,
          lease_expires_at: null,
          ended_at: at,
          updated_at: at,
        };
      } else {
        next = { ...row, cancel_requested: 1, updated_at: at };
      }
      const { id: _id, ...cols } = next;
      await tx.db.updateTable('jobs').set(cols).where('id', '=', id).execute();
      return toJob(next);
    });
  }

  async addComment(id: string, text: string, now: string): Promise<void> {
    const at = isoTime(now, 'now');
    await inTransaction(this.ctx, async (tx) => {
      const row = await lockJob(tx, id);
      const comments = [...fromJsonRequired<Comment[]>(row.comments), { at, text }];
      await tx.db
        .updateTable('jobs')
        .set({ comments: toJsonRequired(comments), updated_at: at })
        .where('id', '=', id)
        .execute();
    });
  }

  async reapExpired(now: string): Promise<string[]> {
    const at = isoTime(now, 'now');
    // One statement: on PostgreSQL a row a claimer holds is re-checked after its lock is released,
    // so a job just taken over is not reaped; on SQLite the statement is atomic.
    const rows = await this.ctx.db
      .updateTable('jobs')
      .set((eb) => ({
        lease_owner: null,
        lease_expires_at: null,
        attempts: eb('attempts', '+', 1),
        updated_at: at,
      }))
      .where('state', '=', 'InProgress')
      .where('lease_owner', 'is not', null)
      .where('lease_expires_at', '<', at)
      .returning('id')
      .execute();
    return rows.map((r) => r.id).sort();
  }

  async releaseHeldBy(owner: string, now: string): Promise<string[]> {
    const at = isoTime(now, 'now');
    const rows = await this.ctx.db
      .updateTable('jobs')
      .set((eb) => ({
        lease_owner: null,
        lease_expires_at: null,
        attempts: eb('attempts', '+', 1),
        updated_at: at,
      }))
      .where('state', '=', 'InProgress')
      .where('lease_owner', '=', owner)
      .returning('id')
      .execute();
    return rows.map((r) => r.id).sort();
  }

  private async fenced(
    id: string,
    owner: string,
    fn: (tx: StoreContext, row: JobsTable) => Promise<void>,
  ): Promise<void> {
    await inTransaction(this.ctx, async (tx) => {
      const row = await lockJob(tx, id);
      if (row.lease_owner !== owner) throw new LeaseLostError(id, owner);
      await fn(tx, row);
    });
  }

  private async leaseLost(id: string, owner: string): Promise<never> {
    const exists = await this.ctx.db.selectFrom('jobs').select('id').where('id', '=', id).executeTakeFirst();
    if (exists === undefined) throw notFound('job', id);
    throw new LeaseLostError(id, owner);
  }
}

/** Reads a job row inside a transaction, locking it where the dialect has row locks. */
async function lockJob(tx: StoreContext, id: string): Promise<JobsTable> {
  let q = tx.db.selectFrom('jobs').selectAll().where('id', '=', id);
  if (tx.dialect.rowLocks) q = q.forUpdate();
  const row = await q.executeTakeFirst();
  if (row === undefined) throw notFound('job', id);
  return row;
}
