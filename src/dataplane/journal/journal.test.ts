import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Change } from '../changes.js';
import { FileBackend } from '../nbd/file-backend.js';
import { MemoryBackend } from '../nbd/memory-backend.js';
import { applyChange, mulberry32, randomBytes, tempDir } from '../../../test/dataplane/source-support.js';
import { JournalCorruptError, ResyncRequiredError } from './errors.js';
import { WriteJournal } from './journal.js';
import type { JournalEntry } from './record.js';

const MiB = 1024 * 1024;
const disks = [
  { id: 'd0', sizeBytes: 4 * MiB },
  { id: 'd1', sizeBytes: 2 * MiB },
];

async function readAll(j: WriteJournal, from = j.firstSeq): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  for (let seq = from; ;) {
    const batch = await j.read(seq, 256 * 1024);
    if (batch.length === 0) return out;
    out.push(...batch);
    seq = batch[batch.length - 1]!.seq + 1;
  }
}

function segmentFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.osrj'))
    .sort()
    .map((n) => join(dir, n));
}

test('one sequence across disks; replaying the journal reproduces every disk; segments rotate and release', async () => {
  const t = tempDir();
  try {
    const j = WriteJournal.open(t.dir, disks, { segmentBytes: 256 * 1024 });
    const src = new Map([
      ['d0', new MemoryBackend(4 * MiB)],
      ['d1', new MemoryBackend(2 * MiB)],
    ]);
    const obs = new Map([...src].map(([id, b]) => [id, j.attach(id, b)]));
    const rnd = mulberry32(11);
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 300; i++) {
      const id = rnd() < 0.5 ? 'd0' : 'd1';
      const o = obs.get(id)!;
      const off = Math.floor(rnd() * (o.size - 70_000));
      const r = rnd();
      if (r < 0.8) ops.push(o.write(off, randomBytes(rnd, 1 + Math.floor(rnd() * 16_384))));
      else if (r < 0.9) ops.push(o.writeZeroes(off, 1 + Math.floor(rnd() * 70_000)));
      else ops.push(o.trim(off, 1 + Math.floor(rnd() * 200_000)));
      if (i % 50 === 49) ops.push(j.addMarker('crash-consistent', `p${i}`));
    }
    await Promise.all(ops);
    await j.flush();
    assert.ok(segmentFiles(t.dir).length > 3, 'small segments rotate');
    const entries = await readAll(j);
    assert.equal(entries.length, j.lastSeq);
    entries.forEach((e, i) => assert.equal(e.seq, i + 1));
    assert.equal(entries.filter((e) => e.kind === 'marker').length, 6);
    const replica = new Map([
      ['d0', new MemoryBackend(4 * MiB)],
      ['d1', new MemoryBackend(2 * MiB)],
    ]);
    for (const e of entries) await applyChange(replica, e as Change);
    for (const [id, b] of src) {
      assert.ok(
        (await replica.get(id)!.read(0, b.size)).equals(await b.read(0, b.size)),
        `disk ${id} matches`,
      );
    }
    // Reopen: the index is rebuilt from the files.
    await j.close();
    const j2 = WriteJournal.open(t.dir, disks, { segmentBytes: 256 * 1024 });
    assert.equal(j2.lastSeq, entries.length);
    assert.deepEqual(
      (await readAll(j2)).map((e) => e.seq),
      entries.map((e) => e.seq),
    );
    const before = segmentFiles(t.dir).length;
    j2.release(Math.floor(entries.length / 2));
    const after = segmentFiles(t.dir).length;
    assert.ok(after < before, 'acknowledged segments are deleted');
    assert.ok(j2.firstSeq <= Math.floor(entries.length / 2) + 1);
    await assert.rejects(j2.read(1, 1024), ResyncRequiredError);
    j2.release(j2.lastSeq);
    assert.equal(segmentFiles(t.dir).length, 1, 'the active segment stays');
    await j2.close();
  } finally {
    t.remove();
  }
});

