import { crc32 } from 'node:zlib';
import type { Extent } from './backend.js';

/** Allocation state of one granule. */
export const GranuleState = {
  /** Reads as zeros and is (as far as we know) unallocated. */
  HOLE: 0,
  /** Reads as zeros but is allocated (zeroed with NO_HOLE). */
  ZERO: 1,
  /** May hold non-zero bytes. */
  DATA: 2,
} as const;
/** One of `GranuleState`. */
export type GranuleState = (typeof GranuleState)[keyof typeof GranuleState];

/** Default granule: 64 KiB, the same granularity QEMU uses for dirty bitmaps. */
export const DEFAULT_GRANULE_SIZE = 64 * 1024;

const MAGIC = Buffer.from('OSRAMAP\0', 'latin1');
const VERSION = 1;
const HEADER_SIZE = 40;

/** What a persisted map was taken from; a map is only trusted when all of these still match. */
export interface AllocationMapIdentity {
  /** Image size in bytes. */
  readonly size: number;
  /** Image modification time in nanoseconds when the map was written. */
  readonly mtimeNs: bigint;
}

/**
 * Per-granule allocation/zero map of an image (2 bits per granule), used because Node cannot query holes
 * (no SEEK_DATA/SEEK_HOLE) nor punch them.
 *
 * Invariant kept by its users: a granule in state `HOLE` or `ZERO` reads back as all zeros from the image, so
 * reads of such granules may skip I/O and `base:allocation` may report them as zero. `DATA` is always a safe
 * (conservative) answer.
 */
export class AllocationMap {
  /** Image size covered, in bytes. */
  readonly size: number;
  /** Granule size in bytes (a power of two). */
  readonly granuleSize: number;
  /** Number of granules (the last one may be partial). */
  readonly granuleCount: number;
  private readonly bits: Uint8Array;

