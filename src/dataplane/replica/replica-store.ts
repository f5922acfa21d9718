import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Change, DiskSpec, MarkerType, WriteChange, ZeroChange } from '../changes.js';
import type { BlockBackend, Extent, WriteOptions, ZeroOptions } from '../nbd/backend.js';
import { GranuleState } from '../nbd/allocation-map.js';
import { NbdError } from '../nbd/errors.js';
import { FileBackend } from '../nbd/file-backend.js';
import { NbdErrno } from '../nbd/protocol.js';
import { hashBlocks } from '../resync/block-hash.js';
import type { ChangeSink } from '../transport/sink.js';
import { ReplicaError } from './errors.js';
import { Mutex } from './fs-util.js';
import { Overlay, type OverlayOptions } from './overlay.js';
import { PendingLog } from './pending-log.js';
import {
  readState,
  writeState,
  writeStateAsync,
  type CommitIntent,
  type ReplicaState,
} from './state-file.js';
import { UndoLog, type RecoveryPointInfo, type UndoInput } from './undo-log.js';
import { ReplicaView } from './view.js';

export type { RecoveryPointInfo } from './undo-log.js';

/** Options of `ReplicaStore.open`. */
export interface ReplicaStoreOptions {
  /** The disks of the replication group; fixed when the store is created, checked on every later open. */
  readonly disks: readonly DiskSpec[];
  /** Wall clock in ms (status ages, time of "Latest" points when nothing was received). Default `Date.now`. */
  readonly clock?: () => number;
  /** At most this many changes per apply batch (one undo fsync, one base fsync, one state write). Default 4096. */
  readonly batchChanges?: number;
  /** Apply batches stop after about this many record bytes. Default 16 MiB. */
  readonly batchBytes?: number;
  /** Pending-log segment size at which a new segment starts. Default 64 MiB. */
  readonly pendingSegmentBytes?: number;
  /** Undo-log segment size at which a new segment starts. Default 64 MiB. */
  readonly undoSegmentBytes?: number;
  /** Old bytes of one change are saved in records of at most this size. Default 1 MiB. */
  readonly undoChunkBytes?: number;
  /**
   * Write batches straight into the base while the replica has no recovery point yet and nothing is pending
   * (initial replication: there is nothing to undo to). Default true.
   */
  readonly directApply?: boolean;
  /** Idle wait of the background processor between checks when nothing is pending. Default 200 ms. */
  readonly processorIdleMs?: number;
  /** Status health: Warning when the newest point is older than this (ms). Default 15 min. */
  readonly rpoWarningMs?: number;
  /** Status health: Critical when the newest point is older than this (ms). Default 30 min. */
  readonly rpoCriticalMs?: number;
}

/** Options of `process`. */
export interface ProcessOptions {
  /** Stop after this seq (default: everything received). */
  readonly uptoSeq?: number;
  /** Stops between batches. */
  readonly signal?: AbortSignal;
}

/** Replica health hint for the control plane (its `domain` decides the item's final health). */
export type ReplicaHealth = 'Normal' | 'Warning' | 'Critical';

/** Recovery-side replication status (issue 4 item 7). */
export interface ReplicaStatus {
  readonly lastReceivedSeq: number;
  readonly lastProcessedSeq: number;
  /** Changes received and not yet applied, and the bytes they carry or cover. */
  readonly pendingChanges: number;
  readonly pendingBytes: number;
  /** Bytes of undo log on disk (the cost of the retained history). */
  readonly undoBytes: number;
  /** Number of processed recovery points. */
  readonly points: number;
  readonly newestPoint?: RecoveryPointInfo;
  readonly newestAppConsistentPoint?: RecoveryPointInfo;
  /** Age of the newest point in ms (RPO), when there is one. */
  readonly newestPointAgeMs?: number;
  /** Source time of the last applied change (ms), when there is one. */
  readonly lastProcessedTime?: number;
  readonly processorRunning: boolean;
  /** Batches written straight into the base before the first point (initial replication, `directApply`). */
  readonly directBatches: number;
  /** Inside a resync (between a processed `begin` and its `end`): no point can be cut. */
  readonly resyncing: boolean;
  /** Set once a failover was committed on this store. */
  readonly committed?: { readonly pointId: string; readonly time: number };
  readonly health: ReplicaHealth;
  readonly healthReason: string;
}

interface DiskState {
  readonly spec: DiskSpec;
  readonly base: FileBackend;
}

const STATE_FILE = 'state.osr';

/** Options of `ReplicaStore.commit`. */
export interface CommitOptions {
  /**
   * Called once the overlays' bytes are in the base up to a small remainder: resolves when nothing writes to
   * the overlays any more (the caller holds new requests until the commit returns or fails).
   */
  readonly quiesce?: () => Promise<void>;
}

/** Rounds of copying what the running machine wrote during the previous round, before it is held. */
const COMMIT_CATCH_UP_PASSES = 4;
/** A round that copied less than this is close enough: hold the machine and copy the rest. */
const COMMIT_CATCH_UP_ENOUGH = 8 * 1024 * 1024;

/**
 * The replica of one replication group at the recovery site (DESIGN §2.3–2.5): received changes land in a
 * durable pending log; a processor applies them in seq order to the base images, saving every overwritten byte to
 * the undo log first, so the base is always at "latest processed" and any retained recovery point is the base
 * with newer undo records rolled back. Views (read-only) and overlays (writable, sparse) at a point are served
 * while replication continues; commit flattens an overlay and its view into the base.
 *
 * Crash safety: every apply batch is (1) undo records fdatasynced, (2) base written and fdatasynced, (3) the
 * state file (applied seq) replaced atomically. After a kill -9 anywhere, `open` redoes changes past the applied
 * seq, reusing undo records that already reached the log (they hold the bytes from before the first attempt), so
 * nothing is applied twice in effect and no old byte is lost.
 */
