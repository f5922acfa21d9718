/**
 * The whole pipeline under a seeded random workload: NBD clients write random unaligned, overlapping data, zeroes
 * and trims (and flush) through an `NbdServer` whose exports are journaled file images of two disks of one group;
 * crash- and app-consistent markers are cut between rounds; the journal ships over TLS into a real `ReplicaStore`
 * with its processor running. For every retained point the views of both disks equal a model of the disks at
 * that marker, and at the end the source images equal the replica's base.
 *
 * Model choice: the clients run in rounds. Inside a round the operations run concurrently on disjoint ranges of
 * each disk (overlapping in-flight writes have no defined result in NBD), so the model applies them in any order;
 * ranges overlap freely across rounds. Markers are cut between rounds, when no client operation is in flight —
 * an app-consistent one with the writers paused (freeze), the marker, then resumed (thaw) — so the model's bytes
 * at the marker are exactly what the journal holds before the marker's seq.
 */
import * as assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { MarkerType } from '../../src/dataplane/changes.js';
import { NbdClient } from '../../src/dataplane/nbd/client.js';
import type { TestIdentity as TlsIdentity } from './source-support.js';
import { readAll, startPipeline } from './pipeline-support.js';
import { makeIdentity, mulberry32, randomBytes, tempDir, waitFor } from './source-support.js';

