import type { ByteRange } from '../journal/dirty-bitmap.js';
import type { WriteJournal } from '../journal/journal.js';
import type { ObservedBackend } from '../nbd/observed-backend.js';
import { blocksOf, DEFAULT_RESYNC_BLOCK, sha256 } from './block-hash.js';
import { defaultJournalWindow, journalBelow } from './initial-copy.js';

/** Options of `runResync`. */
export interface ResyncOptions {
  /** The journal of the side that sends (the source; for failback, the recovery site's reverse journal). */
  readonly journal: WriteJournal;
  /** The group's disks through their journaled backends. */
  readonly disks: ReadonlyMap<string, ObservedBackend>;
  /**
   * The other side's SHA-256 per block, taken after every change it acknowledged (`ReplicationSender
   * .requestHashes` over the link).
   */
  readonly remoteHashes: (diskId: string, blockSize: number, offsets: readonly number[]) => Promise<Buffer[]>;
  /** Resolves once the other side acknowledged `seq` (`ReplicationSender.waitForAck`). */
  readonly waitForAck: (seq: number) => Promise<void>;
  /**
   * What to compare: `dirty` (default) the journal's dirty bitmaps after an overflow; `all` every block of every
   * disk (original-location failback, or a journal found damaged). Either way the stream carries `resync begin`
   * before the first block and `resync end` after the last, and the resync is marked complete in the journal.
   */
  readonly scope?: 'dirty' | 'all';
  /** Comparison block. Default 1 MiB. */
  readonly blockSize?: number;
  /** The resync waits for the link while the journal holds more than this. Default as for the initial copy. */
  readonly maxJournalBytes?: number;
  /** Blocks per hash request. Default 64. */
  readonly hashBatch?: number;
  readonly signal?: AbortSignal;
  readonly onProgress?: (p: { readonly blocksDone: number; readonly blocksTotal: number }) => void;
}

/** What a resync did. */
export interface ResyncResult {
  readonly blocksCompared: number;
  readonly blocksDiffering: number;
  /** Bytes of the blocks compared. */
  readonly bytesCompared: number;
  /** Bytes of block data put into the stream (the differing blocks). */
  readonly bytesSent: number;
  /** Bytes of hashes received. */
  readonly hashBytes: number;
  /** Once the other side has this seq, both sides are equal (as of it). */
  readonly lastSeq: number;
  /**
   * The journal left resync mode (and the bracket's end is in the stream). False when it overflowed again
   * meanwhile: run the resync again once the link has drained the journal.
   */
  readonly complete: boolean;
}

/**
 * Resync and failback delta (R-RP-2): brings the other side level by comparing block hashes and putting only the
 * differing blocks into the stream, while writes continue to be journaled.
 *
 * Why it is exact: the other side's hashes are taken after every change it acknowledged, which includes every
 * change journaled before the resync began; a differing block is re-read in stream order
 * (`ObservedBackend.readInOrder` with a seq taken in the same tick), so it lands after the writes it already
 * contains and before those it does not. A block found equal needs nothing: every later change to it is
 * journaled and follows in the stream.
 */
export async function runResync(options: ResyncOptions): Promise<ResyncResult> {
  const { journal, signal } = options;
  const blockSize = options.blockSize ?? DEFAULT_RESYNC_BLOCK;
  const hashBatch = options.hashBatch ?? 64;
  const scope = options.scope ?? 'dirty';
  const maxJournal = options.maxJournalBytes ?? defaultJournalWindow(journal);
  let ranges: Map<string, ByteRange[]>;
  if (scope === 'dirty') {
    // Drain first, while changes still go only to the bitmaps: journaling again on a journal that is still full
    // would overflow it at once.
    if (journal.mode === 'overflow') await options.waitForAck(journal.lastSeq);
    ranges = journal.beginResync();
  } else {
    // Every block is compared, and the stream carries the resync bracket like any other resync: until its end the
    // other side is not a consistent image of any moment (blocks arrive out of write order), so it must not cut
    // a point in between. In normal mode the journal records the whole-disk resync as durable intent (all dirty),
    // so a resync interrupted by a crash is resumed, not forgotten with the bracket left open.
    if (journal.mode === 'overflow') {
      await options.waitForAck(journal.lastSeq);
      journal.beginResync();
    } else if (journal.mode === 'normal') {
      journal.markAllDirty();
    }
    ranges = new Map([...options.disks].map(([id, d]) => [id, [{ offset: 0, length: d.size }]]));
  }
  // The other side must have everything journaled before now, or its hashes would describe an older disk.
  await options.waitForAck(journal.lastSeq);
  const work: Array<{ diskId: string; offsets: number[] }> = [];
  let blocksTotal = 0;
  for (const [diskId, rs] of ranges) {
    const disk = options.disks.get(diskId);
    if (!disk) throw new RangeError(`no backend for disk ${diskId}`);
    const offsets = blocksOf(rs, blockSize, disk.size);
    blocksTotal += offsets.length;
    work.push({ diskId, offsets });
  }
  let blocksCompared = 0;
  let blocksDiffering = 0;
  let bytesCompared = 0;
  let bytesSent = 0;
  let hashBytes = 0;
  let lastSeq = journal.lastSeq;
  for (const { diskId, offsets } of work) {
    const disk = options.disks.get(diskId)!;
    for (let i = 0; i < offsets.length; i += hashBatch) {
      signal?.throwIfAborted();
      const batch = offsets.slice(i, i + hashBatch);
      const remote = await options.remoteHashes(diskId, blockSize, batch);
      if (remote.length !== batch.length)
        throw new Error(`asked for ${batch.length} hashes, got ${remote.length}`);
      hashBytes += remote.length * 32;
      for (let k = 0; k < batch.length; k++) {
        const off = batch[k]!;
        const len = Math.min(blockSize, disk.size - off);
        blocksCompared++;
        bytesCompared += len;
        // A plain read is enough to decide: a write racing with it is journaled and follows in the stream.
        if (sha256(await disk.read(off, len)).equals(remote[k]!)) continue;
        if (journal.storedBytes > maxJournal) await journalBelow(journal, maxJournal, signal);
        const slot = journal.reserve(diskId, off, len);
        const read = disk.readInOrder(off, len);
        let data: Buffer;
        try {
          data = await read;
        } catch (err) {
          await slot.cancel();
          throw err;
        }
        await slot.fill(data);
        lastSeq = slot.seq;
        blocksDiffering++;
        bytesSent += len;
      }
      options.onProgress?.({ blocksDone: Math.min(i + hashBatch, offsets.length), blocksTotal });
    }
  }
  await journal.flush();
  const complete = await journal.completeResync();
  return { blocksCompared, blocksDiffering, bytesCompared, bytesSent, hashBytes, lastSeq, complete };
}
