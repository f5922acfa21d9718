import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Extent } from './backend.js';
import { ByteQueue } from './byte-queue.js';
import { NbdError, NbdOptionError, NbdProtocolError } from './errors.js';
import * as P from './protocol.js';

/** TLS settings of an `NbdClient` (STARTTLS). */
export interface NbdClientTlsOptions {
  /** PEM CA bundle (or the server's self-signed certificate) to verify the server against. */
  readonly ca?: string | Buffer;
  /** PEM client certificate and key, for servers that ask for one. */
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** Verify the server certificate (default true). Tests may turn this off. */
  readonly rejectUnauthorized?: boolean;
  /** Name to verify the certificate against (default: the host). */
  readonly servername?: string;
  /**
   * Pin the server certificate: the SHA-256 fingerprint (`AA:BB:…`, as in `X509Certificate.fingerprint256`) the
   * certificate must have, checked in addition to (or, with `rejectUnauthorized:false`, instead of) CA checks.
   */
  readonly fingerprint256?: string;
}

/** Options of `NbdClient.connect` / `list` / `info`. */
export interface NbdConnectOptions {
  /** TCP host (default 127.0.0.1) and port (default 10809); ignored when `path` is set. */
  readonly host?: string;
  readonly port?: number;
  /** Unix socket path. */
  readonly path?: string;
  /** Export to open (default: the server's default export, empty name). */
  readonly exportName?: string;
  /** Upgrade with STARTTLS before anything else; `true` means default verification. Fails if refused. */
  readonly tls?: NbdClientTlsOptions | boolean;
  /** Negotiate structured replies (default true). */
  readonly structuredReplies?: boolean;
  /** Metadata contexts to select when structured replies are on (default `['base:allocation']`). */
  readonly metaContexts?: readonly string[];
  /** Give up the connection and handshake after this many ms (default 30 000). */
  readonly timeoutMs?: number;
}

/** What the server told us about an export. */
export interface NbdExportInfo {
  readonly name: string;
  readonly size: number;
  /** Raw transmission flags (`NBD_FLAG_*`). */
  readonly flags: number;
  readonly description?: string;
  /** From `NBD_INFO_BLOCK_SIZE` when the server sent it. */
  readonly blockSize?: { readonly minimum: number; readonly preferred: number; readonly maximum: number };
}

/** An entry of `NBD_OPT_LIST`. */
export interface NbdExportListEntry {
  readonly name: string;
  readonly description: string;
}

/** Options of `NbdClient.read`. */
export interface NbdReadOptions {
  /** Ask for one contiguous data chunk (`NBD_CMD_FLAG_DF`; structured replies only). */
  readonly df?: boolean;
}

/** Options of `NbdClient.write` / `trim`. */
export interface NbdWriteOptions {
  readonly fua?: boolean;
}

/** Options of `NbdClient.writeZeroes`. */
export interface NbdZeroOptions extends NbdWriteOptions {
  readonly noHole?: boolean;
  readonly fastZero?: boolean;
}

/** Options of `NbdClient.blockStatus`. */
export interface NbdBlockStatusOptions {
  /** Ask for a single extent (`NBD_CMD_FLAG_REQ_ONE`). */
  readonly reqOne?: boolean;
  /** Metadata context name to return (default `base:allocation`). */
  readonly context?: string;
}

/** A block-status extent with the raw status bits of its context. */
export interface NbdExtent extends Extent {
  /** Raw status flags (for `base:allocation`: bit0 hole, bit1 zero). */
  readonly flags: number;
}

interface Pending {
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
  buffer?: Buffer;
  extents?: Map<number, NbdExtent[]>;
  error?: NbdError;
}

/**
 * Reads exact byte counts from a socket during the handshake, then hands leftover bytes to the transmission
 * parser.
 */
class HandshakeReader {
  readonly queue = new ByteQueue();
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private socket: net.Socket | undefined;
  private readonly onData = (b: Buffer): void => {
    this.queue.push(b);
    this.wake();
  };
  private readonly onEnd = (): void => this.abort(new NbdProtocolError('server closed the connection'));
  private readonly onError = (e: Error): void => this.abort(e);

