import type * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import type { Change } from '../changes.js';
import type { JournalEntry } from '../journal/record.js';
import { decodeBatch } from './batch.js';
import { encodeFrame, FrameDecoder, FrameError, FrameType, jsonPayload, parseJson } from './frame.js';
import type { Frame } from './frame.js';
import type { ChangeSink, OfflineSeedSource } from './sink.js';
import { certificateRefusal, tokenProof, tokenProofMatches } from './link-auth.js';
import type { PeerAuth, TlsIdentity } from './link-auth.js';

/** Options of `ReplicationReceiver.listen`. */
export interface ReplicationReceiverOptions {
  /** Address to listen on. Default `127.0.0.1`. */
  readonly host?: string;
  /** TCP port (R-POL-7, configurable). Default 0 (any free port). */
  readonly port?: number;
  /** This agent's key and certificate (presented to senders). */
  readonly identity: TlsIdentity;
  /** The CA (PEM) a sender's certificate must chain to in certificate mode; without it that mode refuses all. */
  readonly trustedCa?: string;
  /** The sink of a replication group, `undefined` for a group this site does not receive. */
  readonly sinkFor: (groupId: string) => ChangeSink | undefined;
  /** How the sender of a group must authenticate (asked after its HELLO, before anything reaches the sink). */
  readonly peerAuthFor: (groupId: string) => PeerAuth | undefined;
  /** Bytes of offline placeholders of a group (initial replication by export/import). */
  readonly offlineSeedFor?: (groupId: string) => OfflineSeedSource | undefined;
  /** A connection is dropped after this long without a frame from the sender. Default 20 s. */
  readonly peerTimeoutMs?: number;
  /** Connection events and refusals, for logs. */
  readonly onEvent?: (event: ReceiverEvent) => void;
}

/** Something that happened on the receiving end. */
export type ReceiverEvent =
  | { readonly type: 'connected'; readonly groupId: string; readonly resumeSeq: number }
  | { readonly type: 'refused'; readonly reason: string }
  | { readonly type: 'disconnected'; readonly groupId: string | null; readonly error: Error | null };

/** Per-group receiving figures. */
export interface ReceiverGroupStatus {
  readonly lastReceivedSeq: number;
  readonly batches: number;
  readonly changes: number;
  /** Bytes of BATCH frames received. */
  readonly bytesWire: number;
  readonly connected: boolean;
}

interface GroupState {
  /** The connection currently streaming this group, and the end of its work. */
  owner: tls.TLSSocket | null;
  done: Promise<void>;
  status: { lastReceivedSeq: number; batches: number; changes: number; bytesWire: number };
}

/**
 * The recovery side of the link: a TLS server that lets a connection stream a group only once its sender
 * authenticated as the group requires (`peerAuthFor`: a certificate from the trusted CA naming the expected
 * agent, or the group's token), verifies every frame, hands each group's batches to its sink strictly in order, and acknowledges a seq only after
 * `sink.receive` resolved (durable). A bad frame drops the connection; the sender reconnects and resends from
 * the last acknowledged seq, and changes the sink already has are skipped, so nothing is applied twice. A new
 * connection for a group takes over from the old one only after the old one's in-progress batch settled.
 */
export class ReplicationReceiver {
  private readonly o: ReplicationReceiverOptions;
  private readonly server: tls.Server;
  private readonly groups = new Map<string, GroupState>();
  private readonly sockets = new Set<tls.TLSSocket>();
  /** Every accepted TCP connection, including those still in the TLS handshake. */
  private readonly raw = new Set<net.Socket>();
  private closing = false;
  private trustedCa: string | undefined;

  private constructor(options: ReplicationReceiverOptions, server: tls.Server) {
    this.o = options;
    this.server = server;
    this.trustedCa = options.trustedCa;
  }