export class ReplicaStore implements ChangeSink {
  /** The store's folder. */
  readonly dir: string;
  private readonly clock: () => number;
  private readonly opts: Required<Omit<ReplicaStoreOptions, 'clock' | 'disks'>>;
  private readonly disks = new Map<string, DiskState>();
  private readonly pending: PendingLog;
  private readonly undo: UndoLog;
  private state: ReplicaState;
  /** Seq of the last change whose base write completed (ahead of `state.appliedSeq` during a batch). */
  private appliedInMemory: number;
  private lastAppliedTime: number | undefined;
  private readonly processLock = new Mutex();
  private readonly receiveLock = new Mutex();
  private readonly viewUsers = new Map<string, number>();
  private readonly openViews = new Set<ReplicaView>();
  private processor: { stop: AbortController; done: Promise<void>; wake: () => void } | undefined;
  private processorError: Error | undefined;
  private closed = false;
  private directBatches = 0;
  /** Highest seq written straight into the base (direct apply); ahead of `state.appliedSeq` until committed. */
  private stagedSeq: number;
  /** The resync bracket as of `stagedSeq`. */
  private stagedResyncSeq: number | undefined;
  /** Bases written by staged batches since the last commit took its snapshot. */
  private readonly stagedBases = new Set<FileBackend>();
  private readonly commitWaiters: Array<{ seq: number; resolve: () => void; reject: (e: Error) => void }> =
    [];
  private committing: Promise<void> | null = null;
  /** A failed flush or state write of staged batches: the store takes nothing more (reopen it). */
  private commitFailure: Error | undefined;

  private constructor(
    dir: string,
    options: ReplicaStoreOptions,
    state: ReplicaState,
    disks: DiskState[],
    pending: PendingLog,
    undo: UndoLog,
  ) {
    this.dir = dir;
    this.clock = options.clock ?? Date.now;
    this.opts = {
      batchChanges: options.batchChanges ?? 4096,
      batchBytes: options.batchBytes ?? 16 * 1024 * 1024,
      pendingSegmentBytes: options.pendingSegmentBytes ?? 64 * 1024 * 1024,
      undoSegmentBytes: options.undoSegmentBytes ?? 64 * 1024 * 1024,
      undoChunkBytes: options.undoChunkBytes ?? 1024 * 1024,
      directApply: options.directApply ?? true,
      processorIdleMs: options.processorIdleMs ?? 200,
      rpoWarningMs: options.rpoWarningMs ?? 15 * 60_000,
      rpoCriticalMs: options.rpoCriticalMs ?? 30 * 60_000,
    };
    this.state = state;
    this.appliedInMemory = state.appliedSeq;
    this.stagedSeq = state.appliedSeq;
    this.stagedResyncSeq = state.resyncSeq;
    for (const d of disks) this.disks.set(d.spec.id, d);
    this.pending = pending;
    this.undo = undo;
  }

