/**
 * The data plane wired into real agents (issue 5 item 6): a control plane and two `osr agent`
 * processes; protection enabled through the API runs the initial copy, ships the running
 * ledger machine's writes to the recovery agent's replica store, reports recovery points,
 * survives kill -9 of either agent mid-stream with nothing lost or applied twice, and
 * never passes disk bytes through the control plane (R-INF-7).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NbdClient } from '../../src/dataplane/nbd/client.js';
import { BIN, startWorld, waitUntil } from './harness.js';
import type { World } from './harness.js';
import {
  DISK_BYTES,
  LEDGER_BYTES,
  PREFILL_OFFSET,
  ledger,
  protectWeb,
  readRange,
  replicaImage,
  restartAgent,
  startSites,
  waitProtected,
  waitReplicaEqual,
  endedAfterEachTest,
} from './replication-support.js';
import type { ItemView, Sites } from './replication-support.js';

const exec = promisify(execFile);
const { worlds, recorders } = endedAfterEachTest();

async function world(): Promise<World> {
  const w = await startWorld();
  worlds.push(w);
  return w;
}

async function sites(w: World, extra: string[] = []): Promise<Sites> {
  const s = await startSites(w, extra);
  recorders.push(s.recorder);
  return s;
}

/** Runs `fn`; a failure carries the end of both agents' logs. */
async function withLogs(s: Sites, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    const tail = (t: string): string => t.slice(-4000);
    throw new Error(
      `${(err as Error).message}\n--- primary agent ---\n${tail(s.primary.out() + s.primary.err())}` +
        `\n--- recovery agent ---\n${tail(s.recovery.out() + s.recovery.err())}`,
      { cause: err },
    );
  }
}

/** `web`'s data disk (disk1) as the source agent serves it. */
async function webDisk(w: World): Promise<{ host: string; port: number; exportName: string }> {
  const r = await w.api<{ items: { name: string; disks: { id: string; nbdUri: string | null }[] }[] }>(
    'GET',
    '/vaults/default/machines?limit=100',
  );
  const uri = r.body.items.find((m) => m.name === 'web')?.disks.find((d) => d.id === 'disk1')?.nbdUri;
  assert.ok(uri, 'web has an NBD address');
  const u = new URL(uri);
  return { host: u.hostname, port: Number(u.port), exportName: u.pathname.slice(1) };
}

/** Writes `data` at `offset` through the source NBD front, reconnecting until it is acknowledged and flushed. */
async function writeThroughNbd(w: World, offset: number, data: Buffer, timeoutMs = 60_000): Promise<void> {
  await waitUntil(
    `a ${data.length}-byte write at ${offset} to be acknowledged`,
    async () => {
      const c = await NbdClient.connect({ ...(await webDisk(w)), timeoutMs: 5000 });
      try {
        for (let at = 0; at < data.length; at += 256 * 1024) {
          await c.write(offset + at, data.subarray(at, Math.min(data.length, at + 256 * 1024)));
        }
        await c.flush();
      } finally {
        await c.disconnect().catch(() => undefined);
      }
      return true;
    },
    timeoutMs,
  );
}

interface PointView {
  id: string;
  sequence: number;
  time: string;
  type: string;
}

async function points(w: World, itemId: string): Promise<PointView[]> {
  const r = await w.api<{ items: PointView[] }>('GET', `/vaults/default/items/${itemId}/points?limit=1000`);
  return r.body.items;
}