  attach(socket: net.Socket): void {
    this.detach();
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  detach(): void {
    const s = this.socket;
    if (!s) return;
    s.off('data', this.onData);
    s.off('end', this.onEnd);
    s.off('close', this.onEnd);
    s.off('error', this.onError);
    this.socket = undefined;
  }

  read(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.queue.length >= n) return Promise.resolve(this.queue.take(n));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  abort(e: Error): void {
    this.failure ??= e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.failure);
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.queue.length >= w.n) {
      this.waiter = undefined;
      w.resolve(this.queue.take(w.n));
    }
  }
}

interface Session {
  socket: net.Socket;
  reader: HandshakeReader;
  noZeroes: boolean;
}

/**
 * An NBD client: fixed-newstyle handshake (optional STARTTLS, structured replies, metadata contexts), then
 * pipelined requests matched to replies by cookie, in any order. Used by our own code and tests.
 *
 * Every request method returns a promise that rejects with `NbdError` (carrying the server's NBD error value)
 * when the server refused it, or with `NbdProtocolError`/socket errors when the connection broke (which also
 * fails all other pending requests).
 */
export class NbdClient {
  /** The opened export. */
  readonly info: NbdExportInfo;
  /** True when structured replies were negotiated. */
  readonly structured: boolean;
  /** Selected metadata contexts by name → server id. */
  readonly metaContexts: ReadonlyMap<string, number>;
  private readonly socket: net.Socket;
  private readonly queue: ByteQueue;
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;
  private readonly closedPromise: Promise<void>;
  private corked = false;
  private readonly inFlight = new Set<Promise<unknown>>();
  private simpleRead: { cookie: number; p: Pending } | undefined;

  private constructor(
    session: Session,
    info: NbdExportInfo,
    structured: boolean,
    contexts: Map<string, number>,
  ) {
    this.socket = session.socket;
    this.queue = session.reader.queue;
    this.info = info;
    this.structured = structured;
    this.metaContexts = contexts;
    session.reader.detach();
    this.closedPromise = new Promise((resolve) => this.socket.once('close', () => resolve()));
    this.socket.on('data', (b: Buffer) => {
      this.queue.push(b);
      this.parse();
    });
    this.socket.on('error', (e) => this.failAll(e));
    this.socket.on('close', () => this.failAll(new NbdProtocolError('connection closed')));
    if (this.queue.length > 0) this.parse();
  }

  /** Export size in bytes. */
  get size(): number {
    return this.info.size;
  }

  /** Connects, negotiates and opens `options.exportName`. */
  static async connect(options: NbdConnectOptions = {}): Promise<NbdClient> {
    const session = await openSession(options);
    try {
      const n = await withTimeout(negotiate(session, options), options.timeoutMs, session);
      return new NbdClient(session, n.info, n.structured, n.contexts);
    } catch (err) {
      session.socket.destroy();
      throw err;
    }
  }

  /** Lists the server's exports (`NBD_OPT_LIST`), then aborts the handshake. */
  static async list(options: NbdConnectOptions = {}): Promise<NbdExportListEntry[]> {
    const session = await openSession(options);
    try {
      return await withTimeout(
        (async () => {
          await maybeStartTls(session, options);
          send(session, P.NBD_OPT_LIST);
          const out: NbdExportListEntry[] = [];
          for (;;) {
            const r = await readOptionReply(session, P.NBD_OPT_LIST);
            if (r.type === P.NBD_REP_ACK) break;
            if (r.type !== P.NBD_REP_SERVER || r.data.length < 4)
              throw new NbdProtocolError('bad LIST reply');
            const n = r.data.readUInt32BE(0);
            if (n > r.data.length - 4) throw new NbdProtocolError('bad LIST name length');
            out.push({
              name: r.data.toString('utf8', 4, 4 + n),
              description: r.data.toString('utf8', 4 + n),
            });
          }
          await abortSession(session);
          return out;
        })(),
        options.timeoutMs,
        session,
      );
    } finally {
      session.socket.destroy();
    }
  }

