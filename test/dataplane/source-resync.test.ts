/**
 * Initial replication (online while a writer keeps writing, scheduled, offline by seed file) and resync after a
 * journal overflow: the replica ends byte-equal to the source, and resync sends only the differing blocks.
 */
import * as assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import type { WriteJournalOptions } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import type { ObservedBackend } from '../../src/dataplane/nbd/observed-backend.js';
import { runInitialCopy } from '../../src/dataplane/resync/initial-copy.js';
import { OfflineSeedReader, OfflineSeedWriter } from '../../src/dataplane/resync/offline-seed.js';
import { runResync } from '../../src/dataplane/resync/resync.js';
import { ReplicationReceiver } from '../../src/dataplane/transport/receiver.js';
import type { OfflineSeedSource } from '../../src/dataplane/transport/sink.js';
import { ReplicationSender } from '../../src/dataplane/transport/sender.js';
import type { TestIdentity as TlsIdentity } from './source-support.js';
import { makeIdentity, ModelSink, mulberry32, randomBytes, tempDir } from './source-support.js';

const MiB = 1024 * 1024;
const G = 64 * 1024;
const DISKS = [
  { id: 'os', sizeBytes: 16 * MiB },
  { id: 'data', sizeBytes: 8 * MiB },
];

let certs: { dir: string; remove: () => void };
let src: TlsIdentity;
let dst: TlsIdentity;
before(() => {
  certs = tempDir('osr-certs-');
  src = makeIdentity(certs.dir, 'source');
  dst = makeIdentity(certs.dir, 'recovery');
});
after(() => certs.remove());

interface Pipeline {
  dir: string;
  journal: WriteJournal;
  source: Map<string, MemoryBackend>;
  disks: Map<string, ObservedBackend>;
  sink: ModelSink;
  receiver: ReplicationReceiver;
  sender: ReplicationSender;
  close(): Promise<void>;
}

/**
 * Source disks with `fill` of their granules holding random data (written before journaling starts, as a machine
 * that existed before protection), a journal, and a TLS link into a model replica that starts all zeros.
 */
async function pipeline(
  seed: number,
  fill: number,
  journalOptions: WriteJournalOptions = {},
  offline?: () => OfflineSeedSource | undefined,
): Promise<Pipeline> {
  const t = tempDir();
  const rnd = mulberry32(seed);
  const source = new Map<string, MemoryBackend>();
  for (const d of DISKS) {
    const b = new MemoryBackend(d.sizeBytes);
    for (let off = 0; off < d.sizeBytes; off += G)
      if (rnd() < fill) await b.write(off, randomBytes(rnd, G, true));
    source.set(d.id, b);
  }
  const journal = WriteJournal.open(join(t.dir, 'journal'), DISKS, journalOptions);
  const disks = new Map([...source].map(([id, b]) => [id, journal.attach(id, b)]));
  const sink = new ModelSink(DISKS);
  const receiver = await ReplicationReceiver.listen({
    identity: dst,
    trustedCa: src.ca,
    peerAuthFor: () => ({ mode: 'certificate', identity: 'urn:osr:agent:source' }),
    sinkFor: () => sink,
    offlineSeedFor: offline,
  });
  const sender = new ReplicationSender({
    journal,
    groupId: 'g',
    host: '127.0.0.1',
    port: receiver.port,
    identity: src,
    trustedCa: dst.ca,
    peerAuth: { mode: 'certificate', identity: 'urn:osr:agent:recovery' },
    backoff: { initialMs: 20, maxMs: 100 },
  });
  sender.start();
  return {
    dir: t.dir,
    journal,
    source,
    disks,
    sink,
    receiver,
    sender,
    close: async () => {
      await sender.stop();
      await receiver.close();
      await journal.close();
      t.remove();
    },
  };
}

