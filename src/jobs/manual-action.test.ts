import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Job, JobStep } from '../domain/model.js';
import { parkRecordOf, waitUntilResumed } from './manual-action.js';
import type { ParkedStepOutput } from './manual-action.js';
import type { StepContext } from './types.js';
import { isWaitRequest, systemClock } from './types.js';

function ctxWith(output: unknown, comments: { at: string; text: string }[]): StepContext<unknown> {
  const step: JobStep = {
    index: 0,
    name: 'confirm',
    state: 'InProgress',
    startedAt: null,
    endedAt: null,
    progress: null,
    error: null,
    skipReason: null,
    output,
  };
  const job = { id: 'j1', steps: [step], comments } as unknown as Job;
  return {
    job,
    input: null,
    stepIndex: 0,
    stepName: 'confirm',
    outputs: {},
    signal: new AbortController().signal,
    effectKey: 'j1:0',
    comments,
    clock: systemClock,
    progress: () => Promise.resolve(),
  };
}

const parked = (name: string, commentCount: number): ParkedStepOutput => ({
  __osrParked: { name, prompt: 'p', since: '2030-01-01T00:00:00.000Z', commentCount },
});

test('waits the first time, even when the job already has comments', () => {
  const r = waitUntilResumed(
    ctxWith(null, [{ at: '2029-01-01T00:00:00.000Z', text: 'old' }]),
    'confirm',
    'Go?',
  );
  assert.ok(isWaitRequest(r));
  assert.deepEqual(r.waiting, { name: 'confirm', prompt: 'Go?' });
});

test('after a resume returns the latest comment given since the step parked', () => {
  const comments = [
    { at: '2029-01-01T00:00:00.000Z', text: 'before' },
    { at: '2030-01-01T00:01:00.000Z', text: 'first' },
    { at: '2030-01-01T00:02:00.000Z', text: 'second' },
  ];
  assert.equal(waitUntilResumed(ctxWith(parked('confirm', 1), comments), 'confirm', 'Go?'), 'second');
  assert.equal(waitUntilResumed(ctxWith(parked('confirm', 2), comments), 'confirm', 'Go?'), 'second');
});

test('keeps waiting when no comment came since parking, or the park was for another wait', () => {
  const comments = [{ at: '2029-01-01T00:00:00.000Z', text: 'before' }];
  assert.ok(isWaitRequest(waitUntilResumed(ctxWith(parked('confirm', 1), comments), 'confirm', 'Go?')));
  const more = [...comments, { at: '2030-01-01T00:01:00.000Z', text: 'x' }];
  assert.ok(isWaitRequest(waitUntilResumed(ctxWith(parked('other', 1), more), 'confirm', 'Go?')));
});

test('parkRecordOf reads only well-formed records', () => {
  assert.equal(parkRecordOf(null), undefined);
  assert.equal(parkRecordOf({ __osrParked: { name: 'a' } }), undefined);
  assert.equal(parkRecordOf('text'), undefined);
  assert.deepEqual(parkRecordOf(parked('a', 3))?.commentCount, 3);
});