  /** Asks about an export without opening it (`NBD_OPT_INFO`), then aborts the handshake. */
  static async info(options: NbdConnectOptions = {}): Promise<NbdExportInfo> {
    const session = await openSession(options);
    try {
      return await withTimeout(
        (async () => {
          await maybeStartTls(session, options);
          const info = await infoOrGo(session, P.NBD_OPT_INFO, options.exportName ?? '');
          await abortSession(session);
          return info;
        })(),
        options.timeoutMs,
        session,
      );
    } finally {
      session.socket.destroy();
    }
  }

  /** Reads `length` bytes at `offset`. */
  read(offset: number, length: number, options: NbdReadOptions = {}): Promise<Buffer> {
    const flags = options.df ? P.NBD_CMD_FLAG_DF : 0;
    return this.request(P.NBD_CMD_READ, flags, offset, length) as Promise<Buffer>;
  }

  /** Writes `data` at `offset`. */
  async write(offset: number, data: Buffer, options: NbdWriteOptions = {}): Promise<void> {
    await this.request(P.NBD_CMD_WRITE, options.fua ? P.NBD_CMD_FLAG_FUA : 0, offset, data.length, data);
  }

  /** Asks the server to make all completed writes durable. */
  async flush(): Promise<void> {
    await this.request(P.NBD_CMD_FLUSH, 0, 0, 0);
  }

  /** Discards a range (advisory). */
  async trim(offset: number, length: number, options: NbdWriteOptions = {}): Promise<void> {
    await this.request(P.NBD_CMD_TRIM, options.fua ? P.NBD_CMD_FLAG_FUA : 0, offset, length);
  }

  /** Zeroes a range. */
  async writeZeroes(offset: number, length: number, options: NbdZeroOptions = {}): Promise<void> {
    let flags = options.fua ? P.NBD_CMD_FLAG_FUA : 0;
    if (options.noHole) flags |= P.NBD_CMD_FLAG_NO_HOLE;
    if (options.fastZero) flags |= P.NBD_CMD_FLAG_FAST_ZERO;
    await this.request(P.NBD_CMD_WRITE_ZEROES, flags, offset, length);
  }

  /** Prefetch hint (`NBD_CMD_CACHE`). */
  async cache(offset: number, length: number): Promise<void> {
    await this.request(P.NBD_CMD_CACHE, 0, offset, length);
  }

  /**
   * Block status of `[offset, offset+length)` for one selected metadata context (default `base:allocation`).
   * The extents start at `offset` and may cover less than `length`.
   */
  async blockStatus(
    offset: number,
    length: number,
    options: NbdBlockStatusOptions = {},
  ): Promise<NbdExtent[]> {
    const name = options.context ?? P.BASE_ALLOCATION;
    const id = this.metaContexts.get(name);
    if (id === undefined) throw new Error(`metadata context ${name} was not negotiated`);
    const flags = options.reqOne ? P.NBD_CMD_FLAG_REQ_ONE : 0;
    const all = (await this.request(P.NBD_CMD_BLOCK_STATUS, flags, offset, length)) as Map<
      number,
      NbdExtent[]
    >;
    const list = all.get(id);
    if (!list) throw new NbdProtocolError(`no block status for context ${name}`);
    return list;
  }

