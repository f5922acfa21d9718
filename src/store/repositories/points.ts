/** Recovery points (R-REP-3): idempotent by (item, sequence, type); newest first. */
import type { RecoveryPoint, RecoveryPointType } from '../../domain/model.js';
import type { ListOptions, New, Page, RecoveryPointRepository } from '../store.js';
import type { Insertable, Selectable } from 'kysely';
import type { RecoveryPointsTable } from '../schema.js';
import { notFound } from '../../domain/errors.js';
import { countOf, guard, isoTime, newId, paging, type StoreContext } from './context.js';

function toPoint(r: Selectable<RecoveryPointsTable>): RecoveryPoint {
  return {
    id: r.id,
    itemId: r.item_id,
    time: r.time,
    type: r.type as RecoveryPointType,
    sequence: Number(r.sequence),
    groupPointId: r.group_point_id,
  };
}

/** `RecoveryPointRepository` over Kysely. */
export class KyselyRecoveryPointRepository implements RecoveryPointRepository {
  constructor(private readonly ctx: StoreContext) {}

  async add(p: New<RecoveryPoint>): Promise<RecoveryPoint> {
    const row: Insertable<RecoveryPointsTable> = {
      id: newId(p.id),
      item_id: p.itemId,
      time: isoTime(p.time),
      type: p.type,
      sequence: p.sequence,
      group_point_id: p.groupPointId,
    };
    await guard(this.ctx, { kind: 'recovery point', key: row.id, op: 'write' }, () =>
      this.ctx.db
        .insertInto('recovery_points')
        .values(row)
        .onConflict((oc) => oc.columns(['item_id', 'sequence', 'type']).doNothing())
        .execute(),
    );
    const stored = await this.ctx.db
      .selectFrom('recovery_points')
      .selectAll()
      .where('item_id', '=', p.itemId)
      .where('sequence', '=', p.sequence)
      .where('type', '=', p.type)
      .executeTakeFirst();
    if (stored === undefined) throw notFound('recovery point', row.id);
    return toPoint(stored);
  }

  async find(id: string): Promise<RecoveryPoint | undefined> {
    const r = await this.ctx.db
      .selectFrom('recovery_points')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return r && toPoint(r);
  }

  async list(
    itemId: string,
    opts?: ListOptions & { type?: RecoveryPoint['type'] },
  ): Promise<Page<RecoveryPoint>> {
    const { limit, offset } = paging(opts);
    let q = this.ctx.db.selectFrom('recovery_points').where('item_id', '=', itemId);
    if (opts?.type !== undefined) q = q.where('type', '=', opts.type);
    const [rows, total] = await Promise.all([
      q
        .selectAll()
        .orderBy('time', 'desc')
        .orderBy('sequence', 'desc')
        .orderBy('id', 'desc')
        .limit(limit)
        .offset(offset)
        .execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toPoint), total: countOf(total) };
  }

  async pruneOlderThan(itemId: string, before: string): Promise<number> {
    const r = await this.ctx.db
      .deleteFrom('recovery_points')
      .where('item_id', '=', itemId)
      .where('time', '<', isoTime(before, 'before'))
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  }

  async deleteAllExcept(itemId: string, keepId: string | null): Promise<number> {
    let q = this.ctx.db.deleteFrom('recovery_points').where('item_id', '=', itemId);
    if (keepId !== null) q = q.where('id', '!=', keepId);
    const r = await q.executeTakeFirst();
    return Number(r.numDeletedRows);
  }
}
