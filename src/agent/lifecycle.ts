/**
 * The agent's side of the failover lifecycle (docs/agent-protocol.md §8): the `replica.*` commands at the
 * recovery site and `replication.drain` at the source, on the replica stores of the data plane.
 *
 * An *exposure* (one per item and purpose, `test` or `failover`) is a writable overlay per disk on a read-only
 * view of the replica at a recovery point, served by an NBD server of its own (`nbd://host:port/<export>`), and
 * lent to the local fabric as the disks of the failover or test machine (`exposureBackend`). Each disk is a
 * stable `ExposureDisk` whose target changes underneath — the overlay, the replica's base after a commit, or
 * nothing after a release — so a machine and NBD clients keep one address through change-point, commit and
 * revert.
 *
 * State lives in `<data>/exposures/<item>/<purpose>/` (`exposure.json` and the overlay files): `load()` (before
 * the fabric opens) reopens every exposure on the same port, so a machine running on it after an agent restart
 * (kill -9 included) finds its disks again. Every handler is idempotent: a repeated command answers the exposure
 * as it is.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlockBackend, Extent, WriteOptions, ZeroOptions } from '../dataplane/nbd/backend.js';
import { NbdError } from '../dataplane/nbd/errors.js';
import { NbdErrno } from '../dataplane/nbd/protocol.js';
import { NbdServer } from '../dataplane/nbd/server.js';
import { ReplicaError } from '../dataplane/replica/errors.js';
import type { Overlay } from '../dataplane/replica/overlay.js';
import { ReplicaStore } from '../dataplane/replica/replica-store.js';
import type { RecoveryPointInfo } from '../dataplane/replica/replica-store.js';
import { OsrError } from '../domain/errors.js';
import type { DiskExposureRef } from '../fabric/local/machines.js';
import type {
  ExposedDisk,
  ExposurePurpose,
  ReplicaCommitResult,
  ReplicaExposeResult,
  ReplicaPointResult,
  ReplicationDrainResult,
} from '../workflows/agent-commands.js';
import type { CommandHandler } from './commands.js';
import type { ReplicaPreparePayload, ReplicationStartPayload } from './replication.js';
import type { FabricDriver } from '../fabric/driver.js';
import type { ReplicationLogger } from './replication-dataplane.js';

/** What the lifecycle service needs from the data plane. */
export interface LifecycleDataPlane {
  replicaStore(itemId: string): ReplicaStore | undefined;
  replicaDir(itemId: string): string;
  setReceiving(itemId: string, on: boolean): Promise<void>;
  drain(itemId: string, timeoutMs: number): Promise<{ lastSequence: number }>;
  prepareReplica(p: ReplicaPreparePayload): Promise<unknown>;
  startReplication(p: ReplicationStartPayload): Promise<unknown>;
  stopReplication(p: { itemId: string }): Promise<unknown>;
  deleteReplica(p: { itemId: string }): Promise<unknown>;
}

/** What reprotect needs from the fabric: the original machine's disks, to seed the reverse replica. */
interface DiskReader {
  diskBackend(machine: string, diskId: string): BlockBackend;
}

function readsDisks(f: FabricDriver | undefined): f is FabricDriver & DiskReader {
  return f !== undefined && typeof (f as Partial<DiskReader>).diskBackend === 'function';
}

/** Options of `LifecycleService`. */
export interface LifecycleOptions {
  dataDir: string;
  dataPlane: LifecycleDataPlane;
  /** Address the exposures' NBD servers listen on and advertise (default 127.0.0.1). */
  nbdHost?: string;
  log?: ReplicationLogger;
}

/** The persisted state of an exposure. */
interface ExposureRecord {
  itemId: string;
  purpose: ExposurePurpose;
  pointId: string;
  sequence: number;
  disks: { id: string; sizeBytes: number }[];
  port: number;
  /** `committed`: the disks are the replica's base (the failover was committed). */
  state: 'overlay' | 'committed';
  /** Named snapshots of the overlays: name → disk id → overlay snapshot id. */
  snapshots: Record<string, Record<string, string>>;
}

interface Exposure {
  record: ExposureRecord;
  overlays: Map<string, Overlay>;
  server: NbdServer;
}

