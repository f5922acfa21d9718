import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { afterEach, describe, test } from 'node:test';
import type { Change, DiskSpec } from '../changes.js';
import { ReplicaError } from './errors.js';
import { ReplicaStore } from './replica-store.js';
import { readState } from './state-file.js';
import { ChangeGenerator, DiskModel, tempDir } from './test-support.js';

const DISKS: DiskSpec[] = [
  { id: 'disk-0', sizeBytes: 512 * 1024 + 777 },
  { id: 'disk-1', sizeBytes: 300 * 1024 },
];

const dirs: string[] = [];
function dir(): string {
  const d = tempDir();
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

async function assertPoint(store: ReplicaStore, model: DiskModel, pointId: string): Promise<void> {
  for (const d of DISKS) {
    const view = await store.openView(d.id, pointId);
    try {
      const got = await view.read(0, d.sizeBytes);
      const want = model.atPoint.get(pointId)!.get(d.id)!;
      assert.ok(got.equals(want), `disk ${d.id} at point ${pointId} differs from the model`);
    } finally {
      await view.close();
    }
  }
}

function rejectsWith(code: string): (err: unknown) => boolean {
  return (err) => err instanceof ReplicaError && err.code === code;
}

describe('ReplicaStore', () => {
  test('receive is durable, idempotent for old seqs, and refuses gaps and bad ranges', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 1 });
    const changes = gen.next(30);
    let store = await ReplicaStore.open(d, { disks: DISKS });
    assert.equal(store.lastReceivedSeq(), 0);
    await store.receive(changes.slice(0, 20));
    await store.receive(changes.slice(10, 25)); // overlap: 11..20 ignored
    assert.equal(store.lastReceivedSeq(), 25);
    await assert.rejects(store.receive(changes.slice(26, 28)), rejectsWith('SEQUENCE_GAP'));
    await assert.rejects(
      store.receive([{ kind: 'write', seq: 26, time: 1, diskId: 'nope', offset: 0, data: Buffer.alloc(1) }]),
      rejectsWith('INVALID_CHANGE'),
    );
    await assert.rejects(
      store.receive([
        { kind: 'zero', seq: 26, time: 1, diskId: 'disk-1', offset: 300 * 1024 - 1, length: 2 },
      ]),
      rejectsWith('INVALID_CHANGE'),
    );
    assert.equal(store.lastReceivedSeq(), 25);
    await store.close();
    store = await ReplicaStore.open(d, { disks: DISKS });
    assert.equal(store.lastReceivedSeq(), 25);
    assert.equal(store.status().pendingChanges, 25);
    await store.receive(changes.slice(25));
    assert.equal(store.lastReceivedSeq(), 30);
    await store.close();
    await assert.rejects(ReplicaStore.open(d, { disks: [DISKS[0]!] }), rejectsWith('DISKS_MISMATCH'));
  });

  test('processed markers become points whose views equal the model; pending markers are flagged', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 2 });
    const model = new DiskModel(DISKS);
    const store = await ReplicaStore.open(d, { disks: DISKS, batchChanges: 7 });
    try {
      const changes = [...gen.next(60), gen.marker('app-consistent'), ...gen.next(20)];
      changes.forEach((c) => model.apply(c));
      await store.receive(changes);
      const markers = changes.filter((c) => c.kind === 'marker');
      assert.ok(store.points().every((p) => p.pending));
      assert.equal(store.points().length, markers.length);
      await store.process({ uptoSeq: 40 });
      assert.equal(store.lastProcessedSeq(), 40);
      await store.process();
      assert.equal(store.lastProcessedSeq(), 81);
      assert.equal(store.points().filter((p) => !p.pending).length, markers.length);
      for (const p of store.points()) await assertPoint(store, model, p.id);
      assert.equal(
        store.latestProcessed('app-consistent')?.id,
        markers.at(-1)!.kind === 'marker' ? (markers.at(-1) as { pointId: string }).pointId : '',
      );
      const st = store.status();
      assert.equal(st.pendingChanges, 0);
      assert.equal(st.lastReceivedSeq, 81);
    } finally {
      await store.close();
    }
  });

  test('cutLatest processes everything and cuts a point equal to all received changes', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 3, markerRate: 0 });
    const model = new DiskModel(DISKS);
    const store = await ReplicaStore.open(d, { disks: DISKS });
    try {
      const changes = gen.next(40);
      changes.forEach((c) => model.apply(c));
      await store.receive(changes);
      const p = await store.cutLatest();
      assert.equal(p.seq, 41);
      model.snapshotAs(p.id, p.seq);
      await assertPoint(store, model, p.id);
      assert.equal((await store.cutLatest()).id, p.id, 'nothing new: the same point');
      // The next change from the source has seq 41: it must be saved as "after" the cut point.
      const more = gen.next(10);
      more.forEach((c) => model.apply(c));
      await store.receive(more);
      await store.process();
      await assertPoint(store, model, p.id);
    } finally {
      await store.close();
    }
  });

  test('a point is listed as processed only once every change before it is in the base', async () => {
    const d = dir();
    const model = new DiskModel(DISKS);
    // The first marker ends direct apply, so everything below goes through pending + undo, in one apply batch.
    const store = await ReplicaStore.open(d, { disks: DISKS });
    try {
      const first: Change[] = [
        { kind: 'write', seq: 1, time: 1, diskId: 'disk-0', offset: 0, data: Buffer.alloc(1000, 1) },
        { kind: 'marker', seq: 2, time: 2, markerType: 'crash-consistent', pointId: 'p0' },
      ];
      first.forEach((c) => model.apply(c));
      await store.receive(first);
      await store.process();
      // Writes above the store's 64 KiB synchronous limit go to the thread pool: their completion comes back in a
      // later turn of the event loop, after the undo records (and the point) were saved.
      const batch: Change[] = [
        { kind: 'write', seq: 3, time: 3, diskId: 'disk-0', offset: 0, data: Buffer.alloc(300 * 1024, 7) },
        { kind: 'write', seq: 4, time: 4, diskId: 'disk-1', offset: 4096, data: Buffer.alloc(200 * 1024, 9) },
        { kind: 'marker', seq: 5, time: 5, markerType: 'crash-consistent', pointId: 'p1' },
        { kind: 'write', seq: 6, time: 6, diskId: 'disk-0', offset: 100, data: Buffer.alloc(100 * 1024, 3) },
      ];
      batch.forEach((c) => model.apply(c));
      await store.receive(batch);
      let done = false;
      let turns = 0;
      const seen: string[] = [];
      const watch = new Promise<void>((resolve) => {
        const look = (): void => {
          turns++;
          for (const p of store.points()) {
            if (!p.pending && store.lastProcessedSeq() < p.seq - 1)
              seen.push(`${p.id} at applied seq ${store.lastProcessedSeq()}`);
          }
          if (done) resolve();
          else setImmediate(look);
        };
        setImmediate(look);
      });
      await store.process();
      done = true;
      await watch;
      assert.ok(turns > 1, 'the batch took several turns of the event loop');
      assert.deepEqual(seen, [], 'no point was listed as processed before the changes it holds were applied');
      await assertPoint(store, model, 'p1');
    } finally {
      await store.close();
    }
  });

  test('views stay stable while new changes are applied underneath', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 4, markerRate: 0 });
    const model = new DiskModel(DISKS);
    const store = await ReplicaStore.open(d, { disks: DISKS, batchChanges: 3 });
    try {
      const first = [...gen.next(30), gen.marker()];
      first.forEach((c) => model.apply(c));
      await store.receive(first);
      await store.process();
      const pointId = (first.at(-1) as { pointId: string }).pointId;
      const views = await Promise.all(DISKS.map((x) => store.openView(x.id, pointId)));
      const more = gen.next(300);
      await store.receive(more);
      store.startProcessor();
      let reads = 0;
      while (store.lastProcessedSeq() < store.lastReceivedSeq() || reads < 20) {
        for (const [i, v] of views.entries()) {
          const spec = DISKS[i]!;
          const len = 1 + ((reads * 7919) % spec.sizeBytes);
          const off = (reads * 104729) % (spec.sizeBytes - len + 1);
          const got = await v.read(off, len);
          const want = model.atPoint
            .get(pointId)!
            .get(spec.id)!
            .subarray(off, off + len);
          assert.ok(got.equals(want), `read ${reads} of ${spec.id} at ${off}+${len} changed under the view`);
        }
        reads++;
        if (reads > 100_000) assert.fail('processor did not finish');
      }
      await store.stopProcessor();
      for (const v of views) await v.close();
      await assertPoint(store, model, pointId);
    } finally {
      await store.close();
    }
  });

  test('prune keeps the newest point and points in use, and the survivors stay exact', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 5, markerRate: 0 });
    const model = new DiskModel(DISKS);
    const store = await ReplicaStore.open(d, { disks: DISKS, undoSegmentBytes: 64 * 1024, batchChanges: 10 });
    try {
      const all: Change[] = [];
      for (let i = 0; i < 6; i++) all.push(...gen.next(15), gen.marker());
      all.forEach((c) => model.apply(c));
      await store.receive(all);
      await store.process();
      const pts = store.points();
      assert.equal(pts.length, 6);
      const inUse = await store.openView('disk-0', pts[1]!.id);
      const undoBefore = store.status().undoBytes;
      await store.prune(new Date(pts[4]!.time + 1), 0);
      assert.deepEqual(
        store.points().map((p) => p.id),
        pts.slice(1).map((p) => p.id),
        'the point in use (and newer) survive',
      );
      await inUse.close();
      await store.prune(new Date(pts[4]!.time + 1), 0);
      assert.deepEqual(
        store.points().map((p) => p.id),
        pts.slice(5).map((p) => p.id),
      );
      assert.ok(store.status().undoBytes < undoBefore, 'undo segments were freed');
      await store.prune(new Date(pts[5]!.time + 10_000_000), 0);
      assert.equal(store.points().length, 1, 'the newest point is always kept');
      await assertPoint(store, model, pts[5]!.id);
    } finally {
      await store.close();
    }
  });

  test('before the first point batches go straight into the base; from the first marker on through pending + undo', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 31, markerRate: 0 });
    const model = new DiskModel(DISKS);
    const store = await ReplicaStore.open(d, { disks: DISKS });
    try {
      const initial = gen.next(40);
      initial.forEach((c) => model.apply(c));
      await store.receive(initial.slice(0, 25));
      await store.receive(initial.slice(20));
      let st = store.status();
      assert.equal(st.directBatches, 2);
      assert.equal(st.pendingChanges, 0, 'nothing went to the pending log');
      assert.equal(st.lastProcessedSeq, 40, 'applied as received');
      assert.equal(st.undoBytes, 0, 'no undo record: there is no point to roll back to');
      for (const spec of DISKS) {
        assert.ok((await store.openBase(spec.id).read(0, spec.sizeBytes)).equals(model.disks.get(spec.id)!));
      }
      // The first marker ends it: every later change must be undoable.
      const later = [gen.marker(), ...gen.next(20), gen.marker()];
      later.forEach((c) => model.apply(c));
      await store.receive(later.slice(0, 5));
      await store.receive(later.slice(5));
      st = store.status();
      assert.equal(st.directBatches, 2, 'a batch with a marker is never applied directly');
      assert.equal(st.pendingChanges, later.length);
      await store.process();
      await store.receive(gen.next(5));
      assert.equal(store.status().directBatches, 2, 'not after the first point either');
      assert.equal(store.points().length, 2);
      await assertPoint(store, model, 'p1');
      await assertPoint(store, model, 'p2');
    } finally {
      await store.close();
    }
  });

  test('group commits: a staged batch is acknowledged only once the state file names it, in order, while the next batches stage', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 33, markerRate: 0 });
    const model = new DiskModel(DISKS);
    const store = await ReplicaStore.open(d, { disks: DISKS });
    try {
      const seen: Array<{ seq: number; onDisk: number }> = [];
      const durables: Array<Promise<void>> = [];
      for (let i = 0; i < 40; i++) {
        const batch = gen.next(3);
        batch.forEach((c) => model.apply(c));
        const last = batch[batch.length - 1]!.seq;
        const { durable } = await store.stage(batch);
        durables.push(
          durable.then(() => {
            seen.push({ seq: last, onDisk: readState(`${d}/state.osr`)?.appliedSeq ?? 0 });
          }),
        );
      }
      await Promise.all(durables);
      assert.equal(seen.length, 40);
      for (const [i, s] of seen.entries()) {
        assert.ok(s.onDisk >= s.seq, `batch up to ${s.seq} acknowledged with the state file at ${s.onDisk}`);
        if (i > 0) assert.ok(s.seq > seen[i - 1]!.seq, 'acknowledged in order');
      }
      assert.equal(store.status().directBatches, 40);
      assert.ok(new Set(seen.map((s) => s.onDisk)).size < 40, 'commits covered several batches each');
      for (const spec of DISKS) {
        assert.ok((await store.openBase(spec.id).read(0, spec.sizeBytes)).equals(model.disks.get(spec.id)!));
      }
    } finally {
      await store.close();
    }
    const reopened = await ReplicaStore.open(d, { disks: DISKS });
    try {
      assert.equal(reopened.lastReceivedSeq(), 120, 'the last commit is durable');
    } finally {
      await reopened.close();
    }
  });

  test('a direct batch whose state write was lost is replayed by the sender and ends in the same bytes', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 32, markerRate: 0 });
    const model = new DiskModel(DISKS);
    const all = gen.next(60);
    all.forEach((c) => model.apply(c));
    let store = await ReplicaStore.open(d, { disks: DISKS });
    await store.receive(all.slice(0, 20));
    await store.close();
    const stateFile = `${d}/state.osr`;
    const stateAt20 = fs.readFileSync(stateFile);
    store = await ReplicaStore.open(d, { disks: DISKS });
    await store.receive(all.slice(20, 45));
    await store.close();
    // A crash after the base writes of 21..45 but before their state write: the state still says 20.
    fs.writeFileSync(stateFile, stateAt20);
    store = await ReplicaStore.open(d, { disks: DISKS });
    try {
      assert.equal(store.lastReceivedSeq(), 20, 'the sender is asked to resend from 21');
      await store.receive(all.slice(20));
      assert.equal(store.lastReceivedSeq(), 60);
      for (const spec of DISKS) {
        const base = await store.openBase(spec.id).read(0, spec.sizeBytes);
        assert.ok(
          base.equals(model.disks.get(spec.id)!),
          `disk ${spec.id} equals the model after the replay`,
        );
      }
    } finally {
      await store.close();
    }
  });

  test('a batch received while the processor applies a long run is taken without waiting for the run', async () => {
    const big: DiskSpec[] = [{ id: 'disk-0', sizeBytes: 64 * 1024 * 1024 }];
    const store = await ReplicaStore.open(dir(), { disks: big });
    try {
      const t = Date.now();
      let seq = 0;
      await store.receive([
        { kind: 'marker', seq: ++seq, time: t, markerType: 'crash-consistent', pointId: 'p' },
      ]);
      const writes: Change[] = [];
      for (let i = 0; i < 48; i++) {
        writes.push({
          kind: 'write',
          seq: ++seq,
          time: t,
          diskId: 'disk-0',
          offset: i * 1024 * 1024,
          data: Buffer.alloc(1024 * 1024, i + 1),
        });
      }
      await store.receive(writes);
      const order: string[] = [];
      const run = store.process().then(() => order.push('processed'));
      // Let the run start and take its lock.
      await new Promise((r) => setImmediate(r));
      const taken = store
        .receive([
          { kind: 'write', seq: ++seq, time: t, diskId: 'disk-0', offset: 0, data: Buffer.alloc(4096, 7) },
        ])
        .then(() => order.push('taken'));
      await Promise.all([run, taken]);
      assert.deepEqual(order, ['taken', 'processed']);
      await store.process();
      assert.equal((await store.openBase('disk-0').read(0, 1))[0], 7);
    } finally {
      await store.close();
    }
  });

  test('directApply: false keeps every batch in the pending log until processed', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 33, markerRate: 0 });
    const store = await ReplicaStore.open(d, { disks: DISKS, directApply: false });
    try {
      await store.receive(gen.next(10));
      assert.equal(store.status().pendingChanges, 10);
      assert.equal(store.status().directBatches, 0);
      assert.equal(await store.process(), 10);
    } finally {
      await store.close();
    }
  });

  test('the one gap accepted is a jump forward to a resync begin (a re-based stream)', async () => {
    const d = dir();
    const gen = new ChangeGenerator({ disks: DISKS, seed: 34, markerRate: 0 });
    const store = await ReplicaStore.open(d, { disks: DISKS });
    try {
      await store.receive([...gen.next(5), gen.marker()]);
      await assert.rejects(
        store.receive([{ kind: 'resync', seq: 20, time: 1, phase: 'end' }]),
        rejectsWith('SEQUENCE_GAP'),
      );
      await assert.rejects(
        store.receive([{ kind: 'zero', seq: 20, time: 1, diskId: 'disk-1', offset: 0, length: 10 }]),
        rejectsWith('SEQUENCE_GAP'),
      );
      await store.receive([
        { kind: 'resync', seq: 20, time: 1, phase: 'begin' },
        { kind: 'zero', seq: 21, time: 2, diskId: 'disk-1', offset: 0, length: 10 },
      ]);
      assert.equal(store.lastReceivedSeq(), 21);
      await store.close();
      const again = await ReplicaStore.open(d, { disks: DISKS });
      try {
        assert.equal(again.lastReceivedSeq(), 21, 'the pending log reopens across the gap');
        await again.process();
        assert.equal(again.status().resyncing, true);
        assert.deepEqual(
          again.points().map((p) => p.id),
          ['p1'],
        );
      } finally {
        await again.close();
      }
    } catch (err) {
      await store.close();
      throw err;
    }
  });
});