test('appends of one tick share one write; concurrent flushes share fdatasyncs; FUA is durable on resolve', async () => {
  const t = tempDir();
  try {
    const j = WriteJournal.open(t.dir, disks);
    const o = j.attach('d0', new MemoryBackend(4 * MiB));
    const writes = Array.from({ length: 200 }, (_, i) => o.write(i * 4096, Buffer.alloc(4096, i)));
    await Promise.all(writes);
    assert.ok(j.status().appendCalls <= 2, `200 writes took ${j.status().appendCalls} write calls`);
    assert.equal(j.writtenSeq, 200);
    const flushes = Array.from({ length: 50 }, () => o.flush());
    await Promise.all(flushes);
    assert.equal(j.durableSeq, 200);
    assert.ok(j.status().syncCalls <= 2, `50 flushes took ${j.status().syncCalls} fdatasyncs`);
    await o.write(0, Buffer.alloc(512, 9), { fua: true });
    assert.equal(j.durableSeq, 201, 'a FUA write resolves only once durable');
    const seq = await j.addMarker('app-consistent', 'app-1');
    assert.equal(seq, 202);
    assert.equal(j.durableSeq, 202);
    await j.close();
  } finally {
    t.remove();
  }
});

test('a torn tail is cut on open and the sequence continues; nothing durable is lost', async () => {
  const t = tempDir();
  try {
    const j = WriteJournal.open(t.dir, disks);
    const o = j.attach('d0', new MemoryBackend(4 * MiB));
    for (let i = 0; i < 10; i++) await o.write(i * 1000, Buffer.alloc(1000, i + 1));
    await j.close();
    const [seg] = segmentFiles(t.dir);
    const good = fs.statSync(seg!).size;
    // A crash mid-append: half of an 11th record.
    const j0 = WriteJournal.open(join(t.dir, 'scratch'), disks);
    const o0 = j0.attach('d0', new MemoryBackend(4 * MiB));
    for (let i = 0; i < 11; i++) await o0.write(i * 1000, Buffer.alloc(1000, i + 1));
    await j0.close();
    const full = fs.readFileSync(segmentFiles(join(t.dir, 'scratch'))[0]!);
    fs.appendFileSync(seg!, full.subarray(good, good + 500));
    const j2 = WriteJournal.open(t.dir, disks);
    assert.equal(j2.lastSeq, 10);
    assert.equal(fs.statSync(seg!).size, good, 'torn bytes are truncated');
    const o2 = j2.attach('d0', new MemoryBackend(4 * MiB));
    await o2.write(0, Buffer.alloc(10, 7));
    await j2.flush();
    const entries = await readAll(j2);
    assert.deepEqual(
      entries.map((e) => e.seq),
      Array.from({ length: 11 }, (_, i) => i + 1),
    );
    await j2.close();
    // Garbage that is not even a header, and a corrupt last record, are torn tails too.
    fs.appendFileSync(seg!, Buffer.from('zzzz'));
    const j3 = WriteJournal.open(t.dir, disks);
    assert.equal(j3.lastSeq, 11);
    await j3.close();
    const bytes = fs.readFileSync(seg!);
    bytes[bytes.length - 3]! ^= 0x10;
    fs.writeFileSync(seg!, bytes);
    const j4 = WriteJournal.open(t.dir, disks);
    assert.equal(j4.lastSeq, 10, 'a last record failing its checksum is a torn tail');
    await j4.close();
  } finally {
    t.remove();
  }
});

test('a corrupt record with valid records after it refuses to open, and is reported by read', async () => {
  const t = tempDir();
  try {
    const j = WriteJournal.open(t.dir, disks);
    const o = j.attach('d1', new MemoryBackend(2 * MiB));
    for (let i = 0; i < 20; i++) await o.write(i * 4096, Buffer.alloc(4096, i + 1));
    await j.flush();
    const [seg] = segmentFiles(t.dir);
    const bytes = fs.readFileSync(seg!);
    const flipAt = 5 * (56 + 2 + 4096) + 100; // inside record 6's payload
    bytes[flipAt]! ^= 0x01;
    fs.writeFileSync(seg!, bytes);
    await assert.rejects(j.read(1, 1024 * 1024), (err: unknown) => {
      assert.ok(err instanceof JournalCorruptError);
      assert.equal(err.code, 'JOURNAL_CORRUPT');
      return true;
    });
    await j.close();
    assert.throws(() => WriteJournal.open(t.dir, disks), JournalCorruptError);
  } finally {
    t.remove();
  }
});

