import * as fs from 'node:fs';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';
import { JournalFormatError } from './errors.js';

/** One byte range. */
export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

/**
 * One bit per granule of a disk: "this granule may differ from the replica". Kept when the journal overflowed
 * (the link was down too long), so resync needs to compare only these granules (DRBD's quick-sync bitmap).
 */
export class DirtyBitmap {
  /** Disk size in bytes. */
  readonly size: number;
  /** Granule size in bytes. */
  readonly granuleSize: number;
  private readonly bits: Uint8Array;

  constructor(size: number, granuleSize: number, bits?: Uint8Array) {
    if (!(granuleSize > 0) || (granuleSize & (granuleSize - 1)) !== 0) {
      throw new RangeError(`dirty granule must be a power of two, got ${granuleSize}`);
    }
    this.size = size;
    this.granuleSize = granuleSize;
    const bytes = Math.ceil(Math.ceil(size / granuleSize) / 8);
    if (bits && bits.length !== bytes) throw new JournalFormatError('dirty bitmap has the wrong length');
    this.bits = bits ?? new Uint8Array(bytes);
  }

  /** Marks every granule touching the range; true when at least one bit was newly set. */
  mark(offset: number, length: number): boolean {
    if (length <= 0) return false;
    const first = Math.floor(offset / this.granuleSize);
    const last = Math.floor((Math.min(offset + length, this.size) - 1) / this.granuleSize);
    let changed = false;
    for (let g = first; g <= last; g++) {
      const byte = g >> 3;
      const bit = 1 << (g & 7);
      const cur = this.bits[byte] ?? 0;
      if ((cur & bit) === 0) {
        this.bits[byte] = cur | bit;
        changed = true;
      }
    }
    return changed;
  }

  /** Marks the whole disk. */
  markAll(): void {
    this.mark(0, this.size);
  }

  /** Number of dirty granules. */
  count(): number {
    let n = 0;
    for (const b of this.bits) {
      let x = b;
      while (x) {
        n += x & 1;
        x >>= 1;
      }
    }
    return n;
  }

  /** The dirty granules as merged byte ranges, in order (the last one clipped to the disk size). */
  ranges(): ByteRange[] {
    const out: ByteRange[] = [];
    const count = Math.ceil(this.size / this.granuleSize);
    let start = -1;
    for (let g = 0; g <= count; g++) {
      const set = g < count && ((this.bits[g >> 3] ?? 0) & (1 << (g & 7))) !== 0;
      if (set && start < 0) start = g;
      if (!set && start >= 0) {
        const offset = start * this.granuleSize;
        out.push({ offset, length: Math.min(g * this.granuleSize, this.size) - offset });
        start = -1;
      }
    }
    return out;
  }

  /** The raw bits (for persistence). */
  raw(): Uint8Array {
    return this.bits;
  }
}

/** What the journal is doing about data it could not keep. */
export type DirtyState = 'overflow' | 'resync';

const MAGIC = Buffer.from('OSRDIRTY', 'latin1');
const VERSION = 1;

/**
 * Persists the per-disk dirty bitmaps and the state atomically (write temp file, fsync, rename, fsync folder), so
 * after a crash the file is either the previous complete version or the new one.
 *
 * Layout: magic `OSRDIRTY`, u8 version, u8 state (1 overflow, 2 resync), u16 disk count, u32 granule size; per
 * disk: u16 id length, id, u64 size, u32 bitmap length, bits; then crc32 of everything before it.
 */
export function writeDirtyFile(
  path: string,
  state: DirtyState,
  maps: ReadonlyMap<string, DirtyBitmap>,
): void {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(16);
  MAGIC.copy(head, 0);
  head.writeUInt8(VERSION, 8);
  head.writeUInt8(state === 'overflow' ? 1 : 2, 9);
  head.writeUInt16LE(maps.size, 10);
  const granule = maps.values().next().value?.granuleSize ?? 0;
  head.writeUInt32LE(granule, 12);
  parts.push(head);
  for (const [id, map] of maps) {
    const idBuf = Buffer.from(id, 'utf8');
    const h = Buffer.alloc(2 + idBuf.length + 12);
    h.writeUInt16LE(idBuf.length, 0);
    idBuf.copy(h, 2);
    h.writeBigUInt64LE(BigInt(map.size), 2 + idBuf.length);
    h.writeUInt32LE(map.raw().length, 10 + idBuf.length);
    parts.push(h, Buffer.from(map.raw().buffer, map.raw().byteOffset, map.raw().length));
  }
  const body = Buffer.concat(parts);
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(crc32(body) >>> 0, 0);
  const tmp = `${path}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, Buffer.concat([body, tail]));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path);
  fsyncDir(dirname(path));
}

/** Reads a file written by `writeDirtyFile`; `undefined` when it does not exist, an error when it is damaged. */
export function readDirtyFile(
  path: string,
): { state: DirtyState; maps: Map<string, DirtyBitmap> } | undefined {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const fail = (why: string): never => {
    throw new JournalFormatError(`dirty bitmap ${path}: ${why}`);
  };
  if (buf.length < 20 || !buf.subarray(0, 8).equals(MAGIC)) fail('bad magic');
  if (buf.readUInt8(8) !== VERSION) fail(`unsupported version ${buf.readUInt8(8)}`);
  if (crc32(buf.subarray(0, buf.length - 4)) >>> 0 !== buf.readUInt32LE(buf.length - 4))
    fail('checksum mismatch');
  const stateByte = buf.readUInt8(9);
  if (stateByte !== 1 && stateByte !== 2) fail(`unknown state ${stateByte}`);
  const count = buf.readUInt16LE(10);
  const granule = buf.readUInt32LE(12);
  const maps = new Map<string, DirtyBitmap>();
  let at = 16;
  for (let i = 0; i < count; i++) {
    const idLen = buf.readUInt16LE(at);
    const id = buf.toString('utf8', at + 2, at + 2 + idLen);
    const size = Number(buf.readBigUInt64LE(at + 2 + idLen));
    const len = buf.readUInt32LE(at + 10 + idLen);
    at += 14 + idLen;
    if (at + len > buf.length - 4) fail('truncated');
    maps.set(id, new DirtyBitmap(size, granule, new Uint8Array(buf.subarray(at, at + len))));
    at += len;
  }
  return { state: stateByte === 1 ? 'overflow' : 'resync', maps };
}

/** Makes a directory entry change (create, rename, unlink) durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
