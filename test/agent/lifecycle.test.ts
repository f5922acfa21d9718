/**
 * The failover lifecycle on real agents and real disks (issue 6): a control plane and two `osr agent`
 * processes, a ledger machine protected until Protected, then through the API a test failover at a chosen point
 * (the test machine runs on an overlay of the replica while replication goes on, survives a kill -9 of the
 * recovery agent, and its cleanup removes machine and exposure), an unplanned failover at Latest, a change of
 * recovery point and a commit. Disk contents are read with qemu-img, a client independent of this product.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NbdClient } from '../../src/dataplane/nbd/client.js';
import {
  alive,
  itemOf,
  ledgerOnDisk,
  pointsOf,
  withOutput,
  ledgerStatusOf,
  machineRuntime,
  operate,
  startWorld,
  waitJob,
  waitUntil,
} from './harness.js';
import {
  ledger,
  protectWeb,
  readRange,
  restartAgent,
  sourceImageOf,
  startSites,
  waitProtected,
  waitReplicaEqual,
  endedAfterEachTest,
} from './replication-support.js';

const { worlds, recorders } = endedAfterEachTest();

/** Whether an NBD client can still open `uri`. */
async function reachable(uri: string): Promise<boolean> {
  const u = new URL(uri);
  try {
    const c = await NbdClient.connect({
      host: u.hostname,
      port: Number(u.port),
      exportName: u.pathname.slice(1),
      timeoutMs: 2000,
    });
    await c.disconnect().catch(() => undefined);
    return true;
  } catch {
    return false;
  }
}

