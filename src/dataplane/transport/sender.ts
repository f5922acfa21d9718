import * as tls from 'node:tls';
import { setTimeout as delay } from 'node:timers/promises';
import { JournalCorruptError, ResyncRequiredError } from '../journal/errors.js';
import type { WriteJournal } from '../journal/journal.js';
import type { JournalEntry } from '../journal/record.js';
import { encodeBatch } from './batch.js';
import {
  encodeFrame,
  encodeFrameParts,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameError,
  FrameType,
  jsonPayload,
  parseJson,
} from './frame.js';
import type { Frame } from './frame.js';
import { LinkAuthError, certificateRefusal, tokenProof, tokenProofMatches } from './link-auth.js';
import type { PeerAuth, TlsIdentity } from './link-auth.js';
import { TokenBucket } from './token-bucket.js';

/** Options of `ReplicationSender`. */
export interface ReplicationSenderOptions {
  /** The group's journal; the sender tails it and releases what the receiver acknowledged. */
  readonly journal: WriteJournal;
  /** Replication group id, announced in HELLO; the receiver picks the sink by it. */
  readonly groupId: string;
  readonly host: string;
  readonly port: number;
  /** This agent's key and certificate (presented to the receiver). */
  readonly identity: TlsIdentity;
  /** The CA (PEM) the receiver's certificate must chain to in certificate mode; without it that mode fails. */
  readonly trustedCa?: string;
  /** How the receiver must prove itself: a certificate naming the expected agent, or the group's token. */
  readonly peerAuth: PeerAuth;
  /** Compress batches with brotli quality 1 (R-POL-4). Default true. */
  readonly compress?: boolean;
  /** Raw bytes of journal records per batch. Default 1 MiB. */
  readonly batchBytes?: number;
  /** Batches read from the journal ahead of the one being sent (their reads overlap). Default 4. */
  readonly readAhead?: number;
  /** Raw bytes sent but not yet acknowledged, at most (backpressure). Default 16 MiB. */
  readonly maxInFlightBytes?: number;
  /** Bandwidth limit in force at a moment, Mbit/s, `null` = unlimited (R-POL-9). Default unlimited. */
  readonly bandwidthLimitAt?: (at: Date) => number | null;
  /** A KEEPALIVE is sent after this long without sending. Default 5 s. */
  readonly keepaliveMs?: number;
  /** The connection is dropped after this long without hearing from the receiver. Default 20 s. */
  readonly peerTimeoutMs?: number;
  /** Reconnect backoff: first wait and cap. Default 100 ms doubling to 5 s. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number };
  /** Milliseconds since the epoch. Default `Date.now`. */
  readonly clock?: () => number;
  /** Connection events, for logs. */
  readonly onEvent?: (event: SenderEvent) => void;
  /**
   * When the receiver's resume position is not in the journal (released, or beyond its end after this host lost
   * records), re-base the stream (`WriteJournal.rebase`: every block dirty, a resync begin above both positions)
   * and stream on; the resync (`runResync`) then brings the replica level. False: stop in `resync-required`.
   * Default true.
   */
  readonly rebaseOnLostResume?: boolean;
  /** Fault injection for tests: sees (and may alter) each encoded frame before it is written. */
  readonly frameTap?: (type: FrameType, frame: Buffer) => void;
}

/** Something that happened to the link. */
export type SenderEvent =
  | { readonly type: 'connected'; readonly resumeSeq: number }
  | { readonly type: 'disconnected'; readonly error: Error };

/** Link state. */
export type SenderState = 'connecting' | 'streaming' | 'backoff' | 'resync-required' | 'stopped';

/** Figures for the control plane (issue 4 item 7). */
export interface SenderStatus {
  readonly state: SenderState;
  /** Last seq the receiver acknowledged as durable. */
  readonly ackedSeq: number;
  /** Last seq sent on the current connection. */
  readonly sentSeq: number;
  /** Last seq in the journal. */
  readonly lastSeq: number;
  /** Changes not yet acknowledged. */
  readonly lagSeq: number;
  /** Journal bytes not yet acknowledged. */
  readonly lagBytes: number;
  /** Age of the oldest unacknowledged change in seconds (0 when none). */
  readonly lagSeconds: number;
  /** Raw bytes sent (change data and metadata before zero detection and compression). */
  readonly bytesRaw: number;
  /** Bytes of frames written to the link. */
  readonly bytesWire: number;
  /** Bytes of written data that travelled as zero runs. */
  readonly bytesZero: number;
  /** `bytesRaw / bytesWire` (1 before anything was sent). */
  readonly compressionRatio: number;
  /** Wire bytes per second over the last few seconds. */
  readonly throughputBytesPerSec: number;
  /** Raw bytes sent and not yet acknowledged. */
  readonly inFlightBytes: number;
  readonly connects: number;
  /** Times the stream was re-based after a lost resume position (`rebaseOnLostResume`). */
  readonly rebases: number;
  readonly lastError: string | null;
  /** The code of the last error when it had one (e.g. `PEER_IDENTITY_MISMATCH`, or one the receiver sent). */
  readonly lastErrorCode: string | null;
}

