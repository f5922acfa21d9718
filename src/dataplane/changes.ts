/**
 * The unit of replication (DESIGN §2): an ordered stream of changes to the disks of
 * one replication group, and markers that make recovery points. The write journal
 * produces it at the source, the transport carries it, the replica store consumes it
 * at the recovery site. One sequence spans all disks of the group, so every prefix of
 * the stream is crash-consistent across disks (write-order fidelity).
 */

/** Kind of a recovery point marker (R-REP-3). */
export type MarkerType = 'crash-consistent' | 'app-consistent';

interface ChangeBase {
  /** Position in the group's stream: strictly increasing by 1, starting at 1. */
  readonly seq: number;
  /** Milliseconds since the epoch when the source accepted the change. */
  readonly time: number;
}

/** Bytes written to a disk. */
export interface WriteChange extends ChangeBase {
  readonly kind: 'write';
  readonly diskId: string;
  readonly offset: number;
  readonly data: Buffer;
}

/** A range that reads back as zeros (WRITE_ZEROES, all-zero blocks, and TRIM as sent). */
export interface ZeroChange extends ChangeBase {
  readonly kind: 'zero';
  readonly diskId: string;
  readonly offset: number;
  readonly length: number;
}

/**
 * A recovery point: every change with a smaller `seq` is in the point, none after.
 * App-consistent markers are cut while the workload is quiesced (freeze → marker → thaw).
 */
export interface MarkerChange extends ChangeBase {
  readonly kind: 'marker';
  readonly markerType: MarkerType;
  /** Stable id of the point, chosen by the source (the control plane records it). */
  readonly pointId: string;
}

/**
 * Brackets a resync in the stream (added compatibly in protocol/record version 1: older streams simply never
 * carry it). After `begin` the source puts differing blocks into the stream in no write order (journal overflow,
 * a salvaged journal record), so until `end` the replica is not a consistent image of any moment: no recovery
 * point may be cut inside (DRBD's "Inconsistent during resync"). Points before `begin` stay valid; after `end`
 * the replica equals the source as of that seq. A repeated `begin` (a resync restarted) is harmless.
 */
export interface ResyncChange extends ChangeBase {
  readonly kind: 'resync';
  readonly phase: 'begin' | 'end';
}

/** One element of the replication stream. */
export type Change = WriteChange | ZeroChange | MarkerChange | ResyncChange;

/** The disks of a replicated item and their sizes. */
export interface DiskSpec {
  readonly id: string;
  readonly sizeBytes: number;
}
