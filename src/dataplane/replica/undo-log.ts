import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MarkerType } from '../changes.js';
import { ReplicaError } from './errors.js';
import { fdatasync, pwriteAll } from './fs-util.js';
import {
  encodeRecord,
  FLAG_LAST,
  RECORD_HEADER_SIZE,
  RecordKind,
  recordSize,
  scanRecords,
  UNDO_MAGIC,
  type RecordFields,
} from './records.js';
import { fsyncDir, type UndoPosition } from './state-file.js';
import { DiskUndoIndex } from './undo-index.js';

/** A recovery point kept by the store: a processed marker. */
export interface RecoveryPointInfo {
  readonly id: string;
  /** The marker's seq: the point holds every change with a smaller seq. */
  readonly seq: number;
  /** Source time of the marker (ms since the epoch). */
  readonly time: number;
  readonly type: MarkerType;
  /** True while the marker is received but not yet processed (the point cannot be opened yet). */
  readonly pending: boolean;
}

/** What the processor saves before applying one batch. */
export type UndoInput =
  | {
      readonly kind: 'data';
      readonly seq: number;
      readonly time: number;
      readonly diskId: string;
      readonly offset: number;
      readonly data: Buffer;
      readonly last: boolean;
    }
  | {
      readonly kind: 'zero';
      readonly seq: number;
      readonly time: number;
      readonly diskId: string;
      readonly offset: number;
      readonly length: number;
      readonly last: boolean;
    }
  | {
      readonly kind: 'point';
      readonly seq: number;
      readonly time: number;
      readonly pointId: string;
      readonly markerType: MarkerType;
    };

interface UndoSegment {
  readonly no: number;
  readonly file: string;
  readonly fd: number;
  size: number;
  maxSeq: number;
}

const SEGMENT_NAME = /^([0-9a-f]{8})\.log$/;

/** Options of `UndoLog.open`. */
export interface UndoLogOpenOptions {
  readonly diskIds: readonly string[];
  /** Records before this position are known durable; damage there is corruption, not a torn tail. */
  readonly undoEnd: UndoPosition;
  /** Records with a smaller seq were pruned and are skipped. */
  readonly floorSeq: number;
  /** Changes above this seq are not in the base yet; their records (if any) are the redo set. */
  readonly appliedSeq: number;
  readonly segmentBytes: number;
}

/**
 * The undo log: segment files `undo/<number, 8 hex>.log` of `UNDO_MAGIC` records holding, for every applied
 * change, the exact bytes it overwrote (or a zero-old record when they were all zeros), and a POINT record for
 * every processed marker. Records are appended in seq order; the in-memory per-disk index and the point list are
 * rebuilt from the files on open.
 */
export class UndoLog {
  /** Per-disk index of live undo entries. */
  readonly indexes = new Map<string, DiskUndoIndex>();
  private readonly dir: string;
  private readonly segmentBytes: number;
  private readonly segments: UndoSegment[] = [];
  private pointList: RecoveryPointInfo[] = [];
  /** Changes above the applied seq whose undo records are complete on disk (skip saving them again). */
  private readonly redo = new Set<number>();
  /** Markers above the applied seq whose POINT record is already on disk. */
  private readonly redoPoints = new Set<string>();
  /** Points whose marker is saved but whose batch is not yet in the base: not openable until `applied`. */
  private deferred: RecoveryPointInfo[] = [];
  private floor: number;
  private maxChangeSeq = 0;
  /** Last seq known to be in the base (`applied`): a point saved later stays deferred until its changes are. */
  private appliedSeq = 0;

  private constructor(dir: string, segmentBytes: number, floorSeq: number, diskIds: readonly string[]) {
    this.dir = dir;
    this.segmentBytes = segmentBytes;
    this.floor = floorSeq;
    for (const id of diskIds) this.indexes.set(id, new DiskUndoIndex());
  }

  /** Opens (creating) the log, truncating a torn tail past `undoEnd` and any incomplete change at the end. */
  static open(dir: string, options: UndoLogOpenOptions): UndoLog {
    fs.mkdirSync(dir, { recursive: true });
    const log = new UndoLog(dir, options.segmentBytes, options.floorSeq, options.diskIds);
    log.appliedSeq = options.appliedSeq;
    try {
      log.load(options);
    } catch (err) {
      log.close();
      throw err;
    }
    return log;
  }

