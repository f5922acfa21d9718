import * as fs from 'node:fs';
import { join } from 'node:path';
import type { DiskSpec, MarkerType } from '../changes.js';
import type { BlockBackend } from '../nbd/backend.js';
import { ObservedBackend } from '../nbd/observed-backend.js';
import type { TrimEvent, WriteEvent, WriteObserver, ZeroEvent } from '../nbd/observed-backend.js';
import { DirtyBitmap, fsyncDir, readDirtyFile, writeDirtyFile } from './dirty-bitmap.js';
import type { ByteRange, DirtyState } from './dirty-bitmap.js';
import { CopyInProgressError, JournalCorruptError, ResyncRequiredError } from './errors.js';
import { encodeRecord, encodeTombstone, probeRecord, RECORD_HEADER_SIZE, RECORD_MAGIC } from './record.js';
import type { JournalEntry, StoredEntry, StreamedBlock } from './record.js';

/** A disk of the replication group as the journal sees it. */
export interface JournalDisk extends DiskSpec {
  /**
   * Granule of the image's TRIM: the image zeroes only whole granules of this size (plus the disk's last partial
   * one), and the journal records exactly that part as a zero change so the replica reads back what the source
   * does. Default 64 KiB (`FileBackend`/`MemoryBackend` default).
   */
  readonly trimGranuleBytes?: number;
}

/** Options of `WriteJournal.open`. */
export interface WriteJournalOptions {
  /** A segment file is closed and a new one started beyond this size. Default 64 MiB. */
  readonly segmentBytes?: number;
  /**
   * Most bytes of records kept (sent or not, until released). Beyond it the journal stops storing data, keeps a
   * dirty bitmap per disk and reports `resyncRequired`. Default 8 GiB.
   */
  readonly capBytes?: number;
  /** Granule of the dirty bitmaps. Default 64 KiB. */
  readonly dirtyGranuleBytes?: number;
  /** Milliseconds since the epoch for record times. Default `Date.now`. */
  readonly clock?: () => number;
}

/** Where the journal stands. */
export type JournalMode = 'normal' | DirtyState;

/** Figures of a journal for status reporting. */
export interface JournalStatus {
  readonly mode: JournalMode;
  readonly resyncRequired: boolean;
  /** Oldest seq still stored (`lastSeq + 1` when none is). */
  readonly firstSeq: number;
  /** Last seq handed out. */
  readonly lastSeq: number;
  /** Last seq on stable storage. */
  readonly durableSeq: number;
  /** Bytes of segment files. */
  readonly storedBytes: number;
  readonly segments: number;
  /** Bytes of dirty granules waiting for resync. */
  readonly dirtyBytes: number;
  /** `write` syscalls made for records so far (group commit: many records per call). */
  readonly appendCalls: number;
  /** `fdatasync` calls made so far (concurrent flushes share one). */
  readonly syncCalls: number;
}

/**
 * Reads `length` bytes at `offset` of a disk for a streamed block (`WriteJournal.appendStreamed`) when the sender
 * reaches it. It must see every mutation observed before it is called (`ObservedBackend.readApplied`).
 */
export type BlockSource = (offset: number, length: number) => Promise<Buffer>;

/**
 * A sequence number taken now for a block whose bytes are read later (initial copy, resync): later records wait
 * behind it, so it must be filled (or cancelled) promptly.
 */
export interface JournalSlot {
  readonly seq: number;
  /** Stores the block's bytes; resolves once the record is written (not necessarily durable). */
  fill(data: Buffer): Promise<void>;
  /** Stores an offline placeholder: the bytes travel in the seed file. */
  fillOffline(): Promise<void>;
  /** Gives the seq up: an empty write is stored in its place (the stream has no gaps). */
  cancel(): Promise<void>;
}

interface Segment {
  readonly firstSeq: number;
  readonly path: string;
  /** Bytes of whole records in the file. */
  size: number;
  /** File position of record `firstSeq + i`. */
  readonly positions: number[];
  /** Time of record `firstSeq + i`. */
  readonly times: number[];
  /** Seqs of the streamed blocks in the segment, ascending. */
  readonly streamSeqs: number[];
  /** Bytes of the streamed blocks up to and including `streamSeqs[i]`. */
  readonly streamCum: number[];
}

interface Pending {
  readonly seq: number;
  buf: Buffer | null;
  readonly time: number;
  /** Bytes of a streamed block (read from the disk when sent). */
  readonly streamed?: number;
  /** Dropped by a re-base before it was written: filling it stores nothing. */
  dropped?: boolean;
}

interface Waiter {
  readonly seq: number;
  resolve(): void;
  reject(err: Error): void;
}

const SEGMENT_PREFIX = 'seg-';
const SEGMENT_SUFFIX = '.osrj';
const DIRTY_FILE = 'dirty.osrb';

/**
 * The source-side write journal of one replication group (DESIGN §2 "Capture"): every write, zero and trim of
 * every disk of the group, and recovery-point markers, in one sequence.
 *
 * Promises:
 * - Sequence numbers are taken synchronously when an event is observed, so the journal's order is exactly the
 *   order the `ObservedBackend`s apply mutations; one sequence spans all disks (write-order fidelity).
 * - An observed mutation is accepted only once its record is written to the segment file (a `write` syscall:
 *   it survives a crash of this process); records appended in one event-loop turn share one syscall.
 * - `onFlush`, FUA mutations and `addMarker` resolve only after an `fdatasync` covering them; concurrent
 *   requests share one `fdatasync`.
 * - `open` verifies every record; a damaged tail (a partial or corrupt last record with nothing valid after it)
 *   is cut off, a damaged record with valid records after it throws `JournalCorruptError`. Nothing made durable
 *   is ever cut.
 * - Beyond `capBytes` it stores no more data: each disk gets a persisted dirty bitmap (written before the
 *   mutation is accepted, so a crash cannot lose a dirty bit) and `resyncRequired` is true until
 *   `completeResync()`.
 */
