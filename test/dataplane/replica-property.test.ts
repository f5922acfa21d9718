/**
 * The seeded property test of issue 4 (recovery side): random writes (unaligned, overlapping, hot spots), zero
 * ranges and crash/app markers go into the replica store in random batch sizes, with resends, random partial
 * process() calls and concurrent view reads; every retained point must read back exactly as the model of the disks
 * at that marker — while more changes are applied underneath, after pruning, and after reopening from disk.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { describe, test } from 'node:test';
import type { Change, DiskSpec } from '../../src/dataplane/changes.js';
import { ReplicaError } from '../../src/dataplane/replica/errors.js';
import { ReplicaStore, type ReplicaStoreOptions } from '../../src/dataplane/replica/replica-store.js';
import { ChangeGenerator, DiskModel, mulberry32, tempDir } from '../../src/dataplane/replica/test-support.js';

const DISKS: DiskSpec[] = [
  { id: 'os', sizeBytes: 512 * 1024 + 4097 },
  { id: 'data', sizeBytes: 256 * 1024 },
];

async function checkPoint(
  store: ReplicaStore,
  model: DiskModel,
  pointId: string,
  rnd: () => number,
): Promise<void> {
  for (const d of DISKS) {
    const want = model.atPoint.get(pointId)!.get(d.id)!;
    const view = await store.openView(d.id, pointId);
    try {
      const whole = await view.read(0, d.sizeBytes);
      assert.ok(whole.equals(want), `${d.id} @ ${pointId}: whole-disk read differs from the model`);
      for (let i = 0; i < 4; i++) {
        const len = 1 + Math.floor(rnd() * 100_000);
        const off = Math.floor(rnd() * (d.sizeBytes - len));
        const part = await view.read(off, len);
        assert.ok(
          part.equals(want.subarray(off, off + len)),
          `${d.id} @ ${pointId}: read ${off}+${len} differs`,
        );
      }
    } finally {
      await view.close();
    }
  }
}

async function checkAll(store: ReplicaStore, model: DiskModel, rnd: () => number): Promise<number> {
  const pts = store.points().filter((p) => !p.pending);
  for (const p of pts) await checkPoint(store, model, p.id, rnd);
  return pts.length;
}

async function runSeed(seed: number): Promise<void> {
  const rnd = mulberry32(seed * 7 + 1);
  const dir = tempDir();
  const options: ReplicaStoreOptions = {
    disks: DISKS,
    batchChanges: 1 + Math.floor(rnd() * 40),
    undoSegmentBytes: 256 * 1024,
    pendingSegmentBytes: 512 * 1024,
    undoChunkBytes: 32 * 1024,
  };
  const gen = new ChangeGenerator({ disks: DISKS, seed });
  const model = new DiskModel(DISKS);
  let store = await ReplicaStore.open(dir, options);
  try {
    const sent: Change[] = [];
    while (sent.length < 500) {
      const batch = gen.next(1 + Math.floor(rnd() * 30));
      batch.forEach((c) => model.apply(c));
      // Resend a tail of what was already sent now and then: the store must ignore it.
      const resend = rnd() < 0.2 ? sent.slice(-Math.floor(rnd() * 10)) : [];
      await store.receive([...resend, ...batch]);
      sent.push(...batch);
      const r = rnd();
      if (r < 0.3) {
        const from = store.lastProcessedSeq();
        const upto = from + Math.floor(rnd() * (store.lastReceivedSeq() - from + 1));
        await store.process({ uptoSeq: upto });
        assert.equal(store.lastProcessedSeq(), upto);
      } else if (r < 0.4) {
        // A view read racing an apply.
        const pts = store.points().filter((p) => !p.pending);
        const p = pts[Math.floor(rnd() * pts.length)];
        const applying = store.process();
        if (p) await checkPoint(store, model, p.id, rnd);
        await applying;
      }
    }
    await store.process();
    const n = await checkAll(store, model, rnd);
    assert.ok(n >= 10, `only ${n} points were made`);

    // Every point again while a further stream is applied underneath.
    const more = gen.next(200);
    await store.receive(more);
    store.startProcessor();
    await checkAll(store, model, rnd);
    await store.stopProcessor();
    await store.process();
    more.forEach((c) => model.apply(c));
    await checkAll(store, model, rnd);

    // Prune at the time of the middle point: older points go, the survivors stay exact.
    const pts = store.points().filter((p) => !p.pending);
    const mid = pts[Math.floor(pts.length / 2)]!;
    await store.prune(new Date(mid.time), 0);
    const kept = store.points().filter((p) => !p.pending);
    assert.equal(kept[0]!.id, mid.id);
    assert.equal(kept.length, pts.length - Math.floor(pts.length / 2));
    await assert.rejects(
      store.openView('os', pts[0]!.id),
      (e) => e instanceof ReplicaError && e.code === 'POINT_NOT_FOUND',
    );
    await checkAll(store, model, rnd);

    // Reopen from disk: the same points, the same bytes; then more changes on top.
    await store.close();
    store = await ReplicaStore.open(dir, options);
    assert.deepEqual(
      store.points().map((p) => p.id),
      kept.map((p) => p.id),
    );
    assert.equal(store.lastReceivedSeq(), sent.length + more.length);
    await checkAll(store, model, rnd);
    const last = [...gen.next(50), gen.marker('app-consistent')];
    last.forEach((c) => model.apply(c));
    await store.receive(last);
    await store.process();
    assert.equal(store.latestProcessed('app-consistent')?.id, (last.at(-1) as { pointId: string }).pointId);
    await checkAll(store, model, rnd);
    const st = store.status();
    assert.equal(st.pendingChanges, 0);
    assert.equal(st.lastProcessedSeq, st.lastReceivedSeq);
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('replica store property test', () => {
  for (const seed of [101, 202, 303]) {
    test(`seed ${seed}: every retained point equals the model`, () => runSeed(seed));
  }
});
