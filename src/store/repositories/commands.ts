/**
 * Agent commands: enqueued idempotently by id, delivered (and redelivered until
 * completed) oldest first, completed once.
 */
import { notFound } from '../../domain/errors.js';
import type { AgentCommand, AgentCommandState, JobError } from '../../domain/model.js';
import type { AgentCommandRepository, ListOptions, Page } from '../store.js';
import type { AgentCommandsTable } from '../schema.js';
import {
  countOf,
  fromJson,
  guard,
  inTransaction,
  isoTime,
  newId,
  paging,
  toJson,
  type StoreContext,
} from './context.js';

function toCommand(r: AgentCommandsTable): AgentCommand {
  return {
    id: r.id,
    agentId: r.agent_id,
    type: r.type,
    payload: fromJson<unknown>(r.payload),
    state: r.state as AgentCommandState,
    result: fromJson<unknown>(r.result),
    error: fromJson<JobError>(r.error),
    createdAt: r.created_at,
    deliveredAt: r.delivered_at,
    completedAt: r.completed_at,
  };
}

/** `AgentCommandRepository` over Kysely. */
export class KyselyAgentCommandRepository implements AgentCommandRepository {
  constructor(private readonly ctx: StoreContext) {}

  async enqueue(
    c: { id?: string; agentId: string; type: string; payload: unknown },
    now: string,
  ): Promise<AgentCommand> {
    const row: AgentCommandsTable = {
      id: newId(c.id),
      agent_id: c.agentId,
      type: c.type,
      payload: toJson(c.payload),
      state: 'Pending',
      result: null,
      error: null,
      created_at: isoTime(now, 'now'),
      delivered_at: null,
      completed_at: null,
    };
    await guard(this.ctx, { kind: 'agent command', key: row.id, op: 'write' }, () =>
      this.ctx.db
        .insertInto('agent_commands')
        .values(row)
        .onConflict((oc) => oc.column('id').doNothing())
        .execute(),
    );
    return this.getStored(row.id);
  }

  async find(id: string): Promise<AgentCommand | undefined> {
    const r = await this.ctx.db
      .selectFrom('agent_commands')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return r && toCommand(r);
  }

  async takeForAgent(agentId: string, now: string, limit = 100): Promise<AgentCommand[]> {
    const at = isoTime(now, 'now');
    return inTransaction(this.ctx, async (tx) => {
      const rows = await tx.db
        .selectFrom('agent_commands')
        .selectAll()
        .where('agent_id', '=', agentId)
        .where('state', 'in', ['Pending', 'Delivered'])
        .orderBy('created_at')
        .orderBy('id')
        .limit(Math.max(0, Math.trunc(limit)))
        .execute();
      if (rows.length === 0) return [];
      await tx.db
        .updateTable('agent_commands')
        .set({ state: 'Delivered', delivered_at: at })
        .where(
          'id',
          'in',
          rows.map((r) => r.id),
        )
        .where('state', 'in', ['Pending', 'Delivered'])
        .execute();
      return rows.map((r) => toCommand({ ...r, state: 'Delivered', delivered_at: at }));
    });
  }

  async complete(
    id: string,
    state: Extract<AgentCommandState, 'Succeeded' | 'Failed'>,
    result: unknown,
    error: JobError | null,
    now: string,
  ): Promise<AgentCommand> {
    await this.ctx.db
      .updateTable('agent_commands')
      .set({ state, result: toJson(result), error: toJson(error), completed_at: isoTime(now, 'now') })
      .where('id', '=', id)
      .where('state', 'in', ['Pending', 'Delivered'])
      .execute();
    return this.getStored(id);
  }

  async list(
    agentId: string,
    opts?: ListOptions & { state?: AgentCommandState[] },
  ): Promise<Page<AgentCommand>> {
    const { limit, offset } = paging(opts);
    let q = this.ctx.db.selectFrom('agent_commands').where('agent_id', '=', agentId);
    if (opts?.state !== undefined) {
      q = opts.state.length === 0 ? q.where('id', 'is', null) : q.where('state', 'in', opts.state);
    }
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('created_at').orderBy('id').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toCommand), total: countOf(total) };
  }

  private async getStored(id: string): Promise<AgentCommand> {
    const c = await this.find(id);
    if (c === undefined) throw notFound('agent command', id);
    return c;
  }
}
