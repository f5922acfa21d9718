/**
 * Reprotect and failback over a real store and jobs engine with scripted agents: the
 * preview, original and alternate location, the "agent not registered" refusal that
 * succeeds once the agent registers, the failed-over machine that is not running
 * (78093), snapshots of the original machine on its host (R-RP-9), failback as a failover of the reversed item with its commit deleting the
 * recovery machine (R-RP-4), and every failback refusal of R-RP-6/7 with its code.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../../src/domain/errors.js';
import type { Job, Operation } from '../../src/domain/model.js';
import { dialects, jobEnded, jobSettled, protectWeb, sent, setup, waitUntil } from './harness.js';
import type { Env, SetupOptions } from './harness.js';

function rejectsWith(code: string, reason?: string) {
  return (e: unknown) => {
    assert.ok(e instanceof OsrError, String(e));
    assert.equal(e.code, code, e.message);
    if (reason !== undefined) assert.equal((e.details as { reason?: string }).reason, reason);
    return true;
  };
}

async function run(env: Env, op: Operation, params = {}): Promise<Job> {
  const job = await env.workflows.operate(env.vaultId, 'web', op, params);
  return jobSettled(env.store, job.id);
}

function payloadOf(env: Env, type: string): Record<string, unknown> {
  const c = env.seen.find((x) => x.type === type);
  assert.ok(c, `no ${type} command was sent`);
  return c.payload as Record<string, unknown>;
}

/** Protect, fail over (unplanned) and commit `web`. */
async function committed(env: Env, settings: { targetName?: string } = {}): Promise<void> {
  await protectWeb(env);
  if (settings.targetName !== undefined) {
    await env.workflows.updateSettings(env.vaultId, 'web', { targetName: settings.targetName });
  }
  const fo = await run(env, 'UnplannedFailover');
  assert.equal(fo.state, 'Succeeded', JSON.stringify(fo.error));
  const commit = await run(env, 'Commit');
  assert.equal(commit.state, 'Succeeded', JSON.stringify(commit.error));
  env.seen.length = 0;
}

/** …and reprotect to the original location. */
async function reprotected(env: Env): Promise<void> {
  await committed(env);
  const job = await run(env, 'ReverseReplicate');
  assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
  env.seen.length = 0;
}

