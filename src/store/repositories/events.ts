/** Alerts and events (R-MON-1): newest first. */
import type { EventSeverity, OsrEvent } from '../../domain/model.js';
import type { EventRepository, ListOptions, Page } from '../store.js';
import type { EventsTable } from '../schema.js';
import { countOf, fromJson, guard, isoTime, newId, paging, toJson, type StoreContext } from './context.js';

function toEvent(r: EventsTable): OsrEvent {
  return {
    id: r.id,
    vaultId: r.vault_id,
    time: r.time,
    severity: r.severity as EventSeverity,
    kind: r.kind,
    targetId: r.target_id,
    message: r.message,
    details: fromJson<unknown>(r.details),
  };
}

/** `EventRepository` over Kysely. */
export class KyselyEventRepository implements EventRepository {
  constructor(private readonly ctx: StoreContext) {}

  async add(e: {
    vaultId: string;
    severity: EventSeverity;
    kind: string;
    targetId: string | null;
    message: string;
    details?: unknown;
    time: string;
  }): Promise<OsrEvent> {
    const row: EventsTable = {
      id: newId(undefined),
      vault_id: e.vaultId,
      time: isoTime(e.time),
      severity: e.severity,
      kind: e.kind,
      target_id: e.targetId,
      message: e.message,
      details: toJson(e.details),
    };
    await guard(this.ctx, { kind: 'event', key: row.id, op: 'write' }, () =>
      this.ctx.db.insertInto('events').values(row).execute(),
    );
    return toEvent(row);
  }

  async list(
    vaultId: string,
    opts?: ListOptions & { since?: string; severity?: EventSeverity },
  ): Promise<Page<OsrEvent>> {
    const { limit, offset } = paging(opts);
    let q = this.ctx.db.selectFrom('events').where('vault_id', '=', vaultId);
    if (opts?.since !== undefined) q = q.where('time', '>=', isoTime(opts.since, 'since'));
    if (opts?.severity !== undefined) q = q.where('severity', '=', opts.severity);
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('time', 'desc').orderBy('id', 'desc').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toEvent), total: countOf(total) };
  }
}