void test(
  'protecting a ledger machine replicates it site to site: Protected with points, live writes arrive, no disk bytes through the control plane',
  { timeout: 240_000 },
  async () => {
    const w = await world();
    const s = await sites(w, ['--point-interval', '1500']);
    await withLogs(s, async () => {
      const itemId = await protectWeb(w, { appConsistentFrequencyHours: 1 });
      const item = await waitProtected(w, itemId);
      assert.equal(item.initialReplicationProgress, 100);

      // The initial copy carried what was on the disk before protection.
      assert.ok(
        readRange(replicaImage(s, itemId), PREFILL_OFFSET, 256 * 1024).equals(
          readRange(s.sourceImage, PREFILL_OFFSET, 256 * 1024),
        ),
        'the bytes written before protection are in the replica',
      );
      // The copy streamed them: read from the disk as the link sent them, never written into the journal.
      const journalDir = join(s.primaryData, 'replication', itemId, 'journal');
      const copied = readRange(s.sourceImage, PREFILL_OFFSET, 4096);
      const segments = readdirSync(journalDir).filter((f) => statSync(join(journalDir, f)).isFile());
      assert.ok(segments.length > 0, 'the journal has segment files');
      for (const f of segments) {
        assert.ok(!readFileSync(join(journalDir, f)).includes(copied), `${f} holds no copied block`);
      }

      // Recovery points: crash-consistent after the copy, app-consistent through the ledger's freeze/thaw hook.
      const pts = await waitUntil('a crash- and an app-consistent point', async () => {
        const list = await points(w, itemId);
        const types = new Set(list.map((p) => p.type));
        return types.has('crash-consistent') && types.has('app-consistent') ? list : undefined;
      });
      assert.ok(pts.every((p) => p.sequence > 0 && !Number.isNaN(Date.parse(p.time))));
      // Crash-consistent points keep coming at the agent's point interval (the policy's copy frequency otherwise).
      const crash = await waitUntil('three crash-consistent points', async () => {
        const list = (await points(w, itemId)).filter((p) => p.type === 'crash-consistent');
        return list.length >= 3 ? list : undefined;
      });
      const seqs = crash.map((p) => p.sequence).sort((a, b) => a - b);
      assert.equal(new Set(seqs).size, seqs.length, 'each point is listed once');

      // Writes made after protection: a unique random pattern, and the ledger's own appends.
      const before = (await ledger(s, 'status')).count ?? 0;
      const pattern = randomBytes(2 * 1024 * 1024);
      const patternOffset = 5 * 1024 * 1024;
      await writeThroughNbd(w, patternOffset, pattern);
      await waitUntil('the pattern in the replica', () =>
        readRange(replicaImage(s, itemId), patternOffset, pattern.length).equals(pattern),
      );
      await waitUntil(
        'the ledger to append more records',
        async () => ((await ledger(s, 'status')).count ?? 0) > before + 5,
      );
      await ledger(s, 'freeze');
      try {
        await waitReplicaEqual(s, itemId);
      } finally {
        await ledger(s, 'thaw');
      }
      // Both agents' figures reach the item: lag and throughput from the source, backlog from the recovery side.
      const stats = await waitUntil('replication figures on the item', async () => {
        const r = await w.api<{
          replicationStats: {
            lagSeconds: number | null;
            lagBytes: number | null;
            backlogBytes: number | null;
            throughputBps: number | null;
            compressionRatio: number | null;
          } | null;
        }>('GET', `/vaults/default/items/${itemId}`);
        const st = r.body.replicationStats;
        return st !== null && st.backlogBytes !== null && st.lagSeconds !== null ? st : undefined;
      });
      assert.equal(typeof stats.throughputBps, 'number');
      assert.ok((stats.compressionRatio ?? 0) > 0);
      assert.ok((stats.lagBytes ?? -1) >= 0);

      // Every byte the agents sent the control plane: far fewer than the disk bytes replicated, none of the pattern.
      const sent = s.recorder.sent();
      const replicated = pattern.length + 256 * 1024;
      assert.ok(
        sent.length < replicated / 4,
        `agents sent ${sent.length} bytes to the control plane while ${replicated} disk bytes replicated`,
      );
      for (let at = 0; at + 64 <= pattern.length; at += 128 * 1024) {
        const slice = pattern.subarray(at, at + 64);
        assert.equal(sent.indexOf(slice), -1, 'no raw pattern bytes in any request');
        assert.equal(
          sent.indexOf(Buffer.from(slice.toString('base64'))),
          -1,
          'no base64 pattern in any request',
        );
        assert.equal(sent.indexOf(Buffer.from(slice.toString('hex'))), -1, 'no hex pattern in any request');
      }
      // The status reports that did travel carry the item's figures.
      assert.match(sent.toString('latin1'), /POST \/api\/v1\/agent\/replication-status/);
    });
  },
);