interface InFlight {
  readonly lastSeq: number;
  readonly rawBytes: number;
}

interface HashRequest {
  readonly id: string;
  readonly frame: Buffer;
  resolve(hashes: Buffer[]): void;
  reject(err: Error): void;
}

/** The receiver answered with an ERROR frame. */
export class PeerError extends Error {
  override readonly name = 'PeerError';
  /** The code the receiver sent. */
  readonly code: string;

  constructor(code: string, message: string) {
    super(`receiver refused: ${message}`);
    this.code = code;
  }
}

/**
 * Ships a group's journal to the recovery site (DESIGN §2 "Ship"): connects over TLS and checks the receiver
 * (`peerAuth`: its certificate chains to the trusted CA and names the expected agent, or it proves the token),
 * learns the receiver's resume position from HELLO, streams BATCH frames from there, frees journal segments as
 * ACKs arrive, keeps at most `maxInFlightBytes` unacknowledged, honours the bandwidth limit, and reconnects with
 * backoff after any failure — resending from the last acknowledged seq, so nothing is lost; the receiver drops
 * what it already has, so nothing is applied twice.
 */
export class ReplicationSender {
  private readonly o: ReplicationSenderOptions;
  private target: { host: string; port: number; peerAuth: PeerAuth };
  private tls: { identity: TlsIdentity; trustedCa: string | undefined };
  private readonly bucket: TokenBucket;
  private readonly clock: () => number;
  private readonly abort = new AbortController();
  private running: Promise<void> | null = null;
  private state: SenderState = 'stopped';
  private acked = 0;
  private sent = 0;
  private bytesRaw = 0;
  private bytesWire = 0;
  private bytesZero = 0;
  private connects = 0;
  private rebases = 0;
  private lastError: Error | null = null;
  private inFlight: InFlight[] = [];
  private inFlightBytes = 0;
  private woken = false;
  private wakeUp: (() => void) | null = null;
  private readonly ackWaiters: Array<{ seq: number; resolve: () => void }> = [];
  private readonly hashRequests = new Map<string, HashRequest>();
  private hashCounter = 0;
  private readonly samples: Array<[number, number]> = [];

  constructor(options: ReplicationSenderOptions) {
    this.o = options;
    this.target = { host: options.host, port: options.port, peerAuth: options.peerAuth };
    this.tls = { identity: options.identity, trustedCa: options.trustedCa };
    this.clock = options.clock ?? Date.now;
    this.bucket = new TokenBucket({ limitAt: options.bandwidthLimitAt ?? (() => null), clock: this.clock });
  }

  /** Starts shipping in the background; `stop()` ends it. */
  start(): void {
    if (this.running) return;
    this.state = 'connecting';
    const unsubscribe = this.o.journal.onProgress(() => this.wake());
    this.running = this.run().finally(unsubscribe);
  }

  /** Stops shipping and closes the connection. Unanswered hash requests are rejected. */
  async stop(): Promise<void> {
    this.abort.abort();
    this.wake();
    if (this.running) await this.running;
    this.state = 'stopped';
    for (const r of this.hashRequests.values()) r.reject(new Error('sender stopped'));
    this.hashRequests.clear();
  }

  /** Presents `identity` and trusts `trustedCa` from the next connection on (a renewed certificate). */
  setIdentity(identity: TlsIdentity, trustedCa: string | undefined): void {
    this.tls = { identity, trustedCa };
  }

  /** Where the receiver is and how it proves itself, from the next connection on (the recovery agent moved). */
  retarget(host: string, port: number, peerAuth: PeerAuth): void {
    this.target = { host, port, peerAuth };
    this.wake();
  }

  /** Last seq the receiver acknowledged. */
  get ackedSeq(): number {
    return this.acked;
  }