for (const dialect of dialects()) {
  describe(`reprotect and failback (${dialect})`, () => {
    const world = (o: SetupOptions = {}) => setup({ dialect, ...o });

    it('reprotect to the original location sends only changes and reverses the item', async () => {
      const env = await world();
      try {
        await committed(env);
        const preview = await env.workflows.reprotectPreview(env.vaultId, 'web', {});
        assert.equal(preview.location, 'original');
        assert.equal(preview.transfer, 'changed blocks only');
        assert.deepEqual(preview.direction, { from: 'recovery', to: 'primary' });
        assert.ok(preview.creates.every((c) => c.label.endsWith('(new)')));
        assert.equal(env.seen.length, 0, 'a preview sends nothing');

        const job = await run(env, 'ReverseReplicate');
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        assert.deepEqual(
          job.steps.map((s) => s.name),
          [
            'Prerequisites check',
            'Prepare the replica at the primary site',
            'Start reverse replication',
            'Initial replication',
            'Finalize reprotect',
          ],
        );
        assert.deepEqual(sent(env), [
          'recovery:machine.check',
          'primary:machine.snapshots',
          'primary:replica.prepare',
          'recovery:replication.reverse',
        ]);
        assert.deepEqual(payloadOf(env, 'machine.snapshots'), { name: 'web' });
        const prepare = payloadOf(env, 'replica.prepare');
        assert.deepEqual(prepare['target'], { location: 'original', machine: 'web' });
        assert.equal(prepare['replicaExists'], true, 'original location: block-hash delta, no full copy');
        assert.equal((job.steps[2]?.output as { mode: string }).mode, 'delta');
        const view = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(view.protectionState, 'Protected');
        assert.equal(view.reversed, true);
        assert.equal(view.sourceSiteId, env.recoverySiteId);
        assert.equal(view.targetSiteId, env.primarySiteId);
        assert.equal(view.activeLocation, 'recovery');
        assert.equal(view.machine?.siteId, env.recoverySiteId, 'the machine replicated now runs at recovery');
        assert.ok(view.latestPoints.latest !== null);
        assert.deepEqual(view.allowedOperations, [
          'TestFailover',
          'PlannedFailover',
          'UnplannedFailover',
          'DisableProtection',
        ]);
      } finally {
        await env.stop();
      }
    });

    it('reprotect without a registered primary agent fails with AGENT_NOT_REGISTERED and succeeds once it registers', async () => {
      const env = await world();
      try {
        await committed(env);
        await env.stopAgent(env.primary?.id ?? '');
        await env.store.agents.delete(env.primary?.id ?? '');
        const before = await env.store.items.get(env.vaultId, 'web');
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ReverseReplicate', {}),
          rejectsWith('AGENT_NOT_REGISTERED'),
        );
        const after = await env.store.items.get(env.vaultId, 'web');
        assert.equal(after.protectionState, 'FailoverCommitted');
        assert.equal(after.currentJobId, null);
        await env.registerAgent(env.primarySiteId, 'primary-agent-again');
        const job = await run(env, 'ReverseReplicate');
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        assert.equal(before.reversed, false);
        assert.equal((await env.store.items.get(env.vaultId, 'web')).reversed, true);
      } finally {
        await env.stop();
      }
    });

    it('reprotect fails with 78093 when the failed-over machine does not run; a retry succeeds', async () => {
      const env = await world();
      try {
        await committed(env);
        env.script = (c) =>
          c.type === 'machine.check'
            ? { code: 'MACHINE_NOT_RUNNING', message: 'web is not running', seedCode: 78093 }
            : undefined;
        const job = await run(env, 'ReverseReplicate');
        assert.equal(job.state, 'Failed');
        assert.equal(job.error?.code, 'MACHINE_NOT_RUNNING');
        assert.equal(job.error?.seedCode, 78093);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.protectionState, 'FailoverCommitted');
        env.script = () => undefined;
        assert.equal((await run(env, 'ReverseReplicate')).state, 'Succeeded');
      } finally {
        await env.stop();
      }
    });

    it('reprotect is refused with MACHINE_HAS_SNAPSHOTS while the original machine has snapshots on its host (R-RP-9)', async () => {
      const env = await world();
      try {
        await committed(env);
        env.snapshots.set('primary/web', ['before-upgrade', 'nightly']);
        // Snapshots of a machine at the recovery site of the same name do not count: only the target host's.
        env.snapshots.set('recovery/web', ['elsewhere']);
        const job = await run(env, 'ReverseReplicate');
        assert.equal(job.state, 'Failed');
        assert.equal(job.error?.code, 'MACHINE_HAS_SNAPSHOTS');
        assert.match(job.error?.message ?? '', /before-upgrade, nightly/);
        assert.match(job.error?.recommendedAction ?? '', /snapshots/);
        assert.equal(job.steps[0]?.state, 'Failed');
        assert.equal(job.steps[0]?.error?.code, 'MACHINE_HAS_SNAPSHOTS');
        assert.deepEqual(sent(env), ['recovery:machine.check', 'primary:machine.snapshots']);
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.protectionState, 'FailoverCommitted');
        assert.equal(item.reversed, false);
        assert.equal(item.currentJobId, null);
        assert.ok(
          (await env.workflows.describeItem(env.vaultId, 'web')).allowedOperations.includes(
            'ReverseReplicate',
          ),
        );

        // Once the snapshots are deleted the retry goes through.
        env.snapshots.delete('primary/web');
        env.seen.length = 0;
        const retry = await run(env, 'ReverseReplicate');
        assert.equal(retry.state, 'Succeeded', JSON.stringify(retry.error));
        assert.deepEqual((retry.steps[0]?.output as { snapshots: string[] }).snapshots, []);
        assert.equal((await env.store.items.get(env.vaultId, 'web')).reversed, true);
      } finally {
        await env.stop();
      }
    });

    it('reprotect to an alternate location: preview, 8061, 78052, and a full copy onto a new machine', async () => {
      const env = await world();
      try {
        await committed(env, { targetName: 'web-dr' });
        await assert.rejects(
          env.workflows.reprotectPreview(env.vaultId, 'web', {
            location: 'alternate',
            host: 'h1',
            datastore: 'ds2',
          }),
          rejectsWith('DATASTORE_NOT_ACCESSIBLE'),
        );
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ReverseReplicate', {
            location: 'alternate',
            host: 'h1',
          }),
          rejectsWith('VALIDATION_FAILED'),
        );
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ReverseReplicate', {
            location: 'alternate',
            host: 'h9',
            datastore: 'ds1',
          }),
          rejectsWith('NOT_FOUND'),
        );
        const preview = await env.workflows.reprotectPreview(env.vaultId, 'web', {
          location: 'alternate',
          host: 'h2',
          datastore: 'ds2',
        });
        assert.equal(preview.transfer, 'full copy');
        assert.deepEqual(
          preview.creates.map((c) => c.label),
          [
            'machine web-dr on host h2 (new)',
            'disk web-dr/disk0 (1048576 bytes) on datastore ds2 (new)',
            'replication recovery → primary with policy gold (new)',
          ],
        );
        const job = await run(env, 'ReverseReplicate', {
          location: 'alternate',
          host: 'h2',
          datastore: 'ds2',
        });
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        assert.deepEqual(sent(env), [
          'recovery:machine.check',
          'primary:machine.create',
          'primary:replica.prepare',
          'recovery:replication.reverse',
        ]);
        assert.equal(payloadOf(env, 'replica.prepare')['replicaExists'], false);
        assert.equal((job.steps[2]?.output as { mode: string }).mode, 'full');
        const created = await env.store.machines.find(env.primarySiteId, 'web-dr');
        assert.equal(created?.hostName, 'h2');
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.lastFailover?.targetMachineId, created?.id);
        assert.equal(item.lastFailover?.reverseLocation, 'alternate');
      } finally {
        await env.stop();
      }
    });

    it('an alternate location where a machine of that name exists fails with 78052; original gone needs alternate', async () => {
      const env = await world();
      try {
        await committed(env);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ReverseReplicate', {
            location: 'alternate',
            host: 'h1',
            datastore: 'ds1',
          }),
          rejectsWith('MACHINE_NAME_CONFLICT'),
        );
        const original = await env.store.machines.find(env.primarySiteId, 'web');
        assert.ok(original);
        await env.store.machines.delete(original.id);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'ReverseReplicate', {}),
          rejectsWith('VALIDATION_FAILED'),
        );
        assert.equal(
          (await run(env, 'ReverseReplicate', { location: 'alternate', host: 'h1', datastore: 'ds1' })).state,
          'Succeeded',
        );
      } finally {
        await env.stop();
      }
    });

    it('failback: planned failover of the reversed item to the original machine; its commit deletes the recovery machine', async () => {
      const env = await world();
      try {
        await reprotected(env);
        const recoveryMachine = await env.store.machines.find(env.recoverySiteId, 'web');
        assert.ok(recoveryMachine);
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'UnplannedFailover', { point: 'latest' }),
          rejectsWith('VALIDATION_FAILED'),
        );
        // R-RP-9: not while the original machine has snapshots on its host.
        env.snapshots.set('primary/web', ['before-failback']);
        const refused = await run(env, 'PlannedFailover');
        assert.equal(refused.state, 'Failed');
        assert.equal(refused.error?.code, 'MACHINE_HAS_SNAPSHOTS');
        assert.match(refused.error?.message ?? '', /before-failback.*failback needs none/);
        assert.equal(
          refused.steps[0]?.state,
          'Failed',
          'refused by the prerequisites check, before any change',
        );
        await waitUntil('the item to be free again', async () => {
          const i = await env.store.items.get(env.vaultId, 'web');
          return i.currentJobId === null ? true : undefined;
        });
        assert.equal((await env.workflows.describeItem(env.vaultId, 'web')).protectionState, 'Protected');
        env.snapshots.delete('primary/web');
        env.seen.length = 0;
        const job = await run(env, 'PlannedFailover');
        assert.equal(job.state, 'Succeeded', JSON.stringify(job.error));
        assert.deepEqual(sent(env), [
          'primary:machine.snapshots',
          'recovery:machine.shutdown',
          'recovery:replication.drain',
          'primary:replica.point',
          'primary:replica.expose',
          'primary:machine.create',
          'primary:replica.snapshot',
          'primary:machine.powerOn',
        ]);
        const create = payloadOf(env, 'machine.create');
        assert.equal(create['name'], 'web');
        assert.equal(create['reuseExisting'], true, 'failback brings the original machine up again');
        assert.equal(create['guestTools'], 'Installed', 'guest tools come back at failback (R-RP-10)');
        const failedBack = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(failedBack.protectionState, 'FailedOver');
        assert.equal(failedBack.activeLocation, 'primary');
        assert.equal(failedBack.machine?.siteId, env.primarySiteId);

        env.seen.length = 0;
        const commit = await run(env, 'Commit');
        assert.equal(commit.state, 'Succeeded', JSON.stringify(commit.error));
        assert.deepEqual(sent(env), [
          'primary:replica.commit',
          'recovery:replication.stop',
          'recovery:machine.powerOff',
          'recovery:machine.delete',
        ]);
        assert.equal(payloadOf(env, 'machine.delete')['deleteDisks'], true);
        assert.equal(await env.store.machines.find(env.recoverySiteId, 'web'), undefined);
        const item = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(item.protectionState, 'Unprotected');
        assert.equal(item.activeLocation, 'primary');
        assert.equal(item.machine?.siteId, env.primarySiteId);
        assert.deepEqual(item.allowedOperations, []);
        assert.equal(item.pointCount, 0);

        // The primary machine can be protected again (R-RP-4).
        env.seen.length = 0;
        await protectWeb(env);
        const again = await env.store.items.get(env.vaultId, 'web');
        assert.equal(again.reversed, false);
        assert.equal(again.sourceSiteId, env.primarySiteId);
      } finally {
        await env.stop();
      }
    });

    it('every failback refusal of R-RP-6/7 carries FAILBACK_NOT_ALLOWED and its reason', async () => {
      const env = await world();
      try {
        await reprotected(env);
        const item = await env.store.items.get(env.vaultId, 'web');
        const failedOver = await env.store.machines.getById(item.machineId);
        const back = await env.store.machines.getById(item.lastFailover?.targetMachineId ?? '');
        const refused = async (reason: string) => {
          for (const op of ['PlannedFailover', 'UnplannedFailover', 'TestFailover'] as const) {
            await assert.rejects(
              env.workflows.operate(env.vaultId, 'web', op, {}),
              rejectsWith('FAILBACK_NOT_ALLOWED', reason),
            );
          }
        };
        await env.store.machines.update(failedOver.id, { origin: 'manual' });
        await refused('machine-not-from-failover');
        await env.store.machines.update(failedOver.id, { origin: 'failover' });

        const other = await env.store.containers.create({
          vaultId: env.vaultId,
          siteId: env.recoverySiteId,
          name: 'elsewhere',
          synced: true,
        });
        await env.store.machines.update(failedOver.id, { containerId: other.id });
        await refused('machine-moved');
        await env.store.machines.update(failedOver.id, { containerId: failedOver.containerId });

        await env.store.machines.update(back.id, { hypervisor: 'qemu' });
        await refused('hypervisor-mismatch');
        await env.store.machines.update(back.id, { hypervisor: 'process' });

        // A physical server fails back only as a virtual machine (R-RP-7).
        const lf = item.lastFailover;
        assert.ok(lf);
        const current = await env.store.items.get(env.vaultId, 'web');
        await env.store.items.update(current.id, { lastFailover: { ...lf, sourceHypervisor: 'physical' } });
        await env.store.machines.update(back.id, { hypervisor: 'physical' });
        await refused('physical-target');
        await env.store.machines.update(back.id, { hypervisor: 'process' });
        await env.store.items.update(current.id, { lastFailover: lf });

        await env.store.machines.delete(failedOver.id);
        await refused('machine-deleted');
        const unchanged = await env.store.items.get(env.vaultId, 'web');
        assert.equal(unchanged.currentJobId, null, 'a refusal starts nothing');
        assert.equal(unchanged.protectionState, 'Protected');
      } finally {
        await env.stop();
      }
    });

    it('a reprotect job that is cancelled leaves the item FailoverCommitted to retry', async () => {
      const env = await world();
      try {
        await committed(env);
        env.script = (c) => (c.type === 'replication.reverse' ? 'hold' : undefined);
        const job = await env.workflows.operate(env.vaultId, 'web', 'ReverseReplicate', {});
        await waitUntil('reverse sent', () => Promise.resolve(env.held.length > 0 ? true : undefined));
        await env.workflows.cancelJob(job.id, false);
        assert.equal((await jobEnded(env.store, job.id)).state, 'Cancelled');
        const item = await waitUntil('released', async () => {
          const i = await env.store.items.get(env.vaultId, 'web');
          return i.currentJobId === null ? i : undefined;
        });
        assert.equal(item.protectionState, 'FailoverCommitted');
        assert.equal(item.reversed, false);
      } finally {
        await env.stop();
      }
    });
  });
}
