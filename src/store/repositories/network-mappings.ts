/** Network mappings (R-NET-1): one per source network; removed with their networks. */
import { notFound } from '../../domain/errors.js';
import type { NetworkMapping } from '../../domain/model.js';
import type { New, NetworkMappingRepository } from '../store.js';
import type { NetworkMappingsTable } from '../schema.js';
import { guard, newId, nowIso, type StoreContext } from './context.js';

function toMapping(r: NetworkMappingsTable): NetworkMapping {
  return {
    id: r.id,
    vaultId: r.vault_id,
    sourceNetworkId: r.source_network_id,
    targetNetworkId: r.target_network_id,
    createdAt: r.created_at,
  };
}

/** `NetworkMappingRepository` over Kysely. */
export class KyselyNetworkMappingRepository implements NetworkMappingRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(m: New<NetworkMapping, 'createdAt'>): Promise<NetworkMapping> {
    const row: NetworkMappingsTable = {
      id: newId(m.id),
      vault_id: m.vaultId,
      source_network_id: m.sourceNetworkId,
      target_network_id: m.targetNetworkId,
      created_at: nowIso(this.ctx),
    };
    await guard(this.ctx, { kind: 'network mapping', key: m.sourceNetworkId, op: 'write' }, () =>
      this.ctx.db.insertInto('network_mappings').values(row).execute(),
    );
    return toMapping(row);
  }

  async find(id: string): Promise<NetworkMapping | undefined> {
    const r = await this.ctx.db
      .selectFrom('network_mappings')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return r && toMapping(r);
  }

  async findBySource(sourceNetworkId: string): Promise<NetworkMapping | undefined> {
    const r = await this.ctx.db
      .selectFrom('network_mappings')
      .selectAll()
      .where('source_network_id', '=', sourceNetworkId)
      .executeTakeFirst();
    return r && toMapping(r);
  }

  async list(vaultId: string): Promise<NetworkMapping[]> {
    const rows = await this.ctx.db
      .selectFrom('network_mappings')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toMapping);
  }

  async update(id: string, patch: { targetNetworkId: string }): Promise<NetworkMapping> {
    const r = await guard(this.ctx, { kind: 'network mapping', key: id, op: 'write' }, () =>
      this.ctx.db
        .updateTable('network_mappings')
        .set({ target_network_id: patch.targetNetworkId })
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirst(),
    );
    if (r === undefined) throw notFound('network mapping', id);
    return toMapping(r);
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('network_mappings').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('network mapping', id);
  }
}
