/**
 * The agent's data plane (DESIGN §2, issue 5 item 6): the `ReplicationService` that really replicates.
 *
 * Source side (`replication.start` / `replication.stop`): one `WriteJournal` per protected item under
 * `<data>/replication/<item>/journal`, hooked into every disk of the machine (each disk is an `ObservedBackend`
 * of the fabric's NBD front), an initial copy of the allocated blocks (R-POL-6: now, at a scheduled time, or
 * offline through a seed file), and a `ReplicationSender` that ships the journal over TLS to the recovery
 * agent's data address, pinning the certificate the control plane gave for it, with the policy's compression
 * and bandwidth limit. Once the copy is acknowledged it cuts recovery-point markers: crash-consistent at the
 * policy's copy frequency, app-consistent at its app-consistent frequency when the machine has a freeze/thaw
 * hook (the ledger workload's `POST /freeze`, `POST /thaw`).
 *
 * Recovery side (`replica.prepare` / `replica.delete`): one `ReplicaStore` per item under
 * `<data>/replicas/<item>/store` with its processor running, and ONE `ReplicationReceiver` per agent listening on
 * the agent's data address with the agent's own certificate, accepting only the source agents' certificates the
 * control plane passed in `replica.prepare`.
 *
 * Both sides keep their state in the data folder: after a restart (kill -9 included) `load()` reopens journals
 * (a torn tail is cut, nothing acknowledged is lost) and replica stores before the fabric serves a disk, so
 * capture has no gap, and `resume()` restarts senders, copies and the receiver; a sender resumes from the
 * receiver's last durable seq, which the store never applies twice.
 *
 * Disk data travels only site to site; `report()` gives the control plane metadata (progress, lag, throughput,
 * health, recovery points) for the agent protocol's replication-status report (R-INF-7).
 */
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MarkerType } from '../dataplane/changes.js';
import { WriteJournal } from '../dataplane/journal/journal.js';
import type { ObservedBackend, WriteObserver } from '../dataplane/nbd/observed-backend.js';
import { ReplicaStore } from '../dataplane/replica/replica-store.js';
import type { RecoveryPointInfo } from '../dataplane/replica/replica-store.js';
import { runInitialCopy } from '../dataplane/resync/initial-copy.js';
import type { CopyPosition } from '../dataplane/resync/initial-copy.js';
import { OfflineSeedReader, OfflineSeedWriter } from '../dataplane/resync/offline-seed.js';
import { runResync } from '../dataplane/resync/resync.js';
import { replicationStatus } from '../dataplane/status.js';
import { AUTH_REFUSAL_CODES } from '../dataplane/transport/link-auth.js';
import type { PeerAuth } from '../dataplane/transport/link-auth.js';
import { ReplicationReceiver } from '../dataplane/transport/receiver.js';
import { ReplicationSender } from '../dataplane/transport/sender.js';
import { OsrError } from '../domain/errors.js';
import type { BandwidthPolicy, InitialReplication } from '../domain/model.js';
import { bandwidthLimitAt } from '../domain/policy.js';
import { agentIdentityUri } from '../domain/x509.js';
import type { FabricDriver } from '../fabric/driver.js';
import type { StreamAuth } from '../workflows/trust.js';
import type { AgentTlsIdentity } from './tls-identity.js';
import type {
  ReplicaPreparePayload,
  ReplicationReport,
  ReplicationService,
  ReplicationStartPayload,
  ReportedItem,
} from './replication.js';

/** The log calls the service makes (pino's signature). */
export interface ReplicationLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const silent: ReplicationLogger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/** What a fabric may offer beyond `FabricDriver` (the local fabric does): the journaled disk and the runtime. */
interface DiskAccess {
  diskBackend(machine: string, diskId: string): ObservedBackend;
}
interface RuntimeAccess {
  runtimeInfo(name: string): { pid: number | undefined; httpPort: number | undefined };
}

/** Options of `DataPlaneReplicationService`. */
export interface DataPlaneReplicationOptions {
  /** The agent's data folder. */
  dataDir: string;
  /** The agent's key, certificate and the CA it trusts (`setIdentity` replaces them after a renewal). */
  identity: AgentTlsIdentity;
  /**
   * `host:port` the agent registered: receivers listen on its host, at each policy's replication port (R-POL-7),
   * or at its port for items whose policy names none (prepared by an older control plane).
   */
  dataAddress: string;
  /**
   * Where the control plane says a site's agent is now (`GET /agent/peers/{site}`): a sender whose link is down
   * asks it, and follows a recovery agent that moved or registered again.
   */
  peerLookup?: (siteId: string) => Promise<{ agentId: string; dataAddress: string | null }>;
  /** A sender asks `peerLookup` at most this often while its link is down (default 5 s). */
  peerRefreshMs?: number;
  /** Set here or later with `bindFabric` (the fabric is opened after `load`). */
  fabric?: FabricDriver;
  log?: ReplicationLogger;
  /** Journal cap per item before it falls back to dirty bitmaps (default 2 GiB). */
  journalCapBytes?: number;
  /** Crash-consistent points this often instead of the policy's copy frequency (tests, demos). */
  crashPointIntervalMs?: number;
  /** Retention pruning of replicas this often (default 60 s). */
  pruneIntervalMs?: number;
}

/** The policy fields the data plane uses, with defaults for what the payload leaves out. */
interface DataPolicy {
  copyFrequencySeconds: number;
  retentionHours: number;
  appConsistentFrequencyHours: number;
  compression: boolean;
  bandwidth: BandwidthPolicy;
  initialReplication: InitialReplication;
  /** null: the payload named none (an older control plane), the agent's data address port is used. */
  replicationPort: number | null;
}

function parsePolicy(raw: unknown): DataPolicy {
  const p = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
  const num = (k: string, d: number): number => {
    const v = p[k];
    return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : d;
  };
  const ir = p['initialReplication'] as InitialReplication | undefined;
  const bw = p['bandwidth'] as BandwidthPolicy | undefined;
  const port = p['replicationPort'];
  return {
    copyFrequencySeconds: Math.max(1, num('copyFrequencySeconds', 300)),
    retentionHours: num('retentionHours', 24),
    appConsistentFrequencyHours: num('appConsistentFrequencyHours', 0),
    compression: p['compression'] !== false,
    bandwidth:
      bw !== undefined && typeof bw === 'object' && Array.isArray(bw.windows)
        ? bw
        : { limitMbps: null, windows: [] },
    initialReplication:
      ir !== undefined && typeof ir === 'object' && ['now', 'scheduled', 'offline'].includes(ir.mode)
        ? ir
        : { mode: 'now' },
    replicationPort:
      typeof port === 'number' && Number.isInteger(port) && port > 0 && port < 65536 ? port : null,
  };
}

