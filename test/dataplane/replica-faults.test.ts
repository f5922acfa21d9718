/**
 * Fault tests of the replica store: kill -9 of a processor process mid-apply (repeatedly), then reopen and finish
 * — every point must equal the model, so nothing was lost or applied twice; damaged pending-log, undo-log and
 * state bytes are detected; a torn pending tail is dropped.
 */
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Change, DiskSpec } from '../../src/dataplane/changes.js';
import { FileBackend } from '../../src/dataplane/nbd/file-backend.js';
import { ReplicaError } from '../../src/dataplane/replica/errors.js';
import { ReplicaStore, type ReplicaStoreOptions } from '../../src/dataplane/replica/replica-store.js';
import { ChangeGenerator, DiskModel, mulberry32, tempDir } from '../../src/dataplane/replica/test-support.js';

const PROCESSOR = fileURLToPath(new URL('../fixtures/replica-processor.js', import.meta.url));
const DISKS: DiskSpec[] = [
  { id: 'a', sizeBytes: 768 * 1024 + 5 },
  { id: 'b', sizeBytes: 256 * 1024 },
];

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function dir(): string {
  const d = tempDir();
  dirs.push(d);
  return d;
}

async function checkAllPoints(store: ReplicaStore, model: DiskModel): Promise<number> {
  const pts = store.points().filter((p) => !p.pending);
  for (const p of pts) {
    for (const d of DISKS) {
      const v = await store.openView(d.id, p.id);
      const got = await v.read(0, d.sizeBytes);
      await v.close();
      assert.ok(got.equals(model.atPoint.get(p.id)!.get(d.id)!), `${d.id} @ ${p.id} differs from the model`);
    }
  }
  return pts.length;
}

/** Runs the processor fixture and SIGKILLs it once it printed `killAfter` progress lines; resolves with its last seq. */
function runAndKill(
  storeDir: string,
  options: object,
  killAfter: number,
): Promise<{ killed: boolean; last: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--enable-source-maps', PROCESSOR], {
      env: { ...process.env, OSR_REPLICA_DIR: storeDir, OSR_REPLICA_OPTIONS: JSON.stringify(options) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    let err = '';
    let lines = 0;
    let last = 0;
    let killed = false;
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const m = /^applied (\d+)$/.exec(line);
        if (m) {
          last = Number(m[1]);
          if (++lines >= killAfter && !killed) {
            killed = true;
            child.kill('SIGKILL');
          }
        }
      }
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL' || code === 0) resolve({ killed: signal === 'SIGKILL', last });
      else reject(new Error(`processor exited with ${code}: ${err}`));
    });
  });
}