void test(
  'kill -9 of the recovery agent and of the source agent mid-stream: after restarts the replica equals the source',
  { timeout: 300_000 },
  async () => {
    const w = await world();
    const s = await sites(w);
    await withLogs(s, async () => {
      // 16 Mbit/s: a few MiB take seconds to ship, so the kills land mid-stream.
      const itemId = await protectWeb(w, { bandwidth: { limitMbps: 16 } });
      await waitProtected(w, itemId);

      // Recovery agent killed while a burst is on the wire.
      const burst1 = randomBytes(3 * 1024 * 1024);
      await writeThroughNbd(w, 1 * 1024 * 1024, burst1);
      await waitUntil('part of the burst at the replica', () =>
        readRange(replicaImage(s, itemId), 1 * 1024 * 1024, 64 * 1024).equals(burst1.subarray(0, 64 * 1024)),
      );
      s.recovery.child.kill('SIGKILL');
      await s.recovery.exited;
      assert.ok(
        !readRange(replicaImage(s, itemId), 4 * 1024 * 1024 - 64 * 1024, 64 * 1024).equals(
          burst1.subarray(burst1.length - 64 * 1024),
        ),
        'the recovery agent died before the burst was all in',
      );
      await s.recovery.exited;
      s.recovery = await restartAgent(w, s, 'recovery');

      // Source agent killed while the next burst is journaled but not yet shipped.
      const burst2 = randomBytes(3 * 1024 * 1024);
      await writeThroughNbd(w, 4 * 1024 * 1024, burst2);
      s.primary.child.kill('SIGKILL');
      assert.ok(
        !readRange(replicaImage(s, itemId), 7 * 1024 * 1024 - 64 * 1024, 64 * 1024).equals(
          burst2.subarray(burst2.length - 64 * 1024),
        ),
        'the source agent died before the burst was all shipped',
      );
      await s.primary.exited;
      assert.ok(
        readFileSync(s.sourceImage)
          .subarray(4 * 1024 * 1024, 7 * 1024 * 1024)
          .equals(burst2),
      );
      s.primary = await restartAgent(w, s, 'primary');

      await waitUntil(
        'the ledger to run again',
        async () => (await ledger(s, 'status')).count !== undefined,
        60_000,
      );
      await ledger(s, 'freeze');
      try {
        await waitReplicaEqual(s, itemId, 120_000);
      } finally {
        await ledger(s, 'thaw');
      }
      assert.equal(readFileSync(replicaImage(s, itemId)).length, DISK_BYTES);
      // The replica's ledger is an unbroken prefix (write order kept across both kills).
      const check = JSON.parse(
        (
          await exec(process.execPath, [
            BIN,
            'workload',
            'ledger-check',
            '--disk',
            replicaImage(s, itemId, 'disk0'),
            '--json',
          ])
        ).stdout,
      ) as { ok: boolean; records: number };
      assert.equal(check.ok, true);
      assert.ok(check.records > 0);
      const item = await w.api<{ protectionState: string }>('GET', `/vaults/default/items/${itemId}`);
      assert.equal(item.body.protectionState, 'Protected');
    });
  },
);

void test(
  'kill -9 of the source agent, then of the recovery agent, inside a streamed initial copy: it goes on where it stopped, Protected after restarts, the replica equals the source',
  { timeout: 300_000 },
  async () => {
    const w = await world();
    const s = await sites(w);
    await withLogs(s, async () => {
      // 6 MiB on the data disk before protection, copied at 4 Mbit/s: the kills land inside the copy.
      const data = randomBytes(6 * 1024 * 1024);
      await writeThroughNbd(w, 1024 * 1024, data);
      const itemId = await protectWeb(w, { bandwidth: { limitMbps: 4 } });
      const tail = data.subarray(data.length - 64 * 1024);
      // Killed once the agent saved a copy position on the data disk past its first block.
      const sourceJson = join(s.primaryData, 'replication', itemId, 'source.json');
      const saved = await waitUntil('a saved copy position on the data disk', () => {
        if (!existsSync(sourceJson)) return undefined;
        const at = (
          JSON.parse(readFileSync(sourceJson, 'utf8')) as {
            copy: { resumeAt?: { diskId: string; offset: number } };
          }
        ).copy.resumeAt;
        return at?.diskId === 'disk1' && at.offset > 1024 * 1024 ? at : undefined;
      });
      assert.ok(
        readRange(replicaImage(s, itemId), 1024 * 1024, saved.offset - 1024 * 1024).equals(
          data.subarray(0, saved.offset - 1024 * 1024),
        ),
        'every block before the saved position is at the replica',
      );
      s.primary.child.kill('SIGKILL');
      await s.primary.exited;
      assert.ok(
        !readRange(replicaImage(s, itemId), 7 * 1024 * 1024 - tail.length, tail.length).equals(tail),
        'the source agent died before the copy ended',
      );
      s.primary = await restartAgent(w, s, 'primary');

      // The restarted source goes on from the saved position; the recovery agent dies while it does.
      const rewritten = await waitUntil('the copy to start again', async () => {
        const r = await w.api<ItemView>('GET', `/vaults/default/items/${itemId}`);
        return r.body.protectionState !== 'Protected' && s.primary.err().includes('replication link up')
          ? r.body
          : undefined;
      });
      assert.notEqual(rewritten.protectionState, 'Protected');
      assert.match(s.primary.err(), /initial replication goes on where it stopped/);
      s.recovery.child.kill('SIGKILL');
      await s.recovery.exited;
      s.recovery = await restartAgent(w, s, 'recovery');

      const item = await waitProtected(w, itemId, 180_000);
      assert.equal(item.initialReplicationProgress, 100);
      await ledger(s, 'freeze');
      try {
        await waitReplicaEqual(s, itemId, 120_000);
      } finally {
        await ledger(s, 'thaw');
      }
    });
  },
);

