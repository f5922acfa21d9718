import { createHash } from 'node:crypto';
import type { ByteRange } from '../journal/dirty-bitmap.js';
import type { BlockBackend } from '../nbd/backend.js';

/** Default block of resync comparison: 1 MiB (one sha256 of 32 bytes per MiB is ~0.003 % of the data). */
export const DEFAULT_RESYNC_BLOCK = 1024 * 1024;

/** SHA-256 of `data`. */
export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

/**
 * SHA-256 of each block `[offset, offset + blockSize)` of `disk`, clipped to its size. The recovery side answers
 * hash requests with this (over a view of the replica at "latest received"), the source compares with it.
 */
export async function hashBlocks(
  disk: BlockBackend,
  blockSize: number,
  offsets: readonly number[],
): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const off of offsets) {
    if (!(off >= 0 && off < disk.size) || off % blockSize !== 0) {
      throw new RangeError(
        `block offset ${off} is not a ${blockSize}-byte block of the ${disk.size}-byte disk`,
      );
    }
    out.push(sha256(await disk.read(off, Math.min(blockSize, disk.size - off))));
  }
  return out;
}

/** The offsets of the `blockSize` blocks touching any of `ranges`, ascending, each once. */
export function blocksOf(ranges: readonly ByteRange[], blockSize: number, diskSize: number): number[] {
  const set = new Set<number>();
  for (const r of ranges) {
    const end = Math.min(r.offset + r.length, diskSize);
    for (let b = Math.floor(r.offset / blockSize) * blockSize; b < end; b += blockSize) set.add(b);
  }
  return [...set].sort((a, b) => a - b);
}