const PURPOSES: readonly ExposurePurpose[] = ['test', 'failover'];

/**
 * One disk of an exposure as a `BlockBackend` whose target can change (overlay → base at commit, none after a
 * release). With no target every request fails with EIO. `hold()` makes new requests wait and lets those in
 * flight finish, so the target can be switched under a running machine; `resume()` lets them go on to the new
 * target. `close()` does nothing: the service owns the targets.
 */
export class ExposureDisk implements BlockBackend {
  readonly size: number;
  readonly readOnly = false;
  target: BlockBackend | undefined;
  #inFlight = 0;
  #idle: Array<() => void> = [];
  #held: { promise: Promise<void>; release: () => void } | undefined;

  constructor(size: number) {
    this.size = size;
  }

  async #run<T>(op: (target: BlockBackend | undefined) => Promise<T>): Promise<T> {
    while (this.#held !== undefined) await this.#held.promise;
    this.#inFlight++;
    try {
      return await op(this.target);
    } finally {
      if (--this.#inFlight === 0) for (const wake of this.#idle.splice(0)) wake();
    }
  }

  #t(target: BlockBackend | undefined): BlockBackend {
    if (target === undefined) throw new NbdError(NbdErrno.EIO, 'the exposure was released');
    return target;
  }

  /** New requests wait from now on; resolves once every request already under way has finished. */
  async hold(): Promise<void> {
    if (this.#held === undefined) {
      let release = (): void => undefined;
      const promise = new Promise<void>((r) => (release = r));
      this.#held = { promise, release };
    }
    if (this.#inFlight > 0) await new Promise<void>((r) => this.#idle.push(r));
  }

  /** Lets the held requests go on, to whatever the target is now. */
  resume(): void {
    const held = this.#held;
    this.#held = undefined;
    held?.release();
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.#run((t) => this.#t(t).read(offset, length, into));
  }
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.#run((t) => this.#t(t).write(offset, data, options));
  }
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.#run((t) => this.#t(t).writeZeroes(offset, length, options));
  }
  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.#run((t) => this.#t(t).trim(offset, length, options));
  }
  flush(): Promise<void> {
    return this.#run((t) => t?.flush() ?? Promise.resolve());
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.#run((t) => this.#t(t).blockStatus(offset, length));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function fields(payload: unknown, type: string): Record<string, unknown> {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new OsrError('VALIDATION_FAILED', `${type}: the payload must be an object`);
  }
  return payload as Record<string, unknown>;
}

function itemIdOf(o: Record<string, unknown>, type: string): string {
  const v = o['itemId'];
  if (typeof v !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(v)) {
    throw new OsrError('VALIDATION_FAILED', `${type}: 'itemId' must be an item id`, {
      details: { field: 'itemId' },
    });
  }
  return v;
}

function purposeOf(o: Record<string, unknown>, type: string, only?: ExposurePurpose): ExposurePurpose {
  const v = o['purpose'];
  if (!PURPOSES.includes(v as ExposurePurpose) || (only !== undefined && v !== only)) {
    throw new OsrError(
      'VALIDATION_FAILED',
      `${type}: 'purpose' must be ${only === undefined ? "'test' or 'failover'" : `'${only}'`}`,
      { details: { field: 'purpose' } },
    );
  }
  return v as ExposurePurpose;
}

function sequenceOf(o: Record<string, unknown>, type: string): number {
  const p = o['point'];
  const seq = typeof p === 'object' && p !== null ? (p as Record<string, unknown>)['sequence'] : undefined;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
    throw new OsrError('VALIDATION_FAILED', `${type}: 'point.sequence' must be a positive integer`, {
      details: { field: 'point.sequence' },
    });
  }
  return seq;
}

function optionalMs(o: Record<string, unknown>, key: string, type: string, dflt: number): number {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new OsrError('VALIDATION_FAILED', `${type}: '${key}' must be a non-negative number`, {
      details: { field: key },
    });
  }
  return v;
}

