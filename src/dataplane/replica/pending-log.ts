import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Change, MarkerType } from '../changes.js';
import { ReplicaError } from './errors.js';
import { fdatasync, preadExact, pwriteAll } from './fs-util.js';
import {
  decodeRecord,
  encodeRecord,
  FLAG_RESYNC_BEGIN,
  FLAG_RESYNC_END,
  PENDING_MAGIC,
  RecordKind,
  recordSize,
  scanRecords,
  type RecordFields,
} from './records.js';
import { fsyncDir } from './state-file.js';

/** One received change that is not yet processed, and where its record lives. */
export interface PendingEntry {
  readonly seq: number;
  readonly kind: Change['kind'];
  readonly time: number;
  /** Bytes the change carries (write data) or covers (zero); 0 for markers. */
  readonly bytes: number;
  readonly segment: PendingSegment;
  readonly pos: number;
  readonly size: number;
  /** Markers only. */
  readonly pointId?: string;
  readonly markerType?: MarkerType;
}

/** A pending-log segment file, owned by the log. */
export interface PendingSegment {
  readonly firstSeq: number;
  readonly file: string;
  readonly fd: number;
  size: number;
  lastSeq: number;
}

const SEGMENT_NAME = /^([0-9a-f]{16})\.log$/;

/**
 * The durable log of received, not yet processed changes: segment files `pending/<first seq, 16 hex>.log` of
 * `PENDING_MAGIC` records (see `records.ts`), appended with one write and one `fdatasync` per received batch.
 * On open, a torn tail of the last segment (a batch that was never acknowledged) is truncated, while a damaged
 * record anywhere else is refused with `REPLICA_CORRUPT`.
 */
export class PendingLog {
  private readonly dir: string;
  private readonly segmentBytes: number;
  private readonly segments: PendingSegment[] = [];
  private entries: PendingEntry[] = [];
  private lastSeq: number;
  private pendingBytes = 0;

  private constructor(dir: string, segmentBytes: number, floorSeq: number) {
    this.dir = dir;
    this.segmentBytes = segmentBytes;
    this.lastSeq = floorSeq;
  }

  /**
   * Opens (creating) the log in `dir`. Changes with seq <= `appliedSeq` are already in the base and are skipped;
   * segments holding only those are deleted.
   */
  static open(dir: string, appliedSeq: number, segmentBytes: number): PendingLog {
    fs.mkdirSync(dir, { recursive: true });
    const log = new PendingLog(dir, segmentBytes, appliedSeq);
    const names = fs
      .readdirSync(dir)
      .filter((n) => SEGMENT_NAME.test(n))
      .sort();
    try {
      names.forEach((name, i) => log.load(name, i === names.length - 1, appliedSeq));
    } catch (err) {
      log.close();
      throw err;
    }
    return log;
  }

