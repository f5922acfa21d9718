/**
 * Faults through the whole pipeline (journal → sender → TLS → receiver → replica store): kill -9 of the sending and
 * of the receiving+processing process mid-stream, a link dropped mid-batch, a flipped bit in a frame and in a
 * journal record, and a journal overflow while the link is down. Each ends with the replica equal to the source,
 * its received seqs contiguous, nothing lost and nothing applied twice.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ResyncRequiredError } from '../../src/dataplane/journal/errors.js';
import { probeRecord } from '../../src/dataplane/journal/record.js';
import { ReplicaStore } from '../../src/dataplane/replica/replica-store.js';
import { ReplicationReceiver } from '../../src/dataplane/transport/receiver.js';
import { runResync } from '../../src/dataplane/resync/resync.js';
import { FrameType } from '../../src/dataplane/transport/frame.js';
import type { TestIdentity as TlsIdentity } from './source-support.js';
import { readAll, startPipeline } from './pipeline-support.js';
import type { Pipeline } from './pipeline-support.js';
import {
  DP_DISK,
  dpChange,
  makeIdentity,
  mulberry32,
  randomBytes,
  startFixture,
  stopFixture,
  tempDir,
  waitFor,
} from './source-support.js';
import type { Proc } from './source-support.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISKS = [
  { id: 'os', sizeBytes: 4 * MiB },
  { id: 'data', sizeBytes: 2 * MiB },
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

test('kill -9 of the sender and of the receiver+replica process mid-stream: the replica ends exact', async () => {
  const t = tempDir('osr-pipe-kill-');
  const procs: Proc[] = [];
  try {
    fs.copyFileSync(join(certs.dir, 'source.key.pem'), join(t.dir, 'source.key.pem'));
    fs.copyFileSync(join(certs.dir, 'source.cert.pem'), join(t.dir, 'source.cert.pem'));
    fs.copyFileSync(join(certs.dir, 'recovery.key.pem'), join(t.dir, 'recovery.key.pem'));
    fs.copyFileSync(join(certs.dir, 'recovery.cert.pem'), join(t.dir, 'recovery.cert.pem'));
    fs.copyFileSync(join(certs.dir, 'test-ca.ca.pem'), join(t.dir, 'test-ca.ca.pem'));
    const replicaDir = join(t.dir, 'replica');
    const count = 2500;
    const base = { OSR_DP_CERTS: t.dir, OSR_DP_REPLICA: replicaDir, OSR_DP_JOURNAL: join(t.dir, 'journal') };
    // Progress is read from the journal folder: the sender frees segments only once the replica acknowledged.
    const journalFirstSeq = (): number => {
      const names = fs.existsSync(base.OSR_DP_JOURNAL)
        ? fs
            .readdirSync(base.OSR_DP_JOURNAL)
            .filter((n) => n.startsWith('seg-'))
            .sort()
        : [];
      return names.length > 0 ? Number(names[0]!.slice(4, -5)) : 0;
    };

    const r1 = startFixture('dp-replica-receiver', { ...base, OSR_DP_PORT: '0' });
    procs.push(r1);
    const port = (await r1.firstLine).split(' ')[1]!;
    const s1 = startFixture('dp-sender', { ...base, OSR_DP_PORT: port, OSR_DP_COUNT: String(count) });
    procs.push(s1);
    await s1.firstLine;
    await waitFor(() => journalFirstSeq() > 300, 'the replica to acknowledge the first changes', 30_000);
    await stopFixture(r1, 'SIGKILL');
    const r2 = startFixture('dp-replica-receiver', { ...base, OSR_DP_PORT: port });
    procs.push(r2);
    await r2.firstLine;
    const before2 = journalFirstSeq();
    await waitFor(
      () => journalFirstSeq() > before2 + 200,
      'the stream to resume after the receiver died',
      30_000,
    );
    await stopFixture(s1, 'SIGKILL');
    const s2 = startFixture('dp-sender', { ...base, OSR_DP_PORT: port, OSR_DP_COUNT: String(count) });
    procs.push(s2);
    const resumedAt = Number((await s2.firstLine).split(' ')[1]);
    assert.ok(resumedAt >= before2 && resumedAt <= count, `the restarted sender found ${resumedAt} changes`);
    await stopFixture(r2, 'SIGTERM');
    // The last stretch is received in this process, on the same port, so the test can watch the store.
    const store = await ReplicaStore.open(replicaDir, { disks: [DP_DISK], processorIdleMs: 10 });
    const r3 = await ReplicationReceiver.listen({
      port: Number(port),
      identity: dst,
      trustedCa: src.ca,
      peerAuthFor: () => ({ mode: 'certificate', identity: 'urn:osr:agent:source' }),
      sinkFor: (g) => (g === 'crash-group' ? store : undefined),
    });
    try {
      store.startProcessor();
      await waitFor(() => store.lastReceivedSeq() >= count, 'every change to arrive', 60_000);
      await stopFixture(s2, 'SIGTERM');
      await r3.close();
      // The store refuses gaps and drops resends, so contiguous receipt is `lastReceivedSeq === count`.
      assert.equal(store.lastReceivedSeq(), count, 'every change received exactly once, in order');
      await store.process();
      const model = Buffer.alloc(DP_DISK.sizeBytes);
      for (let k = 1; k <= count; k++) {
        const c = dpChange(k);
        c.data.copy(model, c.offset);
      }
      assert.ok((await readAll(store.openBase(DP_DISK.id))).equals(model), 'replica base equals the source');
    } finally {
      await r3.close();
      await store.close();
    }
  } finally {
    for (const p of procs) await stopFixture(p, 'SIGTERM');
    t.remove();
  }
});

// ---- in-process faults -----------------------------------------------------------------------------------

/** Writes `n` random writes/zeroes to the pipeline's journaled disks, one after another. */
async function churn(p: Pipeline, rnd: () => number, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const d = DISKS[Math.floor(rnd() * DISKS.length)]!;
    const len = 1 + Math.floor(rnd() * 40 * KiB);
    const off = Math.floor(rnd() * (d.sizeBytes - len));
    const disk = p.disks.get(d.id)!;
    if (rnd() < 0.85) await disk.write(off, randomBytes(rnd, len, rnd() < 0.5));
    else await disk.writeZeroes(off, len);
  }
}

