/**
 * The agent's replication seam: the `ReplicationService` port that the handlers of
 * `replica.prepare`, `replica.delete`, `replication.start` and `replication.stop`
 * call. `LocalReplicationService` does what is honest without the data plane wired in:
 * it keeps replica folders and the desired replication state in the data folder and
 * hooks a write recorder onto the item's disks (every write already goes through the
 * disk's `ObservedBackend`). It does NOT journal, ship or apply data and reports no
 * replication status or recovery points. The agent's default is the data-plane service
 * (`replication-dataplane.ts`); this one remains for agents that must not replicate.
 */
import { mkdir, readFile, readdir, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { WriteObserver } from '../dataplane/nbd/observed-backend.js';
import { OsrError } from '../domain/errors.js';
import type { FabricDriver } from '../fabric/driver.js';

/** `replica.prepare` payload (sent to the recovery-side agent). */
export interface ReplicaPreparePayload {
  itemId: string;
  machine: { id: string; name: string };
  disks: { id: string; sizeBytes: number }[];
  policy?: unknown;
  replicaExists?: boolean;
  resync?: boolean;
  /** The source site's agent: the receiver accepts the stream only from it. */
  peer?: PeerAgent;
  /** How the source authenticates: a CA certificate naming `peer` (default) or the item's token. */
  auth?: unknown;
}

/** The other site's agent as the control plane names it in replication commands. */
export interface PeerAgent {
  agentId: string;
  siteId: string;
  dataAddress: string | null;
  /** The certificate the control plane issued it (informational: trust is the CA and the agent id). */
  certificatePem?: string | null;
}

/** `replication.start` payload (sent to the source-side agent). */
export interface ReplicationStartPayload {
  itemId: string;
  machine: { id: string; name: string };
  disks: { id: string; sizeBytes: number; datastore?: string; path?: string }[];
  peer?: PeerAgent;
  policy?: unknown;
  /** How the recovery agent authenticates: a CA certificate naming `peer` (default) or the item's token. */
  auth?: unknown;
  replicaExists?: boolean;
  resync?: boolean;
  /**
   * How a new journal first brings the replica level: `full` (default) copies every allocated block; `delta`
   * (reprotect to the original location, whose disks already hold an older copy) compares block hashes with the
   * replica and sends only the blocks that differ.
   */
  copy?: 'full' | 'delta';
}

/** One item's replication status as the agent reports it (agent protocol §5; metadata only). */
export interface ReportedItem {
  itemId: string;
  initialReplicationProgress?: number;
  lagSeconds?: number;
  lagBytes?: number;
  backlogBytes?: number;
  throughputBps?: number;
  compressionRatio?: number;
  resyncRequired?: boolean;
  health?: 'Normal' | 'Warning' | 'Critical';
  healthReason?: string | null;
  points?: { id: string; sequence: number; time: string; type: 'crash-consistent' | 'app-consistent' }[];
}

/** A status report and the hook to call once the control plane acknowledged it. */
export interface ReplicationReport {
  items: ReportedItem[];
  /** The control plane has the report: its points need not be sent again. */
  delivered(): void;
}

/** What the replication command handlers call. */
export interface ReplicationService {
  prepareReplica(p: ReplicaPreparePayload): Promise<unknown>;
  deleteReplica(p: { itemId: string }): Promise<unknown>;
  startReplication(p: ReplicationStartPayload): Promise<unknown>;
  stopReplication(p: { itemId: string }): Promise<unknown>;
  /** Re-attaches what was running when the agent stopped. */
  resume(): Promise<void>;
  /** The status to report to the control plane now (absent: the service reports nothing). */
  report?(): ReplicationReport;
  /**
   * The control plane no longer knows the item (its report was rejected with NOT_FOUND, e.g. protection was
   * disabled while this agent was away): stop shipping it, and stop reporting a replica of it (kept on disk).
   */
  forget?(itemId: string): Promise<void>;
  close(): Promise<void>;
}

/** Counts the mutations of one disk (the placeholder observer until the journal is wired). */
export class RecordingObserver implements WriteObserver {
  writes = 0;
  bytes = 0;
  zeroes = 0;
  trims = 0;
  flushes = 0;

  onWrite(e: { data: Buffer }): Promise<void> {
    this.writes++;
    this.bytes += e.data.length;
    return Promise.resolve();
  }
  onZero(): Promise<void> {
    this.zeroes++;
    return Promise.resolve();
  }
  onTrim(): Promise<void> {
    this.trims++;
    return Promise.resolve();
  }
  onFlush(): Promise<void> {
    this.flushes++;
    return Promise.resolve();
  }
}

interface ReplicationRecord {
  itemId: string;
  desired: 'Running' | 'Stopped';
  machine: { id: string; name: string };
  disks: string[];
  peer: ReplicationStartPayload['peer'] | null;
  policy: unknown;
  since: string;
}

/** Options of `LocalReplicationService`. */
export interface LocalReplicationServiceOptions {
  dataDir: string;
  fabric: FabricDriver;
  log?: { warn(obj: object, msg: string): void };
}

function checkItemId(itemId: unknown): string {
  if (typeof itemId !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(itemId)) {
    throw new OsrError('VALIDATION_FAILED', `invalid itemId ${JSON.stringify(itemId)}`, {
      details: { field: 'itemId' },
    });
  }
  return itemId;
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFile(file + '.tmp', JSON.stringify(value, null, 2) + '\n');
  await rename(file + '.tmp', file);
}

/** Replica folders and desired replication state without the data plane (see the file comment). */
export class LocalReplicationService implements ReplicationService {
  readonly #o: LocalReplicationServiceOptions;
  readonly #recorders = new Map<string, Map<string, RecordingObserver>>();

  constructor(options: LocalReplicationServiceOptions) {
    this.#o = options;
  }

  /** Folder of an item's replica. */
  replicaDir(itemId: string): string {
    return join(this.#o.dataDir, 'replicas', checkItemId(itemId));
  }

  #stateFile(itemId: string): string {
    return join(this.#o.dataDir, 'replication', `${checkItemId(itemId)}.json`);
  }

  /** The recorders of a replicating item's disks (for tests and diagnostics). */
  recorders(itemId: string): ReadonlyMap<string, RecordingObserver> | undefined {
    return this.#recorders.get(itemId);
  }

  async prepareReplica(p: ReplicaPreparePayload): Promise<unknown> {
    const dir = this.replicaDir(p.itemId);
    await mkdir(dir, { recursive: true });
    const file = join(dir, 'replica.json');
    let preparedAt = new Date().toISOString();
    try {
      const existing = JSON.parse(await readFile(file, 'utf8')) as { preparedAt?: string };
      preparedAt = existing.preparedAt ?? preparedAt;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await writeJson(file, {
      itemId: p.itemId,
      machine: p.machine,
      disks: p.disks,
      policy: p.policy ?? null,
      preparedAt,
    });
    return { replicaPath: dir, disks: p.disks.map((d) => d.id) };
  }

  async deleteReplica(p: { itemId: string }): Promise<unknown> {
    const dir = this.replicaDir(p.itemId);
    let existed = true;
    try {
      await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      existed = false;
    }
    await rm(dir, { recursive: true, force: true });
    return { deleted: existed, replicaPath: dir };
  }

  async startReplication(p: ReplicationStartPayload): Promise<unknown> {
    const machine = await this.#o.fabric.findMachine(p.machine.name);
    if (machine === undefined) {
      throw new OsrError('NOT_FOUND', `machine '${p.machine.name}' is not on this site`, {
        details: { machine: p.machine.name },
      });
    }
    for (const d of p.disks) {
      if (!machine.disks.some((x) => x.id === d.id)) {
        throw new OsrError('NOT_FOUND', `machine '${p.machine.name}' has no disk '${d.id}'`, {
          details: { machine: p.machine.name, disk: d.id },
        });
      }
    }
    const record: ReplicationRecord = {
      itemId: checkItemId(p.itemId),
      desired: 'Running',
      machine: p.machine,
      disks: p.disks.map((d) => d.id),
      peer: p.peer ?? null,
      policy: p.policy ?? null,
      since: new Date().toISOString(),
    };
    this.#attach(record);
    await mkdir(join(this.#o.dataDir, 'replication'), { recursive: true });
    await writeJson(this.#stateFile(p.itemId), record);
    return {
      itemId: p.itemId,
      capture: 'attached',
      disks: record.disks,
      // Honest about what this agent version does: writes are observed, not yet journaled or shipped.
      shipping: false,
    };
  }

  async stopReplication(p: { itemId: string }): Promise<unknown> {
    const file = this.#stateFile(p.itemId);
    let record: ReplicationRecord | undefined;
    try {
      record = JSON.parse(await readFile(file, 'utf8')) as ReplicationRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (record !== undefined) {
      this.#detach(record);
      await writeJson(file, { ...record, desired: 'Stopped', since: new Date().toISOString() });
    }
    return { itemId: p.itemId, stopped: record !== undefined };
  }

  async resume(): Promise<void> {
    const dir = join(this.#o.dataDir, 'replication');
    let files: string[];
    try {
      files = await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const f of files.filter((x) => x.endsWith('.json'))) {
      const record = JSON.parse(await readFile(join(dir, f), 'utf8')) as ReplicationRecord;
      if (record.desired !== 'Running') continue;
      try {
        this.#attach(record);
      } catch (err) {
        this.#o.log?.warn({ itemId: record.itemId, err }, 'cannot observe the disks of a replicating item');
      }
    }
  }

  #attach(r: ReplicationRecord): void {
    const map = new Map<string, RecordingObserver>();
    for (const id of r.disks) {
      const rec = this.#recorders.get(r.itemId)?.get(id) ?? new RecordingObserver();
      this.#o.fabric.setDiskObserver(r.machine.name, id, rec);
      map.set(id, rec);
    }
    this.#recorders.set(r.itemId, map);
  }

  #detach(r: ReplicationRecord): void {
    for (const id of r.disks) {
      try {
        this.#o.fabric.setDiskObserver(r.machine.name, id, null);
      } catch (err) {
        if (!(err instanceof OsrError)) throw err;
        // The machine or disk is gone already: nothing left to detach.
      }
    }
    this.#recorders.delete(r.itemId);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
