import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { mulberry32, randomBytes } from '../../../test/dataplane/source-support.js';
import type { JournalEntry } from '../journal/record.js';
import { decodeBatch, encodeBatch } from './batch.js';
import type { EncodedBatch } from './batch.js';
import { encodeFrame, FrameDecoder, FrameError, FrameType } from './frame.js';
import { TokenBucket } from './token-bucket.js';

function payloadOf(b: EncodedBatch): Buffer {
  const payload = Buffer.concat(b.parts);
  assert.equal(payload.length, b.length);
  return payload;
}

function sample(): JournalEntry[] {
  const rnd = mulberry32(3);
  const mixed = Buffer.concat([randomBytes(rnd, 4096, true), Buffer.alloc(8192), randomBytes(rnd, 100)]);
  return [
    { kind: 'write', seq: 1, time: 1000, diskId: 'disk-a', offset: 4096, data: mixed },
    { kind: 'write', seq: 2, time: 1001, diskId: 'disk-b', offset: 0, data: Buffer.alloc(65536) },
    { kind: 'write', seq: 3, time: 1002, diskId: 'disk-a', offset: 100, data: Buffer.alloc(5000) },
    { kind: 'zero', seq: 4, time: 1003, diskId: 'disk-b', offset: 1 << 20, length: 12345 },
    { kind: 'marker', seq: 5, time: 1004, markerType: 'app-consistent', pointId: 'pt-1' },
    { kind: 'offline', seq: 6, time: 1005, diskId: 'disk-a', offset: 0, length: 1 << 20 },
    { kind: 'write', seq: 7, time: 1006, diskId: 'disk-a', offset: 0, data: Buffer.alloc(0) },
    { kind: 'resync', seq: 8, time: 1007, phase: 'begin' },
    { kind: 'resync', seq: 9, time: 1008, phase: 'end' },
  ];
}

test('a batch round-trips with and without compression; aligned zero blocks travel as runs', async () => {
  for (const compress of [false, true]) {
    const entries = sample();
    const b = await encodeBatch(entries, compress);
    assert.equal(b.zeroBytes, 8192 + 65536, 'only whole aligned zero blocks count');
    const back = await decodeBatch(payloadOf(b), b.flags);
    assert.equal(back.length, entries.length);
    // The all-zero write becomes a zero change; the rest come back as they were.
    assert.deepEqual(back[1], {
      kind: 'zero',
      seq: 2,
      time: 1001,
      diskId: 'disk-b',
      offset: 0,
      length: 65536,
    });
    assert.deepEqual(
      back.filter((_, i) => i !== 1),
      entries.filter((_, i) => i !== 1),
    );
    if (compress)
      assert.ok(payloadOf(b).length < b.rawBytes / 2, `compressed ${b.rawBytes} → ${payloadOf(b).length}`);
    else assert.ok(payloadOf(b).length < b.rawBytes - 70_000, 'zero runs are not sent');
  }
});

test('malformed batches are refused with FrameError', async () => {
  const b = await encodeBatch(sample(), false);
  await assert.rejects(decodeBatch(payloadOf(b).subarray(0, payloadOf(b).length - 3), 0), FrameError);
  await assert.rejects(decodeBatch(Buffer.concat([payloadOf(b), Buffer.from([1])]), 0), FrameError);
  const c = await encodeBatch(sample(), true);
  const bad = Buffer.from(payloadOf(c));
  bad.writeUInt32LE(bad.readUInt32LE(0) + 1, 0);
  await assert.rejects(decodeBatch(bad, c.flags), FrameError);
  await assert.rejects(decodeBatch(Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]), c.flags), FrameError);
});

test('frames split anywhere decode; a flipped bit, a bad magic or version is refused', () => {
  const frames = [
    encodeFrame(FrameType.HELLO, Buffer.from('{"a":1}')),
    encodeFrame(FrameType.BATCH, Buffer.alloc(100_000, 7), 1),
    encodeFrame(FrameType.KEEPALIVE),
  ];
  const all = Buffer.concat(frames);
  const rnd = mulberry32(5);
  for (let trial = 0; trial < 20; trial++) {
    const d = new FrameDecoder();
    const got = [];
    for (let at = 0; at < all.length;) {
      const n = 1 + Math.floor(rnd() * 20_000);
      got.push(...d.push(all.subarray(at, at + n)));
      at += n;
    }
    assert.deepEqual(
      got.map((f) => [f.type, f.flags, f.payload.length]),
      [
        [FrameType.HELLO, 0, 7],
        [FrameType.BATCH, 1, 100_000],
        [FrameType.KEEPALIVE, 0, 0],
      ],
    );
  }
  for (const at of [0, 4, 5, 9, 14, 16 + 50_000]) {
    const bad = Buffer.from(frames[1]!);
    bad[at]! ^= 0x04;
    assert.throws(() => new FrameDecoder().push(bad), FrameError, `flip at byte ${at}`);
  }
});

test('the token bucket holds the rate in force and lets everything through when unlimited', async () => {
  let limit: number | null = 80; // Mbit/s = 10 MB/s
  const bucket = new TokenBucket({ limitAt: () => limit, burstSeconds: 0.01 });
  const t0 = Date.now();
  for (let i = 0; i < 10; i++) await bucket.take(100_000);
  const took = Date.now() - t0;
  assert.ok(took >= 80, `1 MB at 10 MB/s took ${took} ms`);
  assert.ok(took < 1000, `1 MB at 10 MB/s took ${took} ms`);
  limit = null;
  const t1 = Date.now();
  for (let i = 0; i < 100; i++) await bucket.take(1_000_000);
  assert.ok(Date.now() - t1 < 50);
});

test('a batch of incompressible data is sent uncompressed; a compressible one still compressed', async () => {
  const rnd = mulberry32(8);
  const random: JournalEntry[] = [];
  const text: JournalEntry[] = [];
  for (let i = 0; i < 8; i++) {
    random.push({
      kind: 'write',
      seq: i + 1,
      time: 1,
      diskId: 'd',
      offset: i * 65536,
      data: randomBytes(rnd, 65536),
    });
    text.push({
      kind: 'write',
      seq: i + 1,
      time: 1,
      diskId: 'd',
      offset: i * 65536,
      data: randomBytes(rnd, 65536, true),
    });
  }
  const r = await encodeBatch(random, true);
  assert.equal(r.flags, 0, 'random data is not compressed');
  assert.ok(payloadOf(r).length >= r.rawBytes - 64, 'and not expanded either');
  assert.deepEqual(await decodeBatch(payloadOf(r), r.flags), random);
  const t = await encodeBatch(text, true);
  assert.notEqual(t.flags, 0, 'compressible data is compressed');
  assert.ok(payloadOf(t).length < t.rawBytes / 2);
  assert.deepEqual(await decodeBatch(payloadOf(t), t.flags), text);
  // Random data with a compressible stretch in the middle is sampled there too.
  const mixed = [...random.slice(0, 3), ...text.slice(3, 6).map((e) => e), ...random.slice(6)];
  const m = await encodeBatch(mixed, true);
  assert.notEqual(m.flags, 0, 'a batch whose samples compress is compressed');
});
