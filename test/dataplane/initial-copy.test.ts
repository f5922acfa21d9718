/**
 * The journaled initial copy reads several blocks at once: a failed read must still leave the stream without a
 * hole (its reserved seq is given up), or every later record would wait behind it forever. The streamed copy
 * reads at send time: a failed read there is retried by the sender, and the replica cuts no point inside it.
 */
import * as assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import { runInitialCopy } from '../../src/dataplane/resync/initial-copy.js';
import { startPipeline } from './pipeline-support.js';
import { makeIdentity, mulberry32, randomBytes, tempDir, waitFor } from './source-support.js';

const MiB = 1024 * 1024;

/** A disk whose reads fail in one range (a bad sector), as a real disk's can. */
class BadSectorDisk extends MemoryBackend {
  constructor(
    size: number,
    private readonly bad: number,
  ) {
    super(size);
  }

  override read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (offset <= this.bad && this.bad < offset + length) return Promise.reject(new Error('EIO: bad sector'));
    return super.read(offset, length, into);
  }
}

test('a read failing mid-copy fails the copy, and the journal keeps going: no seq is left unfilled', async () => {
  const t = tempDir('osr-copy-fail-');
  try {
    const disks = [{ id: 'os', sizeBytes: 8 * MiB }];
    const journal = WriteJournal.open(join(t.dir, 'journal'), disks);
    const inner = new BadSectorDisk(8 * MiB, 5 * MiB + 100);
    const rnd = mulberry32(4);
    for (let b = 0; b < 8; b++) await inner.write(b * MiB, randomBytes(rnd, MiB));
    const disk = journal.attach('os', inner);
    try {
      await assert.rejects(
        runInitialCopy({ journal, disks: [{ id: 'os', backend: disk }], depth: 4 }),
        /bad sector/,
      );
      const seq = await journal.addMarker('crash-consistent', 'after');
      assert.equal(seq, journal.lastSeq);
      const entries = await journal.read(1, 64 * MiB);
      assert.deepEqual(
        entries.map((e) => e.seq),
        Array.from({ length: seq }, (_, i) => i + 1),
        'every seq is in the journal',
      );
      const failed = entries.find((e) => e.kind === 'write' && e.offset === 5 * MiB);
      assert.ok(
        failed && failed.kind === 'write' && failed.data.length === 0,
        'the failed block was given up',
      );
    } finally {
      await journal.close();
    }
  } finally {
    t.remove();
  }
});

test('a streamed copy into a replica store: no point inside it, a failing read is retried, the replica ends exact', async () => {
  const t = tempDir('osr-copy-stream-');
  const id = { source: makeIdentity(t.dir, 'source'), recovery: makeIdentity(t.dir, 'recovery') };
  const p = await startPipeline({
    dir: join(t.dir, 'pipe'),
    disks: [{ id: 'os', sizeBytes: 8 * MiB }],
    ...id,
    sender: { batchBytes: 256 * 1024 },
  });
  try {
    const rnd = mulberry32(5);
    const image = p.images.get('os')!;
    for (let b = 0; b < 6; b++) await image.write(b * MiB + 4096, randomBytes(rnd, MiB - 8192));
    // The source fails to read one block the first times the sender reaches it (a transient disk error).
    let failures = 0;
    const disk = p.disks.get('os')!;
    const flaky = Object.create(disk) as typeof disk;
    flaky.readApplied = (o, l) => {
      if (o === 3 * MiB && failures < 2) {
        failures++;
        return Promise.reject(new Error('EIO: transient'));
      }
      return disk.readApplied(o, l);
    };
    let refusedInside = '';
    const writes: Array<Promise<void>> = [];
    const result = await runInitialCopy({
      journal: p.journal,
      disks: [{ id: 'os', backend: flaky }],
      waitForAck: (seq) => p.sender.waitForAck(seq),
      onProgress: (pr) => {
        if (pr.copiedBytes === MiB) {
          writes.push(disk.write(5 * MiB, randomBytes(rnd, 200_000)));
          writes.push(
            p.store.cutLatest().then(
              () => void (refusedInside = 'a point was cut'),
              (e: { code?: string }) => void (refusedInside = e.code ?? 'no code'),
            ),
          );
        }
      },
    });
    await Promise.all(writes);
    assert.equal(refusedInside, 'RESYNC_IN_PROGRESS', 'the replica cuts no point inside the copy');
    assert.equal(failures, 2, 'the failed reads were retried by the sender');
    assert.match(p.sender.status().lastError ?? '', /EIO: transient/);
    await p.sender.waitForAck(result.lastSeq);
    assert.ok(p.store.status().directBatches > 0, 'the copy went straight into the base');
    const seq = await p.journal.addMarker('crash-consistent', 'after-copy');
    await p.sender.waitForAck(seq);
    await waitFor(() => p.store.latestProcessed()?.id === 'after-copy', 'the point to be processed');
    const source = await image.read(0, image.size);
    const view = await p.store.openView('os', 'after-copy');
    try {
      assert.ok((await view.read(0, view.size)).equals(source), 'the point equals the source');
    } finally {
      await view.close();
    }
    assert.ok(
      (await p.store.openBase('os').read(0, image.size)).equals(source),
      'the base equals the source',
    );
  } finally {
    await p.close();
    t.remove();
  }
});

