/**
 * kill -9 of the sending and the receiving process mid-stream: after restarts the recovery side holds every
 * change exactly once, in order, with the bytes the source wrote.
 */
import * as assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  dpChange,
  FileSink,
  makeIdentity,
  startFixture,
  stopFixture,
  tempDir,
  waitFor,
} from './source-support.js';
import type { Proc } from './source-support.js';

test('kill -9 of the receiver and of the sender mid-stream: every change arrives exactly once', async () => {
  const t = tempDir('osr-crash-');
  const procs: Proc[] = [];
  try {
    makeIdentity(t.dir, 'source');
    makeIdentity(t.dir, 'recovery');
    const sinkPath = join(t.dir, 'sink.osrj');
    const count = 3000;
    const base = { OSR_DP_CERTS: t.dir, OSR_DP_SINK: sinkPath, OSR_DP_JOURNAL: join(t.dir, 'journal') };
    const received = (): number => FileSink.readAll(sinkPath).entries.length;

    const r1 = startFixture('dp-receiver', { ...base, OSR_DP_PORT: '0' });
    procs.push(r1);
    const port = (await r1.firstLine).split(' ')[1]!;
    const s1 = startFixture('dp-sender', { ...base, OSR_DP_PORT: port, OSR_DP_COUNT: String(count) });
    procs.push(s1);
    await s1.firstLine;
    await waitFor(() => received() >= 400, 'the first changes to arrive', 30_000);
    await stopFixture(r1, 'SIGKILL');
    const r2 = startFixture('dp-receiver', { ...base, OSR_DP_PORT: port });
    procs.push(r2);
    await r2.firstLine;
    await waitFor(() => received() >= 1200, 'the stream to resume after the receiver was killed', 30_000);
    await stopFixture(s1, 'SIGKILL');
    const s2 = startFixture('dp-sender', { ...base, OSR_DP_PORT: port, OSR_DP_COUNT: String(count) });
    procs.push(s2);
    const resumedAt = Number((await s2.firstLine).split(' ')[1]);
    assert.ok(
      resumedAt >= 1200 && resumedAt <= count,
      `the restarted sender found ${resumedAt} journaled changes`,
    );
    await waitFor(() => received() >= count, 'every change to arrive', 60_000);

    const { entries } = FileSink.readAll(sinkPath);
    assert.equal(entries.length, count);
    entries.forEach((e, i) => {
      assert.equal(e.seq, i + 1);
      assert.equal(e.kind, 'write');
      if (e.kind !== 'write') return;
      const want = dpChange(e.seq);
      assert.equal(e.offset, want.offset);
      assert.ok(e.data.equals(want.data), `bytes of change ${e.seq}`);
    });
  } finally {
    for (const p of procs) await stopFixture(p, 'SIGTERM');
    t.remove();
  }
});