  /** Resolves once the receiver acknowledged `seq` (or rejects when `signal` aborts). */
  waitForAck(seq: number, signal?: AbortSignal): Promise<void> {
    if (this.acked >= seq) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { seq, resolve };
      this.ackWaiters.push(w);
      signal?.addEventListener('abort', () => {
        const i = this.ackWaiters.indexOf(w);
        if (i >= 0) this.ackWaiters.splice(i, 1);
        reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      });
    });
  }

  /**
   * Asks the receiver for the SHA-256 of blocks of the replica, taken after every batch sent before the request
   * (resync and failback delta compare them with the source). Survives reconnects: it is resent until answered.
   */
  requestHashes(diskId: string, blockSize: number, offsets: readonly number[]): Promise<Buffer[]> {
    const id = `h${++this.hashCounter}`;
    const frame = encodeFrame(FrameType.HASH_REQUEST, jsonPayload({ id, diskId, blockSize, offsets }));
    return new Promise((resolve, reject) => {
      this.hashRequests.set(id, { id, frame, resolve, reject });
      this.wake();
    });
  }

  /** Link figures. */
  status(): SenderStatus {
    const j = this.o.journal;
    const now = this.clock();
    const oldest = this.acked < j.lastSeq ? j.timeOf(this.acked + 1) : undefined;
    const first = this.samples[0];
    const lastSample = this.samples[this.samples.length - 1];
    const span = first && lastSample ? (lastSample[0] - first[0]) / 1000 : 0;
    return {
      state: this.state,
      ackedSeq: this.acked,
      sentSeq: this.sent,
      lastSeq: j.lastSeq,
      lagSeq: Math.max(0, j.lastSeq - this.acked),
      lagBytes: j.bytesAfter(this.acked),
      lagSeconds: oldest === undefined ? 0 : Math.max(0, (now - oldest) / 1000),
      bytesRaw: this.bytesRaw,
      bytesWire: this.bytesWire,
      bytesZero: this.bytesZero,
      compressionRatio: this.bytesWire > 0 ? this.bytesRaw / this.bytesWire : 1,
      throughputBytesPerSec: span > 0 && first && lastSample ? (lastSample[1] - first[1]) / span : 0,
      inFlightBytes: this.inFlightBytes,
      connects: this.connects,
      rebases: this.rebases,
      lastError: this.lastError?.message ?? null,
      lastErrorCode: (this.lastError as { code?: unknown } | null)?.code?.toString() ?? null,
    };
  }

  private async run(): Promise<void> {
    const initial = this.o.backoff?.initialMs ?? 100;
    const max = this.o.backoff?.maxMs ?? 5000;
    let backoff = initial;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      this.state = 'connecting';
      let streamed = false;
      try {
        streamed = await this.session(signal);
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        if (signal.aborted) break;
        this.lastError = e;
        this.o.onEvent?.({ type: 'disconnected', error: e });
        // A damaged journal record cannot be shipped until the journal is salvaged (`repairDamaged`) and resynced.
        if (e instanceof ResyncRequiredError || e instanceof JournalCorruptError)
          this.state = 'resync-required';
      }
      if (signal.aborted) break;
      if (streamed) backoff = initial;
      if (this.state !== 'resync-required') this.state = 'backoff';
      try {
        await delay(backoff, undefined, { signal });
      } catch {
        break; // stopped while waiting
      }
      backoff = Math.min(max, backoff * 2);
    }
    this.state = 'stopped';
  }

  private connect(signal: AbortSignal): Promise<tls.TLSSocket> {
    const { host, port, peerAuth } = this.target;
    const { identity, trustedCa } = this.tls;
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host,
        port,
        key: identity.key,
        cert: identity.cert,
        ...(trustedCa === undefined ? {} : { ca: trustedCa }),
        minVersion: 'TLSv1.3',
        // Trust is the agent identity (or token) checked below, never a host name; the chain is checked there too.
        rejectUnauthorized: false,
        checkServerIdentity: () => undefined,
      });
      const onAbort = (): void => {
        socket.destroy();
        reject(new Error('sender stopped'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      socket.once('secureConnect', () => {
        signal.removeEventListener('abort', onAbort);
        const refusal =
          peerAuth.mode === 'certificate'
            ? certificateRefusal(socket, trustedCa !== undefined, peerAuth.identity, 'receiver')
            : undefined;
        if (refusal) {
          socket.destroy();
          reject(refusal);
          return;
        }
        resolve(socket);
      });
      socket.once('error', (err: Error) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      });
    });
  }

  /** One connection's life; resolves true when it got as far as streaming. Always ends by throwing or abort. */
  private async session(signal: AbortSignal): Promise<boolean> {
    const journal = this.o.journal;
    const { peerAuth } = this.target;
    const socket = await this.connect(signal);
    const decoder = new FrameDecoder();
    const inbox: Frame[] = [];
    // A holder, not a `let`: the socket callbacks set it and the loop reads it.
    const link: { failure: Error | null } = { failure: null };
    const check = (): void => {
      if (link.failure) throw link.failure;
    };
    let lastHeard = this.clock();
    let lastSent = this.clock();
    let streaming = false;
    socket.on('data', (chunk: Buffer) => {
      lastHeard = this.clock();
      try {
        inbox.push(...decoder.push(chunk));
      } catch (err) {
        link.failure ??= err as Error;
        socket.destroy();
      }
      this.wake();
    });
    socket.on('error', (err) => {
      link.failure ??= err;
      this.wake();
    });
    socket.on('close', () => {
      link.failure ??= new Error('connection closed by the receiver');
      this.wake();
    });
    socket.on('drain', () => this.wake());
    const send = (type: FrameType, frame: Buffer | readonly Buffer[]): void => {
      let parts = Buffer.isBuffer(frame) ? [frame] : frame;
      if (this.o.frameTap) {
        const whole = Buffer.concat(parts);
        this.o.frameTap(type, whole);
        parts = [whole];
      }
      // One writev for the header and the batch's pieces (TLS encrypts them as they come, no gathering copy).
      socket.cork();
      for (const p of parts) socket.write(p);
      socket.uncork();
      lastSent = this.clock();
    };
    this.inFlight = [];
    this.inFlightBytes = 0;
    try {
      send(
        FrameType.HELLO,
        encodeFrame(
          FrameType.HELLO,
          jsonPayload({
            groupId: this.o.groupId,
            firstSeq: journal.firstSeq,
            lastSeq: journal.lastSeq,
            ...(peerAuth.mode === 'token'
              ? { proof: tokenProof(socket, peerAuth.token, 'sender', this.o.groupId) }
              : {}),
          }),
        ),
      );
      let next = -1;
      const batchBytes = this.o.batchBytes ?? 1024 * 1024;
      const readAhead = Math.max(1, this.o.readAhead ?? 4);
      const reads: Array<{ lastSeq: number; entries: Promise<JournalEntry[]> }> = [];
      let readFrom = -1;
      const keepaliveMs = this.o.keepaliveMs ?? 5000;
      const peerTimeoutMs = this.o.peerTimeoutMs ?? 20_000;
      const sentHashes = new Set<string>();
      for (;;) {
        if (signal.aborted) return streaming;
        for (let f = inbox.shift(); f; f = inbox.shift()) {
          if (f.type === FrameType.ERROR) {
            const e = parseJson(f.payload) as { code?: string; message?: string };
            const err = new PeerError(String(e.code ?? 'ERROR'), String(e.message ?? 'no message'));
            throw e.code === 'RESYNC_REQUIRED' ? new ResyncRequiredError(err.message) : err;
          }
          if (next < 0) {
            if (f.type !== FrameType.HELLO) throw new FrameError(`expected HELLO, got frame type ${f.type}`);
            const hello = parseJson(f.payload) as { resumeSeq?: unknown; proof?: unknown };
            if (
              peerAuth.mode === 'token' &&
              !tokenProofMatches(socket, peerAuth.token, 'receiver', this.o.groupId, hello.proof)
            ) {
              throw new LinkAuthError(
                'TOKEN_REJECTED',
                'the receiver did not prove it holds the replication token (another token, or not the recovery agent)',
              );
            }
            const resume = Number(hello.resumeSeq);
            if (!Number.isSafeInteger(resume) || resume < 0)
              throw new FrameError('HELLO without a resume position');
            const lost =
              resume > journal.lastSeq
                ? `the receiver has seq ${resume} but the journal ends at ${journal.lastSeq} (source lost records)`
                : resume + 1 < journal.firstSeq
                  ? `the receiver resumes after seq ${resume} but the journal starts at ${journal.firstSeq}`
                  : null;
            if (lost !== null) {
              if (!(this.o.rebaseOnLostResume ?? true)) throw new ResyncRequiredError(lost);
              // Re-base: the stream restarts above both positions with a resync begin, every block to compare.
              await journal.rebase(resume);
              this.rebases++;
              this.lastError = new ResyncRequiredError(`${lost}; re-based at seq ${journal.firstSeq}`);
              if (signal.aborted) return streaming;
            }
            this.onAck(resume);
            next = lost !== null ? journal.firstSeq : resume + 1;
            readFrom = next;
            this.sent = resume;
            streaming = true;
            this.connects++;
            this.state = 'streaming';
            this.o.onEvent?.({ type: 'connected', resumeSeq: resume });
          } else if (f.type === FrameType.ACK) {
            if (f.payload.length !== 8) throw new FrameError('ACK payload must be 8 bytes');
            this.onAck(Number(f.payload.readBigUInt64LE(0)));
          } else if (f.type === FrameType.HASH_REPLY) {
            this.onHashReply(f.payload);
          } else if (f.type !== FrameType.KEEPALIVE) {
            throw new FrameError(`unexpected frame type ${f.type} from the receiver`);
          }
        }
        check();
        const now = this.clock();
        if (now - lastHeard > peerTimeoutMs)
          throw new Error(`no word from the receiver for ${peerTimeoutMs} ms`);
        if (next >= 0) {
          for (const r of this.hashRequests.values()) {
            if (!sentHashes.has(r.id)) {
              sentHashes.add(r.id);
              send(FrameType.HASH_REQUEST, r.frame);
            }
          }
          const max = this.o.maxInFlightBytes ?? 16 * 1024 * 1024;
          // Read-ahead: the next batches' reads (streamed blocks come from the disk) run while this one is
          // encoded and sent, and while the link waits for acknowledgements.
          while (reads.length < readAhead && readFrom <= journal.writtenSeq) {
            const r = journal.readRange(readFrom, batchBytes);
            r.entries.catch(() => undefined); // awaited below, or dropped with the connection
            reads.push(r);
            readFrom = r.lastSeq + 1;
          }
          if (this.inFlightBytes < max && reads.length > 0 && !socket.writableNeedDrain) {
            const entries = await reads.shift()!.entries;
            if (entries.length > 0) {
              const batch = await encodeBatch(entries, this.o.compress ?? true);
              const frame = encodeFrameParts(FrameType.BATCH, batch.parts, batch.flags);
              const frameBytes = FRAME_HEADER_SIZE + batch.length;
              await this.bucket.take(frameBytes, signal);
              check();
              const last = entries[entries.length - 1]!.seq;
              send(FrameType.BATCH, frame);
              this.inFlight.push({ lastSeq: last, rawBytes: batch.rawBytes });
              this.inFlightBytes += batch.rawBytes;
              this.bytesRaw += batch.rawBytes;
              this.bytesWire += frameBytes;
              this.bytesZero += batch.zeroBytes;
              this.sample();
              this.sent = last;
              next = last + 1;
              continue;
            }
          }
        }
        if (now - lastSent >= keepaliveMs) send(FrameType.KEEPALIVE, encodeFrame(FrameType.KEEPALIVE));
        await this.sleep(Math.min(keepaliveMs, peerTimeoutMs) / 2);
      }
    } finally {
      socket.destroy();
    }
  }

  private onAck(seq: number): void {
    if (seq > this.acked) this.acked = seq;
    while (this.inFlight.length > 0 && this.inFlight[0]!.lastSeq <= this.acked) {
      this.inFlightBytes -= this.inFlight.shift()!.rawBytes;
    }
    // Durable at the recovery site: the source may forget it.
    this.o.journal.release(this.acked);
    let n = 0;
    while (n < this.ackWaiters.length) {
      const w = this.ackWaiters[n]!;
      if (w.seq <= this.acked) {
        this.ackWaiters.splice(n, 1);
        w.resolve();
      } else n++;
    }
  }

  private onHashReply(payload: Buffer): void {
    const idLen = payload.readUInt32LE(0);
    const id = parseJson(payload.subarray(4, 4 + idLen)) as string;
    const req = this.hashRequests.get(id);
    if (!req) return; // answered on an earlier connection already
    this.hashRequests.delete(id);
    const body = payload.subarray(4 + idLen);
    if (body.length % 32 !== 0) {
      req.reject(new FrameError('HASH_REPLY length is not a multiple of 32'));
      return;
    }
    const out: Buffer[] = [];
    for (let at = 0; at < body.length; at += 32) out.push(Buffer.from(body.subarray(at, at + 32)));
    req.resolve(out);
  }

  private sample(): void {
    const now = this.clock();
    const last = this.samples[this.samples.length - 1];
    if (last && now - last[0] < 250) last[1] = this.bytesWire;
    else this.samples.push([now, this.bytesWire]);
    while (this.samples.length > 2 && now - this.samples[0]![0] > 5000) this.samples.shift();
  }

  private wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private async sleep(ms: number): Promise<void> {
    if (this.woken) {
      this.woken = false;
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wakeUp = resolve;
      timer = setTimeout(resolve, ms);
    });
    clearTimeout(timer);
    this.wakeUp = null;
    this.woken = false;
  }
}