  private load(o: UndoLogOpenOptions): void {
    const names = fs
      .readdirSync(this.dir)
      .filter((n) => SEGMENT_NAME.test(n))
      .sort();
    const [endSeg, endPos] = o.undoEnd;
    names.forEach((name, i) => {
      const no = parseInt(SEGMENT_NAME.exec(name)![1]!, 16);
      const file = path.join(this.dir, name);
      const fd = fs.openSync(file, 'r+');
      const seg: UndoSegment = { no, file, fd, size: 0, maxSeq: 0 };
      this.segments.push(seg);
      const buf = fs.readFileSync(fd);
      const isLast = i === names.length - 1;
      const mustBeValid = no < endSeg || !isLast ? buf.length : no === endSeg ? endPos : 0;
      const scan = scanRecords(UNDO_MAGIC, buf, file, mustBeValid);
      let validEnd = scan.validEnd;
      // A change saved as several records is complete only with its LAST record; an incomplete one at the tail
      // was being written when the processor died (its base writes never started), so it is dropped and redone.
      let k = scan.records.length;
      while (k > 0) {
        const r = scan.records[k - 1]!.record;
        if (r.kind === RecordKind.POINT || (r.flags & FLAG_LAST) !== 0 || r.seq <= o.appliedSeq) break;
        k--;
      }
      if (k < scan.records.length) validEnd = scan.records[k]!.pos;
      if (validEnd < buf.length) {
        if (validEnd < mustBeValid) {
          throw new ReplicaError('REPLICA_CORRUPT', `${file}: incomplete change inside the durable part`);
        }
        fs.ftruncateSync(fd, validEnd);
        fs.fdatasyncSync(fd);
      }
      seg.size = validEnd;
      for (const { record, pos } of scan.records.slice(0, k)) {
        seg.maxSeq = Math.max(seg.maxSeq, record.seq);
        this.index(record, fd, pos, o.appliedSeq);
      }
    });
    // Records kept past the applied seq will steer the redo; they must be durable before any base write relies
    // on them (they may have reached only the page cache before the crash).
    for (const seg of this.segments) fs.fdatasyncSync(seg.fd);
  }

  /**
   * Files a record. `redoAbove`: records of changes above it are remembered as already saved (a redo after a
   * crash must not save them again); a point becomes visible only once every change before it is applied.
   */
  private index(r: RecordFields, fd: number, pos: number, redoAbove: number): void {
    if (r.seq > redoAbove) {
      if (r.kind === RecordKind.POINT) this.redoPoints.add(r.id);
      else if ((r.flags & FLAG_LAST) !== 0) this.redo.add(r.seq);
    }
    if (r.seq < this.floor) return;
    if (r.kind === RecordKind.POINT) {
      // A point becomes visible only once every change before it is in the base (see `applied`): the processor
      // saves a batch's POINT record before it writes the batch's earlier changes into the base.
      const list = r.seq - 1 <= this.appliedSeq ? this.pointList : this.deferred;
      list.push({
        id: r.id,
        seq: r.seq,
        time: r.time,
        type: r.markerType ?? 'crash-consistent',
        pending: false,
      });
      return;
    }
    this.maxChangeSeq = Math.max(this.maxChangeSeq, r.seq);
    const idx = this.indexes.get(r.id);
    if (!idx)
      throw new ReplicaError('REPLICA_CORRUPT', `undo record seq ${r.seq} names unknown disk ${r.id}`);
    const dataPos = pos + RECORD_HEADER_SIZE + Buffer.byteLength(r.id, 'utf8');
    idx.add({
      seq: r.seq,
      offset: r.offset,
      length: r.length,
      fd: r.kind === RecordKind.UNDO_DATA ? fd : -1,
      pos: dataPos,
    });
  }

  /** Whether the undo records of change `seq` are already complete on disk (a redo after a crash must not resave). */
  hasRecordsFor(seq: number): boolean {
    return this.redo.has(seq);
  }

  /** Whether the POINT record of marker `pointId` is already on disk (from before a crash). */
  hasPointRecord(pointId: string): boolean {
    return this.redoPoints.has(pointId);
  }

  /**
   * Tells the log that every change up to `seq` is now in the base (written, not necessarily synced: reads see
   * it): points up to `seq` become visible and redo knowledge up to `seq` is forgotten.
   */
  applied(seq: number): void {
    this.appliedSeq = Math.max(this.appliedSeq, seq);
    for (const s of this.redo) if (s <= seq) this.redo.delete(s);
    if (this.redo.size === 0 && this.deferred.length === 0) this.redoPoints.clear();
    // A point with seq s holds the changes before s: it is complete once s - 1 is applied.
    while (this.deferred.length > 0 && this.deferred[0]!.seq - 1 <= seq) {
      const p = this.deferred.shift()!;
      if (p.seq >= this.floor) this.pointList.push(p);
    }
  }

  /** Processed points in seq order (none pending). */
  points(): readonly RecoveryPointInfo[] {
    return this.pointList;
  }