describe('replica store faults', () => {
  test('kill -9 of the processor process mid-apply, repeatedly: reopen finishes, nothing lost or doubled', async () => {
    const storeDir = path.join(dir(), 'replica');
    const gen = new ChangeGenerator({ disks: DISKS, seed: 4242, markerRate: 0.1, maxLength: 300 * 1024 });
    const model = new DiskModel(DISKS);
    const changes: Change[] = gen.next(400);
    changes.forEach((c) => model.apply(c));
    const options: ReplicaStoreOptions & { step: number } = {
      disks: DISKS,
      batchChanges: 6,
      undoChunkBytes: 64 * 1024,
      undoSegmentBytes: 512 * 1024,
      pendingSegmentBytes: 256 * 1024,
      step: 6,
    };
    const store = await ReplicaStore.open(storeDir, options);
    await store.receive(changes);
    await store.close();

    const rnd = mulberry32(99);
    let kills = 0;
    let lastSeen = 0;
    for (let round = 0; round < 12; round++) {
      const r = await runAndKill(storeDir, options, 1 + Math.floor(rnd() * 8));
      if (!r.killed) break;
      kills++;
      assert.ok(r.last >= lastSeen, 'progress never goes backwards');
      lastSeen = r.last;
    }
    assert.ok(kills >= 3, `the processor was killed only ${kills} times`);

    const reopened = await ReplicaStore.open(storeDir, options);
    try {
      assert.ok(reopened.lastProcessedSeq() >= lastSeen, 'an applied batch stays applied');
      await reopened.process();
      assert.equal(reopened.lastProcessedSeq(), 400);
      const n = await checkAllPoints(reopened, model);
      assert.ok(n >= 20, `only ${n} points`);
    } finally {
      await reopened.close();
    }
  });

  test('crash injected at every phase of an apply batch: reopening redoes it exactly', async () => {
    // Deterministic complement of the kill -9 test: the k-th base write of a batch "dies" (throws, and the store
    // is abandoned as a dead process would leave it), optionally with the undo records of that batch torn.
    const gen = new ChangeGenerator({ disks: DISKS, seed: 777, markerRate: 0.15, maxLength: 200 * 1024 });
    const model = new DiskModel(DISKS);
    const changes = gen.next(120);
    changes.forEach((c) => model.apply(c));
    const storeDir = path.join(dir(), 'replica');
    const options: ReplicaStoreOptions = { disks: DISKS, batchChanges: 8, undoChunkBytes: 16 * 1024 };
    let store = await ReplicaStore.open(storeDir, options);
    await store.receive(changes);
    const rnd = mulberry32(3);
    const realWrite = Object.getOwnPropertyDescriptor(FileBackend.prototype, 'write')!
      .value as FileBackend['write'];
    const undoFile = (): string | undefined => {
      const last = fs.readdirSync(path.join(storeDir, 'undo')).sort().at(-1);
      return last === undefined ? undefined : path.join(storeDir, 'undo', last);
    };
    let crashes = 0;
    try {
      while (store.lastProcessedSeq() < changes.length) {
        const before = undoFile();
        const undoBefore = before === undefined ? 0 : fs.statSync(before).size;
        // Half of the batches die, at a random one of their first base writes.
        const crashAt = rnd() < 0.5 ? Math.floor(rnd() * 6) : Number.POSITIVE_INFINITY;
        let calls = 0;
        FileBackend.prototype.write = function (this: FileBackend, ...args) {
          if (calls++ === crashAt) return Promise.reject(new Error('injected crash'));
          return realWrite.apply(this, args);
        };
        const applied = store.lastProcessedSeq();
        try {
          await store.process({ uptoSeq: applied + 8 });
        } catch (err) {
          assert.equal((err as Error).message, 'injected crash');
          crashes++;
        } finally {
          FileBackend.prototype.write = realWrite;
        }
        if (store.lastProcessedSeq() > applied) continue;
        await store.close();
        if (crashAt === 0 && rnd() < 0.8) {
          // Died while the undo records were being written: any prefix of them may be on disk.
          const f = undoFile()!;
          const size = fs.statSync(f).size;
          if (f === before && size > undoBefore)
            fs.truncateSync(f, undoBefore + Math.floor(rnd() * (size - undoBefore)));
        }
        store = await ReplicaStore.open(storeDir, options);
      }
      assert.ok(crashes >= 5, `only ${crashes} crashes were injected`);
      const n = await checkAllPoints(store, model);
      assert.ok(n >= 5, `only ${n} points`);
    } finally {
      FileBackend.prototype.write = realWrite;
      await store.close();
    }
  });

  test('a flipped bit in the middle of the pending log is refused; a torn tail is dropped', async () => {
    const storeDir = path.join(dir(), 'replica');
    // The pending log is what is under test: no direct apply before the first point.
    const gen = new ChangeGenerator({ disks: DISKS, seed: 5, markerRate: 0 });
    const store = await ReplicaStore.open(storeDir, { disks: DISKS, directApply: false });
    const changes = gen.next(20);
    await store.receive(changes.slice(0, 10));
    await store.receive(changes.slice(10));
    await store.close();
    const pendingDir = path.join(storeDir, 'pending');
    const [seg] = fs.readdirSync(pendingDir);
    const file = path.join(pendingDir, seg!);
    const good = fs.readFileSync(file);

    // Torn tail: the last batch half written (never acknowledged).
    fs.writeFileSync(file, good.subarray(0, good.length - 100));
    let again = await ReplicaStore.open(storeDir, { disks: DISKS, directApply: false });
    assert.equal(again.lastReceivedSeq(), 19);
    await again.close();

    fs.writeFileSync(file, good);
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length / 3)]! ^= 0x10;
    fs.writeFileSync(file, bad);
    await assert.rejects(
      ReplicaStore.open(storeDir, { disks: DISKS, directApply: false }),
      (e) => e instanceof ReplicaError && e.code === 'REPLICA_CORRUPT',
    );
    fs.writeFileSync(file, good);
    again = await ReplicaStore.open(storeDir, { disks: DISKS, directApply: false });
    assert.equal(again.lastReceivedSeq(), 20);
    await again.close();
  });

  test('a flipped bit in an undo record or in the state file is refused', async () => {
    const storeDir = path.join(dir(), 'replica');
    const gen = new ChangeGenerator({ disks: DISKS, seed: 6, markerRate: 0.1 });
    const store = await ReplicaStore.open(storeDir, { disks: DISKS });
    await store.receive(gen.next(60));
    await store.process();
    await store.close();
    const undoDir = path.join(storeDir, 'undo');
    const [seg] = fs.readdirSync(undoDir);
    const file = path.join(undoDir, seg!);
    const good = fs.readFileSync(file);
    for (const at of [60, Math.floor(good.length / 2), good.length - 10]) {
      const bad = Buffer.from(good);
      bad[at]! ^= 0x01;
      fs.writeFileSync(file, bad);
      await assert.rejects(
        ReplicaStore.open(storeDir, { disks: DISKS }),
        (e) => e instanceof ReplicaError && e.code === 'REPLICA_CORRUPT',
        `flip at byte ${at} of ${good.length}`,
      );
    }
    fs.writeFileSync(file, good);
    const stateFile = path.join(storeDir, 'state.osr');
    const state = fs.readFileSync(stateFile);
    const badState = Buffer.from(state);
    badState[state.length - 5]! ^= 0x04;
    fs.writeFileSync(stateFile, badState);
    await assert.rejects(
      ReplicaStore.open(storeDir, { disks: DISKS }),
      (e) => e instanceof ReplicaError && e.code === 'REPLICA_CORRUPT',
    );
    fs.writeFileSync(stateFile, state);
    const ok = await ReplicaStore.open(storeDir, { disks: DISKS });
    assert.equal(ok.lastProcessedSeq(), 60);
    await ok.close();
  });
});
