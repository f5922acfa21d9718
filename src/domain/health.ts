/**
 * Replication health of a protected item (R-REP-6, R-MON-1): Normal, Warning or
 * Critical, with the reason an operator reads. The worst finding wins; findings of
 * equal severity are all named. Thresholds are the documented constants below.
 */
import type { ReplicationHealth } from './model.js';

/** RPO above this many copy-frequency periods is a Warning. */
export const RPO_WARNING_FACTOR = 2;
/** RPO above this many copy-frequency periods is Critical. */
export const RPO_CRITICAL_FACTOR = 6;
/** No replication status for longer than this (or 2 copy-frequency periods, whichever is longer) is a Warning. */
export const STATUS_WARNING_SECONDS = 5 * 60;
/** No replication status for longer than this (or 6 copy-frequency periods, whichever is longer) is Critical. */
export const STATUS_CRITICAL_SECONDS = 30 * 60;

/** What {@link replicationHealth} judges from. */
export interface HealthInput {
  /** Seconds since the newest recovery point; null before the first one. */
  rpoSeconds: number | null;
  copyFrequencySeconds: number;
  resyncRequired: boolean;
  /** When the agent last reported replication status for the item; null = never yet. */
  lastStatusAt: string | Date | null;
  now: Date;
  /** Whether the agent that reports the item's replication is connected. */
  agentConnected: boolean;
  /**
   * What the agents last reported for the item (e.g. the stream refused, the replication port taken). A finding
   * only when it names a reason: the worse of it and the figures wins.
   */
  reported?: HealthVerdict;
}

/** The verdict: health and why (null when Normal with nothing to say). */
export interface HealthVerdict {
  health: ReplicationHealth;
  reason: string | null;
}

const RANK: Record<ReplicationHealth, number> = { Normal: 0, Warning: 1, Critical: 2 };

function duration(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 2 * 3600) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 360) / 10} h`;
}

/**
 * Judges replication health: Critical when a resync is required, the RPO exceeds
 * {@link RPO_CRITICAL_FACTOR}× the copy frequency, or no status arrived for the
 * critical time; Warning when the RPO exceeds {@link RPO_WARNING_FACTOR}× the copy
 * frequency, no status arrived for the warning time, or the agent is disconnected;
 * as bad as the agents' own report (`reported`) when it is worse; otherwise Normal. An item with no recovery point and no status yet (just enabled)
 * is Normal.
 */
export function replicationHealth(input: HealthInput): HealthVerdict {
  const findings: { health: ReplicationHealth; reason: string }[] = [];
  const freq = input.copyFrequencySeconds;

  if (input.resyncRequired) findings.push({ health: 'Critical', reason: 'resync required' });

  if (input.rpoSeconds !== null) {
    const rpo = input.rpoSeconds;
    if (rpo > RPO_CRITICAL_FACTOR * freq) {
      findings.push({
        health: 'Critical',
        reason: `RPO ${duration(rpo)} exceeds ${RPO_CRITICAL_FACTOR}× the copy frequency of ${duration(freq)}`,
      });
    } else if (rpo > RPO_WARNING_FACTOR * freq) {
      findings.push({
        health: 'Warning',
        reason: `RPO ${duration(rpo)} exceeds ${RPO_WARNING_FACTOR}× the copy frequency of ${duration(freq)}`,
      });
    }
  }

  if (input.lastStatusAt !== null) {
    const at =
      typeof input.lastStatusAt === 'string' ? Date.parse(input.lastStatusAt) : input.lastStatusAt.getTime();
    const silent = (input.now.getTime() - at) / 1000;
    if (silent > Math.max(STATUS_CRITICAL_SECONDS, RPO_CRITICAL_FACTOR * freq)) {
      findings.push({ health: 'Critical', reason: `no replication status for ${duration(silent)}` });
    } else if (silent > Math.max(STATUS_WARNING_SECONDS, RPO_WARNING_FACTOR * freq)) {
      findings.push({ health: 'Warning', reason: `no replication status for ${duration(silent)}` });
    }
  }

  if (!input.agentConnected) findings.push({ health: 'Warning', reason: 'agent disconnected' });
  const r = input.reported;
  if (r !== undefined && r.health !== 'Normal' && r.reason !== null)
    findings.push({ health: r.health, reason: r.reason });

  let health: ReplicationHealth = 'Normal';
  for (const f of findings) if (RANK[f.health] > RANK[health]) health = f.health;
  const reasons = findings.filter((f) => f.health === health).map((f) => f.reason);
  return { health, reason: reasons.length === 0 ? null : reasons.join('; ') };
}
