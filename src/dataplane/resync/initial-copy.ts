import { setTimeout as delay } from 'node:timers/promises';
import type { JournalSlot, WriteJournal } from '../journal/journal.js';
import type { ObservedBackend } from '../nbd/observed-backend.js';
import type { OfflineSeedWriter } from './offline-seed.js';

/** A disk to copy: its id in the journal's group and the journaled backend its writes go through. */
export interface CopyDisk {
  readonly id: string;
  readonly backend: ObservedBackend;
}

/** Options of `runInitialCopy`. */
export interface InitialCopyOptions {
  readonly journal: WriteJournal;
  readonly disks: readonly CopyDisk[];
  /** Bytes per copied block. Default 1 MiB. */
  readonly chunkBytes?: number;
  /** Blocks read and stored at once (reads overlap journal writes). Default 4; always 1 offline. */
  readonly depth?: number;
  /**
   * The copy pauses while the journal holds more than this many bytes (the link drains it), so a copy never
   * pushes the journal into overflow — streamed: while this many bytes of blocks are not yet acknowledged.
   * Default a quarter of the journal's cap, at most 256 MiB.
   */
  readonly maxJournalBytes?: number;
  /**
   * Streams the copy (the link's `ReplicationSender.waitForAck`): the journal gets a small record per block and
   * the sender reads the block from the disk when it reaches it (`WriteJournal.appendStreamed`), so the bytes are
   * neither written to the journal nor read back from it. The copy then resolves only once the recovery site
   * acknowledged every block. Without it (or offline) every block's bytes go through the journal.
   */
  readonly waitForAck?: (seq: number) => Promise<void>;
  /**
   * Streamed copies: go on from this block (a copy cut short, e.g. by an agent restart, from the `resumeAt` of its
   * last progress). Blocks that end before it are taken as copied — the recovery site acknowledged them, and every
   * write after them is in the journal's stream — and count as copied in the progress. Ignored without
   * `waitForAck` and when its disk is not one of `disks`.
   */
  readonly resumeFrom?: CopyPosition;
  /** Start at this time instead of now (R-POL-6 "scheduled"). */
  readonly startAt?: Date;
  /**
   * Offline mode (R-POL-6 "export/import"): the blocks go to this seed file and the journal gets only
   * placeholders; the recovery site imports the file (`OfflineSeedReader`) before the link delivers them.
   */
  readonly offline?: OfflineSeedWriter;
  readonly signal?: AbortSignal;
  /** Called after each block with the progress so far. */
  readonly onProgress?: (progress: CopyProgress) => void;
}

/** A block of a copy's plan: its disk and offset. */
export interface CopyPosition {
  readonly diskId: string;
  readonly offset: number;
}

/** How far a copy is. */
export interface CopyProgress {
  /** Allocated bytes to copy (holes and known-zero ranges are skipped). */
  readonly totalBytes: number;
  readonly copiedBytes: number;
  /** 0–100. */
  readonly percent: number;
  /**
   * Streamed copies: the first block the recovery site has not acknowledged (`null` once it has them all) — where
   * the copy can go on from (`resumeFrom`) if it is cut short.
   */
  readonly resumeAt?: CopyPosition | null;
}

/** What a finished copy did. */
export interface CopyResult extends CopyProgress {
  /** Seq of the last copied block: once the recovery site has it, the replica equals the source. */
  readonly lastSeq: number;
  readonly blocks: number;
}

/**
 * Initial replication (R-REP-2): copies the allocated blocks of every disk into the replication stream while
 * the journal keeps capturing writes. Each block's seq is taken in the same tick as its read is queued behind
 * the disk's pending applications (`ObservedBackend.readInOrder`), so the block carries exactly the bytes of
 * its place in the stream; writes made during the copy follow it in order. When the recovery site has received
 * up to `lastSeq`, the replica equals the source as of that seq.
 */