export class WriteJournal {
  /** The journal folder. */
  readonly dir: string;
  private readonly disks: ReadonlyMap<string, JournalDisk>;
  private readonly segmentBytes: number;
  private readonly capBytes: number;
  private readonly dirtyGranule: number;
  private readonly clock: () => number;
  private readonly segments: Segment[];
  private activeFd: number;
  private nextSeq: number;
  private written: number;
  private durable: number;
  private stored: number;
  private pendingBytes = 0;
  private readonly pending: Pending[] = [];
  private readonly writeWaiters: Waiter[] = [];
  private readonly syncWaiters: Waiter[] = [];
  private writing = false;
  private writeScheduled = false;
  private syncing: Promise<void> | null = null;
  private rotating = false;
  private appendCalls = 0;
  private syncCalls = 0;
  private failure: Error | null = null;
  private closed = false;
  private dirtyState: DirtyState | null;
  private dirty: Map<string, DirtyBitmap>;
  private dirtyPersist: Promise<void> | null = null;
  private dirtyChanged = false;
  private readonly progressListeners = new Set<() => void>();
  private readonly sources = new Map<string, BlockSource>();
  /** Streamed copies begun and not ended: the resync bracket they opened must stay open. */
  private openCopies = 0;

  private constructor(
    dir: string,
    disks: readonly JournalDisk[],
    options: WriteJournalOptions,
    segments: Segment[],
    activeFd: number,
    dirty: { state: DirtyState; maps: Map<string, DirtyBitmap> } | undefined,
  ) {
    this.dir = dir;
    this.disks = new Map(disks.map((d) => [d.id, d]));
    this.segmentBytes = options.segmentBytes ?? 64 * 1024 * 1024;
    this.capBytes = options.capBytes ?? 8 * 1024 * 1024 * 1024;
    this.dirtyGranule = options.dirtyGranuleBytes ?? 64 * 1024;
    this.clock = options.clock ?? Date.now;
    this.segments = segments;
    this.activeFd = activeFd;
    const last = segments[segments.length - 1]!;
    this.nextSeq = last.firstSeq + last.positions.length;
    this.written = this.nextSeq - 1;
    this.durable = this.nextSeq - 1;
    this.stored = segments.reduce((n, s) => n + s.size, 0);
    this.dirtyState = dirty?.state ?? null;
    this.dirty = dirty?.maps ?? new Map<string, DirtyBitmap>();
  }