  /**
   * Clean disconnect: waits for pending requests, sends `NBD_CMD_DISC` and waits for the server to close.
   * Idempotent.
   */
  disconnect(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.allSettled([...this.inFlight]);
      if (!this.failure && !this.socket.destroyed) {
        this.socket.write(P.encodeRequest(P.NBD_CMD_DISC, 0, 0n, 0, 0));
        this.socket.end();
        const timer = setTimeout(() => this.socket.destroy(), 5000);
        await this.closedPromise;
        clearTimeout(timer);
      } else {
        this.socket.destroy();
      }
    })();
    return this.closing;
  }

  /** Drops the connection at once; pending requests fail. */
  destroy(): void {
    this.socket.destroy();
  }

  private request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload?: Buffer,
  ): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(new Error('client is disconnecting'));
    const cookie = this.nextCookie++;
    const pr = new Promise((resolve, reject) => {
      this.pending.set(cookie, { type, offset, length, resolve, reject });
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(() => {
          this.corked = false;
          this.socket.uncork();
        });
      }
      this.socket.write(P.encodeRequest(type, flags, BigInt(cookie), offset, length));
      if (payload && payload.length > 0) this.socket.write(payload);
    });
    this.inFlight.add(pr);
    const forget = (): void => void this.inFlight.delete(pr);
    pr.then(forget, forget);
    return pr;
  }

  private failAll(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  private parse(): void {
    try {
      while (this.parseOne());
    } catch (err) {
      this.failAll(err as Error);
      this.socket.destroy();
    }
  }

  private take(cookieBuf: Buffer): [number, Pending] {
    const cookie = P.readU64(cookieBuf, 0);
    const p = this.pending.get(cookie);
    if (!p) throw new NbdProtocolError(`reply for unknown cookie ${cookie}`);
    return [cookie, p];
  }

  private parseOne(): boolean {
    const q = this.queue;
    if (this.simpleRead) {
      const { cookie, p } = this.simpleRead;
      if (q.length < p.length) return false;
      this.simpleRead = undefined;
      this.pending.delete(cookie);
      p.resolve(q.take(p.length));
      return true;
    }
    if (q.length < 4) return false;
    const magic = q.peekUInt32BE(0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
      if (q.length < P.NBD_SIMPLE_REPLY_SIZE) return false;
      const h = q.take(P.NBD_SIMPLE_REPLY_SIZE);
      const error = h.readUInt32BE(4);
      const [cookie, p] = this.take(h.subarray(8, 16));
      if (p.type === P.NBD_CMD_READ && error === 0) {
        if (this.structured) throw new NbdProtocolError('simple reply to READ with structured replies');
        this.simpleRead = { cookie, p };
        return true;
      }
      this.pending.delete(cookie);
      if (error !== 0) p.reject(new NbdError(error));
      else if (p.type === P.NBD_CMD_BLOCK_STATUS)
        p.reject(new NbdProtocolError('simple reply to BLOCK_STATUS'));
      else p.resolve(undefined);
      return true;
    }
    if (magic !== P.NBD_STRUCTURED_REPLY_MAGIC)
      throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
    if (!this.structured) throw new NbdProtocolError('structured reply without negotiation');
    if (q.length < P.NBD_STRUCTURED_HEADER_SIZE) return false;
    const len = q.peekUInt32BE(16);
    if (len > P.NBD_MAX_PAYLOAD + 64) throw new NbdProtocolError(`reply chunk of ${len} bytes`);
    if (q.length < P.NBD_STRUCTURED_HEADER_SIZE + len) return false;
    const h = q.take(P.NBD_STRUCTURED_HEADER_SIZE);
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const [cookie, p] = this.take(h.subarray(8, 16));
    const body = q.take(len);
    this.chunk(p, type, body);
    if ((flags & P.NBD_REPLY_FLAG_DONE) !== 0) {
      this.pending.delete(cookie);
      if (p.error) p.reject(p.error);
      else if (p.type === P.NBD_CMD_READ) p.resolve(p.buffer ?? Buffer.alloc(p.length));
      else if (p.type === P.NBD_CMD_BLOCK_STATUS) p.resolve(p.extents ?? new Map());
      else p.resolve(undefined);
    }
    return true;
  }

  private chunk(p: Pending, type: number, body: Buffer): void {
    switch (type) {
      case P.NBD_REPLY_TYPE_NONE:
        return;
      case P.NBD_REPLY_TYPE_OFFSET_DATA: {
        if (p.type !== P.NBD_CMD_READ || body.length < 9) throw new NbdProtocolError('bad OFFSET_DATA chunk');
        const at = P.readU64(body, 0) - p.offset;
        const n = body.length - 8;
        if (at < 0 || at + n > p.length) throw new NbdProtocolError('OFFSET_DATA outside the request');
        if (at === 0 && n === p.length && !p.buffer) p.buffer = body.subarray(8);
        else body.copy(this.readBuffer(p), at, 8);
        return;
      }
      case P.NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (p.type !== P.NBD_CMD_READ || body.length !== 12)
          throw new NbdProtocolError('bad OFFSET_HOLE chunk');
        const at = P.readU64(body, 0) - p.offset;
        const n = body.readUInt32BE(8);
        if (at < 0 || n === 0 || at + n > p.length)
          throw new NbdProtocolError('OFFSET_HOLE outside the request');
        this.readBuffer(p).fill(0, at, at + n);
        return;
      }
      case P.NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (p.type !== P.NBD_CMD_BLOCK_STATUS || body.length < 12 || (body.length - 4) % 8 !== 0) {
          throw new NbdProtocolError('bad BLOCK_STATUS chunk');
        }
        const id = body.readUInt32BE(0);
        const list: NbdExtent[] = [];
        for (let at = 4; at < body.length; at += 8) {
          const length = body.readUInt32BE(at);
          const flags = body.readUInt32BE(at + 4);
          if (length === 0) throw new NbdProtocolError('zero-length extent');
          list.push({
            length,
            flags,
            hole: (flags & P.NBD_STATE_HOLE) !== 0,
            zero: (flags & P.NBD_STATE_ZERO) !== 0,
          });
        }
        (p.extents ??= new Map()).set(id, list);
        return;
      }
      default:
        // Spec "Structured reply types": unknown types with bit 15 set are errors; others break the stream.
        if ((type & 0x8000) !== 0) {
          const errno = body.length >= 4 ? body.readUInt32BE(0) : P.NbdErrno.EINVAL;
          const msgLen = body.length >= 6 ? body.readUInt16BE(4) : 0;
          const msg = msgLen > 0 ? body.toString('utf8', 6, Math.min(body.length, 6 + msgLen)) : undefined;
          p.error ??= new NbdError(errno === 0 ? P.NbdErrno.EINVAL : errno, msg);
          return;
        }
        throw new NbdProtocolError(`unknown reply chunk type ${type}`);
    }
  }

  private readBuffer(p: Pending): Buffer {
    if (!p.buffer) {
      p.buffer = Buffer.alloc(p.length);
    } else if (p.buffer.length === p.length && p.buffer.byteOffset !== 0) {
      // A zero-copy slice of a received chunk must not be written into; detach it first.
      p.buffer = Buffer.from(p.buffer);
    }
    return p.buffer;
  }
}

