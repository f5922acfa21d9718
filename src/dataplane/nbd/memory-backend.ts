import { AllocationMap, DEFAULT_GRANULE_SIZE, GranuleState } from './allocation-map.js';
import type { BlockBackend, Extent, WriteOptions, ZeroOptions } from './backend.js';
import { NbdError } from './errors.js';
import { NbdErrno } from './protocol.js';

/** Options of `MemoryBackend`. */
export interface MemoryBackendOptions {
  /** Refuse mutations with `EPERM`. Default false. */
  readonly readOnly?: boolean;
  /** Allocation granule in bytes (power of two). Default 64 KiB. */
  readonly granuleSize?: number;
}

/**
 * A sparse in-memory disk: granules are allocated on first write and dropped again by TRIM/WRITE_ZEROES.
 * Reference implementation of `BlockBackend` for tests and for the contract suite; nothing is durable, so
 * `flush()` only orders.
 */
export class MemoryBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  private readonly map: AllocationMap;
  private readonly granules = new Map<number, Buffer>();

  constructor(size: number, options: MemoryBackendOptions = {}) {
    this.size = size;
    this.readOnly = options.readOnly ?? false;
    this.map = new AllocationMap(size, options.granuleSize ?? DEFAULT_GRANULE_SIZE);
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into ?? Buffer.allocUnsafe(length);
    this.forEachPiece(offset, length, (g, inG, at, n) => {
      const data = this.granules.get(g);
      if (data) data.copy(buf, at, inG, inG + n);
      else buf.fill(0, at, at + n);
    });
    return Promise.resolve(buf);
  }

  write(offset: number, data: Buffer, _options?: WriteOptions): Promise<void> {
    return this.mutate(() => {
      this.forEachPiece(offset, data.length, (g, inG, at, n) => {
        data.copy(this.granule(g), inG, at, at + n);
      });
      this.map.markData(offset, data.length);
    });
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.mutate(() => {
      const { first, end } = this.map.coveredGranules(offset, length);
      this.forEachPiece(offset, length, (g, inG, _at, n) => {
        if (g >= first && g < end) {
          this.granules.delete(g);
          this.map.set(g, options?.noHole ? GranuleState.ZERO : GranuleState.HOLE);
        } else {
          this.granules.get(g)?.fill(0, inG, inG + n);
        }
      });
    });
  }

  trim(offset: number, length: number, _options?: WriteOptions): Promise<void> {
    return this.mutate(() => {
      const { first, end } = this.map.coveredGranules(offset, length);
      for (let g = first; g < end; g++) {
        this.granules.delete(g);
        this.map.set(g, GranuleState.HOLE);
      }
    });
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return Promise.resolve(this.map.extents(offset, length));
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  private mutate(fn: () => void): Promise<void> {
    if (this.readOnly) return Promise.reject(new NbdError(NbdErrno.EPERM, 'read-only disk'));
    fn();
    return Promise.resolve();
  }

  private granule(g: number): Buffer {
    let data = this.granules.get(g);
    if (!data) {
      const r = this.map.granuleRange(g);
      data = Buffer.alloc(r.end - r.start);
      this.granules.set(g, data);
    }
    return data;
  }

  /** Calls `fn(granule, offsetInGranule, offsetInRange, length)` for each granule-sized piece of the range. */
  private forEachPiece(
    offset: number,
    length: number,
    fn: (g: number, inG: number, at: number, n: number) => void,
  ): void {
    let at = 0;
    while (at < length) {
      const pos = offset + at;
      const g = this.map.granuleOf(pos);
      const r = this.map.granuleRange(g);
      const n = Math.min(r.end - pos, length - at);
      fn(g, pos - r.start, at, n);
      at += n;
    }
  }
}
