/**
 * Enable, finalize, repair and disable protection over a real store and jobs engine.
 * The site agents are scripted here (they answer the command queue and send status
 * reports the way `osr agent` does); the end-to-end tests with real agents live with
 * the agent.
 */
import { after, before, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/store.js';
import { JobEngine } from '../../src/jobs/engine.js';
import { createWorkflows } from '../../src/workflows/index.js';
import type { Workflows } from '../../src/workflows/index.js';
import { OsrError } from '../../src/domain/errors.js';
import type { Agent, AgentCommand, Job } from '../../src/domain/model.js';

interface Env {
  store: Store;
  engine: JobEngine;
  workflows: Workflows;
  vaultId: string;
  primary: Agent | undefined;
  recovery: Agent | undefined;
  seen: AgentCommand[];
  stop(): Promise<void>;
}

async function waitUntil<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function jobEnded(store: Store, id: string): Promise<Job> {
  return waitUntil(`job ${id} to end`, async () => {
    const j = await store.jobs.get(id);
    return ['Succeeded', 'Failed', 'Cancelled'].includes(j.state) ? j : undefined;
  });
}

/**
 * A scripted agent: answers every command with success (or the failure `fail` picks),
 * and after replication.start reports a finished initial copy and a first point.
 */
function scriptedAgent(
  env: Env,
  agent: Agent,
  fail?: (c: AgentCommand) => string | undefined,
): () => Promise<void> {
  let stopped = false;
  const loop = async (): Promise<void> => {
    while (!stopped) {
      const now = new Date().toISOString();
      await env.store.agents.update(agent.id, { lastHeartbeatAt: now });
      for (const c of await env.store.commands.takeForAgent(agent.id, now)) {
        env.seen.push(c);
        const message = fail?.(c);
        if (message !== undefined) {
          await env.store.commands.complete(
            c.id,
            'Failed',
            null,
            {
              code: 'DATASTORE_NOT_ACCESSIBLE',
              message,
              possibleCauses: 'scripted',
              recommendedAction: 'scripted',
              seedCode: 8061,
            },
            now,
          );
          continue;
        }
        await env.store.commands.complete(c.id, 'Succeeded', { ok: true }, null, now);
        if (c.type === 'replication.start') {
          const itemId = (c.payload as { itemId: string }).itemId;
          await env.workflows.onReplicationStatus(agent.id, {
            items: [{ itemId, initialReplicationProgress: 50 }],
          });
          await env.workflows.onReplicationStatus(agent.id, {
            items: [
              {
                itemId,
                initialReplicationProgress: 100,
                points: [{ sequence: 10, time: new Date().toISOString(), type: 'crash-consistent' }],
              },
            ],
          });
        }
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const running = loop();
  return async () => {
    stopped = true;
    await running;
  };
}

async function setup(dir: string, withRecoveryAgent = true): Promise<Env> {
  const store = await createStore({ dialect: 'sqlite', file: join(dir, `osr-${Math.random()}.db`) });
  const engine = new JobEngine({ store, pollMs: 20, leaseMs: 5000 });
  const workflows = createWorkflows({ store, engine, pollMs: 20 });
  workflows.register();
  engine.start();
  const vault = await store.vaults.create({ name: 'v1' });
  const now = new Date().toISOString();
  const p = await store.sites.create({ vaultId: vault.id, name: 'primary', kind: 'onprem' });
  const r = await store.sites.create({ vaultId: vault.id, name: 'recovery', kind: 'onprem' });
  const snapshot = (machines: string[]) => ({
    hosts: [{ name: 'h1', memoryMb: 8192, freeMemoryMb: 8192, cpus: 4 }],
    datastores: [{ name: 'ds1', hostNames: ['h1'], type: 'file' }],
    networks: [{ name: 'prod', subnets: [{ name: 'default', cidr: '10.0.0.0/24' }] }],
    containers: [{ name: 'cloud1' }],
    machines: machines.map((name) => ({
      name,
      container: 'cloud1',
      hostName: 'h1',
      cpus: 1,
      memoryMb: 512,
      osType: 'linux' as const,
      hypervisor: 'process' as const,
      powerState: 'Running' as const,
      guestTools: 'Installed' as const,
      origin: 'inventory' as const,
      disks: [{ id: 'disk0', sizeBytes: 1 << 20, datastore: 'ds1', path: `${name}/disk0.raw`, nbdUri: null }],
      nics: [{ network: 'prod', subnet: 'default', ip: null }],
    })),
  });
  await store.inventory.replace(p.id, snapshot(['web', 'db']), now);
  await store.inventory.replace(r.id, snapshot(['db']), now);
  await store.policies.create({
    vaultId: vault.id,
    name: 'gold',
    copyFrequencySeconds: 30,
    retentionHours: 24,
    appConsistentFrequencyHours: 4,
    compression: true,
    deleteReplicaOnDisable: true,
    initialReplication: { mode: 'now' },
    authentication: 'certificate',
    replicationPort: 9443,
    bandwidth: { limitMbps: null, windows: [] },
  });
  const agent = (siteId: string, name: string) =>
    store.agents.create({
      vaultId: vault.id,
      siteId,
      friendlyName: name,
      credentialHash: `hash-${name}-${Math.random()}`,
      version: 'test',
      dataAddress: '127.0.0.1:1',
      certificatePem: null,
      registeredAt: now,
      lastHeartbeatAt: now,
    });
  const env: Env = {
    store,
    engine,
    workflows,
    vaultId: vault.id,
    primary: await agent(p.id, 'primary-agent'),
    recovery: withRecoveryAgent ? await agent(r.id, 'recovery-agent') : undefined,
    seen: [],
    stop: async () => {},
  };
  const stops: (() => Promise<void>)[] = [];
  env.stop = async () => {
    for (const s of stops) await s();
    await engine.stop();
    await store.close();
  };
  if (env.primary) stops.push(scriptedAgent(env, env.primary));
  if (env.recovery) stops.push(scriptedAgent(env, env.recovery));
  return env;
}

/** Protects `web` and waits until it is Protected; forgets the commands seen so far. */
async function protectWeb(env: Env): Promise<void> {
  const { job } = await env.workflows.protect(env.vaultId, {
    machine: 'web',
    policy: 'gold',
    targetSite: 'recovery',
  });
  await jobEnded(env.store, job.id);
  await waitUntil('Protected', async () =>
    (await env.store.items.get(env.vaultId, 'web')).protectionState === 'Protected' ? true : undefined,
  );
  env.seen.length = 0;
}

describe('protection workflows', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'osr-wf-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

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
      const types = env.seen.map(
        (c) => `${c.agentId === env.recovery?.id ? 'recovery' : 'primary'}:${c.type}`,
      );
      assert.deepEqual(types, ['recovery:replica.prepare', 'primary:replication.start']);
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
        env.workflows.protect(env.vaultId, { machine: 'db', policy: 'nope', targetSite: 'recovery' }),
        (e: unknown) => e instanceof OsrError && e.code === 'NOT_FOUND',
      );
    } finally {
      await env.stop();
    }
  });

  it('a machine of the same name at the target fails enable with 78052 and the item needs repair', async () => {
    const env = await setup(dir);
    try {
      const { job } = await env.workflows.protect(env.vaultId, {
        machine: 'db',
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
      const site = await env.store.sites.get(env.vaultId, 'recovery');
      const now = new Date().toISOString();
      const agent = await env.store.agents.create({
        vaultId: env.vaultId,
        siteId: site.id,
        friendlyName: 'late',
        credentialHash: `late-${Math.random()}`,
        version: 'test',
        dataAddress: null,
        certificatePem: null,
        registeredAt: now,
        lastHeartbeatAt: now,
      });
      const stopLate = scriptedAgent(env, agent);
      try {
        const repair = await env.workflows.operate(env.vaultId, 'web', 'RepairReplication', {});
        assert.equal(repair.displayName, 'Repair replication');
        assert.equal((await jobEnded(env.store, repair.id)).state, 'Succeeded');
        const protectedItem = await waitUntil('item Protected', async () => {
          const i = await env.store.items.get(env.vaultId, 'web');
          return i.protectionState === 'Protected' ? i : undefined;
        });
        assert.equal(protectedItem.resyncRequired, false);
      } finally {
        await stopLate();
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
      assert.equal((await jobEnded(env.store, disable.id)).state, 'Succeeded');
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
        network: 'prod',
        subnet: 'default',
        ip: '10.0.0.20',
        cpus: 2,
      });
      assert.equal(ok.failoverSettings.ip, '10.0.0.20');
      assert.equal(ok.failoverSettings.cpus, 2);
      await assert.rejects(
        env.workflows.updateSettings(env.vaultId, 'web', {
          network: 'prod',
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
