import * as fs from 'node:fs';
import { crc32 } from 'node:zlib';
import { JournalFormatError } from '../journal/errors.js';
import { encodeRecord, probeRecord } from '../journal/record.js';
import type { OfflineSeedSource } from '../transport/sink.js';

/**
 * The offline seed file (initial replication by export/import, R-POL-6): the bytes of an initial copy, carried
 * to the recovery site outside the link. Layout: a 32-byte header (magic `OSRSEED\0`, u32 version 1, u32 group
 * id length, u32 crc32 of the header's first 16 bytes and the group id, 12 reserved), the group id, then journal
 * records (`record.ts`, each with its own crc) — write records whose seqs are the placeholders' in the journal —
 * then a 24-byte trailer (magic `OSRSEEDE`, u64 record count, u32 crc32 of those 16 bytes, 4 reserved). A file
 * without its trailer is an unfinished export and is refused.
 */
const MAGIC = Buffer.from('OSRSEED\0', 'latin1');
const TRAILER_MAGIC = Buffer.from('OSRSEEDE', 'latin1');
const VERSION = 1;
const HEADER = 32;
const TRAILER = 24;

/** Writes a seed file; records must be added in increasing seq. */
export class OfflineSeedWriter {
  private readonly fd: number;
  private position: number;
  private count = 0;
  private lastSeq = 0;

  private constructor(fd: number, position: number) {
    this.fd = fd;
    this.position = position;
  }

  /** Creates (truncating) the seed file at `path` for `groupId`. */
  static create(path: string, groupId: string): OfflineSeedWriter {
    const id = Buffer.from(groupId, 'utf8');
    const head = Buffer.alloc(HEADER);
    MAGIC.copy(head, 0);
    head.writeUInt32LE(VERSION, 8);
    head.writeUInt32LE(id.length, 12);
    head.writeUInt32LE(crc32(id, crc32(head.subarray(0, 16))) >>> 0, 16);
    const fd = fs.openSync(path, 'w');
    fs.writeSync(fd, Buffer.concat([head, id]), 0, HEADER + id.length, 0);
    return new OfflineSeedWriter(fd, HEADER + id.length);
  }

  /** Adds the bytes of the placeholder with `seq`. */
  add(seq: number, time: number, diskId: string, offset: number, data: Buffer): void {
    if (seq <= this.lastSeq) throw new RangeError(`seed records must ascend: ${seq} after ${this.lastSeq}`);
    const rec = encodeRecord({ kind: 'write', seq, time, diskId, offset, data });
    fs.writeSync(this.fd, rec, 0, rec.length, this.position);
    this.position += rec.length;
    this.count++;
    this.lastSeq = seq;
  }

  /** Writes the trailer, makes the file durable and closes it. */
  finish(): void {
    const t = Buffer.alloc(TRAILER);
    TRAILER_MAGIC.copy(t, 0);
    t.writeBigUInt64LE(BigInt(this.count), 8);
    t.writeUInt32LE(crc32(t.subarray(0, 16)) >>> 0, 16);
    fs.writeSync(this.fd, t, 0, TRAILER, this.position);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }

  /** Closes without a trailer (the export was abandoned; the file will be refused). */
  abandon(): void {
    fs.closeSync(this.fd);
  }
}

/**
 * Reads a seed file at the recovery site: `open` verifies the header, every record and the trailer; `dataFor`
 * answers the receiver's placeholder lookups (`OfflineSeedSource`).
 */
export class OfflineSeedReader implements OfflineSeedSource {
  /** The group the seed was exported for. */
  readonly groupId: string;
  private readonly path: string;
  private readonly index: Map<
    number,
    { position: number; size: number; diskId: string; offset: number; length: number }
  >;

  private constructor(path: string, groupId: string, index: OfflineSeedReader['index']) {
    this.path = path;
    this.groupId = groupId;
    this.index = index;
  }

  /** Opens and verifies a seed file (a `JournalFormatError` says what is wrong with it). */
  static open(path: string): OfflineSeedReader {
    const buf = fs.readFileSync(path);
    const fail = (why: string): never => {
      throw new JournalFormatError(`offline seed ${path}: ${why}`);
    };
    if (buf.length < HEADER + TRAILER || !buf.subarray(0, 8).equals(MAGIC))
      fail('not a seed file (bad magic)');
    if (buf.readUInt32LE(8) !== VERSION) fail(`unsupported version ${buf.readUInt32LE(8)}`);
    const idLen = buf.readUInt32LE(12);
    const id = buf.subarray(HEADER, HEADER + idLen);
    if (crc32(id, crc32(buf.subarray(0, 16))) >>> 0 !== buf.readUInt32LE(16))
      fail('header checksum mismatch');
    const t = buf.subarray(buf.length - TRAILER);
    if (!t.subarray(0, 8).equals(TRAILER_MAGIC)) fail('no trailer: the export did not finish');
    if (crc32(t.subarray(0, 16)) >>> 0 !== t.readUInt32LE(16)) fail('trailer checksum mismatch');
    const count = Number(t.readBigUInt64LE(8));
    const body = buf.subarray(0, buf.length - TRAILER);
    const index: OfflineSeedReader['index'] = new Map();
    let at = HEADER + idLen;
    while (at < body.length) {
      const p = probeRecord(body, at);
      if (p.status !== 'ok') fail(`record at byte ${at}: ${p.status === 'bad' ? p.reason : 'truncated'}`);
      const ok = p as Extract<typeof p, { status: 'ok' }>;
      if (ok.entry.kind !== 'write') fail(`record at byte ${at} is not a write`);
      const e = ok.entry as Extract<typeof ok.entry, { kind: 'write' }>;
      index.set(e.seq, {
        position: at,
        size: ok.size,
        diskId: e.diskId,
        offset: e.offset,
        length: e.data.length,
      });
      at += ok.size;
    }
    if (index.size !== count) fail(`holds ${index.size} records, the trailer says ${count}`);
    return new OfflineSeedReader(path, id.toString('utf8'), index);
  }

  /** Number of seeded blocks. */
  get size(): number {
    return this.index.size;
  }

  dataFor(seq: number, diskId: string, offset: number, length: number): Promise<Buffer> {
    const r = this.index.get(seq);
    if (!r || r.diskId !== diskId || r.offset !== offset || r.length !== length) {
      return Promise.reject(new JournalFormatError(`offline seed ${this.path} has no block for seq ${seq}`));
    }
    const buf = Buffer.allocUnsafe(r.size);
    const fd = fs.openSync(this.path, 'r');
    try {
      fs.readSync(fd, buf, 0, r.size, r.position);
    } finally {
      fs.closeSync(fd);
    }
    const p = probeRecord(buf, 0);
    if (p.status !== 'ok' || p.entry.kind !== 'write') {
      return Promise.reject(
        new JournalFormatError(`offline seed ${this.path}: block for seq ${seq} changed on disk`),
      );
    }
    return Promise.resolve(p.entry.data);
  }
}
