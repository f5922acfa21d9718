/**
 * The whole replication pipeline in one process, for the pipeline tests: image files behind journaled
 * `ObservedBackend`s served by an `NbdServer`, the write journal, a `ReplicationSender` over pinned TLS to a
 * `ReplicationReceiver` whose sink is a real `ReplicaStore` with its processor running.
 */
import * as fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { DiskSpec } from '../../src/dataplane/changes.js';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import type { WriteJournalOptions } from '../../src/dataplane/journal/journal.js';
import { FileBackend } from '../../src/dataplane/nbd/file-backend.js';
import type { ObservedBackend } from '../../src/dataplane/nbd/observed-backend.js';
import { NbdServer } from '../../src/dataplane/nbd/server.js';
import { ReplicaStore } from '../../src/dataplane/replica/replica-store.js';
import type { ReplicaStoreOptions } from '../../src/dataplane/replica/replica-store.js';
import { ReplicationReceiver } from '../../src/dataplane/transport/receiver.js';
import type { ReplicationReceiverOptions } from '../../src/dataplane/transport/receiver.js';
import { ReplicationSender } from '../../src/dataplane/transport/sender.js';
import type { ReplicationSenderOptions } from '../../src/dataplane/transport/sender.js';
import type { TestIdentity as TlsIdentity } from './source-support.js';

/** Options of `startPipeline`. */
export interface PipelineOptions {
  /** Folder for images, journal and replica (created if missing). */
  readonly dir: string;
  readonly disks: readonly DiskSpec[];
  readonly source: TlsIdentity;
  readonly recovery: TlsIdentity;
  readonly journal?: WriteJournalOptions;
  readonly sender?: Partial<ReplicationSenderOptions>;
  readonly receiver?: Partial<ReplicationReceiverOptions>;
  readonly store?: Partial<ReplicaStoreOptions>;
  /** Start the sender at once. Default true. */
  readonly startSender?: boolean;
}

/** The source site of a pipeline: images, journal, journaled backends served over NBD, and the sender. */
export interface PipelineSource {
  readonly journal: WriteJournal;
  /** The raw source images (what the journaled backends write to). */
  readonly images: Map<string, FileBackend>;
  /** The journaled backends, as exported over NBD. */
  readonly disks: Map<string, ObservedBackend>;
  readonly nbd: NbdServer;
  readonly nbdPort: number;
  readonly sender: ReplicationSender;
  /** Stops the NBD server, the sender, the journal and the disks (idempotent). */
  close(): Promise<void>;
}

/** A running pipeline: the source site and, in this process, the recovery site. */
export interface Pipeline extends PipelineSource {
  readonly store: ReplicaStore;
  readonly receiver: ReplicationReceiver;
  /** Stops everything in dependency order (idempotent). */
  close(): Promise<void>;
}

/** Creates (or reopens) sparse source images of the disks' sizes. */
export async function openImages(dir: string, disks: readonly DiskSpec[]): Promise<Map<string, FileBackend>> {
  fs.mkdirSync(join(dir, 'source'), { recursive: true });
  const images = new Map<string, FileBackend>();
  for (const d of disks) {
    const p = join(dir, 'source', `${d.id}.img`);
    if (!fs.existsSync(p)) {
      fs.closeSync(fs.openSync(p, 'w'));
      fs.truncateSync(p, d.sizeBytes);
    }
    images.set(d.id, await FileBackend.open(p, { mapPath: null }));
  }
  return images;
}

/**
 * Starts the source site: its sender ships to a receiver on 127.0.0.1:`receiverPort` (which may run in another
 * process) presenting `o.source` and trusting `o.recovery`'s CA.
 */
export async function startSource(
  o: Omit<PipelineOptions, 'receiver' | 'store'>,
  receiverPort: number,
): Promise<PipelineSource> {
  const images = await openImages(o.dir, o.disks);
  const journal = WriteJournal.open(join(o.dir, 'journal'), o.disks, o.journal);
  const disks = new Map([...images].map(([id, b]) => [id, journal.attach(id, b)]));
  const nbd = new NbdServer({ exports: [...disks].map(([name, backend]) => ({ name, backend })) });
  const addr = (await nbd.listen({ host: '127.0.0.1', port: 0 })) as AddressInfo;
  const sender = new ReplicationSender({
    journal,
    groupId: 'g',
    host: '127.0.0.1',
    port: receiverPort,
    identity: o.source,
    trustedCa: o.recovery.ca,
    peerAuth: { mode: 'certificate', identity: 'urn:osr:agent:recovery' },
    backoff: { initialMs: 10, maxMs: 100 },
    ...o.sender,
  });
  if (o.startSender ?? true) sender.start();
  let closing: Promise<void> | undefined;
  return {
    journal,
    images,
    disks,
    nbd,
    nbdPort: addr.port,
    sender,
    close: () =>
      (closing ??= (async () => {
        await nbd.close();
        await sender.stop();
        await journal.close();
        for (const d of disks.values()) await d.close();
      })()),
  };
}

/** Starts the whole pipeline in this process. */
export async function startPipeline(o: PipelineOptions): Promise<Pipeline> {
  const store = await ReplicaStore.open(join(o.dir, 'replica'), {
    disks: o.disks,
    processorIdleMs: 20,
    ...o.store,
  });
  store.startProcessor();
  const receiver = await ReplicationReceiver.listen({
    identity: o.recovery,
    trustedCa: o.source.ca,
    peerAuthFor: () => ({ mode: 'certificate', identity: 'urn:osr:agent:source' }),
    sinkFor: (g) => (g === 'g' ? store : undefined),
    ...o.receiver,
  });
  const source = await startSource(o, receiver.port);
  let closing: Promise<void> | undefined;
  return {
    ...source,
    store,
    receiver,
    close: () =>
      (closing ??= (async () => {
        await source.nbd.close();
        await source.sender.stop();
        await receiver.close();
        await store.close();
        await source.close();
      })()),
  };
}

/** Reads a whole backend. */
export async function readAll(b: {
  readonly size: number;
  read(o: number, l: number): Promise<Buffer>;
}): Promise<Buffer> {
  return b.read(0, b.size);
}
