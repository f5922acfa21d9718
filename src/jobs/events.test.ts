import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Job } from '../domain/model.js';
import { JobEvents } from './events.js';
import type { JobEvent } from './events.js';

test('delivers events to listeners until they unsubscribe; a throwing listener does not stop others', () => {
  const errors: unknown[] = [];
  const events = new JobEvents((err) => errors.push(err));
  const seen: JobEvent[] = [];
  events.on('job', () => {
    throw new Error('listener bug');
  });
  const off = events.on('job', (e) => seen.push(e));
  const job = { id: 'j1' } as Job;
  events.emit({ kind: 'started', job });
  off();
  events.emit({ kind: 'ended', job });
  assert.deepEqual(
    seen.map((e) => e.kind),
    ['started'],
  );
  assert.equal(errors.length, 2);
  assert.equal(events.listenerCount(), 1);
});