/** A replica-store failure as the catalog code the control plane expects. */
function mapReplicaError(err: unknown, itemId: string): unknown {
  if (!(err instanceof ReplicaError)) return err;
  const details = { itemId, replicaError: err.code };
  switch (err.code) {
    case 'POINT_NOT_FOUND':
      return new OsrError('NO_RECOVERY_POINT', err.message, { details, cause: err });
    case 'RESYNC_IN_PROGRESS':
    case 'COMMITTED':
      return new OsrError('REPLICATION_UNHEALTHY', err.message, { details, cause: err });
    case 'IN_USE':
      return new OsrError('IN_USE', err.message, { details, cause: err });
    default:
      return new OsrError('INTERNAL', err.message, { details, cause: err });
  }
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file + '.tmp', JSON.stringify(value, null, 2) + '\n');
  await rename(file + '.tmp', file);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The lifecycle commands of one agent (see the file comment). */
export class LifecycleService {
  readonly #o: LifecycleOptions;
  readonly #host: string;
  readonly #exposures = new Map<string, Exposure>();
  /** Stable per item/purpose/disk, across release and expose again (a machine's served disk keeps it). */
  readonly #disks = new Map<string, ExposureDisk>();
  readonly #locks = new Map<string, Promise<void>>();
  #closed = false;
  #fabric: FabricDriver | undefined;

  constructor(options: LifecycleOptions) {
    this.#o = options;
    this.#host = options.nbdHost ?? '127.0.0.1';
  }

  #dir(itemId: string, purpose: ExposurePurpose): string {
    return join(this.#o.dataDir, 'exposures', itemId, purpose);
  }