  /** Creates a map with every granule in `initial` state (default `HOLE`). */
  constructor(size: number, granuleSize = DEFAULT_GRANULE_SIZE, initial: GranuleState = GranuleState.HOLE) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad image size ${size}`);
    if (granuleSize < 512 || (granuleSize & (granuleSize - 1)) !== 0) {
      throw new RangeError(`granule size must be a power of two >= 512, got ${granuleSize}`);
    }
    this.size = size;
    this.granuleSize = granuleSize;
    this.granuleCount = Math.ceil(size / granuleSize);
    this.bits = new Uint8Array(Math.ceil(this.granuleCount / 4));
    if (initial !== GranuleState.HOLE) this.bits.fill(initial * 0b01010101);
  }

  /** State of granule `index`. */
  get(index: number): GranuleState {
    return ((this.bits[index >> 2]! >> ((index & 3) * 2)) & 3) as GranuleState;
  }

  /** Sets the state of granule `index`. */
  set(index: number, state: GranuleState): void {
    const byte = index >> 2;
    const sh = (index & 3) * 2;
    this.bits[byte] = (this.bits[byte]! & ~(3 << sh)) | (state << sh);
  }

  /** Index of the granule holding byte `offset`. */
  granuleOf(offset: number): number {
    return Math.floor(offset / this.granuleSize);
  }

  /** Byte range `[start, end)` of granule `index`, clipped to the image size. */
  granuleRange(index: number): { start: number; end: number } {
    const start = index * this.granuleSize;
    return { start, end: Math.min(start + this.granuleSize, this.size) };
  }

  /** Marks every granule touched by `[offset, offset + length)` as `DATA`. */
  markData(offset: number, length: number): void {
    if (length <= 0) return;
    const last = this.granuleOf(offset + length - 1);
    for (let i = this.granuleOf(offset); i <= last; i++) this.set(i, GranuleState.DATA);
  }

  /**
   * Granules entirely inside `[offset, offset + length)` as `[first, end)` indexes (empty when none). The last,
   * partial granule of the image counts as covered when the range reaches the end of the image.
   */
  coveredGranules(offset: number, length: number): { first: number; end: number } {
    const first = Math.ceil(offset / this.granuleSize);
    const stop = offset + length;
    const end = stop >= this.size ? this.granuleCount : Math.floor(stop / this.granuleSize);
    return { first, end: Math.max(first, end) };
  }

  /** True when every granule touched by the range reads as zeros (no `DATA` granule). */
  isZero(offset: number, length: number): boolean {
    if (length <= 0) return true;
    const last = this.granuleOf(offset + length - 1);
    for (let i = this.granuleOf(offset); i <= last; i++) if (this.get(i) === GranuleState.DATA) return false;
    return true;
  }

  /**
   * Extents describing `[offset, offset + length)`, clipped to that range, merged across granules with equal
   * state, at most `maxExtents` of them (the last may then end before `offset + length`).
   */
  extents(offset: number, length: number, maxExtents = 1 << 20): Extent[] {
    const out: Extent[] = [];
    const stop = Math.min(offset + length, this.size);
    let pos = offset;
    while (pos < stop && out.length < maxExtents) {
      let i = this.granuleOf(pos);
      const state = this.get(i);
      // u32 extent lengths on the wire: cap a run well below 4 GiB.
      const runLimit = Math.min(stop, pos + 0x80000000);
      let end = Math.min(this.granuleRange(i).end, runLimit);
      while (end < runLimit && this.get(++i) === state) end = Math.min(this.granuleRange(i).end, runLimit);
      out.push({
        length: end - pos,
        hole: state === GranuleState.HOLE,
        zero: state !== GranuleState.DATA,
      });
      pos = end;
    }
    return out;
  }

  /** Counts granules per state (for tests and diagnostics). */
  counts(): Record<'hole' | 'zero' | 'data', number> {
    const c = { hole: 0, zero: 0, data: 0 };
    for (let i = 0; i < this.granuleCount; i++) {
      const s = this.get(i);
      if (s === GranuleState.HOLE) c.hole++;
      else if (s === GranuleState.ZERO) c.zero++;
      else c.data++;
    }
    return c;
  }

  /**
   * Serialises the map: `"OSRAMAP\0" | u32 version | u32 granule size | u64 image size | u64 image mtime ns |
   * u32 bitmap length | u32 crc32(bitmap, then header[0..36)) | bitmap`.
   */
  encode(identity: AllocationMapIdentity): Buffer {
    const b = Buffer.alloc(HEADER_SIZE + this.bits.length);
    MAGIC.copy(b, 0);
    b.writeUInt32BE(VERSION, 8);
    b.writeUInt32BE(this.granuleSize, 12);
    b.writeBigUInt64BE(BigInt(identity.size), 16);
    b.writeBigUInt64BE(identity.mtimeNs, 24);
    b.writeUInt32BE(this.bits.length, 32);
    Buffer.from(this.bits.buffer, this.bits.byteOffset, this.bits.length).copy(b, HEADER_SIZE);
    b.writeUInt32BE(crc32(b.subarray(0, 36), crc32(b.subarray(HEADER_SIZE))), 36);
    return b;
  }

  /**
   * Parses a persisted map and returns it only if it is intact and was written for exactly `expected` (same size
   * and mtime); otherwise returns `undefined` with the reason, so the caller rebuilds by scanning.
   */
  static decode(
    b: Buffer,
    expected: AllocationMapIdentity,
  ): { map: AllocationMap; reason?: undefined } | { map?: undefined; reason: string } {
    if (b.length < HEADER_SIZE || !b.subarray(0, 8).equals(MAGIC)) return { reason: 'bad magic' };
    if (b.readUInt32BE(8) !== VERSION) return { reason: `unsupported version ${b.readUInt32BE(8)}` };
    const granule = b.readUInt32BE(12);
    const size = b.readBigUInt64BE(16);
    const mtimeNs = b.readBigUInt64BE(24);
    const bitsLen = b.readUInt32BE(32);
    if (b.length !== HEADER_SIZE + bitsLen) return { reason: 'truncated' };
    const crc = crc32(b.subarray(0, 36), crc32(b.subarray(HEADER_SIZE)));
    if (crc !== b.readUInt32BE(36)) return { reason: 'checksum mismatch' };
    if (size !== BigInt(expected.size)) return { reason: 'image size changed' };
    if (mtimeNs !== expected.mtimeNs) return { reason: 'image modified after the map was written' };
    let map: AllocationMap;
    try {
      map = new AllocationMap(expected.size, granule);
    } catch (err) {
      return { reason: (err as Error).message };
    }
    if (map.bits.length !== bitsLen) return { reason: 'bitmap length mismatch' };
    map.bits.set(b.subarray(HEADER_SIZE));
    return { map };
  }
}
