import type { Change } from '../changes.js';

/**
 * Where a `ReplicationReceiver` hands a group's stream (the replica store implements it).
 *
 * Contract: `receive` gets changes in strictly increasing `seq` with no gap, starting at
 * `lastReceivedSeq() + 1` — except a jump forward to a `resync begin` (a stream re-based after a lost resume
 * position, `WriteJournal.rebase`); it resolves only once they are durable at the recovery site (received as pending is
 * enough) — only then is the sender acknowledged and may it free its journal. It is never called concurrently
 * for one group.
 */
export interface ChangeSink {
  /** The last seq durably received (0 when none): the position the sender resumes after. */
  lastReceivedSeq(): number | Promise<number>;
  /** Stores the changes durably (as pending). */
  receive(changes: Change[]): Promise<void>;
  /**
   * Optional pipelined `receive`: resolves once the changes are taken in order — the receiver may then hand over
   * the next batch — with `durable`, which resolves once they are durable (only then are they acknowledged).
   * `durable` promises resolve in call order; a rejected one fails the connection (the sender resends). Lets a
   * sink make many batches durable with one flush instead of one flush per batch. `lastReceivedSeq` must still
   * answer the durable position once the promises of a finished connection settled.
   */
  stage?(changes: Change[]): Promise<{ readonly durable: Promise<void> }>;
  /**
   * SHA-256 of each block `[offset, offset + blockSize)` (clipped to the disk) of the replica as of every change
   * received so far; used by resync and failback delta to send only differing blocks. Optional: without it
   * hash requests are refused.
   */
  blockHashes?(diskId: string, blockSize: number, offsets: readonly number[]): Promise<Buffer[]>;
}

/**
 * The data of offline placeholders (initial replication by export/import, R-POL-6): the receiver asks it for the
 * bytes of a placeholder before handing the change to the sink.
 */
export interface OfflineSeedSource {
  /** The bytes seeded for `seq`; rejects when the seed file does not hold them. */
  dataFor(seq: number, diskId: string, offset: number, length: number): Promise<Buffer>;
}