  /**
   * Opens (or creates) the journal in `dir` for the group's `disks`: scans and verifies every segment, cuts a
   * torn tail, and resumes the sequence after the last record.
   */
  static open(dir: string, disks: readonly JournalDisk[], options: WriteJournalOptions = {}): WriteJournal {
    fs.mkdirSync(dir, { recursive: true });
    const names = fs
      .readdirSync(dir)
      .filter((n) => n.startsWith(SEGMENT_PREFIX) && n.endsWith(SEGMENT_SUFFIX))
      .sort();
    const segments: Segment[] = [];
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      const firstSeq = Number(name.slice(SEGMENT_PREFIX.length, -SEGMENT_SUFFIX.length));
      if (!Number.isSafeInteger(firstSeq) || firstSeq < 1) continue;
      const seg = scanSegment(join(dir, name), firstSeq, i === names.length - 1);
      const prev = segments[segments.length - 1];
      if (prev && prev.firstSeq + prev.positions.length !== firstSeq) {
        throw new JournalCorruptError(
          seg.path,
          0,
          `segment starts at seq ${firstSeq}, expected ${prev.firstSeq + prev.positions.length}`,
        );
      }
      segments.push(seg);
    }
    if (segments.length === 0) {
      const path = segmentPath(dir, 1);
      fs.closeSync(fs.openSync(path, 'a'));
      fsyncDir(dir);
      segments.push(emptySegment(1, path));
    }
    const active = segments[segments.length - 1]!;
    const fd = fs.openSync(active.path, 'r+');
    const dirty = readDirtyFile(join(dir, DIRTY_FILE));
    return new WriteJournal(dir, disks, options, segments, fd, dirty);
  }

  /** Last seq handed out (0 before the first). */
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /** Last seq whose record is written to its segment file (readable by `read`). */
  get writtenSeq(): number {
    return this.written;
  }

  /** Last seq on stable storage. */
  get durableSeq(): number {
    return this.durable;
  }

  /** The size cap beyond which the journal overflows into dirty bitmaps. */
  get cap(): number {
    return this.capBytes;
  }

  /** Oldest seq still stored. */
  get firstSeq(): number {
    return this.segments[0]!.firstSeq;
  }

  /** Bytes of segment files. */
  get storedBytes(): number {
    return this.stored;
  }

  /** `normal`, `overflow` (capturing into dirty bitmaps) or `resync` (journaling again, bitmaps to copy). */
  get mode(): JournalMode {
    return this.dirtyState ?? 'normal';
  }

  /** True while the replica cannot be brought level from the journal alone. */
  get resyncRequired(): boolean {
    return this.dirtyState !== null;
  }

  /** Figures for status reports. */
  status(): JournalStatus {
    let dirtyBytes = 0;
    for (const m of this.dirty.values()) dirtyBytes += m.ranges().reduce((n, r) => n + r.length, 0);
    return {
      mode: this.mode,
      resyncRequired: this.resyncRequired,
      firstSeq: this.firstSeq,
      lastSeq: this.lastSeq,
      durableSeq: this.durable,
      storedBytes: this.stored,
      segments: this.segments.length,
      dirtyBytes,
      appendCalls: this.appendCalls,
      syncCalls: this.syncCalls,
    };
  }

  /** The write hook for one disk of the group; several disks' observers share this journal's sequence. */
  observer(diskId: string, trimGranuleBytes?: number): WriteObserver {
    const disk = this.disks.get(diskId);
    if (!disk) throw new RangeError(`disk ${diskId} is not in this journal's group`);
    const granule = trimGranuleBytes ?? disk.trimGranuleBytes ?? 64 * 1024;
    return {
      onWrite: (e: WriteEvent) =>
        this.appendMutation(diskId, e.offset, e.data.length, e.data.length, e.fua, (seq, time) => ({
          kind: 'write',
          seq,
          time,
          diskId,
          offset: e.offset,
          data: e.data,
        })),
      onZero: (e: ZeroEvent) =>
        this.appendMutation(diskId, e.offset, e.length, 0, e.fua, (seq, time) => ({
          kind: 'zero',
          seq,
          time,
          diskId,
          offset: e.offset,
          length: e.length,
        })),
      onTrim: (e: TrimEvent) => {
        // Only whole granules read back as zeros after a TRIM (the image ignores partial ones), so only they
        // are recorded: the replica then holds exactly the bytes the source image reads back.
        const first = Math.ceil(e.offset / granule);
        const stop = e.offset + e.length;
        const end = stop >= disk.sizeBytes ? Math.ceil(disk.sizeBytes / granule) : Math.floor(stop / granule);
        const start = first * granule;
        const length = Math.min(end * granule, disk.sizeBytes) - start;
        if (length <= 0) return Promise.resolve();
        return this.appendMutation(diskId, start, length, 0, e.fua, (seq, time) => ({
          kind: 'zero',
          seq,
          time,
          diskId,
          offset: start,
          length,
        }));
      },
      onFlush: () => this.flush(),
    };
  }

  /** Wraps `inner` so its mutations are journaled first (the trim granule is taken from its allocation map). */
  attach(diskId: string, inner: BlockBackend): ObservedBackend {
    const granule = (inner as { readonly map?: { readonly granuleSize?: unknown } }).map?.granuleSize;
    return new ObservedBackend(
      inner,
      this.observer(diskId, typeof granule === 'number' ? granule : undefined),
    );
  }

  /**
   * Appends a recovery-point marker after every change observed so far and resolves with its seq once it is
   * durable. Refused with `ResyncRequiredError` while the journal is not storing changes (no point can be made
   * consistent then).
   */
  async addMarker(markerType: MarkerType, pointId: string): Promise<number> {
    this.assertUsable();
    if (this.dirtyState !== null) {
      // Until resync has copied every dirty block the replica is not a consistent image of any moment.
      throw new ResyncRequiredError('the journal overflowed; no recovery point until resync completes');
    }
    if (this.openCopies > 0) {
      throw new CopyInProgressError('an initial copy is streaming; no recovery point until it ends');
    }
    const seq = this.nextSeq++;
    const time = this.clock();
    this.enqueue({ kind: 'marker', seq, time, markerType, pointId });
    await this.waitDurable(seq);
    return seq;
  }

  /**
   * Takes the next seq for `length` bytes at `offset` of `diskId` whose bytes will be supplied by `fill`. Call
   * it in the same tick as `ObservedBackend.readInOrder` so the bytes read belong exactly at this seq.
   */
  reserve(diskId: string, offset: number, length: number): JournalSlot {
    this.assertUsable();
    if (!this.disks.has(diskId)) throw new RangeError(`disk ${diskId} is not in this journal's group`);
    const seq = this.nextSeq++;
    const time = this.clock();
    const slot: Pending = { seq, buf: null, time };
    this.pending.push(slot);
    let used = false;
    const put = (entry: JournalEntry): Promise<void> => {
      if (used) return Promise.reject(new Error(`slot ${seq} is already filled`));
      used = true;
      // A re-base dropped the slot: its block is covered by the resync.
      if (slot.dropped) return Promise.resolve();
      slot.buf = encodeRecord(entry);
      this.pendingBytes += slot.buf.length;
      this.scheduleWrite();
      return this.waitWritten(seq);
    };
    return {
      seq,
      fill: (data) => put({ kind: 'write', seq, time, diskId, offset, data }),
      fillOffline: () => put({ kind: 'offline', seq, time, diskId, offset, length }),
      cancel: () => put({ kind: 'write', seq, time, diskId, offset, data: Buffer.alloc(0) }),
    };
  }

  /**
   * Where the sender reads the bytes of `diskId`'s streamed blocks; `undefined` removes it. Until one is set, a
   * sender that reaches such a block fails (and retries).
   */
  setBlockSource(diskId: string, source: BlockSource | undefined): void {
    if (!this.disks.has(diskId)) throw new RangeError(`disk ${diskId} is not in this journal's group`);
    if (source) this.sources.set(diskId, source);
    else this.sources.delete(diskId);
  }

  /**
   * Opens a streamed copy (initial replication without journaling the bytes): appends a resync `begin`, so the
   * replica cuts no point until `endStreamedCopy`, and refuses markers until then. Blocks appended with
   * `appendStreamed` are read from the disk when the sender reaches them — later than their seq, so they may
   * hold newer bytes; replaying the writes that follow them in the stream still ends in the source's bytes, and
   * the bracket keeps any point from seeing such a block before that.
   */
  beginStreamedCopy(): void {
    this.assertUsable();
    this.openCopies++;
    this.enqueue({ kind: 'resync', seq: this.nextSeq++, time: this.clock(), phase: 'begin' });
  }

  /**
   * Appends a streamed block of `length` bytes at `offset` of `diskId` (inside `beginStreamedCopy`) and returns
   * its seq; the record holds no data. Not durable until `flush`.
   */
  appendStreamed(diskId: string, offset: number, length: number): number {
    this.assertUsable();
    if (this.openCopies === 0) throw new Error('appendStreamed outside a streamed copy');
    if (!this.disks.has(diskId)) throw new RangeError(`disk ${diskId} is not in this journal's group`);
    const seq = this.nextSeq++;
    this.enqueue({ kind: 'streamed', seq, time: this.clock(), diskId, offset, length });
    return seq;
  }

  /**
   * Ends a streamed copy. The caller must first have the recovery site acknowledge every streamed block (none is
   * ever read again): then the resync `end` is appended and resolves with its seq once durable. With other
   * copies still open, or while the journal overflows or resyncs (whose own end closes the bracket), nothing is
   * appended and it resolves with `undefined`.
   */
  async endStreamedCopy(): Promise<number | undefined> {
    this.assertUsable();
    if (this.openCopies === 0) throw new Error('endStreamedCopy without beginStreamedCopy');
    this.openCopies--;
    if (this.openCopies > 0 || this.dirtyState !== null) return undefined;
    const seq = this.nextSeq++;
    this.enqueue({ kind: 'resync', seq, time: this.clock(), phase: 'end' });
    await this.waitDurable(seq);
    return seq;
  }

  /**
   * Gives up a streamed copy that failed or was stopped: no `end` is appended (its blocks may not all have been
   * acknowledged), so the replica stays inside the bracket until a later copy or resync ends it.
   */
  abandonStreamedCopy(): void {
    if (this.openCopies > 0) this.openCopies--;
  }

  /** Resolves once every change observed before this call is durable. */
  flush(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return this.waitDurable(this.lastSeq);
  }

  /**
   * Records from `fromSeq` on, at most about `maxBytes` of them (always at least one when any is written), all
   * from one segment; a streamed block counts with its length and comes back as a write whose bytes were read
   * from its disk now. Only written records are returned; an empty array means the reader is caught up.
   * Throws `ResyncRequiredError` when `fromSeq` was already released.
   */
  async read(fromSeq: number, maxBytes: number): Promise<JournalEntry[]> {
    return this.readRange(fromSeq, maxBytes).entries;
  }

  /**
   * `read`, split in two: which records it returns (`lastSeq`, `fromSeq - 1` when the reader is caught up) is
   * known at once, their bytes come later. A reader can so start the next read before this one's bytes arrived
   * (the sender's read-ahead). Throws `ResyncRequiredError` at once when `fromSeq` was already released.
   */
  readRange(fromSeq: number, maxBytes: number): { lastSeq: number; entries: Promise<JournalEntry[]> } {
    this.assertUsable();
    if (fromSeq < this.firstSeq) {
      throw new ResyncRequiredError(`seq ${fromSeq} was released; the journal starts at ${this.firstSeq}`);
    }
    if (fromSeq > this.written) return { lastSeq: fromSeq - 1, entries: Promise.resolve([]) };
    const seg = this.segmentOf(fromSeq);
    const lastInSeg = Math.min(seg.firstSeq + seg.positions.length - 1, this.written);
    const start = seg.positions[fromSeq - seg.firstSeq]!;
    let k = firstAtLeast(seg.streamSeqs, fromSeq);
    let weight = 0;
    let endSeq = fromSeq - 1;
    while (endSeq < lastInSeg && weight < maxBytes) {
      endSeq++;
      weight += this.positionAfter(seg, endSeq) - seg.positions[endSeq - seg.firstSeq]!;
      if (seg.streamSeqs[k] === endSeq) {
        weight += seg.streamCum[k]! - (k > 0 ? seg.streamCum[k - 1]! : 0);
        k++;
      }
    }
    const end = this.positionAfter(seg, endSeq);
    return { lastSeq: endSeq, entries: this.readRecords(seg.path, start, end - start, fromSeq) };
  }

  /** Reads and checks the records of `length` bytes at `start` of a segment, the first with seq `fromSeq`. */
  private async readRecords(
    path: string,
    start: number,
    length: number,
    fromSeq: number,
  ): Promise<JournalEntry[]> {
    const buf = Buffer.allocUnsafe(length);
    const fd = fs.openSync(path, 'r');
    try {
      await readFully(fd, buf, start);
    } finally {
      fs.closeSync(fd);
    }
    const out: Array<Promise<JournalEntry>> = [];
    for (let at = 0, seq = fromSeq; at < buf.length; seq++) {
      // Views of `buf`, which is ours alone: no copy of the written bytes.
      const p = probeRecord(buf, at, true);
      if (p.status !== 'ok' || p.entry.seq !== seq) {
        const why =
          p.status === 'ok'
            ? `found seq ${p.entry.seq}, expected ${seq}`
            : p.status === 'bad'
              ? p.reason
              : 'truncated';
        throw new JournalCorruptError(path, start + at, why);
      }
      out.push(p.entry.kind === 'streamed' ? this.readStreamed(p.entry) : Promise.resolve(p.entry));
      at += p.size;
    }
    return Promise.all(out);
  }

  private async readStreamed(e: StreamedBlock): Promise<JournalEntry> {
    const source = this.sources.get(e.diskId);
    if (!source) throw new Error(`seq ${e.seq}: no block source for disk ${e.diskId} (the copy sets it)`);
    const data = await source(e.offset, e.length);
    if (data.length !== e.length) throw new Error(`seq ${e.seq}: the disk returned ${data.length} bytes`);
    return { kind: 'write', seq: e.seq, time: e.time, diskId: e.diskId, offset: e.offset, data };
  }

  /** Time of the change with `seq`, when it is still stored. */
  timeOf(seq: number): number | undefined {
    if (seq < this.firstSeq || seq > this.lastSeq) return undefined;
    const seg = this.segmentOf(seq);
    const i = seq - seg.firstSeq;
    return i < seg.times.length ? seg.times[i] : this.pending.find((p) => p.seq === seq)?.time;
  }

  /** Bytes of stored records and streamed blocks after `seq` (the backlog of a reader that has `seq`). */
  bytesAfter(seq: number): number {
    let n = this.pendingBytes;
    for (const seg of this.segments) {
      const i = seq + 1 - seg.firstSeq;
      if (i <= 0) n += seg.size;
      else if (i < seg.positions.length) n += seg.size - seg.positions[i]!;
      const k = firstAtLeast(seg.streamSeqs, seq + 1);
      if (k < seg.streamSeqs.length) n += seg.streamCum.at(-1)! - (k > 0 ? seg.streamCum[k - 1]! : 0);
    }
    return n;
  }

  /**
   * Frees whole segments whose records all have seq <= `uptoSeq` (acknowledged by the recovery site). The
   * segment being appended to is kept.
   */
  release(uptoSeq: number): void {
    while (this.segments.length > 1) {
      const seg = this.segments[0]!;
      if (seg.firstSeq + seg.positions.length - 1 > uptoSeq) break;
      fs.rmSync(seg.path, { force: true });
      this.segments.shift();
      this.stored -= seg.size;
    }
    this.notifyProgress();
  }

  /**
   * Calls `listener` after records were written or segments released; returns the unsubscribe function.
   * Senders tail the journal with it; copies pace themselves with it.
   */
  onProgress(listener: () => void): () => void {
    this.progressListeners.add(listener);
    return () => this.progressListeners.delete(listener);
  }

  /**
   * Starts resync after an overflow: the journal stores changes again from now on, and the returned ranges per
   * disk (the dirty granules) must be compared/copied by the resync. Calling it again during a resync (e.g.
   * after a restart) returns the same ranges.
   */
  beginResync(): Map<string, ByteRange[]> {
    this.assertUsable();
    if (this.dirtyState === null) return new Map();
    this.dirtyState = 'resync';
    writeDirtyFile(join(this.dir, DIRTY_FILE), 'resync', this.dirty);
    // From here the stream carries blocks out of write order: the replica must know it is inconsistent until
    // the matching end (a repeated begin after a restart is harmless).
    this.enqueue({ kind: 'resync', seq: this.nextSeq++, time: this.clock(), phase: 'begin' });
    return new Map([...this.dirty].map(([id, m]) => [id, m.ranges()]));
  }

  /**
   * Marks every disk wholly dirty (a journal record was found damaged, or the replica lost data): the next resync
   * compares every block.
   */
  markAllDirty(): void {
    this.assertUsable();
    this.ensureBitmaps();
    for (const m of this.dirty.values()) m.markAll();
    this.dirtyState ??= 'resync';
    writeDirtyFile(join(this.dir, DIRTY_FILE), this.dirtyState, this.dirty);
    // In overflow the bracket opens when the resync begins (`beginResync`); otherwise the replica is
    // inconsistent from now on (what the dirty blocks should hold is missing from the stream).
    if (this.dirtyState === 'resync') {
      this.enqueue({ kind: 'resync', seq: this.nextSeq++, time: this.clock(), phase: 'begin' });
    }
  }

  /**
   * Re-base after a lost resume point: the recovery site resumes after `aboveSeq`, which this journal cannot
   * continue from — released (the replica lost data, e.g. restored from a backup) or beyond the journal's end (this
   * host crashed and lost records it had not synced). Every disk is marked wholly dirty (durable first: the
   * resync to come is remembered across a crash), every stored record is dropped, and the stream restarts at a
   * *base seq* above both positions with a `resync begin`; the receiver accepts the gap before it (it may skip
   * only to a `resync begin`). Points the replica holds from before stay valid; none is cut until `runResync`
   * (every block is dirty) has put the end into the stream. Resolves with the base seq.
   */
  async rebase(aboveSeq: number): Promise<number> {
    if (!Number.isSafeInteger(aboveSeq) || aboveSeq < 0) throw new RangeError(`bad resume seq ${aboveSeq}`);
    this.assertUsable();
    // Take the writer's role, so no write loop runs and no sync restarts behind us, and let a running sync finish
    // (its loop stops at `rotating`): the active segment's fd is about to close.
    while (this.writing) await new Promise<void>((r) => setImmediate(r));
    this.assertUsable();
    this.writing = true;
    this.rotating = true;
    let baseSeq: number;
    try {
      if (this.syncing) await this.syncing;
      this.assertUsable();
      // From here on synchronous. Records not yet written (writes keep coming) are dropped with the stored ones:
      // their bytes are on the disks, every block of which the resync compares.
      baseSeq = Math.max(aboveSeq, this.nextSeq - 1) + 1;
      for (const p of this.pending) p.dropped = true;
      this.pending.length = 0;
      this.pendingBytes = 0;
      this.ensureBitmaps();
      for (const m of this.dirty.values()) m.markAll();
      this.dirtyState = 'resync';
      writeDirtyFile(join(this.dir, DIRTY_FILE), 'resync', this.dirty);
      // Oldest first, so a crash part way leaves a contiguous run of segments (or none); open then starts
      // wherever it finds itself and the sender re-bases again.
      for (const seg of this.segments) fs.rmSync(seg.path, { force: true });
      fs.closeSync(this.activeFd);
      fsyncDir(this.dir);
      const path = segmentPath(this.dir, baseSeq);
      this.activeFd = fs.openSync(path, 'w+');
      fsyncDir(this.dir);
      this.segments.length = 0;
      this.segments.push(emptySegment(baseSeq, path));
      this.stored = 0;
      this.nextSeq = baseSeq;
      this.written = baseSeq - 1;
      this.durable = baseSeq - 1;
      // Whoever waited for a dropped record is answered: its bytes are on the disk and will be resynced.
      settle(this.writeWaiters, this.written);
      settle(this.syncWaiters, this.durable);
    } finally {
      this.rotating = false;
      this.writing = false;
    }
    this.enqueue({ kind: 'resync', seq: this.nextSeq++, time: this.clock(), phase: 'begin' });
    await this.waitDurable(baseSeq);
    this.notifyProgress();
    return baseSeq;
  }

  /**
   * Salvage after `read` refused a damaged record (`JournalCorruptError`, e.g. a flipped bit on disk): every
   * stored record that fails verification is overwritten in place by a tombstone of the same seq and size (an
   * empty zero change, `encodeTombstone`), so the stream continues without a gap, and every disk is marked dirty
   * — what the damaged records changed is unknown, so the next resync (`runResync`, scope `dirty`) compares every
   * block. Until it completes the item is resync-required and no recovery point is cut. Returns the seqs
   * replaced (empty when nothing was damaged; then nothing changes).
   */
  repairDamaged(): number[] {
    this.assertUsable();
    const filler = [...this.disks.keys()].sort((a, b) => Buffer.byteLength(a) - Buffer.byteLength(b))[0]!;
    const replaced: number[] = [];
    for (const seg of this.segments) {
      if (seg.positions.length === 0) continue;
      const buf = fs.readFileSync(seg.path);
      const fixes: Array<{ at: number; rec: Buffer }> = [];
      for (let i = 0; i < seg.positions.length; i++) {
        const at = seg.positions[i]!;
        const end = i + 1 < seg.positions.length ? seg.positions[i + 1]! : seg.size;
        const seq = seg.firstSeq + i;
        const p = probeRecord(buf.subarray(0, end), at);
        if (p.status === 'ok' && p.entry.seq === seq && p.size === end - at) continue;
        let rec: Buffer;
        try {
          rec = encodeTombstone(seq, seg.times[i]!, filler, end - at);
        } catch {
          throw new JournalCorruptError(seg.path, at, 'damaged record too small to replace by a tombstone');
        }
        fixes.push({ at, rec });
        replaced.push(seq);
      }
      if (fixes.length === 0) continue;
      const fd = fs.openSync(seg.path, 'r+');
      try {
        for (const f of fixes) fs.writeSync(fd, f.rec, 0, f.rec.length, f.at);
        // Durable before the sender may read and ship them: a crash must not bring the damaged bytes back.
        fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    if (replaced.length > 0) this.markAllDirty();
    return replaced;
  }

  /**
   * Voids the offline placeholders an unfinished export left (initial replication by export/import, R-POL-6):
   * each is overwritten in place by a tombstone of the same seq and size, so the stream keeps its seqs but no
   * longer needs the seed file the interrupted export never finished. Safe only when a new export follows that
   * copies every block again (their bytes travel in its seed). Returns the seqs voided.
   */
  async voidOfflinePlaceholders(): Promise<number[]> {
    this.assertUsable();
    await this.flush();
    const voided: number[] = [];
    for (const seg of this.segments) {
      if (seg.positions.length === 0) continue;
      const buf = fs.readFileSync(seg.path);
      const fixes: Array<{ at: number; rec: Buffer }> = [];
      for (let i = 0; i < seg.positions.length; i++) {
        const at = seg.positions[i]!;
        const p = probeRecord(buf, at);
        if (p.status !== 'ok' || p.entry.kind !== 'offline') continue;
        fixes.push({ at, rec: encodeTombstone(p.entry.seq, p.entry.time, p.entry.diskId, p.size) });
        voided.push(p.entry.seq);
      }
      if (fixes.length === 0) continue;
      const fd = fs.openSync(seg.path, 'r+');
      try {
        for (const f of fixes) fs.writeSync(fd, f.rec, 0, f.rec.length, f.at);
        // Durable before the sender may read them again: a crash must not bring the placeholders back.
        fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    return voided;
  }

  /**
   * Ends a resync: appends the resync `end` to the stream and, once it is durable, drops the dirty bitmaps. Only
   * valid when the resync started by `beginResync` completed and no overflow happened since; resolves false
   * (bitmaps kept) otherwise.
   */
  async completeResync(): Promise<boolean> {
    if (this.dirtyState !== 'resync') return this.dirtyState === null;
    // A streamed copy still open keeps the bracket open: its own end closes it.
    if (this.openCopies === 0) {
      const seq = this.nextSeq++;
      this.enqueue({ kind: 'resync', seq, time: this.clock(), phase: 'end' });
      // The bitmaps may go only once the end is durable: losing it in a crash would leave the replica believing
      // it is inside a resync that nothing will ever end.
      await this.waitDurable(seq);
    }
    if (this.dirtyState !== 'resync') return false;
    fs.rmSync(join(this.dir, DIRTY_FILE), { force: true });
    fsyncDir(this.dir);
    this.dirtyState = null;
    this.dirty = new Map();
    return true;
  }

  /** Writes what is pending, makes it durable and closes the files. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.failure) await this.flush();
      if (this.dirtyPersist) await this.dirtyPersist;
    } finally {
      this.closed = true;
      fs.closeSync(this.activeFd);
    }
  }

  private appendMutation(
    diskId: string,
    offset: number,
    length: number,
    dataBytes: number,
    fua: boolean,
    make: (seq: number, time: number) => JournalEntry,
  ): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error('journal is closed'));
    if (this.dirtyState !== 'overflow') {
      const size = RECORD_HEADER_SIZE + Buffer.byteLength(diskId) + dataBytes;
      if (this.stored + this.pendingBytes + size <= this.capBytes) {
        const seq = this.nextSeq++;
        this.enqueue(make(seq, this.clock()));
        return fua ? this.waitDurable(seq) : this.waitWritten(seq);
      }
      this.enterOverflow();
    }
    return this.markDirty(diskId, offset, length);
  }

  private enterOverflow(): void {
    this.ensureBitmaps();
    this.dirtyState = 'overflow';
    this.dirtyChanged = true;
  }

  private ensureBitmaps(): void {
    for (const d of this.disks.values()) {
      if (!this.dirty.has(d.id)) this.dirty.set(d.id, new DirtyBitmap(d.sizeBytes, this.dirtyGranule));
    }
  }

  /** Sets the dirty bits and resolves once a bitmap holding them is durable (written before the mutation). */
  private markDirty(diskId: string, offset: number, length: number): Promise<void> {
    const map = this.dirty.get(diskId)!;
    if (map.mark(offset, length)) this.dirtyChanged = true;
    if (!this.dirtyChanged) return this.dirtyPersist ?? Promise.resolve();
    return this.persistDirty();
  }

  /** One persist at a time; changes made while one runs are covered by the next. */
  private persistDirty(): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.dirtyPersist) await this.dirtyPersist.catch(() => undefined);
      // Let every mutation of this turn set its bits first, so they share one file write.
      await new Promise<void>((r) => setImmediate(r));
      if (!this.dirtyChanged) return;
      this.dirtyChanged = false;
      writeDirtyFile(join(this.dir, DIRTY_FILE), this.dirtyState ?? 'overflow', this.dirty);
    };
    const p = run();
    this.dirtyPersist = p;
    void p
      .finally(() => {
        if (this.dirtyPersist === p) this.dirtyPersist = null;
      })
      .catch(() => undefined);
    return p;
  }

  private enqueue(entry: StoredEntry): void {
    const buf = encodeRecord(entry);
    this.pending.push({
      seq: entry.seq,
      buf,
      time: entry.time,
      ...(entry.kind === 'streamed' ? { streamed: entry.length } : {}),
    });
    this.pendingBytes += buf.length;
    this.scheduleWrite();
  }

  private scheduleWrite(): void {
    if (this.writing || this.writeScheduled) return;
    this.writeScheduled = true;
    // Group commit: everything appended in this turn of the event loop goes out in one writev.
    setImmediate(() => {
      this.writeScheduled = false;
      void this.writeLoop();
    });
  }

  private async writeLoop(): Promise<void> {
    if (this.writing || this.failure) return;
    this.writing = true;
    try {
      for (;;) {
        let active = this.segments[this.segments.length - 1]!;
        let n = 0;
        let bytes = 0;
        while (n < this.pending.length) {
          const p = this.pending[n]!;
          if (!p.buf) break;
          if (bytes > 0 && active.size + bytes + p.buf.length > this.segmentBytes) break;
          bytes += p.buf.length;
          n++;
        }
        if (n === 0) break;
        if (active.size > 0 && active.size + bytes > this.segmentBytes) {
          active = await this.rotate(this.pending[0]!.seq);
          continue;
        }
        const batch = this.pending.splice(0, n);
        const bufs = batch.map((p) => p.buf!);
        this.appendCalls++;
        await writevFully(this.activeFd, bufs, active.size);
        for (const p of batch) {
          active.positions.push(active.size);
          active.times.push(p.time);
          active.size += p.buf!.length;
          if (p.streamed !== undefined) addStreamed(active, p.seq, p.streamed);
        }
        this.stored += bytes;
        this.pendingBytes -= bytes;
        this.written = batch[batch.length - 1]!.seq;
        settle(this.writeWaiters, this.written);
        this.notifyProgress();
        if (this.syncWaiters.length > 0 && !this.syncing && this.written >= this.syncWaiters[0]!.seq) {
          this.startSync();
        }
      }
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    } finally {
      this.writing = false;
    }
    if (this.pending.length > 0 && this.pending[0]!.buf && !this.failure) this.scheduleWrite();
    if (this.syncWaiters.length > 0 && !this.syncing && !this.failure) this.startSync();
  }

  private async rotate(firstSeq: number): Promise<Segment> {
    // The old segment must be durable before it stops being the one `fdatasync` covers; no sync may run on its
    // fd while it is closed.
    this.rotating = true;
    try {
      if (this.syncing) await this.syncing;
      await fdatasync(this.activeFd);
      this.durable = Math.max(this.durable, this.written);
      settle(this.syncWaiters, this.durable);
      const path = segmentPath(this.dir, firstSeq);
      const fd = fs.openSync(path, 'w+');
      // The new file's directory entry must survive a crash, or records acknowledged in it would vanish.
      fsyncDir(this.dir);
      fs.closeSync(this.activeFd);
      this.activeFd = fd;
      const seg = emptySegment(firstSeq, path);
      this.segments.push(seg);
      return seg;
    } finally {
      this.rotating = false;
    }
  }

  private waitWritten(seq: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.written >= seq) return Promise.resolve();
    return new Promise((resolve, reject) => this.writeWaiters.push({ seq, resolve, reject }));
  }

  private waitDurable(seq: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.durable >= seq) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.syncWaiters.push({ seq, resolve, reject }));
    if (!this.syncing) this.startSync();
    return p;
  }

  private startSync(): void {
    const run = async (): Promise<void> => {
      while (this.syncWaiters.length > 0 && !this.failure && !this.rotating) {
        const need = this.syncWaiters[0]!.seq;
        if (this.written < need) {
          // Wait for the writer to get the record out; the writer restarts syncing when it finishes.
          return;
        }
        const covered = this.written;
        this.syncCalls++;
        await fdatasync(this.activeFd);
        this.durable = Math.max(this.durable, covered);
        settle(this.syncWaiters, this.durable);
      }
    };
    const p = run().catch((err: unknown) => this.fail(err instanceof Error ? err : new Error(String(err))));
    this.syncing = p;
    void p.finally(() => {
      if (this.syncing === p) this.syncing = null;
      if (this.syncWaiters.length > 0 && !this.writing && !this.failure) {
        const need = this.syncWaiters[0]!.seq;
        if (this.written >= need) this.startSync();
      }
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.writeWaiters.splice(0)) w.reject(this.failure);
    for (const w of this.syncWaiters.splice(0)) w.reject(this.failure);
  }

  private notifyProgress(): void {
    for (const l of this.progressListeners) l();
  }

  private assertUsable(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new Error('journal is closed');
  }

  private segmentOf(seq: number): Segment {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.firstSeq <= seq) lo = mid;
      else hi = mid - 1;
    }
    return this.segments[lo]!;
  }

  private positionAfter(seg: Segment, seq: number): number {
    const i = seq - seg.firstSeq + 1;
    return i < seg.positions.length ? seg.positions[i]! : seg.size;
  }
}