  private load(name: string, isLast: boolean, appliedSeq: number): void {
    const file = path.join(this.dir, name);
    const fd = fs.openSync(file, 'r+');
    const buf = fs.readFileSync(fd);
    let scan;
    try {
      scan = scanRecords(PENDING_MAGIC, buf, file, isLast ? 0 : buf.length);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    if (scan.validEnd < buf.length) {
      // Torn tail: the batch being appended when the receiver died was never acknowledged, so dropping it loses
      // nothing the source does not still hold.
      fs.ftruncateSync(fd, scan.validEnd);
      fs.fdatasyncSync(fd);
    }
    const seg: PendingSegment = {
      firstSeq: parseInt(SEGMENT_NAME.exec(name)![1]!, 16),
      file,
      fd,
      size: scan.validEnd,
      lastSeq: 0,
    };
    this.segments.push(seg);
    for (const { record, pos, size } of scan.records) {
      const rebase = record.kind === RecordKind.MARKER && (record.flags & FLAG_RESYNC_BEGIN) !== 0;
      if (
        record.seq !== this.lastSeq + 1 &&
        record.seq > appliedSeq &&
        !(rebase && record.seq > this.lastSeq)
      ) {
        throw new ReplicaError(
          'REPLICA_CORRUPT',
          `${file}: record at byte ${pos} has seq ${record.seq}, expected ${this.lastSeq + 1}`,
        );
      }
      seg.lastSeq = record.seq;
      if (record.seq <= appliedSeq) continue;
      this.lastSeq = record.seq;
      this.push(entryOf(record, seg, pos, size));
    }
    if (seg.lastSeq === 0) seg.lastSeq = seg.firstSeq - 1;
  }

  /** Highest seq received (durably), or the applied seq when nothing is pending. */
  lastReceivedSeq(): number {
    return this.lastSeq;
  }

  /** Changes received and not yet processed, in seq order. */
  pending(): readonly PendingEntry[] {
    return this.entries;
  }

  /** Sum of the bytes the pending changes carry or cover. */
  bytes(): number {
    return this.pendingBytes;
  }

  /**
   * Appends changes that continue the stream (the caller checked the sequence) and resolves once they are on
   * stable storage.
   */
  async append(changes: readonly Change[]): Promise<void> {
    if (changes.length === 0) return;
    let seg = this.segments[this.segments.length - 1];
    if (!seg || seg.size >= this.segmentBytes) seg = this.newSegment(changes[0]!.seq);
    const fields = changes.map(fieldsOf);
    const total = fields.reduce((n, f) => n + recordSize(f), 0);
    const buf = Buffer.allocUnsafe(total);
    const at: number[] = [];
    let pos = 0;
    for (const f of fields) {
      at.push(pos);
      pos = encodeRecord(PENDING_MAGIC, f, buf, pos);
    }
    const base = seg.size;
    await pwriteAll(seg.fd, buf, base);
    // The durability point of `receive`: the transport acknowledges only after this resolves.
    await fdatasync(seg.fd);
    seg.size = base + total;
    fields.forEach((f, i) => {
      const size = (at[i + 1] ?? total) - at[i]!;
      this.push(entryOf(f, seg, base + at[i]!, size));
    });
    seg.lastSeq = changes[changes.length - 1]!.seq;
    this.lastSeq = seg.lastSeq;
  }

  /**
   * Records that everything up to `seq` was received and applied without passing through the log (the store's
   * direct apply before the first point). Only valid when nothing is pending.
   */
  skipTo(seq: number): void {
    if (this.entries.length > 0) throw new Error('pending changes would be skipped');
    if (seq > this.lastSeq) this.lastSeq = seq;
  }

  /** Reads up to `maxCount` pending changes (stopping early past `maxBytes`) with seq <= `uptoSeq`. */
  async read(uptoSeq: number, maxCount: number, maxBytes: number): Promise<Change[]> {
    const out: Change[] = [];
    let bytes = 0;
    let i = 0;
    while (i < this.entries.length && out.length < maxCount && bytes < maxBytes) {
      const first = this.entries[i]!;
      if (first.seq > uptoSeq) break;
      let j = i + 1;
      let end = first.pos + first.size;
      while (
        j < this.entries.length &&
        j - i + out.length < maxCount &&
        bytes + end - first.pos < maxBytes &&
        this.entries[j]!.segment === first.segment &&
        this.entries[j]!.seq <= uptoSeq
      ) {
        end = this.entries[j]!.pos + this.entries[j]!.size;
        j++;
      }
      const buf = Buffer.allocUnsafe(end - first.pos);
      await preadExact(first.segment.fd, buf, 0, buf.length, first.pos);
      for (let k = i; k < j; k++) {
        const e = this.entries[k]!;
        const r = decodeRecord(PENDING_MAGIC, buf, e.pos - first.pos);
        if (r.status !== 'ok' || r.record.seq !== e.seq) {
          throw new ReplicaError(
            'REPLICA_CORRUPT',
            `${e.segment.file}: record seq ${e.seq} at byte ${e.pos} no longer reads back intact`,
          );
        }
        out.push(changeOf(r.record));
      }
      bytes += end - first.pos;
      i = j;
    }
    return out;
  }

  /** Forgets changes with seq <= `seq` (now applied) and deletes segments that hold nothing else. */
  dropUpTo(seq: number): void {
    let n = 0;
    while (n < this.entries.length && this.entries[n]!.seq <= seq) {
      this.pendingBytes -= this.entries[n]!.bytes;
      n++;
    }
    if (n > 0) this.entries = this.entries.slice(n);
    let removed = false;
    // The newest segment stays (appends continue there) unless it is full and applied.
    while (this.segments.length > 0) {
      const seg = this.segments[0]!;
      const isLast = this.segments.length === 1;
      if (seg.lastSeq > seq || (isLast && seg.size < this.segmentBytes)) break;
      fs.closeSync(seg.fd);
      fs.rmSync(seg.file, { force: true });
      this.segments.shift();
      removed = true;
    }
    if (removed) fsyncDir(this.dir);
  }

  /** Deletes every segment (the store was committed: nothing pending will ever be applied). */
  discardAll(lastSeq: number): void {
    for (const seg of this.segments) {
      fs.closeSync(seg.fd);
      fs.rmSync(seg.file, { force: true });
    }
    this.segments.length = 0;
    this.entries = [];
    this.pendingBytes = 0;
    this.lastSeq = lastSeq;
    fsyncDir(this.dir);
  }

  /** Closes the segment files. */
  close(): void {
    for (const seg of this.segments) fs.closeSync(seg.fd);
    this.segments.length = 0;
  }

  private push(e: PendingEntry): void {
    this.entries.push(e);
    this.pendingBytes += e.bytes;
  }

  private newSegment(firstSeq: number): PendingSegment {
    const file = path.join(this.dir, `${firstSeq.toString(16).padStart(16, '0')}.log`);
    const fd = fs.openSync(file, 'w+');
    // The new name must survive a crash, or the records fsynced into it would be unreachable.
    fsyncDir(this.dir);
    const seg: PendingSegment = { firstSeq, file, fd, size: 0, lastSeq: firstSeq - 1 };
    this.segments.push(seg);
    return seg;
  }
}

function fieldsOf(c: Change): RecordFields {
  switch (c.kind) {
    case 'write':
      return {
        kind: RecordKind.WRITE,
        flags: 0,
        seq: c.seq,
        time: c.time,
        offset: c.offset,
        length: c.data.length,
        id: c.diskId,
        data: c.data,
      };
    case 'zero':
      return {
        kind: RecordKind.ZERO,
        flags: 0,
        seq: c.seq,
        time: c.time,
        offset: c.offset,
        length: c.length,
        id: c.diskId,
      };
    case 'resync':
      return {
        kind: RecordKind.MARKER,
        flags: c.phase === 'begin' ? FLAG_RESYNC_BEGIN : FLAG_RESYNC_END,
        seq: c.seq,
        time: c.time,
        offset: 0,
        length: 0,
        id: '',
      };
    case 'marker':
      return {
        kind: RecordKind.MARKER,
        flags: 0,
        markerType: c.markerType,
        seq: c.seq,
        time: c.time,
        offset: 0,
        length: 0,
        id: c.pointId,
      };
  }
}

function changeOf(r: RecordFields): Change {
  switch (r.kind) {
    case RecordKind.WRITE:
      return { kind: 'write', seq: r.seq, time: r.time, diskId: r.id, offset: r.offset, data: r.data! };
    case RecordKind.ZERO:
      return { kind: 'zero', seq: r.seq, time: r.time, diskId: r.id, offset: r.offset, length: r.length };
    case RecordKind.MARKER:
      if ((r.flags & (FLAG_RESYNC_BEGIN | FLAG_RESYNC_END)) !== 0) {
        return { kind: 'resync', seq: r.seq, time: r.time, phase: resyncPhase(r.flags) };
      }
      return {
        kind: 'marker',
        seq: r.seq,
        time: r.time,
        pointId: r.id,
        markerType: r.markerType ?? 'crash-consistent',
      };
    default:
      throw new ReplicaError('REPLICA_CORRUPT', `pending record seq ${r.seq} has undo kind ${r.kind}`);
  }
}

function resyncPhase(flags: number): 'begin' | 'end' {
  return (flags & FLAG_RESYNC_END) !== 0 ? 'end' : 'begin';
}

function entryOf(r: RecordFields, segment: PendingSegment, pos: number, size: number): PendingEntry {
  const kind =
    r.kind === RecordKind.WRITE
      ? 'write'
      : r.kind === RecordKind.ZERO
        ? 'zero'
        : (r.flags & (FLAG_RESYNC_BEGIN | FLAG_RESYNC_END)) !== 0
          ? 'resync'
          : 'marker';
  if (r.kind !== RecordKind.WRITE && r.kind !== RecordKind.ZERO && r.kind !== RecordKind.MARKER) {
    throw new ReplicaError(
      'REPLICA_CORRUPT',
      `${segment.file}: undo record kind ${r.kind} in the pending log`,
    );
  }
  return {
    seq: r.seq,
    kind,
    time: r.time,
    bytes: kind === 'marker' ? 0 : r.length,
    segment,
    pos,
    size,
    ...(kind === 'marker' ? { pointId: r.id, markerType: r.markerType ?? 'crash-consistent' } : {}),
  };
}
