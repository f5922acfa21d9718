import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import type { BlockBackend } from './backend.js';
import { NbdError } from './errors.js';
import { FileBackend } from './file-backend.js';
import { MemoryBackend } from './memory-backend.js';
import { ObservedBackend } from './observed-backend.js';
import { NbdErrno } from './protocol.js';

/** Tiny seeded PRNG (mulberry32) so failures reproduce. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SIZE = 2 * 1024 * 1024 + 12345;
const G = 64 * 1024;

interface Factory {
  name: string;
  make(size: number, readOnly?: boolean): Promise<BlockBackend>;
}

const tempDirs: string[] = [];
after(() => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempImage(size: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-nbd-contract-'));
  tempDirs.push(dir);
  const file = path.join(dir, 'disk.raw');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

const noopObserver = {
  onWrite: () => Promise.resolve(),
  onZero: () => Promise.resolve(),
  onTrim: () => Promise.resolve(),
  onFlush: () => Promise.resolve(),
};

const factories: Factory[] = [
  { name: 'MemoryBackend', make: (size, readOnly) => Promise.resolve(new MemoryBackend(size, { readOnly })) },
  {
    name: 'FileBackend (sync writes)',
    make: (size, readOnly) => FileBackend.open(tempImage(size), { readOnly }),
  },
  {
    name: 'FileBackend (threadpool writes)',
    make: (size, readOnly) => FileBackend.open(tempImage(size), { readOnly, syncWriteMaxBytes: 0 }),
  },
  {
    name: 'ObservedBackend over MemoryBackend',
    make: (size, readOnly) =>
      Promise.resolve(new ObservedBackend(new MemoryBackend(size, { readOnly }), noopObserver)),
  },
];

/** Checks that every extent flagged zero really reads as zeros and that extents tile the range. */
async function checkStatus(b: BlockBackend, model: Buffer, offset: number, length: number): Promise<void> {
  const ext = await b.blockStatus(offset, length);
  assert.ok(ext.length > 0);
  let pos = offset;
  for (const e of ext) {
    assert.ok(e.length > 0);
    if (e.zero)
      assert.ok(
        model.subarray(pos, pos + e.length).every((x) => x === 0),
        `zero extent at ${pos} has data`,
      );
    if (e.hole) assert.ok(e.zero, 'this implementation keeps holes reading as zeros');
    pos += e.length;
  }
  assert.ok(pos <= offset + length, 'extents must not run past the request');
}

for (const f of factories) {
  describe(`BlockBackend contract: ${f.name}`, () => {
    test('random writes, zeroes and trims read back like a plain buffer model', async () => {
      const b = await f.make(SIZE);
      const model = Buffer.alloc(SIZE);
      const rnd = mulberry32(1234);
      const pick = (max: number): number => Math.floor(rnd() * max);
      try {
        assert.equal(b.size, SIZE);
        for (let i = 0; i < 300; i++) {
          const offset = pick(SIZE);
          const length = Math.min(SIZE - offset, pick(rnd() < 0.5 ? 8192 : 3 * G));
          const op = pick(10);
          if (op < 5) {
            const data = Buffer.alloc(length, 1 + pick(255));
            await b.write(offset, data, { fua: op === 0 });
            data.copy(model, offset);
          } else if (op < 7) {
            await b.writeZeroes(offset, length, { noHole: op === 6 });
            model.fill(0, offset, offset + length);
          } else if (op === 7) {
            await b.trim(offset, length);
            // TRIM contents are unspecified; make the model follow what the backend now returns.
            (await b.read(offset, length)).copy(model, offset);
          } else {
            assert.deepEqual(await b.read(offset, length), model.subarray(offset, offset + length));
          }
          if (i % 20 === 0) await checkStatus(b, model, 0, SIZE);
        }
        await b.flush();
        assert.deepEqual(await b.read(0, SIZE), model);
        const into = Buffer.alloc(1000, 0xee);
        assert.equal(await b.read(G - 10, 1000, into), into);
        assert.deepEqual(into, model.subarray(G - 10, G + 990));
        await checkStatus(b, model, 0, SIZE);
        await checkStatus(b, model, 777, 5 * G);
      } finally {
        await b.close();
      }
    });

    test('write zeroes over data reads back zeros and shows as zero in block status', async () => {
      const b = await f.make(SIZE);
      try {
        await b.write(0, Buffer.alloc(4 * G, 0x5a));
        await b.writeZeroes(100, 3 * G);
        const r = await b.read(0, 4 * G);
        assert.ok(r.subarray(0, 100).every((x) => x === 0x5a));
        assert.ok(r.subarray(100, 100 + 3 * G).every((x) => x === 0));
        assert.ok(r.subarray(100 + 3 * G).every((x) => x === 0x5a));
        const ext = await b.blockStatus(G, 2 * G);
        assert.ok(ext.every((e) => e.zero));
      } finally {
        await b.close();
      }
    });

    test('a read-only backend refuses mutations with EPERM', async () => {
      const b = await f.make(SIZE, true);
      try {
        assert.equal(b.readOnly, true);
        for (const call of [
          () => b.write(0, Buffer.alloc(1)),
          () => b.writeZeroes(0, 1),
          () => b.trim(0, G),
        ]) {
          await assert.rejects(call(), (e: unknown) => e instanceof NbdError && e.errno === NbdErrno.EPERM);
        }
        assert.equal((await b.read(0, 10)).length, 10);
      } finally {
        await b.close();
      }
    });
  });
}

test('FileBackend refuses mutations outside the image even from direct callers', async () => {
  const b = await FileBackend.open(tempImage(SIZE));
  try {
    for (const call of [
      () => b.write(SIZE - 1, Buffer.alloc(2)),
      () => b.writeZeroes(SIZE, 1),
      () => b.trim(-1, 10),
    ]) {
      await assert.rejects(call(), (e: unknown) => e instanceof NbdError && e.errno === NbdErrno.ENOSPC);
    }
  } finally {
    await b.close();
  }
});

test('FileBackend fast zero refuses (changing nothing) when data would have to be written', async () => {
  const b = await FileBackend.open(tempImage(SIZE));
  try {
    await b.writeZeroes(0, SIZE, { fastZero: true });
    await b.write(G, Buffer.alloc(10, 1));
    await assert.rejects(
      b.writeZeroes(0, 4 * G, { fastZero: true }),
      (e: unknown) => e instanceof NbdError && e.errno === NbdErrno.ENOTSUP,
    );
    assert.equal((await b.read(G, 10))[0], 1);
    await b.writeZeroes(2 * G, 4 * G, { fastZero: true });
  } finally {
    await b.close();
  }
});
