import { crc32 } from 'node:zlib';
import type { MarkerType } from '../changes.js';
import { ReplicaError } from './errors.js';

/**
 * The record layout shared by the pending log and the undo log (big-endian):
 *
 * ```
 *  0 u32 magic            4 u8 version (1)   5 u8 kind   6 u8 flags   7 u8 marker type (0 none, 1 crash, 2 app)
 *  8 u64 seq             16 u64 time (ms)   24 u64 offset            32 u64 length
 * 40 u16 id length       42 u16 reserved    44 u32 crc32 of bytes [0, 44) followed by the payload
 * 48 payload: id (UTF-8: disk id or point id), then `length` data bytes when the kind carries data
 * ```
 */
export const RECORD_HEADER_SIZE = 48;
/** Version written in every record; readers refuse others. */
export const RECORD_VERSION = 1;

/** `'OSRP'`: a pending-log record (a received change). */
export const PENDING_MAGIC = 0x4f535250;
/** `'OSRU'`: an undo-log record (bytes a change overwrote, or a processed recovery point). */
export const UNDO_MAGIC = 0x4f535255;

/** Record kinds. Pending: WRITE/ZERO/MARKER as received. Undo: DATA/ZERO_OLD/POINT. */
export const RecordKind = {
  WRITE: 1,
  ZERO: 2,
  MARKER: 3,
  UNDO_DATA: 4,
  UNDO_ZERO: 5,
  POINT: 6,
} as const;
/** One of `RecordKind`. */
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];

/** Flag of undo records: the last record saved for its change (a change may be saved as several records). */
export const FLAG_LAST = 1;
/** Flag of pending MARKER records: not a point but a resync bracket's begin (see `ResyncChange`). */
export const FLAG_RESYNC_BEGIN = 2;
/** Flag of pending MARKER records: a resync bracket's end. */
export const FLAG_RESYNC_END = 4;

/** A decoded record. `data` is a view into the buffer it was decoded from. */
export interface RecordFields {
  readonly kind: RecordKind;
  readonly flags: number;
  readonly markerType?: MarkerType;
  readonly seq: number;
  readonly time: number;
  readonly offset: number;
  readonly length: number;
  readonly id: string;
  readonly data?: Buffer;
}

/** Whether records of `kind` carry `length` bytes of data after the id. */
export function kindHasData(kind: number): boolean {
  return kind === RecordKind.WRITE || kind === RecordKind.UNDO_DATA;
}

const MARKER_CODES: Record<MarkerType, number> = { 'crash-consistent': 1, 'app-consistent': 2 };

/** Total encoded size of a record. */
export function recordSize(fields: Pick<RecordFields, 'kind' | 'length' | 'id'>): number {
  return (
    RECORD_HEADER_SIZE + Buffer.byteLength(fields.id, 'utf8') + (kindHasData(fields.kind) ? fields.length : 0)
  );
}

/** Encodes one record into `out` at `pos` (which must have `recordSize` bytes free); returns the end position. */
export function encodeRecord(magic: number, fields: RecordFields, out: Buffer, pos: number): number {
  const idLen = out.write(fields.id, pos + RECORD_HEADER_SIZE, 'utf8');
  if (idLen !== Buffer.byteLength(fields.id, 'utf8') || idLen > 0xffff) {
    throw new RangeError(`record id too long: ${fields.id.length} characters`);
  }
  out.writeUInt32BE(magic, pos);
  out.writeUInt8(RECORD_VERSION, pos + 4);
  out.writeUInt8(fields.kind, pos + 5);
  out.writeUInt8(fields.flags, pos + 6);
  out.writeUInt8(fields.markerType ? MARKER_CODES[fields.markerType] : 0, pos + 7);
  out.writeBigUInt64BE(BigInt(fields.seq), pos + 8);
  out.writeBigUInt64BE(BigInt(fields.time), pos + 16);
  out.writeBigUInt64BE(BigInt(fields.offset), pos + 24);
  out.writeBigUInt64BE(BigInt(fields.length), pos + 32);
  out.writeUInt16BE(idLen, pos + 40);
  out.writeUInt16BE(0, pos + 42);
  let end = pos + RECORD_HEADER_SIZE + idLen;
  if (kindHasData(fields.kind)) {
    if (!fields.data || fields.data.length !== fields.length)
      throw new RangeError('record data length mismatch');
    fields.data.copy(out, end);
    end += fields.length;
  }
  const crc = crc32(out.subarray(pos + RECORD_HEADER_SIZE, end), crc32(out.subarray(pos, pos + 44)));
  out.writeUInt32BE(crc, pos + 44);
  return end;
}

/** Encodes one record into a new buffer. */
export function encodeRecordBuffer(magic: number, fields: RecordFields): Buffer {
  const out = Buffer.allocUnsafe(recordSize(fields));
  encodeRecord(magic, fields, out, 0);
  return out;
}

/** Result of decoding at a position: a record, too few bytes for the record, or bytes that are not a record. */
export type DecodeResult =
  | { readonly status: 'ok'; readonly record: RecordFields; readonly size: number }
  | { readonly status: 'short'; readonly need: number }
  | { readonly status: 'bad'; readonly reason: string };