/** Cuts a final point, waits for it to be acknowledged and processed, and checks the replica equals the source. */
async function assertLevel(p: Pipeline, label: string): Promise<void> {
  const id = `final-${label}`;
  const seq = await p.journal.addMarker('crash-consistent', id);
  await p.sender.waitForAck(seq);
  await p.store.process();
  assert.equal(p.store.lastReceivedSeq(), p.journal.lastSeq, `${label}: every seq received once`);
  for (const d of DISKS) {
    const source = await readAll(p.images.get(d.id)!);
    assert.ok((await readAll(p.store.openBase(d.id))).equals(source), `${label}: base of ${d.id}`);
    const v = await p.store.openView(d.id, id);
    try {
      assert.ok((await readAll(v)).equals(source), `${label}: view of ${d.id} at the final point`);
    } finally {
      await v.close();
    }
  }
}

/** A TCP relay to `target()` whose connections can be cut after a number of bytes sender → receiver. */
async function relay(
  target: () => number,
  cutEvery: number,
): Promise<{ port: number; cuts: () => number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let cuts = 0;
  let sinceCut = 0;
  let armed = true;
  const server = net.createServer((a) => {
    const b = net.connect(target(), '127.0.0.1');
    sockets.add(a);
    sockets.add(b);
    const drop = (): void => {
      a.destroy();
      b.destroy();
    };
    a.on('data', (chunk: Buffer) => {
      sinceCut += chunk.length;
      if (armed && sinceCut >= cutEvery) {
        // Forward part of the chunk, then cut: the receiver sees a frame torn in the middle.
        b.write(chunk.subarray(0, chunk.length >> 1));
        sinceCut = 0;
        cuts++;
        if (cuts >= 3) armed = false;
        setImmediate(drop);
        return;
      }
      b.write(chunk);
    });
    b.on('data', (chunk: Buffer) => a.write(chunk));
    a.on('close', drop);
    b.on('close', drop);
    a.on('error', drop);
    b.on('error', drop);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    cuts: () => cuts,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

test('a link dropped mid-batch three times: the sender resumes from the last ack, the replica ends exact', async () => {
  const t = tempDir('osr-pipe-drop-');
  let receiverPort = 0;
  const r = await relay(() => receiverPort, 200 * KiB);
  const p = await startPipeline({
    dir: t.dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    journal: { segmentBytes: 256 * KiB },
    sender: { port: r.port, batchBytes: 64 * KiB, compress: false },
    startSender: false,
  });
  try {
    receiverPort = p.receiver.port;
    p.sender.start();
    const rnd = mulberry32(7);
    await churn(p, rnd, 300);
    await p.journal.addMarker('crash-consistent', 'mid');
    await churn(p, rnd, 300);
    await waitFor(() => r.cuts() >= 3, 'three cuts of the link', 20_000);
    await assertLevel(p, 'dropped link');
    assert.ok(p.sender.status().connects >= 4, `reconnected after each cut (${p.sender.status().connects})`);
  } finally {
    await p.close();
    await r.close();
    t.remove();
  }
});

test('a flipped bit in a frame is detected, the connection reset and the batch resent', async () => {
  const t = tempDir('osr-pipe-frame-');
  let batches = 0;
  const refusals: string[] = [];
  const p = await startPipeline({
    dir: t.dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    sender: {
      batchBytes: 64 * KiB,
      // The frame is encoded afresh for every send, so only this one copy is damaged.
      frameTap: (type, frame) => {
        if (type === FrameType.BATCH && ++batches === 3) frame[frame.length - 7]! ^= 0x10;
      },
    },
    receiver: { onEvent: (e) => (e.type === 'refused' ? refusals.push(e.reason) : undefined) },
  });
  try {
    await churn(p, mulberry32(8), 400);
    await assertLevel(p, 'flipped frame bit');
    assert.ok(
      refusals.some((x) => /checksum/.test(x)),
      `the receiver refused the damaged frame: ${refusals.join('; ')}`,
    );
    assert.ok(p.sender.status().connects >= 2, 'the sender reconnected and resent');
  } finally {
    await p.close();
    t.remove();
  }
});

test('a flipped bit in a journal record: refused with a clear error, salvaged, and resync restores equality', async () => {
  const t = tempDir('osr-pipe-jbit-');
  const p = await startPipeline({
    dir: t.dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    journal: { segmentBytes: 512 * KiB },
    sender: { batchBytes: 64 * KiB },
    startSender: false,
  });
  try {
    const rnd = mulberry32(9);
    await churn(p, rnd, 200);
    await p.journal.flush();
    // Damage a data byte of a record in the middle of the first segment while the link is down.
    const seg = join(
      p.journal.dir,
      fs
        .readdirSync(p.journal.dir)
        .filter((n) => n.startsWith('seg-'))
        .sort()[0]!,
    );
    const buf = fs.readFileSync(seg);
    let at = 0;
    for (let i = 0; i < 20; i++) {
      const r = probeRecord(buf, at);
      assert.equal(r.status, 'ok');
      if (r.status === 'ok') at += r.size;
    }
    const victim = probeRecord(buf, at);
    assert.ok(victim.status === 'ok' && victim.entry.kind === 'write' && victim.entry.data.length > 0);
    const fd = fs.openSync(seg, 'r+');
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, at + victim.size - 1);
    byte[0]! ^= 0x01;
    fs.writeSync(fd, byte, 0, 1, at + victim.size - 1);
    fs.closeSync(fd);

    p.sender.start();
    await waitFor(
      () => p.sender.status().state === 'resync-required',
      'the sender to refuse the damaged record',
    );
    const st = p.sender.status();
    assert.match(st.lastError ?? '', /corrupt.*checksum mismatch/);
    assert.ok(p.store.lastReceivedSeq() <= 21, 'nothing past the damaged record reached the replica');

    const replaced = p.journal.repairDamaged();
    assert.deepEqual(replaced, [21]);
    assert.equal(p.journal.resyncRequired, true);
    await assert.rejects(p.journal.addMarker('crash-consistent', 'refused'), ResyncRequiredError);
    await churn(p, rnd, 50);
    // The replica learns from the stream that it is inside a resync: it refuses to cut a point now.
    await p.sender.waitForAck(p.journal.lastSeq);
    await p.store.process();
    assert.equal(p.store.status().resyncing, true);
    await assert.rejects(p.store.cutLatest(), { code: 'RESYNC_IN_PROGRESS' });
    const before = p.store.latestProcessed();
    const result = await runResync({
      journal: p.journal,
      disks: p.disks,
      remoteHashes: (id, bs, offs) => p.sender.requestHashes(id, bs, offs),
      waitForAck: (seq) => p.sender.waitForAck(seq),
      blockSize: 64 * KiB,
    });
    assert.equal(result.complete, true);
    assert.ok(result.blocksDiffering >= 1, 'the block the damaged record wrote was resent');
    assert.equal(p.journal.resyncRequired, false);
    await assertLevel(p, 'flipped journal bit');
    assert.equal(p.store.status().resyncing, false, 'the resync end reached the replica');
    assert.equal(before, undefined, 'no point was cut before or inside the resync');
    assert.equal((await p.store.cutLatest()).type, 'crash-consistent', 'points can be cut again');
  } finally {
    await p.close();
    t.remove();
  }
});

test('journal overflow while the link is down → resync by block hashes → equality, bytes sent ≈ bytes changed', async () => {
  const t = tempDir('osr-pipe-ovf-');
  const p = await startPipeline({
    dir: t.dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    journal: { segmentBytes: 128 * KiB, capBytes: 512 * KiB, dirtyGranuleBytes: 64 * KiB },
    sender: { batchBytes: 64 * KiB },
    startSender: false,
  });
  try {
    const rnd = mulberry32(10);
    // Writes of whole 64 KiB blocks: "bytes changed" is exact.
    const changed = new Set<string>();
    const writeBlocks = async (n: number, record: boolean): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const d = DISKS[Math.floor(rnd() * DISKS.length)]!;
        const block = Math.floor(rnd() * (d.sizeBytes / (64 * KiB)));
        await p.disks.get(d.id)!.write(block * 64 * KiB, randomBytes(rnd, 64 * KiB));
        if (record) changed.add(`${d.id}:${block}`);
      }
    };
    await writeBlocks(6, false);
    await writeBlocks(60, true);
    assert.equal(p.journal.mode, 'overflow', 'the journal overflowed into dirty bitmaps');
    assert.equal(p.journal.resyncRequired, true);
    p.sender.start();
    const result = await runResync({
      journal: p.journal,
      disks: p.disks,
      remoteHashes: (id, bs, offs) => p.sender.requestHashes(id, bs, offs),
      waitForAck: (seq) => p.sender.waitForAck(seq),
      blockSize: 64 * KiB,
    });
    assert.equal(result.complete, true);
    const changedBytes = changed.size * 64 * KiB;
    assert.ok(
      result.bytesSent <= changedBytes * 1.1,
      `resync sent ${result.bytesSent} bytes for ${changedBytes} changed (hashes ${result.hashBytes})`,
    );
    assert.ok(result.bytesSent > 0);
    await assertLevel(p, 'overflow resync');
  } finally {
    await p.close();
    t.remove();
  }
});