test('TRIM is journaled as exactly the whole granules the image zeroes', async () => {
  const t = tempDir();
  try {
    const size = 1 * MiB + 12_345;
    const img = join(t.dir, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(size, 0xaa));
    const file = await FileBackend.open(img, { mapPath: null });
    const j = WriteJournal.open(join(t.dir, 'j'), [{ id: 'd', sizeBytes: size }]);
    const o = j.attach('d', file);
    await o.trim(1000, 200_000);
    await o.trim(10, 100);
    await o.trim(size - 70_000, 70_000);
    await j.flush();
    const entries = await readAll(j);
    assert.deepEqual(
      entries.map((e) => (e.kind === 'zero' ? [e.offset, e.length] : e.kind)),
      [
        [65536, 131072],
        [1048576, 12345],
      ],
    );
    const replica = new Map([['d', new MemoryBackend(size)]]);
    await replica.get('d')!.write(0, Buffer.alloc(size, 0xaa));
    for (const e of entries) await applyChange(replica, e as Change);
    assert.ok((await replica.get('d')!.read(0, size)).equals(await file.read(0, size)));
    await o.close();
    await j.close();
  } finally {
    t.remove();
  }
});

test('beyond the cap the journal keeps a persisted dirty bitmap and needs resync', async () => {
  const t = tempDir();
  try {
    const j = WriteJournal.open(t.dir, disks, { capBytes: 64 * 1024 });
    const o0 = j.attach('d0', new MemoryBackend(4 * MiB));
    const o1 = j.attach('d1', new MemoryBackend(2 * MiB));
    for (let i = 0; i < 10; i++) await o0.write(i * 4096, Buffer.alloc(4096, 1));
    assert.equal(j.mode, 'normal');
    await o0.write(3 * MiB + 100, Buffer.alloc(30_000, 2));
    await o1.writeZeroes(MiB, 300_000);
    assert.equal(j.mode, 'overflow');
    assert.equal(j.resyncRequired, true);
    const stored = j.lastSeq;
    await o0.write(100, Buffer.alloc(10, 3));
    assert.equal(j.lastSeq, stored, 'nothing more is stored');
    await assert.rejects(j.addMarker('crash-consistent', 'x'), ResyncRequiredError);
    await j.close();
    const j2 = WriteJournal.open(t.dir, disks, { capBytes: 64 * 1024 });
    assert.equal(j2.mode, 'overflow', 'the overflow survives a restart');
    j2.release(j2.lastSeq);
    const ranges = j2.beginResync();
    assert.deepEqual(ranges.get('d0'), [
      { offset: 0, length: 65536 },
      { offset: 3 * MiB, length: 65536 },
    ]);
    assert.deepEqual(ranges.get('d1'), [{ offset: MiB, length: 5 * 65536 }]);
    assert.equal(j2.mode, 'resync');
    const o2 = j2.attach('d0', new MemoryBackend(4 * MiB));
    await o2.write(0, Buffer.alloc(10, 4));
    assert.equal(j2.lastSeq, stored + 2, 'the resync begin, then changes are journaled again');
    const begin = await j2.read(stored + 1, 1024);
    assert.deepEqual(
      begin.map((e) => (e.kind === 'resync' ? e.phase : e.kind)),
      ['begin', 'write'],
    );
    assert.equal(await j2.completeResync(), true);
    assert.equal(j2.resyncRequired, false);
    assert.equal(typeof (await j2.addMarker('crash-consistent', 'after')), 'number');
    await j2.close();
    const j3 = WriteJournal.open(t.dir, disks);
    assert.equal(j3.mode, 'normal');
    await j3.close();
  } finally {
    t.remove();
  }
});

test('a reserved slot holds later records back until it is filled', async () => {
  const t = tempDir();
  try {
    const j = WriteJournal.open(t.dir, disks);
    const o = j.attach('d0', new MemoryBackend(4 * MiB));
    const slot = j.reserve('d0', 0, 4096);
    let later = false;
    const w = o.write(8192, Buffer.alloc(10, 1)).then(() => (later = true));
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.equal(later, false);
    assert.equal(j.writtenSeq, 0);
    await slot.fill(Buffer.alloc(4096, 5));
    await w;
    const entries = await readAll(j);
    assert.deepEqual(
      entries.map((e) => [e.seq, e.kind, e.kind === 'write' ? e.offset : -1]),
      [
        [1, 'write', 0],
        [2, 'write', 8192],
      ],
    );
    await j.close();
  } finally {
    t.remove();
  }
});

test('resync brackets and tombstones round-trip through the record codec', async () => {
  const { encodeRecord, encodeTombstone, probeRecord } = await import('./record.js');
  for (const phase of ['begin', 'end'] as const) {
    const p = probeRecord(encodeRecord({ kind: 'resync', seq: 9, time: 5, phase }));
    assert.ok(p.status === 'ok');
    assert.deepEqual(p.entry, { kind: 'resync', seq: 9, time: 5, phase });
  }
  const t = probeRecord(encodeTombstone(12, 7, 'd0', 500));
  assert.ok(t.status === 'ok' && t.size === 500);
  assert.deepEqual(t.entry, { kind: 'zero', seq: 12, time: 7, diskId: 'd0', offset: 0, length: 0 });
  assert.throws(() => encodeTombstone(1, 1, 'd0', 40), RangeError);
});

