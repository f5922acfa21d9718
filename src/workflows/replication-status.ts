/**
 * Agents' replication status reports (DESIGN §1: metadata only, R-INF-7): progress of
 * the initial copy, health, lag and the recovery points the replica now holds. Points
 * are recorded idempotently and pruned to the policy's retention (R-POL-2), always
 * keeping the newest one.
 */
import type { RecoveryPointType, ReplicationHealth } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import type { Store } from '../store/store.js';
import type { Clock } from '../jobs/types.js';

/** One item's status as an agent reports it. */
export interface ItemStatusReport {
  itemId: string;
  rpoSeconds?: number | null;
  lagSeconds?: number;
  lagBytes?: number;
  backlogBytes?: number;
  throughputBps?: number;
  compressionRatio?: number;
  health?: ReplicationHealth;
  healthReason?: string | null;
  initialReplicationProgress?: number;
  resyncRequired?: boolean;
  points?: { id?: string; sequence: number; time: string; type: RecoveryPointType }[];
}

export interface ReplicationStatusReport {
  items: ItemStatusReport[];
}

/** Telemetry of the last report per item, kept in memory (refreshed by every report). */
export interface ReplicationStats {
  lagSeconds: number | null;
  lagBytes: number | null;
  backlogBytes: number | null;
  throughputBps: number | null;
  compressionRatio: number | null;
  reportedAt: string;
}

/**
 * Applies a report from `agentId`. An agent may report only items whose source or
 * target is its own site (FORBIDDEN otherwise); unknown items are NOT_FOUND.
 */
export async function applyReplicationStatus(
  store: Store,
  clock: Clock,
  agentId: string,
  report: ReplicationStatusReport,
  stats?: Map<string, ReplicationStats>,
): Promise<void> {
  const agent = await store.agents.get(agentId);
  const now = clock.now();
  for (const r of report.items) {
    const item = await store.items.getById(r.itemId);
    if (
      item.vaultId !== agent.vaultId ||
      (agent.siteId !== item.sourceSiteId && agent.siteId !== item.targetSiteId)
    ) {
      throw new OsrError('FORBIDDEN', `agent ${agent.id} does not replicate item ${item.id}`, {
        details: { agentId: agent.id, itemId: item.id },
      });
    }
    for (const p of r.points ?? []) {
      await store.points.add({
        itemId: item.id,
        sequence: p.sequence,
        time: p.time,
        type: p.type,
        groupPointId: null,
      });
    }
    const policy = await store.policies.get(item.vaultId, item.policyId);
    const newest = (await store.points.list(item.id, { limit: 1 })).items[0];
    if (newest !== undefined) {
      const retentionStart = now.getTime() - policy.retentionHours * 3600_000;
      const cutoff = Math.min(retentionStart, Date.parse(newest.time));
      await store.points.pruneOlderThan(item.id, new Date(cutoff).toISOString());
    }
    const patch: Parameters<Store['items']['update']>[1] = {};
    if (r.initialReplicationProgress !== undefined) {
      patch.initialReplicationProgress = Math.max(0, Math.min(100, r.initialReplicationProgress));
    }
    if (r.resyncRequired !== undefined) patch.resyncRequired = r.resyncRequired;
    if (r.health !== undefined) patch.replicationHealth = r.health;
    if (r.healthReason !== undefined) patch.healthReason = r.healthReason;
    if (newest !== undefined)
      patch.rpoSeconds = Math.max(0, Math.round((now.getTime() - Date.parse(newest.time)) / 1000));
    else if (r.rpoSeconds !== undefined) patch.rpoSeconds = r.rpoSeconds;
    await store.items.update(item.id, patch);
    // The source agent reports lag and throughput, the recovery agent the backlog: a report keeps
    // what the other side last said about the fields it leaves out.
    const before = stats?.get(item.id);
    stats?.set(item.id, {
      lagSeconds: r.lagSeconds ?? before?.lagSeconds ?? null,
      lagBytes: r.lagBytes ?? before?.lagBytes ?? null,
      backlogBytes: r.backlogBytes ?? before?.backlogBytes ?? null,
      throughputBps: r.throughputBps ?? before?.throughputBps ?? null,
      compressionRatio: r.compressionRatio ?? before?.compressionRatio ?? null,
      reportedAt: now.toISOString(),
    });
  }
}
