/**
 * Read throughput of a recovery-point view with history (many undo records between the point and the base) vs
 * the base image itself (issue 4 target: view >= 0.5x base).
 *
 * `node dist/bench/replication/view-read.js [--disk-mib 512] [--writes 8000] [--points 12] [--read-kib 1024]
 * [--rounds 7]`
 * builds a replica with random 64 KiB writes and a crash-consistent marker every writes/points writes (about an
 * hour of 5-minute points), then reads the whole disk sequentially from the oldest point's view and from the base,
 * alternating, `rounds` passes each, and reports the medians.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Change } from '../../src/dataplane/changes.js';
import type { BlockBackend } from '../../src/dataplane/nbd/backend.js';
import { ReplicaStore } from '../../src/dataplane/replica/replica-store.js';
import { mulberry32 } from '../../src/dataplane/replica/test-support.js';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const diskBytes = arg('disk-mib', 512) * 1024 * 1024;
const writes = arg('writes', 8000);
const points = arg('points', 12);
const readBytes = arg('read-kib', 1024) * 1024;
const rounds = arg('rounds', 7);
const W = 64 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** One pass over `b`: MiB/s, and CPU seconds (all threads) per GiB read. */
async function readAll(b: BlockBackend): Promise<{ mibs: number; cpuPerGiB: number }> {
  const buf = Buffer.allocUnsafe(readBytes);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let pos = 0; pos < b.size; pos += readBytes) {
    const n = Math.min(readBytes, b.size - pos);
    await b.read(pos, n, n === readBytes ? buf : undefined);
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return { mibs: b.size / (1024 * 1024) / s, cpuPerGiB: (cpu.user + cpu.system) / 1e6 / (b.size / 2 ** 30) };
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-bench-view-'));
const store = await ReplicaStore.open(dir, { disks: [{ id: 'd', sizeBytes: diskBytes }] });
try {
  const rnd = mulberry32(1);
  let seq = 0;
  const time = Date.now() - 3600_000;
  // Fill the disk first so the base has data everywhere (a replica after initial replication).
  const fill = Buffer.alloc(4 * 1024 * 1024, 0x5a);
  let batch: Change[] = [];
  for (let pos = 0; pos < diskBytes; pos += fill.length) {
    batch.push({ kind: 'write', seq: ++seq, time, diskId: 'd', offset: pos, data: fill });
  }
  await store.receive(batch);
  await store.process();
  const t0 = process.hrtime.bigint();
  batch = [];
  for (let i = 0; i < writes; i++) {
    if (i % Math.ceil(writes / points) === 0) {
      batch.push({
        kind: 'marker',
        seq: ++seq,
        time: time + i,
        markerType: 'crash-consistent',
        pointId: `p${i}`,
      });
    }
    const data = Buffer.allocUnsafe(W);
    for (let k = 0; k < W; k += 4) data.writeUInt32LE((rnd() * 0x100000000) >>> 0, k);
    const offset = Math.floor(rnd() * (diskBytes / W)) * W;
    batch.push({ kind: 'write', seq: ++seq, time: time + i, diskId: 'd', offset, data });
    if (batch.length >= 256) {
      await store.receive(batch);
      batch = [];
    }
  }
  await store.receive(batch);
  await store.process();
  const applySecs = Number(process.hrtime.bigint() - t0) / 1e9;
  const st = store.status();
  const oldest = store.points()[0]!;
  const view = await store.openView('d', oldest.id);
  // Warm both equally (page cache) by one pass each, then alternate passes and take the medians: on a shared
  // machine a single pass of each swings by 2x either way.
  await readAll(store.openBase('d'));
  await readAll(view);
  const baseRuns: Array<{ mibs: number; cpuPerGiB: number }> = [];
  const viewRuns: Array<{ mibs: number; cpuPerGiB: number }> = [];
  for (let i = 0; i < rounds; i++) {
    baseRuns.push(await readAll(store.openBase('d')));
    viewRuns.push(await readAll(view));
  }
  const baseMiBs = median(baseRuns.map((r) => r.mibs));
  const viewMiBs = median(viewRuns.map((r) => r.mibs));
  const baseCpu = median(baseRuns.map((r) => r.cpuPerGiB));
  const viewCpu = median(viewRuns.map((r) => r.cpuPerGiB));
  await view.close();
  console.log(
    JSON.stringify(
      {
        diskMiB: diskBytes / 1048576,
        writes,
        points: st.points,
        undoMiB: Math.round(st.undoBytes / 1048576),
        applyMiBs: Math.round((writes * W) / 1048576 / applySecs),
        readKiB: readBytes / 1024,
        baseReadMiBs: Math.round(baseMiBs),
        oldestViewReadMiBs: Math.round(viewMiBs),
        ratio: Number((viewMiBs / baseMiBs).toFixed(2)),
        baseCpuSecsPerGiB: Number(baseCpu.toFixed(3)),
        viewCpuSecsPerGiB: Number(viewCpu.toFixed(3)),
        rounds,
      },
      null,
      1,
    ),
  );
} finally {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