void test(
  'initial replication offline (seed file exported and imported) and at a scheduled time both reach Protected',
  { timeout: 240_000 },
  async () => {
    const w = await world();
    const s = await sites(w);
    await withLogs(s, async () => {
      const seedDir = join(w.tmp, 'seed');
      const itemId = await protectWeb(w, {
        initialReplication: { mode: 'offline', exportPath: seedDir, importPath: seedDir },
      });
      await waitProtected(w, itemId);
      assert.ok(existsSync(join(seedDir, `${itemId}.osrseed`)), 'the seed file was exported');
      assert.ok(
        readRange(replicaImage(s, itemId), PREFILL_OFFSET, 256 * 1024).equals(
          readRange(s.sourceImage, PREFILL_OFFSET, 256 * 1024),
        ),
        'the seeded bytes are in the replica',
      );
      // Same machine, protected again with a scheduled copy: nothing is copied before startAt.
      const un = await w.api('POST', `/vaults/default/items/${itemId}/unprotect`, { deleteReplica: true });
      assert.ok(un.status < 300, JSON.stringify(un.body));
      await waitUntil(
        'protection disabled',
        async () => {
          const r = await w.api('GET', `/vaults/default/items/${itemId}`);
          return r.status === 404;
        },
        60_000,
      );
      assert.ok(!existsSync(join(s.recoveryData, 'replicas', itemId)), 'the replica was deleted');
      assert.ok(!existsSync(join(s.primaryData, 'replication', itemId)), 'the journal was removed');
      const startAt = new Date(Date.now() + 5000);
      const again = await protectWeb(
        w,
        { initialReplication: { mode: 'scheduled', startAt: startAt.toISOString() } },
        'e2e-scheduled',
      );
      const early = await w.api<ItemView>('GET', `/vaults/default/items/${again}`);
      if (Date.now() < startAt.getTime() - 500) {
        assert.ok(early.body.initialReplicationProgress < 100, 'no copy before the scheduled time');
      }
      await waitProtected(w, again);
      assert.ok(Date.now() >= startAt.getTime(), 'Protected only after the scheduled start');
      await ledger(s, 'freeze');
      try {
        await waitReplicaEqual(s, again);
      } finally {
        await ledger(s, 'thaw');
      }
    });
  },
);

void test(
  'a source agent that lost its journal re-bases and resyncs: the replica equals the source again',
  { timeout: 240_000 },
  async () => {
    const w = await world();
    const s = await sites(w);
    await withLogs(s, async () => {
      const itemId = await protectWeb(w);
      await waitProtected(w, itemId);
      const before = randomBytes(1024 * 1024);
      await writeThroughNbd(w, 2 * 1024 * 1024, before);
      await waitUntil('the write at the replica', () =>
        readRange(replicaImage(s, itemId), 2 * 1024 * 1024, before.length).equals(before),
      );
      // The source agent dies and its journal is lost; writes go on meanwhile (the machine keeps running).
      s.primary.child.kill('SIGKILL');
      await s.primary.exited;
      rmSync(join(s.primaryData, 'replication', itemId, 'journal'), { recursive: true, force: true });
      s.primary = await restartAgent(w, s, 'primary');
      const after = randomBytes(1024 * 1024);
      await writeThroughNbd(w, 6 * 1024 * 1024, after);
      await ledger(s, 'freeze');
      try {
        await waitReplicaEqual(s, itemId, 120_000);
      } finally {
        await ledger(s, 'thaw');
      }
      await s.primary.waitFor(/"msg":"resync done"/, 30_000);
    });
  },
);

