/**
 * The failover lifecycle on real agents and real disks (issue 6), the way back: a ledger machine protected until
 * Protected, a planned failover that loses no record, its commit, reprotect refused while the original machine has
 * a snapshot on its host (R-RP-9), reprotect to the original location that sends
 * only the changed blocks, and the failback. Disk contents are read with qemu-img.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { checkLedger, openReadableDisk } from '../../src/workload/ledger.js';
import {
  itemOf,
  ledgerOnDisk,
  ledgerStatusOf,
  operate,
  pointsOf,
  startWorld,
  waitJob,
  waitUntil,
  withOutput,
} from './harness.js';
import {
  DISK_BYTES,
  LEDGER_BYTES,
  ledger,
  protectWeb,
  replicaImage,
  sourceImageOf,
  startSites,
  waitProtected,
  endedAfterEachTest,
} from './replication-support.js';

const { worlds, recorders } = endedAfterEachTest();

void test(
  'planned failover loses no record; commit; reprotect to the original location sends only changed blocks',
  { timeout: 400_000 },
  async () => {
    const w = await startWorld();
    worlds.push(w);
    const s = await startSites(w, ['--point-interval', '1500']);
    recorders.push(s.recorder);
    await withOutput({ 'primary agent': s.primary, 'recovery agent': s.recovery }, async () => {
      const itemId = await protectWeb(w);
      await waitProtected(w, itemId);
      await waitUntil('a crash-consistent point', async () => (await pointsOf(w, itemId)).length > 0);
      const running = (await ledger(s, 'status')).count ?? 0;
      assert.ok(running > 0);

      // ── planned failover while the ledger writes: shut down, drain, final point, snapshot, power on ──
      const job = await operate(w, itemId, 'planned-failover', {});
      const done = await waitJob(w, job, ['Succeeded']);
      const names = done.steps.map((st) => st.name);
      assert.ok(names.includes('Synchronize pending changes') && names.includes('Snapshot the target disks'));
      assert.equal((await itemOf(w, itemId)).protectionState, 'FailedOver');
      // Every record the source wrote before it was shut down is on the failed-over machine's disk.
      const source = await openReadableDisk(sourceImageOf(s, 'disk0'));
      const atShutdown = await checkLedger(source).finally(() => source.close());
      assert.ok(atShutdown.ok && atShutdown.records >= running);
      const fo = await waitUntil('the failed-over ledger', () => ledgerStatusOf(s.recoveryData, 'web'));
      assert.equal(fo.lastCheck.records, atShutdown.records, 'no record lost');

      // ── commit ──
      const commitJob = await operate(w, itemId, 'commit', {});
      await waitJob(w, commitJob, ['Succeeded']);
      await waitUntil(
        'the committed machine to append',
        async () => (await ledgerStatusOf(s.recoveryData, 'web')).count > atShutdown.records + 5,
      );
      const foUri = (await itemOf(w, itemId)).disks.find((d) => d.id === 'disk0')?.nbdUri ?? '';
      const committed = await ledgerOnDisk(w, foUri, 'committed', {
        agentData: s.recoveryData,
        machine: 'web',
      });
      assert.ok(committed.records > atShutdown.records);

      // ── R-RP-9: while the original machine has a snapshot on its host, reprotect is refused ──
      const webFile = join(s.primaryDir, 'machines', 'web', 'machine.json');
      const webConfig = readFileSync(webFile, 'utf8');
      const primarySnapshots = async (): Promise<string[]> => {
        const id = randomUUID();
        await w.enqueue('primary', id, 'machine.snapshots', { name: 'web' });
        const c = await w.result(id);
        assert.equal(c.state, 'Succeeded', JSON.stringify(c.error));
        return (c.result as { snapshots: string[] }).snapshots;
      };
      writeFileSync(
        webFile,
        JSON.stringify({ ...(JSON.parse(webConfig) as object), snapshots: ['before-failover'] }, null, 2),
      );
      await waitUntil('the primary agent to see the snapshot', async () =>
        (await primarySnapshots()).length > 0 ? true : undefined,
      );
      const refusedJob = await operate(w, itemId, 'reprotect', { location: 'original' });
      const refused = await waitJob(w, refusedJob, ['Failed']);
      assert.equal(refused.error?.code, 'MACHINE_HAS_SNAPSHOTS', JSON.stringify(refused.error));
      assert.equal((await itemOf(w, itemId)).protectionState, 'FailoverCommitted');
      writeFileSync(webFile, webConfig);
      await waitUntil('the primary agent to see the snapshot deleted', async () =>
        (await primarySnapshots()).length === 0 ? true : undefined,
      );

      // ── reprotect to the original location: the recovery site's machine replicates back, only changed blocks ──
      const rpJob = await operate(w, itemId, 'reprotect', { location: 'original' });
      const rp = await waitJob(w, rpJob, ['Succeeded'], 180_000);
      assert.ok(rp.steps.some((st) => st.name === 'Start reverse replication'));
      const reversed = await waitProtected(w, itemId);
      assert.equal(reversed.protectionState, 'Protected');
      const sourceState = JSON.parse(
        readFileSync(join(s.recoveryData, 'replication', itemId, 'source.json'), 'utf8'),
      ) as { lastResync?: { bytesCompared: number; bytesSent: number } };
      const resync = sourceState.lastResync;
      assert.ok(resync !== undefined, 'the reverse direction compared block hashes');
      const diskBytes = LEDGER_BYTES + DISK_BYTES;
      assert.equal(resync.bytesCompared, diskBytes, 'every block was compared');
      assert.ok(resync.bytesSent > 0, 'the records written at the recovery site were sent');
      assert.ok(
        resync.bytesSent <= diskBytes / 8,
        `reprotect sent ${resync.bytesSent} bytes of ${diskBytes}: only the changed blocks`,
      );

      // ── failback (planned failover of the reversed item): every record written at the recovery site returns ──
      const fbJob = await operate(w, itemId, 'planned-failover', {});
      await waitJob(w, fbJob, ['Succeeded'], 180_000);
      const recoveryDisk = await openReadableDisk(replicaImage(s, itemId, 'disk0'));
      const atRecoveryShutdown = await checkLedger(recoveryDisk).finally(() => recoveryDisk.close());
      assert.ok(atRecoveryShutdown.ok && atRecoveryShutdown.records > committed.records - 1);
      const back = await waitUntil('the ledger back at the primary site', () =>
        ledgerStatusOf(s.primaryData, 'web'),
      );
      assert.equal(back.lastCheck.records, atRecoveryShutdown.records, 'failback returns every record');
      const fbCommit = await operate(w, itemId, 'commit', {});
      await waitJob(w, fbCommit, ['Succeeded']);
      await waitUntil(
        'the primary machine to append after the failback commit',
        async () => (await ledgerStatusOf(s.primaryData, 'web')).count > atRecoveryShutdown.records + 3,
      );

      // ── the cycle again: the primary machine, unprotected after the failback commit, is protected again;
      // the recovery site's disks of the machine seed the replica and only the changed blocks are sent ──
      const policy = (await w.api<{ items: { id: string }[] }>('GET', '/vaults/default/policies')).body
        .items[0]!;
      const again = await w.api<{ item: { id: string } }>('POST', '/vaults/default/items', {
        machine: (await w.api<{ machineId: string }>('GET', `/vaults/default/items/${itemId}`)).body
          .machineId,
        policy: policy.id,
        targetSite: 'recovery',
        replicaExists: true,
      });
      assert.equal(again.status, 202, JSON.stringify(again.body));
      const protectedAgain = await waitProtected(w, again.body.item.id, 180_000);
      assert.equal(protectedAgain.replicationHealth, 'Normal');
      const fwd = JSON.parse(
        readFileSync(join(s.primaryData, 'replication', again.body.item.id, 'source.json'), 'utf8'),
      ) as { lastResync?: { bytesCompared: number; bytesSent: number } };
      assert.ok(fwd.lastResync, 'protected again by comparing block hashes');
      assert.ok(
        fwd.lastResync.bytesSent <= diskBytes / 8,
        `protect again sent ${fwd.lastResync.bytesSent} bytes of ${diskBytes}: only the changed blocks`,
      );
    });
  },
);

void test(
  'unplanned failover, commit, reprotect to an alternate location copies everything to a new machine, failback returns every record',
  { timeout: 400_000 },
  async () => {
    const w = await startWorld();
    worlds.push(w);
    const s = await startSites(w, ['--point-interval', '1500']);
    recorders.push(s.recorder);
    await withOutput({ 'primary agent': s.primary, 'recovery agent': s.recovery }, async () => {
      const itemId = await protectWeb(w);
      await waitProtected(w, itemId);
      // The failed-over machine is named web-dr (R-NET-5), so the alternate location's new machine is too.
      const settings = await w.api('PATCH', `/vaults/default/items/${itemId}/settings`, {
        targetName: 'web-dr',
      });
      assert.equal(settings.status, 200, JSON.stringify(settings.body));
      await waitUntil('a crash-consistent point', async () => (await pointsOf(w, itemId)).length > 0);
      await waitJob(w, await operate(w, itemId, 'unplanned-failover', { shutdownSource: true }), [
        'Succeeded',
      ]);
      await waitJob(w, await operate(w, itemId, 'commit', {}), ['Succeeded']);
      // The ledger's status port may not be listening yet right after the commit.
      const before = (
        await waitUntil('the failed-over ledger', () => ledgerStatusOf(s.recoveryData, 'web-dr'))
      ).count;
      await waitUntil(
        'the failed-over machine to append',
        async () => (await ledgerStatusOf(s.recoveryData, 'web-dr')).count > before + 5,
      );

      // ── reprotect to a new machine on host2 ──
      const preview = await waitUntil('a reprotect preview', async () => {
        const r = await w.api<{ machine?: string; host?: string; creates?: { label: string }[] }>(
          'POST',
          `/vaults/default/items/${itemId}/reprotect`,
          { location: 'alternate', host: 'host2', datastore: 'datastore1', preview: true },
        );
        return r.status === 200 ? r.body : undefined;
      });
      assert.equal(preview.host, 'host2');
      assert.ok(preview.creates?.some((c) => c.label.endsWith('(new)')));
      const newMachine = preview.machine ?? '';
      assert.equal(newMachine, 'web-dr');
      const rp = await operate(w, itemId, 'reprotect', {
        location: 'alternate',
        host: 'host2',
        datastore: 'datastore1',
      });
      await waitJob(w, rp, ['Succeeded'], 180_000);
      await waitProtected(w, itemId);
      const config = JSON.parse(
        readFileSync(join(s.primaryDir, 'machines', newMachine, 'machine.json'), 'utf8'),
      ) as { host: string };
      assert.equal(config.host, 'host2');
      const sourceState = JSON.parse(
        readFileSync(join(s.recoveryData, 'replication', itemId, 'source.json'), 'utf8'),
      ) as { copy: { state: string; totalBytes: number }; lastResync?: unknown };
      assert.equal(sourceState.copy.state, 'done');
      assert.equal(sourceState.lastResync, undefined, 'a full copy, no hash comparison');

      // ── failback onto the new machine ──
      await waitJob(w, await operate(w, itemId, 'planned-failover', {}), ['Succeeded'], 180_000);
      const recoveryDisk = await openReadableDisk(replicaImage(s, itemId, 'disk0'));
      const atShutdown = await checkLedger(recoveryDisk).finally(() => recoveryDisk.close());
      assert.ok(atShutdown.ok);
      const back = await waitUntil('the ledger on the new machine', () =>
        ledgerStatusOf(s.primaryData, newMachine),
      );
      assert.equal(back.lastCheck.records, atShutdown.records, 'failback returns every record');
      await waitJob(w, await operate(w, itemId, 'commit', {}), ['Succeeded']);
    });
  },
);