/** Largest record we accept: bounds what a corrupt length field can make a reader allocate. */
export const MAX_RECORD_DATA = 64 * 1024 * 1024;

/**
 * Decodes the record at `pos` of `buf`. Never throws on garbage: a wrong magic, version, kind or checksum is
 * `bad` with the reason; fewer bytes than the header or the declared payload is `short`.
 */
export function decodeRecord(magic: number, buf: Buffer, pos: number): DecodeResult {
  const avail = buf.length - pos;
  if (avail < RECORD_HEADER_SIZE) return { status: 'short', need: RECORD_HEADER_SIZE };
  if (buf.readUInt32BE(pos) !== magic) return { status: 'bad', reason: 'bad magic' };
  const version = buf.readUInt8(pos + 4);
  if (version !== RECORD_VERSION) return { status: 'bad', reason: `unsupported record version ${version}` };
  const kind = buf.readUInt8(pos + 5);
  if (kind < RecordKind.WRITE || kind > RecordKind.POINT)
    return { status: 'bad', reason: `bad kind ${kind}` };
  const length = buf.readBigUInt64BE(pos + 32);
  const idLen = buf.readUInt16BE(pos + 40);
  const hasData = kindHasData(kind);
  if (hasData && length > BigInt(MAX_RECORD_DATA)) return { status: 'bad', reason: 'implausible length' };
  const size = RECORD_HEADER_SIZE + idLen + (hasData ? Number(length) : 0);
  if (avail < size) return { status: 'short', need: size };
  const crc = crc32(buf.subarray(pos + RECORD_HEADER_SIZE, pos + size), crc32(buf.subarray(pos, pos + 44)));
  if (crc !== buf.readUInt32BE(pos + 44)) return { status: 'bad', reason: 'checksum mismatch' };
  const mt = buf.readUInt8(pos + 7);
  const idStart = pos + RECORD_HEADER_SIZE;
  return {
    status: 'ok',
    size,
    record: {
      kind: kind as RecordKind,
      flags: buf.readUInt8(pos + 6),
      ...(mt === 1
        ? { markerType: 'crash-consistent' as const }
        : mt === 2
          ? { markerType: 'app-consistent' as const }
          : {}),
      seq: Number(buf.readBigUInt64BE(pos + 8)),
      time: Number(buf.readBigUInt64BE(pos + 16)),
      offset: Number(buf.readBigUInt64BE(pos + 24)),
      length: Number(length),
      id: buf.toString('utf8', idStart, idStart + idLen),
      ...(hasData ? { data: buf.subarray(idStart + idLen, pos + size) } : {}),
    },
  };
}

/** One record found by `scanRecords`, with its position in the file. */
export interface ScannedRecord {
  readonly record: RecordFields;
  readonly pos: number;
  readonly size: number;
}

/** What `scanRecords` found: the intact records, and where the intact prefix ends. */
export interface ScanResult {
  readonly records: ScannedRecord[];
  /** End of the last intact record: everything from here on is a torn tail (or the file ends here). */
  readonly validEnd: number;
  /** Why the scan stopped before the end of the buffer, if it did. */
  readonly stopReason?: string;
}

/**
 * Decodes consecutive records of a whole file. It stops at the first record that is short or bad. A bad record
 * followed later in the file by an intact one is corruption in the middle (never a torn append) and throws
 * `REPLICA_CORRUPT`; a bad or short record with nothing intact after it is a torn tail, reported via `validEnd`.
 * When `mustBeValidUpTo` is given, any stop before that position throws as well (those bytes were known durable).
 */
export function scanRecords(
  magic: number,
  buf: Buffer,
  what: string,
  mustBeValidUpTo = 0,
  keepData = false,
): ScanResult {
  const records: ScannedRecord[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const r = decodeRecord(magic, buf, pos);
    if (r.status === 'ok') {
      const record = keepData || !r.record.data ? r.record : { ...r.record, data: undefined };
      records.push({ record, pos, size: r.size });
      pos += r.size;
      continue;
    }
    const reason = r.status === 'bad' ? r.reason : 'truncated record';
    if (pos < mustBeValidUpTo) {
      throw new ReplicaError('REPLICA_CORRUPT', `${what}: ${reason} at byte ${pos}, inside the durable part`);
    }
    const later = findIntactRecord(magic, buf, pos + 1);
    if (later !== undefined) {
      throw new ReplicaError(
        'REPLICA_CORRUPT',
        `${what}: ${reason} at byte ${pos}, followed by an intact record at byte ${later}`,
      );
    }
    return { records, validEnd: pos, stopReason: reason };
  }
  return { records, validEnd: pos };
}

function findIntactRecord(magic: number, buf: Buffer, from: number): number | undefined {
  const pattern = Buffer.alloc(4);
  pattern.writeUInt32BE(magic);
  for (let at = buf.indexOf(pattern, from); at >= 0; at = buf.indexOf(pattern, at + 1)) {
    if (decodeRecord(magic, buf, at).status === 'ok') return at;
  }
  return undefined;
}