  /** Highest seq of a change with saved bytes (0 when none): changes after the newest point show here. */
  lastChangeSeq(): number {
    return this.maxChangeSeq;
  }

  /** Seq below which everything was pruned. */
  floorSeq(): number {
    return this.floor;
  }

  /** Bytes of undo segment files on disk. */
  bytes(): number {
    let n = 0;
    for (const seg of this.segments) n += seg.size;
    return n;
  }

  /** Position just past the last record written. */
  end(): UndoPosition {
    const seg = this.segments[this.segments.length - 1];
    return seg ? [seg.no, seg.size] : [0, 0];
  }

  /**
   * Appends records (all in one segment), makes them durable, and only then files them in the index: the base
   * may be overwritten once this resolves, and views may read the saved bytes.
   */
  async append(inputs: readonly UndoInput[]): Promise<void> {
    if (inputs.length === 0) return;
    let seg = this.segments[this.segments.length - 1];
    if (!seg || seg.size >= this.segmentBytes) seg = this.newSegment(seg ? seg.no + 1 : 0);
    const fields = inputs.map(fieldsOf);
    const total = fields.reduce((n, f) => n + recordSize(f), 0);
    const buf = Buffer.allocUnsafe(total);
    const at: number[] = [];
    let p = 0;
    for (const f of fields) {
      at.push(p);
      p = encodeRecord(UNDO_MAGIC, f, buf, p);
    }
    const base = seg.size;
    await pwriteAll(seg.fd, buf, base);
    // The write-ahead point: the old bytes must be on stable storage before the base is overwritten.
    await fdatasync(seg.fd);
    seg.size = base + total;
    fields.forEach((f, i) => {
      seg.maxSeq = Math.max(seg.maxSeq, f.seq);
      this.index(f, seg.fd, base + at[i]!, Number.MAX_SAFE_INTEGER);
    });
  }

  /**
   * Drops points and undo entries with seq < `floorSeq` and deletes segments that only held those. The caller
   * has made the new floor durable (state file) first, so a crash mid-way leaves files that are skipped.
   */
  prune(floorSeq: number): void {
    if (floorSeq <= this.floor) return;
    this.floor = floorSeq;
    this.pointList = this.pointList.filter((p) => p.seq >= floorSeq);
    for (const idx of this.indexes.values()) idx.prune(floorSeq);
    let removed = false;
    while (this.segments.length > 1 && this.segments[0]!.maxSeq < floorSeq) {
      const seg = this.segments.shift()!;
      fs.closeSync(seg.fd);
      fs.rmSync(seg.file, { force: true });
      removed = true;
    }
    if (removed) fsyncDir(this.dir);
  }

  /** Deletes every record and starts a new, empty segment (after a commit). Returns the new end position. */
  dropAll(): UndoPosition {
    const next = (this.segments[this.segments.length - 1]?.no ?? -1) + 1;
    for (const seg of this.segments) {
      fs.closeSync(seg.fd);
      fs.rmSync(seg.file, { force: true });
    }
    this.segments.length = 0;
    this.pointList = [];
    this.deferred = [];
    this.maxChangeSeq = 0;
    this.redo.clear();
    this.redoPoints.clear();
    for (const idx of this.indexes.values()) idx.clear();
    this.newSegment(next);
    return this.end();
  }

  /** Closes the segment files. */
  close(): void {
    for (const seg of this.segments) fs.closeSync(seg.fd);
    this.segments.length = 0;
  }

  private newSegment(no: number): UndoSegment {
    const file = path.join(this.dir, `${no.toString(16).padStart(8, '0')}.log`);
    const fd = fs.openSync(file, 'w+');
    fsyncDir(this.dir);
    const seg: UndoSegment = { no, file, fd, size: 0, maxSeq: 0 };
    this.segments.push(seg);
    return seg;
  }
}

function fieldsOf(u: UndoInput): RecordFields {
  switch (u.kind) {
    case 'data':
      return {
        kind: RecordKind.UNDO_DATA,
        flags: u.last ? FLAG_LAST : 0,
        seq: u.seq,
        time: u.time,
        offset: u.offset,
        length: u.data.length,
        id: u.diskId,
        data: u.data,
      };
    case 'zero':
      return {
        kind: RecordKind.UNDO_ZERO,
        flags: u.last ? FLAG_LAST : 0,
        seq: u.seq,
        time: u.time,
        offset: u.offset,
        length: u.length,
        id: u.diskId,
      };
    case 'point':
      return {
        kind: RecordKind.POINT,
        flags: FLAG_LAST,
        markerType: u.markerType,
        seq: u.seq,
        time: u.time,
        offset: 0,
        length: 0,
        id: u.pointId,
      };
  }
}
