import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { ByteQueue } from './byte-queue.js';

test('take returns bytes in order across arbitrary chunk boundaries', () => {
  const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
  for (const split of [1, 3, 7, 64, 999, 1000]) {
    const q = new ByteQueue();
    for (let i = 0; i < data.length; i += split) q.push(data.subarray(i, i + split));
    assert.equal(q.length, 1000);
    assert.equal(q.peekUInt32BE(0), data.readUInt32BE(0));
    const parts = [q.take(5), q.take(0), q.take(300)];
    q.skip(100);
    parts.push(q.take(595));
    assert.equal(q.length, 0);
    assert.deepEqual(Buffer.concat(parts), Buffer.concat([data.subarray(0, 305), data.subarray(405)]));
  }
});

test('take within one chunk does not copy; across chunks copies once', () => {
  const q = new ByteQueue();
  const a = Buffer.from('abcdef');
  q.push(a);
  q.push(Buffer.from('ghij'));
  const first = q.take(4);
  assert.equal(first.buffer, a.buffer);
  assert.equal(q.take(4).toString(), 'efgh');
  assert.throws(() => q.take(3), RangeError);
});

test('takeInto copies the next bytes across chunks into a target at an offset', () => {
  const q = new ByteQueue();
  q.push(Buffer.from('abc'));
  q.push(Buffer.from('defgh'));
  const target = Buffer.alloc(10, '.');
  q.takeInto(target, 2, 5);
  assert.equal(target.toString(), '..abcde...');
  assert.equal(q.length, 3);
  assert.equal(q.take(3).toString(), 'fgh');
  assert.throws(() => q.takeInto(target, 0, 1), RangeError);
});
