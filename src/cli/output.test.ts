import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  Output,
  ProgressBar,
  cell,
  formatDuration,
  formatJobError,
  formatTable,
  formatTime,
  jobPercent,
  renderProgress,
} from './output.js';
import { MemoryStream, makeJob } from './test-support.js';

void test('tables align columns under upper-case headers', () => {
  const text = formatTable(
    [
      { name: 'primary', kind: 'onprem', n: 1 },
      { name: 'dr', kind: null, n: 22 },
    ],
    [
      { header: 'name', value: (r) => r.name },
      { header: 'kind', value: (r) => r.kind },
      { header: 'n', value: (r) => r.n },
    ],
  );
  assert.equal(text, 'NAME     KIND    N\nprimary  onprem  1\ndr       -       22\n');
});

void test('cells: dash for nothing, commas for arrays, one line for text', () => {
  assert.equal(cell(null), '-');
  assert.equal(cell(undefined), '-');
  assert.equal(cell(''), '-');
  assert.equal(cell([]), '-');
  assert.equal(cell(['a', 'b']), 'a, b');
  assert.equal(cell('x\n  y'), 'x y');
  assert.equal(cell(false), 'false');
  assert.equal(cell({ a: 1 }), '{"a":1}');
});

void test('Output prints the JSON as is with --json and the table otherwise', () => {
  const out = new MemoryStream();
  const o = new Output(true, out, new MemoryStream());
  const body = { items: [{ id: 'x', nested: { n: 1 } }], total: 1 };
  o.result(body, () => o.line('not this'));
  assert.deepEqual(JSON.parse(out.text), body);
  const human = new MemoryStream();
  const h = new Output(false, human, new MemoryStream());
  h.result(body, () => h.table([], [{ header: 'id', value: () => 'x' }]));
  assert.equal(human.text, '(none)\n');
});

void test('times and durations for people', () => {
  assert.equal(formatTime('2024-05-01T10:00:00.000Z'), '2024-05-01 10:00:00Z');
  assert.equal(formatTime(null), '-');
  assert.equal(formatDuration(850), '850ms');
  assert.equal(formatDuration(12_340), '12.3s');
  assert.equal(formatDuration(245_000), '4m05s');
  assert.equal(formatDuration(7_800_000), '2h10m');
});

void test('a job error shows code, seed code, causes and action', () => {
  const lines = formatJobError({
    code: 'TARGET_HOST_OUT_OF_MEMORY',
    message: 'not enough memory',
    possibleCauses: 'The host is full.',
    recommendedAction: 'Free memory.',
    seedCode: 8038,
  });
  assert.deepEqual(lines, [
    'Error: not enough memory (TARGET_HOST_OUT_OF_MEMORY [8038])',
    'Possible causes: The host is full.',
    'Recommended action: Free memory.',
  ]);
});

void test('job percent counts finished steps and the running step progress', () => {
  const job = makeJob([
    ['a', 'Succeeded'],
    ['b', 'InProgress', 50],
    ['c', 'NotStarted'],
    ['d', 'NotStarted'],
  ]);
  assert.equal(jobPercent(job), 37);
  assert.equal(jobPercent({ ...job, state: 'Succeeded' }), 100);
  assert.equal(renderProgress(job, 10), '[####------]  37%  step 2/4 b');
});

void test('the progress bar draws only on a terminal and ends its line', () => {
  const job = makeJob([['a', 'InProgress', 10]]);
  const pipe = new MemoryStream(false);
  const p = new ProgressBar(pipe);
  p.update(job);
  p.finish();
  assert.equal(pipe.text, '');
  const tty = new MemoryStream(true, 80);
  const bar = new ProgressBar(tty, 10);
  bar.update(job);
  bar.update({ ...job, state: 'Succeeded' });
  bar.finish();
  assert.ok(
    tty.text.startsWith('\r\x1b[2K[#---------]  10%  step 1/1 a\r\x1b[2K[##########] 100%'),
    tty.text,
  );
  assert.ok(tty.text.endsWith('\n'));
});
