import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import type { JournalEntry } from '../journal/record.js';
import { FLAG_BROTLI, FrameError } from './frame.js';

const brotliCompress = promisify(zlib.brotliCompress);
const brotliDecompress = promisify(zlib.brotliDecompress);

/** Blocks of this size inside a write that are all zeros travel as zero runs, not bytes. */
export const ZERO_BLOCK = 4096;
const ZEROS = Buffer.alloc(ZERO_BLOCK);
/** Most raw bytes one batch decodes to (a frame bigger than this is refused before decompressing). */
export const MAX_BATCH_RAW = 64 * 1024 * 1024;

const K_WRITE = 1;
const K_ZERO = 2;
const K_MARKER = 3;
const K_OFFLINE = 4;
const K_RESYNC = 5;

/** An encoded batch and what encoding did, for the status figures. */
export interface EncodedBatch {
  /**
   * The payload in pieces, in order: headers and views of the entries' data (not copied), or the compressed
   * body. Write them as they are (`encodeFrameParts`); the data views must not change until they are written.
   */
  readonly parts: readonly Buffer[];
  /** Bytes of the payload (sum of `parts`). */
  readonly length: number;
  readonly flags: number;
  /** Bytes of change data and metadata before zero detection and compression. */
  readonly rawBytes: number;
  /** Bytes of written data found to be all-zero blocks (sent as runs). */
  readonly zeroBytes: number;
}

/**
 * Encodes journal entries as a BATCH payload. Body layout (little endian): u32 count, then per entry u8 kind,
 * u64 seq, u64 time, and
 * - write (1): u16 id length, disk id, u64 offset, u32 length, u16 run count, runs of (u8 0 data | 1 zero, u32
 *   length), then the bytes of the data runs;
 * - zero (2) and offline placeholder (4): u16 id length, disk id, u64 offset, u64 length;
 * - marker (3): u8 0 crash | 1 app, u16 id length, point id;
 * - resync bracket (5): u8 0 begin | 1 end.
 * A write that is all zero blocks is sent as a zero change. With `compress` the body is brotli quality 1 and
 * the payload is u32 raw length + the brotli stream — unless samples of the body show it does not compress
 * (`worthCompressing`): then it is sent as it is (flags 0), which the receiver handles like any uncompressed batch.
 * An uncompressed body is never gathered into one buffer: its parts are written to the link one after another.
 */
export async function encodeBatch(
  entries: readonly JournalEntry[],
  compress: boolean,
): Promise<EncodedBatch> {
  const parts: Buffer[] = [];
  let rawBytes = 0;
  let zeroBytes = 0;
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32LE(entries.length, 0);
  parts.push(count);
  for (const e of entries) {
    const head = (kind: number, extra: number): Buffer => {
      const b = Buffer.allocUnsafe(17 + extra);
      b.writeUInt8(kind, 0);
      b.writeBigUInt64LE(BigInt(e.seq), 1);
      b.writeBigUInt64LE(BigInt(Math.trunc(e.time)), 9);
      return b;
    };
    if (e.kind === 'resync') {
      const b = head(K_RESYNC, 1);
      b.writeUInt8(e.phase === 'end' ? 1 : 0, 17);
      parts.push(b);
      rawBytes += b.length;
      continue;
    }
    if (e.kind === 'marker') {
      const id = Buffer.from(e.pointId, 'utf8');
      const b = head(K_MARKER, 3);
      b.writeUInt8(e.markerType === 'app-consistent' ? 1 : 0, 17);
      b.writeUInt16LE(id.length, 18);
      parts.push(b, id);
      rawBytes += b.length + id.length;
      continue;
    }
    const id = Buffer.from(e.diskId, 'utf8');
    if (e.kind === 'zero' || e.kind === 'offline') {
      const b = head(e.kind === 'zero' ? K_ZERO : K_OFFLINE, 18);
      b.writeUInt16LE(id.length, 17);
      b.writeBigUInt64LE(BigInt(e.offset), 19);
      b.writeBigUInt64LE(BigInt(e.length), 27);
      parts.push(b.subarray(0, 19), id, b.subarray(19));
      rawBytes += b.length + id.length;
      continue;
    }
    rawBytes += 17 + 14 + id.length + e.data.length;
    const runs = zeroRuns(e.offset, e.data);
    const zeros = runs.reduce((n, r) => n + (r.zero ? r.length : 0), 0);
    zeroBytes += zeros;
    if (e.data.length > 0 && zeros === e.data.length) {
      const b = head(K_ZERO, 18);
      b.writeUInt16LE(id.length, 17);
      b.writeBigUInt64LE(BigInt(e.offset), 19);
      b.writeBigUInt64LE(BigInt(e.data.length), 27);
      parts.push(b.subarray(0, 19), id, b.subarray(19));
      continue;
    }
    const b = head(K_WRITE, 2);
    b.writeUInt16LE(id.length, 17);
    const tail = Buffer.allocUnsafe(14 + runs.length * 5);
    tail.writeBigUInt64LE(BigInt(e.offset), 0);
    tail.writeUInt32LE(e.data.length, 8);
    tail.writeUInt16LE(runs.length, 12);
    runs.forEach((r, i) => {
      tail.writeUInt8(r.zero ? 1 : 0, 14 + i * 5);
      tail.writeUInt32LE(r.length, 15 + i * 5);
    });
    parts.push(b, id, tail);
    let at = 0;
    for (const r of runs) {
      if (!r.zero) parts.push(e.data.subarray(at, at + r.length));
      at += r.length;
    }
  }
  const length = parts.reduce((n, b) => n + b.length, 0);
  if (!compress || !worthCompressing(parts, length)) return { parts, length, flags: 0, rawBytes, zeroBytes };
  const body = Buffer.concat(parts, length);
  const packed = await brotliCompress(body, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: 1,
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: body.length,
    },
  });
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32LE(body.length, 0);
  return { parts: [len, packed], length: 4 + packed.length, flags: FLAG_BROTLI, rawBytes, zeroBytes };
}

