import { crc32 } from 'node:zlib';
import type { Change, MarkerType } from '../changes.js';
import { JournalFormatError } from './errors.js';

/**
 * The journal record, the unit of the source-side write journal (and of the offline seed file).
 *
 * Layout (little endian), header 56 bytes, then `idLength` bytes of UTF-8 id (the disk id, or the point id of a
 * marker), then `dataLength` bytes of payload (the written bytes of a write; nothing otherwise):
 *
 * | off | size | field                                                              |
 * |-----|------|--------------------------------------------------------------------|
 * | 0   | 4    | magic `OSRJ`                                                       |
 * | 4   | 1    | version (1)                                                        |
 * | 5   | 1    | kind: 1 write, 2 zero, 3 marker, 4 resync bracket                  |
 * | 6   | 2    | flags: bit 0 app-consistent marker, bit 1 offline placeholder,     |
 * |     |      | bit 2 resync end (kind 4; begin otherwise), bit 3 streamed block   |
 * | 8   | 2    | idLength                                                           |
 * | 10  | 2    | reserved (0)                                                       |
 * | 12  | 4    | dataLength                                                         |
 * | 16  | 8    | seq                                                                |
 * | 24  | 8    | time (ms since the epoch)                                          |
 * | 32  | 8    | offset                                                             |
 * | 40  | 8    | length (bytes written or zeroed; 0 for a marker)                   |
 * | 48  | 4    | crc32 of bytes 0..47, the id and the payload                       |
 * | 52  | 4    | reserved (0)                                                       |
 */
export const RECORD_MAGIC = 0x4a52534f; // 'OSRJ' read as a little-endian u32
/** Version of the record layout above. */
export const RECORD_VERSION = 1;
/** Fixed header size of a record. */
export const RECORD_HEADER_SIZE = 56;
/** Largest payload a record may carry; larger writes are refused (NBD requests are at most 32 MiB). */
export const MAX_RECORD_DATA = 64 * 1024 * 1024;

const KIND_WRITE = 1;
const KIND_ZERO = 2;
const KIND_MARKER = 3;
const KIND_RESYNC = 4;
const FLAG_RESYNC_END = 4;
const FLAG_APP_CONSISTENT = 1;
const FLAG_OFFLINE = 2;
const FLAG_STREAMED = 8;
const MAX_ID_LENGTH = 1024;

/**
 * A decoded record: a `Change`, or an offline placeholder — a write whose bytes travel in the offline seed file
 * instead of the journal (initial replication by export/import, R-POL-6).
 */
export type JournalEntry = Change | OfflinePlaceholder;

/** A write whose bytes are in the offline seed file; `length` bytes at `offset` of `diskId`. */
export interface OfflinePlaceholder {
  readonly kind: 'offline';
  readonly seq: number;
  readonly time: number;
  readonly diskId: string;
  readonly offset: number;
  readonly length: number;
}

/**
 * A block of an initial copy whose bytes are read from the disk when the sender reaches it, not stored in the
 * journal (`WriteJournal.appendStreamed`); `length` bytes at `offset` of `diskId`. Only the journal stores it:
 * `WriteJournal.read` hands it on as a write.
 */
export interface StreamedBlock {
  readonly kind: 'streamed';
  readonly seq: number;
  readonly time: number;
  readonly diskId: string;
  readonly offset: number;
  readonly length: number;
}

/** What a record holds: a `JournalEntry` or a streamed block. */
export type StoredEntry = JournalEntry | StreamedBlock;

/** Bytes the record for `entry` takes. */
export function recordSize(entry: StoredEntry): number {
  return (
    RECORD_HEADER_SIZE + Buffer.byteLength(entryId(entry)) + (entry.kind === 'write' ? entry.data.length : 0)
  );
}