  /** Starts listening. */
  static async listen(options: ReplicationReceiverOptions): Promise<ReplicationReceiver> {
    const server = tls.createServer({
      ...secureContextOptions(options.identity, options.trustedCa),
      minVersion: 'TLSv1.3',
      requestCert: true,
      // Which check applies depends on the group the sender names in its HELLO: the handshake lets everyone in.
      rejectUnauthorized: false,
    });
    const receiver = new ReplicationReceiver(options, server);
    server.on('connection', (raw: net.Socket) => {
      if (receiver.closing) {
        raw.destroy();
        return;
      }
      receiver.raw.add(raw);
      raw.once('close', () => receiver.raw.delete(raw));
    });
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      // A handshake that finished after close() began must not start serving: close would wait for it forever.
      if (receiver.closing) {
        socket.destroy();
        return;
      }
      receiver.serve(socket);
    });
    // Handshake failures (a client without a certificate, garbage) concern that connection only.
    server.on('tlsClientError', (err) => options.onEvent?.({ type: 'refused', reason: err.message }));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return receiver;
  }

  /** The port listened on. */
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Presents `identity` and trusts `trustedCa` from the next connection on (a renewed certificate). */
  setIdentity(identity: TlsIdentity, trustedCa: string | undefined): void {
    this.server.setSecureContext(secureContextOptions(identity, trustedCa));
    this.trustedCa = trustedCa;
  }

  /** Receiving figures of a group (undefined before its first connection). */
  status(groupId: string): ReceiverGroupStatus | undefined {
    const g = this.groups.get(groupId);
    return g ? { ...g.status, connected: g.owner !== null } : undefined;
  }

  /** Stops listening, drops every connection and waits for in-progress batches to settle. */
  async close(): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    for (const s of this.raw) s.destroy();
    await Promise.all([...this.groups.values()].map((g) => g.done));
    await closed;
  }

  private serve(socket: tls.TLSSocket): void {
    this.sockets.add(socket);
    const decoder = new FrameDecoder();
    let groupId: string | null = null;
    let group: GroupState | null = null;
    let last = 0;
    // Frames are handled strictly one after another; with a pipelined sink (`stage`) a batch's acknowledgement
    // waits for its durability on `acks` while the next batch is already handled, and acknowledgements leave in
    // order.
    let chain: Promise<void> = Promise.resolve();
    let acks: Promise<void> = Promise.resolve();
    let failed = false;
    const timeoutMs = this.o.peerTimeoutMs ?? 20_000;
    socket.setTimeout(timeoutMs, () =>
      socket.destroy(new Error(`no frame from the sender for ${timeoutMs} ms`)),
    );
    const fail = (err: Error): void => {
      if (failed) return;
      failed = true;
      const code = (err as { code?: unknown }).code;
      if (!socket.destroyed) {
        socket.end(
          encodeFrame(
            FrameType.ERROR,
            jsonPayload({ code: typeof code === 'string' ? code : 'ERROR', message: err.message }),
          ),
        );
      }
      // Do not wait for the peer to close: a sender that keeps streaming must not be heard any more.
      setImmediate(() => socket.destroy());
    };
    const handle = async (f: Frame): Promise<void> => {
      if (failed || socket.destroyed) return;
      if (groupId === null) {
        if (f.type !== FrameType.HELLO) throw new FrameError(`expected HELLO, got frame type ${f.type}`);
        const hello = parseJson(f.payload) as { groupId?: unknown; proof?: unknown };
        if (typeof hello.groupId !== 'string') throw new FrameError('HELLO without a group id');
        const sink = this.o.sinkFor(hello.groupId);
        const auth = this.o.peerAuthFor(hello.groupId);
        if (!sink || !auth)
          throw Object.assign(new Error(`group ${hello.groupId} is not received here`), {
            code: 'UNKNOWN_GROUP',
          });
        // The sender proves who it is before anything of its stream is looked at.
        const refusal =
          auth.mode === 'certificate'
            ? certificateRefusal(socket, this.trustedCa !== undefined, auth.identity, 'sender')
            : tokenProofMatches(socket, auth.token, 'sender', hello.groupId, hello.proof)
              ? undefined
              : Object.assign(
                  new Error(`the sender's replication token for group ${hello.groupId} is wrong`),
                  {
                    code: 'TOKEN_REJECTED',
                  },
                );
        if (refusal) {
          this.o.onEvent?.({ type: 'refused', reason: refusal.message });
          throw refusal;
        }
        groupId = hello.groupId;
        group = this.takeOver(groupId, socket);
        await group.done;
        if (socket.destroyed) return;
        let release!: () => void;
        group.done = new Promise<void>((r) => (release = r));
        // The group is free again only when this connection is gone *and* its last batch has settled and is
        // durable: the next connection's resume position must not count a batch that may still be lost.
        socket.once('close', () => void chain.then(() => acks.catch(() => undefined)).then(release));
        last = await sink.lastReceivedSeq();
        group.status.lastReceivedSeq = last;
        const proof =
          auth.mode === 'token' ? { proof: tokenProof(socket, auth.token, 'receiver', groupId) } : {};
        socket.write(encodeFrame(FrameType.HELLO, jsonPayload({ groupId, resumeSeq: last, ...proof })));
        this.o.onEvent?.({ type: 'connected', groupId, resumeSeq: last });
        return;
      }
      const sink = this.o.sinkFor(groupId)!;
      switch (f.type) {
        case FrameType.BATCH: {
          const entries = await decodeBatch(f.payload, f.flags);
          const fresh = entries.filter((e) => e.seq > last);
          // The one gap allowed: a re-based stream restarts above the old position with a resync begin.
          if (fresh.length > 0 && fresh[0]!.seq !== last + 1 && !isRebase(fresh[0]!)) {
            throw Object.assign(new Error(`batch starts at seq ${fresh[0]!.seq}, expected ${last + 1}`), {
              code: 'SEQUENCE_GAP',
            });
          }
          for (let i = 1; i < fresh.length; i++) {
            if (
              fresh[i]!.seq !== fresh[i - 1]!.seq + 1 &&
              !(fresh[i]!.seq > fresh[i - 1]!.seq && isRebase(fresh[i]!))
            )
              throw new FrameError('batch is not contiguous');
          }
          let durable: Promise<void> | undefined;
          if (fresh.length > 0) {
            const changes = await this.resolveOffline(groupId, fresh);
            if (sink.stage) durable = (await sink.stage(changes)).durable;
            else await sink.receive(changes);
            last = fresh[fresh.length - 1]!.seq;
          }
          group!.status.lastReceivedSeq = last;
          group!.status.batches++;
          group!.status.changes += fresh.length;
          group!.status.bytesWire += f.payload.length;
          const ack = Buffer.allocUnsafe(8);
          ack.writeBigUInt64LE(BigInt(last), 0);
          // Only once the sink has made the batch (and every earlier one) durable may the sender free it.
          acks = acks
            .then(() => durable)
            .then(() => {
              if (!socket.destroyed) socket.write(encodeFrame(FrameType.ACK, ack));
            });
          acks.catch((err: unknown) => fail(err instanceof Error ? err : new Error(String(err))));
          return;
        }
        case FrameType.KEEPALIVE:
          if (!socket.destroyed) socket.write(encodeFrame(FrameType.KEEPALIVE));
          return;
        case FrameType.HASH_REQUEST: {
          const req = parseJson(f.payload) as {
            id?: unknown;
            diskId?: unknown;
            blockSize?: unknown;
            offsets?: unknown;
          };
          if (
            typeof req.id !== 'string' ||
            typeof req.diskId !== 'string' ||
            typeof req.blockSize !== 'number' ||
            !Array.isArray(req.offsets)
          ) {
            throw new FrameError('malformed HASH_REQUEST');
          }
          if (!sink.blockHashes)
            throw Object.assign(new Error('this sink cannot hash blocks'), { code: 'UNSUPPORTED' });
          const hashes = await sink.blockHashes(req.diskId, req.blockSize, req.offsets as number[]);
          const id = jsonPayload(req.id);
          const head = Buffer.allocUnsafe(4);
          head.writeUInt32LE(id.length, 0);
          if (!socket.destroyed)
            socket.write(encodeFrame(FrameType.HASH_REPLY, Buffer.concat([head, id, ...hashes])));
          return;
        }
        default:
          throw new FrameError(`unexpected frame type ${f.type} from the sender`);
      }
    };
    socket.on('data', (chunk: Buffer) => {
      if (failed) return;
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        this.o.onEvent?.({ type: 'refused', reason: (err as Error).message });
        fail(err as Error);
        return;
      }
      for (const f of frames) {
        chain = chain
          .then(() => handle(f))
          .catch((err: unknown) => fail(err instanceof Error ? err : new Error(String(err))));
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.sockets.delete(socket);
      if (group && group.owner === socket) group.owner = null;
      this.o.onEvent?.({ type: 'disconnected', groupId, error: null });
    });
  }

  /** Makes `socket` the group's streaming connection, dropping the previous one. */
  private takeOver(groupId: string, socket: tls.TLSSocket): GroupState {
    let g = this.groups.get(groupId);
    if (!g) {
      g = {
        owner: null,
        done: Promise.resolve(),
        status: { lastReceivedSeq: 0, batches: 0, changes: 0, bytesWire: 0 },
      };
      this.groups.set(groupId, g);
    }
    // A sender that reconnects after a kill or a half-open link: the old connection must not keep feeding the sink.
    if (g.owner && g.owner !== socket) g.owner.destroy();
    g.owner = socket;
    return g;
  }

  private async resolveOffline(groupId: string, entries: JournalEntry[]): Promise<Change[]> {
    const out: Change[] = [];
    for (const e of entries) {
      if (e.kind !== 'offline') {
        out.push(e);
        continue;
      }
      const seed = this.o.offlineSeedFor?.(groupId);
      if (!seed)
        throw Object.assign(new Error(`seq ${e.seq} is in the offline seed, which was not imported`), {
          code: 'OFFLINE_SEED_MISSING',
        });
      const data = await seed.dataFor(e.seq, e.diskId, e.offset, e.length);
      out.push({ kind: 'write', seq: e.seq, time: e.time, diskId: e.diskId, offset: e.offset, data });
    }
    return out;
  }
}

function secureContextOptions(
  identity: TlsIdentity,
  trustedCa: string | undefined,
): tls.SecureContextOptions {
  return { key: identity.key, cert: identity.cert, ...(trustedCa === undefined ? {} : { ca: trustedCa }) };
}

/** A resync begin: the only change a stream may skip seqs to (a re-base after a lost resume position). */
function isRebase(e: JournalEntry): boolean {
  return e.kind === 'resync' && e.phase === 'begin';
}