function segmentPath(dir: string, firstSeq: number): string {
  return join(dir, `${SEGMENT_PREFIX}${String(firstSeq).padStart(16, '0')}${SEGMENT_SUFFIX}`);
}

function emptySegment(firstSeq: number, path: string): Segment {
  return { firstSeq, path, size: 0, positions: [], times: [], streamSeqs: [], streamCum: [] };
}

function addStreamed(seg: Segment, seq: number, length: number): void {
  seg.streamSeqs.push(seq);
  seg.streamCum.push((seg.streamCum.at(-1) ?? 0) + length);
}

/** Index of the first element >= `x` in ascending `xs` (`xs.length` when none). */
function firstAtLeast(xs: readonly number[], x: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function settle(waiters: Waiter[], upto: number): void {
  let n = 0;
  while (n < waiters.length && waiters[n]!.seq <= upto) n++;
  for (const w of waiters.splice(0, n)) w.resolve();
}

/**
 * Reads a segment and indexes its records. In the last segment a bad record with nothing valid after it is a
 * torn tail (a crash mid-append) and is cut off; anywhere else a bad record is corruption.
 */
function scanSegment(path: string, firstSeq: number, isLast: boolean): Segment {
  const buf = fs.readFileSync(path);
  const seg = emptySegment(firstSeq, path);
  const { positions, times } = seg;
  let at = 0;
  while (at < buf.length) {
    const p = probeRecord(buf, at, true);
    const expected = firstSeq + positions.length;
    if (p.status === 'ok' && p.entry.seq === expected) {
      positions.push(at);
      times.push(p.entry.time);
      if (p.entry.kind === 'streamed') addStreamed(seg, p.entry.seq, p.entry.length);
      at += p.size;
      continue;
    }
    const reason =
      p.status === 'ok'
        ? `seq ${p.entry.seq} where ${expected} was expected`
        : p.status === 'bad'
          ? p.reason
          : 'truncated record';
    if (!isLast || validRecordAfter(buf, at + 1, expected)) throw new JournalCorruptError(path, at, reason);
    // A torn tail: only an append that never completed (and so was never acknowledged) is lost.
    fs.truncateSync(path, at);
    const fd = fs.openSync(path, 'r+');
    try {
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    break;
  }
  seg.size = at;
  return seg;
}

/** True when a valid record with seq >= `minSeq` starts somewhere at or after `from`. */
function validRecordAfter(buf: Buffer, from: number, minSeq: number): boolean {
  const magic = Buffer.alloc(4);
  magic.writeUInt32LE(RECORD_MAGIC, 0);
  for (let at = buf.indexOf(magic, from); at >= 0; at = buf.indexOf(magic, at + 1)) {
    const p = probeRecord(buf, at);
    if (p.status === 'ok' && p.entry.seq >= minSeq) return true;
  }
  return false;
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

async function writevFully(fd: number, bufs: Buffer[], position: number): Promise<void> {
  let rest = bufs;
  let pos = position;
  while (rest.length > 0) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.writev(fd, rest, pos, (err, written) => (err ? reject(err) : resolve(written))),
    );
    pos += n;
    let skip = n;
    const next: Buffer[] = [];
    for (const b of rest) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      next.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    rest = next;
  }
}

async function readFully(fd: number, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.read(fd, buf, done, buf.length - done, position + done, (err, r) =>
        err ? reject(err) : resolve(r),
      ),
    );
    if (n === 0) throw new Error(`unexpected end of journal segment at ${position + done}`);
    done += n;
  }
}
