/**
 * The initial copy reads several blocks at once: a failed read must still leave the stream without a hole (its
 * reserved seq is given up), or every later record would wait behind it forever.
 */
import * as assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import { runInitialCopy } from '../../src/dataplane/resync/initial-copy.js';
import { mulberry32, randomBytes, tempDir } from './source-support.js';

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
