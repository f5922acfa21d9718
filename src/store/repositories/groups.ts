/** Replication groups (R-PLAN-4): unique name per vault; deleting one ungroups its items. */
import { notFound } from '../../domain/errors.js';
import type { ReplicationGroup } from '../../domain/model.js';
import type { New, ReplicationGroupRepository } from '../store.js';
import type { ReplicationGroupsTable } from '../schema.js';
import { guard, newId, nowIso, pickByIdOrName, type StoreContext } from './context.js';

function toGroup(r: ReplicationGroupsTable): ReplicationGroup {
  return { id: r.id, vaultId: r.vault_id, name: r.name, createdAt: r.created_at };
}

/** `ReplicationGroupRepository` over Kysely. */
export class KyselyReplicationGroupRepository implements ReplicationGroupRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(g: New<ReplicationGroup, 'createdAt'>): Promise<ReplicationGroup> {
    const row: ReplicationGroupsTable = {
      id: newId(g.id),
      vault_id: g.vaultId,
      name: g.name,
      created_at: nowIso(this.ctx),
    };
    await guard(this.ctx, { kind: 'replication group', key: g.name, op: 'write' }, () =>
      this.ctx.db.insertInto('replication_groups').values(row).execute(),
    );
    return toGroup(row);
  }

  async find(vaultId: string, idOrName: string): Promise<ReplicationGroup | undefined> {
    const rows = await this.ctx.db
      .selectFrom('replication_groups')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toGroup(r);
  }

  async list(vaultId: string): Promise<ReplicationGroup[]> {
    const rows = await this.ctx.db
      .selectFrom('replication_groups')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .orderBy('name')
      .execute();
    return rows.map(toGroup);
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('replication_groups').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('replication group', id);
  }
}
