import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Extent } from './backend.js';
import { ByteQueue } from './byte-queue.js';
import { NbdProtocolError, toNbdErrno } from './errors.js';
import * as P from './protocol.js';
import type { NbdExport, ResolvedServerSettings } from './server.js';

type Phase = 'client-flags' | 'options' | 'starttls' | 'transmission' | 'closed';

/** Meta context id we hand out for `base:allocation` (ids are per connection; 0 means "none selected"). */
const BASE_ALLOCATION_ID = 1;
/** Largest number of extents sent in one BLOCK_STATUS chunk (spec suggests at most 2^20). */
const MAX_EXTENTS = 128 * 1024;
/** `OSR_NBD_REPLY_FLUSH=tick` sends replies after each callback instead of once per event-loop turn. */
const REPLY_FLUSH_IMMEDIATE = process.env.OSR_NBD_REPLY_FLUSH !== 'tick';
/**
 * Receive slab of the direct path, and the least room a read gets before a new slab is taken. Small WRITE
 * payloads are views of it that a backend may keep (a journal), so it is no larger than the 64 KiB chunks Node
 * would allocate per read anyway; large payloads are received into buffers of their own.
 */
const SLAB_SIZE = 64 * 1024;
const SLAB_MIN_READ = 8 * 1024;
/** A WRITE payload missing at least this many bytes is received straight into its buffer. */
const DIRECT_READ_MIN = 32 * 1024;
/** Slab that small READ replies are cut from; those are only held until the socket has written them. */
const REPLY_SLAB_SIZE = 256 * 1024;
/** READ replies up to this size are cut from the reply slab. */
const REPLY_SLAB_MAX = 64 * 1024 + 64;
/** Spare payload buffers kept per connection: only large ones, at most this many and this many bytes. */
const SPARE_MIN = 64 * 1024;
const SPARE_MAX_COUNT = 8;
const SPARE_MAX_BYTES = 16 * 1024 * 1024;
/** `OSR_NBD_READ_REUSE=0` allocates every large READ reply afresh (for A/B benchmarks). */
const REUSE_READ_BUFFERS = process.env.OSR_NBD_READ_REUSE !== '0';
/** Zero padding of the EXPORT_NAME reply when NO_ZEROES was not negotiated. */
const EXPORT_NAME_PADDING = Buffer.alloc(124);

interface Request extends P.NbdRequestHeader {
  readonly payload?: Buffer;
  /** The payload is a buffer of its own (not a view of a receive slab), so it may be reused once released. */
  readonly ownPayload?: boolean;
}

/**
 * One client connection of an `NbdServer`: handshake state machine, request parsing, dispatch to the backend
 * and replies. Internal to the server; every failure is contained here (the connection is dropped, never the
 * process).
 */
