/**
 * Test failover, unplanned and planned failover, change recovery point, commit and
 * cancel failover over a real store and jobs engine, with scripted agents answering
 * the lifecycle commands. Each test checks the job's steps, the commands each site got
 * (in order), the item's state and what an operator sees, and every refusal's code.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../../src/domain/errors.js';
import { ManualClock } from '../../src/jobs/manual-clock.js';
import type { Job } from '../../src/domain/model.js';
import { dialects, jobEnded, jobSettled, protectWeb, sent, setup, waitUntil } from './harness.js';
import type { Env } from './harness.js';

function rejectsWith(code: string) {
  return (e: unknown) => {
    assert.ok(e instanceof OsrError, String(e));
    assert.equal(e.code, code, e.message);
    return true;
  };
}

async function run(env: Env, op: Parameters<Env['workflows']['operate']>[2], params = {}): Promise<Job> {
  const job = await env.workflows.operate(env.vaultId, 'web', op, params);
  return jobSettled(env.store, job.id);
}

function payloadOf(env: Env, type: string): Record<string, unknown> {
  const c = env.seen.find((x) => x.type === type);
  assert.ok(c, `no ${type} command was sent`);
  return c.payload as Record<string, unknown>;
}

for (const dialect of dialects()) {
  describe(`failover workflows (${dialect})`, () => {
    it('test failover: isolated test machine at a chosen point, waits for "complete test", cleanup removes it', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        const item = await env.store.items.get(env.vaultId, 'web');
        const point = (await env.store.points.list(item.id, { limit: 1 })).items[0];
        assert.ok(point);
        const job = await run(env, 'TestFailover', { point: point.id, network: 'isolated' });
        assert.equal(job.state, 'WaitingForAction', JSON.stringify(job.error));
        assert.equal(job.waiting?.name, 'complete-test');
        assert.deepEqual(
          job.steps.map((s) => s.name),
          [
            'Prerequisites check',
            'Prepare the recovery point',
            'Expose test disks',
            'Create the test machine',
            'Start the test machine',
            'Complete test',
            'Delete the test machine',
            'Release test disks',
            'Finish cleanup',
          ],
        );
        assert.deepEqual(sent(env), [
          'recovery:replica.expose',
          'recovery:machine.create',
          'recovery:machine.powerOn',
        ]);
        const exposeP = payloadOf(env, 'replica.expose');
        assert.equal(exposeP['purpose'], 'test');
        assert.equal(exposeP['stopReceiving'], false, 'replication goes on during a drill');
        assert.deepEqual(exposeP['point'], { sequence: point.sequence, pointId: point.id });
        const create = payloadOf(env, 'machine.create');
        assert.equal(create['name'], 'web-test');
        assert.equal(create['origin'], 'test-failover');
        assert.deepEqual(create['nics'], [{ network: null, subnet: null, ip: null, isolated: true }]);
        const view = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(view.protectionState, 'Protected');
        assert.equal(view.testFailoverState, 'WaitingForCleanup');
        assert.deepEqual(view.allowedOperations, ['TestFailoverCleanup']);
        assert.equal(view.testFailover?.machine?.name, 'web-test');
        assert.match(view.testFailover?.machine?.disks[0]?.nbdUri ?? '', /^nbd:\/\/.*-test-disk0$/);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'UnplannedFailover', {}),
          rejectsWith('OPERATION_NOT_ALLOWED'),
        );

        env.seen.length = 0;
        const cleanup = await env.workflows.operate(env.vaultId, 'web', 'TestFailoverCleanup', {
          notes: 'ledger prefix intact',
        });
        assert.equal(cleanup.id, job.id, 'cleanup resumes the parked test job');
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.state, 'Succeeded', JSON.stringify(ended.error));
        assert.deepEqual(ended.steps.at(-1)?.output, {
          testFailoverState: 'None',
          notes: 'ledger prefix intact',
        });
        assert.deepEqual(sent(env), [
          'recovery:machine.powerOff',
          'recovery:machine.delete',
          'recovery:replica.release',
        ]);
        assert.equal(await env.store.machines.find(env.recoverySiteId, 'web-test'), undefined);
        const after = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(after.testFailoverState, 'None');
        assert.equal(after.currentJobId, null);
        assert.equal(after.testFailover, null);
        assert.ok(after.allowedOperations.includes('UnplannedFailover'));
      } finally {
        await env.stop();
      }
    });

    it('test failover at Latest cuts a new point; a mapped network by name; none; unknown network refused', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'TestFailover', { network: 'nowhere' }),
          rejectsWith('VALIDATION_FAILED'),
        );
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'TestFailover', { point: 'no-such-point' }),
          rejectsWith('NO_RECOVERY_POINT'),
        );
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'TestFailover', { point: '2030-13-01' }),
          rejectsWith('VALIDATION_FAILED'),
        );
        const job = await run(env, 'TestFailover', { network: 'test-net' });
        assert.equal(job.state, 'WaitingForAction', JSON.stringify(job.error));
        assert.deepEqual(sent(env).slice(0, 2), ['recovery:replica.point', 'recovery:replica.expose']);
        const point = job.steps[1]?.output as { how: string; sequence: number };
        assert.equal(point.how, 'cut');
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal((await env.store.points.list(item.id, { limit: 1 })).items[0]?.sequence, point.sequence);
        assert.deepEqual(payloadOf(env, 'machine.create')['nics'], [
          { network: 'test-net', subnet: 'default', ip: null },
        ]);
        await env.workflows.operate(env.vaultId, 'web', 'TestFailoverCleanup', {});
        assert.equal((await jobEnded(env.store, job.id)).state, 'Succeeded');

        env.seen.length = 0;
        const none = await run(env, 'TestFailover', { network: 'none' });
        assert.equal(none.state, 'WaitingForAction');
        assert.deepEqual(payloadOf(env, 'machine.create')['nics'], [
          { network: null, subnet: null, ip: null },
        ]);
      } finally {
        await env.stop();
      }
    });

    it('a test failover left waiting 14 days is cleaned up automatically (injected clock)', async () => {
      const clock = new ManualClock(new Date());
      const env = await setup({ dialect, clock });
      try {
        await protectWeb(env);
        const job = await run(env, 'TestFailover', {});
        assert.equal(job.state, 'WaitingForAction');
        clock.advance(13 * 24 * 3600_000);
        assert.deepEqual(await env.workflows.sweepTestFailovers(), []);
        assert.equal((await env.store.jobs.get(job.id)).state, 'WaitingForAction');
        clock.advance(2 * 24 * 3600_000);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.deepEqual(await env.workflows.sweepTestFailovers(), [item.id]);
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.state, 'Succeeded', JSON.stringify(ended.error));
        assert.match(ended.comments.at(-1)?.text ?? '', /automatically/);
        assert.equal((await env.store.items.get(env.vaultId, 'web')).testFailoverState, 'None');
      } finally {
        await env.stop();
      }
    });

    it('a failed test failover leaves cleanup to do; a cleanup job deletes what it created', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) =>
          c.type === 'machine.powerOn'
            ? { code: 'TARGET_HOST_OUT_OF_MEMORY', message: 'h1 has 100 MiB free', seedCode: 8038 }
            : undefined;
        const job = await run(env, 'TestFailover', {});
        assert.equal(job.state, 'Failed');
        assert.equal(job.error?.code, 'TARGET_HOST_OUT_OF_MEMORY');
        assert.equal(job.error?.seedCode, 8038);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.testFailoverState, 'WaitingForCleanup');
        assert.equal(item.currentJobId, null);
        env.script = () => undefined;
        env.seen.length = 0;
        const cleanup = await env.workflows.operate(env.vaultId, 'web', 'TestFailoverCleanup', {
          notes: 'retry',
        });
        assert.notEqual(cleanup.id, job.id);
        assert.equal(cleanup.displayName, 'Test failover cleanup');
        assert.equal((await jobEnded(env.store, cleanup.id)).state, 'Succeeded');
        assert.deepEqual(sent(env), [
          'recovery:machine.powerOff',
          'recovery:machine.delete',
          'recovery:replica.release',
        ]);
        assert.equal(payloadOf(env, 'machine.delete')['name'], 'web-test');
        assert.equal((await env.store.items.get(env.vaultId, 'web')).testFailoverState, 'None');
      } finally {
        await env.stop();
      }
    });

    it('cancelling a test failover waiting for cleanup ends it Cancelled and a cleanup job deletes what it created (R-TF-2)', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        const job = await run(env, 'TestFailover', {});
        assert.equal(job.state, 'WaitingForAction');
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.ok(await env.store.machines.find(env.recoverySiteId, 'web-test'));
        env.seen.length = 0;
        const cancelled = await env.workflows.cancelJob(job.id, false);
        assert.equal(cancelled.state, 'Cancelled');
        const cleanup = await waitUntil('the cleanup job', async () => {
          const page = await env.store.jobs.list({ targetId: item.id, type: 'TestFailoverCleanup' });
          return page.items[0];
        });
        assert.equal(cleanup.displayName, 'Test failover cleanup');
        const done = await jobEnded(env.store, cleanup.id);
        assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
        assert.deepEqual(sent(env), [
          'recovery:machine.powerOff',
          'recovery:machine.delete',
          'recovery:replica.release',
        ]);
        assert.equal(payloadOf(env, 'machine.delete')['name'], 'web-test');
        assert.deepEqual(payloadOf(env, 'replica.release'), {
          itemId: item.id,
          purpose: 'test',
          resumeReceiving: false,
        });
        assert.equal((await env.store.jobs.get(job.id)).state, 'Cancelled');
        assert.equal(await env.store.machines.find(env.recoverySiteId, 'web-test'), undefined);
        const view = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(view.testFailoverState, 'None');
        assert.equal(view.currentJobId, null);
        assert.equal(view.testFailover, null);
        assert.ok(view.allowedOperations.includes('TestFailover'));
        const events = await env.store.events.list(env.vaultId, {});
        assert.ok(events.items.some((e) => e.kind === 'TestFailoverCancelled' && e.targetId === item.id));

        const again = await run(env, 'TestFailover', {});
        assert.equal(again.state, 'WaitingForAction', JSON.stringify(again.error));
      } finally {
        await env.stop();
      }
    });

    it('cancelling a running test failover stops it and a cleanup job removes the test machine and the exposure', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) => (c.type === 'machine.powerOn' ? 'hold' : undefined);
        const job = await env.workflows.operate(env.vaultId, 'web', 'TestFailover', {});
        await waitUntil('power-on sent', () => Promise.resolve(env.held.length > 0 ? true : undefined));
        assert.equal((await env.store.jobs.get(job.id)).state, 'InProgress');
        env.script = () => undefined;
        env.seen.length = 0;
        await env.workflows.cancelJob(job.id, false);
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.state, 'Cancelled');
        assert.equal(ended.steps.find((s) => s.name === 'Start the test machine')?.state, 'Cancelled');
        const itemId = ended.targetId;
        const cleanup = await waitUntil('the cleanup job', async () => {
          const page = await env.store.jobs.list({ targetId: itemId, type: 'TestFailoverCleanup' });
          return page.items[0];
        });
        assert.equal((await jobEnded(env.store, cleanup.id)).state, 'Succeeded');
        assert.equal((await env.store.jobs.list({ targetId: itemId, type: 'TestFailoverCleanup' })).total, 1);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.testFailoverState, 'None');
        assert.equal(item.currentJobId, null);
        assert.deepEqual(sent(env), [
          'recovery:machine.powerOff',
          'recovery:machine.delete',
          'recovery:replica.release',
        ]);
        assert.equal(payloadOf(env, 'machine.delete')['name'], 'web-test');
        assert.equal(await env.store.machines.find(env.recoverySiteId, 'web-test'), undefined);
        assert.ok(
          (await env.workflows.describeItem(env.vaultId, 'web')).allowedOperations.includes('TestFailover'),
        );
        const again = await run(env, 'TestFailover', {});
        assert.equal(again.state, 'WaitingForAction', JSON.stringify(again.error));
      } finally {
        await env.stop();
      }
    });

    it('unplanned failover at Latest with source shut-down: mapped network, replication stopped, FailedOver', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        const prod = await env.store.inventory.findNetwork(env.primarySiteId, 'prod');
        const dr = await env.store.inventory.findNetwork(env.recoverySiteId, 'prod-dr');
        assert.ok(prod && dr);
        await env.store.networkMappings.create({
          vaultId: env.vaultId,
          sourceNetworkId: prod.id,
          targetNetworkId: dr.id,
        });
        const job = await run(env, 'UnplannedFailover', { shutdownSource: true });
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        assert.deepEqual(
          job.steps.map((s) => s.name),
          [
            'Prerequisites check',
            'Shut down the source machine',
            'Stop replication',
            'Prepare the recovery point',
            'Expose disks at the recovery point',
            'Prepare the machine for the target',
            'Create the machine at the target',
            'Start the machine at the target',
            'Finalize failover',
          ],
        );
        assert.deepEqual(sent(env), [
          'primary:machine.shutdown',
          'primary:replication.stop',
          'recovery:replica.point',
          'recovery:replica.expose',
          'recovery:machine.create',
          'recovery:machine.powerOn',
        ]);
        assert.equal(payloadOf(env, 'replica.expose')['stopReceiving'], true);
        // R-FO-6: the job shows the extra processing the machine gets at the other side.
        const prepared = job.steps.find((s) => s.name === 'Prepare the machine for the target')?.output as {
          processing: string[];
        };
        assert.deepEqual(prepared.processing, [
          'guest tools: Installed → Removed (linux)',
          'NIC 0: prod/default → prod-dr/default',
          'NIC 0: static IP 10.0.0.5 → DHCP',
        ]);
        const create = payloadOf(env, 'machine.create');
        assert.equal(create['name'], 'web');
        assert.equal(create['origin'], 'failover');
        assert.equal(create['guestTools'], 'Removed', 'Linux guest tools are removed at failover (R-RP-10)');
        // R-NET-3 same-named subnet; R-RP-11 a Linux static IP becomes DHCP.
        assert.deepEqual(create['nics'], [{ network: 'prod-dr', subnet: 'default', ip: null }]);
        const view = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(view.protectionState, 'FailedOver');
        assert.equal(view.activeLocation, 'recovery');
        assert.deepEqual(view.allowedOperations, ['ChangePit', 'Commit', 'DisableProtection']);
        assert.equal(view.machine?.siteId, env.recoverySiteId);
        assert.equal(view.machine?.powerState, 'Running');
        assert.match(view.disks[0]?.nbdUri ?? '', /-failover-disk0$/);
        assert.equal(view.lastFailover?.type, 'unplanned');
        const source = await env.store.machines.find(env.primarySiteId, 'web');
        assert.equal(source?.powerState, 'Stopped');
      } finally {
        await env.stop();
      }
    });

    it('per-item settings win at failover (R-NET-5); a Windows machine keeps its static IP (R-RP-10/11)', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        await env.workflows.updateSettings(env.vaultId, 'web', {
          targetName: 'web-dr',
          cpus: 2,
          memoryMb: 1024,
          network: 'prod-dr',
          subnet: 'back',
          ip: '10.0.1.7',
        });
        assert.equal((await run(env, 'UnplannedFailover')).state, 'Succeeded');
        const create = payloadOf(env, 'machine.create');
        assert.equal(create['name'], 'web-dr');
        assert.equal(create['cpus'], 2);
        assert.equal(create['memoryMb'], 1024);
        assert.deepEqual(create['nics'], [{ network: 'prod-dr', subnet: 'back', ip: '10.0.1.7' }]);
        assert.ok(await env.store.machines.find(env.recoverySiteId, 'web-dr'));

        const win = await setup({ dialect });
        try {
          const db = await win.store.machines.find(win.primarySiteId, 'web');
          assert.ok(db);
          await win.store.machines.update(db.id, { osType: 'windows' });
          const prod = await win.store.inventory.findNetwork(win.primarySiteId, 'prod');
          const dr = await win.store.inventory.findNetwork(win.recoverySiteId, 'prod-dr');
          assert.ok(prod && dr);
          await win.store.networkMappings.create({
            vaultId: win.vaultId,
            sourceNetworkId: prod.id,
            targetNetworkId: dr.id,
          });
          await protectWeb(win);
          assert.equal((await run(win, 'UnplannedFailover')).state, 'Succeeded');
          const c = payloadOf(win, 'machine.create');
          assert.equal(c['guestTools'], 'Disabled');
          assert.deepEqual(c['nics'], [{ network: 'prod-dr', subnet: 'default', ip: '10.0.0.5' }]);
        } finally {
          await win.stop();
        }
      } finally {
        await env.stop();
      }
    });

    it('unplanned failover continues when the source cannot be shut down (R-FO-3) or its site is gone', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) =>
          c.type === 'machine.shutdown' || c.type === 'replication.stop'
            ? { code: 'MACHINE_NOT_RUNNING', message: 'web does not respond', seedCode: 78093 }
            : undefined;
        const job = await run(env, 'UnplannedFailover', { shutdownSource: true, point: 'latest-processed' });
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        // Neither step did its work: both say so as Skipped, with why.
        assert.equal(job.steps[1]?.state, 'Skipped');
        assert.match(job.steps[1]?.skipReason ?? '', /could not be shut down \(MACHINE_NOT_RUNNING/);
        assert.deepEqual(job.steps[1]?.output, {
          machine: 'web',
          failed: true,
          code: 'MACHINE_NOT_RUNNING',
          message: 'web does not respond',
        });
        assert.equal(job.steps[2]?.state, 'Skipped');
        assert.match(job.steps[2]?.skipReason ?? '', /did not stop replication \(MACHINE_NOT_RUNNING/);
        assert.deepEqual(job.steps[2]?.output, { code: 'MACHINE_NOT_RUNNING' });
        assert.equal(
          (job.steps[3]?.output as { how: string }).how,
          'existing',
          'latest processed cuts nothing',
        );
        assert.ok(!sent(env).includes('recovery:replica.point'));
      } finally {
        await env.stop();
      }
    });

    it('an unplanned failover that fails at power-on (8038) can be retried; the retry reuses its machine', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) =>
          c.type === 'machine.powerOn'
            ? { code: 'TARGET_HOST_OUT_OF_MEMORY', message: 'h1 has 100 MiB free', seedCode: 8038 }
            : undefined;
        const failed = await run(env, 'UnplannedFailover');
        assert.equal(failed.state, 'Failed');
        assert.equal(failed.error?.seedCode, 8038);
        assert.ok(failed.error?.recommendedAction);
        const afterFailure = await env.store.items.get(env.vaultId, 'web');
        assert.equal(afterFailure.protectionState, 'Protected');
        assert.equal(afterFailure.resyncRequired, true, 'replication was stopped');
        assert.deepEqual((await env.workflows.describeItem(env.vaultId, 'web')).allowedOperations, [
          'TestFailover',
          'UnplannedFailover',
          'DisableProtection',
        ]);
        env.script = () => undefined;
        env.seen.length = 0;
        const retry = await run(env, 'UnplannedFailover', { point: 'latest-processed' });
        assert.equal(retry.state, 'Succeeded', JSON.stringify(retry.error));
        assert.equal(payloadOf(env, 'machine.create')['reuseExisting'], true);
        assert.equal((await env.store.items.get(env.vaultId, 'web')).protectionState, 'FailedOver');
      } finally {
        await env.stop();
      }
    });

    it('unplanned failover refusals: not Protected, no point, app-consistent missing', async () => {
      const env = await setup({ dialect });
      try {
        const { job } = await env.workflows.protect(env.vaultId, {
          machine: 'web',
          policy: 'gold',
          targetSite: 'recovery',
        });
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'UnplannedFailover', {}),
          rejectsWith('OPERATION_NOT_ALLOWED'),
        );
        await jobEnded(env.store, job.id);
        await waitUntil('Protected', async () =>
          (await env.store.items.get(env.vaultId, 'web')).protectionState === 'Protected' ? true : undefined,
        );
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'UnplannedFailover', { point: 'latest-app-consistent' }),
          rejectsWith('NO_RECOVERY_POINT'),
        );
        for (const op of [
          'Commit',
          'ChangePit',
          'CancelFailover',
          'ReverseReplicate',
          'TestFailoverCleanup',
        ] as const) {
          await assert.rejects(
            env.workflows.operate(env.vaultId, 'web', op, {}),
            rejectsWith('OPERATION_NOT_ALLOWED'),
          );
        }
      } finally {
        await env.stop();
      }
    });

    it('cancelling a running unplanned failover needs force and leaves the item needing repair', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) => (c.type === 'replica.expose' ? 'hold' : undefined);
        const job = await env.workflows.operate(env.vaultId, 'web', 'UnplannedFailover', {});
        await waitUntil('expose sent', () => Promise.resolve(env.held.length > 0 ? true : undefined));
        await assert.rejects(env.workflows.cancelJob(job.id, false), rejectsWith('FORCE_REQUIRED'));
        await env.workflows.cancelJob(job.id, true);
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.state, 'Cancelled');
        const item = await waitUntil('item released', async () => {
          const i = await env.store.items.get(env.vaultId, 'web');
          return i.currentJobId === null ? i : undefined;
        });
        assert.equal(item.protectionState, 'NeedsRepair');
        assert.equal(item.replicationHealth, 'Critical');
        assert.deepEqual((await env.workflows.describeItem(env.vaultId, 'web')).allowedOperations, [
          'DisableProtection',
          'RepairReplication',
        ]);
      } finally {
        await env.stop();
      }
    });

    it('change recovery point, then commit: other points deleted, change-point no longer offered', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        const item = await env.store.items.get(env.vaultId, 'web');
        const older = await env.store.points.add({
          itemId: item.id,
          sequence: 5,
          time: new Date(Date.now() - 60_000).toISOString(),
          type: 'app-consistent',
          groupPointId: null,
        });
        const failover = await run(env, 'UnplannedFailover', {});
        assert.equal(failover.state, 'Succeeded');
        // Without --shutdown-source the shut-down step says it was skipped, and why; nothing was sent.
        assert.deepEqual(
          failover.steps.slice(1, 3).map((s) => [s.name, s.state]),
          [
            ['Shut down the source machine', 'Skipped'],
            ['Stop replication', 'Succeeded'],
          ],
        );
        assert.match(failover.steps[1]?.skipReason ?? '', /not requested/);
        assert.ok(!sent(env).includes('primary:machine.shutdown'));
        assert.ok(failover.steps.every((s) => (s.state === 'Skipped') === (s.skipReason !== null)));
        env.seen.length = 0;
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ChangePit', { point: 'gone' }),
          rejectsWith('NO_RECOVERY_POINT'),
        );
        const change = await run(env, 'ChangePit', { point: older.id });
        assert.equal(change.state, 'Succeeded', JSON.stringify(change.error));
        assert.equal(change.displayName, 'Change recovery point');
        assert.deepEqual(sent(env), [
          'recovery:machine.powerOff',
          'recovery:replica.swapPoint',
          'recovery:machine.powerOn',
        ]);
        assert.deepEqual(payloadOf(env, 'replica.swapPoint')['point'], { sequence: 5, pointId: older.id });
        const changed = await env.store.items.get(env.vaultId, 'web');
        assert.equal(changed.protectionState, 'FailedOver');
        assert.equal(changed.lastFailover?.pointId, older.id);

        env.seen.length = 0;
        const commit = await run(env, 'Commit');
        assert.equal(commit.state, 'Succeeded', JSON.stringify(commit.error));
        assert.deepEqual(sent(env), ['recovery:replica.commit']);
        const deleteStep = commit.steps.find((s) => s.name === 'Delete the machine at the recovery site');
        assert.equal(deleteStep?.state, 'Skipped');
        assert.match(deleteStep?.skipReason ?? '', /not a failback/);
        const points = await env.store.points.list(item.id);
        assert.deepEqual(
          points.items.map((p) => p.id),
          [older.id],
        );
        const view = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(view.protectionState, 'FailoverCommitted');
        assert.deepEqual(view.allowedOperations, ['ReverseReplicate', 'DisableProtection']);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ChangePit', { point: older.id }),
          rejectsWith('OPERATION_NOT_ALLOWED'),
        );
      } finally {
        await env.stop();
      }
    });

    it('disable protection after a failover keeps the replica the failed-over machine runs on', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        assert.equal((await run(env, 'UnplannedFailover')).state, 'Succeeded');
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'DisableProtection', { deleteReplica: true }),
          rejectsWith('VALIDATION_FAILED'),
        );
        env.seen.length = 0;
        const job = await env.workflows.operate(env.vaultId, 'web', 'DisableProtection', {});
        assert.equal((await jobEnded(env.store, job.id)).state, 'Succeeded');
        assert.deepEqual(sent(env), ['primary:replication.stop'], 'the policy would delete it; not now');
        assert.equal(await env.store.items.find(env.vaultId, 'web'), undefined);
      } finally {
        await env.stop();
      }
    });

    it('planned failover: shut down, drain, final point after the drain, snapshot, power on', async () => {
      const env = await setup({ dialect, primaryKind: 'cloud', recoveryKind: 'onprem' });
      try {
        await protectWeb(env);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'PlannedFailover', { point: 'latest-processed' }),
          rejectsWith('VALIDATION_FAILED'),
        );
        const job = await run(env, 'PlannedFailover');
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        assert.deepEqual(
          job.steps.map((s) => s.name),
          [
            'Prerequisites check',
            'Shut down the source machine',
            'Synchronize pending changes',
            'Prepare the recovery point',
            'Expose disks at the recovery point',
            'Prepare the machine for the target',
            'Create the machine at the target',
            'Snapshot the target disks',
            'Start the machine at the target',
            'Finalize failover',
          ],
        );
        assert.deepEqual(sent(env), [
          'primary:machine.shutdown',
          'primary:replication.drain',
          'recovery:replica.point',
          'recovery:replica.expose',
          'recovery:machine.create',
          'recovery:replica.snapshot',
          'recovery:machine.powerOn',
        ]);
        assert.equal(payloadOf(env, 'replica.point')['minSequence'], 150);
        assert.ok((job.steps[3]?.output as { sequence: number }).sequence >= 150);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.protectionState, 'FailedOver');
        assert.equal(item.lastFailover?.type, 'planned');
        assert.deepEqual((await env.workflows.describeItem(env.vaultId, 'web')).allowedOperations, [
          'ChangePit',
          'Commit',
          'CancelFailover',
          'DisableProtection',
        ]);
      } finally {
        await env.stop();
      }
    });

    it('cancel planned failover (cloud→onprem) restores the exact state before it and resumes replication', async () => {
      const env = await setup({ dialect, primaryKind: 'cloud', recoveryKind: 'onprem' });
      try {
        await protectWeb(env);
        const before = await env.store.items.get(env.vaultId, 'web');
        assert.equal((await run(env, 'PlannedFailover')).state, 'Succeeded');
        env.seen.length = 0;
        const cancel = await run(env, 'CancelFailover');
        assert.equal(cancel.state, 'Succeeded', JSON.stringify(cancel.error));
        assert.deepEqual(sent(env), [
          'recovery:machine.powerOff',
          'recovery:replica.revert',
          'recovery:machine.delete',
          'recovery:replica.release',
          'primary:machine.powerOn',
          'primary:replication.start',
        ]);
        assert.equal(payloadOf(env, 'replica.revert')['snapshot'], 'pre-power-on');
        assert.equal(payloadOf(env, 'replica.release')['resumeReceiving'], true);
        assert.equal(payloadOf(env, 'replication.start')['resume'], true);
        const after = await env.store.items.get(env.vaultId, 'web');
        for (const k of [
          'protectionState',
          'activeLocation',
          'sourceSiteId',
          'targetSiteId',
          'reversed',
          'machineId',
        ] as const) {
          assert.equal(after[k], before[k], k);
        }
        assert.equal(after.lastFailover, null);
        assert.equal(await env.store.machines.find(env.recoverySiteId, 'web'), undefined);
        assert.equal((await env.store.machines.find(env.primarySiteId, 'web'))?.powerState, 'Running');
        // A later planned failover can be retried.
        assert.equal((await run(env, 'PlannedFailover')).state, 'Succeeded');
      } finally {
        await env.stop();
      }
    });

    it('cancel failover is refused for onprem→onprem and for unplanned failovers (R-FO-10)', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        assert.equal((await run(env, 'PlannedFailover')).state, 'Succeeded');
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'CancelFailover', {}),
          rejectsWith('CANCEL_FAILOVER_NOT_ALLOWED'),
        );
      } finally {
        await env.stop();
      }
    });

    it('a planned failover that fails starts an automatic cancel that restores the item (R-FO-11)', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) =>
          c.type === 'machine.powerOn' && env.siteOf.get(c.agentId) === 'recovery'
            ? { code: 'TARGET_HOST_OUT_OF_MEMORY', message: 'h1 has 100 MiB free', seedCode: 8038 }
            : undefined;
        const job = await run(env, 'PlannedFailover');
        assert.equal(job.state, 'Failed');
        assert.equal(job.error?.code, 'TARGET_HOST_OUT_OF_MEMORY');
        const cancel = await waitUntil('automatic cancel', async () => {
          const jobs = await env.store.jobs.list({ type: 'CancelFailover' });
          return jobs.items[0];
        });
        assert.equal((await jobEnded(env.store, cancel.id)).state, 'Succeeded');
        assert.equal((cancel.input as { automatic: boolean }).automatic, true);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.protectionState, 'Protected');
        assert.equal(item.currentJobId, null);
        const events = await env.store.events.list(env.vaultId);
        assert.ok(events.items.some((e) => e.kind === 'PlannedFailoverRolledBack'));
      } finally {
        await env.stop();
      }
    });

    it('an operator cancel of a running planned failover also rolls it back automatically', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) => (c.type === 'replica.snapshot' ? 'hold' : undefined);
        const job = await env.workflows.operate(env.vaultId, 'web', 'PlannedFailover', {});
        await waitUntil('snapshot sent', () => Promise.resolve(env.held.length > 0 ? true : undefined));
        await env.workflows.cancelJob(job.id, false);
        assert.equal((await jobEnded(env.store, job.id)).state, 'Cancelled');
        const cancel = await waitUntil('automatic cancel', async () => {
          const jobs = await env.store.jobs.list({ type: 'CancelFailover' });
          return jobs.items[0];
        });
        assert.equal((await jobEnded(env.store, cancel.id)).state, 'Succeeded');
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.protectionState, 'Protected');
        assert.equal(item.currentJobId, null);
        assert.ok(sent(env).includes('primary:replication.start'), 'replication resumed');
      } finally {
        await env.stop();
      }
    });

    it('when the automatic cancel fails too, the job says to cancel by hand with the steps', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        env.script = (c) =>
          c.type === 'machine.powerOn'
            ? { code: 'TARGET_HOST_OUT_OF_MEMORY', message: 'no memory', seedCode: 8038 }
            : undefined;
        const job = await run(env, 'PlannedFailover');
        assert.equal(job.state, 'Failed');
        const cancel = await waitUntil('automatic cancel', async () => {
          const jobs = await env.store.jobs.list({ type: 'CancelFailover' });
          return jobs.items[0];
        });
        const ended = await jobEnded(env.store, cancel.id);
        assert.equal(ended.state, 'Failed');
        assert.equal(ended.error?.code, 'TARGET_HOST_OUT_OF_MEMORY');
        assert.match(ended.error?.recommendedAction ?? '', /Cancel the failover by hand: 1\)/);
        const item = await waitUntil('released', async () => {
          const i = await env.store.items.get(env.vaultId, 'web');
          return i.currentJobId === null ? i : undefined;
        });
        assert.equal(item.protectionState, 'NeedsRepair');
        assert.match(item.healthReason ?? '', /by hand/);
        const events = await env.store.events.list(env.vaultId);
        assert.ok(events.items.some((e) => e.kind === 'CancelFailoverFailed' && e.severity === 'Critical'));
      } finally {
        await env.stop();
      }
    });

    it('planned failover is refused while replication is unhealthy or an agent is not connected', async () => {
      const env = await setup({ dialect });
      try {
        await protectWeb(env);
        const item = await env.store.items.get(env.vaultId, 'web');
        await env.store.items.update(item.id, { resyncRequired: true });
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'PlannedFailover', {}),
          rejectsWith('REPLICATION_UNHEALTHY'),
        );
        await env.store.items.update(item.id, { resyncRequired: false });
        await env.stopAgent(env.primary?.id ?? '');
        await env.store.agents.delete(env.primary?.id ?? '');
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'PlannedFailover', {}),
          rejectsWith('AGENT_NOT_REGISTERED'),
        );
      } finally {
        await env.stop();
      }
    });
  });
}