// ---- handshake helpers ----------------------------------------------------------------------------------------

function openSession(options: NbdConnectOptions): Promise<Session> {
  return new Promise((resolve, reject) => {
    const socket =
      options.path !== undefined
        ? net.connect({ path: options.path })
        : net.connect({ host: options.host ?? '127.0.0.1', port: options.port ?? 10809, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('NBD connect timed out'));
    }, options.timeoutMs ?? 30_000);
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    const reader = new HandshakeReader();
    reader.attach(socket);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      reader.attach(socket);
      void greet(socket, reader).then(resolve, (e: Error) => {
        socket.destroy();
        reject(e);
      });
    });
  });
}

async function greet(socket: net.Socket, reader: HandshakeReader): Promise<Session> {
  const hello = await reader.read(18);
  if (hello.readBigUInt64BE(0) !== P.NBD_MAGIC) throw new NbdProtocolError('not an NBD server');
  if (hello.readBigUInt64BE(8) !== P.NBD_IHAVEOPT) throw new NbdProtocolError('server is not newstyle');
  const flags = hello.readUInt16BE(16);
  if ((flags & P.NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new NbdProtocolError('server is not fixed newstyle');
  const noZeroes = (flags & P.NBD_FLAG_NO_ZEROES) !== 0;
  const c = Buffer.allocUnsafe(4);
  c.writeUInt32BE(P.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0), 0);
  socket.write(c);
  return { socket, reader, noZeroes };
}

async function withTimeout<T>(work: Promise<T>, ms: number | undefined, session: Session): Promise<T> {
  const timer = setTimeout(() => {
    session.reader.abort(new Error('NBD handshake timed out'));
    session.socket.destroy();
  }, ms ?? 30_000);
  try {
    return await work;
  } finally {
    clearTimeout(timer);
  }
}

function send(session: Session, option: number, data?: Buffer): void {
  session.socket.write(P.encodeOption(option, data));
}

async function readOptionReply(session: Session, option: number): Promise<{ type: number; data: Buffer }> {
  const h = await session.reader.read(20);
  if (h.readBigUInt64BE(0) !== P.NBD_OPT_REPLY_MAGIC) throw new NbdProtocolError('bad option reply magic');
  if (h.readUInt32BE(8) !== option) throw new NbdProtocolError('option reply for another option');
  const type = h.readUInt32BE(12);
  const len = h.readUInt32BE(16);
  if (len > 16 * 1024 * 1024) throw new NbdProtocolError('option reply too long');
  const data = len > 0 ? await session.reader.read(len) : Buffer.alloc(0);
  return { type, data };
}

function optionError(option: number, r: { type: number; data: Buffer }): NbdOptionError {
  const msg = r.data.length > 0 ? `: ${r.data.toString('utf8')}` : '';
  return new NbdOptionError(
    r.type,
    `server refused ${P.optionName(option)} (0x${r.type.toString(16)})${msg}`,
  );
}

async function abortSession(session: Session): Promise<void> {
  send(session, P.NBD_OPT_ABORT);
  // Clients must tolerate servers that close without replying to ABORT (spec NBD_OPT_ABORT).
  await readOptionReply(session, P.NBD_OPT_ABORT).catch(() => undefined);
}

async function maybeStartTls(session: Session, options: NbdConnectOptions): Promise<void> {
  if (!options.tls) return;
  const t: NbdClientTlsOptions = options.tls === true ? {} : options.tls;
  send(session, P.NBD_OPT_STARTTLS);
  const r = await readOptionReply(session, P.NBD_OPT_STARTTLS);
  if (r.type !== P.NBD_REP_ACK) throw optionError(P.NBD_OPT_STARTTLS, r);
  if (session.reader.queue.length > 0) throw new NbdProtocolError('server sent data after STARTTLS');
  session.reader.detach();
  const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({
      socket: session.socket,
      ca: t.ca,
      cert: t.cert,
      key: t.key,
      rejectUnauthorized: t.rejectUnauthorized ?? true,
      servername: t.servername ?? (net.isIP(options.host ?? '127.0.0.1') ? undefined : options.host),
      checkServerIdentity: (host, cert) => {
        if (t.fingerprint256 && cert.fingerprint256 !== t.fingerprint256) {
          return new Error(
            `server certificate fingerprint ${cert.fingerprint256} does not match the pinned one`,
          );
        }
        if (t.fingerprint256 || net.isIP(host) || host === '') return undefined;
        return tls.checkServerIdentity(host, cert);
      },
    });
    s.once('secureConnect', () => {
      s.off('error', reject);
      // With rejectUnauthorized:false Node skips checkServerIdentity, so enforce a pin here too.
      if (t.fingerprint256 && s.getPeerCertificate().fingerprint256 !== t.fingerprint256) {
        s.destroy();
        reject(new Error('server certificate fingerprint does not match the pinned one'));
        return;
      }
      resolve(s);
    });
    s.once('error', reject);
  });
  session.socket = secure;
  session.reader.attach(secure);
}

