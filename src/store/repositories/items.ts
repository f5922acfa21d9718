/**
 * Protected items [replication protected items]: unique name per vault, one per machine,
 * `version` bumped on every update for compare-and-set.
 */
import { notFound, OsrError } from '../../domain/errors.js';
import type {
  ActiveLocation,
  FailoverRecord,
  FailoverSettings,
  ProtectedItem,
  ProtectionState,
  ReplicationHealth,
  TestFailoverState,
} from '../../domain/model.js';
import type { ItemListFilter, New, Page, ProtectedItemRepository } from '../store.js';
import type { ProtectedItemsTable } from '../schema.js';
import {
  countOf,
  fromJson,
  fromJsonRequired,
  guard,
  inTransaction,
  newId,
  nowIso,
  paging,
  pickByIdOrName,
  toBool,
  toInt,
  toJson,
  toJsonRequired,
  type StoreContext,
} from './context.js';
import { stripUndefined } from './machines.js';

function toItem(r: ProtectedItemsTable): ProtectedItem {
  return {
    id: r.id,
    vaultId: r.vault_id,
    name: r.name,
    machineId: r.machine_id,
    policyId: r.policy_id,
    sourceSiteId: r.source_site_id,
    targetSiteId: r.target_site_id,
    sourceContainerId: r.source_container_id,
    targetContainerId: r.target_container_id,
    primarySiteId: r.primary_site_id,
    protectionState: r.protection_state as ProtectionState,
    testFailoverState: r.test_failover_state as TestFailoverState,
    activeLocation: r.active_location as ActiveLocation,
    reversed: toBool(r.reversed),
    replicationHealth: r.replication_health as ReplicationHealth,
    healthReason: r.health_reason,
    rpoSeconds: r.rpo_seconds,
    initialReplicationProgress: Number(r.initial_replication_progress),
    resyncRequired: toBool(r.resync_required),
    replicationGroupId: r.replication_group_id,
    failoverSettings: fromJsonRequired<FailoverSettings>(r.failover_settings),
    lastFailover: fromJson<FailoverRecord>(r.last_failover),
    currentJobId: r.current_job_id,
    version: r.version,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function toRow(i: ProtectedItem): ProtectedItemsTable {
  return {
    id: i.id,
    vault_id: i.vaultId,
    name: i.name,
    machine_id: i.machineId,
    failover_machine_id: i.lastFailover?.targetMachineId ?? null,
    policy_id: i.policyId,
    source_site_id: i.sourceSiteId,
    target_site_id: i.targetSiteId,
    source_container_id: i.sourceContainerId,
    target_container_id: i.targetContainerId,
    primary_site_id: i.primarySiteId,
    protection_state: i.protectionState,
    test_failover_state: i.testFailoverState,
    active_location: i.activeLocation,
    reversed: toInt(i.reversed),
    replication_health: i.replicationHealth,
    health_reason: i.healthReason,
    rpo_seconds: i.rpoSeconds,
    initial_replication_progress: i.initialReplicationProgress,
    resync_required: toInt(i.resyncRequired),
    replication_group_id: i.replicationGroupId,
    failover_settings: toJsonRequired(i.failoverSettings),
    last_failover: toJson(i.lastFailover),
    current_job_id: i.currentJobId,
    version: i.version,
    created_at: i.createdAt,
    updated_at: i.updatedAt,
  };
}

/** `ProtectedItemRepository` over Kysely. */
export class KyselyProtectedItemRepository implements ProtectedItemRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(i: New<ProtectedItem, 'createdAt' | 'updatedAt' | 'version'>): Promise<ProtectedItem> {
    const now = nowIso(this.ctx);
    const item: ProtectedItem = { ...i, id: newId(i.id), version: 1, createdAt: now, updatedAt: now };
    await guard(this.ctx, { kind: 'protected item', key: i.name, op: 'write' }, () =>
      this.ctx.db.insertInto('protected_items').values(toRow(item)).execute(),
    );
    return item;
  }

  async find(vaultId: string, idOrName: string): Promise<ProtectedItem | undefined> {
    const rows = await this.ctx.db
      .selectFrom('protected_items')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toItem(r);
  }

  async get(vaultId: string, idOrName: string): Promise<ProtectedItem> {
    const i = await this.find(vaultId, idOrName);
    if (i === undefined) throw notFound('protected item', idOrName);
    return i;
  }

  async getById(id: string, opts?: { forUpdate?: boolean }): Promise<ProtectedItem> {
    let q = this.ctx.db.selectFrom('protected_items').selectAll().where('id', '=', id);
    // SQLite has no row locks; its transactions hold the database write lock instead.
    if (opts?.forUpdate === true && this.ctx.dialect.rowLocks) q = q.forUpdate();
    const r = await q.executeTakeFirst();
    if (r === undefined) throw notFound('protected item', id);
    return toItem(r);
  }

  async findByMachine(machineId: string): Promise<ProtectedItem | undefined> {
    const rows = await this.ctx.db
      .selectFrom('protected_items')
      .selectAll()
      .where((eb) => eb.or([eb('machine_id', '=', machineId), eb('failover_machine_id', '=', machineId)]))
      .execute();
    const r = rows.find((x) => x.machine_id === machineId) ?? rows[0];
    return r && toItem(r);
  }

  async list(vaultId: string, filter?: ItemListFilter): Promise<Page<ProtectedItem>> {
    const { limit, offset } = paging(filter);
    let q = this.ctx.db.selectFrom('protected_items').where('vault_id', '=', vaultId);
    if (filter?.protectionState !== undefined) {
      const states = filter.protectionState;
      q = states.length === 0 ? q.where('id', 'is', null) : q.where('protection_state', 'in', states);
    }
    if (filter?.replicationHealth !== undefined)
      q = q.where('replication_health', '=', filter.replicationHealth);
    if (filter?.replicationGroupId !== undefined) {
      q = q.where('replication_group_id', '=', filter.replicationGroupId);
    }
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('name').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toItem), total: countOf(total) };
  }

  async update(
    id: string,
    patch: Partial<Omit<ProtectedItem, 'id' | 'vaultId' | 'createdAt' | 'updatedAt' | 'version'>>,
    opts?: { expectVersion?: number },
  ): Promise<ProtectedItem> {
    return inTransaction(this.ctx, async (tx) => {
      const current = await new KyselyProtectedItemRepository(tx).getById(id, { forUpdate: true });
      if (opts?.expectVersion !== undefined && opts.expectVersion !== current.version) {
        throw staleVersion(id, opts.expectVersion, current.version);
      }
      const next: ProtectedItem = {
        ...current,
        ...stripUndefined(patch),
        id,
        vaultId: current.vaultId,
        createdAt: current.createdAt,
        version: current.version + 1,
        updatedAt: nowIso(tx),
      };
      const r = await guard(tx, { kind: 'protected item', key: next.name, op: 'write' }, () =>
        tx.db
          .updateTable('protected_items')
          .set(toRow(next))
          .where('id', '=', id)
          .where('version', '=', current.version)
          .executeTakeFirst(),
      );
      // Only reachable without row locks if another writer slipped in; the version check still fences it.
      if (Number(r.numUpdatedRows) === 0) throw staleVersion(id, current.version, current.version + 1);
      return next;
    });
  }

  async delete(id: string): Promise<void> {
    const r = await guard(this.ctx, { kind: 'protected item', key: id, op: 'delete' }, () =>
      this.ctx.db.deleteFrom('protected_items').where('id', '=', id).executeTakeFirst(),
    );
    if (Number(r.numDeletedRows) === 0) throw notFound('protected item', id);
  }
}

function staleVersion(id: string, expected: number, actual: number): OsrError {
  return new OsrError(
    'OPERATION_NOT_ALLOWED',
    `protected item '${id}' changed since it was read (version ${actual}, expected ${expected})`,
    { details: { id, expectedVersion: expected, version: actual } },
  );
}
