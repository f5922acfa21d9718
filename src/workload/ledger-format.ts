/**
 * The ledger's on-disk format: record n (n = 1, 2, …) is 512 bytes at offset
 * (n−1)·512 — magic `OSRLEDG1`, version u16, u64 sequence number, u64 time (ms since
 * the epoch), a filler derived from the sequence, and a crc32 of everything before it.
 * A healthy disk holds an unbroken prefix of records followed by zeros only; anything
 * else (a bad checksum, a sequence out of place, data after the end) is a broken ledger.
 */
import { crc32 } from 'node:zlib';

/** Bytes per record (one sector). */
export const RECORD_SIZE = 512;
const MAGIC = Buffer.from('OSRLEDG1', 'ascii');
const VERSION = 1;
const CRC_AT = RECORD_SIZE - 4;

/** A decoded record. */
export interface LedgerRecord {
  seq: number;
  /** Milliseconds since the epoch when it was written. */
  time: number;
}

/** Encodes record `seq` written at `time` into `into` (512 bytes) at `offset`. */
export function encodeRecord(
  seq: number,
  time: number,
  into: Buffer = Buffer.alloc(RECORD_SIZE),
  offset = 0,
): Buffer {
  const r = into.subarray(offset, offset + RECORD_SIZE);
  MAGIC.copy(r, 0);
  r.writeUInt16LE(VERSION, 8);
  r.writeUInt16LE(0, 10);
  r.writeBigUInt64LE(BigInt(seq), 12);
  r.writeBigUInt64LE(BigInt(time), 20);
  // A filler that differs per record, so a record copied to the wrong place is caught by its seq and a
  // torn one by its checksum.
  for (let i = 28; i < CRC_AT; i += 4) r.writeUInt32LE((seq * 2654435761 + i) >>> 0, i);
  r.writeUInt32LE(crc32(r.subarray(0, CRC_AT)) >>> 0, CRC_AT);
  return into;
}

/** What a 512-byte block holds. */
export type BlockContent =
  { kind: 'record'; record: LedgerRecord } | { kind: 'zero' } | { kind: 'garbage'; reason: string };

/** Decodes one 512-byte block. */
export function decodeBlock(b: Buffer): BlockContent {
  if (b.every((x) => x === 0)) return { kind: 'zero' };
  if (!b.subarray(0, 8).equals(MAGIC)) return { kind: 'garbage', reason: 'no record magic' };
  if (b.readUInt32LE(CRC_AT) !== crc32(b.subarray(0, CRC_AT)) >>> 0)
    return { kind: 'garbage', reason: 'checksum mismatch' };
  if (b.readUInt16LE(8) !== VERSION)
    return { kind: 'garbage', reason: `unknown record version ${b.readUInt16LE(8)}` };
  return {
    kind: 'record',
    record: { seq: Number(b.readBigUInt64LE(12)), time: Number(b.readBigUInt64LE(20)) },
  };
}

/** Read access to a disk for checking. */
export interface ReadableDisk {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** Optional: ranges known to read as zeros, to skip them after the prefix. */
  zeroRanges?(offset: number, length: number): Promise<{ offset: number; length: number; zero: boolean }[]>;
}

/** The result of checking a disk. */
export interface LedgerCheck {
  ok: boolean;
  /** Records in the unbroken prefix. */
  records: number;
  last: LedgerRecord | null;
  /** Where and why the ledger is broken (when not ok). */
  problem: { offset: number; reason: string } | null;
  /** Byte offset right after the prefix (where the next record goes). */
  end: number;
}

const CHUNK = 1024 * 1024;

/**
 * Checks that the disk holds an unbroken prefix of records (1, 2, …, n) and only zeros
 * after it. Reads the whole disk (skipping ranges `zeroRanges` reports as zero).
 */
export async function checkLedger(disk: ReadableDisk): Promise<LedgerCheck> {
  const usable = disk.size - (disk.size % RECORD_SIZE);
  let records = 0;
  let last: LedgerRecord | null = null;
  let end = -1;
  const broken = (offset: number, reason: string): LedgerCheck => ({
    ok: false,
    records,
    last,
    problem: { offset, reason },
    end: end < 0 ? records * RECORD_SIZE : end,
  });
  for (let off = 0; off < usable;) {
    if (end >= 0 && disk.zeroRanges !== undefined) {
      const ranges = await disk.zeroRanges(off, Math.min(CHUNK * 64, usable - off));
      let skipped = false;
      for (const r of ranges) {
        if (!r.zero || r.offset !== off) break;
        off = r.offset + r.length;
        skipped = true;
      }
      if (skipped) continue;
    }
    const len = Math.min(CHUNK, usable - off);
    const buf = await disk.read(off, len);
    for (let i = 0; i < len; i += RECORD_SIZE) {
      const at = off + i;
      const c = decodeBlock(buf.subarray(i, i + RECORD_SIZE));
      if (end >= 0) {
        if (c.kind !== 'zero') {
          return broken(
            at,
            `data after the end of the ledger (record ${records} ends at offset ${end}): a gap`,
          );
        }
        continue;
      }
      if (c.kind === 'zero') {
        end = at;
      } else if (c.kind === 'garbage') {
        return broken(at, `block at offset ${at} should be record ${records + 1} but has ${c.reason}`);
      } else if (c.record.seq !== records + 1) {
        return broken(
          at,
          `block at offset ${at} should be record ${records + 1} but is record ${c.record.seq}`,
        );
      } else {
        records++;
        last = c.record;
      }
    }
    off += len;
  }
  return { ok: true, records, last, problem: null, end: end < 0 ? records * RECORD_SIZE : end };
}