const KiB = 1024;
const GRANULE = 64 * KiB;
const DISKS = [
  { id: 'os', sizeBytes: 2 * 1024 * KiB },
  { id: 'data', sizeBytes: 1024 * KiB },
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

type Op =
  | { kind: 'write'; disk: string; offset: number; data: Buffer }
  | { kind: 'zero' | 'trim'; disk: string; offset: number; length: number }
  | { kind: 'flush'; disk: string; offset: number; length: 0 };

function opLength(op: Op): number {
  return op.kind === 'write' ? op.data.length : op.length;
}

/** Applies an acknowledged operation to the model; a trim zeroes only the whole granules it covers. */
function applyToModel(model: Map<string, Buffer>, op: Op): void {
  const b = model.get(op.disk)!;
  if (op.kind === 'write') op.data.copy(b, op.offset);
  else if (op.kind === 'zero') b.fill(0, op.offset, op.offset + op.length);
  else if (op.kind === 'trim') {
    const start = Math.ceil(op.offset / GRANULE) * GRANULE;
    const end =
      op.offset + op.length >= b.length ? b.length : Math.floor((op.offset + op.length) / GRANULE) * GRANULE;
    if (end > start) b.fill(0, start, end);
  }
}

async function runSeed(seed: number): Promise<void> {
  const rnd = mulberry32(seed);
  const t = tempDir('osr-pipe-');
  const p = await startPipeline({
    dir: t.dir,
    disks: DISKS,
    source: src,
    recovery: dst,
    journal: { segmentBytes: 256 * KiB },
    sender: { batchBytes: 64 * KiB, maxInFlightBytes: 512 * KiB },
  });
  const clients: Array<{ disk: string; c: NbdClient }> = [];
  try {
    for (const disk of ['os', 'os', 'data']) {
      clients.push({ disk, c: await NbdClient.connect({ port: p.nbdPort, exportName: disk }) });
    }
    const model = new Map(DISKS.map((d) => [d.id, Buffer.alloc(d.sizeBytes)]));
    const atPoint = new Map<string, Map<string, Buffer>>();
    const snapshot = (): Map<string, Buffer> => new Map([...model].map(([id, b]) => [id, Buffer.from(b)]));
    let points = 0;
    const cut = async (type: MarkerType): Promise<void> => {
      const id = `${type === 'app-consistent' ? 'app' : 'crash'}-${++points}`;
      // No client operation is in flight here: the model is exactly the journal's prefix before the marker.
      atPoint.set(id, snapshot());
      await p.journal.addMarker(type, id);
    };
    const rounds = 70;
    let midRunChecks = 0;
    for (let round = 0; round < rounds; round++) {
      const ops: Op[] = [];
      const n = 1 + Math.floor(rnd() * 6);
      for (let i = 0; i < n; i++) {
        const disk = rnd() < 0.65 ? 'os' : 'data';
        const size = model.get(disk)!.length;
        const r = rnd();
        const maxLen = rnd() < 0.2 ? 300 * KiB : 24 * KiB;
        const length = 1 + Math.floor(rnd() * maxLen);
        // A few hot spots make overlaps across rounds common; offsets and lengths are unaligned.
        const offset =
          rnd() < 0.4
            ? Math.min(size - length, Math.floor(rnd() * 4) * GRANULE + Math.floor(rnd() * 3000))
            : Math.floor(rnd() * (size - length + 1));
        let op: Op;
        if (r < 0.65) op = { kind: 'write', disk, offset, data: randomBytes(rnd, length, rnd() < 0.5) };
        else if (r < 0.8) op = { kind: 'zero', disk, offset, length };
        else if (r < 0.93)
          op = { kind: 'trim', disk, offset, length: length + GRANULE * Math.floor(rnd() * 3) };
        else op = { kind: 'flush', disk, offset: 0, length: 0 };
        if (op.kind === 'trim' && op.offset + op.length > size) op.length = size - op.offset;
        const clash = ops.some(
          (o) =>
            o.disk === op.disk &&
            o.kind !== 'flush' &&
            op.kind !== 'flush' &&
            o.offset < op.offset + opLength(op) &&
            op.offset < o.offset + opLength(o),
        );
        if (!clash) ops.push(op);
      }
      await Promise.all(
        ops.map(async (op) => {
          const candidates = clients.filter((c) => c.disk === op.disk);
          const { c } = candidates[Math.floor(rnd() * candidates.length)]!;
          if (op.kind === 'write') await c.write(op.offset, op.data, { fua: rnd() < 0.1 });
          else if (op.kind === 'zero') await c.writeZeroes(op.offset, op.length, { noHole: rnd() < 0.5 });
          else if (op.kind === 'trim') await c.trim(op.offset, op.length);
          else await c.flush();
        }),
      );
      for (const op of ops) applyToModel(model, op);
      const m = rnd();
      if (m < 0.2) await cut('crash-consistent');
      else if (m < 0.27) await cut('app-consistent');
      // Views stay stable while replication keeps applying underneath.
      const newest = p.store.latestProcessed();
      if (round % 10 === 9 && newest) {
        midRunChecks++;
        for (const d of DISKS) {
          const v = await p.store.openView(d.id, newest.id);
          try {
            assert.ok(
              (await readAll(v)).equals(atPoint.get(newest.id)!.get(d.id)!),
              `mid-run view ${newest.id}/${d.id}`,
            );
          } finally {
            await v.close();
          }
        }
      }
    }
    await cut('crash-consistent');
    const last = p.journal.lastSeq;
    await p.sender.waitForAck(last);
    await p.store.process();
    await waitFor(() => p.store.lastProcessedSeq() >= last, 'the replica to process everything');
    assert.equal(p.store.lastReceivedSeq(), last, 'the replica received every seq exactly once');

    const retained = p.store.points().filter((x) => !x.pending);
    assert.deepEqual(
      retained.map((x) => x.id).sort(),
      [...atPoint.keys()].sort(),
      'every marker became a recovery point',
    );
    assert.ok(
      retained.some((x) => x.type === 'app-consistent'),
      'the run cut app-consistent points',
    );
    for (const pt of retained) {
      for (const d of DISKS) {
        const v = await p.store.openView(d.id, pt.id);
        try {
          const got = await readAll(v);
          assert.ok(
            got.equals(atPoint.get(pt.id)!.get(d.id)!),
            `view of ${d.id} at ${pt.id} (seq ${pt.seq})`,
          );
        } finally {
          await v.close();
        }
      }
    }
    for (const d of DISKS) {
      const source = await readAll(p.images.get(d.id)!);
      assert.ok(source.equals(model.get(d.id)!), `source image ${d.id} equals the model`);
      const base = await readAll(p.store.openBase(d.id));
      assert.ok(base.equals(source), `replica base of ${d.id} equals the source image`);
    }
    assert.ok(midRunChecks > 0 || seed < 0, 'views were checked while replication ran');
  } finally {
    for (const { c } of clients) await c.disconnect();
    await p.close();
    t.remove();
  }
}

for (const seed of [11, 22, 33]) {
  test(`pipeline property: seed ${seed} — every retained point's views equal the model`, () => runSeed(seed));
}