/** Encodes one record. */
export function encodeRecord(entry: StoredEntry): Buffer {
  const id = Buffer.from(entryId(entry), 'utf8');
  if (id.length > MAX_ID_LENGTH) throw new RangeError(`id longer than ${MAX_ID_LENGTH} bytes`);
  const data = entry.kind === 'write' ? entry.data : undefined;
  if (data && data.length > MAX_RECORD_DATA)
    throw new RangeError(`write of ${data.length} bytes is too large`);
  const dataLength = data?.length ?? 0;
  const buf = Buffer.allocUnsafe(RECORD_HEADER_SIZE + id.length + dataLength);
  buf.writeUInt32LE(RECORD_MAGIC, 0);
  buf.writeUInt8(RECORD_VERSION, 4);
  let kind: number;
  let flags = 0;
  let offset = 0;
  let length = 0;
  switch (entry.kind) {
    case 'write':
      kind = KIND_WRITE;
      offset = entry.offset;
      length = entry.data.length;
      break;
    case 'offline':
    case 'streamed':
      kind = KIND_WRITE;
      flags |= entry.kind === 'offline' ? FLAG_OFFLINE : FLAG_STREAMED;
      offset = entry.offset;
      length = entry.length;
      break;
    case 'zero':
      kind = KIND_ZERO;
      offset = entry.offset;
      length = entry.length;
      break;
    case 'marker':
      kind = KIND_MARKER;
      if (entry.markerType === 'app-consistent') flags |= FLAG_APP_CONSISTENT;
      break;
    case 'resync':
      kind = KIND_RESYNC;
      if (entry.phase === 'end') flags |= FLAG_RESYNC_END;
      break;
  }
  buf.writeUInt8(kind, 5);
  buf.writeUInt16LE(flags, 6);
  buf.writeUInt16LE(id.length, 8);
  buf.writeUInt16LE(0, 10);
  buf.writeUInt32LE(dataLength, 12);
  buf.writeBigUInt64LE(BigInt(entry.seq), 16);
  buf.writeBigUInt64LE(BigInt(Math.trunc(entry.time)), 24);
  buf.writeBigUInt64LE(BigInt(offset), 32);
  buf.writeBigUInt64LE(BigInt(length), 40);
  id.copy(buf, RECORD_HEADER_SIZE);
  if (data) data.copy(buf, RECORD_HEADER_SIZE + id.length);
  buf.writeUInt32LE(0, 52);
  buf.writeUInt32LE(recordCrc(buf, RECORD_HEADER_SIZE + id.length + dataLength), 48);
  return buf;
}

/**
 * A tombstone of exactly `size` bytes for `seq`: a zero change of length 0 on `diskId` whose payload is padding.
 * It replaces a damaged record in place (same position and size, so the segment's index stays valid), keeping the
 * stream free of gaps; readers see an empty zero change. Throws `RangeError` when `size` is too small for it.
 */
export function encodeTombstone(seq: number, time: number, diskId: string, size: number): Buffer {
  const id = Buffer.from(diskId, 'utf8');
  const pad = size - RECORD_HEADER_SIZE - id.length;
  if (pad < 0 || pad > MAX_RECORD_DATA) throw new RangeError(`no tombstone fits ${size} bytes`);
  const buf = Buffer.alloc(size);
  buf.writeUInt32LE(RECORD_MAGIC, 0);
  buf.writeUInt8(RECORD_VERSION, 4);
  buf.writeUInt8(KIND_ZERO, 5);
  buf.writeUInt16LE(id.length, 8);
  buf.writeUInt32LE(pad, 12);
  buf.writeBigUInt64LE(BigInt(seq), 16);
  buf.writeBigUInt64LE(BigInt(Math.trunc(time)), 24);
  id.copy(buf, RECORD_HEADER_SIZE);
  buf.writeUInt32LE(recordCrc(buf, size), 48);
  return buf;
}

/** Result of looking at the bytes where a record should start. */
export type RecordProbe =
  | { readonly status: 'ok'; readonly entry: StoredEntry; readonly size: number }
  /** Too few bytes for the header, or for the lengths the header claims. */
  | { readonly status: 'short'; readonly need: number }
  /** Not a valid record: wrong magic/version/kind, impossible lengths or a checksum mismatch. */
  | { readonly status: 'bad'; readonly reason: string };

/**
 * Decodes the record starting at `at` in `buf`. Never throws on garbage: the caller decides whether a bad record
 * is a torn tail or corruption. The returned write's `data` is a copy, or with `view` a view of `buf` (for a
 * caller that owns `buf` and never reuses it).
 */
