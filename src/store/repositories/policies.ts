/** Replication policies (R-POL-*): unique name per vault. A policy in use cannot be deleted. */
import { notFound } from '../../domain/errors.js';
import type {
  BandwidthPolicy,
  CopyFrequencySeconds,
  InitialReplication,
  Policy,
  ReplicationAuthentication,
} from '../../domain/model.js';
import type { ListOptions, New, Page, PolicyRepository } from '../store.js';
import type { PoliciesTable } from '../schema.js';
import {
  countOf,
  fromJsonRequired,
  guard,
  inTransaction,
  newId,
  nowIso,
  paging,
  pickByIdOrName,
  toBool,
  toInt,
  toJsonRequired,
  type StoreContext,
} from './context.js';
import { stripUndefined } from './machines.js';

function toPolicy(r: PoliciesTable): Policy {
  return {
    id: r.id,
    vaultId: r.vault_id,
    name: r.name,
    copyFrequencySeconds: r.copy_frequency_seconds as CopyFrequencySeconds,
    retentionHours: r.retention_hours,
    appConsistentFrequencyHours: r.app_consistent_frequency_hours,
    compression: toBool(r.compression),
    deleteReplicaOnDisable: toBool(r.delete_replica_on_disable),
    initialReplication: fromJsonRequired<InitialReplication>(r.initial_replication),
    authentication: r.authentication as ReplicationAuthentication,
    replicationPort: r.replication_port,
    bandwidth: fromJsonRequired<BandwidthPolicy>(r.bandwidth),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function toRow(p: Policy): PoliciesTable {
  return {
    id: p.id,
    vault_id: p.vaultId,
    name: p.name,
    copy_frequency_seconds: p.copyFrequencySeconds,
    retention_hours: p.retentionHours,
    app_consistent_frequency_hours: p.appConsistentFrequencyHours,
    compression: toInt(p.compression),
    delete_replica_on_disable: toInt(p.deleteReplicaOnDisable),
    initial_replication: toJsonRequired(p.initialReplication),
    authentication: p.authentication,
    replication_port: p.replicationPort,
    bandwidth: toJsonRequired(p.bandwidth),
    created_at: p.createdAt,
    updated_at: p.updatedAt,
  };
}

/** `PolicyRepository` over Kysely. */
export class KyselyPolicyRepository implements PolicyRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(p: New<Policy, 'createdAt' | 'updatedAt'>): Promise<Policy> {
    const now = nowIso(this.ctx);
    const policy: Policy = { ...p, id: newId(p.id), createdAt: now, updatedAt: now };
    await guard(this.ctx, { kind: 'policy', key: p.name, op: 'write' }, () =>
      this.ctx.db.insertInto('policies').values(toRow(policy)).execute(),
    );
    return policy;
  }

  async find(vaultId: string, idOrName: string): Promise<Policy | undefined> {
    const rows = await this.ctx.db
      .selectFrom('policies')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toPolicy(r);
  }

  async get(vaultId: string, idOrName: string): Promise<Policy> {
    const p = await this.find(vaultId, idOrName);
    if (p === undefined) throw notFound('policy', idOrName);
    return p;
  }

  async list(vaultId: string, opts?: ListOptions): Promise<Page<Policy>> {
    const { limit, offset } = paging(opts);
    const q = this.ctx.db.selectFrom('policies').where('vault_id', '=', vaultId);
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('name').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toPolicy), total: countOf(total) };
  }

  async update(
    id: string,
    patch: Partial<Omit<Policy, 'id' | 'vaultId' | 'createdAt' | 'updatedAt'>>,
  ): Promise<Policy> {
    return inTransaction(this.ctx, async (tx) => {
      const r = await tx.db.selectFrom('policies').selectAll().where('id', '=', id).executeTakeFirst();
      if (r === undefined) throw notFound('policy', id);
      const current = toPolicy(r);
      const next: Policy = {
        ...current,
        ...stripUndefined(patch),
        id,
        vaultId: current.vaultId,
        createdAt: current.createdAt,
        updatedAt: nowIso(tx),
      };
      await guard(tx, { kind: 'policy', key: next.name, op: 'write' }, () =>
        tx.db.updateTable('policies').set(toRow(next)).where('id', '=', id).execute(),
      );
      return next;
    });
  }

  async delete(id: string): Promise<void> {
    const r = await guard(this.ctx, { kind: 'policy', key: id, op: 'delete' }, () =>
      this.ctx.db.deleteFrom('policies').where('id', '=', id).executeTakeFirst(),
    );
    if (Number(r.numDeletedRows) === 0) throw notFound('policy', id);
  }
}
