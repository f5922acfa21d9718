/**
 * Re-base after a lost resume position: the recovery site resumes after a seq the source journal cannot continue
 * from — released (the replica was restored from an older copy of itself) or beyond the journal's end (the source
 * lost its journal). The sender re-bases the stream (every block dirty, a resync begin above both positions), the
 * receiver accepts the one gap before that begin, the resync compares every block, and the replica ends equal to
 * the source with its older points intact and no point cut inside the bracket.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import { runResync } from '../../src/dataplane/resync/resync.js';
import type { TestIdentity as TlsIdentity } from './source-support.js';
import { readAll, startPipeline } from './pipeline-support.js';
import type { Pipeline } from './pipeline-support.js';
import { makeIdentity, mulberry32, randomBytes, tempDir, waitFor } from './source-support.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISKS = [
  { id: 'os', sizeBytes: 2 * MiB },
  { id: 'data', sizeBytes: 1 * MiB },
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

function start(dir: string): Promise<Pipeline> {
  return startPipeline({
    dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    journal: { segmentBytes: 32 * KiB },
    sender: { batchBytes: 16 * KiB },
  });
}

async function churn(p: Pipeline, rnd: () => number, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const d = DISKS[Math.floor(rnd() * DISKS.length)]!;
    const len = 1 + Math.floor(rnd() * 16 * KiB);
    await p.disks.get(d.id)!.write(Math.floor(rnd() * (d.sizeBytes - len)), randomBytes(rnd, len));
  }
}

/** Bytes of every disk as the source has them now. */
async function snapshot(p: Pipeline): Promise<Map<string, Buffer>> {
  return new Map(
    await Promise.all(DISKS.map(async (d) => [d.id, await readAll(p.images.get(d.id)!)] as const)),
  );
}

/** Waits for the re-base, runs the resync, and checks equality, old points and a new point. */
async function resyncAndCheck(
  p: Pipeline,
  oldPoint: { id: string; bytes: Map<string, Buffer> },
  cutBefore: string[],
): Promise<void> {
  await waitFor(() => p.sender.status().rebases === 1, 'the sender to re-base');
  assert.equal(p.journal.mode, 'resync', 'every block is dirty until the resync ends');
  assert.match(p.sender.status().lastError ?? '', /re-based at seq/);
  await p.sender.waitForAck(p.journal.lastSeq);
  await p.store.process();
  assert.equal(p.store.status().resyncing, true, 'the replica knows it is inside a resync');
  await assert.rejects(p.store.cutLatest(), { code: 'RESYNC_IN_PROGRESS' });
  const result = await runResync({
    journal: p.journal,
    disks: p.disks,
    remoteHashes: (id, bs, offs) => p.sender.requestHashes(id, bs, offs),
    waitForAck: (seq) => p.sender.waitForAck(seq),
    blockSize: 64 * KiB,
  });
  assert.equal(result.complete, true);
  assert.equal(result.blocksCompared, (3 * MiB) / (64 * KiB), 'every block is compared');
  assert.equal(p.journal.mode, 'normal');
  const seq = await p.journal.addMarker('crash-consistent', 'after');
  await p.sender.waitForAck(seq);
  await p.store.process();
  assert.equal(p.store.status().resyncing, false);
  assert.deepEqual(
    p.store.points().map((x) => x.id),
    [...cutBefore, 'after'],
    'points from before stay, none inside the bracket',
  );
  for (const d of DISKS) {
    const source = await readAll(p.images.get(d.id)!);
    assert.ok((await readAll(p.store.openBase(d.id))).equals(source), `base of ${d.id} equals the source`);
    const v = await p.store.openView(d.id, oldPoint.id);
    try {
      assert.ok(
        (await readAll(v)).equals(oldPoint.bytes.get(d.id)!),
        `${d.id} at the old point is unchanged`,
      );
    } finally {
      await v.close();
    }
  }
}

test('the replica restored from an older copy resumes before the journal: re-base, resync, equality', async () => {
  const t = tempDir('osr-rebase-released-');
  const rnd = mulberry32(41);
  let p = await start(t.dir);
  let old: { id: string; bytes: Map<string, Buffer> };
  let s1: number;
  try {
    await churn(p, rnd, 30);
    s1 = await p.journal.addMarker('crash-consistent', 'p1');
    old = { id: 'p1', bytes: await snapshot(p) };
    await p.sender.waitForAck(s1);
    await p.store.process();
  } finally {
    await p.close();
  }
  // The "backup" of the recovery site, taken now.
  fs.cpSync(join(t.dir, 'replica'), join(t.dir, 'replica-backup'), { recursive: true });
  p = await start(t.dir);
  try {
    await churn(p, rnd, 60);
    const s2 = await p.journal.addMarker('crash-consistent', 'p2');
    await p.sender.waitForAck(s2);
    assert.ok(p.journal.firstSeq > s1 + 1, 'the journal released what the backup lacks');
  } finally {
    await p.close();
  }
  fs.rmSync(join(t.dir, 'replica'), { recursive: true });
  fs.renameSync(join(t.dir, 'replica-backup'), join(t.dir, 'replica'));
  p = await start(t.dir);
  try {
    assert.equal(p.store.lastReceivedSeq(), s1, 'the restored replica resumes after p1');
    // Writes keep coming while the link re-bases.
    await churn(p, rnd, 10);
    await resyncAndCheck(p, old, ['p1']);
  } finally {
    await p.close();
    t.remove();
  }
});

