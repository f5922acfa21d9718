/**
 * Replication status for the control plane (issue 4 item 7): one report per item combining what the source side
 * knows (the sender's lag, backlog, throughput, compression; the journal's resync state) with what the recovery
 * side knows (points, RPO, processor state), in the shape agents report (`ItemStatusReport` in
 * `src/workflows/replication-status.ts`), judged by the domain's `replicationHealth`.
 */
import { replicationHealth } from '../domain/health.js';
import type { MarkerType } from './changes.js';
import type { JournalStatus } from './journal/journal.js';
import type { ReplicaStatus, RecoveryPointInfo } from './replica/replica-store.js';
import type { SenderStatus } from './transport/sender.js';

/** One recovery point as reported (ISO time, the stream seq as `sequence`). */
export interface ReportedPoint {
  readonly id: string;
  readonly sequence: number;
  readonly time: string;
  readonly type: MarkerType;
}

/** An item's replication status, ready for the agent's status report. */
export interface ReplicationStatusReport {
  /** Age of the oldest change not yet acknowledged by the recovery site (0 when level). */
  readonly lagSeconds: number;
  /** Journal bytes not yet acknowledged. */
  readonly lagBytes: number;
  /** Bytes the recovery site received but has not processed yet (pending), plus dirty bytes awaiting resync. */
  readonly backlogBytes: number;
  /** Wire bytes per second over the last few seconds. */
  readonly throughputBps: number;
  /** Raw bytes per wire byte (zero runs and brotli). */
  readonly compressionRatio: number;
  /** Age of the newest processed recovery point in seconds, null before the first (R-REP-6). */
  readonly rpoSeconds: number | null;
  readonly resyncRequired: boolean;
  /** The newest points (at most `maxPoints`, oldest first), processed ones only. */
  readonly points: readonly ReportedPoint[];
  readonly latestPoint: ReportedPoint | null;
  readonly latestAppConsistentPoint: ReportedPoint | null;
  readonly health: 'Normal' | 'Warning' | 'Critical';
  /** Why the health is not Normal (null when Normal). */
  readonly healthReason: string | null;
}

/** What `replicationStatus` combines; the two sides may live in different agents, so both are optional. */
export interface ReplicationStatusInput {
  readonly sender?: SenderStatus;
  readonly journal?: JournalStatus;
  readonly replica?: ReplicaStatus;
  /** The replica's processed points (`ReplicaStore.points()`); pending ones are ignored. */
  readonly points?: readonly RecoveryPointInfo[];
  /** The policy's copy frequency (R-POL-1), which scales the RPO thresholds. */
  readonly copyFrequencySeconds: number;
  /** Milliseconds since the epoch. Default `Date.now()`. */
  readonly now?: number;
  /** Points reported at most. Default 20. */
  readonly maxPoints?: number;
}

function reported(p: RecoveryPointInfo): ReportedPoint {
  return { id: p.id, sequence: p.seq, time: new Date(p.time).toISOString(), type: p.type };
}

/**
 * Combines sender, journal and replica figures into one report. Health is the domain's verdict (resync required
 * → Critical; RPO beyond 2×/6× the copy frequency → Warning/Critical), made worse — never better — by the
 * replica's own finding (e.g. its processor stopped) and by a sender that cannot stream.
 */
export function replicationStatus(input: ReplicationStatusInput): ReplicationStatusReport {
  const now = input.now ?? Date.now();
  const s = input.sender;
  const r = input.replica;
  const processed = (input.points ?? []).filter((p) => !p.pending);
  const newest = r?.newestPoint ?? processed.at(-1);
  const app =
    r?.newestAppConsistentPoint ?? [...processed].reverse().find((p) => p.type === 'app-consistent');
  const rpoSeconds = newest ? Math.max(0, (now - newest.time) / 1000) : null;
  const resyncRequired = (input.journal?.resyncRequired ?? false) || s?.state === 'resync-required';
  const verdict = replicationHealth({
    rpoSeconds,
    copyFrequencySeconds: input.copyFrequencySeconds,
    resyncRequired,
    lastStatusAt: null,
    now: new Date(now),
    agentConnected: true,
  });
  const rank = { Normal: 0, Warning: 1, Critical: 2 } as const;
  let health = verdict.health;
  const reasons = verdict.reason ? [verdict.reason] : [];
  const worsen = (h: 'Warning' | 'Critical', why: string): void => {
    if (rank[h] > rank[health]) {
      health = h;
      reasons.length = 0;
    }
    if (rank[h] === rank[health]) reasons.push(why);
  };
  if (r && r.health === 'Critical') worsen('Critical', r.healthReason);
  if (s && (s.state === 'backoff' || s.state === 'connecting') && s.lagSeq > 0) {
    worsen('Warning', `the replication link is down${s.lastError ? ` (${s.lastError})` : ''}`);
  }
  const max = input.maxPoints ?? 20;
  return {
    lagSeconds: s?.lagSeconds ?? 0,
    lagBytes: s?.lagBytes ?? 0,
    backlogBytes: (r?.pendingBytes ?? 0) + (input.journal?.dirtyBytes ?? 0),
    throughputBps: s?.throughputBytesPerSec ?? 0,
    compressionRatio: s?.compressionRatio ?? 1,
    rpoSeconds,
    resyncRequired,
    points: processed.slice(-max).map(reported),
    latestPoint: newest ? reported(newest) : null,
    latestAppConsistentPoint: app ? reported(app) : null,
    health,
    healthReason: health === 'Normal' ? null : reasons.join('; '),
  };
}
