/**
 * Cancel of a planned failover (cloud → on-premises, R-FO-10) on real agents: the machine at the target is
 * removed, its disks revert and are released, the source machine runs again on its own disk and replication
 * resumes from where it stopped.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { checkLedger, openReadableDisk } from '../../src/workload/ledger.js';
import {
  itemOf,
  ledgerStatusOf,
  operate,
  pointsOf,
  startWorld,
  waitJob,
  waitUntil,
  withOutput,
} from './harness.js';
import {
  ledger,
  protectWeb,
  waitReplicaEqual,
  sourceImageOf,
  startSites,
  waitProtected,
  endedAfterEachTest,
} from './replication-support.js';

const { worlds, recorders } = endedAfterEachTest();

void test(
  'cancel of a planned failover goes back to the exact state before it and replication resumes',
  { timeout: 300_000 },
  async () => {
    const w = await startWorld();
    worlds.push(w);
    // Cancel applies to cloud → on-premises (R-FO-10): the primary site is a cloud site.
    const site = await w.api('POST', '/vaults/default/sites', { name: 'primary', kind: 'cloud' });
    assert.equal(site.status, 201, JSON.stringify(site.body));
    const s = await startSites(w, ['--point-interval', '1500']);
    recorders.push(s.recorder);
    await withOutput({ 'primary agent': s.primary, 'recovery agent': s.recovery }, async () => {
      const itemId = await protectWeb(w);
      await waitProtected(w, itemId);
      await waitUntil('a crash-consistent point', async () => (await pointsOf(w, itemId)).length > 0);

      await waitJob(w, await operate(w, itemId, 'planned-failover', {}), ['Succeeded'], 180_000);
      const source = await openReadableDisk(sourceImageOf(s, 'disk0'));
      const atShutdown = await checkLedger(source).finally(() => source.close());
      const fo = await waitUntil('the failed-over ledger', () => ledgerStatusOf(s.recoveryData, 'web'));
      assert.equal(fo.lastCheck.records, atShutdown.records);
      await waitUntil(
        'the failed-over machine to write',
        async () => (await ledgerStatusOf(s.recoveryData, 'web')).count > atShutdown.records + 3,
      );
      const newest = (await pointsOf(w, itemId)).at(-1)!.sequence;

      const cancel = await operate(w, itemId, 'cancel-failover', {});
      const done = await waitJob(w, cancel, ['Succeeded'], 180_000);
      assert.ok(done.steps.some((st) => st.name === 'Revert the target disks' && st.state === 'Succeeded'));
      assert.equal((await itemOf(w, itemId)).protectionState, 'Protected');
      assert.equal(existsSync(join(s.recoveryDir, 'machines', 'web')), false, 'the target machine is gone');
      assert.equal(existsSync(join(s.recoveryData, 'exposures', itemId, 'failover')), false);
      // The source machine runs on its own disk again, from the records it had: nothing from the target.
      const again = await waitUntil('the source ledger again', () => ledgerStatusOf(s.primaryData, 'web'));
      assert.equal(again.lastCheck.records, atShutdown.records);
      // Replication resumed: its new writes reach the replica and new points come.
      await waitUntil('a point after the cancel', async () =>
        (await pointsOf(w, itemId)).some((p) => p.sequence > newest),
      );
      await waitUntil(
        'the source to append',
        async () => ((await ledger(s, 'status')).count ?? 0) > again.count + 3,
      );
      await ledger(s, 'freeze');
      await waitReplicaEqual(s, itemId);
      await ledger(s, 'thaw');
    });
  },
);
