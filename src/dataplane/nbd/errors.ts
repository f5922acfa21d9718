import { nbdErrnoName, NbdErrno } from './protocol.js';

/**
 * A block request failed with an NBD error value (spec "Error values"). Backends throw it to choose the error the
 * client sees; the client rejects requests with it when the server replies with an error.
 */
export class NbdError extends Error {
  override readonly name = 'NbdError';
  /** The NBD error value (`NbdErrno`), not the host errno. */
  readonly errno: number;

  constructor(errno: number, message?: string) {
    super(message ?? nbdErrnoName(errno));
    this.errno = errno;
  }
}

/** The peer broke the NBD protocol (bad magic, impossible lengths, unexpected replies); the connection is dropped. */
export class NbdProtocolError extends Error {
  override readonly name = 'NbdProtocolError';
}

/** The server refused an option during the handshake (`NBD_REP_ERR_*`). */
export class NbdOptionError extends Error {
  override readonly name = 'NbdOptionError';
  /** The option reply type the server sent (bit 31 set). */
  readonly replyType: number;

  constructor(replyType: number, message: string) {
    super(message);
    this.replyType = replyType;
  }
}

/**
 * Maps any error thrown by a backend to the NBD error value sent to the client: `NbdError` keeps its value, host
 * errors are translated by code, anything else is `EIO`.
 */
export function toNbdErrno(err: unknown): number {
  if (err instanceof NbdError) return err.errno;
  const code = (err as { code?: unknown } | null)?.code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdErrno.ENOSPC;
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NbdErrno.EPERM;
    case 'EINVAL':
      return NbdErrno.EINVAL;
    case 'ENOMEM':
      return NbdErrno.ENOMEM;
    default:
      return NbdErrno.EIO;
  }
}