/** The payload's stream authentication; certificate unless it carries a token. */
function parseAuth(raw: unknown): StreamAuth {
  const a = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
  if (a['mode'] !== 'token') return { mode: 'certificate' };
  const token = a['token'];
  if (typeof token !== 'string' || token.length < 16) {
    throw new OsrError('VALIDATION_FAILED', "auth: token mode needs the item's replication token", {
      details: { field: 'auth.token' },
    });
  }
  return { mode: 'token', token };
}

function checkItemId(itemId: unknown): string {
  if (typeof itemId !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(itemId)) {
    throw new OsrError('VALIDATION_FAILED', `invalid itemId ${JSON.stringify(itemId)}`, {
      details: { field: 'itemId' },
    });
  }
  return itemId;
}

function checkDisks(disks: unknown, type: string): { id: string; sizeBytes: number }[] {
  if (!Array.isArray(disks) || disks.length === 0) {
    throw new OsrError('VALIDATION_FAILED', `${type}: 'disks' must be a non-empty array`, {
      details: { field: 'disks' },
    });
  }
  return disks.map((d: unknown, i) => {
    const o = (typeof d === 'object' && d !== null ? d : {}) as Record<string, unknown>;
    const id = o['id'];
    const size = o['sizeBytes'];
    if (
      typeof id !== 'string' ||
      id === '' ||
      typeof size !== 'number' ||
      !Number.isSafeInteger(size) ||
      size <= 0
    ) {
      throw new OsrError('VALIDATION_FAILED', `${type}: disks[${i}] needs an id and a positive sizeBytes`, {
        details: { field: `disks[${i}]` },
      });
    }
    return { id, sizeBytes: size };
  });
}

/** Splits `host:port` (`[v6]:port` too). */
export function parseHostPort(address: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(address.trim());
  const port = m === null ? NaN : Number(m[2]);
  if (m === null || !(port > 0 && port < 65536)) {
    throw new OsrError('VALIDATION_FAILED', `not a host:port address: ${JSON.stringify(address)}`, {
      details: { address },
    });
  }
  return { host: m[1]!, port };
}

/** `host:port`, with `[host]` for an IPv6 host. */
function joinHostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file + '.tmp', JSON.stringify(value, null, 2) + '\n');
  await rename(file + '.tmp', file);
}

async function readJsonDir<T>(dir: string, pick: (name: string) => string | undefined): Promise<T[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: T[] = [];
  for (const n of names.sort()) {
    const file = pick(n);
    if (file === undefined) continue;
    try {
      out.push(JSON.parse(await readFile(join(dir, file), 'utf8')) as T);
    } catch (err) {
      if (
        (err as NodeJS.ErrnoException).code !== 'ENOENT' &&
        (err as NodeJS.ErrnoException).code !== 'ENOTDIR'
      )
        throw err;
    }
  }
  return out;
}