  /**
   * Opens the store in `dir`, creating it (sparse base images of the given sizes) when empty. Reopening checks the
   * disks match, truncates torn tails of the logs, and finishes an interrupted commit. Damaged files are refused
   * with `REPLICA_CORRUPT`.
   */
  static async open(dir: string, options: ReplicaStoreOptions): Promise<ReplicaStore> {
    fs.mkdirSync(path.join(dir, 'disks'), { recursive: true });
    const stateFile = path.join(dir, STATE_FILE);
    let state = readState(stateFile);
    if (!state) {
      validateDisks(options.disks);
      for (const d of options.disks) {
        const fd = fs.openSync(diskFile(dir, d.id), 'w');
        try {
          fs.ftruncateSync(fd, d.sizeBytes);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
      state = {
        disks: options.disks.map((d) => ({ id: d.id, sizeBytes: d.sizeBytes })),
        appliedSeq: 0,
        undoEnd: [0, 0],
        floorSeq: 0,
      };
      // Created last: a folder without a state file is an unfinished creation and is created again.
      writeState(stateFile, state);
    } else {
      checkDisks(state.disks, options.disks);
    }
    const opened: DiskState[] = [];
    let pending: PendingLog | undefined;
    let undo: UndoLog | undefined;
    try {
      for (const spec of state.disks) {
        // Big base writes (a whole batch's blocks) go to the thread pool: the event loop meanwhile decrypts and
        // checks the next frames.
        opened.push({
          spec,
          base: await FileBackend.open(diskFile(dir, spec.id), { syncWriteMaxBytes: 64 * 1024 }),
        });
      }
      pending = PendingLog.open(
        path.join(dir, 'pending'),
        state.appliedSeq,
        options.pendingSegmentBytes ?? 64 * 1024 * 1024,
      );
      undo = UndoLog.open(path.join(dir, 'undo'), {
        diskIds: state.disks.map((d) => d.id),
        undoEnd: state.undoEnd,
        floorSeq: state.floorSeq,
        appliedSeq: state.appliedSeq,
        segmentBytes: options.undoSegmentBytes ?? 64 * 1024 * 1024,
      });
    } catch (err) {
      pending?.close();
      undo?.close();
      for (const d of opened) await d.base.close();
      throw err;
    }
    const store = new ReplicaStore(dir, options, state, opened, pending, undo);
    if (state.commitIntent) await store.finishCommit(state.commitIntent, []);
    return store;
  }

  /** Highest seq durably received: the transport resumes the stream after it. */
  lastReceivedSeq(): number {
    return this.pending.lastReceivedSeq();
  }

  /** Highest seq applied to the base. */
  lastProcessedSeq(): number {
    return this.appliedInMemory;
  }

  /**
   * Makes `changes` durable as pending and resolves once they are on stable storage (the transport acknowledges
   * only then). Changes with seq <= `lastReceivedSeq()` are ignored (a resend after a reconnect); the rest must
   * continue the stream without a gap (`SEQUENCE_GAP`) — save a jump forward to a `resync begin` (a re-based
   * stream) — and name known disks and ranges (`INVALID_CHANGE`).
   * Nothing of a refused batch is kept.
   */
  async receive(changes: readonly Change[]): Promise<void> {
    const { durable } = await this.stage(changes);
    await durable;
  }

  /**
   * `receive` in two steps (the pipelined `ChangeSink.stage`): resolves once the changes are taken, with
   * `durable`, which resolves once they are on stable storage. Before the first point a batch is written straight
   * into the base (`directApply`) and many such batches share one base flush and one state write (group commit),
   * made while the next batches are already being taken; otherwise a batch is appended to the pending log and is
   * durable when this resolves.
   */
  stage(changes: readonly Change[]): Promise<{ readonly durable: Promise<void> }> {
    return this.receiveLock.run(async () => {
      this.assertOpen();
      if (this.state.committed)
        throw new ReplicaError('COMMITTED', 'the replica was committed; it no longer receives');
      if (this.commitFailure) throw this.commitFailure;
      let expect = this.receivedSeq() + 1;
      const fresh: Change[] = [];
      for (const c of changes) {
        if (c.seq < expect && fresh.length === 0) continue;
        // A re-based stream (the source lost the resume position) restarts above it with a resync begin: the
        // only gap accepted. Points before it stay valid; none is cut until the resync's end.
        if (c.seq > expect && c.kind === 'resync' && c.phase === 'begin') expect = c.seq;
        if (c.seq !== expect) {
          throw new ReplicaError('SEQUENCE_GAP', `expected seq ${expect}, got ${c.seq}`);
        }
        this.validate(c);
        fresh.push(c);
        expect++;
      }
      if (fresh.length === 0) return { durable: Promise.resolve() };
      if (this.opts.directApply && (await this.stageDirect(fresh))) {
        return { durable: this.commitStaged(fresh[fresh.length - 1]!.seq) };
      }
      // Whatever goes through the pending log comes after staged batches are durable: the processor's state
      // writes must never claim a staged batch whose base bytes were not flushed.
      await this.settleStaged();
      await this.pending.append(fresh);
      this.processor?.wake();
      return { durable: Promise.resolve() };
    });
  }

  /** Highest seq taken, durable or staged. */
  private receivedSeq(): number {
    return Math.max(this.pending.lastReceivedSeq(), this.stagedSeq);
  }

  /**
   * Before the first recovery point (initial replication) nothing can ever be rolled back to, so a batch that
   * finds nothing pending is written straight into the base: no pending record, no undo record; a group commit
   * (`commitStaged`) then flushes the base and writes the state for every batch staged so far, and only that
   * makes them durable (acknowledged). Markers go the usual way and end this for good: from the first point on
   * every change is undoable. A crash before the commit replays the batches from the sender (the state still
   * names the older seq): writes replayed in order over a base holding some of them end in the same bytes.
   * Returns false, touching nothing, when the batch must go through the pending log.
   */
  private stageDirect(changes: readonly Change[]): Promise<boolean> {
    if (changes.some((c) => c.kind === 'marker')) return Promise.resolve(false);
    // Once a change went through the pending log it never goes direct again: say so without waiting for the
    // processing lock, which a processor run holds for as long as it applies (the batch's ack would wait too).
    if (
      this.state.committed ||
      this.undo.points().length > 0 ||
      this.undo.lastChangeSeq() > 0 ||
      this.pending.pending().length > 0
    ) {
      return Promise.resolve(false);
    }
    return this.processLock.run(async () => {
      this.assertOpen();
      if (
        this.state.committed ||
        this.undo.points().length > 0 ||
        this.undo.lastChangeSeq() > 0 ||
        this.appliedInMemory !== this.receivedSeq() ||
        this.pending.pending().length > 0
      ) {
        return false;
      }
      let resyncSeq = this.stagedSeq > this.state.appliedSeq ? this.stagedResyncSeq : this.state.resyncSeq;
      const touched = new Set<FileBackend>();
      let lastTime: number | undefined;
      for (const c of changes) {
        if (c.kind === 'resync') {
          resyncSeq = c.phase === 'begin' ? c.seq : undefined;
          continue;
        }
        if (c.kind === 'marker') continue;
        const disk = this.disks.get(c.diskId)!;
        if (c.kind === 'write') {
          if (c.data.length > 0) await disk.base.write(c.offset, c.data);
        } else if (c.length > 0) {
          await disk.base.writeZeroes(c.offset, c.length);
        }
        touched.add(disk.base);
        lastTime = c.time;
      }
      const last = changes[changes.length - 1]!.seq;
      // Together, after the writes: a commit snapshots the seq and the bases to flush at one moment.
      this.stagedSeq = last;
      this.stagedResyncSeq = resyncSeq;
      for (const b of touched) this.stagedBases.add(b);
      this.appliedInMemory = last;
      if (lastTime !== undefined) this.lastAppliedTime = lastTime;
      this.undo.applied(last);
      this.directBatches++;
      return true;
    });
  }

  /** Resolves once a commit covering staged seq `seq` is durable; one commit runs at a time and covers all. */
  private commitStaged(seq: number): Promise<void> {
    if (this.commitFailure) return Promise.reject(this.commitFailure);
    const done = new Promise<void>((resolve, reject) => this.commitWaiters.push({ seq, resolve, reject }));
    this.committing ??= this.runCommits().finally(() => {
      this.committing = null;
    });
    return done;
  }

  /**
   * Group commits, one after another, pipelined: a commit flushes the bases of the batches staged since the one
   * before (while that one's state is still being written), then writes the state naming its last seq — after
   * the previous state write, so the state file only ever moves forward — and resolves the waiters it covers.
   * The state write is not under the processing lock, which staging needs meanwhile: nothing else writes the
   * state while commits run (whatever does first waits for them, `settleStaged`), and what staging reads of the
   * state is consistent before and after a commit's assignment.
   */
  private async runCommits(): Promise<void> {
    let writing: Promise<void> | null = null;
    let covered = -1;
    try {
      while (this.commitWaiters.length > 0) {
        const upto = this.stagedSeq;
        if (upto <= covered) {
          // Every waiter is covered by the state write under way.
          await writing;
          writing = null;
          continue;
        }
        const resyncSeq = this.stagedResyncSeq;
        const bases = [...this.stagedBases];
        this.stagedBases.clear();
        // The bases first: the state may say a batch is applied only once its bytes are on stable storage.
        for (const b of bases) await b.flush();
        await writing;
        const { resyncSeq: _old, ...rest } = this.state;
        const next: ReplicaState = {
          ...rest,
          ...(resyncSeq === undefined ? {} : { resyncSeq }),
          appliedSeq: upto,
          undoEnd: this.undo.end(),
        };
        covered = upto;
        writing = writeStateAsync(path.join(this.dir, STATE_FILE), next).then(() => {
          this.state = next;
          this.pending.skipTo(upto);
          let n = 0;
          while (n < this.commitWaiters.length && this.commitWaiters[n]!.seq <= upto) n++;
          for (const w of this.commitWaiters.splice(0, n)) w.resolve();
        });
        // Awaited before the next write or the end; a failure meanwhile must not go unhandled.
        writing.catch(() => undefined);
      }
      await writing;
    } catch (err) {
      this.commitFailure = err instanceof Error ? err : new Error(String(err));
      for (const w of this.commitWaiters.splice(0)) w.reject(this.commitFailure);
    }
  }

  /** Resolves once every staged batch is durable; rejects with the failure when a commit failed. */
  private async settleStaged(): Promise<void> {
    while (this.committing) await this.committing;
    if (this.commitFailure) throw this.commitFailure;
  }

  /**
   * Applies pending changes to the base images in seq order, in batches, and resolves with the last processed seq.
   * Each batch saves the bytes it overwrites to the undo log durably first; markers become recovery points.
   */
  process(options: ProcessOptions = {}): Promise<number> {
    return this.processLock.run(async () => {
      this.assertOpen();
      if (this.state.committed) return this.appliedInMemory;
      for (;;) {
        if (options.signal?.aborted) break;
        const limit = Math.min(options.uptoSeq ?? Number.MAX_SAFE_INTEGER, this.pending.lastReceivedSeq());
        if (this.appliedInMemory >= limit) break;
        const batch = await this.pending.read(limit, this.opts.batchChanges, this.opts.batchBytes);
        if (batch.length === 0) break;
        await this.applyBatch(batch);
      }
      return this.appliedInMemory;
    });
  }

  /**
   * SHA-256 of each block `[offset, offset + blockSize)` of `diskId` (clipped to the disk) as of every change
   * received so far: the `ChangeSink` side of resync and failback delta.
   *
   * It processes everything pending and hashes the base under the processing lock, so the base is then exactly
   * "every received change applied". That — not a view at the newest point — is what resync compares: the source
   * waits for the ack of every change journaled before it asks, and any change after the newest marker must be
   * counted as present, or its blocks would be resent (or worse, judged equal against an older image). The
   * receiver calls this between batches, so nothing is received while it runs.
   */
  async blockHashes(diskId: string, blockSize: number, offsets: readonly number[]): Promise<Buffer[]> {
    const disk = this.getDisk(diskId);
    for (;;) {
      await this.process();
      const hashes = await this.processLock.run(async () => {
        this.assertOpen();
        if (!this.state.committed && this.appliedInMemory < this.pending.lastReceivedSeq()) return undefined;
        return hashBlocks(disk.base, blockSize, offsets);
      });
      if (hashes) return hashes;
    }
  }

  /** Starts applying in the background as changes arrive (until `stopProcessor` or `close`). */
  startProcessor(): void {
    this.assertOpen();
    if (this.processor) return;
    const stop = new AbortController();
    let wake: () => void = () => undefined;
    const loop = async (): Promise<void> => {
      while (!stop.signal.aborted) {
        const before = this.appliedInMemory;
        await this.process({ signal: stop.signal });
        if (stop.signal.aborted) break;
        if (this.appliedInMemory === before && this.pending.lastReceivedSeq() <= this.appliedInMemory) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              clearTimeout(timer);
              stop.signal.removeEventListener('abort', done);
              resolve();
            };
            const timer = setTimeout(done, this.opts.processorIdleMs);
            wake = done;
            stop.signal.addEventListener('abort', done, { once: true });
          });
        }
      }
    };
    const done = loop().catch((err: unknown) => {
      // Kept for `status()` and rethrown by `stopProcessor()`: the processor never fails silently.
      this.processorError = err instanceof Error ? err : new Error(String(err));
    });
    this.processor = { stop, done, wake: () => wake() };
  }

  /** Stops the background processor after its current batch; rethrows the error it stopped on, if any. */
  async stopProcessor(): Promise<void> {
    const p = this.processor;
    if (!p) return;
    p.stop.abort();
    p.wake();
    await p.done;
    this.processor = undefined;
    const err = this.processorError;
    this.processorError = undefined;
    if (err !== undefined) throw err;
  }

  /** Processed recovery points (oldest first), then markers received but not yet processed (`pending: true`). */
  points(): RecoveryPointInfo[] {
    const done = [...this.undo.points()];
    for (const e of this.pending.pending()) {
      if (e.kind === 'marker' && e.seq > this.appliedInMemory) {
        done.push({ id: e.pointId!, seq: e.seq, time: e.time, type: e.markerType!, pending: true });
      }
    }
    return done;
  }

  /** The newest processed point ("Latest processed", R-FO-2), optionally of one type; no waiting. */
  latestProcessed(type?: MarkerType): RecoveryPointInfo | undefined {
    const list = this.undo.points();
    for (let i = list.length - 1; i >= 0; i--) {
      const p = list[i]!;
      if (type === undefined || p.type === type) return p;
    }
    return undefined;
  }

  /**
   * "Latest" (R-FO-2): processes everything received so far, then cuts a point holding every received change.
   * When the newest point already holds exactly that (and has the asked type) it is returned instead.
   */
  async cutLatest(type: MarkerType = 'crash-consistent'): Promise<RecoveryPointInfo> {
    await this.settleStaged();
    const upto = this.lastReceivedSeq();
    await this.process({ uptoSeq: upto });
    return this.processLock.run(async () => {
      this.assertOpen();
      if (this.state.committed)
        throw new ReplicaError('COMMITTED', 'the replica was committed; it keeps no points');
      if (this.state.resyncSeq !== undefined) {
        throw new ReplicaError(
          'RESYNC_IN_PROGRESS',
          `a resync began at seq ${this.state.resyncSeq} and has not ended: the replica is not consistent now; ` +
            'use a point from before it (latest processed)',
        );
      }
      const seq = this.appliedInMemory + 1;
      const newest = this.undo.points().at(-1);
      // Nothing but markers since the newest point: it already holds every received change.
      if (newest && newest.type === type && this.undo.lastChangeSeq() < newest.seq) {
        return newest;
      }
      const pointId = `latest-${randomUUID()}`;
      await this.undo.append([
        { kind: 'point', seq, time: this.lastAppliedTime ?? this.clock(), pointId, markerType: type },
      ]);
      this.undo.applied(this.appliedInMemory);
      this.saveState({});
      return this.undo.points().at(-1)!;
    });
  }

  /**
   * Drops points older than `retentionMs` before `now` (R-POL-2) and the undo records only they needed. The
   * newest point is always kept, and so is every point a view or overlay is open on (and every newer one).
   */
  async prune(now: Date, retentionMs: number): Promise<void> {
    await this.settleStaged();
    return this.processLock.run(() => {
      this.assertOpen();
      const cutoff = now.getTime() - retentionMs;
      const list = this.undo.points();
      let floor: number;
      if (list.length === 0) {
        floor = this.appliedInMemory + 1;
      } else {
        let i = 0;
        while (i < list.length - 1 && list[i]!.time < cutoff && !this.viewUsers.has(list[i]!.id)) i++;
        floor = list[i]!.seq;
      }
      if (floor > this.state.floorSeq) {
        // Durable first: after a crash the files left behind are skipped, never half-trusted.
        this.saveState({ floorSeq: floor });
        this.undo.prune(floor);
      }
      return Promise.resolve();
    });
  }

  /** Opens a read-only view of `diskId` at a processed point (served while replication continues). */
  openView(diskId: string, pointId: string): Promise<ReplicaView> {
    try {
      return Promise.resolve(this.makeView(diskId, pointId));
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private makeView(diskId: string, pointId: string): ReplicaView {
    this.assertOpen();
    const disk = this.getDisk(diskId);
    const point = this.undo.points().find((p) => p.id === pointId);
    if (!point) {
      const pend = this.points().some((p) => p.id === pointId);
      throw new ReplicaError(
        'POINT_NOT_FOUND',
        pend ? `point ${pointId} is not processed yet` : `no point ${pointId}`,
      );
    }
    const index = this.undo.indexes.get(diskId)!;
    const view: ReplicaView = new ReplicaView(
      {
        size: disk.spec.sizeBytes,
        index,
        readBase: (offset, length, into) => disk.base.read(offset, length, into),
        readBaseSync: (offset, length, into) => disk.base.readSync(offset, length, into),
        release: () => {
          this.openViews.delete(view);
          const n = (this.viewUsers.get(pointId) ?? 1) - 1;
          if (n <= 0) this.viewUsers.delete(pointId);
          else this.viewUsers.set(pointId, n);
        },
      },
      point.id,
      point.seq,
    );
    this.openViews.add(view);
    this.viewUsers.set(pointId, (this.viewUsers.get(pointId) ?? 0) + 1);
    return view;
  }

  /**
   * Opens the writable overlay in `options` on `diskId` at `pointId`, creating it when it does not exist (an
   * existing one is reopened with everything it flushed; `OVERLAY_MISMATCH` when it is of another disk/point).
   */
  async createOverlay(diskId: string, pointId: string, options: OverlayOptions): Promise<Overlay> {
    this.assertOpen();
    this.getDisk(diskId);
    return Overlay.open(this, diskId, pointId, options);
  }

  /** Reopens an existing overlay at whatever point it is on now (after a restart, following a `swapView`). */
  async openOverlay(diskId: string, options: OverlayOptions): Promise<Overlay> {
    this.assertOpen();
    this.getDisk(diskId);
    return Overlay.open(this, diskId, undefined, options);
  }

  /**
   * Commit (R-FO-8): makes the base of every disk equal to its view at the overlays' point plus the overlay's
   * writes (disks without an overlay become their view), discards pending changes, drops every recovery point
   * and all undo records, then closes and deletes the overlays. Afterwards the base is the failed-over disk
   * (`openBase`), and the store refuses `receive`. Stops the processor first. Refused with `IN_USE` while any
   * view other than the overlays' own is open. Crash-safe: an interrupted commit is finished by `open`.
   *
   * The machine may keep writing to the overlays while they are copied: the overlays remember what was written
   * meanwhile and it is copied again (`COMMIT_CATCH_UP_PASSES` rounds while the machine runs). Then `quiesce`
   * is awaited — the caller holds new requests and lets those in flight finish — and the last changes are copied
   * with nothing moving. Without `quiesce` the caller guarantees that nothing writes to the overlays.
   */
  async commit(overlays: readonly Overlay[], options: CommitOptions = {}): Promise<void> {
    this.assertOpen();
    if (overlays.length === 0) throw new ReplicaError('INVALID_CHANGE', 'commit needs at least one overlay');
    const pointId = overlays[0]!.pointId;
    const seen = new Set<string>();
    for (const o of overlays) {
      if (o.pointId !== pointId)
        throw new ReplicaError('INVALID_CHANGE', 'overlays of a commit must share one point');
      if (seen.has(o.diskId)) throw new ReplicaError('INVALID_CHANGE', `two overlays for disk ${o.diskId}`);
      seen.add(o.diskId);
    }
    await this.stopProcessor();
    await this.settleStaged();
    // Both locks: no batch is being received into the pending log that commit discards.
    await this.receiveLock.run(() => this.commitLocked(overlays, pointId, options));
    for (const o of overlays) await o.destroy();
  }

  private commitLocked(overlays: readonly Overlay[], pointId: string, options: CommitOptions): Promise<void> {
    return this.processLock.run(async () => {
      this.assertOpen();
      if (this.state.committed) throw new ReplicaError('COMMITTED', 'already committed');
      if (this.openViews.size > overlays.length) {
        throw new ReplicaError(
          'IN_USE',
          `${this.openViews.size - overlays.length} other view(s) or overlay(s) are open`,
        );
      }
      const point = this.undo.points().find((p) => p.id === pointId);
      if (!point) throw new ReplicaError('POINT_NOT_FOUND', `no point ${pointId}`);
      const intent: CommitIntent = {
        pointId,
        pointSeq: point.seq,
        overlays: overlays.map((o) => ({ diskId: o.diskId, dir: o.options.dir, name: o.options.name })),
      };
      for (const o of overlays) {
        o.trackChanges();
        await o.flush();
      }
      // Durable before the base changes: from here on, open() finishes the commit if we die.
      this.saveState({ commitIntent: intent });
      await this.flatten(intent, overlays);
      if (options.quiesce) {
        for (let pass = 0; pass < COMMIT_CATCH_UP_PASSES; pass++) {
          if ((await this.copyOverlayChanges(overlays)) < COMMIT_CATCH_UP_ENOUGH) break;
        }
        await options.quiesce();
        for (const o of overlays) await o.flush();
        await this.copyOverlayChanges(overlays);
        for (const d of this.disks.values()) await d.base.flush();
      }
      this.finalizeCommit(intent);
    });
  }

  /**
   * The base image of a disk as a backend: read-only while the store replicates (it is "latest processed"),
   * writable after a commit (it is then the failed-over disk). `close()` of the returned backend only flushes;
   * the store owns the file.
   */
  openBase(diskId: string): BlockBackend {
    this.assertOpen();
    return new BaseDisk(this.getDisk(diskId).base, !this.state.committed);
  }

  /** Status for the control plane (issue 4 item 7). */
  status(): ReplicaStatus {
    const points = this.undo.points();
    const newest = points.at(-1);
    const app = this.latestProcessed('app-consistent');
    const now = this.clock();
    const age = newest ? Math.max(0, now - newest.time) : undefined;
    let health: ReplicaHealth = 'Normal';
    let reason = 'Replicating; recovery points are current.';
    if (this.processorError !== undefined) {
      health = 'Critical';
      reason = `The processor stopped: ${this.processorError.message}`;
    } else if (this.commitFailure !== undefined) {
      health = 'Critical';
      reason = `Received changes could not be made durable: ${this.commitFailure.message}`;
    } else if (this.state.committed) {
      reason = 'Failover committed; this replica no longer replicates.';
    } else if (this.state.resyncSeq !== undefined) {
      health = 'Warning';
      reason = `Resync in progress since seq ${this.state.resyncSeq}; no new recovery point until it completes.`;
    } else if (!newest) {
      health = 'Warning';
      reason = 'No recovery point yet (initial replication may still be running).';
    } else if (age! >= this.opts.rpoCriticalMs) {
      health = 'Critical';
      reason = `The newest recovery point is ${Math.round(age! / 1000)} s old.`;
    } else if (age! >= this.opts.rpoWarningMs) {
      health = 'Warning';
      reason = `The newest recovery point is ${Math.round(age! / 1000)} s old.`;
    }
    const pendingChanges = this.pending.pending().filter((e) => e.seq > this.appliedInMemory).length;
    return {
      lastReceivedSeq: this.lastReceivedSeq(),
      lastProcessedSeq: this.appliedInMemory,
      pendingChanges,
      pendingBytes: this.pending.bytes(),
      undoBytes: this.undo.bytes(),
      points: points.length,
      ...(newest ? { newestPoint: newest, newestPointAgeMs: age } : {}),
      ...(app ? { newestAppConsistentPoint: app } : {}),
      ...(this.lastAppliedTime !== undefined ? { lastProcessedTime: this.lastAppliedTime } : {}),
      processorRunning: this.processor !== undefined,
      directBatches: this.directBatches,
      resyncing: this.state.resyncSeq !== undefined,
      ...(this.state.committed
        ? { committed: { pointId: this.state.committed.pointId, time: this.state.committed.time } }
        : {}),
      health,
      healthReason: reason,
    };
  }

  /** Stops the processor, closes the files. Views and overlays must be closed by their owners first. */
  async close(): Promise<void> {
    if (this.closed) return;
    let stopError: Error | undefined;
    try {
      await this.stopProcessor();
    } catch (err) {
      stopError = err instanceof Error ? err : new Error(String(err));
    }
    // A commit under way covers every staged batch: wait for it before the files close.
    while (this.committing) await this.committing;
    await this.processLock.run(async () => {
      this.closed = true;
      for (const v of [...this.openViews]) await v.close();
      this.pending.close();
      this.undo.close();
      for (const d of this.disks.values()) await d.base.close();
    });
    if (stopError !== undefined) throw stopError;
  }

  private async applyBatch(batch: readonly Change[]): Promise<void> {
    const inputs: UndoInput[] = [];
    const applied: Array<WriteChange | ZeroChange> = [];
    let resyncSeq = this.state.resyncSeq;
    for (const c of batch) {
      if (c.kind === 'resync') {
        resyncSeq = c.phase === 'begin' ? c.seq : undefined;
        continue;
      }
      if (c.kind === 'marker') {
        // Inside a resync the image is not consistent: a marker there (sources never send one) makes no point.
        if (resyncSeq === undefined && !this.undo.hasPointRecord(c.pointId)) {
          inputs.push({
            kind: 'point',
            seq: c.seq,
            time: c.time,
            pointId: c.pointId,
            markerType: c.markerType,
          });
        }
      } else if (!this.undo.hasRecordsFor(c.seq)) {
        await this.saveOldBytes(c, applied, inputs);
      }
      if (c.kind !== 'marker') applied.push(c);
    }
    await this.undo.append(inputs);
    const touched = new Set<FileBackend>();
    for (const c of applied) {
      const disk = this.disks.get(c.diskId)!;
      if (c.kind === 'write') await disk.base.write(c.offset, c.data);
      else await disk.base.writeZeroes(c.offset, c.length);
      touched.add(disk.base);
    }
    const last = batch[batch.length - 1]!;
    this.appliedInMemory = last.seq;
    if (applied.length > 0) this.lastAppliedTime = applied[applied.length - 1]!.time;
    this.undo.applied(last.seq);
    // The base must be durable before the state says it is applied: otherwise a crash could lose base bytes
    // whose pending records are about to be deleted.
    for (const b of touched) await b.flush();
    const { resyncSeq: _old, ...rest } = this.state;
    this.state = resyncSeq === undefined ? rest : { ...rest, resyncSeq };
    this.saveState({ appliedSeq: last.seq });
    this.pending.dropUpTo(last.seq);
  }

  /**
   * Saves what `c` will overwrite: the base bytes as they will be once the earlier changes of the same batch
   * (`earlier`, not yet written) are applied, in chunks; all-zero chunks become zero-old records without data.
   */
  private async saveOldBytes(
    c: WriteChange | ZeroChange,
    earlier: ReadonlyArray<WriteChange | ZeroChange>,
    out: UndoInput[],
  ): Promise<void> {
    const disk = this.disks.get(c.diskId)!;
    const length = c.kind === 'write' ? c.data.length : c.length;
    if (length === 0) return;
    const chunk = this.opts.undoChunkBytes;
    const overlapping = earlier.filter(
      (e) => e.diskId === c.diskId && e.offset < c.offset + length && e.offset + changeLength(e) > c.offset,
    );
    const start = out.length;
    for (let a = c.offset; a < c.offset + length; a += chunk) {
      const n = Math.min(chunk, c.offset + length - a);
      const touchedByBatch = overlapping.some((e) => e.offset < a + n && e.offset + changeLength(e) > a);
      let old: Buffer | undefined;
      if (touchedByBatch || !disk.base.map.isZero(a, n)) {
        old = await disk.base.read(a, n);
        for (const e of overlapping) patch(old, a, e);
        if (isAllZero(old)) old = undefined;
      }
      const prev = out[out.length - 1];
      if (!old && out.length > start && prev?.kind === 'zero' && prev.offset + prev.length === a) {
        out[out.length - 1] = { ...prev, length: prev.length + n };
      } else if (old) {
        out.push({
          kind: 'data',
          seq: c.seq,
          time: c.time,
          diskId: c.diskId,
          offset: a,
          data: old,
          last: false,
        });
      } else {
        out.push({
          kind: 'zero',
          seq: c.seq,
          time: c.time,
          diskId: c.diskId,
          offset: a,
          length: n,
          last: false,
        });
      }
    }
    const lastInput = out[out.length - 1]!;
    if (lastInput.kind !== 'point') out[out.length - 1] = { ...lastInput, last: true };
  }

  private async flatten(intent: CommitIntent, given: readonly Overlay[]): Promise<void> {
    const opened: Overlay[] = [];
    try {
      for (const disk of this.disks.values()) {
        const index = this.undo.indexes.get(disk.spec.id)!;
        // The point's bytes where they differ from the base come only from undo records, which commit never
        // changes, so redoing this after a crash writes the same bytes again.
        const view = new ReplicaView(
          {
            size: disk.spec.sizeBytes,
            index,
            readBase: (o, l, into) => disk.base.read(o, l, into),
            readBaseSync: (o, l, into) => disk.base.readSync(o, l, into),
            release: () => undefined,
          },
          intent.pointId,
          intent.pointSeq,
        );
        for (const [a, b] of index.rangesAfter(intent.pointSeq - 1)) {
          for (let pos = a; pos < b; pos += 4 * 1024 * 1024) {
            const n = Math.min(4 * 1024 * 1024, b - pos);
            await disk.base.write(pos, await view.read(pos, n));
          }
        }
      }
      for (const o of intent.overlays) {
        let overlay = given.find((g) => g.diskId === o.diskId);
        if (!overlay) {
          overlay = await Overlay.open(this.flattenHost(intent), o.diskId, undefined, {
            dir: o.dir,
            name: o.name,
          });
          opened.push(overlay);
        }
        await this.copyOverlay(overlay, 0, overlay.size);
      }
      for (const d of this.disks.values()) await d.base.flush();
    } finally {
      for (const o of opened) await o.close();
    }
  }

  /** Copies the overlay's own bytes in `[start, end)` (its data and zeroes; holes read the point) into the base. */
  private async copyOverlay(overlay: Overlay, start: number, end: number): Promise<void> {
    const base = this.getDisk(overlay.diskId).base;
    for (const run of overlay.runs(start, end - start)) {
      for (let pos = run.start; pos < run.end; pos += 4 * 1024 * 1024) {
        const n = Math.min(4 * 1024 * 1024, run.end - pos);
        if (run.state === GranuleState.DATA) await base.write(pos, await overlay.readData(pos, n));
        else if (run.state === GranuleState.ZERO) await base.writeZeroes(pos, n);
      }
    }
  }

  /** Copies what was written to the overlays since the last call; returns how many bytes that was. */
  private async copyOverlayChanges(overlays: readonly Overlay[]): Promise<number> {
    let bytes = 0;
    for (const o of overlays) {
      for (const [a, b] of o.takeChanges()) {
        await this.copyOverlay(o, a, b);
        bytes += b - a;
      }
    }
    return bytes;
  }

  /** During a commit redo at open, overlays are reopened on views built straight from the intent. */
  private flattenHost(intent: CommitIntent): { openView(diskId: string): Promise<ReplicaView> } {
    return {
      openView: (diskId: string) => {
        const disk = this.getDisk(diskId);
        return Promise.resolve(
          new ReplicaView(
            {
              size: disk.spec.sizeBytes,
              index: this.undo.indexes.get(diskId)!,
              readBase: (o, l, into) => disk.base.read(o, l, into),
              readBaseSync: (o, l, into) => disk.base.readSync(o, l, into),
              release: () => undefined,
            },
            intent.pointId,
            intent.pointSeq,
          ),
        );
      },
    };
  }

  private finalizeCommit(intent: CommitIntent): void {
    const last = Math.max(this.appliedInMemory, this.pending.lastReceivedSeq());
    this.pending.discardAll(last);
    const undoEnd = this.undo.dropAll();
    this.appliedInMemory = last;
    const { commitIntent: _drop, ...rest } = this.state;
    this.state = {
      ...rest,
      appliedSeq: last,
      undoEnd,
      floorSeq: last + 1,
      committed: { pointId: intent.pointId, pointSeq: intent.pointSeq, time: this.clock() },
    };
    writeState(path.join(this.dir, STATE_FILE), this.state);
  }

  private async finishCommit(intent: CommitIntent, given: readonly Overlay[]): Promise<void> {
    await this.flatten(intent, given);
    this.finalizeCommit(intent);
    for (const o of intent.overlays) {
      for (const suffix of ['.overlay', '.overlay-map'])
        fs.rmSync(path.join(o.dir, `${o.name}${suffix}`), { force: true });
    }
  }

  private saveState(patch: Partial<ReplicaState>): void {
    this.state = { ...this.state, ...patch, undoEnd: this.undo.end() };
    writeState(path.join(this.dir, STATE_FILE), this.state);
  }

  private validate(c: Change): void {
    if (!Number.isSafeInteger(c.time)) throw new ReplicaError('INVALID_CHANGE', `seq ${c.seq}: bad time`);
    if (c.kind === 'resync') {
      if (c.phase !== 'begin' && c.phase !== 'end')
        throw new ReplicaError('INVALID_CHANGE', `seq ${c.seq}: bad resync phase`);
      return;
    }
    if (c.kind === 'marker') {
      if (!c.pointId) throw new ReplicaError('INVALID_CHANGE', `seq ${c.seq}: marker without a point id`);
      return;
    }
    const disk = this.disks.get(c.diskId);
    if (!disk) throw new ReplicaError('INVALID_CHANGE', `seq ${c.seq}: unknown disk ${c.diskId}`);
    const len = changeLength(c);
    if (!(
      Number.isSafeInteger(c.offset) &&
      c.offset >= 0 &&
      len >= 0 &&
      c.offset + len <= disk.spec.sizeBytes
    )) {
      throw new ReplicaError(
        'INVALID_CHANGE',
        `seq ${c.seq}: range ${c.offset}+${len} is outside disk ${c.diskId}`,
      );
    }
  }

  private getDisk(diskId: string): DiskState {
    const d = this.disks.get(diskId);
    if (!d) throw new ReplicaError('DISK_NOT_FOUND', `no disk ${diskId} in this replica`);
    return d;
  }

  private assertOpen(): void {
    if (this.closed) throw new ReplicaError('CLOSED', 'the replica store is closed');
  }
}

/** A base image lent out by `openBase`: the store keeps ownership of the file. */
class BaseDisk implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  private readonly base: FileBackend;

  constructor(base: FileBackend, readOnly: boolean) {
    this.base = base;
    this.size = base.size;
    this.readOnly = readOnly;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.base.read(offset, length, into);
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    if (this.readOnly) return Promise.reject(new NbdError(NbdErrno.EPERM, 'the replica base is read-only'));
    return this.base.write(offset, data, options);
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    if (this.readOnly) return Promise.reject(new NbdError(NbdErrno.EPERM, 'the replica base is read-only'));
    return this.base.writeZeroes(offset, length, options);
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    if (this.readOnly) return Promise.reject(new NbdError(NbdErrno.EPERM, 'the replica base is read-only'));
    return this.base.trim(offset, length, options);
  }

  flush(): Promise<void> {
    return this.base.flush();
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.base.blockStatus(offset, length);
  }

  close(): Promise<void> {
    return this.base.flush();
  }
}