void test(
  'a replica kept by disable protection is registered again with --replica-exists: block hashes, no full copy',
  { timeout: 240_000 },
  async () => {
    const w = await world();
    const s = await sites(w, ['--point-interval', '1500']);
    await withLogs(s, async () => {
      const first = await protectWeb(w);
      await waitProtected(w, first);
      const un = await w.api('POST', `/vaults/default/items/${first}/unprotect`, { deleteReplica: false });
      assert.ok(un.status < 300, JSON.stringify(un.body));
      await waitUntil('protection disabled', async () => {
        const r = await w.api('GET', `/vaults/default/items/${first}`);
        return r.status === 404;
      });
      assert.ok(existsSync(join(s.recoveryData, 'replicas', first)), 'the replica was kept');
      // The machine keeps writing while unprotected: the kept replica falls behind.
      const count = (await ledger(s, 'status')).count ?? 0;
      await waitUntil(
        'more ledger records',
        async () => ((await ledger(s, 'status')).count ?? 0) > count + 20,
      );

      const web = await w.api<{ items: { id: string; name: string }[] }>(
        'GET',
        '/vaults/default/machines?limit=100',
      );
      const machine = web.body.items.find((m) => m.name === 'web')!.id;
      const policies = await w.api<{ items: { id: string }[] }>('GET', '/vaults/default/policies');
      const protect = (): Promise<{ status: number; body: { item: { id: string } } }> =>
        w.api('POST', '/vaults/default/items', {
          machine,
          policy: policies.body.items[0]!.id,
          targetSite: 'recovery',
          replicaExists: true,
        });
      const r = await protect();
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const again = r.body.item.id;
      await waitProtected(w, again);
      assert.ok(
        !existsSync(join(s.recoveryData, 'replicas', first)),
        'the kept replica became the new item’s',
      );
      await ledger(s, 'freeze');
      try {
        await waitReplicaEqual(s, again);
      } finally {
        await ledger(s, 'thaw');
      }
      const state = await waitUntil('the resync to be recorded', () => {
        const file = join(s.primaryData, 'replication', again, 'source.json');
        const st = JSON.parse(readFileSync(file, 'utf8')) as {
          lastResync?: { bytesCompared: number; bytesSent: number };
        };
        return st.lastResync;
      });
      assert.ok(state.bytesCompared >= LEDGER_BYTES + DISK_BYTES, `compared ${state.bytesCompared} bytes`);
      assert.ok(
        state.bytesSent < state.bytesCompared / 4,
        `sent ${state.bytesSent} of ${state.bytesCompared} bytes: only the blocks that differ`,
      );

      // Without a kept replica the registration is refused at the recovery site, with the reason.
      const un2 = await w.api('POST', `/vaults/default/items/${again}/unprotect`, { deleteReplica: true });
      assert.ok(un2.status < 300, JSON.stringify(un2.body));
      await waitUntil('protection disabled again', async () => {
        const x = await w.api('GET', `/vaults/default/items/${again}`);
        return x.status === 404;
      });
      const refused = await protect();
      assert.equal(refused.status, 202, JSON.stringify(refused.body));
      const job = await waitUntil('the enable protection job to fail', async () => {
        const jobs = await w.api<{
          items: { id: string; state: string; error?: { code: string; message: string } }[];
        }>('GET', `/jobs?target=${refused.body.item.id}`);
        return jobs.body.items.find((j) => j.state === 'Failed');
      });
      assert.equal(job.error?.code, 'NOT_FOUND');
      assert.match(job.error?.message ?? '', /no replica of machine 'web' is kept/);
    });
  },
);

void test(
  'an item removed while its source agent was away: back, the agent stops shipping it',
  { timeout: 240_000 },
  async () => {
    const w = await startWorld({ heartbeatTimeoutMs: 5000 });
    worlds.push(w);
    const s = await sites(w);
    await withLogs(s, async () => {
      const itemId = await protectWeb(w);
      await waitProtected(w, itemId);
      const journal = join(s.primaryData, 'replication', itemId);
      assert.ok(existsSync(journal));
      await s.primary.stop('SIGKILL');
      await waitUntil('the primary agent to count as disconnected', async () =>
        (await w.agents()).some((a) => a.connection === 'Disconnected'),
      );
      // Forced: the source's clean-up is skipped because its agent is away.
      const un = await w.api('POST', `/vaults/default/items/${itemId}/unprotect`, {
        deleteReplica: true,
        force: true,
      });
      assert.ok(un.status < 300, JSON.stringify(un.body));
      await waitUntil('protection disabled', async () => {
        const r = await w.api('GET', `/vaults/default/items/${itemId}`);
        return r.status === 404;
      });
      assert.ok(existsSync(journal), 'the journal is still there while its agent is away');
      s.primary = await restartAgent(w, s, 'primary');
      await waitUntil(
        'the returning agent to stop shipping the removed item',
        () => !existsSync(journal),
        60_000,
      );
      await s.primary.waitFor(/no longer knows this item; replication stopped/);
    });
  },
);
