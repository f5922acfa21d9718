/**
 * Resync of every block (`runResync` with scope `all`, original-location failback) on a journal in normal mode:
 * the stream carries the resync bracket, so the replica refuses to cut a point while blocks arrive out of write
 * order, and the journal records the resync as durable intent until its end is durable.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ResyncRequiredError } from '../../src/dataplane/journal/errors.js';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import { runResync } from '../../src/dataplane/resync/resync.js';
import type { TestIdentity as TlsIdentity } from './source-support.js';
import { readAll, startPipeline } from './pipeline-support.js';
import { makeIdentity, mulberry32, randomBytes, tempDir } from './source-support.js';

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

test("scope 'all' on a journal in normal mode sends the resync bracket and brings the replica level", async () => {
  const t = tempDir('osr-resync-all-');
  const p = await startPipeline({ dir: t.dir, disks: DISKS, source: src, recovery: dst });
  try {
    const rnd = mulberry32(21);
    for (let i = 0; i < 20; i++) {
      const d = DISKS[i % 2]!;
      await p.disks.get(d.id)!.write(Math.floor(rnd() * (d.sizeBytes - 8 * KiB)), randomBytes(rnd, 8 * KiB));
    }
    const before = await p.journal.addMarker('crash-consistent', 'before');
    await p.sender.waitForAck(before);
    await p.store.process();
    // The two sides diverge behind the journal's back (the replica ran as primary while this side was down).
    const diverged = [0, 3, 17];
    for (const block of diverged)
      await p.images.get('os')!.write(block * 64 * KiB, randomBytes(rnd, 64 * KiB));
    assert.equal(p.journal.mode, 'normal');

    let checkedInside = false;
    const result = await runResync({
      journal: p.journal,
      disks: p.disks,
      scope: 'all',
      blockSize: 64 * KiB,
      remoteHashes: async (id, bs, offs) => {
        if (!checkedInside) {
          checkedInside = true;
          // The begin was journaled before the first hash request and the link has delivered it.
          assert.equal(p.journal.mode, 'resync', 'the journal holds the whole-disk resync as intent');
          assert.ok(fs.existsSync(join(p.journal.dir, 'dirty.osrb')), 'the intent is on disk');
          await assert.rejects(p.journal.addMarker('crash-consistent', 'inside'), ResyncRequiredError);
          await p.store.process();
          assert.equal(p.store.status().resyncing, true, 'the replica knows a resync began');
          await assert.rejects(p.store.cutLatest(), { code: 'RESYNC_IN_PROGRESS' });
        }
        return p.sender.requestHashes(id, bs, offs);
      },
      waitForAck: (seq) => p.sender.waitForAck(seq),
    });
    assert.ok(checkedInside);
    assert.equal(result.complete, true);
    assert.equal(result.blocksCompared, (2 * MiB + 1 * MiB) / (64 * KiB));
    assert.equal(result.blocksDiffering, diverged.length, 'only the diverged blocks are sent');
    assert.equal(p.journal.mode, 'normal');
    assert.equal(p.journal.resyncRequired, false);
    assert.equal(fs.existsSync(join(p.journal.dir, 'dirty.osrb')), false, 'the intent is gone after the end');

    const final = await p.journal.addMarker('crash-consistent', 'after');
    await p.sender.waitForAck(final);
    await p.store.process();
    assert.equal(p.store.status().resyncing, false, 'the resync end reached the replica');
    assert.deepEqual(
      p.store.points().map((x) => x.id),
      ['before', 'after'],
      'the point from before the resync stays, the one after is cut',
    );
    for (const d of DISKS) {
      const source = await readAll(p.images.get(d.id)!);
      assert.ok((await readAll(p.store.openBase(d.id))).equals(source), `base of ${d.id}`);
    }
  } finally {
    await p.close();
    t.remove();
  }
});

test("a scope 'all' resync cut short leaves the journal resync-required with every block dirty", async () => {
  const t = tempDir('osr-resync-all-crash-');
  const disks = [{ id: 'os', sizeBytes: 1 * MiB }];
  const dir = join(t.dir, 'journal');
  try {
    const journal = WriteJournal.open(dir, disks);
    const disk = journal.attach('os', new MemoryBackend(1 * MiB));
    // The other side fails while the blocks are compared, as a crash of the resync would.
    await assert.rejects(
      runResync({
        journal,
        disks: new Map([['os', disk]]),
        scope: 'all',
        remoteHashes: () => Promise.reject(new Error('link lost')),
        waitForAck: () => Promise.resolve(),
      }),
      /link lost/,
    );
    assert.equal(journal.mode, 'resync');
    await journal.close();
    const reopened = WriteJournal.open(dir, disks);
    try {
      assert.equal(reopened.mode, 'resync', 'the interrupted resync is remembered');
      assert.equal(reopened.resyncRequired, true);
      assert.equal(reopened.status().dirtyBytes, 1 * MiB, 'every block is still to compare');
      const kinds = (await reopened.read(1, 1 << 20)).map((e) => (e.kind === 'resync' ? e.phase : e.kind));
      assert.deepEqual(kinds, ['begin'], 'the stream holds the open bracket');
    } finally {
      await reopened.close();
    }
  } finally {
    t.remove();
  }
});
