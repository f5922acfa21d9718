/**
 * Enable, finalize, repair and disable protection over a real store and jobs engine.
 * The site agents are scripted here (they answer the command queue and send status
 * reports the way `osr agent` does); the end-to-end tests with real agents live with
 * the agent.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../../src/domain/errors.js';
import { dialects, jobEnded, protectWeb, sent, setup as setupEnv, waitUntil } from './harness.js';
import type { Env } from './harness.js';

for (const dialect of dialects())
  describe(`protection workflows (${dialect})`, () => {
    const setup = (_dir: unknown, withRecoveryAgent = true): Promise<Env> =>
      setupEnv({ dialect, withRecoveryAgent });
    const dir = undefined;

    it('enable protection runs Enable then Finalize and leaves the item Protected', async () => {
      const env = await setup(dir);
      try {
        const { job, item } = await env.workflows.protect(env.vaultId, {
          machine: 'web',
          policy: 'gold',
          targetSite: 'recovery',
        });
        assert.equal(item.protectionState, 'EnablingProtection');
        assert.deepEqual(
          job.steps.map((s) => s.name),
          [
            'Prerequisites check',
            'Prepare replica at the recovery site',
            'Start replication',
            'Initial replication',
            'Hand over to Finalize protection',
          ],
        );
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.state, 'Succeeded', JSON.stringify(ended.error));
        const finalizeId = (ended.steps[4]?.output as { finalizeJobId: string }).finalizeJobId;
        const finalize = await jobEnded(env.store, finalizeId);
        assert.equal(finalize.state, 'Succeeded');
        assert.equal(finalize.displayName, 'Finalize protection');
        const view = await env.workflows.describeItem(env.vaultId, 'web');
        assert.equal(view.protectionState, 'Protected');
        assert.equal(view.currentJobId, null);
        assert.equal(view.initialReplicationProgress, 100);
        assert.ok(view.latestPoints.latest !== null);
        assert.ok(view.allowedOperations.includes('UnplannedFailover'));
        assert.ok(view.allowedOperations.includes('DisableProtection'));
        // The commands went to the right sites, in order.
        assert.deepEqual(sent(env), ['recovery:replica.prepare', 'primary:replication.start']);
      } finally {
        await env.stop();
      }
    });

    it('refuses a second protection of the same machine and unknown names', async () => {
      const env = await setup(dir);
      try {
        await env.workflows.protect(env.vaultId, { machine: 'web', policy: 'gold', targetSite: 'recovery' });
        await assert.rejects(
          env.workflows.protect(env.vaultId, { machine: 'web', policy: 'gold', targetSite: 'recovery' }),
          (e: unknown) => e instanceof OsrError && e.code === 'ALREADY_EXISTS',
        );
        await assert.rejects(
          env.workflows.protect(env.vaultId, { machine: 'nope', policy: 'gold', targetSite: 'recovery' }),
          (e: unknown) => e instanceof OsrError && e.code === 'NOT_FOUND',
        );
        await assert.rejects(
          env.workflows.protect(env.vaultId, {
            machine: 'primary/db',
            policy: 'nope',
            targetSite: 'recovery',
          }),
          (e: unknown) => e instanceof OsrError && e.code === 'NOT_FOUND',
        );
        // 'db' is the name of a machine on both sites: a bare name does not pick one.
        await assert.rejects(
          env.workflows.protect(env.vaultId, { machine: 'db', policy: 'gold', targetSite: 'recovery' }),
          (e: unknown) =>
            e instanceof OsrError && e.code === 'AMBIGUOUS_NAME' && /primary\/db/.test(e.message),
        );
      } finally {
        await env.stop();
      }
    });

    it('a machine of the same name at the target fails enable with 78052 and the item needs repair', async () => {
      const env = await setup(dir);
      try {
        const { job } = await env.workflows.protect(env.vaultId, {
          machine: 'primary/db',
          policy: 'gold',
          targetSite: 'recovery',
        });
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.state, 'Failed');
        assert.equal(ended.error?.code, 'MACHINE_NAME_CONFLICT');
        assert.equal(ended.error?.seedCode, 78052);
        assert.ok(ended.error?.recommendedAction);
        const item = await env.store.items.get(env.vaultId, 'db');
        assert.equal(item.protectionState, 'NeedsRepair');
        assert.equal(item.currentJobId, null);
        assert.equal(env.seen.length, 0, 'no command was sent');
      } finally {
        await env.stop();
      }
    });

    it('without a recovery agent enable fails with AGENT_NOT_REGISTERED; repair succeeds once it registers', async () => {
      const env = await setup(dir, false);
      try {
        const { job } = await env.workflows.protect(env.vaultId, {
          machine: 'web',
          policy: 'gold',
          targetSite: 'recovery',
        });
        const ended = await jobEnded(env.store, job.id);
        assert.equal(ended.error?.code, 'AGENT_NOT_REGISTERED');
        const item = await env.store.items.get(env.vaultId, 'web');
        assert.equal(item.protectionState, 'NeedsRepair');
        assert.deepEqual((await env.workflows.describeItem(env.vaultId, 'web')).allowedOperations, [
          'DisableProtection',
          'RepairReplication',
        ]);
        await env.registerAgent(env.recoverySiteId, 'late');
        {
          const repair = await env.workflows.operate(env.vaultId, 'web', 'RepairReplication', {});
          assert.equal(repair.displayName, 'Repair replication');
          assert.equal((await jobEnded(env.store, repair.id)).state, 'Succeeded');
          const protectedItem = await waitUntil('item Protected', async () => {
            const i = await env.store.items.get(env.vaultId, 'web');
            return i.protectionState === 'Protected' ? i : undefined;
          });
          assert.equal(protectedItem.resyncRequired, false);
        }
      } finally {
        await env.stop();
      }
    });

    it('an operation outside allowedOperations is refused before anything changes', async () => {
      const env = await setup(dir);
      try {
        const { job } = await env.workflows.protect(env.vaultId, {
          machine: 'web',
          policy: 'gold',
          targetSite: 'recovery',
        });
        const before = await env.store.items.get(env.vaultId, 'web');
        assert.equal(before.currentJobId, job.id);
        const jobsBefore = (await env.store.jobs.list({})).total;
        await assert.rejects(
          env.workflows.operate(env.vaultId, 'web', 'Commit', {}),
          (e: unknown) => e instanceof OsrError && e.code === 'OPERATION_NOT_ALLOWED',
        );
        const afterRefusal = await env.store.items.get(env.vaultId, 'web');
        assert.equal(afterRefusal.version, before.version);
        assert.equal((await env.store.jobs.list({})).total, jobsBefore);
      } finally {
        await env.stop();
      }
    });

    it('disable protection stops replication, deletes the replica per policy and removes the item', async () => {
      const env = await setup(dir);
      try {
        await protectWeb(env);
        const disable = await env.workflows.operate(env.vaultId, 'web', 'DisableProtection', {});
        const ended = await jobEnded(env.store, disable.id);
        assert.equal(ended.state, 'Succeeded', JSON.stringify(ended.error));
        assert.equal(await env.store.items.find(env.vaultId, 'web'), undefined);
        assert.deepEqual(
          env.seen.map((c) => c.type),
          ['replication.stop', 'replica.delete'],
        );
      } finally {
        await env.stop();
      }
    });

    it('disable protection keeps the replica when asked', async () => {
      const env = await setup(dir);
      try {
        await protectWeb(env);
        const disable = await env.workflows.operate(env.vaultId, 'web', 'DisableProtection', {
          deleteReplica: false,
        });
        const ended = await jobEnded(env.store, disable.id);
        assert.equal(ended.state, 'Succeeded');
        assert.deepEqual(
          ended.steps.map((s) => [s.name, s.state]),
          [
            ['Stop replication', 'Succeeded'],
            ['Delete replica', 'Skipped'],
            ['Remove protection', 'Succeeded'],
          ],
        );
        assert.match(ended.steps[1]?.skipReason ?? '', /replica is kept/);
        assert.deepEqual(
          env.seen.map((c) => c.type),
          ['replication.stop'],
        );
      } finally {
        await env.stop();
      }
    });

    it('validates per-item failover settings against the target networks', async () => {
      const env = await setup(dir);
      try {
        await env.workflows.protect(env.vaultId, { machine: 'web', policy: 'gold', targetSite: 'recovery' });
        const ok = await env.workflows.updateSettings(env.vaultId, 'web', {
          network: 'prod-dr',
          subnet: 'default',
          ip: '10.0.0.20',
          cpus: 2,
        });
        assert.equal(ok.failoverSettings.ip, '10.0.0.20');
        assert.equal(ok.failoverSettings.cpus, 2);
        await assert.rejects(
          env.workflows.updateSettings(env.vaultId, 'web', {
            network: 'prod-dr',
            subnet: 'default',
            ip: '192.168.1.5',
          }),
          (e: unknown) => e instanceof OsrError && e.code === 'VALIDATION_FAILED',
        );
        await assert.rejects(
          env.workflows.updateSettings(env.vaultId, 'web', { cpus: 0 }),
          (e: unknown) => e instanceof OsrError && e.code === 'VALIDATION_FAILED',
        );
      } finally {
        await env.stop();
      }
    });
  });
