import type { BlockBackend, Extent } from '../nbd/backend.js';
import { NbdError } from '../nbd/errors.js';
import { NbdErrno } from '../nbd/protocol.js';
import { preadExact } from './fs-util.js';
import type { DiskUndoIndex, Resolution } from './undo-index.js';

/** What a view needs from its store: the disk's undo index, its base image, and a way to say it is gone. */
export interface ViewSource {
  readonly size: number;
  readonly index: DiskUndoIndex;
  /** Reads the base image (always at "latest processed"). */
  readBase(offset: number, length: number, into: Buffer): Promise<unknown>;
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
    await Promise.all(
      first.holes.map(([a, b]) => this.source.readBase(a, b - a, buf.subarray(a - offset, b - offset))),
    );
    // Entries indexed while the base was read may cover bytes the base read already saw overwritten: re-resolve
    // the holes. An entry indexed after this synchronous check belongs to a base write that starts after it.
    const again: Resolution[] =
      idx.version === version ? [] : first.holes.map(([a, b]) => idx.resolve(this.pointSeq - 1, a, b - a));
    await fillFromUndo(buf, offset, first);
    for (const r of again) await fillFromUndo(buf, offset, r);
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

async function fillFromUndo(buf: Buffer, offset: number, r: Resolution): Promise<void> {
  await Promise.all(
    r.fills.map(({ entry, start, end }) => {
      const into = start - offset;
      if (entry.fd < 0) {
        buf.fill(0, into, into + end - start);
        return Promise.resolve();
      }
      return preadExact(entry.fd, buf, into, end - start, entry.pos + (start - entry.offset));
    }),
  );
}