void test(
  'test failover at a chosen point runs on the replica while replication goes on and survives a recovery agent kill -9; cleanup removes it; unplanned failover at Latest, change point, commit',
  { timeout: 400_000 },
  async () => {
    const w = await startWorld();
    worlds.push(w);
    const s = await startSites(w, ['--point-interval', '1500']);
    recorders.push(s.recorder);
    await withOutput({ 'primary agent': s.primary, 'recovery agent': s.recovery }, async () => {
      const itemId = await protectWeb(w);
      await waitProtected(w, itemId);
      const chosen = await waitUntil('two crash-consistent points', async () => {
        const list = (await pointsOf(w, itemId)).filter((p) => p.type === 'crash-consistent');
        return list.length >= 2 ? list.at(-1) : undefined;
      });
      const sourceCountAfterPoint = (await ledger(s, 'status')).count ?? 0;

      // ── test failover at the chosen point, into an isolated network ──
      const testJob = await operate(w, itemId, 'test-failover', { point: chosen.id, network: 'isolated' });
      const waiting = await waitJob(w, testJob, ['WaitingForAction']);
      assert.equal(waiting.waiting?.name, 'complete-test');
      const drill = await itemOf(w, itemId);
      assert.equal(drill.protectionState, 'Protected');
      const testDisks = drill.testFailover?.machine?.disks ?? [];
      const ledgerUri = testDisks.find((d) => d.id === 'disk0')?.nbdUri ?? '';
      assert.ok(
        ledgerUri?.startsWith('nbd://'),
        `the test machine's disks have NBD addresses: ${JSON.stringify(drill)}`,
      );
      const testMachine = drill.testFailover?.machine?.name ?? '';
      assert.equal(testMachine, 'web-test');
      const config = JSON.parse(
        readFileSync(join(s.recoveryDir, 'machines', testMachine, 'machine.json'), 'utf8'),
      ) as { disks: { exposure?: { purpose: string } }[]; nics: { network: null; isolated?: boolean }[] };
      assert.ok(
        config.disks.every((d) => d.exposure?.purpose === 'test'),
        'the test machine runs on the exposure',
      );
      assert.deepEqual(config.nics, [{ network: null, subnet: null, ip: null, isolated: true }]);

      // The test machine's ledger came up on the replica at the point: an unbroken prefix of the source's records.
      const atStart = await waitUntil('the test machine ledger', () =>
        ledgerStatusOf(s.recoveryData, testMachine),
      );
      assert.ok(atStart.lastCheck.ok);
      const atPoint = atStart.lastCheck.records;
      assert.ok(atPoint > 0 && atPoint <= sourceCountAfterPoint, `${atPoint} records at the point`);
      const drillDisk = await ledgerOnDisk(w, ledgerUri, 'drill', {
        agentData: s.recoveryData,
        machine: testMachine,
      });
      assert.ok(drillDisk.records >= atPoint);
      assert.ok(
        readRange(drillDisk.file, 0, atPoint * 512).equals(
          readRange(sourceImageOf(s, 'disk0'), 0, atPoint * 512),
        ),
        'the records at the point are the source records',
      );
      // The test machine writes to its overlay, never to the replica.
      await waitUntil('the test machine to append', async () => {
        const st = await ledgerStatusOf(s.recoveryData, testMachine);
        return st.count > atPoint + 3;
      });

      // Replication goes on underneath: new points keep arriving.
      const newest = (await pointsOf(w, itemId)).at(-1)!.sequence;
      await waitUntil('a point after the drill began', async () =>
        (await pointsOf(w, itemId)).some((p) => p.sequence > newest),
      );

      // kill -9 of the recovery agent: after its restart the exposure is served again at the same address.
      const pid = machineRuntime(s.recoveryData, testMachine).pid;
      assert.ok(pid !== undefined && alive(pid));
      await s.recovery.stop('SIGKILL');
      const countAtKill = (await ledgerStatusOf(s.recoveryData, testMachine)).count;
      s.recovery = await restartAgent(w, s, 'recovery', ['--point-interval', '1500']);
      await waitUntil(
        'the test machine to write again after the restart',
        async () => (await ledgerStatusOf(s.recoveryData, testMachine)).count > countAtKill + 3,
        60_000,
      );
      const afterRestart = await ledgerOnDisk(w, ledgerUri, 'drill-after-restart', {
        agentData: s.recoveryData,
        machine: testMachine,
      });
      assert.ok(afterRestart.records > atPoint);

      // ── complete the test: cleanup removes the machine and the exposure ──
      await operate(w, itemId, 'test-failover-cleanup', { notes: 'drill ok' });
      await waitJob(w, testJob, ['Succeeded']);
      assert.equal(
        existsSync(join(s.recoveryDir, 'machines', testMachine)),
        false,
        'the test machine is gone',
      );
      assert.equal(
        existsSync(join(s.recoveryData, 'exposures', itemId, 'test')),
        false,
        'the exposure is gone',
      );
      assert.equal(await reachable(ledgerUri), false, 'the test disks are no longer served');
      await waitUntil('the test machine process to end', () => !alive(pid));
      assert.equal((await itemOf(w, itemId)).testFailoverState, 'None');

      // ── unplanned failover at Latest: every write the recovery site received ──
      await ledger(s, 'freeze');
      await waitReplicaEqual(s, itemId);
      const frozenCount = (await ledger(s, 'status')).count ?? 0;
      const foJob = await operate(w, itemId, 'unplanned-failover', {});
      const fo = await waitJob(w, foJob, ['Succeeded']);
      assert.ok(fo.steps.some((st) => st.name === 'Stop replication'));
      const failedOver = await itemOf(w, itemId);
      assert.equal(failedOver.protectionState, 'FailedOver');
      const foMachine = 'web';
      const foConfig = JSON.parse(
        readFileSync(join(s.recoveryDir, 'machines', foMachine, 'machine.json'), 'utf8'),
      ) as { disks: { exposure?: { purpose: string } }[] };
      assert.ok(foConfig.disks.every((d) => d.exposure?.purpose === 'failover'));
      const foStart = await waitUntil('the failed-over ledger', () =>
        ledgerStatusOf(s.recoveryData, foMachine),
      );
      assert.equal(foStart.lastCheck.records, frozenCount, 'Latest holds every record the source wrote');

      // ── change recovery point to the drill's point: the machine comes up there again ──
      const cpJob = await operate(w, itemId, 'change-point', { point: chosen.id });
      await waitJob(w, cpJob, ['Succeeded']);
      const cp = await waitUntil('the ledger at the changed point', async () => {
        const st = await ledgerStatusOf(s.recoveryData, foMachine);
        return st.lastCheck.records === atPoint ? st : undefined;
      });
      assert.ok(cp.lastCheck.ok);

      // ── commit: the replica becomes the machine's disk; it keeps running and writing ──
      const before = (await ledgerStatusOf(s.recoveryData, foMachine)).count;
      const commitJob = await operate(w, itemId, 'commit', {});
      await waitJob(w, commitJob, ['Succeeded']);
      await waitUntil(
        'the committed machine to append',
        async () => (await ledgerStatusOf(s.recoveryData, foMachine)).count > before + 3,
      );
      const foUri = (await itemOf(w, itemId)).disks.find((d) => d.id === 'disk0')?.nbdUri ?? '';
      assert.match(foUri, /^nbd:\/\//, 'the failed-over disk has an address');
      const committed = await ledgerOnDisk(w, foUri, 'committed', {
        agentData: s.recoveryData,
        machine: foMachine,
      });
      assert.ok(committed.records > atPoint);
      assert.ok(
        readRange(committed.file, 0, atPoint * 512).equals(
          readRange(sourceImageOf(s, 'disk0'), 0, atPoint * 512),
        ),
      );
    });
  },
);
