import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { FileBackend } from './file-backend.js';

const G = 64 * 1024;
const SIZE = 64 * G;

function image(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-nbd-file-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'disk.raw');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  return file;
}

test('an empty sparse image needs no scan; the map is written on close and trusted on reopen', async (t) => {
  const file = image(t);
  const b = await FileBackend.open(file);
  assert.equal(b.mapSource, 'empty-file');
  await b.write(3 * G, Buffer.alloc(G, 7));
  assert.equal(fs.existsSync(`${file}.osrmap`), false, 'a writable open removes the persisted map');
  await b.close();
  assert.equal(fs.existsSync(`${file}.osrmap`), true);

  const again = await FileBackend.open(file);
  assert.equal(again.mapSource, 'loaded');
  assert.deepEqual(again.map.counts(), { hole: 63, zero: 0, data: 1 });
  await again.close();
});

test('a map for an image modified behind our back is ignored and rebuilt by scanning', async (t) => {
  const file = image(t);
  const b = await FileBackend.open(file);
  await b.write(0, Buffer.alloc(10, 1));
  await b.close();
  // Another program writes data into a granule the map calls a hole.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(100, 9), 0, 100, 40 * G + 5);
  fs.futimesSync(fd, new Date(), new Date(Date.now() + 5000));
  fs.closeSync(fd);
  const again = await FileBackend.open(file, { readOnly: true });
  assert.equal(again.mapSource, 'scanned');
  assert.deepEqual(again.map.counts(), { hole: 62, zero: 0, data: 2 });
  assert.equal((await again.read(40 * G + 5, 1))[0], 9);
  await again.close();
});

test('a crash (no close) leaves no map, so the next open scans instead of trusting stale state', async (t) => {
  const file = image(t);
  const b = await FileBackend.open(file);
  await b.write(5 * G, Buffer.alloc(4096, 3));
  await b.flush();
  // No close: simulate the process dying (the fd leaks until the test process exits).
  assert.equal(fs.existsSync(`${file}.osrmap`), false);
  const again = await FileBackend.open(file, { readOnly: true });
  assert.equal(again.mapSource, 'scanned');
  assert.deepEqual(again.map.counts(), { hole: 63, zero: 0, data: 1 });
  await again.close();
});

test('a corrupt map file is rejected and rebuilt', async (t) => {
  const file = image(t);
  const b = await FileBackend.open(file);
  await b.write(G, Buffer.alloc(10, 1));
  await b.close();
  const raw = fs.readFileSync(`${file}.osrmap`);
  raw.writeUInt8(raw[raw.length - 1]! ^ 0xff, raw.length - 1);
  fs.writeFileSync(`${file}.osrmap`, raw);
  const again = await FileBackend.open(file);
  assert.equal(again.mapSource, 'scanned');
  assert.deepEqual(again.map.counts(), { hole: 63, zero: 0, data: 1 });
  await again.close();
});

test('trim over whole granules makes them holes that read as zeros; partial trims change nothing', async (t) => {
  const file = image(t);
  const b = await FileBackend.open(file);
  try {
    await b.write(0, Buffer.alloc(4 * G, 0xaa));
    await b.trim(100, 3 * G);
    const r = await b.read(0, 4 * G);
    assert.ok(
      r.subarray(0, G).every((x) => x === 0xaa),
      'partial first granule untouched',
    );
    assert.ok(
      r.subarray(G, 3 * G).every((x) => x === 0),
      'whole granules read zeros',
    );
    assert.ok(
      r.subarray(3 * G).every((x) => x === 0xaa),
      'partial last granule untouched',
    );
    assert.deepEqual(await b.blockStatus(0, 4 * G), [
      { length: G, hole: false, zero: false },
      { length: 2 * G, hole: true, zero: true },
      { length: G, hole: false, zero: false },
    ]);
    // The file itself holds zeros there too (the map's invariant), so a scan agrees.
    const onDisk = fs.readFileSync(file).subarray(G, 3 * G);
    assert.ok(onDisk.every((x) => x === 0));
  } finally {
    await b.close();
  }
});

test('readSync returns the same bytes as read, zeros for holes, and refuses ranges past the end', async (t) => {
  const b = await FileBackend.open(image(t));
  const data = Buffer.alloc(3 * G);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
  await b.write(G / 2, data);
  for (const [offset, length] of [
    [0, G],
    [G / 2 + 11, 2 * G],
    [5 * G, G],
  ] as const) {
    const sync = b.readSync(offset, length, Buffer.alloc(length, 0xee));
    assert.ok(sync.equals(await b.read(offset, length)), `bytes at ${offset}+${length}`);
  }
  assert.ok(b.readSync(10 * G, G, Buffer.alloc(G, 0xee)).equals(Buffer.alloc(G)), 'a hole reads as zeros');
  assert.throws(() => b.readSync(SIZE - 10, 20, Buffer.alloc(20)));
  await b.close();
});
