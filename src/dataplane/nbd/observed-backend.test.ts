import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryBackend } from './memory-backend.js';
import { ObservedBackend } from './observed-backend.js';
import type { WriteObserver } from './observed-backend.js';

interface Deferred {
  resolve: () => void;
  reject: (e: Error) => void;
}

/** An observer that records events and lets the test decide when each is accepted. */
function controlledObserver(): { observer: WriteObserver; log: string[]; gates: Deferred[] } {
  const log: string[] = [];
  const gates: Deferred[] = [];
  const gate = (entry: string): Promise<void> => {
    log.push(entry);
    return new Promise((resolve, reject) => gates.push({ resolve, reject }));
  };
  return {
    log,
    gates,
    observer: {
      onWrite: (e) => gate(`write ${e.offset} ${e.data.length}${e.fua ? ' fua' : ''}`),
      onZero: (e) => gate(`zero ${e.offset} ${e.length}${e.noHole ? ' nohole' : ''}`),
      onTrim: (e) => gate(`trim ${e.offset} ${e.length}`),
      onFlush: () => gate('flush'),
    },
  };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test('mutations reach the observer in call order and are acknowledged only after it accepted', async () => {
  const inner = new MemoryBackend(1 << 20);
  const { observer, log, gates } = controlledObserver();
  const b = new ObservedBackend(inner, observer);
  let acked = false;
  const w = b.write(0, Buffer.alloc(10, 1), { fua: true }).then(() => (acked = true));
  const z = b.writeZeroes(5, 2, { noHole: true });
  const tr = b.trim(0, 65536);
  assert.deepEqual(log, ['write 0 10 fua', 'zero 5 2 nohole', 'trim 0 65536']);
  await tick();
  assert.equal(acked, false);
  assert.equal((await inner.read(0, 1))[0], 0, 'not applied before the observer accepted');
  gates[0]!.resolve();
  await w;
  assert.equal((await inner.read(0, 1))[0], 1);
  // Accept the later ones out of order: they are still applied in observed order.
  gates[2]!.resolve();
  gates[1]!.resolve();
  await Promise.all([z, tr]);
  assert.ok((await inner.read(0, 65536)).every((x) => x === 0));
  const f = b.flush();
  assert.equal(log.at(-1), 'flush');
  gates[3]!.resolve();
  await f;
  await b.close();
});

test('a mutation the observer refuses fails and is not applied; later ones still apply', async () => {
  const inner = new MemoryBackend(1 << 20);
  const { observer, gates } = controlledObserver();
  const b = new ObservedBackend(inner, observer);
  const bad = b.write(0, Buffer.alloc(4, 9));
  const good = b.write(100, Buffer.alloc(4, 8));
  gates[0]!.reject(new Error('journal full'));
  gates[1]!.resolve();
  await assert.rejects(bad, /journal full/);
  await good;
  assert.equal((await inner.read(0, 1))[0], 0);
  assert.equal((await inner.read(100, 1))[0], 8);
  await b.close();
});

test('applications to the inner backend never overlap, even when the observer accepts all at once', async () => {
  const inner = new MemoryBackend(1 << 20);
  let active = 0;
  let maxActive = 0;
  const slowInner = Object.assign(Object.create(inner) as MemoryBackend, {
    write: async (offset: number, data: Buffer) => {
      active++;
      maxActive = Math.max(maxActive, active);
      await tick();
      await inner.write(offset, data);
      active--;
    },
  });
  const ok = (): Promise<void> => Promise.resolve();
  const b = new ObservedBackend(slowInner, { onWrite: ok, onZero: ok, onTrim: ok, onFlush: ok });
  await Promise.all(Array.from({ length: 20 }, (_, i) => b.write(0, Buffer.alloc(8, i))));
  assert.equal(maxActive, 1);
  assert.equal((await inner.read(0, 1))[0], 19, 'the last observed write wins');
});
