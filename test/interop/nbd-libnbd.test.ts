/**
 * Interop with libnbd's tools (nbdinfo, nbdcopy) and fio's nbd engine against `osr nbd serve` in its own process.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { mulberry32, run, seededBytes, sparseFile, startServe, tempDir } from './nbd-helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const G = 64 * KiB;

interface MapEntry {
  offset: number;
  length: number;
  type: number;
}

/** Merges a map into [start, end) runs of data (type without the hole bit). */
function dataRuns(map: MapEntry[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const e of map) {
    if ((e.type & 1) !== 0) continue;
    const last = out[out.length - 1];
    if (last && last[1] === e.offset) last[1] += e.length;
    else out.push([e.offset, e.offset + e.length]);
  }
  return out;
}

/** Writes seeded random chunks at granule-aligned offsets; returns the merged data runs. */
function scatter(file: string, size: number, seed: number, count: number): Array<[number, number]> {
  const rnd = mulberry32(seed);
  const granules = new Set<number>();
  const fd = fs.openSync(file, 'r+');
  for (let i = 0; i < count; i++) {
    const n = 1 + Math.floor(rnd() * 32);
    const at = Math.floor(rnd() * (size / G - n)) * G;
    fs.writeSync(fd, seededBytes(rnd, n * G), 0, n * G, at);
    for (let k = 0; k < n; k++) granules.add(at / G + k);
  }
  fs.closeSync(fd);
  const runs: Array<[number, number]> = [];
  for (const g of [...granules].sort((a, b) => a - b)) {
    const last = runs[runs.length - 1];
    if (last && last[1] === g * G) last[1] += G;
    else runs.push([g * G, (g + 1) * G]);
  }
  return runs;
}

/** Sorts and merges overlapping or touching [start, end) runs. */
function mergeRuns(runs: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, b] of [...runs].sort((x, y) => x[0] - y[0])) {
    const last = out[out.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

async function nbdinfoMap(uri: string): Promise<MapEntry[]> {
  return JSON.parse((await run('nbdinfo', ['--json', '--map', uri])).stdout) as MapEntry[];
}

test('nbdinfo --list shows every export and --map agrees with the image holes, also after trim and zero', async (t) => {
  const dir = tempDir(t);
  const a = sparseFile(path.join(dir, 'a.raw'), 128 * MiB);
  const b = sparseFile(path.join(dir, 'b.img'), 3 * MiB + 512);
  const expected = scatter(a, 128 * MiB, 11, 25);
  const srv = await startServe(t, [`${a}:alpha`, b]);

  const list = JSON.parse(
    (await run('nbdinfo', ['--json', '--list', `nbd://127.0.0.1:${srv.port}`])).stdout,
  ) as {
    exports: Array<{
      'export-name': string;
      'export-size': number;
      contexts: string[];
      can_multi_conn: boolean;
    }>;
  };
  assert.deepEqual(
    list.exports.map((e) => [e['export-name'], e['export-size']]),
    [
      ['alpha', 128 * MiB],
      ['b', 3 * MiB + 512],
    ],
  );
  assert.ok(list.exports.every((e) => e.contexts.includes('base:allocation') && e.can_multi_conn));

  const uri = `nbd://127.0.0.1:${srv.port}/alpha`;
  const map = await nbdinfoMap(uri);
  assert.deepEqual(dataRuns(map), expected);
  assert.equal(
    map.reduce((s, e) => s + e.length, 0),
    128 * MiB,
  );
  assert.ok(
    map.filter((e) => (e.type & 1) !== 0).every((e) => e.type === 3),
    'holes read as zero',
  );

  // TRIM and WRITE_ZEROES (may unmap) of a data run turn it into a hole; a new write becomes data.
  const [first, second] = expected;
  assert.ok(first && second);
  await run('qemu-io', [
    '-f',
    'raw',
    uri,
    '-c',
    `discard ${first[0]} ${first[1] - first[0]}`,
    '-c',
    `write -z -u ${second[0]} ${second[1] - second[0]}`,
    '-c',
    `write -P 1 ${100 * MiB + 5} 10`,
  ]);
  const after = dataRuns(await nbdinfoMap(uri));
  assert.deepEqual(after, mergeRuns([...expected.slice(2), [100 * MiB, 100 * MiB + G]]));
  assert.equal(await srv.stop(), 0);
});

test('nbdcopy round-trips a 1 GiB sparse image bit-exactly and keeps it sparse', async (t) => {
  const dir = tempDir(t);
  const src = sparseFile(path.join(dir, 'src.raw'), GiB);
  const runs = scatter(src, GiB, 2024, 40);
  // Unaligned writes too: the tail of an odd granule and the very last bytes of the image.
  const fd = fs.openSync(src, 'r+');
  fs.writeSync(fd, Buffer.alloc(777, 0x5c), 0, 777, 700 * MiB + 12345);
  fs.writeSync(fd, Buffer.alloc(100, 0x7e), 0, 100, GiB - 100);
  fs.closeSync(fd);
  const target = sparseFile(path.join(dir, 'target.raw'), GiB);
  const srv = await startServe(t, [`${target}:vol`]);
  const uri = `nbd://127.0.0.1:${srv.port}/vol`;

  await run('nbdcopy', ['--flush', src, uri], { timeoutMs: 120_000 });
  const out = sparseFile(path.join(dir, 'out.raw'), GiB);
  await run('nbdcopy', [uri, out], { timeoutMs: 120_000 });
  await run('cmp', [src, out], { timeoutMs: 120_000 });

  // The server only allocated what the source had.
  const dataBytes = dataRuns(await nbdinfoMap(uri)).reduce((s, [a, b]) => s + (b - a), 0);
  const expectedBytes = runs.reduce((s, [a, b]) => s + (b - a), 0);
  assert.ok(
    dataBytes >= expectedBytes && dataBytes <= expectedBytes + 2 * G,
    `${dataBytes} vs ${expectedBytes}`,
  );

  assert.equal(await srv.stop(), 0);
  await run('cmp', [src, target], { timeoutMs: 120_000 });
  assert.equal(fs.statSync(target).size, GiB);
  assert.ok(fs.statSync(target).blocks * 512 < 256 * MiB, 'the target image stays sparse');
});

test('fio (ioengine=nbd) random writes over several connections verify with crc32c', async (t) => {
  const dir = tempDir(t);
  const image = sparseFile(path.join(dir, 'disk.raw'), 128 * MiB);
  const srv = await startServe(t, [image]);
  const r = await run(
    'fio',
    [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=nbd://127.0.0.1:${srv.port}/disk`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=32M',
      '--numjobs=2',
      '--offset_increment=64M',
      '--verify=crc32c',
      '--do_verify=1',
      // fio would otherwise leave *-verify.state files in the working folder.
      '--verify_state_save=0',
      '--output-format=json',
    ],
    { timeoutMs: 120_000 },
  );
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
    jobs: Array<{ error: number; write: { total_ios: number }; read: { total_ios: number } }>;
  };
  assert.equal(json.jobs.length, 2);
  for (const j of json.jobs) {
    assert.equal(j.error, 0);
    assert.equal(j.write.total_ios, 8192);
    assert.equal(j.read.total_ios, 8192, 'every block was read back and verified');
  }
  assert.equal(await srv.stop(), 0);
});