test('the sender reads ahead: several streamed blocks are read at once, and the replica still ends exact', async () => {
  const t = tempDir('osr-copy-ahead-');
  const id = { source: makeIdentity(t.dir, 'source'), recovery: makeIdentity(t.dir, 'recovery') };
  try {
    for (const readAhead of [1, 4]) {
      const p = await startPipeline({
        dir: join(t.dir, `pipe-${readAhead}`),
        disks: [{ id: 'os', sizeBytes: 12 * MiB }],
        ...id,
        sender: { batchBytes: MiB, readAhead },
      });
      try {
        const rnd = mulberry32(6);
        const image = p.images.get('os')!;
        for (let b = 0; b < 12; b++) await image.write(b * MiB, randomBytes(rnd, MiB));
        // A slow disk: every read takes 20 ms, so reads issued together are seen together.
        const disk = p.disks.get('os')!;
        const slow = Object.create(disk) as typeof disk;
        let reading = 0;
        let most = 0;
        slow.readApplied = async (o, l) => {
          most = Math.max(most, ++reading);
          await new Promise((r) => setTimeout(r, 20));
          try {
            return await disk.readApplied(o, l);
          } finally {
            reading--;
          }
        };
        const result = await runInitialCopy({
          journal: p.journal,
          disks: [{ id: 'os', backend: slow }],
          waitForAck: (seq) => p.sender.waitForAck(seq),
        });
        await p.sender.waitForAck(result.lastSeq);
        if (readAhead === 1) assert.equal(most, 1, 'without read-ahead one block is read at a time');
        else assert.ok(most >= 3, `reads overlap with read-ahead 4 (at most ${most} at once)`);
        assert.ok(
          (await p.store.openBase('os').read(0, image.size)).equals(await image.read(0, image.size)),
          'the base equals the source',
        );
      } finally {
        await p.close();
      }
    }
  } finally {
    t.remove();
  }
});

test('a streamed copy cut short goes on from its first unacknowledged block: nothing before it is read again, the replica ends exact', async () => {
  const t = tempDir('osr-copy-resume-');
  const id = { source: makeIdentity(t.dir, 'source'), recovery: makeIdentity(t.dir, 'recovery') };
  const p = await startPipeline({
    dir: join(t.dir, 'pipe'),
    disks: [
      { id: 'os', sizeBytes: 6 * MiB },
      { id: 'data', sizeBytes: 6 * MiB },
    ],
    ...id,
    sender: { batchBytes: MiB },
  });
  try {
    const rnd = mulberry32(7);
    for (const d of ['os', 'data']) {
      for (let b = 0; b < 6; b++) await p.images.get(d)!.write(b * MiB, randomBytes(rnd, MiB));
    }
    const reads: string[] = [];
    const disks = ['os', 'data'].map((d) => {
      const disk = p.disks.get(d)!;
      const counted = Object.create(disk) as typeof disk;
      counted.readApplied = (o, l) => {
        reads.push(`${d}@${o / MiB}`);
        return disk.readApplied(o, l);
      };
      return { id: d, backend: counted };
    });
    // The first copy stops after 8 of its 12 blocks were acknowledged.
    const stop = new AbortController();
    let resumeAt: { diskId: string; offset: number } | null | undefined;
    await assert.rejects(
      runInitialCopy({
        journal: p.journal,
        disks,
        maxJournalBytes: 2 * MiB,
        waitForAck: (seq) => p.sender.waitForAck(seq),
        signal: stop.signal,
        onProgress: (pr) => {
          resumeAt = pr.resumeAt;
          if (pr.copiedBytes >= 8 * MiB) stop.abort(new Error('cut short'));
        },
      }),
      /cut short/,
    );
    assert.ok(resumeAt, 'the progress names where to go on');
    assert.equal(resumeAt.diskId, 'data');
    // Writes go on meanwhile, before and after the position.
    await p.disks.get('os')!.write(MiB + 512, randomBytes(rnd, 4096));
    await p.disks.get('data')!.write(5 * MiB, randomBytes(rnd, 8192));
    reads.length = 0;
    const progress: number[] = [];
    const result = await runInitialCopy({
      journal: p.journal,
      disks,
      waitForAck: (seq) => p.sender.waitForAck(seq),
      resumeFrom: resumeAt,
      onProgress: (pr) => progress.push(pr.copiedBytes),
    });
    await p.sender.waitForAck(result.lastSeq);
    assert.equal(result.totalBytes, 12 * MiB);
    assert.ok(progress[0]! > resumeAt.offset + 6 * MiB, 'the blocks before the position count as copied');
    const again = reads.filter((r) => r.startsWith('os@') || Number(r.slice(5)) < resumeAt!.offset / MiB);
    assert.deepEqual(again, [], 'no block before the position was read by the second copy');
    for (const d of ['os', 'data']) {
      const image = p.images.get(d)!;
      assert.ok(
        (await p.store.openBase(d).read(0, image.size)).equals(await image.read(0, image.size)),
        `the replica of ${d} equals the source`,
      );
    }
  } finally {
    await p.close();
    t.remove();
  }
});
