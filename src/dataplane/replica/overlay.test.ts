import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import type { Change, DiskSpec } from '../changes.js';
import { ReplicaError } from './errors.js';
import { ReplicaStore } from './replica-store.js';
import { ChangeGenerator, DiskModel, mulberry32, tempDir } from './test-support.js';

const DISKS: DiskSpec[] = [
  { id: 'disk-0', sizeBytes: 400 * 1024 + 123 },
  { id: 'disk-1', sizeBytes: 200 * 1024 },
];

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** A store with two points (p1 after 40 changes, p2 after 40 more) and 30 further changes processed. */
async function setup(): Promise<{
  store: ReplicaStore;
  model: DiskModel;
  dir: string;
  gen: ChangeGenerator;
}> {
  const dir = tempDir();
  dirs.push(dir);
  const gen = new ChangeGenerator({ disks: DISKS, seed: 77, markerRate: 0 });
  const model = new DiskModel(DISKS);
  const changes: Change[] = [...gen.next(40), gen.marker(), ...gen.next(40), gen.marker(), ...gen.next(30)];
  changes.forEach((c) => model.apply(c));
  const store = await ReplicaStore.open(path.join(dir, 'replica'), { disks: DISKS });
  await store.receive(changes);
  await store.process();
  return { store, model, dir, gen };
}

/** Random unaligned writes and zeroes applied to the overlay and to `expect`. */
async function scribble(
  o: { write(off: number, d: Buffer): Promise<void>; writeZeroes(off: number, n: number): Promise<void> },
  expect: Buffer,
  seed: number,
): Promise<void> {
  const rnd = mulberry32(seed);
  for (let i = 0; i < 40; i++) {
    const len = 1 + Math.floor(rnd() * 150_000);
    const off = Math.floor(rnd() * (expect.length - len));
    if (rnd() < 0.25) {
      await o.writeZeroes(off, len);
      expect.fill(0, off, off + len);
    } else {
      const data = Buffer.alloc(len, Math.floor(rnd() * 255) + 1);
      if (len >= 4) data.writeUInt32LE(i, 0);
      await o.write(off, data);
      data.copy(expect, off);
    }
  }
}

async function readAll(b: { size: number; read(o: number, n: number): Promise<Buffer> }): Promise<Buffer> {
  return b.read(0, b.size);
}