  #disk(itemId: string, purpose: ExposurePurpose, diskId: string, size: number): ExposureDisk {
    const key = `${itemId}/${purpose}/${diskId}`;
    let d = this.#disks.get(key);
    if (d === undefined || d.size !== size) {
      d = new ExposureDisk(size);
      this.#disks.set(key, d);
    }
    return d;
  }

  /** The fabric whose machines reprotect reads and replicates (bound once it is open). */
  bindFabric(fabric: FabricDriver): this {
    this.#fabric = fabric;
    return this;
  }

  /** The backend a machine's disk on an exposure runs on (LocalFabric's `exposureBackend`). */
  backendFor(ref: DiskExposureRef): BlockBackend | undefined {
    const e = this.#exposures.get(`${ref.itemId}/${ref.purpose}`);
    if (e === undefined) return undefined;
    const d = e.record.disks.find((x) => x.id === ref.diskId);
    return d === undefined ? undefined : this.#disk(ref.itemId, ref.purpose, d.id, d.sizeBytes);
  }

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

  #store(itemId: string): ReplicaStore {
    const s = this.#o.dataPlane.replicaStore(itemId);
    if (s === undefined) {
      throw new OsrError('NOT_FOUND', `item '${itemId}' has no replica on this site`, {
        details: { itemId },
      });
    }
    return s;
  }

  /** Reopens every exposure the data folder holds (call after the data plane's `load`, before the fabric opens). */
  async load(): Promise<void> {
    const root = join(this.#o.dataDir, 'exposures');
    let items: string[] = [];
    try {
      items = await readdir(root);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const itemId of items.sort()) {
      for (const purpose of PURPOSES) {
        const file = join(root, itemId, purpose, 'exposure.json');
        if (!existsSync(file)) continue;
        try {
          const record = JSON.parse(await readFile(file, 'utf8')) as ExposureRecord;
          await this.#open(record);
          this.#o.log?.info({ itemId, purpose, port: record.port }, 'exposure served again');
        } catch (err) {
          this.#o.log?.error({ itemId, purpose, err }, 'cannot serve the exposure again');
        }
      }
    }
  }

  /** Opens the overlays (or the committed base) of a record and serves them; registers the exposure. */
  async #open(record: ExposureRecord, create = false): Promise<Exposure> {
    const store = this.#store(record.itemId);
    const dir = this.#dir(record.itemId, record.purpose);
    if (record.state === 'overlay' && store.status().committed !== undefined) {
      // The agent died inside a commit: the store finished it when it opened.
      record = { ...record, state: 'committed', snapshots: {} };
      await writeJson(join(dir, 'exposure.json'), record);
    }
    const overlays = new Map<string, Overlay>();
    const targets = new Map<string, BlockBackend>();
    try {
      for (const d of record.disks) {
        if (record.state === 'committed') {
          targets.set(d.id, store.openBase(d.id));
          continue;
        }
        const options = { dir, name: d.id };
        let o: Overlay;
        if (create) {
          try {
            o = await store.createOverlay(d.id, record.pointId, options);
          } catch (err) {
            if (!(err instanceof ReplicaError) || err.code !== 'OVERLAY_MISMATCH') throw err;
            // Left by an exposure at another point that was never recorded: start afresh.
            await rm(join(dir, `${d.id}.overlay`), { force: true });
            await rm(join(dir, `${d.id}.overlay-map`), { force: true });
            o = await store.createOverlay(d.id, record.pointId, options);
          }
        } else {
          o = await store.openOverlay(d.id, options);
        }
        overlays.set(d.id, o);
        targets.set(d.id, o);
      }
    } catch (err) {
      for (const o of overlays.values()) await o.close().catch(() => undefined);
      throw mapReplicaError(err, record.itemId);
    }
    const disks = record.disks.map((d) => {
      const disk = this.#disk(record.itemId, record.purpose, d.id, d.sizeBytes);
      disk.target = targets.get(d.id);
      return { d, disk };
    });
    const exports = disks.map(({ d, disk }) => ({
      name: exportName(record.itemId, record.purpose, d.id),
      backend: disk,
      description: `${record.purpose} exposure of item ${record.itemId}, disk ${d.id}`,
    }));
    let server = new NbdServer({ exports });
    let addr;
    try {
      addr = await server.listen({ host: this.#host, port: record.port });
    } catch (err) {
      if (record.port === 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
        for (const o of overlays.values()) await o.close().catch(() => undefined);
        throw err;
      }
      server = new NbdServer({ exports });
      addr = await server.listen({ host: this.#host, port: 0 });
    }
    if (typeof addr === 'string') throw new OsrError('INTERNAL', 'the NBD server listens on a socket path');
    if (addr.port !== record.port) {
      record = { ...record, port: addr.port };
      await mkdir(dir, { recursive: true });
      await writeJson(join(dir, 'exposure.json'), record);
    }
    const e: Exposure = { record, overlays, server };
    this.#exposures.set(`${record.itemId}/${record.purpose}`, e);
    return e;
  }

  #result(e: Exposure): ReplicaExposeResult {
    const r = e.record;
    return {
      purpose: r.purpose,
      sequence: r.sequence,
      disks: r.disks.map((d): ExposedDisk => {
        const name = exportName(r.itemId, r.purpose, d.id);
        return {
          id: d.id,
          sizeBytes: d.sizeBytes,
          exportName: name,
          nbdUri: `nbd://${this.#host}:${r.port}/${name}`,
        };
      }),
    };
  }

  /** The processed point at `sequence` (processing up to it when it is still pending); NO_RECOVERY_POINT. */
  async #pointAt(store: ReplicaStore, itemId: string, sequence: number): Promise<RecoveryPointInfo> {
    let p = store.points().find((x) => x.seq === sequence);
    if (p?.pending === true) {
      await store.process({ uptoSeq: sequence });
      p = store.points().find((x) => x.seq === sequence);
    }
    if (p === undefined || p.pending) {
      throw new OsrError('NO_RECOVERY_POINT', `the replica holds no recovery point at sequence ${sequence}`, {
        details: { itemId, sequence, points: store.points().length },
      });
    }
    return p;
  }

  /** `replica.point`: process everything received (after `minSequence` arrived) and cut a point. */
  async point(payload: unknown): Promise<ReplicaPointResult> {
    const type = 'replica.point';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const timeoutMs = optionalMs(o, 'timeoutMs', type, 5 * 60_000);
    const min = o['minSequence'];
    if (min !== undefined && (typeof min !== 'number' || !Number.isSafeInteger(min) || min < 0)) {
      throw new OsrError('VALIDATION_FAILED', `${type}: 'minSequence' must be a non-negative integer`);
    }
    const store = this.#store(itemId);
    if (typeof min === 'number') {
      const deadline = Date.now() + timeoutMs;
      while (store.lastReceivedSeq() < min) {
        if (Date.now() > deadline) {
          throw new OsrError(
            'REPLICATION_UNHEALTHY',
            `the replica received up to sequence ${store.lastReceivedSeq()}, not ${min}, within ${timeoutMs} ms`,
            { details: { itemId, minSequence: min, lastReceivedSeq: store.lastReceivedSeq() } },
          );
        }
        await sleep(50);
      }
    }
    try {
      const p = await store.cutLatest();
      return { sequence: p.seq, time: new Date(p.time).toISOString(), type: p.type };
    } catch (err) {
      throw mapReplicaError(err, itemId);
    }
  }

  /** `replica.expose`: view + overlay at the point, served over NBD. */
  async expose(payload: unknown): Promise<ReplicaExposeResult> {
    const type = 'replica.expose';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const purpose = purposeOf(o, type);
    const sequence = sequenceOf(o, type);
    const stopReceiving = o['stopReceiving'] === true;
    return this.#locked(itemId, async () => {
      const store = this.#store(itemId);
      const key = `${itemId}/${purpose}`;
      const existing = this.#exposures.get(key);
      if (existing !== undefined) {
        if (existing.record.sequence === sequence || existing.record.state === 'committed') {
          if (stopReceiving) await this.#o.dataPlane.setReceiving(itemId, false);
          return this.#result(existing);
        }
        // A retried failover at another point: the earlier exposure goes, unless a machine runs on it.
        const users = this.#runningOn(itemId, purpose);
        if (users.length > 0) {
          throw new OsrError(
            'IN_USE',
            `the ${purpose} exposure of item '${itemId}' is at sequence ${existing.record.sequence} and machine(s) ${users.join(', ')} run on it; power them off first`,
            { details: { itemId, purpose, sequence: existing.record.sequence, machines: users } },
          );
        }
        await this.#drop(existing);
      }
      const point = await this.#pointAt(store, itemId, sequence);
      const disks = disksOf(o, store, itemId);
      if (stopReceiving) await this.#o.dataPlane.setReceiving(itemId, false);
      const dir = this.#dir(itemId, purpose);
      await mkdir(dir, { recursive: true });
      const record: ExposureRecord = {
        itemId,
        purpose,
        pointId: point.id,
        sequence: point.seq,
        disks,
        port: 0,
        state: 'overlay',
        snapshots: {},
      };
      const e = await this.#open(record, true);
      await writeJson(join(dir, 'exposure.json'), e.record);
      this.#o.log?.info({ itemId, purpose, sequence, port: e.record.port }, 'replica exposed');
      return this.#result(e);
    });
  }

  /** Running machines on the exposure, when the fabric can tell (the local fabric can). */
  #runningOn(itemId: string, purpose: ExposurePurpose): string[] {
    const f = this.#fabric as
      Partial<{ runningOnExposure(itemId: string, purpose: string): string[] }> | undefined;
    return typeof f?.runningOnExposure === 'function' ? f.runningOnExposure(itemId, purpose) : [];
  }

  #held(itemId: string, purpose: ExposurePurpose): Exposure {
    const e = this.#exposures.get(`${itemId}/${purpose}`);
    if (e === undefined) {
      throw new OsrError('NOT_FOUND', `item '${itemId}' has no ${purpose} exposure on this site`, {
        details: { itemId, purpose },
      });
    }
    return e;
  }

  /** `replica.swapPoint`: the overlays move onto the view at another point (their writes are discarded). */
  async swapPoint(payload: unknown): Promise<ReplicaExposeResult> {
    const type = 'replica.swapPoint';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const purpose = purposeOf(o, type);
    const sequence = sequenceOf(o, type);
    return this.#locked(itemId, async () => {
      const e = this.#held(itemId, purpose);
      if (e.record.state === 'committed') {
        throw new OsrError('OPERATION_NOT_ALLOWED', 'the failover was committed; its point cannot change', {
          details: { itemId },
        });
      }
      const store = this.#store(itemId);
      const point = await this.#pointAt(store, itemId, sequence);
      try {
        for (const ov of e.overlays.values()) {
          if (ov.pointId !== point.id) await ov.swapView(point.id);
        }
      } catch (err) {
        throw mapReplicaError(err, itemId);
      }
      e.record = { ...e.record, pointId: point.id, sequence: point.seq, snapshots: {} };
      await writeJson(join(this.#dir(itemId, purpose), 'exposure.json'), e.record);
      this.#o.log?.info({ itemId, purpose, sequence }, 'exposure moved to another point');
      return this.#result(e);
    });
  }

  /** `replica.commit`: flatten view + overlay into the base, drop every other point; same addresses. */
  async commit(payload: unknown): Promise<ReplicaCommitResult> {
    const type = 'replica.commit';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    purposeOf(o, type, 'failover');
    return this.#locked(itemId, async () => {
      const e = this.#held(itemId, 'failover');
      const store = this.#store(itemId);
      if (e.record.state !== 'committed') {
        // The machine keeps running: its writes during the copy are copied again, and at the end its requests
        // wait (hold) until the disks point at the base.
        const disks = e.record.disks.map((d) => ({
          d,
          x: this.#disk(itemId, 'failover', d.id, d.sizeBytes),
        }));
        try {
          await store.commit([...e.overlays.values()], {
            quiesce: async () => {
              await Promise.all(disks.map(({ x }) => x.hold()));
            },
          });
          for (const { d, x } of disks) x.target = store.openBase(d.id);
        } catch (err) {
          throw mapReplicaError(err, itemId);
        } finally {
          for (const { x } of disks) x.resume();
        }
        e.overlays.clear();
        e.record = { ...e.record, state: 'committed', snapshots: {} };
        await writeJson(join(this.#dir(itemId, 'failover'), 'exposure.json'), e.record);
        this.#o.log?.info({ itemId, sequence: e.record.sequence }, 'failover committed');
      }
      const r = this.#result(e);
      return { sequence: r.sequence, disks: r.disks };
    });
  }

  /** `replica.release`: drop the exposure (absent is success); `resumeReceiving` applies batches again. */
  async release(payload: unknown): Promise<unknown> {
    const type = 'replica.release';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const purpose = purposeOf(o, type);
    return this.#locked(itemId, async () => {
      const e = this.#exposures.get(`${itemId}/${purpose}`);
      if (e !== undefined) await this.#drop(e);
      else await rm(this.#dir(itemId, purpose), { recursive: true, force: true });
      if (o['resumeReceiving'] === true && this.#o.dataPlane.replicaStore(itemId) !== undefined) {
        await this.#o.dataPlane.setReceiving(itemId, true);
      }
      return { itemId, purpose, released: e !== undefined };
    });
  }

  /** Stops serving an exposure and deletes its overlays (a committed one keeps the base, which is the replica). */
  async #drop(e: Exposure): Promise<void> {
    const r = e.record;
    this.#exposures.delete(`${r.itemId}/${r.purpose}`);
    for (const d of r.disks) {
      const disk = this.#disks.get(`${r.itemId}/${r.purpose}/${d.id}`);
      if (disk !== undefined) disk.target = undefined;
    }
    await e.server.close();
    for (const ov of e.overlays.values()) await ov.destroy();
    await rm(this.#dir(r.itemId, r.purpose), { recursive: true, force: true });
    this.#o.log?.info({ itemId: r.itemId, purpose: r.purpose }, 'exposure released');
  }

  /** `replica.snapshot`: save the overlays' state under a name (once; a repeat answers the same). */
  async snapshot(payload: unknown): Promise<unknown> {
    const type = 'replica.snapshot';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const purpose = purposeOf(o, type);
    const name = snapshotName(o, type);
    return this.#locked(itemId, async () => {
      const e = this.#held(itemId, purpose);
      if (e.record.state === 'committed') {
        throw new OsrError('OPERATION_NOT_ALLOWED', 'the failover was committed; it has no overlay', {
          details: { itemId },
        });
      }
      const have = e.record.snapshots[name];
      if (have !== undefined) return { snapshot: name, disks: Object.keys(have) };
      const ids: Record<string, string> = {};
      for (const [diskId, ov] of e.overlays) ids[diskId] = await ov.snapshot();
      e.record = { ...e.record, snapshots: { ...e.record.snapshots, [name]: ids } };
      await writeJson(join(this.#dir(itemId, purpose), 'exposure.json'), e.record);
      return { snapshot: name, disks: Object.keys(ids) };
    });
  }

  /** `replica.revert`: restore the overlays to a named snapshot; NOT_FOUND when there is none. */
  async revert(payload: unknown): Promise<unknown> {
    const type = 'replica.revert';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const purpose = purposeOf(o, type);
    const name = snapshotName(o, type);
    return this.#locked(itemId, async () => {
      const e = this.#held(itemId, purpose);
      const ids = e.record.snapshots[name];
      if (ids === undefined) {
        throw new OsrError(
          'NOT_FOUND',
          `the ${purpose} exposure of item '${itemId}' has no snapshot '${name}'`,
          {
            details: { itemId, purpose, snapshot: name },
          },
        );
      }
      try {
        for (const [diskId, id] of Object.entries(ids)) await e.overlays.get(diskId)?.revert(id);
      } catch (err) {
        throw mapReplicaError(err, itemId);
      }
      return { snapshot: name, reverted: Object.keys(ids) };
    });
  }

  /** `replication.drain` (source side): ship everything journaled and wait for its acknowledgement. */
  async drain(payload: unknown): Promise<ReplicationDrainResult> {
    const type = 'replication.drain';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    return this.#o.dataPlane.drain(itemId, optionalMs(o, 'timeoutMs', type, 5 * 60_000));
  }

  /**
   * `replica.prepare` with a reprotect `target` (the primary site's agent): the old direction's capture of the
   * original machine stops (its journal would ship to a replica that was committed), and for the original
   * location the new replica starts as a copy of the original machine's disks (made here, on this site), so the
   * reverse direction only has to send the blocks that differ. Without `target` it is the plain prepare.
   */
  async prepare(payload: unknown): Promise<unknown> {
    const type = 'replica.prepare';
    const o = fields(payload, type);
    const itemId = itemIdOf(o, type);
    const p = payload as ReplicaPreparePayload & { target?: { location?: unknown; machine?: unknown } };
    const target = p.target;
    if (target === undefined || target === null) return this.#o.dataPlane.prepareReplica(p);
    if (
      typeof target.machine !== 'string' ||
      (target.location !== 'original' && target.location !== 'alternate')
    ) {
      throw new OsrError('VALIDATION_FAILED', `${type}: 'target' needs a location and a machine`, {
        details: { field: 'target' },
      });
    }
    await this.#o.dataPlane.stopReplication({ itemId });
    if (target.location === 'original' && this.#o.dataPlane.replicaStore(itemId) === undefined) {
      await this.#seed(itemId, target.machine, p.disks);
    }
    return this.#o.dataPlane.prepareReplica({ ...p, replicaExists: true, resync: true });
  }

  /** Creates the item's replica store with base images copied from `machine`'s disks (sparse). */
  async #seed(itemId: string, machine: string, disks: { id: string; sizeBytes: number }[]): Promise<void> {
    const fabric = this.#fabric;
    if (!readsDisks(fabric)) {
      throw new OsrError('OPERATION_UNAVAILABLE', 'this fabric does not expose disks for a reverse replica');
    }
    const dir = join(this.#o.dataPlane.replicaDir(itemId), 'store');
    if (existsSync(join(dir, 'state.osr'))) return;
    const store = await ReplicaStore.open(dir, { disks, processorIdleMs: 50 });
    await store.close();
    for (const d of disks) {
      const from = fabric.diskBackend(machine, d.id);
      const file = join(dir, 'disks', `${encodeURIComponent(d.id)}.img`);
      await rm(`${file}.osrmap`, { force: true });
      const fh = await open(file, 'r+');
      try {
        const chunk = 1024 * 1024;
        for (let at = 0; at < d.sizeBytes; at += chunk) {
          const n = Math.min(chunk, d.sizeBytes - at);
          const buf = await from.read(at, n);
          if (buf.some((b) => b !== 0)) await fh.write(buf, 0, n, at);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    this.#o.log?.info({ itemId, machine }, 'reverse replica seeded from the original machine');
  }

  /**
   * `replication.reverse`: this site's failed-over machine becomes the item's source, replicating to the primary
   * site's agent — the original location by comparing block hashes (`delta`), an alternate one by a full copy.
   */
  async reverse(payload: unknown): Promise<{ mode: 'delta' | 'full' }> {
    const type = 'replication.reverse';
    const o = fields(payload, type);
    itemIdOf(o, type);
    const target = fields(o['target'], `${type} target`);
    const location = target['location'];
    if (location !== 'original' && location !== 'alternate') {
      throw new OsrError('VALIDATION_FAILED', `${type}: 'target.location' must be original or alternate`, {
        details: { field: 'target.location' },
      });
    }
    const mode = location === 'original' ? 'delta' : 'full';
    const p = payload as ReplicationStartPayload;
    await this.#o.dataPlane.startReplication({
      ...p,
      policy: { ...fields(o['policy'] ?? {}, `${type} policy`), initialReplication: { mode: 'now' } },
      copy: mode,
    });
    return { mode };
  }

  /** `replica.delete`: the item's exposures go first (they read the replica), then the replica. */
  async deleteReplica(payload: unknown): Promise<unknown> {
    const type = 'replica.delete';
    const itemId = itemIdOf(fields(payload, type), type);
    return this.#locked(itemId, async () => {
      for (const purpose of PURPOSES) {
        const e = this.#exposures.get(`${itemId}/${purpose}`);
        if (e !== undefined) await this.#drop(e);
      }
      await rm(join(this.#o.dataDir, 'exposures', itemId), { recursive: true, force: true });
      return this.#o.dataPlane.deleteReplica({ itemId });
    });
  }

  /** The command handlers of the lifecycle (merged into the agent's). */
  handlers(): Record<string, CommandHandler> {
    return {
      'replica.point': (p) => this.point(p),
      'replica.expose': (p) => this.expose(p),
      'replica.swapPoint': (p) => this.swapPoint(p),
      'replica.commit': (p) => this.commit(p),
      'replica.release': (p) => this.release(p),
      'replica.snapshot': (p) => this.snapshot(p),
      'replica.revert': (p) => this.revert(p),
      'replication.drain': (p) => this.drain(p),
      'replication.reverse': (p) => this.reverse(p),
      'replica.prepare': (p) => this.prepare(p),
      'replica.delete': (p) => this.deleteReplica(p),
    };
  }

  /** Stops serving; overlays are flushed and closed (they stay for the next start). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const e of this.#exposures.values()) {
      await e.server.close().catch(() => undefined);
      for (const ov of e.overlays.values()) await ov.close().catch(() => undefined);
    }
    this.#exposures.clear();
  }
}

/** The NBD export name of an exposed disk. */
export function exportName(itemId: string, purpose: ExposurePurpose, diskId: string): string {
  return `${purpose}-${itemId}-${diskId}`;
}

/** The payload's disks, each one the replica holds (NOT_FOUND otherwise), with the replica's size. */
function disksOf(
  o: Record<string, unknown>,
  store: ReplicaStore,
  itemId: string,
): { id: string; sizeBytes: number }[] {
  const list = o['disks'];
  if (!Array.isArray(list) || list.length === 0) {
    throw new OsrError('VALIDATION_FAILED', "replica.expose: 'disks' must be a non-empty array", {
      details: { field: 'disks' },
    });
  }
  return list.map((w: unknown, i) => {
    const id = typeof w === 'object' && w !== null ? (w as Record<string, unknown>)['id'] : undefined;
    if (typeof id !== 'string' || id === '') {
      throw new OsrError('VALIDATION_FAILED', `replica.expose: disks[${i}] needs an id`, {
        details: { field: `disks[${i}]` },
      });
    }
    let size: number;
    try {
      size = store.openBase(id).size;
    } catch (err) {
      throw new OsrError('NOT_FOUND', `the replica of item '${itemId}' has no disk ${JSON.stringify(id)}`, {
        details: { itemId, disk: id },
        cause: err,
      });
    }
    return { id, sizeBytes: size };
  });
}

function snapshotName(o: Record<string, unknown>, type: string): string {
  const v = o['snapshot'];
  if (typeof v !== 'string' || !/^[A-Za-z0-9._-]{1,100}$/.test(v)) {
    throw new OsrError('VALIDATION_FAILED', `${type}: 'snapshot' must be a name`, {
      details: { field: 'snapshot' },
    });
  }
  return v;
}