export function probeRecord(buf: Buffer, at = 0, view = false): RecordProbe {
  const avail = buf.length - at;
  if (avail < RECORD_HEADER_SIZE) return { status: 'short', need: RECORD_HEADER_SIZE };
  if (buf.readUInt32LE(at) !== RECORD_MAGIC) return { status: 'bad', reason: 'bad magic' };
  const version = buf.readUInt8(at + 4);
  if (version !== RECORD_VERSION) return { status: 'bad', reason: `unsupported record version ${version}` };
  const kind = buf.readUInt8(at + 5);
  const flags = buf.readUInt16LE(at + 6);
  const idLength = buf.readUInt16LE(at + 8);
  const dataLength = buf.readUInt32LE(at + 12);
  if (kind < KIND_WRITE || kind > KIND_RESYNC)
    return { status: 'bad', reason: `unknown record kind ${kind}` };
  if (idLength > MAX_ID_LENGTH || dataLength > MAX_RECORD_DATA) {
    return { status: 'bad', reason: 'impossible record lengths' };
  }
  const size = RECORD_HEADER_SIZE + idLength + dataLength;
  if (avail < size) return { status: 'short', need: size };
  const stored = buf.readUInt32LE(at + 48);
  const rec = buf.subarray(at, at + size);
  if (recordCrc(rec, size) !== stored) return { status: 'bad', reason: 'checksum mismatch' };
  const seq = Number(buf.readBigUInt64LE(at + 16));
  const time = Number(buf.readBigUInt64LE(at + 24));
  const offset = Number(buf.readBigUInt64LE(at + 32));
  const length = Number(buf.readBigUInt64LE(at + 40));
  const id = buf.toString('utf8', at + RECORD_HEADER_SIZE, at + RECORD_HEADER_SIZE + idLength);
  let entry: StoredEntry;
  if (kind === KIND_WRITE && (flags & (FLAG_OFFLINE | FLAG_STREAMED)) !== 0) {
    const both = (flags & FLAG_OFFLINE) !== 0 && (flags & FLAG_STREAMED) !== 0;
    if (dataLength !== 0 || both) return { status: 'bad', reason: 'bad placeholder' };
    entry = {
      kind: (flags & FLAG_OFFLINE) !== 0 ? 'offline' : 'streamed',
      seq,
      time,
      diskId: id,
      offset,
      length,
    };
  } else if (kind === KIND_WRITE) {
    if (length !== dataLength) return { status: 'bad', reason: 'write length differs from its payload' };
    const payload = rec.subarray(RECORD_HEADER_SIZE + idLength);
    const data = view ? payload : Buffer.from(payload);
    entry = { kind: 'write', seq, time, diskId: id, offset, data };
  } else if (kind === KIND_ZERO) {
    entry = { kind: 'zero', seq, time, diskId: id, offset, length };
  } else if (kind === KIND_RESYNC) {
    entry = { kind: 'resync', seq, time, phase: (flags & FLAG_RESYNC_END) !== 0 ? 'end' : 'begin' };
  } else {
    const markerType: MarkerType =
      (flags & FLAG_APP_CONSISTENT) !== 0 ? 'app-consistent' : 'crash-consistent';
    entry = { kind: 'marker', seq, time, markerType, pointId: id };
  }
  return { status: 'ok', entry, size };
}

/** Decodes the record at `at`, throwing `JournalFormatError` when it is not a complete valid record. */
export function decodeRecord(buf: Buffer, at = 0): { entry: StoredEntry; size: number } {
  const p = probeRecord(buf, at);
  if (p.status === 'ok') return p;
  throw new JournalFormatError(p.status === 'short' ? 'truncated record' : p.reason);
}

function entryId(entry: StoredEntry): string {
  if (entry.kind === 'resync') return '';
  return entry.kind === 'marker' ? entry.pointId : entry.diskId;
}

function recordCrc(record: Buffer, size: number): number {
  // The crc field itself (bytes 48..51) is left out; everything else, including the reserved tail, is covered.
  let c = crc32(record.subarray(0, 48));
  c = crc32(record.subarray(52, size), c);
  return c >>> 0;
}
