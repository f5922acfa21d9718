import { crc32 } from 'node:zlib';

/**
 * Wire frames of the replication protocol. Every frame:
 *
 * | off | size | field                                              |
 * |-----|------|----------------------------------------------------|
 * | 0   | 4    | magic `OSRW`                                       |
 * | 4   | 1    | protocol version (1)                               |
 * | 5   | 1    | type (`FrameType`)                                 |
 * | 6   | 2    | flags (per type; BATCH bit 0 = brotli-compressed)  |
 * | 8   | 4    | payload length                                     |
 * | 12  | 4    | crc32 of bytes 0..11 and the payload               |
 *
 * TLS already protects the bytes between the sockets; the crc catches corruption before encryption and after
 * decryption (memory, buffers, bugs), and makes a frame self-checking when it is stored or relayed.
 */
export const FRAME_MAGIC = 0x5752534f; // 'OSRW' read as a little-endian u32
/** Protocol version spoken and accepted. */
export const PROTOCOL_VERSION = 1;
/** Size of the frame header. */
export const FRAME_HEADER_SIZE = 16;
/** Largest payload accepted; a batch is at most about 1 MiB raw. */
export const MAX_FRAME_PAYLOAD = 80 * 1024 * 1024;

/** Frame types. */
export const FrameType = {
  /** Sender → receiver: group id and journal range; receiver → sender: the resume position. JSON payload. */
  HELLO: 1,
  /** Sender → receiver: a batch of changes (`batch.ts`). */
  BATCH: 2,
  /** Receiver → sender: u64 seq, everything up to it is durable at the recovery site. */
  ACK: 3,
  /** Either way, empty; the receiver answers each one. */
  KEEPALIVE: 4,
  /** Either way, JSON `{code, message}`; the connection is closed after it. */
  ERROR: 5,
  /** Sender → receiver: JSON `{id, diskId, blockSize, offsets}`: hash these blocks of the replica. */
  HASH_REQUEST: 6,
  /** Receiver → sender: u32 id length, JSON id, then 32-byte sha256 per requested block. */
  HASH_REPLY: 7,
} as const;
/** One of `FrameType`. */
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** BATCH flag: the payload is `u32 raw length` + brotli stream. */
export const FLAG_BROTLI = 1;

/** A decoded frame. */
export interface Frame {
  readonly type: FrameType;
  readonly flags: number;
  readonly payload: Buffer;
}

/** The peer sent bytes that are not a valid frame; the connection must be dropped. */
export class FrameError extends Error {
  override readonly name = 'FrameError';
  readonly code = 'FRAME_INVALID' as const;
}

/** Encodes one frame. */
export function encodeFrame(type: FrameType, payload: Buffer = Buffer.alloc(0), flags = 0): Buffer {
  return Buffer.concat(encodeFrameParts(type, [payload], flags));
}

/**
 * Encodes one frame without copying its payload: the header (its crc covering every part), then the parts as
 * given. Write them in order with nothing between (e.g. corked); a big batch is never gathered into one buffer.
 */
export function encodeFrameParts(type: FrameType, parts: readonly Buffer[], flags = 0): Buffer[] {
  const length = parts.reduce((n, p) => n + p.length, 0);
  if (length > MAX_FRAME_PAYLOAD) throw new RangeError(`frame payload of ${length} bytes`);
  const head = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  head.writeUInt32LE(FRAME_MAGIC, 0);
  head.writeUInt8(PROTOCOL_VERSION, 4);
  head.writeUInt8(type, 5);
  head.writeUInt16LE(flags, 6);
  head.writeUInt32LE(length, 8);
  let crc = crc32(head.subarray(0, 12));
  for (const p of parts) crc = crc32(p, crc);
  head.writeUInt32LE(crc >>> 0, 12);
  return [head, ...parts];
}

/** JSON payload helpers for HELLO/ERROR. */
export function jsonPayload(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** Parses a JSON payload, as a `FrameError` when it is not JSON. */
export function parseJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch {
    throw new FrameError('frame payload is not valid JSON');
  }
}

/**
 * Splits a byte stream into verified frames. `push` throws `FrameError` at the first invalid frame (bad magic,
 * version, type, length or crc); the decoder is then unusable.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Adds received bytes and returns the complete frames they finish. */
  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.buffered < FRAME_HEADER_SIZE) return out;
      const head = this.peek(FRAME_HEADER_SIZE);
      if (head.readUInt32LE(0) !== FRAME_MAGIC) throw new FrameError('bad frame magic');
      const version = head.readUInt8(4);
      if (version !== PROTOCOL_VERSION) throw new FrameError(`unsupported protocol version ${version}`);
      const type = head.readUInt8(5);
      if (type < FrameType.HELLO || type > FrameType.HASH_REPLY)
        throw new FrameError(`unknown frame type ${type}`);
      const length = head.readUInt32LE(8);
      if (length > MAX_FRAME_PAYLOAD) throw new FrameError(`frame payload of ${length} bytes is too large`);
      if (this.buffered < FRAME_HEADER_SIZE + length) return out;
      const whole = this.take(FRAME_HEADER_SIZE + length);
      const payload = whole.subarray(FRAME_HEADER_SIZE);
      const crc = crc32(payload, crc32(whole.subarray(0, 12))) >>> 0;
      if (crc !== whole.readUInt32LE(12)) throw new FrameError(`frame checksum mismatch (type ${type})`);
      out.push({ type: type as FrameType, flags: whole.readUInt16LE(6), payload });
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.chunks);
      out = all.subarray(0, n);
      this.chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}
