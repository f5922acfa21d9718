/** Policy ↔ container associations [protection container mappings] (R-POL-8). */
import { notFound } from '../../domain/errors.js';
import type { PolicyAssociation } from '../../domain/model.js';
import type { New, PolicyAssociationRepository } from '../store.js';
import type { PolicyAssociationsTable } from '../schema.js';
import { guard, newId, nowIso, type StoreContext } from './context.js';

function toAssociation(r: PolicyAssociationsTable): PolicyAssociation {
  return {
    id: r.id,
    vaultId: r.vault_id,
    policyId: r.policy_id,
    sourceContainerId: r.source_container_id,
    targetContainerId: r.target_container_id,
    createdAt: r.created_at,
  };
}

/** `PolicyAssociationRepository` over Kysely. The same policy/source/target triple exists once. */
export class KyselyPolicyAssociationRepository implements PolicyAssociationRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(a: New<PolicyAssociation, 'createdAt'>): Promise<PolicyAssociation> {
    const row: PolicyAssociationsTable = {
      id: newId(a.id),
      vault_id: a.vaultId,
      policy_id: a.policyId,
      source_container_id: a.sourceContainerId,
      target_container_id: a.targetContainerId,
      created_at: nowIso(this.ctx),
    };
    await guard(this.ctx, { kind: 'policy association', key: row.id, op: 'write' }, () =>
      this.ctx.db.insertInto('policy_associations').values(row).execute(),
    );
    return toAssociation(row);
  }

  async find(id: string): Promise<PolicyAssociation | undefined> {
    const r = await this.ctx.db
      .selectFrom('policy_associations')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return r && toAssociation(r);
  }

  async list(
    vaultId: string,
    filter?: { policyId?: string; sourceContainerId?: string },
  ): Promise<PolicyAssociation[]> {
    let q = this.ctx.db.selectFrom('policy_associations').selectAll().where('vault_id', '=', vaultId);
    if (filter?.policyId !== undefined) q = q.where('policy_id', '=', filter.policyId);
    if (filter?.sourceContainerId !== undefined) {
      q = q.where('source_container_id', '=', filter.sourceContainerId);
    }
    const rows = await q.orderBy('created_at').orderBy('id').execute();
    return rows.map(toAssociation);
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('policy_associations').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('policy association', id);
  }
}
