import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import type { JournalStatus } from './journal/journal.js';
import type { RecoveryPointInfo } from './replica/replica-store.js';
import { replicationStatus } from './status.js';
import type { SenderStatus } from './transport/sender.js';

const NOW = Date.parse('2026-01-01T12:00:00Z');

const sender: SenderStatus = {
  state: 'streaming',
  ackedSeq: 90,
  sentSeq: 100,
  lastSeq: 100,
  lagSeq: 10,
  lagBytes: 4096,
  lagSeconds: 0.4,
  bytesRaw: 3000,
  bytesWire: 1000,
  bytesZero: 0,
  compressionRatio: 3,
  throughputBytesPerSec: 5e6,
  inFlightBytes: 4096,
  connects: 1,
  rebases: 0,
  lastError: null,
  lastErrorCode: null,
};

const journal = (resync: boolean): JournalStatus => ({
  mode: resync ? 'resync' : 'normal',
  resyncRequired: resync,
  firstSeq: 1,
  lastSeq: 100,
  durableSeq: 100,
  storedBytes: 1 << 20,
  segments: 1,
  dirtyBytes: resync ? 65536 : 0,
  appendCalls: 1,
  syncCalls: 1,
});

const points: RecoveryPointInfo[] = [
  { id: 'a', seq: 10, time: NOW - 600_000, type: 'app-consistent', pending: false },
  { id: 'c', seq: 50, time: NOW - 20_000, type: 'crash-consistent', pending: false },
  { id: 'p', seq: 99, time: NOW - 1_000, type: 'crash-consistent', pending: true },
];

test('combines sender and replica figures; RPO is the age of the newest processed point', () => {
  const r = replicationStatus({
    sender,
    journal: journal(false),
    points,
    copyFrequencySeconds: 30,
    now: NOW,
  });
  assert.equal(r.lagSeconds, 0.4);
  assert.equal(r.lagBytes, 4096);
  assert.equal(r.compressionRatio, 3);
  assert.equal(r.throughputBps, 5e6);
  assert.equal(r.rpoSeconds, 20);
  assert.equal(r.latestPoint?.id, 'c');
  assert.equal(r.latestAppConsistentPoint?.id, 'a');
  assert.deepEqual(
    r.points.map((p) => p.id),
    ['a', 'c'],
  );
  assert.equal(r.health, 'Normal');
  assert.equal(r.healthReason, null);
});

test('resync required is Critical; an old newest point is Warning; a down link is Warning', () => {
  assert.equal(
    replicationStatus({ sender, journal: journal(true), points, copyFrequencySeconds: 30, now: NOW }).health,
    'Critical',
  );
  const old = replicationStatus({ sender, points, copyFrequencySeconds: 30, now: NOW + 100_000 });
  assert.equal(old.health, 'Warning');
  assert.match(old.healthReason ?? '', /RPO/);
  const down = replicationStatus({
    sender: { ...sender, state: 'backoff', lastError: 'ECONNREFUSED' },
    points,
    copyFrequencySeconds: 30,
    now: NOW,
  });
  assert.equal(down.health, 'Warning');
  assert.match(down.healthReason ?? '', /link is down.*ECONNREFUSED/);
  const none = replicationStatus({ copyFrequencySeconds: 30, now: NOW });
  assert.equal(none.rpoSeconds, null);
  assert.equal(none.latestPoint, null);
});