export class NbdConnection {
  /** Settles when the socket is fully closed. */
  readonly closed: Promise<void>;
  private socket: net.Socket | tls.TLSSocket;
  private readonly s: ResolvedServerSettings;
  private readonly queue = new ByteQueue();
  private phase: Phase = 'client-flags';
  private noZeroes = false;
  private tlsActive = false;
  private structured = false;
  private metaContext = 0;
  private exp: NbdExport | undefined;
  private readOnly = true;
  private size = 0;
  private pendingHeader: P.NbdRequestHeader | undefined;
  /** Payload of `pendingHeader` (a WRITE) while it is being received, and how much of it has arrived. */
  private payload: Buffer | undefined;
  private payloadFilled = 0;
  /** Receive slab of the direct path: reads land at `slabPos`; bytes before it belong to the queue. */
  private slab: Buffer | undefined;
  private slabPos = 0;
  /** The buffer handed to the socket for the next read when it is the rest of `payload`. */
  private payloadView: Buffer | undefined;
  private pendingOption: { option: number; length: number } | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  private readingPaused = false;
  private corked = false;
  private draining = false;
  private disconnectRequested = false;
  private ending = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;
  private readonly onData = (chunk: Buffer): void => this.receive(chunk);
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  /**
   * `socket` comes from a server created with `pauseOnConnect`; with `directReceive` its handle is taken over by
   * a socket that reads straight into our buffers (see `adoptDirect`), otherwise it is read through 'data'.
   */
  constructor(socket: net.Socket, settings: ResolvedServerSettings) {
    this.socket = settings.directReceive ? this.adoptDirect(socket) : socket;
    this.s = settings;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** Sends the greeting and starts reading. */
  start(): void {
    const sock = this.socket;
    sock.setNoDelay(true);
    sock.on('error', (err: Error) => this.fail(err));
    sock.on('close', () => this.onClose());
    sock.on('drain', () => this.maybeResume());
    if (!this.direct) sock.on('data', this.onData);
    sock.resume();
    this.handshakeTimer = setTimeout(
      () => this.fail(new NbdProtocolError('handshake timed out')),
      this.s.handshakeTimeoutMs,
    );
    this.handshakeTimer.unref();
    const hello = Buffer.allocUnsafe(18);
    hello.writeBigUInt64BE(P.NBD_MAGIC, 0);
    hello.writeBigUInt64BE(P.NBD_IHAVEOPT, 8);
    hello.writeUInt16BE(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES, 16);
    sock.write(hello);
  }

  /**
   * Graceful close for server shutdown: a connection still negotiating is closed at once; one in transmission
   * finishes its in-flight requests (new ones get ESHUTDOWN) and is then closed.
   */
  shutdown(): Promise<void> {
    if (this.phase !== 'transmission') {
      this.destroy();
      return this.closed;
    }
    this.draining = true;
    // Keep reading so requests that arrive meanwhile get ESHUTDOWN instead of silence.
    if (this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
    this.pump();
    this.finishWhenIdle();
    return this.closed;
  }

  /** Drops the connection immediately. */
  destroy(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.queue.clear();
    this.socket.destroy();
  }

  /**
   * Payload buffers the backend has released (`releasesWriteData`), for reuse by later WRITEs, and large READ
   * reply buffers the socket has finished writing, for reuse by later READs (matched by exact length).
   */
  private readonly spare: Buffer[] = [];
  private spareBytes = 0;

  /**
   * A buffer for a WRITE payload received in several reads. Reusing one whose bytes were just copied to the
   * image saves the allocation, its page faults and garbage collection for every large write.
   */
  private payloadBuffer(length: number): Buffer {
    for (let i = this.spare.length - 1; i >= 0; i--) {
      const b = this.spare[i]!;
      if (b.length === length) {
        this.spare.splice(i, 1);
        this.spareBytes -= length;
        return b;
      }
    }
    return Buffer.allocUnsafe(length);
  }

  private releasePayload(b: Buffer): void {
    if (b.length < SPARE_MIN || this.spareBytes + b.length > SPARE_MAX_BYTES || this.phase === 'closed')
      return;
    if (this.spare.length >= SPARE_MAX_COUNT) this.spareBytes -= this.spare.shift()!.length;
    this.spare.push(b);
    this.spareBytes += b.length;
  }

  /** Slab that small READ replies are cut from (one allocation for many replies; never rewritten). */
  private replySlab: Buffer | undefined;
  private replySlabPos = 0;

  private replyBuffer(n: number): Buffer {
    if (n > REPLY_SLAB_MAX) return REUSE_READ_BUFFERS ? this.payloadBuffer(n) : Buffer.allocUnsafe(n);
    if (!this.replySlab || this.replySlab.length - this.replySlabPos < n) {
      this.replySlab = Buffer.allocUnsafe(REPLY_SLAB_SIZE);
      this.replySlabPos = 0;
    }
    const b = this.replySlab.subarray(this.replySlabPos, this.replySlabPos + n);
    this.replySlabPos += (n + 7) & ~7;
    return b;
  }

  /** True while the plain socket reads through `nextReadBuffer`/`onDirectRead` instead of 'data' events. */
  private direct = false;

  /**
   * Direct receive: a socket built on the accepted connection's handle with Node's `onread` option, so the
   * kernel copies request payloads straight into the buffer the backend will write (no per-read allocation, no
   * reassembly copy; a 1 MiB WRITE arrives in a few large reads). Headers and small payloads land in a slab that
   * is handed out piecewise and never rewritten, so payload views taken from it stay valid.
   */
  private adoptDirect(accepted: net.Socket): net.Socket {
    const holder = accepted as unknown as { _handle?: unknown };
    const handle = holder._handle;
    if (!handle) return accepted;
    // The accepted socket never read (pauseOnConnect); from now on only the new socket owns the handle. The
    // accepted one is destroyed without it when the connection closes, which keeps the server's count right.
    holder._handle = null;
    const sock = new net.Socket({
      handle,
      readable: true,
      writable: true,
      onread: {
        buffer: () => this.nextReadBuffer(),
        callback: (n: number, buf: Uint8Array) => this.onDirectRead(n, buf),
      },
    } as net.SocketConstructorOpts & { handle: unknown });
    sock.once('close', () => accepted.destroy());
    this.direct = true;
    return sock;
  }

  private nextReadBuffer(): Buffer {
    const missing = this.payload ? this.payload.length - this.payloadFilled : 0;
    // Only large remainders are worth a read of their own; small ones land in the slab and are copied.
    if (missing >= DIRECT_READ_MIN && this.queue.length === 0) {
      this.payloadView = this.payload!.subarray(this.payloadFilled);
      return this.payloadView;
    }
    this.payloadView = undefined;
    if (!this.slab || this.slab.length - this.slabPos < SLAB_MIN_READ) {
      this.slab = Buffer.allocUnsafe(SLAB_SIZE);
      this.slabPos = 0;
    }
    return this.slab.subarray(this.slabPos);
  }

  private onDirectRead(n: number, buf: Uint8Array): void {
    if (this.phase === 'closed' || n <= 0) return;
    if (buf === this.payloadView) {
      this.payloadView = undefined;
      this.payloadFilled += n;
      if (this.payloadFilled === this.payload!.length) this.pump();
      return;
    }
    const chunk = this.slab!.subarray(this.slabPos, this.slabPos + n);
    this.slabPos += n;
    this.receive(chunk);
  }

  private fail(err: Error): void {
    if (this.phase === 'closed') return;
    this.s.onConnectionError(err);
    this.destroy();
  }

  private onClose(): void {
    this.phase = 'closed';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.queue.clear();
    this.resolveClosed();
  }

  private receive(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    const payload = this.payload;
    if (payload && this.queue.length === 0) {
      // The rest of a WRITE payload: copy straight into it (the direct path usually reads into it instead).
      const n = Math.min(chunk.length, payload.length - this.payloadFilled);
      chunk.copy(payload, this.payloadFilled, 0, n);
      this.payloadFilled += n;
      chunk = chunk.subarray(n);
    }
    this.queue.push(chunk);
    this.pump();
  }

  /** Consumes as much buffered input as the current phase and flow-control limits allow. */
  private pump(): void {
    try {
      for (;;) {
        if (this.phase === 'client-flags') {
          if (this.queue.length < 4) return;
          this.clientFlags(this.queue.take(4).readUInt32BE(0));
        } else if (this.phase === 'options') {
          let opt = this.pendingOption;
          if (!opt) {
            if (this.queue.length < 16) return;
            const hdr = this.queue.take(16);
            if (hdr.readBigUInt64BE(0) !== P.NBD_IHAVEOPT) throw new NbdProtocolError('bad option magic');
            opt = { option: hdr.readUInt32BE(8), length: hdr.readUInt32BE(12) };
            if (opt.length > this.s.maxOptionLength) {
              throw new NbdProtocolError(`option data of ${opt.length} bytes refused`);
            }
          }
          if (this.queue.length < opt.length) {
            this.pendingOption = opt;
            return;
          }
          this.pendingOption = undefined;
          this.option(opt.option, this.queue.take(opt.length));
        } else if (this.phase === 'transmission') {
          if (!this.nextRequest()) return;
        } else {
          return;
        }
      }
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  // ---- handshake ------------------------------------------------------------------------------------------

  private clientFlags(flags: number): void {
    // Spec "Client flags": unknown bits or NO_ZEROES without FIXED_NEWSTYLE must make us drop the client; we
    // only speak fixed newstyle, so that flag is required.
    if ((flags & ~(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)) !== 0) {
      throw new NbdProtocolError(`unknown client flags 0x${flags.toString(16)}`);
    }
    if ((flags & P.NBD_FLAG_C_FIXED_NEWSTYLE) === 0)
      throw new NbdProtocolError('client is not fixed newstyle');
    this.noZeroes = (flags & P.NBD_FLAG_C_NO_ZEROES) !== 0;
    this.phase = 'options';
  }

  private reply(option: number, type: number, data?: Buffer): void {
    this.socket.write(P.encodeOptionReply(option, type, data));
  }

  private replyError(option: number, type: number, message: string): void {
    this.reply(option, type, Buffer.from(message, 'utf8'));
  }

  private option(option: number, data: Buffer): void {
    const tlsMissing = this.s.tlsRequired && !this.tlsActive;
    if (tlsMissing && option !== P.NBD_OPT_STARTTLS && option !== P.NBD_OPT_ABORT) {
      if (option === P.NBD_OPT_EXPORT_NAME) throw new NbdProtocolError('EXPORT_NAME before required TLS');
      this.replyError(option, P.NBD_REP_ERR_TLS_REQD, 'TLS is required');
      return;
    }
    switch (option) {
      case P.NBD_OPT_EXPORT_NAME:
        return this.optExportName(data);
      case P.NBD_OPT_ABORT:
        this.reply(option, P.NBD_REP_ACK);
        this.phase = 'closed';
        this.socket.end();
        return;
      case P.NBD_OPT_LIST:
        return this.optList(data);
      case P.NBD_OPT_STARTTLS:
        return this.optStartTls(data);
      case P.NBD_OPT_INFO:
      case P.NBD_OPT_GO:
        return this.optInfoGo(option, data);
      case P.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.replyError(option, P.NBD_REP_ERR_INVALID, 'no data expected');
        if (this.structured) return this.replyError(option, P.NBD_REP_ERR_INVALID, 'already negotiated');
        this.structured = true;
        return this.reply(option, P.NBD_REP_ACK);
      case P.NBD_OPT_LIST_META_CONTEXT:
      case P.NBD_OPT_SET_META_CONTEXT:
        return this.optMetaContext(option, data);
      default:
        // Spec "Option types": unknown options get ERR_UNSUP and negotiation continues.
        return this.replyError(option, P.NBD_REP_ERR_UNSUP, `unsupported ${P.optionName(option)}`);
    }
  }

  private findExport(name: string): NbdExport | undefined {
    return this.s.exports.get(name) ?? (name === '' ? this.s.exportList[0] : undefined);
  }

  private transmissionFlags(e: NbdExport): number {
    const readOnly = (e.readOnly ?? false) || e.backend.readOnly;
    let f = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_CACHE;
    // All connections to an export share one backend whose flush() covers every completed write, so flushes
    // are visible across connections (spec NBD_FLAG_CAN_MULTI_CONN).
    f |= P.NBD_FLAG_CAN_MULTI_CONN;
    if (readOnly) f |= P.NBD_FLAG_READ_ONLY;
    else f |= P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO;
    if (this.structured) f |= P.NBD_FLAG_SEND_DF;
    return f;
  }

  private enterTransmission(e: NbdExport): void {
    this.exp = e;
    this.readOnly = (e.readOnly ?? false) || e.backend.readOnly;
    this.size = e.backend.size;
    this.phase = 'transmission';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
  }

  private optExportName(data: Buffer): void {
    const e = this.findExport(data.toString('utf8'));
    // EXPORT_NAME cannot report errors: the only answer to an unknown name is closing (spec NBD_OPT_EXPORT_NAME).
    if (!e) throw new NbdProtocolError(`unknown export "${data.toString('utf8')}"`);
    const b = Buffer.allocUnsafe(10);
    P.writeU64(b, e.backend.size, 0);
    b.writeUInt16BE(this.transmissionFlags(e), 8);
    this.socket.write(this.noZeroes ? b : Buffer.concat([b, EXPORT_NAME_PADDING]));
    this.enterTransmission(e);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.replyError(P.NBD_OPT_LIST, P.NBD_REP_ERR_INVALID, 'no data expected');
    for (const e of this.s.exportList) {
      const name = P.encodeString32(e.name);
      const desc = Buffer.from(e.description ?? '', 'utf8');
      this.reply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, Buffer.concat([name, desc]));
    }
    this.reply(P.NBD_OPT_LIST, P.NBD_REP_ACK);
  }

  private optInfoGo(option: number, data: Buffer): void {
    if (data.length < 6) return this.replyError(option, P.NBD_REP_ERR_INVALID, 'short request');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6) return this.replyError(option, P.NBD_REP_ERR_INVALID, 'bad name length');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const nReq = data.readUInt16BE(4 + nameLen);
    if (data.length !== 6 + nameLen + 2 * nReq) {
      return this.replyError(option, P.NBD_REP_ERR_INVALID, 'bad information request count');
    }
    const e = this.findExport(name);
    if (!e) return this.replyError(option, P.NBD_REP_ERR_UNKNOWN, `no export named "${name}"`);
    const requested = new Set<number>();
    for (let i = 0; i < nReq; i++) requested.add(data.readUInt16BE(6 + nameLen + 2 * i));

    const info = Buffer.allocUnsafe(12);
    info.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
    P.writeU64(info, e.backend.size, 2);
    info.writeUInt16BE(this.transmissionFlags(e), 10);
    this.reply(option, P.NBD_REP_INFO, info);
    if (requested.has(P.NBD_INFO_NAME)) {
      const n = Buffer.from(e.name, 'utf8');
      const b = Buffer.allocUnsafe(2 + n.length);
      b.writeUInt16BE(P.NBD_INFO_NAME, 0);
      n.copy(b, 2);
      this.reply(option, P.NBD_REP_INFO, b);
    }
    if (requested.has(P.NBD_INFO_DESCRIPTION) && e.description) {
      const d = Buffer.from(e.description, 'utf8');
      const b = Buffer.allocUnsafe(2 + d.length);
      b.writeUInt16BE(P.NBD_INFO_DESCRIPTION, 0);
      d.copy(b, 2);
      this.reply(option, P.NBD_REP_INFO, b);
    }
    // Sent even when not requested: we accept any alignment, so it only informs (spec "Block size constraints").
    const bs = Buffer.allocUnsafe(14);
    bs.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
    bs.writeUInt32BE(P.NBD_MIN_BLOCK_SIZE, 2);
    bs.writeUInt32BE(P.NBD_PREFERRED_BLOCK_SIZE, 6);
    bs.writeUInt32BE(P.NBD_MAX_PAYLOAD, 10);
    this.reply(option, P.NBD_REP_INFO, bs);
    this.reply(option, P.NBD_REP_ACK);
    if (option === P.NBD_OPT_GO) this.enterTransmission(e);
  }

  private optMetaContext(option: number, data: Buffer): void {
    const bad = (msg: string): void => this.replyError(option, P.NBD_REP_ERR_INVALID, msg);
    if (option === P.NBD_OPT_SET_META_CONTEXT && !this.structured) {
      return bad('structured replies must be negotiated first');
    }
    if (data.length < 8) return bad('short request');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 8) return bad('bad export name length');
    const name = data.toString('utf8', 4, 4 + nameLen);
    let at = 4 + nameLen;
    const nQueries = data.readUInt32BE(at);
    at += 4;
    const queries: string[] = [];
    for (let i = 0; i < nQueries; i++) {
      if (at + 4 > data.length) return bad('truncated query list');
      const qLen = data.readUInt32BE(at);
      at += 4;
      if (qLen > data.length - at) return bad('truncated query');
      queries.push(data.toString('utf8', at, at + qLen));
      at += qLen;
    }
    if (at !== data.length) return bad('trailing bytes');
    if (!this.findExport(name)) return this.replyError(option, P.NBD_REP_ERR_UNKNOWN, `no export "${name}"`);

    let match: boolean;
    if (option === P.NBD_OPT_LIST_META_CONTEXT) {
      // In LIST, no query means "everything" and "base:" is a namespace wildcard (spec "Metadata querying").
      match = queries.length === 0 || queries.some((q) => q === P.BASE_ALLOCATION || q === 'base:');
    } else {
      match = queries.includes(P.BASE_ALLOCATION);
      this.metaContext = match ? BASE_ALLOCATION_ID : 0;
    }
    if (match) {
      const id = option === P.NBD_OPT_LIST_META_CONTEXT ? 0 : BASE_ALLOCATION_ID;
      const n = Buffer.from(P.BASE_ALLOCATION, 'utf8');
      const b = Buffer.allocUnsafe(4 + n.length);
      b.writeUInt32BE(id, 0);
      n.copy(b, 4);
      this.reply(option, P.NBD_REP_META_CONTEXT, b);
    }
    this.reply(option, P.NBD_REP_ACK);
  }

  private optStartTls(data: Buffer): void {
    const opt = P.NBD_OPT_STARTTLS;
    if (!this.s.secureContext) return this.replyError(opt, P.NBD_REP_ERR_UNSUP, 'TLS is not configured');
    if (data.length !== 0) return this.replyError(opt, P.NBD_REP_ERR_INVALID, 'no data expected');
    if (this.tlsActive) return this.replyError(opt, P.NBD_REP_ERR_INVALID, 'TLS already active');
    // The client may only start the TLS handshake after our ACK (spec NBD_OPT_STARTTLS), so anything already
    // buffered is a violation; stop reading plaintext now and hand the socket to TLS once the ACK is written.
    if (this.queue.length !== 0) throw new NbdProtocolError('data after STARTTLS');
    this.phase = 'starttls';
    const plain = this.socket;
    plain.off('data', this.onData);
    plain.write(P.encodeOptionReply(opt, P.NBD_REP_ACK), (err) => {
      if (err || this.phase !== 'starttls') return;
      const secure = new tls.TLSSocket(plain, {
        isServer: true,
        secureContext: this.s.secureContext,
        requestCert: this.s.tlsOptions?.requestCert ?? false,
        rejectUnauthorized: this.s.tlsOptions?.requestCert ?? false,
      });
      this.socket = secure;
      secure.on('error', (e: Error) => this.fail(e));
      secure.on('close', () => this.onClose());
      secure.on('drain', () => this.maybeResume());
      secure.once('secure', () => {
        if (this.phase !== 'starttls') return;
        // Spec: after STARTTLS all previously negotiated state is forgotten.
        this.tlsActive = true;
        this.structured = false;
        this.metaContext = 0;
        this.phase = 'options';
        this.pump();
      });
      secure.on('data', this.onData);
    });
  }

  // ---- transmission ---------------------------------------------------------------------------------------

  private overLimits(): boolean {
    return (
      this.inFlight >= this.s.maxInFlight ||
      this.inFlightBytes >= this.s.maxInFlightBytes ||
      this.socket.writableLength >= this.s.maxInFlightBytes
    );
  }

  /** Parses and dispatches one request; returns false when more input (or capacity) is needed. */
  private nextRequest(): boolean {
    if (this.disconnectRequested) {
      this.queue.clear();
      return false;
    }
    // Requests refused during shutdown cost nothing, so limits do not apply to them.
    if (!this.draining && this.overLimits()) {
      if (!this.readingPaused) {
        this.readingPaused = true;
        this.socket.pause();
      }
      return false;
    }
    let h = this.pendingHeader;
    if (!h) {
      if (this.queue.length < P.NBD_REQUEST_SIZE) return false;
      const b = this.queue.take(P.NBD_REQUEST_SIZE);
      // Spec "Transmission": a bad magic means we lost framing; the only safe answer is to disconnect.
      if (b.readUInt32BE(0) !== P.NBD_REQUEST_MAGIC) throw new NbdProtocolError('bad request magic');
      h = {
        flags: b.readUInt16BE(4),
        type: b.readUInt16BE(6),
        cookie: b.subarray(8, 16),
        offset: P.readU64(b, 16),
        length: b.readUInt32BE(24),
      };
      if (h.type === P.NBD_CMD_WRITE && h.length > P.NBD_MAX_PAYLOAD) {
        throw new NbdProtocolError(`write of ${h.length} bytes exceeds the 32 MiB limit`);
      }
    }
    let payload: Buffer | undefined;
    let ownPayload = false;
    if (h.type === P.NBD_CMD_WRITE) {
      if (this.payload) {
        // Being received straight into its buffer; the queue only fills once it is complete.
        if (this.payloadFilled < this.payload.length) return false;
        payload = this.payload;
        ownPayload = true;
        this.payload = undefined;
      } else if (this.queue.length >= h.length) {
        payload = this.queue.take(h.length);
      } else {
        // Not all here yet: move what arrived into the payload's own buffer and receive the rest into it.
        this.pendingHeader = h;
        this.payload = this.payloadBuffer(h.length);
        this.payloadFilled = this.queue.length;
        this.queue.takeInto(this.payload, 0, this.payloadFilled);
        return false;
      }
    }
    this.pendingHeader = undefined;
    this.dispatch({ ...h, payload, ownPayload });
    return true;
  }

  /** Validates a request and either replies at once or starts it. */
  private dispatch(r: Request): void {
    const E = P.NbdErrno;
    const { type, flags } = r;
    if (type === P.NBD_CMD_DISC) {
      this.disconnectRequested = true;
      this.queue.clear();
      this.finishWhenIdle();
      return;
    }
    const allowed = allowedFlags(type, this.structured);
    if (allowed === undefined || (flags & ~allowed) !== 0) return this.replyNow(r, E.EINVAL);
    if (this.draining) return this.replyNow(r, E.ESHUTDOWN);
    const end = r.offset + r.length;
    switch (type) {
      case P.NBD_CMD_READ:
        if (r.length > P.NBD_MAX_PAYLOAD) return this.replyNow(r, E.EINVAL);
        if (end > this.size) return this.replyNow(r, E.EINVAL);
        break;
      case P.NBD_CMD_WRITE:
      case P.NBD_CMD_TRIM:
      case P.NBD_CMD_WRITE_ZEROES:
        if (this.readOnly) return this.replyNow(r, E.EPERM);
        if (end > this.size) return this.replyNow(r, E.ENOSPC);
        break;
      case P.NBD_CMD_FLUSH:
        if (r.offset !== 0 || r.length !== 0) return this.replyNow(r, E.EINVAL);
        break;
      case P.NBD_CMD_CACHE:
        if (end > this.size) return this.replyNow(r, E.EINVAL);
        break;
      case P.NBD_CMD_BLOCK_STATUS:
        if (this.metaContext === 0 || r.length === 0 || end > this.size) return this.replyNow(r, E.EINVAL);
        break;
    }
    const cost = type === P.NBD_CMD_READ || type === P.NBD_CMD_WRITE ? r.length : 0;
    this.inFlight++;
    this.inFlightBytes += cost;
    this.execute(r).then(
      () => this.settled(r, cost),
      (err: unknown) => {
        this.replyNow(r, toNbdErrno(err));
        this.settled(r, cost);
      },
    );
  }

  /** Bookkeeping once a started request has replied. */
  private settled(r: Request, cost: number): void {
    try {
      this.inFlight--;
      this.inFlightBytes -= cost;
      if (r.ownPayload && this.exp!.backend.releasesWriteData === true) this.releasePayload(r.payload!);
      if (this.draining || this.disconnectRequested) this.finishWhenIdle();
      else this.maybeResume();
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private async execute(r: Request): Promise<void> {
    const backend = this.exp!.backend;
    const fua = (r.flags & P.NBD_CMD_FLAG_FUA) !== 0;
    switch (r.type) {
      case P.NBD_CMD_READ:
        return this.read(r);
      case P.NBD_CMD_WRITE:
        await backend.write(r.offset, r.payload!, { fua });
        break;
      case P.NBD_CMD_FLUSH:
        await backend.flush();
        break;
      case P.NBD_CMD_TRIM:
        await backend.trim(r.offset, r.length, { fua });
        break;
      case P.NBD_CMD_WRITE_ZEROES:
        await backend.writeZeroes(r.offset, r.length, {
          fua,
          noHole: (r.flags & P.NBD_CMD_FLAG_NO_HOLE) !== 0,
          fastZero: (r.flags & P.NBD_CMD_FLAG_FAST_ZERO) !== 0,
        });
        break;
      case P.NBD_CMD_CACHE:
        break;
      case P.NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(r, await backend.blockStatus(r.offset, r.length));
    }
    this.send(P.encodeSimpleReply(0, r.cookie));
  }

  private async read(r: Request): Promise<void> {
    const backend = this.exp!.backend;
    if (this.structured) {
      if (r.length === 0) {
        const b = Buffer.allocUnsafe(P.NBD_STRUCTURED_HEADER_SIZE);
        P.writeStructuredHeader(b, 0, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, r.cookie, 0);
        return this.send(b);
      }
      // One OFFSET_DATA chunk (so DF always holds), read straight into the reply buffer.
      const head = P.NBD_STRUCTURED_HEADER_SIZE + 8;
      const b = this.replyBuffer(head + r.length);
      await backend.read(r.offset, r.length, b.subarray(head));
      P.writeStructuredHeader(
        b,
        0,
        P.NBD_REPLY_FLAG_DONE,
        P.NBD_REPLY_TYPE_OFFSET_DATA,
        r.cookie,
        8 + r.length,
      );
      P.writeU64(b, r.offset, P.NBD_STRUCTURED_HEADER_SIZE);
      return this.sendRead(b);
    }
    const head = P.NBD_SIMPLE_REPLY_SIZE;
    const b = this.replyBuffer(head + r.length);
    await backend.read(r.offset, r.length, b.subarray(head));
    b.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, 0);
    b.writeUInt32BE(0, 4);
    r.cookie.copy(b, 8, 0, 8);
    this.sendRead(b);
  }

  /**
   * Sends a READ reply; a large one's buffer is reused once the socket has handed every byte to the kernel (the
   * write callback), which saves the allocation and the page faults of a fresh megabyte per request.
   */
  private sendRead(b: Buffer): void {
    if (b.length <= REPLY_SLAB_MAX || !REUSE_READ_BUFFERS) return this.send(b);
    this.send(b, (err) => {
      if (!err) this.releasePayload(b);
    });
  }

  private blockStatus(r: Request, extents: Extent[]): void {
    const reqOne = (r.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0;
    const list: Extent[] = [];
    let covered = 0;
    // Normalise whatever the backend returned: consecutive, non-empty, within the request, bounded count.
    for (const e of extents) {
      if (covered >= r.length || list.length >= (reqOne ? 1 : MAX_EXTENTS)) break;
      const len = Math.min(e.length, r.length - covered);
      if (!(len > 0)) break;
      list.push({ length: len, hole: e.hole, zero: e.zero });
      covered += len;
    }
    if (list.length === 0) list.push({ length: r.length, hole: false, zero: false });
    const body = 4 + 8 * list.length;
    const b = Buffer.allocUnsafe(P.NBD_STRUCTURED_HEADER_SIZE + body);
    P.writeStructuredHeader(b, 0, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_BLOCK_STATUS, r.cookie, body);
    b.writeUInt32BE(this.metaContext, P.NBD_STRUCTURED_HEADER_SIZE);
    let at = P.NBD_STRUCTURED_HEADER_SIZE + 4;
    for (const e of list) {
      b.writeUInt32BE(e.length, at);
      b.writeUInt32BE((e.hole ? P.NBD_STATE_HOLE : 0) | (e.zero ? P.NBD_STATE_ZERO : 0), at + 4);
      at += 8;
    }
    this.send(b);
  }

  /** Sends an error (or success without data) reply in the form the command requires. */
  private replyNow(r: Request, errno: number): void {
    // With structured replies, READ and BLOCK_STATUS answers must be structured (spec "Structured replies").
    if (this.structured && (r.type === P.NBD_CMD_READ || r.type === P.NBD_CMD_BLOCK_STATUS)) {
      const b = Buffer.allocUnsafe(P.NBD_STRUCTURED_HEADER_SIZE + 6);
      P.writeStructuredHeader(b, 0, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_ERROR, r.cookie, 6);
      b.writeUInt32BE(errno, P.NBD_STRUCTURED_HEADER_SIZE);
      b.writeUInt16BE(0, P.NBD_STRUCTURED_HEADER_SIZE + 4);
      this.send(b);
    } else {
      this.send(P.encodeSimpleReply(errno, r.cookie));
    }
  }

  /**
   * Queues reply bytes. Small replies completed in the same turn of the event loop (all requests of one
   * received chunk, all reads the threadpool finished meanwhile) leave in one writev: the uncork runs in the
   * loop's check phase, right after the I/O callbacks of this turn. A batch that starts with a large reply, or
   * any batch with `OSR_NBD_REPLY_FLUSH=tick`, is flushed right after the current callback instead.
   */
  private send(b: Buffer, written?: (err?: Error | null) => void): void {
    if (this.phase === 'closed') return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      // Large replies leave at once: holding megabytes back for a bigger writev cost CPU per MiB in A/B runs.
      if (REPLY_FLUSH_IMMEDIATE && b.length <= REPLY_SLAB_MAX) setImmediate(this.uncork);
      else process.nextTick(this.uncork);
    }
    this.socket.write(b, written);
  }

  private maybeResume(): void {
    if (this.phase !== 'transmission' || this.overLimits()) return;
    if (this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
    if (this.queue.length > 0) this.pump();
  }

  /** After DISC or during shutdown: once nothing is in flight, flush replies and close (spec NBD_CMD_DISC). */
  private finishWhenIdle(): void {
    if (this.phase === 'closed' || this.inFlight > 0 || this.ending) return;
    this.ending = true;
    const sock = this.socket;
    if (this.corked) this.uncork();
    sock.end();
    // A peer that never closes its side must not hold the server's shutdown forever.
    setTimeout(() => sock.destroy(), 2000).unref();
  }
}

/** Flags each command accepts (spec "Command flags"); undefined for unknown commands. */
function allowedFlags(type: number, structured: boolean): number | undefined {
  const FUA = P.NBD_CMD_FLAG_FUA;
  switch (type) {
    case P.NBD_CMD_READ:
      return FUA | (structured ? P.NBD_CMD_FLAG_DF : 0);
    case P.NBD_CMD_WRITE:
    case P.NBD_CMD_FLUSH:
    case P.NBD_CMD_TRIM:
    case P.NBD_CMD_CACHE:
      return FUA;
    case P.NBD_CMD_WRITE_ZEROES:
      return FUA | P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_FAST_ZERO;
    case P.NBD_CMD_BLOCK_STATUS:
      return FUA | P.NBD_CMD_FLAG_REQ_ONE;
    default:
      return undefined;
  }
}