/** Random writes (and some trims) through the journaled disks until `stop()` is called. */
function writer(p: Pipeline, seed: number, maxSectors = 64, pauseMs = 0): { stop: () => Promise<number> } {
  const rnd = mulberry32(seed);
  let running = true;
  let n = 0;
  const loop = (async () => {
    while (running) {
      const id = rnd() < 0.6 ? 'os' : 'data';
      const d = p.disks.get(id)!;
      const len = 512 * (1 + Math.floor(rnd() * maxSectors));
      const off = 512 * Math.floor(rnd() * ((d.size - len) / 512));
      if (rnd() < 0.85) await d.write(off, randomBytes(rnd, len));
      else await d.trim(off, Math.min(len + G, d.size - off));
      n++;
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return n;
    },
  };
}

async function assertLevel(p: Pipeline): Promise<void> {
  for (const [id, b] of p.source) {
    assert.ok((await p.sink.bytes(id)).equals(await b.read(0, b.size)), `replica of ${id} equals the source`);
  }
}

test('online initial copy of allocated blocks while a writer keeps writing ends byte-equal', async () => {
  const p = await pipeline(1, 0.3);
  try {
    let allocated = 0;
    for (const b of p.source.values()) {
      for (let pos = 0; pos < b.size;) {
        for (const e of await b.blockStatus(pos, b.size - pos)) {
          if (!e.zero) allocated += e.length;
          pos += e.length;
        }
      }
    }
    const w = writer(p, 2);
    const percents: number[] = [];
    const result = await runInitialCopy({
      journal: p.journal,
      disks: [...p.disks].map(([id, backend]) => ({ id, backend })),
      chunkBytes: 256 * 1024,
      onProgress: (pr) => percents.push(pr.percent),
    });
    const writes = await w.stop();
    assert.ok(writes > 20, `the writer kept writing during the copy (${writes} writes)`);
    assert.equal(result.totalBytes, allocated, 'only allocated blocks are copied');
    assert.ok(result.totalBytes < 0.5 * (24 * MiB));
    assert.equal(percents.at(-1), 100);
    assert.ok(percents.every((x, i) => i === 0 || x >= percents[i - 1]!));
    await p.sender.waitForAck(p.journal.lastSeq);
    await assertLevel(p);
  } finally {
    await p.close();
  }
});

test('streamed initial copy while a writer keeps writing and the sender is replaced mid-copy ends byte-equal', async () => {
  const p = await pipeline(6, 0.3);
  let current = p.sender;
  let replaced: ReplicationSender | undefined;
  let swap = new AbortController();
  // The copy waits for acknowledgements of whichever sender is running (a restarted agent has a new one).
  const waitForAck = async (seq: number): Promise<void> => {
    for (;;) {
      const s = current;
      const signal = swap.signal;
      try {
        await s.waitForAck(seq, signal);
        return;
      } catch (err) {
        if (!signal.aborted) throw err;
      }
    }
  };
  let swapping: Promise<void> | undefined;
  try {
    const w = writer(p, 8);
    const percents: number[] = [];
    let refused = 0;
    const result = await runInitialCopy({
      journal: p.journal,
      disks: [...p.disks].map(([id, backend]) => ({ id, backend })),
      chunkBytes: 256 * 1024,
      maxJournalBytes: 1024 * 1024,
      waitForAck,
      onProgress: (pr) => {
        percents.push(pr.percent);
        if (pr.percent > 30 && !swapping) {
          swapping = (async () => {
            await p.journal.addMarker('crash-consistent', 'inside').catch((e: { code?: string }) => {
              if (e.code === 'COPY_IN_PROGRESS') refused++;
            });
            await current.stop();
            replaced = new ReplicationSender({
              journal: p.journal,
              groupId: 'g',
              host: '127.0.0.1',
              port: p.receiver.port,
              identity: src,
              trustedCa: dst.ca,
              peerAuth: { mode: 'certificate', identity: 'urn:osr:agent:recovery' },
              backoff: { initialMs: 20, maxMs: 100 },
            });
            replaced.start();
            current = replaced;
            const old = swap;
            swap = new AbortController();
            old.abort();
          })();
        }
      },
    });
    await swapping;
    const writes = await w.stop();
    assert.ok(writes > 20, `the writer kept writing during the copy (${writes} writes)`);
    assert.equal(refused, 1, 'no marker while the copy streams');
    assert.ok(replaced, 'the sender was replaced mid-copy');
    assert.equal(percents.at(-1), 100);
    assert.ok(percents.every((x, i) => i === 0 || x >= percents[i - 1]!));
    await current.waitForAck(p.journal.lastSeq);
    await assertLevel(p);
    const kinds = p.sink.received.map((c) => (c.kind === 'resync' ? c.phase : c.kind));
    assert.equal(kinds.filter((k) => k === 'begin').length, 1);
    assert.ok(kinds.lastIndexOf('end') > kinds.indexOf('begin'), 'the bracket was closed');
    assert.ok(
      p.sink.received.findIndex((c) => c.seq === result.lastSeq && c.kind === 'resync') >= 0,
      'the copy ends with the bracket end',
    );
    assert.ok(await p.journal.addMarker('crash-consistent', 'after'), 'markers again after the copy');
  } finally {
    await replaced?.stop();
    await p.close();
  }
});

test('a scheduled initial copy does not start before its time', async () => {
  const p = await pipeline(3, 0.05);
  try {
    const startAt = new Date(Date.now() + 200);
    const result = await runInitialCopy({
      journal: p.journal,
      disks: [...p.disks].map(([id, backend]) => ({ id, backend })),
      startAt,
    });
    assert.ok(Date.now() >= startAt.getTime());
    assert.ok(result.blocks > 0);
    await p.sender.waitForAck(result.lastSeq);
    await assertLevel(p);
  } finally {
    await p.close();
  }
});

test('offline initial copy: blocks travel in a seed file, the link carries placeholders and later writes', async () => {
  let seed: OfflineSeedReader | undefined;
  const p = await pipeline(4, 0.3, {}, () => seed);
  try {
    await p.sender.stop(); // the link is down while the export is made and carried over
    const seedPath = join(p.dir, 'seed.osrseed');
    const out = OfflineSeedWriter.create(seedPath, 'g');
    const w = writer(p, 5, 8, 1);
    const result = await runInitialCopy({
      journal: p.journal,
      disks: [...p.disks].map(([id, backend]) => ({ id, backend })),
      offline: out,
    });
    out.finish();
    await w.stop();
    seed = OfflineSeedReader.open(seedPath);
    assert.equal(seed.size, result.blocks);
    const sender = new ReplicationSender({
      journal: p.journal,
      groupId: 'g',
      host: '127.0.0.1',
      port: p.receiver.port,
      identity: src,
      trustedCa: dst.ca,
      peerAuth: { mode: 'certificate', identity: 'urn:osr:agent:recovery' },
    });
    sender.start();
    try {
      await sender.waitForAck(p.journal.lastSeq);
      assert.ok(
        sender.status().bytesRaw < result.totalBytes / 4,
        `link carried ${sender.status().bytesRaw} raw bytes for a ${result.totalBytes}-byte copy`,
      );
    } finally {
      await sender.stop();
    }
    await assertLevel(p);
  } finally {
    await p.close();
  }
});

test('after a journal overflow, resync compares hashes and sends only the differing blocks', async () => {
  // Replica and source start equal: copy first, then let the link go down and the journal overflow.
  const p = await pipeline(6, 0.4, { capBytes: 4 * MiB, segmentBytes: 256 * 1024 });
  try {
    await runInitialCopy({
      journal: p.journal,
      disks: [...p.disks].map(([id, backend]) => ({ id, backend })),
      maxJournalBytes: MiB,
    });
    await p.sender.waitForAck(p.journal.lastSeq);
    await assertLevel(p);
    await p.sender.stop();
    // 4 of the 16 1-MiB blocks of the OS disk get 5 MiB of changes while the link is down: more than the cap.
    const rnd = mulberry32(7);
    const os = p.disks.get('os')!;
    const changedBlocks = new Set<number>();
    for (let i = 0; i < 80;) {
      const block = Math.floor(rnd() * 16);
      if (changedBlocks.size >= 4 && !changedBlocks.has(block)) continue;
      i++;
      changedBlocks.add(block);
      await os.write(block * MiB + G * Math.floor(rnd() * 16), randomBytes(rnd, G));
    }
    // A write to the data disk that changes nothing: dirty, but equal, so it is not sent.
    const data = p.disks.get('data')!;
    await data.write(0, await data.read(0, G));
    assert.equal(p.journal.mode, 'overflow');

    const sender = new ReplicationSender({
      journal: p.journal,
      groupId: 'g',
      host: '127.0.0.1',
      port: p.receiver.port,
      identity: src,
      trustedCa: dst.ca,
      peerAuth: { mode: 'certificate', identity: 'urn:osr:agent:recovery' },
    });
    sender.start();
    try {
      // Writes keep coming once the resync has begun (not before: they would just add dirty bits).
      let w: ReturnType<typeof writer> | undefined;
      const result = await runResync({
        journal: p.journal,
        disks: p.disks,
        remoteHashes: (d, bs, offs) => sender.requestHashes(d, bs, offs),
        waitForAck: async (seq) => {
          await sender.waitForAck(seq);
          if (p.journal.mode === 'resync') w ??= writer(p, 8, 16, 2);
        },
      });
      assert.ok(w, 'the writer ran during the resync');
      assert.ok((await w.stop()) > 0);
      assert.equal(result.complete, true);
      assert.equal(p.journal.resyncRequired, false);
      assert.equal(result.blocksCompared, changedBlocks.size + 1, 'only dirty blocks are compared');
      // The unchanged-but-dirty data block is sent only if the concurrent writer happened to change it.
      assert.ok(
        result.blocksDiffering >= changedBlocks.size && result.blocksDiffering <= changedBlocks.size + 1,
      );
      assert.equal(result.bytesSent, result.blocksDiffering * MiB);
      assert.equal(result.hashBytes, result.blocksCompared * 32);
      await sender.waitForAck(p.journal.lastSeq);
      await assertLevel(p);
    } finally {
      await sender.stop();
    }
  } finally {
    await p.close();
  }
});
