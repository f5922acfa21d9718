/**
 * NBD wire constants and small codecs shared by the server and the client.
 *
 * Source: the NBD project's `doc/proto.md` (fixed newstyle handshake, simple and structured replies,
 * `base:allocation`). Section names in comments refer to that document. All integers are big-endian.
 */

/** `NBDMAGIC`, first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`, sent by the server after NBDMAGIC and by the client before every option. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Magic at the start of every option reply. */
export const NBD_OPT_REPLY_MAGIC = 0x0003e889045565a9n;
/** Magic of a (compact) transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk. */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server → client). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (client → server). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Option codes. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

/** True when an option reply type is an error (bit 31 set). */
export function isOptionReplyError(replyType: number): boolean {
  return replyType >= NBD_REP_FLAG_ERROR;
}

/** Info types carried by `NBD_REP_INFO`. */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** Transmission flags (u16, in `NBD_INFO_EXPORT` and the EXPORT_NAME reply). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/** Command types. */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

/** Command flags. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/** Structured reply chunk flags and types. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

/** `base:allocation` status bits (spec "Metadata querying", base:allocation). */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** The one metadata context this server implements. */
export const BASE_ALLOCATION = 'base:allocation';

/** NBD error values (spec "Error values"); fixed numbers, independent of the host's errno. */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Size limits this implementation advertises in `NBD_INFO_BLOCK_SIZE` and enforces. */
export const NBD_MIN_BLOCK_SIZE = 1;
export const NBD_PREFERRED_BLOCK_SIZE = 4096;
/** Largest READ/WRITE payload accepted (32 MiB, the interoperable maximum of spec "Block size constraints"). */
export const NBD_MAX_PAYLOAD = 32 * 1024 * 1024;
/** Size of a transmission request header. */
export const NBD_REQUEST_SIZE = 28;
/** Size of a simple reply header. */
export const NBD_SIMPLE_REPLY_SIZE = 16;
/** Size of a structured reply chunk header. */
export const NBD_STRUCTURED_HEADER_SIZE = 20;

/** Human-readable name of an NBD error value, for messages. */
export function nbdErrnoName(errno: number): string {
  for (const [name, value] of Object.entries(NbdErrno)) if (value === errno) return name;
  return `errno ${errno}`;
}

/** Human-readable name of an option code, for messages. */
export function optionName(option: number): string {
  const names: Record<number, string> = {
    [NBD_OPT_EXPORT_NAME]: 'EXPORT_NAME',
    [NBD_OPT_ABORT]: 'ABORT',
    [NBD_OPT_LIST]: 'LIST',
    [NBD_OPT_STARTTLS]: 'STARTTLS',
    [NBD_OPT_INFO]: 'INFO',
    [NBD_OPT_GO]: 'GO',
    [NBD_OPT_STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
    [NBD_OPT_LIST_META_CONTEXT]: 'LIST_META_CONTEXT',
    [NBD_OPT_SET_META_CONTEXT]: 'SET_META_CONTEXT',
  };
  return names[option] ?? `option ${option}`;
}

/** A decoded transmission request header. */
export interface NbdRequestHeader {
  readonly flags: number;
  readonly type: number;
  /** Opaque 8 bytes echoed in the reply; kept as a buffer slice to avoid BigInt work on the hot path. */
  readonly cookie: Buffer;
  readonly offset: number;
  readonly length: number;
}

/**
 * Encodes a request header. `offset` must be a safe integer (exports are far below 2^53 bytes).
 */
export function encodeRequest(
  type: number,
  flags: number,
  cookie: bigint,
  offset: number,
  length: number,
): Buffer {
  const b = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  writeU64(b, offset, 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** Writes a non-negative safe integer as a big-endian u64 without BigInt. */
export function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32BE(Math.floor(value / 0x100000000), at);
  b.writeUInt32BE(value >>> 0, at + 4);
}

/**
 * Reads a big-endian u64 as a number. Values above 2^53 lose precision but still compare as huge, which is all
 * the range checks need (they only have to reject them).
 */
export function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x100000000 + b.readUInt32BE(at + 4);
}

/** Builds an option reply (`magic | option | type | length | data`). */
export function encodeOptionReply(option: number, replyType: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(replyType, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, 20);
  return b;
}

/** Builds an option request (`IHAVEOPT | option | length | data`). */
export function encodeOption(option: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const b = Buffer.allocUnsafe(16 + len);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(len, 12);
  if (data) data.copy(b, 16);
  return b;
}

/** Builds a simple reply header with the cookie copied from the request. */
export function encodeSimpleReply(error: number, cookie: Buffer): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8, 0, 8);
  return b;
}

/**
 * Writes a structured reply chunk header into `b` at `at` (20 bytes), so callers can put header and payload in
 * one allocation.
 */
export function writeStructuredHeader(
  b: Buffer,
  at: number,
  flags: number,
  type: number,
  cookie: Buffer,
  length: number,
): void {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  cookie.copy(b, at + 8, 0, 8);
  b.writeUInt32BE(length, at + 16);
}

/** Encodes a length-prefixed (u32) UTF-8 string. */
export function encodeString32(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  body.copy(b, 4);
  return b;
}