async function infoOrGo(session: Session, option: number, name: string): Promise<NbdExportInfo> {
  const n = Buffer.from(name, 'utf8');
  const types = [P.NBD_INFO_BLOCK_SIZE, P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION];
  const d = Buffer.allocUnsafe(4 + n.length + 2 + 2 * types.length);
  d.writeUInt32BE(n.length, 0);
  n.copy(d, 4);
  d.writeUInt16BE(types.length, 4 + n.length);
  types.forEach((t, i) => d.writeUInt16BE(t, 6 + n.length + 2 * i));
  send(session, option, d);
  let size: number | undefined;
  let flags = 0;
  let realName = name;
  let description: string | undefined;
  let blockSize: NbdExportInfo['blockSize'];
  for (;;) {
    const r = await readOptionReply(session, option);
    if (r.type === P.NBD_REP_ACK) break;
    if (P.isOptionReplyError(r.type)) throw optionError(option, r);
    if (r.type !== P.NBD_REP_INFO || r.data.length < 2) continue;
    const infoType = r.data.readUInt16BE(0);
    if (infoType === P.NBD_INFO_EXPORT && r.data.length === 12) {
      size = P.readU64(r.data, 2);
      flags = r.data.readUInt16BE(10);
    } else if (infoType === P.NBD_INFO_NAME) {
      realName = r.data.toString('utf8', 2);
    } else if (infoType === P.NBD_INFO_DESCRIPTION) {
      description = r.data.toString('utf8', 2);
    } else if (infoType === P.NBD_INFO_BLOCK_SIZE && r.data.length === 14) {
      blockSize = {
        minimum: r.data.readUInt32BE(2),
        preferred: r.data.readUInt32BE(6),
        maximum: r.data.readUInt32BE(10),
      };
    }
  }
  if (size === undefined) throw new NbdProtocolError('server sent no NBD_INFO_EXPORT');
  return { name: realName, size, flags, description, blockSize };
}