export async function runInitialCopy(options: InitialCopyOptions): Promise<CopyResult> {
  const { journal, signal } = options;
  const chunk = options.chunkBytes ?? 1024 * 1024;
  const maxJournal = options.maxJournalBytes ?? defaultJournalWindow(journal);
  const waitForAck = options.offline ? undefined : options.waitForAck;
  // Set before any wait: blocks of an earlier, interrupted streamed copy may still be in the journal.
  if (waitForAck) {
    for (const d of options.disks) journal.setBlockSource(d.id, (o, l) => d.backend.readApplied(o, l));
  }
  if (options.startAt) {
    const wait = options.startAt.getTime() - Date.now();
    if (wait > 0) await delay(wait, undefined, { signal });
  }
  const plan: Array<{ disk: CopyDisk; offset: number; length: number }> = [];
  let totalBytes = 0;
  for (const disk of options.disks) {
    for (const r of await allocatedRanges(disk.backend)) {
      for (let off = r.offset; off < r.offset + r.length; off += chunk) {
        const length = Math.min(chunk, r.offset + r.length - off);
        plan.push({ disk, offset: off, length });
        totalBytes += length;
      }
    }
  }
  if (waitForAck) {
    const from = resumeIndex(plan, options.disks, options.resumeFrom);
    const skipped = plan.slice(0, from).reduce((n, step) => n + step.length, 0);
    return streamCopy(options, waitForAck, plan, from, skipped, totalBytes, maxJournal);
  }
  let copiedBytes = 0;
  let lastSeq = journal.lastSeq;
  const progress = (): CopyProgress => progressOf(totalBytes, copiedBytes);
  // Up to `depth` blocks are read and stored at once (the journal writes them in seq order whatever order the
  // reads finish in), so reading the image overlaps writing the journal.
  // The seed file takes its records in seq order: an offline copy goes one block at a time.
  const depth = options.offline ? 1 : Math.max(1, options.depth ?? 4);
  const inFlight = new Set<Promise<void>>();
  let failure: Error | undefined;
  const copyOne = async (
    slot: JournalSlot,
    read: Promise<Buffer>,
    step: (typeof plan)[number],
  ): Promise<void> => {
    let filled = false;
    try {
      const data = await read;
      if (options.offline) {
        options.offline.add(slot.seq, Date.now(), step.disk.id, step.offset, data);
        filled = true;
        await slot.fillOffline();
      } else {
        filled = true;
        await slot.fill(data);
      }
    } catch (err) {
      // A reserved seq must always be filled: every later record waits behind it.
      if (!filled) await slot.cancel();
      throw err;
    }
    lastSeq = Math.max(lastSeq, slot.seq);
    copiedBytes += step.length;
    options.onProgress?.(progress());
  };
  try {
    for (const step of plan) {
      if (failure !== undefined) break;
      signal?.throwIfAborted();
      while (inFlight.size >= depth) await Promise.race(inFlight);
      if (failure !== undefined) break;
      if (!options.offline && journal.storedBytes > maxJournal)
        await journalBelow(journal, maxJournal, signal);
      // Same tick: the seq and the read's place in the application queue must match.
      const slot = journal.reserve(step.disk.id, step.offset, step.length);
      const read = step.disk.backend.readInOrder(step.offset, step.length);
      const p: Promise<void> = copyOne(slot, read, step).then(
        () => void inFlight.delete(p),
        (err: unknown) => {
          failure ??= err instanceof Error ? err : new Error(String(err));
          inFlight.delete(p);
        },
      );
      inFlight.add(p);
    }
  } finally {
    // Every reserved seq is filled or cancelled before the copy returns or throws: the stream has no holes.
    await Promise.all(inFlight);
  }
  if (failure !== undefined) throw failure;
  // The copy is only complete once its records cannot vanish in a crash.
  await journal.flush();
  return { ...progress(), lastSeq, blocks: plan.length };
}

/** The index of the first block of `plan` that does not end before `from` (0 without a usable position). */
function resumeIndex(
  plan: ReadonlyArray<{ disk: CopyDisk; offset: number; length: number }>,
  disks: readonly CopyDisk[],
  from: CopyPosition | undefined,
): number {
  const order = from === undefined ? -1 : disks.findIndex((d) => d.id === from.diskId);
  if (from === undefined || order < 0) return 0;
  let i = 0;
  for (; i < plan.length; i++) {
    const d = disks.indexOf(plan[i]!.disk);
    if (d > order || (d === order && plan[i]!.offset + plan[i]!.length > from.offset)) break;
  }
  return i;
}