/** Bytes of each sample `worthCompressing` looks at. */
const PROBE_SAMPLE = 4096;
/** Samples per batch. */
const PROBE_SAMPLES = 4;
/** A batch is compressed when its samples promise to save at least this fraction. */
const PROBE_MIN_SAVING = 0.1;
const LOG2 = new Float64Array(PROBE_SAMPLE + 1).map((_, i) => (i > 0 ? Math.log2(i) : 0));
const probeCounts = new Uint32Array(256);
const probeTable = new Int32Array(4096);

/**
 * Whether brotli is worth running on a body (given as `parts` of `length` bytes): a few samples spread over it
 * are scored, and unless they promise to save 10 % the batch is sent as it is. Encrypted, already compressed or
 * random data (an initial copy of such a disk) then costs no compression time on either side. Small bodies are
 * always compressed.
 *
 * The score of a sample is the larger of its order-0 entropy saving (`1 - H/8`) and the fraction of its 4-byte
 * sequences seen earlier in it (what LZ matching finds): on disk data, text, code and random bytes it lands
 * within a few points of brotli quality 1's own saving, at about 8 µs per 4 KiB sample — where compressing the
 * samples themselves cost about 0.2 ms each (the encoder's set-up), which for 1 MiB batches was about 0.8 s of
 * CPU per GiB sent.
 */
export function worthCompressing(parts: readonly Buffer[], length: number): boolean {
  if (length <= PROBE_SAMPLE * PROBE_SAMPLES) return true;
  let saved = 0;
  for (let i = 0; i < PROBE_SAMPLES; i++) {
    const at = Math.floor(((length - PROBE_SAMPLE) * i) / (PROBE_SAMPLES - 1));
    saved += sampleSaving(sliceOf(parts, at, PROBE_SAMPLE));
  }
  return saved >= PROBE_SAMPLES * PROBE_MIN_SAVING;
}

/** Estimated fraction of `s` that brotli would save (see `worthCompressing`). */
function sampleSaving(s: Buffer): number {
  probeCounts.fill(0);
  probeTable.fill(0);
  let repeats = 0;
  let word = 0;
  for (let i = 0; i < s.length; i++) {
    const b = s[i]!;
    probeCounts[b]!++;
    word = (word << 8) | b | 0;
    if (i < 3) continue;
    const h = Math.imul(word, 0x9e3779b1) >>> 20;
    if (probeTable[h] === word) repeats++;
    else probeTable[h] = word;
  }
  const n = s.length;
  let bits = 0;
  for (let k = 0; k < 256; k++) {
    const c = probeCounts[k]!;
    if (c > 0) bits -= c * (LOG2[c]! - LOG2[n]!);
  }
  return Math.max(1 - bits / n / 8, repeats / n);
}

/** `n` bytes at `at` of the concatenation of `parts` (a view when they lie in one part). */
function sliceOf(parts: readonly Buffer[], at: number, n: number): Buffer {
  let pos = 0;
  let i = 0;
  while (pos + parts[i]!.length <= at) pos += parts[i++]!.length;
  const first = parts[i]!;
  if (at - pos + n <= first.length) return first.subarray(at - pos, at - pos + n);
  const out = Buffer.allocUnsafe(n);
  let done = 0;
  for (let off = at - pos; done < n; i++, off = 0) {
    done += parts[i]!.copy(out, done, off, Math.min(parts[i]!.length, off + n - done));
  }
  return out;
}

/**
 * Decodes a BATCH payload back into entries (zero runs become zero bytes again, so a write keeps its seq and
 * shape). Throws `FrameError` on anything malformed.
 */
