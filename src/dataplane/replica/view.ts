import type { BlockBackend, Extent } from '../nbd/backend.js';
import { NbdError } from '../nbd/errors.js';
import { NbdErrno } from '../nbd/protocol.js';
import { preadExact, preadExactSync } from './fs-util.js';
import type { DiskUndoIndex, Resolution, UndoFill } from './undo-index.js';

/** What a view needs from its store: the disk's undo index, its base image, and a way to say it is gone. */
export interface ViewSource {
  readonly size: number;
  readonly index: DiskUndoIndex;
  /** Reads the base image (always at "latest processed"). */
  readBase(offset: number, length: number, into: Buffer): Promise<unknown>;
  /** Reads the base image on the calling thread (optional; used for small ranges). */
  readBaseSync?(offset: number, length: number, into: Buffer): unknown;
  /** Called once by `close()`. */
  release(): void;
}

/**
 * A read-only disk at a recovery point: each byte comes from the first undo entry at or after the point's seq
 * that covers it, else from the base image (DESIGN §2.5). Replication keeps applying underneath: the undo index is
 * consulted again after the base was read, so a change applied meanwhile (whose undo entry is always indexed
 * before its base write starts) can never leak a newer byte into the view.
 */
export class ReplicaView implements BlockBackend {
  readonly size: number;
  readonly readOnly = true;
  /** The recovery point this view shows. */
  readonly pointId: string;
  /** The point's seq: every change with a smaller seq is in the view, none after. */
  readonly pointSeq: number;
  private readonly source: ViewSource;
  private closed = false;

  constructor(source: ViewSource, pointId: string, pointSeq: number) {
    this.source = source;
    this.size = source.size;
    this.pointId = pointId;
    this.pointSeq = pointSeq;
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.assertOpen();
    const buf = into ?? Buffer.allocUnsafe(length);
    if (length === 0) return buf;
    const idx = this.source.index;
    const first = idx.resolve(this.pointSeq - 1, offset, length);
    const version = idx.version;
    const holes = first.holes;
    if (holes.length > 1) {
      // Base bytes in many pieces (an old point: undo entries scattered over the range): one base read over
      // the span of the holes costs one threadpool hop instead of one per hole; the undo pieces are copied over
      // it afterwards, so the point's bytes win where they differ.
      const a = holes[0]![0];
      const b = holes[holes.length - 1]![1];
      const span = buf.subarray(a - offset, b - offset);
      if (this.source.readBaseSync && b - a <= SYNC_BASE_SPAN_MAX) this.source.readBaseSync(a, b - a, span);
      else await this.source.readBase(a, b - a, span);
      await fillFromUndo(buf, offset, first);
    } else {
      // The hole (base) and the undo pieces cover disjoint parts of `buf`: all are read at once, so a read costs
      // the slowest piece, not a base read followed by the undo reads.
      await Promise.all([
        ...holes.map(([a, b]) => this.source.readBase(a, b - a, buf.subarray(a - offset, b - offset))),
        fillFromUndo(buf, offset, first),
      ]);
    }
    // Entries indexed while the base was read may cover bytes the base read already saw overwritten: re-resolve
    // the holes and fill them from those entries (after the base bytes, so the undo bytes win). An entry indexed
    // after this synchronous check belongs to a base write that starts after it.
    if (idx.version !== version) {
      for (const [a, b] of first.holes)
        await fillFromUndo(buf, offset, idx.resolve(this.pointSeq - 1, a, b - a));
    }
    return buf;
  }

  write(): Promise<void> {
    return Promise.reject(new NbdError(NbdErrno.EPERM, 'a recovery-point view is read-only'));
  }

  writeZeroes(): Promise<void> {
    return this.write();
  }

  trim(): Promise<void> {
    return this.write();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  blockStatus(_offset: number, length: number): Promise<Extent[]> {
    // Always correct (see the contract); the allocation of a point in time is not tracked.
    return Promise.resolve(length > 0 ? [{ length, hole: false, zero: false }] : []);
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.source.release();
    }
    return Promise.resolve();
  }

  /** Whether `close()` was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  private assertOpen(): void {
    if (this.closed) throw new NbdError(NbdErrno.EIO, 'view is closed');
  }
}

/**
 * Undo pieces up to this many bytes are read on the calling thread (`OSR_VIEW_SYNC_READ_MAX`, 0 = never). A
 * view of an old point is mostly undo pieces of a write's size (64 KiB in the benchmark), from undo files the
 * processor wrote recently and the page cache still holds; a threadpool hop per piece cost more CPU than the copy.
 */
const SYNC_UNDO_READ_MAX = Number(process.env.OSR_VIEW_SYNC_READ_MAX ?? 256 * 1024);

/** A base span up to this many bytes under a many-piece read is read on the calling thread (`OSR_VIEW_SYNC_BASE_MAX`). */
const SYNC_BASE_SPAN_MAX = Number(process.env.OSR_VIEW_SYNC_BASE_MAX ?? 1024 * 1024);

async function fillFromUndo(buf: Buffer, offset: number, r: Resolution): Promise<void> {
  const pending: Promise<void>[] = [];
  for (const { entry, start, end } of mergeFills(r.fills)) {
    const into = start - offset;
    const n = end - start;
    const at = entry.pos + (start - entry.offset);
    if (entry.fd < 0) buf.fill(0, into, into + n);
    else if (n <= SYNC_UNDO_READ_MAX) preadExactSync(entry.fd, buf, into, n, at);
    else pending.push(preadExact(entry.fd, buf, into, n, at));
  }
  await Promise.all(pending);
}

/**
 * Joins fills that continue each other both on the disk and in the same undo file (an entry cut at granule
 * boundaries, or consecutive entries saved together), so each run is one read.
 */
function mergeFills(fills: readonly UndoFill[]): UndoFill[] {
  if (fills.length < 2) return [...fills];
  const sorted = [...fills].sort((x, y) => x.start - y.start);
  const out: UndoFill[] = [];
  let cur = sorted[0]!;
  let filePos = cur.entry.pos + (cur.start - cur.entry.offset);
  for (let i = 1; i < sorted.length; i++) {
    const f = sorted[i]!;
    const fPos = f.entry.pos + (f.start - f.entry.offset);
    const contiguous =
      f.start === cur.end &&
      ((f.entry.fd < 0 && cur.entry.fd < 0) ||
        (f.entry.fd >= 0 && f.entry.fd === cur.entry.fd && fPos === filePos + (cur.end - cur.start)));
    if (contiguous) {
      // A synthetic entry whose bytes start where the run starts, so the read below stays one call.
      cur = {
        entry: { ...cur.entry, offset: cur.start, pos: filePos, length: f.end - cur.start },
        start: cur.start,
        end: f.end,
      };
    } else {
      out.push(cur);
      cur = f;
      filePos = fPos;
    }
  }
  out.push(cur);
  return out;
}
