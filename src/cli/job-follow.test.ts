import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Job } from '../domain/model.js';
import { OsrClient } from './client.js';
import { followJob, handleStartedJob, reportSettledJob } from './job-follow.js';
import { Output } from './output.js';
import { MemoryStream, makeJob } from './test-support.js';

/** A client whose server answers GET /jobs/{id} with the next job of the list (the last one repeats). */
function scriptedClient(jobs: Job[]): { client: OsrClient; calls: () => number } {
  let i = 0;
  const fakeFetch: typeof fetch = (input) => {
    const url = input instanceof Request ? input.url : input instanceof URL ? input.href : input;
    assert.match(url, /\/api\/v1\/jobs\/job-1$/);
    const job = jobs[Math.min(i, jobs.length - 1)];
    i += 1;
    return Promise.resolve(new Response(JSON.stringify(job), { status: 200 }));
  };
  return { client: new OsrClient({ server: 'http://x', token: 't', fetch: fakeFetch }), calls: () => i };
}

void test('following prints each step change once and stops when the job ends', async () => {
  const jobs = [
    makeJob([
      ['prepare', 'InProgress'],
      ['copy', 'NotStarted'],
    ]),
    makeJob([
      ['prepare', 'InProgress'],
      ['copy', 'NotStarted'],
    ]),
    makeJob([
      ['prepare', 'Succeeded'],
      ['copy', 'InProgress', 40],
    ]),
    makeJob(
      [
        ['prepare', 'Succeeded'],
        ['copy', 'Succeeded'],
      ],
      { state: 'Succeeded', endedAt: '2024-01-01T00:00:03.000Z' },
    ),
  ];
  const { client, calls } = scriptedClient(jobs);
  const stdout = new MemoryStream();
  const out = new Output(false, stdout, new MemoryStream());
  const job = await followJob(client, 'job-1', { out, style: 'lines', intervalMs: 1 });
  assert.equal(job.state, 'Succeeded');
  assert.equal(calls(), 4);
  const lines = stdout.text.trimEnd().split('\n');
  assert.deepEqual(
    lines.map((l) => l.replace(/ \([^)]*\)$/, '')),
    [
      '[1/2] prepare: InProgress',
      '[1/2] prepare: Succeeded',
      '[2/2] copy: InProgress 40%',
      '[2/2] copy: Succeeded',
    ],
  );
  assert.equal(reportSettledJob(out, job), 0);
});

void test('a failed job reports its error and exit code 3; WaitingForAction exits 0 with the prompt', () => {
  const failed = makeJob([['power on', 'Failed']], {
    state: 'Failed',
    error: {
      code: 'TARGET_HOST_OUT_OF_MEMORY',
      message: 'host h1 has 100 MB free',
      possibleCauses: 'c',
      recommendedAction: 'a',
      seedCode: 8038,
    },
  });
  const stdout = new MemoryStream();
  const out = new Output(false, stdout, new MemoryStream());
  assert.equal(reportSettledJob(out, failed), 3);
  assert.match(stdout.text, /Failed/);
  assert.match(stdout.text, /TARGET_HOST_OUT_OF_MEMORY \[8038\]/);
  assert.match(stdout.text, /Recommended action: a/);
  const waiting = makeJob([['wait', 'InProgress']], {
    state: 'WaitingForAction',
    waiting: { name: 'Cleanup', prompt: 'Clean up the test', since: '2024-01-01T00:00:00Z' },
  });
  const s2 = new MemoryStream();
  assert.equal(reportSettledJob(new Output(false, s2, new MemoryStream()), waiting), 0);
  assert.match(s2.text, /Clean up the test/);
  assert.equal(
    reportSettledJob(new Output(true, new MemoryStream(), new MemoryStream()), {
      ...failed,
      state: 'Cancelled',
    }),
    3,
  );
});

void test('--wait with --json prints only the final job; without --wait the API answer', async () => {
  const done = makeJob([['a', 'Succeeded']], { state: 'Succeeded' });
  const { client } = scriptedClient([done]);
  const stdout = new MemoryStream();
  const out = new Output(true, stdout, new MemoryStream());
  const previous = process.exitCode;
  try {
    await handleStartedJob(
      client,
      out,
      { job: makeJob([['a', 'NotStarted']]), item: { id: 'i' } },
      { wait: true, intervalMs: 1 },
    );
    assert.deepEqual(JSON.parse(stdout.text), done);
    assert.equal(process.exitCode, 0);
  } finally {
    process.exitCode = previous;
  }
  const s2 = new MemoryStream();
  const accepted = { job: makeJob([['a', 'NotStarted']]), item: { id: 'i' } };
  await handleStartedJob(client, new Output(true, s2, new MemoryStream()), accepted, { wait: false });
  assert.deepEqual(JSON.parse(s2.text), accepted);
});

void test('the progress bar goes to a terminal stderr and stdout keeps the report', async () => {
  const jobs = [
    makeJob([['a', 'InProgress', 50]]),
    makeJob([['a', 'Failed']], {
      state: 'Failed',
      error: { code: 'X', message: 'm', possibleCauses: 'c', recommendedAction: 'r', seedCode: null },
    }),
  ];
  const { client } = scriptedClient(jobs);
  const stdout = new MemoryStream();
  const stderr = new MemoryStream(true, 100);
  const out = new Output(false, stdout, stderr);
  const previous = process.exitCode;
  try {
    await handleStartedJob(client, out, { job: jobs[0] }, { wait: true, intervalMs: 1 });
    assert.equal(process.exitCode, 3);
  } finally {
    process.exitCode = previous;
  }
  assert.match(stderr.text, /step 1\/1 a/);
  assert.doesNotMatch(stdout.text, /\[#/);
  assert.match(stdout.text, /Error: m \(X\)/);
});