describe('Overlay', () => {
  test('overlay writes are byte-exact and never reach the replica, while replication continues', async () => {
    const { store, model, dir, gen } = await setup();
    try {
      const [p1] = store.points();
      const baseBefore = await readAll(store.openBase('disk-0'));
      const undoBefore = store.status().undoBytes;
      const overlay = await store.createOverlay('disk-0', p1!.id, { dir, name: 'test-failover-disk-0' });
      const expect = Buffer.from(model.atPoint.get(p1!.id)!.get('disk-0')!);
      assert.ok((await readAll(overlay)).equals(expect), 'a fresh overlay reads as its point');
      await scribble(overlay, expect, 1);
      assert.ok((await readAll(overlay)).equals(expect));
      assert.ok((await readAll(store.openBase('disk-0'))).equals(baseBefore), 'base untouched');
      assert.equal(store.status().undoBytes, undoBefore, 'undo log untouched');
      const view = await store.openView('disk-0', p1!.id);
      assert.ok(
        (await readAll(view)).equals(model.atPoint.get(p1!.id)!.get('disk-0')!),
        'the view is unchanged',
      );
      await view.close();
      // Replication continues underneath the overlay.
      await store.receive(gen.next(50));
      await store.process();
      assert.ok((await readAll(overlay)).equals(expect), 'overlay stable while new changes are applied');
      await assert.rejects(
        store.openBase('disk-0').write(0, Buffer.alloc(1)),
        (e: Error) => e.name === 'NbdError',
        'the base is read-only while replicating',
      );
      // Survives a restart of the store with everything flushed.
      await overlay.flush();
      await overlay.close();
      await store.close();
      const again = await ReplicaStore.open(store.dir, { disks: DISKS });
      const reopened = await again.openOverlay('disk-0', { dir, name: 'test-failover-disk-0' });
      assert.equal(reopened.pointId, p1!.id);
      assert.ok((await readAll(reopened)).equals(expect), 'overlay survives a restart');
      await assert.rejects(
        again.createOverlay('disk-1', p1!.id, { dir, name: 'test-failover-disk-0' }),
        (e) => e instanceof ReplicaError && e.code === 'OVERLAY_MISMATCH',
      );
      await reopened.destroy();
      assert.ok(!fs.existsSync(path.join(dir, 'test-failover-disk-0.overlay')));
      await again.close();
    } finally {
      await store.close();
    }
  });

  test('swapView moves to the other point and discards overlay writes; snapshot and revert', async () => {
    const { store, model, dir } = await setup();
    try {
      const [p1, p2] = store.points();
      const overlay = await store.createOverlay('disk-0', p1!.id, { dir, name: 'fo' });
      await scribble(overlay, Buffer.from(model.atPoint.get(p1!.id)!.get('disk-0')!), 2);
      await overlay.swapView(p2!.id);
      assert.equal(overlay.pointId, p2!.id);
      const atP2 = Buffer.from(model.atPoint.get(p2!.id)!.get('disk-0')!);
      assert.ok((await readAll(overlay)).equals(atP2), 'after change-point the disk reads as the new point');

      const expect = Buffer.from(atP2);
      await scribble(overlay, expect, 3);
      const snap = await overlay.snapshot();
      const saved = Buffer.from(expect);
      await scribble(overlay, expect, 4);
      assert.ok((await readAll(overlay)).equals(expect));
      assert.ok(!expect.equals(saved));
      await overlay.revert(snap);
      assert.ok((await readAll(overlay)).equals(saved), 'revert restores the snapshot');
      await assert.rejects(overlay.revert('nope'), (e) => e instanceof ReplicaError);
      await overlay.destroy();
    } finally {
      await store.close();
    }
  });

  test('commit flattens view + overlay into the base and drops every point', async () => {
    const { store, model, dir } = await setup();
    const [p1] = store.points();
    const overlay = await store.createOverlay('disk-0', p1!.id, { dir, name: 'fo' });
    const expect = Buffer.from(model.atPoint.get(p1!.id)!.get('disk-0')!);
    await scribble(overlay, expect, 5);
    const other = await store.openView('disk-1', p1!.id);
    await assert.rejects(store.commit([overlay]), (e) => e instanceof ReplicaError && e.code === 'IN_USE');
    await other.close();
    await store.commit([overlay]);
    assert.ok((await readAll(store.openBase('disk-0'))).equals(expect), 'disk with overlay = view + overlay');
    assert.ok(
      (await readAll(store.openBase('disk-1'))).equals(model.atPoint.get(p1!.id)!.get('disk-1')!),
      'disk without overlay = its view',
    );
    assert.deepEqual(store.points(), []);
    assert.equal(store.status().committed?.pointId, p1!.id);
    assert.equal(store.status().undoBytes, 0);
    assert.ok(!fs.existsSync(path.join(dir, 'fo.overlay')), 'the overlay is gone');
    await assert.rejects(
      store.receive([
        { kind: 'zero', seq: store.lastReceivedSeq() + 1, time: 1, diskId: 'disk-0', offset: 0, length: 1 },
      ]),
      (e) => e instanceof ReplicaError && e.code === 'COMMITTED',
    );
    // After commit the base is the failed-over disk: writable, and it persists.
    const base = store.openBase('disk-0');
    await base.write(5, Buffer.from('hello'));
    Buffer.from('hello').copy(expect, 5);
    await store.close();
    const again = await ReplicaStore.open(store.dir, { disks: DISKS });
    try {
      assert.ok((await readAll(again.openBase('disk-0'))).equals(expect));
      assert.deepEqual(again.points(), []);
    } finally {
      await again.close();
    }
  });

  test('commit keeps what the machine writes while the overlay is being copied', async () => {
    const dir = tempDir();
    dirs.push(dir);
    const disks: DiskSpec[] = [{ id: 'big', sizeBytes: 64 * 1024 * 1024 }];
    const gen = new ChangeGenerator({ disks, seed: 5, markerRate: 0 });
    const model = new DiskModel(disks);
    const changes = [...gen.next(20), gen.marker()];
    changes.forEach((c) => model.apply(c));
    const store = await ReplicaStore.open(path.join(dir, 'replica'), { disks });
    try {
      await store.receive(changes);
      await store.process();
      const [p1] = store.points();
      const overlay = await store.createOverlay('big', p1!.id, { dir, name: 'fo' });
      const expect = Buffer.from(model.atPoint.get(p1!.id)!.get('big')!);
      // Enough overlay data that the copy takes a while.
      for (let off = 0; off < 48 * 1024 * 1024; off += 1024 * 1024) {
        const data = Buffer.alloc(1024 * 1024, (off >> 20) + 1);
        await overlay.write(off, data);
        data.copy(expect, off);
      }
      const rnd = mulberry32(9);
      let stop = false;
      let during = 0;
      const writer = (async () => {
        for (let i = 0; !stop; i++) {
          const len = 4096 + Math.floor(rnd() * 100_000);
          const off = Math.floor(rnd() * (expect.length - len));
          const data = Buffer.alloc(len, (i % 250) + 3);
          data.writeUInt32LE(i, 0);
          if (i % 7 === 0) {
            await overlay.writeZeroes(off, len);
            expect.fill(0, off, off + len);
          } else {
            await overlay.write(off, data);
            data.copy(expect, off);
          }
          during++;
        }
      })();
      let quiesced = 0;
      await store.commit([overlay], {
        quiesce: async () => {
          quiesced++;
          stop = true;
          await writer;
        },
      });
      assert.equal(quiesced, 1);
      assert.ok(during >= 10, `the machine wrote ${during} times during the commit`);
      assert.ok(
        (await readAll(store.openBase('big'))).equals(expect),
        'the base holds every write, also those made while the overlay was copied',
      );
    } finally {
      await store.close();
    }
  });
});