function progressOf(totalBytes: number, copiedBytes: number): CopyProgress {
  return {
    totalBytes,
    copiedBytes,
    percent: totalBytes === 0 ? 100 : Math.min(100, (copiedBytes / totalBytes) * 100),
  };
}

/**
 * The streamed copy: a resync bracket around one streamed record per block, at most `window` bytes of them not
 * yet acknowledged; progress counts acknowledged blocks. The bracket ends only after the last block was
 * acknowledged — a block is never read again after that, so no byte newer than the end can be in one.
 */
async function streamCopy(
  options: InitialCopyOptions,
  waitForAck: (seq: number) => Promise<void>,
  plan: ReadonlyArray<{ disk: CopyDisk; offset: number; length: number }>,
  from: number,
  skippedBytes: number,
  totalBytes: number,
  window: number,
): Promise<CopyResult> {
  const { journal, signal } = options;
  let copiedBytes = skippedBytes;
  const unacked: Array<{ seq: number; length: number; index: number }> = [];
  let unackedBytes = 0;
  let next = from;
  const positionOf = (index: number): CopyPosition | null => {
    const step = plan[index];
    return step === undefined ? null : { diskId: step.disk.id, offset: step.offset };
  };
  const settleOldest = async (): Promise<void> => {
    const head = unacked.shift()!;
    await waitForAck(head.seq);
    unackedBytes -= head.length;
    copiedBytes += head.length;
    options.onProgress?.({
      ...progressOf(totalBytes, copiedBytes),
      resumeAt: positionOf(unacked[0]?.index ?? next),
    });
  };
  journal.beginStreamedCopy();
  let lastSeq = journal.lastSeq;
  try {
    for (; next < plan.length;) {
      const step = plan[next]!;
      signal?.throwIfAborted();
      if (unackedBytes + step.length > window && unacked.length > 0) {
        // Durable before waiting: a source that crashes meanwhile still has the blocks the link is working on.
        await journal.flush();
        while (unackedBytes + step.length > window && unacked.length > 0) await settleOldest();
      }
      lastSeq = journal.appendStreamed(step.disk.id, step.offset, step.length);
      unacked.push({ seq: lastSeq, length: step.length, index: next });
      unackedBytes += step.length;
      next++;
    }
    await journal.flush();
    while (unacked.length > 0) {
      signal?.throwIfAborted();
      await settleOldest();
    }
  } catch (err) {
    journal.abandonStreamedCopy();
    throw err;
  }
  lastSeq = (await journal.endStreamedCopy()) ?? lastSeq;
  return { ...progressOf(totalBytes, copiedBytes), lastSeq, blocks: plan.length };
}

/** The ranges of a disk that may hold data (its block status, skipping holes and known zeros). */
export async function allocatedRanges(
  disk: ObservedBackend,
): Promise<Array<{ offset: number; length: number }>> {
  const out: Array<{ offset: number; length: number }> = [];
  for (let pos = 0; pos < disk.size;) {
    const extents = await disk.blockStatus(pos, Math.min(disk.size - pos, 1024 * 1024 * 1024));
    if (extents.length === 0) throw new Error(`block status at ${pos} returned no extent`);
    for (const e of extents) {
      if (!e.zero) {
        const last = out[out.length - 1];
        if (last && last.offset + last.length === pos) last.length += e.length;
        else out.push({ offset: pos, length: e.length });
      }
      pos += e.length;
    }
  }
  return out;
}

/** How full a copy lets the journal get before it waits for the link: a quarter of the cap, at most 256 MiB. */
export function defaultJournalWindow(journal: WriteJournal): number {
  return Math.min(256 * 1024 * 1024, Math.floor(journal.cap / 4));
}

/** Resolves once the journal holds at most `bytes` (the link acknowledged and freed segments). */
export function journalBelow(journal: WriteJournal, bytes: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (journal.storedBytes <= bytes) {
        off();
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }
    };
    const onAbort = (): void => {
      off();
      reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
    };
    const off = journal.onProgress(check);
    signal?.addEventListener('abort', onAbort, { once: true });
    check();
  });
}