function abortable(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** The persisted state of a replicating item at the source. */
interface SourceRecord {
  itemId: string;
  desired: 'Running' | 'Stopped';
  machine: { id: string; name: string };
  disks: { id: string; sizeBytes: number }[];
  peer: { agentId: string; siteId: string; dataAddress: string };
  policy: DataPolicy;
  /** Absent: certificate (records of older agents). */
  auth?: StreamAuth;
  since: string;
  /** pending → copying → sent (lastSeq journaled) → done (acknowledged by the recovery site). */
  copy: {
    state: 'pending' | 'copying' | 'sent' | 'done';
    lastSeq: number | null;
    totalBytes: number;
    /** A streamed copy under way: the first block not yet acknowledged, where it goes on after a restart. */
    resumeAt?: CopyPosition;
  };
  lastAppPointAt: number | null;
  /** The newest marker journaled (its RPO can be vouched for once acknowledged, also after a restart). */
  lastMarker?: { seq: number; time: number; type: MarkerType } | null;
  /** The last resync (overflow repair, or the delta copy of a reprotect): bytes compared and sent. */
  lastResync?: { at: string; bytesCompared: number; bytesSent: number };
}

interface SourceGroup {
  record: SourceRecord;
  journal: WriteJournal;
  sender: ReplicationSender | undefined;
  stop: AbortController;
  task: Promise<void> | undefined;
  copyPercent: number;
  /** Markers journaled by this process (seq, time, type), for the RPO the source can vouch for. */
  markers: RecoveryPointInfo[];
  error: string | null;
  /** The control plane lookup of the peer in flight, and when the last one started. */
  peerCheck: Promise<void> | undefined;
  peerCheckedAt: number;
  /** The write of `source.json` under way: writes go one at a time. */
  saving: Promise<void>;
}

/** The persisted state of a replica at the recovery site. */
interface ReplicaRecord {
  itemId: string;
  machine: { id: string; name: string };
  disks: { id: string; sizeBytes: number }[];
  policy: DataPolicy;
  /** The source agent, the only one that may stream to this replica (null: a replica an older agent prepared). */
  peer: { agentId: string; siteId: string } | null;
  /** Absent: certificate. */
  auth?: StreamAuth;
  preparedAt: string;
  /** False once a failover stopped applying received batches (R-FO-5); absent = applying. */
  receiving?: boolean;
}

interface ReplicaEntry {
  record: ReplicaRecord;
  store: ReplicaStore;
  reported: Set<string>;
  seed: OfflineSeedReader | undefined;
}

/** The data-plane `ReplicationService` (see the file comment). */
export class DataPlaneReplicationService implements ReplicationService {
  readonly #o: DataPlaneReplicationOptions;
  readonly #log: ReplicationLogger;
  #fabric: FabricDriver | undefined;
  readonly #sources = new Map<string, SourceGroup>();
  readonly #replicas = new Map<string, ReplicaEntry>();
  /** Replicas of items the control plane no longer knows: kept on disk, not reported (`forget`). */
  readonly #forgotten = new Set<string>();
  #identity: AgentTlsIdentity;
  /** One receiver per replication port in use, all on the data address's host. */
  readonly #receivers = new Map<number, ReplicationReceiver>();
  /** Ports a receiver could not listen on, with why (retried every few seconds). */
  readonly #listenErrors = new Map<number, OsrError>();
  #receiverChain: Promise<void> = Promise.resolve();
  #listenRetry: NodeJS.Timeout | undefined;
  #pruneTimer: NodeJS.Timeout | undefined;
  #loaded = false;
  #closed = false;
  readonly #locks = new Map<string, Promise<void>>();

  constructor(options: DataPlaneReplicationOptions) {
    this.#o = options;
    this.#log = options.log ?? silent;
    this.#fabric = options.fabric;
    this.#identity = options.identity;
    parseHostPort(options.dataAddress);
  }

  /** Uses a new certificate (and CA) from the next connection on, in every receiver and sender. */
  setIdentity(identity: AgentTlsIdentity): void {
    this.#identity = identity;
    const tls = this.#tlsIdentity();
    for (const r of this.#receivers.values()) r.setIdentity(tls, identity.caPem ?? undefined);
    for (const g of this.#sources.values()) g.sender?.setIdentity(tls, identity.caPem ?? undefined);
  }

  #tlsIdentity(): { key: string; cert: string } {
    return { key: this.#identity.keyPem, cert: this.#identity.certPem };
  }

  /** The fabric whose disks are replicated (when it was not given to the constructor). */
  bindFabric(fabric: FabricDriver): this {
    this.#fabric = fabric;
    return this;
  }

  #sourceDir(itemId: string): string {
    return join(this.#o.dataDir, 'replication', checkItemId(itemId));
  }

  #replicaDir(itemId: string): string {
    return join(this.#o.dataDir, 'replicas', checkItemId(itemId));
  }

  /** Folder of an item's replica. */
  replicaDir(itemId: string): string {
    return this.#replicaDir(itemId);
  }

  /** The replica store of an item (recovery side), when prepared. */
  replicaStore(itemId: string): ReplicaStore | undefined {
    return this.#replicas.get(itemId)?.store;
  }

  /** The journal of a replicating item (source side), when running. */
  journal(itemId: string): WriteJournal | undefined {
    return this.#sources.get(itemId)?.journal;
  }

  /** The sender of a replicating item (source side), when running. */
  sender(itemId: string): ReplicationSender | undefined {
    return this.#sources.get(itemId)?.sender;
  }

  #fabricOrThrow(): FabricDriver {
    if (this.#fabric === undefined)
      throw new OsrError('INTERNAL', 'the replication service has no fabric yet');
    return this.#fabric;
  }

  /** Runs `fn` alone for `key` (commands of one item never interleave). */
  async #locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(key) ?? Promise.resolve();
    let release: () => void = () => undefined;
    const mine = new Promise<void>((r) => (release = r));
    const chained = prev.then(() => mine);
    this.#locks.set(key, chained);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#locks.get(key) === chained) this.#locks.delete(key);
    }
  }

  /**
   * Reopens what the data folder holds — journals of running items (before any disk is served, so
   * `observerFor` can hook them from the first write) and replica stores. Call once, before the fabric opens.
   */
  async load(): Promise<void> {
    if (this.#loaded) return;
    this.#loaded = true;
    const sources = await readJsonDir<SourceRecord>(join(this.#o.dataDir, 'replication'), (n) =>
      n.endsWith('.json') ? undefined : join(n, 'source.json'),
    );
    for (const r of sources) {
      if (r.desired !== 'Running') continue;
      this.#sources.set(r.itemId, this.#openGroup(r));
    }
    const replicas = await readJsonDir<ReplicaRecord>(join(this.#o.dataDir, 'replicas'), (n) =>
      join(n, 'replica.json'),
    );
    for (const raw of replicas) {
      // A folder written by an older agent may lack fields: read it with the same defaults as a payload.
      const r: ReplicaRecord = {
        ...raw,
        policy: parsePolicy(raw.policy),
        peer: typeof raw.peer?.agentId === 'string' ? raw.peer : null,
      };
      try {
        this.#replicas.set(r.itemId, await this.#openReplica(r));
      } catch (err) {
        this.#log.error({ itemId: r.itemId, err }, 'cannot open the replica');
      }
    }
  }

  #openGroup(record: SourceRecord): SourceGroup {
    const journal = WriteJournal.open(join(this.#sourceDir(record.itemId), 'journal'), record.disks, {
      capBytes: this.#o.journalCapBytes ?? 2 * 1024 * 1024 * 1024,
    });
    return {
      record,
      journal,
      sender: undefined,
      stop: new AbortController(),
      task: undefined,
      copyPercent: record.copy.state === 'done' || record.copy.state === 'sent' ? 100 : 0,
      markers:
        record.lastMarker == null
          ? []
          : [{ id: String(record.lastMarker.seq), ...record.lastMarker, pending: false }],
      error: null,
      peerCheck: undefined,
      peerCheckedAt: 0,
      saving: Promise.resolve(),
    };
  }

  async #openReplica(record: ReplicaRecord): Promise<ReplicaEntry> {
    const store = await ReplicaStore.open(join(this.#replicaDir(record.itemId), 'store'), {
      disks: record.disks,
      processorIdleMs: 50,
    });
    if (record.receiving !== false) store.startProcessor();
    return { record, store, reported: new Set(), seed: undefined };
  }

  /**
   * Recovery side: stops (`false`) or resumes (`true`) applying received batches to the item's replica — a
   * failover stops replication (R-FO-5), its cancel resumes it. Kept across restarts. NOT_FOUND without a replica.
   */
  setReceiving(itemId: string, on: boolean): Promise<void> {
    const id = checkItemId(itemId);
    return this.#locked(id, async () => {
      const e = this.#replicas.get(id);
      if (e === undefined) throw new OsrError('NOT_FOUND', `item '${id}' has no replica on this site`);
      if ((e.record.receiving !== false) === on) return;
      if (on) e.store.startProcessor();
      else await e.store.stopProcessor();
      e.record = { ...e.record, receiving: on };
      await writeJson(join(this.#replicaDir(id), 'replica.json'), e.record);
    });
  }

  /**
   * Source side (planned failover, R-FO-9): waits until the recovery site acknowledged every write journaled so
   * far and resolves with that last sequence. REPLICATION_UNHEALTHY after `timeoutMs`; NOT_FOUND when the item
   * does not replicate from here.
   */
  async drain(itemId: string, timeoutMs: number): Promise<{ lastSequence: number }> {
    const id = checkItemId(itemId);
    const g = this.#sources.get(id);
    if (g === undefined) throw new OsrError('NOT_FOUND', `item '${id}' does not replicate from this site`);
    await g.journal.flush();
    const last = g.journal.lastSeq;
    const sender = g.sender;
    try {
      if (sender === undefined) throw new Error('the sender is not running');
      await sender.waitForAck(last, AbortSignal.timeout(timeoutMs));
    } catch (err) {
      throw new OsrError(
        'REPLICATION_UNHEALTHY',
        `the recovery site did not acknowledge sequence ${last} within ${timeoutMs} ms`,
        { details: { itemId: id, lastSequence: last, ackedSeq: sender?.ackedSeq ?? null }, cause: err },
      );
    }
    return { lastSequence: last };
  }

  /** The journal hook of a disk of a replicating item, or null (LocalFabric's `diskObserver`). */
  observerFor(machine: string, diskId: string): WriteObserver | null {
    for (const g of this.#sources.values()) {
      if (g.record.machine.name === machine && g.record.disks.some((d) => d.id === diskId)) {
        return g.journal.observer(diskId);
      }
    }
    return null;
  }

  async resume(): Promise<void> {
    await this.load();
    for (const g of this.#sources.values()) {
      try {
        this.#attach(g);
        this.#startGroup(g);
      } catch (err) {
        g.error = (err as Error).message;
        this.#log.error({ itemId: g.record.itemId, err }, 'cannot resume replicating the item');
      }
    }
    await this.#refreshReceivers();
    this.#pruneTimer = setInterval(() => void this.#prune(), this.#o.pruneIntervalMs ?? 60_000);
    this.#pruneTimer.unref();
    // A port another program held may be free now: its receiver is tried again.
    this.#listenRetry = setInterval(() => {
      if (this.#listenErrors.size > 0) void this.#refreshReceivers();
    }, 3000);
    this.#listenRetry.unref();
  }

  // ---- recovery side ----------------------------------------------------------------------------

  async prepareReplica(p: ReplicaPreparePayload): Promise<unknown> {
    const itemId = checkItemId(p.itemId);
    return this.#locked(itemId, async () => {
      const disks = checkDisks(p.disks, 'replica.prepare');
      const peer = p.peer === undefined ? null : { agentId: p.peer.agentId, siteId: p.peer.siteId };
      const policy = parsePolicy(p.policy);
      const auth = parseAuth(p.auth);
      const existing = this.#replicas.get(itemId);
      this.#forgotten.delete(itemId);
      const keep = p.resync === true || p.replicaExists === true;
      if (
        existing !== undefined &&
        !keep &&
        JSON.stringify([existing.record.peer, existing.record.auth, existing.record.disks]) ===
          JSON.stringify([peer, auth, disks]) &&
        existing.record.policy.replicationPort === policy.replicationPort
      ) {
        // A repeated command (same item, same source): the replica is already there.
        return this.#prepared(existing, await this.#listening(existing));
      }
      if (existing !== undefined) {
        this.#replicas.delete(itemId);
        await existing.store.close();
      }
      const dir = this.#replicaDir(itemId);
      if (existing === undefined && p.replicaExists === true && p.resync !== true && !fs.existsSync(dir)) {
        await this.#adoptReplica(itemId, p.machine, disks);
      }
      if (!keep) await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      const record: ReplicaRecord = {
        itemId,
        machine: p.machine,
        disks,
        policy,
        peer,
        auth,
        preparedAt: new Date().toISOString(),
      };
      const entry = await this.#openReplica(record);
      await writeJson(join(dir, 'replica.json'), record);
      this.#replicas.set(itemId, entry);
      return this.#prepared(entry, await this.#listening(entry));
    });
  }

  /**
   * Registering a machine whose replica is already here (R-REP-4, `--replica-exists`): the replica this site
   * kept for the same machine under an earlier item (protection disabled without deleting it) becomes this
   * item's. Its bytes are the seed; the source then compares block hashes and sends only what differs.
   */
  async #adoptReplica(
    itemId: string,
    machine: { id: string; name: string },
    disks: { id: string; sizeBytes: number }[],
  ): Promise<void> {
    const kept = [...this.#replicas.values()].find(
      (e) => e.record.itemId !== itemId && e.record.machine.id === machine.id,
    );
    if (kept === undefined) {
      throw new OsrError(
        'NOT_FOUND',
        `no replica of machine '${machine.name}' is kept at this site; protect it without --replica-exists for a full initial copy`,
        { details: { machine: machine.name } },
      );
    }
    const from = kept.record.itemId;
    await this.#locked(from, async () => {
      if (JSON.stringify(kept.record.disks) !== JSON.stringify(disks)) {
        throw new OsrError(
          'VALIDATION_FAILED',
          `the replica kept for machine '${machine.name}' (item ${from}) has other disks than the machine now`,
          { details: { machine: machine.name, keptItem: from } },
        );
      }
      const committed = kept.store.status().committed !== undefined;
      this.#replicas.delete(from);
      this.#forgotten.delete(from);
      await kept.store.close();
      await rename(this.#replicaDir(from), this.#replicaDir(itemId));
      // A committed replica (the disks of a machine that failed over here and back) no longer receives: its
      // bases, the machine's last disks, seed a fresh store.
      if (committed) await reseedFromBases(join(this.#replicaDir(itemId), 'store'), disks);
      this.#log.info({ itemId, from, machine: machine.name }, 'kept replica registered for the item');
    });
  }

  /** The port a replica's stream arrives on: its policy's, else the data address's. */
  #portOf(r: ReplicaRecord): number {
    return r.policy.replicationPort ?? parseHostPort(this.#o.dataAddress).port;
  }

  /** Makes sure the replica's port has a receiver; REPLICATION_PORT_IN_USE (or the listen error) otherwise. */
  async #listening(e: ReplicaEntry): Promise<number> {
    await this.#refreshReceivers();
    const port = this.#portOf(e.record);
    const err = this.#listenErrors.get(port);
    if (err !== undefined) throw err;
    return port;
  }

  #prepared(e: ReplicaEntry, port: number): unknown {
    return {
      replicaPath: this.#replicaDir(e.record.itemId),
      disks: e.record.disks.map((d) => d.id),
      dataAddress: joinHostPort(parseHostPort(this.#o.dataAddress).host, port),
      lastReceivedSeq: e.store.lastReceivedSeq(),
    };
  }

  async deleteReplica(p: { itemId: string }): Promise<unknown> {
    const itemId = checkItemId(p.itemId);
    return this.#locked(itemId, async () => {
      const dir = this.#replicaDir(itemId);
      const e = this.#replicas.get(itemId);
      this.#replicas.delete(itemId);
      if (e !== undefined) await e.store.close();
      const existed = e !== undefined || fs.existsSync(dir);
      await rm(dir, { recursive: true, force: true });
      await this.#refreshReceivers();
      return { deleted: existed, replicaPath: dir };
    });
  }

  /** How the sender of a group must authenticate: the item's token, or a CA certificate naming its source agent. */
  #peerAuthFor(groupId: string): PeerAuth | undefined {
    const e = this.#replicas.get(groupId);
    if (e === undefined) return undefined;
    const auth = e.record.auth ?? { mode: 'certificate' };
    if (auth.mode === 'token') return auth;
    // A replica prepared by an older agent does not know its source agent: nobody can prove to be it.
    return { mode: 'certificate', identity: agentIdentityUri(e.record.peer?.agentId ?? 'unknown-source') };
  }

  /**
   * Opens a receiver for every port a replica needs and closes those no replica needs any more. A port that
   * cannot be listened on is remembered in `#listenErrors` (the item reports it; it is retried) — never thrown
   * from here, so one taken port does not stop the others.
   */
  #refreshReceivers(): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.#closed) return;
      const wanted = new Set([...this.#replicas.values()].map((e) => this.#portOf(e.record)));
      for (const [port, receiver] of this.#receivers) {
        if (wanted.has(port)) continue;
        this.#receivers.delete(port);
        await receiver.close();
      }
      for (const port of this.#listenErrors.keys()) if (!wanted.has(port)) this.#listenErrors.delete(port);
      const { host } = parseHostPort(this.#o.dataAddress);
      for (const port of wanted) {
        if (this.#receivers.has(port)) continue;
        try {
          this.#receivers.set(
            port,
            await ReplicationReceiver.listen({
              host,
              port,
              identity: this.#tlsIdentity(),
              ...(this.#identity.caPem === null ? {} : { trustedCa: this.#identity.caPem }),
              sinkFor: (groupId) => this.#replicas.get(groupId)?.store,
              peerAuthFor: (groupId) => this.#peerAuthFor(groupId),
              offlineSeedFor: (groupId) => this.#seedFor(groupId),
              onEvent: (e) => {
                if (e.type === 'refused')
                  this.#log.warn({ port, reason: e.reason }, 'replication connection refused');
                else if (e.type === 'connected')
                  this.#log.info(
                    { itemId: e.groupId, resumeSeq: e.resumeSeq },
                    'replication stream connected',
                  );
                else
                  this.#log.debug({ itemId: e.groupId, err: e.error?.message }, 'replication stream ended');
              },
            }),
          );
          if (this.#listenErrors.delete(port)) this.#log.info({ host, port }, 'replication port free again');
          this.#log.info({ host, port }, 'replication receiver listening');
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          const error =
            code === 'EADDRINUSE'
              ? new OsrError(
                  'REPLICATION_PORT_IN_USE',
                  `the replication port ${host}:${port} is already in use on the recovery agent's host`,
                  { details: { host, port }, cause: err },
                )
              : new OsrError(
                  'OPERATION_UNAVAILABLE',
                  `cannot listen on ${host}:${port}: ${(err as Error).message}`,
                  {
                    details: { host, port, code },
                    cause: err,
                  },
                );
          if (!this.#listenErrors.has(port))
            this.#log.error({ host, port, err: error.message }, 'cannot listen for replication streams');
          this.#listenErrors.set(port, error);
        }
      }
    };
    const p = this.#receiverChain.then(run);
    this.#receiverChain = p.catch((err: unknown) =>
      this.#log.error({ err }, 'updating the replication receivers failed'),
    );
    return p;
  }

  #seedFor(groupId: string): OfflineSeedReader | undefined {
    const e = this.#replicas.get(groupId);
    if (e === undefined || e.record.policy.initialReplication.mode !== 'offline') return undefined;
    if (e.seed === undefined) {
      const file = join(e.record.policy.initialReplication.importPath, `${groupId}.osrseed`);
      if (!fs.existsSync(file)) {
        this.#log.warn({ itemId: groupId, file }, 'the offline seed file is not there yet');
        return undefined;
      }
      e.seed = OfflineSeedReader.open(file);
    }
    return e.seed;
  }

  async #prune(): Promise<void> {
    for (const e of this.#replicas.values()) {
      try {
        await e.store.prune(new Date(), e.record.policy.retentionHours * 3600_000);
      } catch (err) {
        this.#log.warn({ itemId: e.record.itemId, err }, 'pruning recovery points failed');
      }
    }
  }

  // ---- source side ------------------------------------------------------------------------------

  async startReplication(p: ReplicationStartPayload): Promise<unknown> {
    const itemId = checkItemId(p.itemId);
    return this.#locked(itemId, async () => {
      const fabric = this.#fabricOrThrow();
      const disks = checkDisks(p.disks, 'replication.start');
      const peer = p.peer;
      if (peer?.dataAddress == null) {
        throw new OsrError(
          'AGENT_NOT_REGISTERED',
          'the recovery site agent has not announced its data address yet',
          { details: { itemId, peer: peer?.agentId ?? null } },
        );
      }
      parseHostPort(peer.dataAddress);
      const auth = parseAuth(p.auth);
      const machine = await fabric.findMachine(p.machine.name);
      if (machine === undefined) {
        throw new OsrError('NOT_FOUND', `machine '${p.machine.name}' is not on this site`, {
          details: { machine: p.machine.name },
        });
      }
      for (const d of disks) {
        if (!machine.disks.some((x) => x.id === d.id)) {
          throw new OsrError('NOT_FOUND', `machine '${p.machine.name}' has no disk '${d.id}'`, {
            details: { machine: p.machine.name, disk: d.id },
          });
        }
      }
      const policy = parsePolicy(p.policy);
      const running = this.#sources.get(itemId);
      if (running !== undefined) {
        const same =
          JSON.stringify([
            running.record.peer,
            running.record.auth ?? { mode: 'certificate' },
            running.record.disks,
          ]) ===
            JSON.stringify([
              { agentId: peer.agentId, siteId: peer.siteId, dataAddress: peer.dataAddress },
              auth,
              disks,
            ]) && running.record.policy.replicationPort === policy.replicationPort;
        if (same) return this.#started(running);
        await this.#stopGroup(running, false);
        this.#sources.delete(itemId);
      }
      const keepJournal = running !== undefined || p.resync === true || p.replicaExists === true;
      const dir = this.#sourceDir(itemId);
      if (!keepJournal) await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      const record: SourceRecord = {
        itemId,
        desired: 'Running',
        machine: { id: p.machine.id, name: p.machine.name },
        disks,
        peer: { agentId: peer.agentId, siteId: peer.siteId, dataAddress: peer.dataAddress },
        policy,
        auth,
        since: new Date().toISOString(),
        copy:
          running?.record.copy ??
          (p.copy === 'delta'
            ? { state: 'done', lastSeq: 0, totalBytes: 0 }
            : { state: 'pending', lastSeq: null, totalBytes: 0 }),
        lastAppPointAt: running?.record.lastAppPointAt ?? null,
        lastMarker: running?.record.lastMarker ?? null,
      };
      await writeJson(join(dir, 'source.json'), record);
      const g = this.#openGroup(record);
      this.#sources.set(itemId, g);
      try {
        this.#attach(g);
        // Delta: every block is compared with the replica (a resync) before the first point.
        if (running === undefined && p.copy === 'delta') g.journal.markAllDirty();
      } catch (err) {
        this.#sources.delete(itemId);
        await g.journal.close();
        throw err;
      }
      this.#startGroup(g);
      return this.#started(g);
    });
  }

  #started(g: SourceGroup): unknown {
    return {
      itemId: g.record.itemId,
      capture: 'journal',
      disks: g.record.disks.map((d) => d.id),
      shipping: true,
      peer: this.#targetOf(g.record).address,
      initialReplication: g.record.policy.initialReplication.mode,
    };
  }

  async forget(itemId: string): Promise<void> {
    if (this.#sources.has(itemId)) {
      this.#log.warn({ itemId }, 'the control plane no longer knows this item; replication stopped');
      await this.stopReplication({ itemId });
    }
    if (this.#replicas.has(itemId) && !this.#forgotten.has(itemId)) {
      this.#log.warn(
        { itemId },
        'the control plane no longer knows this item; its replica is kept (protect --replica-exists uses it)',
      );
      this.#forgotten.add(itemId);
    }
  }

  async stopReplication(p: { itemId: string }): Promise<unknown> {
    const itemId = checkItemId(p.itemId);
    return this.#locked(itemId, async () => {
      const g = this.#sources.get(itemId);
      this.#sources.delete(itemId);
      if (g !== undefined) await this.#stopGroup(g, true);
      const dir = this.#sourceDir(itemId);
      const existed = g !== undefined || fs.existsSync(dir);
      // The journal goes with it: a later start begins with a fresh copy.
      await rm(dir, { recursive: true, force: true });
      return { itemId, stopped: existed };
    });
  }

  #attach(g: SourceGroup): void {
    const fabric = this.#fabricOrThrow();
    for (const d of g.record.disks) {
      fabric.setDiskObserver(g.record.machine.name, d.id, g.journal.observer(d.id));
    }
  }

  async #stopGroup(g: SourceGroup, detach: boolean): Promise<void> {
    g.stop.abort();
    await g.task;
    await g.peerCheck;
    await g.sender?.stop();
    if (detach && this.#fabric !== undefined) {
      for (const d of g.record.disks) {
        try {
          this.#fabric.setDiskObserver(g.record.machine.name, d.id, null);
        } catch (err) {
          if (!(err instanceof OsrError)) throw err;
          // The machine or disk is gone: nothing left to detach.
        }
      }
    }
    await g.journal.close();
  }

  /** Where a source connects, and how the recovery agent there must prove itself. */
  #targetOf(r: SourceRecord): { host: string; port: number; address: string; peerAuth: PeerAuth } {
    const a = parseHostPort(r.peer.dataAddress);
    const port = r.policy.replicationPort ?? a.port;
    const auth = r.auth ?? { mode: 'certificate' };
    return {
      host: a.host,
      port,
      address: joinHostPort(a.host, port),
      peerAuth:
        auth.mode === 'token' ? auth : { mode: 'certificate', identity: agentIdentityUri(r.peer.agentId) },
    };
  }

  /**
   * While the link is down, asks the control plane where the recovery site's agent is now and follows it when
   * it moved (another address) or registered again (another agent id): no Repair needed (rate-limited).
   */
  async #refreshPeer(g: SourceGroup): Promise<void> {
    const lookup = this.#o.peerLookup;
    const now = Date.now();
    if (
      lookup === undefined ||
      g.peerCheck !== undefined ||
      now - g.peerCheckedAt < (this.#o.peerRefreshMs ?? 5000)
    )
      return;
    g.peerCheckedAt = now;
    const r = g.record;
    g.peerCheck = (async () => {
      try {
        const found = await lookup(r.peer.siteId);
        if (g.stop.signal.aborted || found.dataAddress === null) return;
        if (found.dataAddress === r.peer.dataAddress && found.agentId === r.peer.agentId) return;
        parseHostPort(found.dataAddress);
        this.#log.info(
          { itemId: r.itemId, from: r.peer, to: found },
          'the recovery site agent moved; replicating to its new address',
        );
        r.peer = { ...r.peer, agentId: found.agentId, dataAddress: found.dataAddress };
        await this.#save(g);
        const t = this.#targetOf(r);
        g.sender?.retarget(t.host, t.port, t.peerAuth);
      } catch (err) {
        this.#log.debug({ itemId: r.itemId, err: (err as Error).message }, 'peer lookup failed');
      } finally {
        g.peerCheck = undefined;
      }
    })();
    await g.peerCheck;
  }

  #startGroup(g: SourceGroup): void {
    const r = g.record;
    const target = this.#targetOf(r);
    const sender = new ReplicationSender({
      journal: g.journal,
      groupId: r.itemId,
      host: target.host,
      port: target.port,
      identity: this.#tlsIdentity(),
      ...(this.#identity.caPem === null ? {} : { trustedCa: this.#identity.caPem }),
      peerAuth: target.peerAuth,
      compress: r.policy.compression,
      bandwidthLimitAt: (at) => bandwidthLimitAt(r.policy.bandwidth, at),
      backoff: { initialMs: 200, maxMs: 5000 },
      onEvent: (e) => {
        if (e.type === 'connected') {
          g.error = null;
          this.#log.info({ itemId: r.itemId, resumeSeq: e.resumeSeq }, 'replication link up');
        } else {
          this.#log.debug({ itemId: r.itemId, err: e.error.message }, 'replication link down');
          void this.#refreshPeer(g);
        }
      },
    });
    g.sender = sender;
    sender.start();
    g.task = this.#runGroup(g, sender).catch((err: unknown) => {
      if (!g.stop.signal.aborted)
        this.#log.error({ itemId: r.itemId, err }, 'replication stopped on an error');
    });
  }

  async #save(g: SourceGroup): Promise<void> {
    if (g.stop.signal.aborted) return;
    const file = join(this.#sourceDir(g.record.itemId), 'source.json');
    // One at a time (they share the temporary file); each writes the record as it is when its turn comes.
    const write = g.saving.catch(() => undefined).then(() => writeJson(file, g.record));
    g.saving = write;
    await write;
  }

  #backends(g: SourceGroup): Map<string, ObservedBackend> {
    const fabric = this.#fabricOrThrow() as FabricDriver & Partial<DiskAccess>;
    if (typeof fabric.diskBackend !== 'function') {
      throw new OsrError(
        'OPERATION_UNAVAILABLE',
        `the ${fabric.kind} fabric does not expose its disks for copying`,
      );
    }
    return new Map(g.record.disks.map((d) => [d.id, fabric.diskBackend!(g.record.machine.name, d.id)]));
  }

  /** Initial copy, then recovery points (and resync after an overflow) until stopped; retries on errors. */
  async #runGroup(g: SourceGroup, sender: ReplicationSender): Promise<void> {
    const signal = g.stop.signal;
    const r = g.record;
    while (!signal.aborted) {
      try {
        if (r.copy.state === 'pending' || r.copy.state === 'copying') await this.#copy(g, sender);
        if (r.copy.state === 'sent') {
          await sender.waitForAck(r.copy.lastSeq ?? 0, signal);
          r.copy = { ...r.copy, state: 'done' };
          await this.#save(g);
          this.#log.info({ itemId: r.itemId, seq: r.copy.lastSeq }, 'initial replication complete');
          await this.#marker(g, 'crash-consistent');
          if (r.policy.appConsistentFrequencyHours > 0) await this.#appPoint(g);
        }
        await this.#pointLoop(g, sender);
      } catch (err) {
        if (signal.aborted) return;
        g.error = (err as Error).message;
        this.#log.warn({ itemId: r.itemId, err: g.error }, 'replication step failed; retrying');
        await abortable(2000, signal);
      }
    }
  }

  async #copy(g: SourceGroup, sender: ReplicationSender): Promise<void> {
    const r = g.record;
    const signal = g.stop.signal;
    const ir = r.policy.initialReplication;
    if (ir.mode === 'offline' && r.copy.state === 'copying') {
      // An export cut short (agent restart): its seed file never finished, so the placeholders it journaled
      // could never be delivered. They are voided and the export starts over, copying every block again.
      const voided = await g.journal.voidOfflinePlaceholders();
      this.#log.warn(
        { itemId: r.itemId, placeholders: voided.length },
        'offline export was interrupted; exporting again',
      );
    }
    // A streamed copy cut short (agent restart) goes on from its first unacknowledged block.
    const resumeFrom = r.copy.state === 'copying' && ir.mode !== 'offline' ? r.copy.resumeAt : undefined;
    r.copy = {
      state: 'copying',
      lastSeq: null,
      totalBytes: 0,
      ...(resumeFrom === undefined ? {} : { resumeAt: resumeFrom }),
    };
    await this.#save(g);
    if (resumeFrom !== undefined)
      this.#log.info({ itemId: r.itemId, ...resumeFrom }, 'initial replication goes on where it stopped');
    let savedAt = Date.now();
    const backends = this.#backends(g);
    let seed: OfflineSeedWriter | undefined;
    let seedFile: string | undefined;
    if (ir.mode === 'offline') {
      await mkdir(ir.exportPath, { recursive: true });
      seedFile = join(ir.exportPath, `${r.itemId}.osrseed`);
      seed = OfflineSeedWriter.create(seedFile + '.part', r.itemId);
    }
    let result;
    try {
      result = await runInitialCopy({
        journal: g.journal,
        disks: [...backends].map(([id, backend]) => ({ id, backend })),
        ...(ir.mode === 'scheduled' ? { startAt: new Date(ir.startAt) } : {}),
        // Online copies stream: each block is read from the disk when the link sends it, never written to the
        // journal, and the copy ends once the recovery site acknowledged every block.
        ...(seed === undefined
          ? { waitForAck: (seq: number) => sender.waitForAck(seq, signal) }
          : { offline: seed }),
        ...(resumeFrom === undefined ? {} : { resumeFrom }),
        signal,
        onProgress: (p) => {
          g.copyPercent = p.percent;
          if (p.resumeAt == null) return;
          r.copy.resumeAt = p.resumeAt;
          // At most once a second: a restart then copies again at most a second's worth of blocks.
          if (Date.now() - savedAt < 1000) return;
          savedAt = Date.now();
          this.#save(g).catch((err: unknown) =>
            this.#log.warn({ itemId: r.itemId, err }, 'cannot save the copy position'),
          );
        },
      });
    } catch (err) {
      seed?.abandon();
      throw err;
    }
    if (seed !== undefined && seedFile !== undefined) {
      seed.finish();
      await rename(seedFile + '.part', seedFile);
      this.#log.info(
        { itemId: r.itemId, file: seedFile },
        'offline seed exported; import it at the recovery site',
      );
    }
    g.copyPercent = 100;
    r.copy = { state: 'sent', lastSeq: result.lastSeq, totalBytes: result.totalBytes };
    await this.#save(g);
  }

  async #marker(g: SourceGroup, type: MarkerType): Promise<void> {
    const seq = await g.journal.addMarker(type, randomUUID());
    const time = Date.now();
    g.markers.push({ id: String(seq), seq, time, type, pending: false });
    if (g.markers.length > 50) g.markers.splice(0, g.markers.length - 50);
    g.record.lastMarker = { seq, time, type };
    await this.#save(g);
  }

  /** Freeze the workload, journal an app-consistent marker, thaw (R-POL-3); skipped without a hook. */
  async #appPoint(g: SourceGroup): Promise<void> {
    const r = g.record;
    const fabric = (this.#fabric ?? {}) as Partial<RuntimeAccess>;
    const runtime = fabric.runtimeInfo?.(r.machine.name);
    const port = runtime?.httpPort;
    r.lastAppPointAt = Date.now();
    if (port === undefined || runtime?.pid === undefined) {
      this.#log.debug({ itemId: r.itemId }, 'no freeze/thaw hook running; app-consistent point skipped');
      await this.#save(g);
      return;
    }
    const url = `http://127.0.0.1:${port}`;
    const res = await fetch(`${url}/freeze`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
    await res.arrayBuffer();
    try {
      if (!res.ok) throw new Error(`freeze answered ${res.status}`);
      await this.#marker(g, 'app-consistent');
    } finally {
      const thaw = await fetch(`${url}/thaw`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
      await thaw.arrayBuffer();
    }
    await this.#save(g);
  }

  async #pointLoop(g: SourceGroup, sender: ReplicationSender): Promise<void> {
    const r = g.record;
    const signal = g.stop.signal;
    const crashMs = this.#o.crashPointIntervalMs ?? r.policy.copyFrequencySeconds * 1000;
    const appMs = r.policy.appConsistentFrequencyHours * 3600_000;
    let nextCrash = Date.now() + crashMs;
    while (!signal.aborted) {
      if (sender.status().state === 'resync-required' && !g.journal.resyncRequired) {
        // A record the sender refused as damaged: replace it by a tombstone and compare every block.
        const replaced = g.journal.repairDamaged();
        if (replaced.length > 0) {
          this.#log.warn({ itemId: r.itemId, seqs: replaced.length }, 'damaged journal records; resyncing');
        } else {
          const why =
            'the recovery site needs changes the journal no longer holds; disable and protect again';
          if (g.error !== why) this.#log.error({ itemId: r.itemId }, why);
          g.error = why;
        }
      }
      if (g.journal.resyncRequired && sender.status().state === 'streaming') {
        this.#log.warn(
          { itemId: r.itemId, mode: g.journal.mode },
          'the replica must be brought level (journal overflow, damage or a lost resume position); resyncing by block hashes',
        );
        const res = await runResync({
          journal: g.journal,
          disks: this.#backends(g),
          remoteHashes: (diskId, blockSize, offsets) => sender.requestHashes(diskId, blockSize, offsets),
          waitForAck: (seq) => sender.waitForAck(seq, signal),
          signal,
          onProgress: (p) => {
            if (r.lastMarker === null) g.copyPercent = (100 * p.blocksDone) / Math.max(1, p.blocksTotal);
          },
        });
        this.#log.info({ itemId: r.itemId, ...res }, 'resync done');
        r.lastResync = {
          at: new Date().toISOString(),
          bytesCompared: res.bytesCompared,
          bytesSent: res.bytesSent,
        };
        await this.#save(g);
        // The replica is level again (or, for a reprotect, for the first time): a point now, not at the next
        // copy-frequency tick, so failover (or failback) is possible at once.
        if (!g.journal.resyncRequired) {
          await this.#marker(g, 'crash-consistent');
          nextCrash = Date.now() + crashMs;
        }
        continue;
      }
      const now = Date.now();
      if (appMs > 0 && (r.lastAppPointAt ?? 0) + appMs <= now) {
        await this.#appPoint(g);
        nextCrash = Date.now() + crashMs;
      } else if (now >= nextCrash) {
        if (!g.journal.resyncRequired) await this.#marker(g, 'crash-consistent');
        nextCrash = Date.now() + crashMs;
      }
      await abortable(Math.max(50, Math.min(1000, nextCrash - Date.now())), signal);
    }
  }

  // ---- reporting --------------------------------------------------------------------------------

  report(): ReplicationReport {
    const items = new Map<string, ReportedItem>();
    const sent: Array<{ e: ReplicaEntry; ids: string[] }> = [];
    for (const g of this.#sources.values()) {
      const r = g.record;
      const s = g.sender?.status();
      const acked = g.markers.filter((m) => s !== undefined && m.seq <= s.ackedSeq);
      const st = replicationStatus({
        ...(s === undefined ? {} : { sender: s }),
        journal: g.journal.status(),
        points: acked,
        copyFrequencySeconds: r.policy.copyFrequencySeconds,
      });
      // A delta start (reprotect to the original location, --replica-exists) counts as the initial replication
      // until its resync has cut the first point: only then can the item fail over (or fail back).
      const copying = r.copy.state !== 'done' || (r.lastMarker === null && g.journal.resyncRequired);
      const progress = copying ? Math.min(99, Math.floor(g.copyPercent * 0.99)) : 100;
      let health = st.health;
      let reason = st.healthReason;
      if (copying && health !== 'Critical') {
        // No point exists before the copy is acknowledged: that is progress, not a problem.
        health =
          s !== undefined && (s.state === 'backoff' || s.state === 'connecting') && s.lagSeq > 0
            ? 'Warning'
            : 'Normal';
        reason =
          health === 'Normal'
            ? null
            : `the replication link is down${s?.lastError ? ` (${s.lastError})` : ''}`;
      } else if (acked.length === 0 && health !== 'Critical') {
        health = 'Normal';
        reason = null;
      }
      if (g.error !== null && health === 'Normal') {
        health = 'Warning';
        reason = g.error;
      }
      if (s !== undefined && s.state !== 'streaming' && AUTH_REFUSAL_CODES.has(s.lastErrorCode ?? '')) {
        // An authentication refusal does not heal by retrying: the operator must act.
        health = 'Critical';
        reason = `the replication link is refused (${s.lastErrorCode}): ${s.lastError}`;
      }
      items.set(r.itemId, {
        itemId: r.itemId,
        initialReplicationProgress: progress,
        lagSeconds: st.lagSeconds,
        lagBytes: st.lagBytes,
        throughputBps: st.throughputBps,
        compressionRatio: st.compressionRatio,
        resyncRequired: st.resyncRequired,
        health,
        healthReason: reason,
      });
    }
    for (const e of this.#replicas.values()) {
      if (this.#forgotten.has(e.record.itemId)) continue;
      let status;
      try {
        status = e.store.status();
      } catch {
        continue;
      }
      const all = e.store.points().filter((p) => !p.pending);
      // Forget points retention dropped, so the memory of what was sent stays as small as the history.
      const kept = new Set(all.map((p) => p.id));
      for (const id of e.reported) if (!kept.has(id)) e.reported.delete(id);
      const fresh = all.filter((p) => !e.reported.has(p.id)).slice(-200);
      const item = items.get(e.record.itemId) ?? { itemId: e.record.itemId };
      item.backlogBytes = status.pendingBytes;
      if (fresh.length > 0) {
        item.points = fresh.map((p) => ({
          id: p.id.slice(0, 100),
          sequence: p.seq,
          time: new Date(p.time).toISOString(),
          type: p.type,
        }));
        sent.push({ e, ids: fresh.map((p) => p.id) });
      }
      if (status.health === 'Critical' && !status.processorRunning) {
        item.health = 'Critical';
        item.healthReason = status.healthReason;
      }
      const listenError = this.#listenErrors.get(this.#portOf(e.record));
      if (listenError !== undefined) {
        item.health = 'Critical';
        item.healthReason = `${listenError.code}: ${listenError.message}`;
      }
      items.set(e.record.itemId, item);
    }
    return {
      items: [...items.values()],
      delivered: () => {
        for (const s of sent) for (const id of s.ids) s.e.reported.add(id);
      },
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pruneTimer !== undefined) clearInterval(this.#pruneTimer);
    const errors: unknown[] = [];
    for (const g of this.#sources.values()) {
      try {
        await this.#stopGroup(g, false);
      } catch (err) {
        errors.push(err);
      }
    }
    this.#sources.clear();
    if (this.#listenRetry !== undefined) clearInterval(this.#listenRetry);
    await this.#receiverChain;
    for (const r of this.#receivers.values()) {
      try {
        await r.close();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#receivers.clear();
    for (const e of this.#replicas.values()) {
      try {
        await e.store.close();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#replicas.clear();
    if (errors.length > 0) throw errors[0];
  }
}

/**
 * Replaces the replica store in `storeDir` by a fresh one whose base images are the old store's (no points, no
 * history, sequence 0). A crash half-way leaves a store with some bases empty: the block-hash resync that
 * follows sends what they lack.
 */
async function reseedFromBases(storeDir: string, disks: { id: string; sizeBytes: number }[]): Promise<void> {
  const aside = `${storeDir}.bases`;
  const image = (dir: string, id: string): string => join(dir, `${encodeURIComponent(id)}.img`);
  await rm(aside, { recursive: true, force: true });
  await mkdir(aside, { recursive: true });
  for (const d of disks) await rename(image(join(storeDir, 'disks'), d.id), image(aside, d.id));
  await rm(storeDir, { recursive: true, force: true });
  await (await ReplicaStore.open(storeDir, { disks })).close();
  for (const d of disks) {
    const file = image(join(storeDir, 'disks'), d.id);
    await rename(image(aside, d.id), file);
    // The allocation map belonged to the empty image: it is rebuilt by a scan.
    await rm(`${file}.osrmap`, { force: true });
  }
  await rm(aside, { recursive: true, force: true });
}