test('the source lost its journal (the replica is ahead of it): re-base above the replica, resync, equality', async () => {
  const t = tempDir('osr-rebase-ahead-');
  const rnd = mulberry32(42);
  let p = await start(t.dir);
  let old: { id: string; bytes: Map<string, Buffer> };
  let acked: number;
  try {
    await churn(p, rnd, 30);
    const s1 = await p.journal.addMarker('crash-consistent', 'p1');
    old = { id: 'p1', bytes: await snapshot(p) };
    await churn(p, rnd, 20);
    acked = p.journal.lastSeq;
    await p.sender.waitForAck(acked);
    assert.ok(s1 < acked);
  } finally {
    await p.close();
  }
  // The source host crashed: its journal is gone, and its disks took writes the journal never recorded.
  fs.rmSync(join(t.dir, 'journal'), { recursive: true });
  p = await start(t.dir);
  try {
    for (const block of [1, 9, 20])
      await p.images.get('os')!.write(block * 64 * KiB, randomBytes(rnd, 64 * KiB));
    await resyncAndCheck(p, old, ['p1']);
    assert.ok(p.journal.firstSeq > acked, 'the stream went on above what the replica had');
    assert.equal(p.store.lastReceivedSeq(), p.journal.lastSeq);
  } finally {
    await p.close();
    t.remove();
  }
});

test('with rebaseOnLostResume false the sender stops in resync-required', async () => {
  const t = tempDir('osr-rebase-off-');
  let p = await start(t.dir);
  try {
    await churn(p, mulberry32(43), 10);
    await p.sender.waitForAck(p.journal.lastSeq);
  } finally {
    await p.close();
  }
  fs.rmSync(join(t.dir, 'journal'), { recursive: true });
  p = await startPipeline({
    dir: t.dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    sender: { rebaseOnLostResume: false },
  });
  try {
    await waitFor(() => p.sender.status().state === 'resync-required', 'the sender to stop');
    assert.match(p.sender.status().lastError ?? '', /source lost records/);
    assert.equal(p.journal.mode, 'normal', 'nothing was re-based');
  } finally {
    await p.close();
    t.remove();
  }
});

test('a re-based journal reopens at its base seq with the resync begin and every block dirty', async () => {
  const t = tempDir('osr-rebase-journal-');
  try {
    const disks = [{ id: 'os', sizeBytes: 1 * MiB }];
    const dir = join(t.dir, 'journal');
    const j = WriteJournal.open(dir, disks, { segmentBytes: 8 * KiB });
    const disk = j.attach('os', new MemoryBackend(1 * MiB));
    const rnd = mulberry32(44);
    for (let i = 0; i < 10; i++) await disk.write(i * 4 * KiB, randomBytes(rnd, 4 * KiB));
    assert.equal(await j.rebase(5), 11, 'above the journal when the resume seq is below its end');
    // Writes go on in the new stretch.
    await disk.write(0, randomBytes(rnd, 100));
    await j.close();
    const again = WriteJournal.open(dir, disks);
    try {
      assert.equal(again.firstSeq, 11);
      assert.equal(again.lastSeq, 12);
      assert.equal(again.mode, 'resync');
      assert.equal(again.status().dirtyBytes, 1 * MiB);
      const kinds = (await again.read(11, MiB)).map((e) => (e.kind === 'resync' ? e.phase : e.kind));
      assert.deepEqual(kinds, ['begin', 'write']);
      assert.equal(await again.rebase(100), 101, 'above the resume seq when it is beyond the journal');
      assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('seg-')).length, 1);
    } finally {
      await again.close();
    }
  } finally {
    t.remove();
  }
});

test('a re-base in the middle of a stream of writes, flushes and FUA writes drops what is unwritten and goes on', async () => {
  const t = tempDir('osr-rebase-busy-');
  try {
    const disks = [{ id: 'os', sizeBytes: 4 * MiB }];
    const dir = join(t.dir, 'journal');
    const j = WriteJournal.open(dir, disks, { segmentBytes: 64 * KiB });
    const disk = j.attach('os', new MemoryBackend(4 * MiB));
    const rnd = mulberry32(45);
    let stop = false;
    let done = 0;
    // Four writers with FUA and flushes, as NBD clients with requests in flight.
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const off = Math.floor(rnd() * (4 * MiB - 8 * KiB));
        await disk.write(off, randomBytes(rnd, 1 + Math.floor(rnd() * 8 * KiB)), { fua: i % 7 === w });
        if (i % 11 === 0) await disk.flush();
        done++;
      }
    });
    await waitFor(() => done > 200, 'the writers to get going');
    const base = await j.rebase(3);
    const at = done;
    await waitFor(() => done > at + 200, 'the writers to go on after the re-base');
    stop = true;
    await Promise.all(writers);
    assert.equal(j.firstSeq, base);
    const entries = await j.read(base, 64 * MiB);
    assert.equal(entries[0]!.kind, 'resync', 'the new stretch starts with the resync begin');
    entries.forEach((e, i) => assert.equal(e.seq, base + i));
    assert.ok(entries.length > 1, 'writes after the re-base are journaled');
    await j.close();
    const again = WriteJournal.open(dir, disks);
    try {
      assert.equal(again.firstSeq, base);
      assert.equal(again.mode, 'resync');
    } finally {
      await again.close();
    }
  } finally {
    t.remove();
  }
});
