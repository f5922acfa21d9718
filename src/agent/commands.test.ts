import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../domain/errors.js';
import { Backoff } from './agent.js';
import { CommandExecutor } from './commands.js';
import { CommandLog } from './data-dir.js';

void test('a command runs once per id: again from the log, even after the log is reopened', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-cmd-'));
  try {
    let runs = 0;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const handlers = {
      'x.do': async (p: unknown) => {
        runs++;
        await gate;
        return { echo: p };
      },
    };
    const log = await CommandLog.open(dir);
    const ex = new CommandExecutor(handlers, log);
    const cmd = { id: 'c1', type: 'x.do', payload: 7 };
    const first = ex.execute(cmd);
    const second = ex.execute(cmd);
    assert.deepEqual(ex.running, ['c1']);
    release();
    assert.deepEqual(await first, { state: 'Succeeded', result: { echo: 7 } });
    assert.deepEqual(await second, await first);
    assert.deepEqual(await ex.execute(cmd), await first);
    assert.equal(runs, 1);
    await log.close();

    const reopened = await CommandLog.open(dir);
    const ex2 = new CommandExecutor(handlers, reopened);
    assert.deepEqual(await ex2.execute(cmd), { state: 'Succeeded', result: { echo: 7 } });
    assert.equal(runs, 1, 'answered from the log');
    assert.equal(reopened.starts('c1'), 1);
    await reopened.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('failures are outcomes with the catalog fields; unknown types are OPERATION_UNAVAILABLE; a torn log line is ignored', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-cmd-'));
  try {
    const log = await CommandLog.open(dir);
    const ex = new CommandExecutor(
      {
        'x.fail': () => Promise.reject(new OsrError('TARGET_HOST_OUT_OF_MEMORY', 'h1 has 0 MiB free')),
        'x.crash': () => Promise.reject(new Error('boom')),
      },
      log,
    );
    const f = await ex.execute({ id: 'f', type: 'x.fail', payload: null });
    assert.equal(f.state, 'Failed');
    if (f.state === 'Failed') {
      assert.equal(f.error.code, 'TARGET_HOST_OUT_OF_MEMORY');
      assert.equal(f.error.seedCode, 8038);
      assert.match(f.error.recommendedAction ?? '', /memory/);
    }
    const c = await ex.execute({ id: 'c', type: 'x.crash', payload: null });
    assert.equal(c.state === 'Failed' && c.error.code, 'INTERNAL');
    const u = await ex.execute({ id: 'u', type: 'x.nope', payload: null });
    assert.equal(u.state === 'Failed' && u.error.code, 'OPERATION_UNAVAILABLE');
    await log.close();
    const { appendFileSync } = await import('node:fs');
    appendFileSync(join(dir, 'commands.jsonl'), '{"id":"torn","event":"do');
    const again = await CommandLog.open(dir);
    assert.equal(again.outcome('f')?.state, 'Failed');
    assert.equal(again.outcome('torn'), undefined);
    await again.close();
    assert.ok(readFileSync(join(dir, 'commands.jsonl'), 'utf8').includes('"id":"f"'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('backoff doubles up to its cap and starts over after a success', () => {
  const b = new Backoff(100, 1000);
  const seen = Array.from({ length: 6 }, () => b.next());
  const nominal = [100, 200, 400, 800, 1000, 1000];
  seen.forEach((d, i) => {
    const n = nominal[i] ?? 0;
    assert.ok(d >= n * 0.8 && d <= n * 1.2, `attempt ${i}: ${d} near ${n}`);
  });
  b.reset();
  assert.ok(b.next() <= 120);
});
