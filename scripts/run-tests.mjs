#!/usr/bin/env node
// Runs every compiled test file (dist/**/*.test.js) with node's test runner.
// Arguments filter the files by substring: `node scripts/run-tests.mjs store nbd`.
// The run is its own process group: when it ends (or exceeds OSR_TEST_TIMEOUT_MIN, default
// 30 minutes) anything a test left behind is killed, so a leaked process can neither hold the
// output open nor make CI wait forever.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = walk('dist', [])
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const concurrency = process.env.OSR_TEST_CONCURRENCY ?? '2';
const limitMin = Number(process.env.OSR_TEST_TIMEOUT_MIN ?? '30');
const child = spawn(
  process.execPath,
  ['--enable-source-maps', '--test', `--test-concurrency=${concurrency}`, ...files],
  { stdio: 'inherit', detached: true },
);
const killGroup = (signal) => {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group is empty
  }
};
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => killGroup(signal));
const timer = setTimeout(() => {
  console.error(`tests still running after ${limitMin} minutes (OSR_TEST_TIMEOUT_MIN): stopping them`);
  killGroup('SIGKILL');
}, limitMin * 60_000);
child.on('exit', (code, signal) => {
  clearTimeout(timer);
  killGroup('SIGKILL');
  process.exit(code ?? (signal === null ? 1 : 128));
});
