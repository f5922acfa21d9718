import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { AllocationMap, GranuleState } from './allocation-map.js';

const G = 64 * 1024;

test('extents merge equal granules, clip to the request and honour the cap', () => {
  const m = new AllocationMap(10 * G + 100, G);
  m.markData(G + 5, 10);
  m.markData(2 * G, 1);
  m.set(5, GranuleState.ZERO);
  assert.deepEqual(m.extents(0, m.size), [
    { length: G, hole: true, zero: true },
    { length: 2 * G, hole: false, zero: false },
    { length: 2 * G, hole: true, zero: true },
    { length: G, hole: false, zero: true },
    { length: 4 * G + 100, hole: true, zero: true },
  ]);
  assert.deepEqual(m.extents(G + 10, 20), [{ length: 20, hole: false, zero: false }]);
  assert.deepEqual(m.extents(0, m.size, 2).length, 2);
  assert.equal(m.isZero(0, G), true);
  assert.equal(m.isZero(G - 1, 2), false);
});

test('covered granules include the partial last granule only when the range reaches the end', () => {
  const m = new AllocationMap(3 * G + 10, G);
  assert.deepEqual(m.coveredGranules(1, 2 * G), { first: 1, end: 2 });
  assert.deepEqual(m.coveredGranules(0, 3 * G + 10), { first: 0, end: 4 });
  assert.deepEqual(m.coveredGranules(10, 20), { first: 1, end: 1 });
});

test('encode/decode round-trips and rejects tampering or a changed image', () => {
  const m = new AllocationMap(100 * G, G);
  m.markData(7 * G, 3 * G);
  m.set(50, GranuleState.ZERO);
  const id = { size: 100 * G, mtimeNs: 123456789n };
  const b = m.encode(id);
  const back = AllocationMap.decode(b, id).map;
  assert.ok(back);
  assert.deepEqual(back.extents(0, back.size), m.extents(0, m.size));
  assert.deepEqual(back.counts(), { hole: 96, zero: 1, data: 3 });

  const bad = Buffer.from(b);
  bad.writeUInt8(bad[bad.length - 1]! ^ 1, bad.length - 1);
  assert.equal(AllocationMap.decode(bad, id).reason, 'checksum mismatch');
  assert.match(AllocationMap.decode(b, { ...id, mtimeNs: 1n }).reason ?? '', /modified/);
  assert.match(AllocationMap.decode(b, { ...id, size: G }).reason ?? '', /size/);
  assert.equal(AllocationMap.decode(b.subarray(0, 20), id).reason, 'bad magic');
  assert.equal(
    AllocationMap.decode(Buffer.from('garbage!garbage!garbage!garbage!garbage!'), id).reason,
    'bad magic',
  );
});
