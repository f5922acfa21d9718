// Temporary in-memory JobRepository used while the real store is being written.
import { randomUUID } from 'node:crypto';
import type { Job, JobError, JobStep, JobWaiting } from '../../src/domain/model.js';
import { OsrError, notFound } from '../../src/domain/errors.js';
import type { JobListFilter, JobRepository, NewJob, Page, Store } from '../../src/store/store.js';
import { LeaseLostError } from '../../src/store/store.js';

interface Row {
  job: Job;
  owner: string | null;
  expiresAt: string | null;
}

export class MemoryJobs implements JobRepository {
  readonly rows = new Map<string, Row>();

  create(j: NewJob, now: string): Promise<Job> {
    const job: Job = {
      id: j.id ?? randomUUID(),
      vaultId: j.vaultId,
      type: j.type,
      displayName: j.displayName,
      targetKind: j.targetKind,
      targetId: j.targetId,
      targetName: j.targetName,
      state: 'NotStarted',
      input: j.input,
      steps: j.stepNames.map((name, index) => ({
        index,
        name,
        state: 'NotStarted',
        startedAt: null,
        endedAt: null,
        progress: null,
        error: null,
        output: null,
      })),
      error: null,
      waiting: null,
      comments: [],
      cancellable: j.cancellable,
      cancelRequested: false,
      attempts: 0,
      createdAt: now,
      startedAt: null,
      endedAt: null,
      updatedAt: now,
    };
    this.rows.set(job.id, { job, owner: null, expiresAt: null });
    return Promise.resolve(structuredClone(job));
  }
  find(id: string): Promise<Job | undefined> {
    const r = this.rows.get(id);
    return Promise.resolve(r ? structuredClone(r.job) : undefined);
  }
  async get(id: string): Promise<Job> {
    const j = await this.find(id);
    if (!j) throw notFound('job', id);
    return j;
  }
  list(_filter?: JobListFilter): Promise<Page<Job>> {
    const items = [...this.rows.values()].map((r) => structuredClone(r.job));
    return Promise.resolve({ items, total: items.length });
  }
  claim(owner: string, leaseMs: number, now: string, types?: string[]): Promise<Job | undefined> {
    for (const r of this.rows.values()) {
      if (types && !types.includes(r.job.type)) continue;
      const expired = r.job.state === 'InProgress' && (r.expiresAt === null || r.expiresAt < now);
      if (r.job.state === 'NotStarted' || expired) {
        if (expired && r.owner !== null) r.job.attempts++;
        if (r.job.state === 'NotStarted') r.job.attempts++;
        r.owner = owner;
        r.expiresAt = new Date(Date.parse(now) + leaseMs).toISOString();
        r.job.state = 'InProgress';
        r.job.startedAt ??= now;
        return Promise.resolve(structuredClone(r.job));
      }
    }
    return Promise.resolve(undefined);
  }
  private held(id: string, owner: string): Row {
    const r = this.rows.get(id);
    if (!r || r.owner !== owner) throw new LeaseLostError(id, owner);
    return r;
  }
  renewLease(id: string, owner: string, leaseMs: number, now: string): Promise<void> {
    const r = this.held(id, owner);
    r.expiresAt = new Date(Date.parse(now) + leaseMs).toISOString();
    return Promise.resolve();
  }
  releaseLease(id: string, owner: string): Promise<void> {
    const r = this.held(id, owner);
    r.owner = null;
    r.expiresAt = null;
    return Promise.resolve();
  }
  updateStep(
    id: string,
    owner: string,
    index: number,
    patch: Partial<Omit<JobStep, 'index' | 'name'>>,
    now: string,
  ): Promise<void> {
    const r = this.held(id, owner);
    r.job.steps = r.job.steps.map((s) => (s.index === index ? { ...s, ...structuredClone(patch) } : s));
    r.job.updatedAt = now;
    return Promise.resolve();
  }
  appendSteps(): Promise<void> {
    return Promise.reject(new Error('not implemented'));
  }
  finish(
    id: string,
    owner: string,
    state: 'Succeeded' | 'Failed' | 'Cancelled',
    error: JobError | null,
    now: string,
  ): Promise<void> {
    const r = this.held(id, owner);
    Object.assign(r.job, { state, error, endedAt: now, updatedAt: now, waiting: null });
    r.owner = null;
    r.expiresAt = null;
    return Promise.resolve();
  }
  park(id: string, owner: string, waiting: Omit<JobWaiting, 'since'>, now: string): Promise<void> {
    const r = this.held(id, owner);
    Object.assign(r.job, { state: 'WaitingForAction', waiting: { ...waiting, since: now }, updatedAt: now });
    r.owner = null;
    r.expiresAt = null;
    return Promise.resolve();
  }
  resume(id: string, comment: string, now: string): Promise<Job> {
    const r = this.rows.get(id);
    if (!r) throw notFound('job', id);
    if (r.job.state !== 'WaitingForAction') throw new OsrError('JOB_NOT_WAITING', 'not waiting');
    r.job.state = 'InProgress';
    r.job.waiting = null;
    r.job.comments.push({ at: now, text: comment });
    return Promise.resolve(structuredClone(r.job));
  }
  requestCancel(id: string, now: string): Promise<Job> {
    const r = this.rows.get(id);
    if (!r) throw notFound('job', id);
    r.job.cancelRequested = true;
    if (r.job.state === 'NotStarted' || r.job.state === 'WaitingForAction') {
      Object.assign(r.job, { state: 'Cancelled', endedAt: now, waiting: null });
      r.owner = null;
    }
    return Promise.resolve(structuredClone(r.job));
  }
  addComment(id: string, text: string, now: string): Promise<void> {
    this.rows.get(id)?.job.comments.push({ at: now, text });
    return Promise.resolve();
  }
  reapExpired(now: string): Promise<string[]> {
    const ids: string[] = [];
    for (const r of this.rows.values()) {
      if (r.job.state === 'InProgress' && r.owner !== null && r.expiresAt !== null && r.expiresAt < now) {
        r.owner = null;
        r.expiresAt = null;
        ids.push(r.job.id);
      }
    }
    return Promise.resolve(ids);
  }
}

export function memoryStore(): Pick<Store, 'jobs'> & { close(): Promise<void> } {
  return { jobs: new MemoryJobs(), close: () => Promise.resolve() };
}