async function negotiate(
  session: Session,
  options: NbdConnectOptions,
): Promise<{ info: NbdExportInfo; structured: boolean; contexts: Map<string, number> }> {
  await maybeStartTls(session, options);
  const name = options.exportName ?? '';
  let structured = false;
  if (options.structuredReplies ?? true) {
    send(session, P.NBD_OPT_STRUCTURED_REPLY);
    const r = await readOptionReply(session, P.NBD_OPT_STRUCTURED_REPLY);
    structured = r.type === P.NBD_REP_ACK;
  }
  const contexts = new Map<string, number>();
  const wanted = options.metaContexts ?? [P.BASE_ALLOCATION];
  if (structured && wanted.length > 0) {
    const parts = [P.encodeString32(name), Buffer.alloc(4)];
    parts[1]!.writeUInt32BE(wanted.length, 0);
    for (const q of wanted) parts.push(P.encodeString32(q));
    send(session, P.NBD_OPT_SET_META_CONTEXT, Buffer.concat(parts));
    for (;;) {
      const r = await readOptionReply(session, P.NBD_OPT_SET_META_CONTEXT);
      if (r.type === P.NBD_REP_ACK) break;
      if (P.isOptionReplyError(r.type)) break; // contexts are optional; block status is then unavailable
      if (r.type === P.NBD_REP_META_CONTEXT && r.data.length >= 4) {
        contexts.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
      }
    }
  }
  let info: NbdExportInfo;
  try {
    info = await infoOrGo(session, P.NBD_OPT_GO, name);
  } catch (err) {
    if (!(err instanceof NbdOptionError) || err.replyType !== P.NBD_REP_ERR_UNSUP) throw err;
    // Spec NBD_OPT_EXPORT_NAME: fall back when the server does not know GO.
    send(session, P.NBD_OPT_EXPORT_NAME, Buffer.from(name, 'utf8'));
    const b = await session.reader.read(session.noZeroes ? 10 : 134);
    info = { name, size: P.readU64(b, 0), flags: b.readUInt16BE(8) };
  }
  return { info, structured, contexts };
}