test('an interrupted export voids its offline placeholders in place: same seqs, no seed needed, writes kept', async () => {
  const t = tempDir();
  const j = WriteJournal.open(t.dir, [{ id: 'd', sizeBytes: 1 << 20 }]);
  try {
    const disk = j.attach('d', new MemoryBackend(1 << 20));
    const a = j.reserve('d', 0, 4096);
    await a.fillOffline();
    await disk.write(8192, Buffer.alloc(512, 7));
    const b = j.reserve('d', 4096, 4096);
    await b.fillOffline();
    const before = await readAll(j);
    assert.deepEqual(
      before.map((e) => e.kind),
      ['offline', 'write', 'offline'],
    );
    assert.deepEqual(await j.voidOfflinePlaceholders(), [a.seq, b.seq]);
    const after = await readAll(j);
    assert.deepEqual(
      after.map((e) => [e.seq, e.kind]),
      before.map((e) => [e.seq, e.kind === 'offline' ? 'zero' : e.kind]),
    );
    for (const e of after) if (e.kind === 'zero') assert.equal(e.length, 0, 'a tombstone changes nothing');
    assert.deepEqual((after[1] as Extract<JournalEntry, { kind: 'write' }>).data, Buffer.alloc(512, 7));
    assert.deepEqual(await j.voidOfflinePlaceholders(), [], 'nothing left to void');
  } finally {
    await j.close();
    t.remove();
  }
});

test('streamed blocks: no bytes in the journal, read from the disk when sent, kept across a reopen, inside a bracket', async () => {
  const t = tempDir();
  try {
    let j = WriteJournal.open(t.dir, disks);
    const d0 = new MemoryBackend(4 * MiB);
    const obs = j.attach('d0', d0);
    const rnd = mulberry32(12);
    await obs.write(0, randomBytes(rnd, 2 * MiB));
    assert.throws(() => j.appendStreamed('d0', 0, MiB), /outside a streamed copy/);
    j.beginStreamedCopy();
    const first = j.appendStreamed('d0', 0, MiB);
    j.appendStreamed('d0', MiB, MiB);
    await assert.rejects(j.addMarker('crash-consistent', 'inside'), { code: 'COPY_IN_PROGRESS' });
    await j.flush();
    assert.ok(j.storedBytes < 2 * MiB + 4096, 'the two streamed blocks take a record header each, no data');
    assert.ok(j.bytesAfter(first - 1) >= 2 * MiB, 'the backlog counts the blocks to send');
    await assert.rejects(readAll(j, first), /no block source for disk d0/);
    j.setBlockSource('d0', (o, l) => obs.readApplied(o, l));
    // A write after the blocks were journaled: the block read at send time holds it (the bracket allows that).
    const later = randomBytes(rnd, 1000);
    await obs.write(MiB + 10, later);
    const [a, b] = await readAll(j, first);
    assert.ok(a?.kind === 'write' && a.data.equals(await d0.read(0, MiB)));
    assert.ok(b?.kind === 'write' && b.data.subarray(10, 1010).equals(later));
    await j.close();

    j = WriteJournal.open(t.dir, disks);
    assert.ok(j.bytesAfter(first - 1) >= 2 * MiB, 'a reopened journal knows its streamed blocks');
    j.setBlockSource('d0', (o, l) => d0.read(o, l));
    const again = await readAll(j, first);
    assert.equal(again.length, 3, 'the two blocks and the later write');
    assert.ok(again[0]?.kind === 'write' && again[0].data.equals(await d0.read(0, MiB)));
    j.beginStreamedCopy();
    j.beginStreamedCopy();
    assert.equal(await j.endStreamedCopy(), undefined, 'another copy still streams: no end yet');
    j.abandonStreamedCopy();
    assert.equal(await j.addMarker('crash-consistent', 'p'), j.lastSeq, 'markers again once no copy is open');
    j.beginStreamedCopy();
    const end = await j.endStreamedCopy();
    assert.equal(end, j.lastSeq, 'the last copy appends the end');
    const tail = await readAll(j, j.lastSeq);
    assert.deepEqual(
      tail.map((e) => (e.kind === 'resync' ? e.phase : e.kind)),
      ['end'],
    );
    await j.close();
  } finally {
    t.remove();
  }
});