function changeLength(c: WriteChange | ZeroChange): number {
  return c.kind === 'write' ? c.data.length : c.length;
}

/** Applies an earlier change of the batch to `buf`, which holds the bytes at `bufOffset`. */
function patch(buf: Buffer, bufOffset: number, e: WriteChange | ZeroChange): void {
  const a = Math.max(bufOffset, e.offset);
  const b = Math.min(bufOffset + buf.length, e.offset + changeLength(e));
  if (a >= b) return;
  if (e.kind === 'write') e.data.copy(buf, a - bufOffset, a - e.offset, b - e.offset);
  else buf.fill(0, a - bufOffset, b - bufOffset);
}

const ZEROS = Buffer.alloc(64 * 1024);

function isAllZero(b: Buffer): boolean {
  for (let pos = 0; pos < b.length; pos += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - pos);
    if (!b.subarray(pos, pos + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

function diskFile(dir: string, diskId: string): string {
  return path.join(dir, 'disks', `${encodeURIComponent(diskId)}.img`);
}

function validateDisks(disks: readonly DiskSpec[]): void {
  const ids = new Set<string>();
  for (const d of disks) {
    if (!d.id || ids.has(d.id))
      throw new ReplicaError('DISKS_MISMATCH', `disk id "${d.id}" is empty or repeated`);
    if (!Number.isSafeInteger(d.sizeBytes) || d.sizeBytes <= 0) {
      throw new ReplicaError('DISKS_MISMATCH', `disk ${d.id}: bad size ${d.sizeBytes}`);
    }
    ids.add(d.id);
  }
}

function checkDisks(have: readonly DiskSpec[], want: readonly DiskSpec[]): void {
  const same =
    have.length === want.length &&
    have.every((d, i) => d.id === want[i]!.id && d.sizeBytes === want[i]!.sizeBytes);
  if (!same) {
    throw new ReplicaError(
      'DISKS_MISMATCH',
      `the replica holds disks ${JSON.stringify(have)}, not ${JSON.stringify(want)}`,
    );
  }
}