export async function decodeBatch(payload: Buffer, flags: number): Promise<JournalEntry[]> {
  let body = payload;
  if ((flags & FLAG_BROTLI) !== 0) {
    if (payload.length < 4) throw new FrameError('compressed batch without its length');
    const raw = payload.readUInt32LE(0);
    if (raw > MAX_BATCH_RAW) throw new FrameError(`batch of ${raw} raw bytes is too large`);
    try {
      body = await brotliDecompress(payload.subarray(4), { maxOutputLength: Math.max(raw, 1) });
    } catch (err) {
      throw new FrameError(`batch does not decompress: ${(err as Error).message}`);
    }
    if (body.length !== raw) throw new FrameError('batch decompressed to the wrong length');
  }
  try {
    return parseBody(body);
  } catch (err) {
    if (err instanceof FrameError) throw err;
    // Buffer reads past the end throw RangeError: the body is shorter than its own lengths say.
    throw new FrameError(`malformed batch: ${(err as Error).message}`);
  }
}

function parseBody(body: Buffer): JournalEntry[] {
  const count = body.readUInt32LE(0);
  const out: JournalEntry[] = [];
  let at = 4;
  const str = (len: number): string => {
    if (at + len > body.length) throw new FrameError('malformed batch: id past the end');
    const s = body.toString('utf8', at, at + len);
    at += len;
    return s;
  };
  for (let i = 0; i < count; i++) {
    const kind = body.readUInt8(at);
    const seq = Number(body.readBigUInt64LE(at + 1));
    const time = Number(body.readBigUInt64LE(at + 9));
    at += 17;
    if (kind === K_RESYNC) {
      const phase = body.readUInt8(at);
      at += 1;
      if (phase > 1) throw new FrameError(`malformed batch: resync phase ${phase}`);
      out.push({ kind: 'resync', seq, time, phase: phase === 1 ? 'end' : 'begin' });
    } else if (kind === K_MARKER) {
      const type = body.readUInt8(at);
      const idLen = body.readUInt16LE(at + 1);
      at += 3;
      const pointId = str(idLen);
      out.push({
        kind: 'marker',
        seq,
        time,
        markerType: type === 1 ? 'app-consistent' : 'crash-consistent',
        pointId,
      });
    } else if (kind === K_ZERO || kind === K_OFFLINE) {
      const idLen = body.readUInt16LE(at);
      at += 2;
      const diskId = str(idLen);
      const offset = Number(body.readBigUInt64LE(at));
      const length = Number(body.readBigUInt64LE(at + 8));
      at += 16;
      out.push({ kind: kind === K_ZERO ? 'zero' : 'offline', seq, time, diskId, offset, length });
    } else if (kind === K_WRITE) {
      const idLen = body.readUInt16LE(at);
      at += 2;
      const diskId = str(idLen);
      const offset = Number(body.readBigUInt64LE(at));
      const length = body.readUInt32LE(at + 8);
      const nruns = body.readUInt16LE(at + 12);
      at += 14;
      const runs: Array<{ zero: boolean; length: number }> = [];
      let total = 0;
      for (let r = 0; r < nruns; r++) {
        const zero = body.readUInt8(at) === 1;
        const len = body.readUInt32LE(at + 1);
        at += 5;
        runs.push({ zero, length: len });
        total += len;
      }
      if (total !== length) throw new FrameError('malformed batch: write runs do not add up');
      if (runs.length === 1 && !runs[0]!.zero) {
        // All data (the usual case): a view into the body, no copy.
        if (at + length > body.length) throw new FrameError('malformed batch: write data past the end');
        out.push({ kind: 'write', seq, time, diskId, offset, data: body.subarray(at, at + length) });
        at += length;
        continue;
      }
      // Zero-filled, so zero runs need no copy.
      const data = Buffer.alloc(length);
      let pos = 0;
      for (const r of runs) {
        if (!r.zero) {
          if (at + r.length > body.length) throw new FrameError('malformed batch: write data past the end');
          body.copy(data, pos, at, at + r.length);
          at += r.length;
        }
        pos += r.length;
      }
      out.push({ kind: 'write', seq, time, diskId, offset, data });
    } else {
      throw new FrameError(`malformed batch: unknown change kind ${kind}`);
    }
  }
  if (at !== body.length) throw new FrameError('malformed batch: trailing bytes');
  return out;
}

/** Splits a write into alternating data/zero runs on `ZERO_BLOCK` boundaries of the disk. */
function zeroRuns(offset: number, data: Buffer): Array<{ zero: boolean; length: number }> {
  const runs: Array<{ zero: boolean; length: number }> = [];
  let pos = 0;
  while (pos < data.length) {
    const next = Math.min(data.length, pos + (ZERO_BLOCK - ((offset + pos) % ZERO_BLOCK)));
    const n = next - pos;
    // Only whole aligned blocks count as zero blocks; ragged edges are sent as data.
    // The first and last bytes settle most data blocks without a call into compare.
    const zero =
      n === ZERO_BLOCK && data[pos] === 0 && data[next - 1] === 0 && ZEROS.compare(data, pos, next) === 0;
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.length += n;
    else runs.push({ zero, length: n });
    pos = next;
  }
  return runs;
}
