/** Recovery plans (R-PLAN-1): unique name per vault; groups stored as JSON. */
import { notFound } from '../../domain/errors.js';
import type { PlanGroup, RecoveryPlan } from '../../domain/model.js';
import type { ListOptions, New, Page, RecoveryPlanRepository } from '../store.js';
import type { RecoveryPlansTable } from '../schema.js';
import {
  countOf,
  fromJsonRequired,
  guard,
  newId,
  nowIso,
  paging,
  pickByIdOrName,
  toJsonRequired,
  type StoreContext,
} from './context.js';

function toPlan(r: RecoveryPlansTable): RecoveryPlan {
  return {
    id: r.id,
    vaultId: r.vault_id,
    name: r.name,
    groups: fromJsonRequired<PlanGroup[]>(r.groups),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

/** `RecoveryPlanRepository` over Kysely. */
export class KyselyRecoveryPlanRepository implements RecoveryPlanRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(p: New<RecoveryPlan, 'createdAt' | 'updatedAt'>): Promise<RecoveryPlan> {
    const now = nowIso(this.ctx);
    const row: RecoveryPlansTable = {
      id: newId(p.id),
      vault_id: p.vaultId,
      name: p.name,
      groups: toJsonRequired(p.groups),
      created_at: now,
      updated_at: now,
    };
    await guard(this.ctx, { kind: 'recovery plan', key: p.name, op: 'write' }, () =>
      this.ctx.db.insertInto('recovery_plans').values(row).execute(),
    );
    return toPlan(row);
  }

  async find(vaultId: string, idOrName: string): Promise<RecoveryPlan | undefined> {
    const rows = await this.ctx.db
      .selectFrom('recovery_plans')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toPlan(r);
  }

  async get(vaultId: string, idOrName: string): Promise<RecoveryPlan> {
    const p = await this.find(vaultId, idOrName);
    if (p === undefined) throw notFound('recovery plan', idOrName);
    return p;
  }

  async list(vaultId: string, opts?: ListOptions): Promise<Page<RecoveryPlan>> {
    const { limit, offset } = paging(opts);
    const q = this.ctx.db.selectFrom('recovery_plans').where('vault_id', '=', vaultId);
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('name').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toPlan), total: countOf(total) };
  }

  async update(id: string, patch: Partial<Pick<RecoveryPlan, 'name' | 'groups'>>): Promise<RecoveryPlan> {
    const set: Partial<RecoveryPlansTable> = { updated_at: nowIso(this.ctx) };
    if (patch.name !== undefined) set.name = patch.name;
    if (patch.groups !== undefined) set.groups = toJsonRequired(patch.groups);
    const r = await guard(this.ctx, { kind: 'recovery plan', key: patch.name ?? id, op: 'write' }, () =>
      this.ctx.db
        .updateTable('recovery_plans')
        .set(set)
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirst(),
    );
    if (r === undefined) throw notFound('recovery plan', id);
    return toPlan(r);
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('recovery_plans').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('recovery plan', id);
  }
}
