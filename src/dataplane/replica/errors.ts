/** Stable codes of replica-store failures; the site agent maps them onto `OsrError` codes for the control plane. */
export type ReplicaErrorCode =
  /** A file of the store (state, pending log, undo log, overlay map) failed its magic/version/checksum checks. */
  | 'REPLICA_CORRUPT'
  /** `receive` was given a batch that does not continue the stream (a gap, or a seq out of order). */
  | 'SEQUENCE_GAP'
  /** A change names an unknown disk or a range outside the disk. */
  | 'INVALID_CHANGE'
  /** No such recovery point (never received, or pruned). */
  | 'POINT_NOT_FOUND'
  /** No such disk in this replication group. */
  | 'DISK_NOT_FOUND'
  /** The operation needs exclusive use (commit) but views or overlays are open, or the store is busy. */
  | 'IN_USE'
  /** The store was committed (failover committed); it no longer receives nor keeps points. */
  | 'COMMITTED'
  /** The store was opened with disks that differ from the ones it was created with. */
  | 'DISKS_MISMATCH'
  /** An overlay file belongs to another disk or point than asked. */
  | 'OVERLAY_MISMATCH'
  /** A point was asked for while the replica is inside a resync (not a consistent image of any moment). */
  | 'RESYNC_IN_PROGRESS'
  /** Used after `close()`. */
  | 'CLOSED';

/** A replica-store failure with a stable code (tests assert the code, not the message). */
export class ReplicaError extends Error {
  override readonly name = 'ReplicaError';
  /** What went wrong, stable across versions. */
  readonly code: ReplicaErrorCode;

  constructor(code: ReplicaErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
