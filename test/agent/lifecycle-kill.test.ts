/**
 * Failover survives a hard kill of the recovery agent (issue 6): real agents, a ledger machine protected until
 * Protected, then a planned and an unplanned failover during which the recovery-site agent is killed with SIGKILL
 * in the middle of a command of the job and started again. The job ends Succeeded, the machine runs at the
 * recovery site — one copy of it, not two — and its ledger holds every record it should, unbroken.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, watch } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { checkLedger, openReadableDisk } from '../../src/workload/ledger.js';
import {
  alive,
  itemOf,
  ledgerOnDisk,
  ledgerStatusOf,
  machineRuntime,
  operate,
  pointsOf,
  startWorld,
  waitJob,
  waitUntil,
  withOutput,
} from './harness.js';
import type { World } from './harness.js';
import type { AgentCommand } from '../../src/domain/model.js';
import {
  endedAfterEachTest,
  ledger,
  protectWeb,
  readRange,
  restartAgent,
  sourceImageOf,
  startSites,
  waitProtected,
  waitReplicaEqual,
} from './replication-support.js';
import type { Sites } from './replication-support.js';

const { worlds, recorders } = endedAfterEachTest();
const AGENT_ARGS = ['--point-interval', '1500'];

/** The live processes running in the recovery site's folder of machine `name`: its copies. */
function copiesOf(s: Sites, name: string): number[] {
  const dir = join(s.recoveryDir, 'machines', name);
  return readdirSync('/proc')
    .map(Number)
    .filter((pid) => {
      if (!Number.isInteger(pid) || !alive(pid)) return false;
      try {
        return readlinkSync(`/proc/${pid}/cwd`) === dir;
      } catch {
        return false;
      }
    });
}

/** The newest command of `type` for the agent of `site`, as the control plane has it. */
async function commandOf(w: World, type: string, siteName = 'recovery'): Promise<AgentCommand | undefined> {
  const site = await w.store.sites.get((await w.store.vaults.get('default')).id, siteName);
  const agent = await w.store.agents.findBySite(site.id);
  if (agent === undefined) return undefined;
  const page = await w.store.commands.list(agent.id, { limit: 1000 });
  return page.items.filter((c) => c.type === type).at(-1);
}

/** Kills the recovery agent with SIGKILL and starts it again on the same data folder. */
async function restartRecovery(w: World, s: Sites): Promise<void> {
  await s.recovery.stop('SIGKILL');
  s.recovery = await restartAgent(w, s, 'recovery', AGENT_ARGS);
}

/** Kills the recovery agent the moment `probe` holds (looked at every millisecond), then starts it again. */
async function killRecoveryWhen(
  w: World,
  s: Sites,
  what: string,
  probe: () => boolean | Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`the recovery agent never reached: ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
  await restartRecovery(w, s);
}

/** The failed-over machine runs once at the recovery site and keeps appending to an unbroken ledger. */
async function checkFailedOver(w: World, s: Sites, itemId: string, records: number): Promise<void> {
  assert.equal((await itemOf(w, itemId)).protectionState, 'FailedOver');
  const config = JSON.parse(readFileSync(join(s.recoveryDir, 'machines', 'web', 'machine.json'), 'utf8')) as {
    disks: { exposure?: { purpose: string } }[];
  };
  assert.ok(
    config.disks.every((d) => d.exposure?.purpose === 'failover'),
    'it runs on the exposure',
  );
  const status = await waitUntil('the failed-over ledger', () => ledgerStatusOf(s.recoveryData, 'web'));
  assert.ok(status.lastCheck.ok, 'the ledger came up unbroken');
  assert.equal(status.lastCheck.records, records, 'with every record it should hold');
  await waitUntil(
    'the failed-over machine to append',
    async () => (await ledgerStatusOf(s.recoveryData, 'web')).count > records + 3,
  );
  const pid = machineRuntime(s.recoveryData, 'web').pid;
  assert.ok(pid !== undefined && alive(pid));
  assert.deepEqual(copiesOf(s, 'web'), [pid], 'one copy of the machine runs, the one the agent knows');
  const uri = (await itemOf(w, itemId)).disks.find((d) => d.id === 'disk0')?.nbdUri ?? '';
  assert.match(uri, /^nbd:\/\//);
  const disk = await ledgerOnDisk(w, uri, 'after-kill', { agentData: s.recoveryData, machine: 'web' });
  assert.ok(disk.records > records);
  assert.ok(
    readRange(disk.file, 0, records * 512).equals(readRange(sourceImageOf(s, 'disk0'), 0, records * 512)),
    'the records up to the failover are the source records',
  );
}

/** Both sites with `web` protected; `fn` runs with the agents' output attached to any failure. */
async function withProtectedWeb(fn: (w: World, s: Sites, itemId: string) => Promise<void>): Promise<void> {
  const w = await startWorld();
  worlds.push(w);
  const s = await startSites(w, AGENT_ARGS);
  recorders.push(s.recorder);
  await withOutput({ 'primary agent': s.primary, 'recovery agent': s.recovery }, async () => {
    const itemId = await protectWeb(w);
    await waitProtected(w, itemId);
    await fn(w, s, itemId);
  });
}

void test(
  'planned failover succeeds although the recovery agent is killed with SIGKILL while the source drains to it and again while it creates the machine',
  { timeout: 120_000 },
  async () => {
    await withProtectedWeb(async (w, s, itemId) => {
      await waitUntil('a recovery point', async () => (await pointsOf(w, itemId)).length > 0);

      const job = await operate(w, itemId, 'planned-failover', {});
      // Killed while the source shuts down and drains its last writes to it: the receiver restarts under the drain.
      await killRecoveryWhen(
        w,
        s,
        'the source shutdown',
        async () => (await commandOf(w, 'machine.shutdown', 'primary')) !== undefined,
      );
      // Killed again the moment machine.create makes the machine's folder: in the middle of the command.
      const machines = join(s.recoveryDir, 'machines');
      mkdirSync(machines, { recursive: true });
      const recovery = s.recovery;
      const watcher = watch(machines, (_event, name) => {
        if (name === 'web') recovery.child.kill('SIGKILL');
      });
      try {
        await waitUntil(
          'the recovery agent to be killed',
          () => recovery.child.signalCode === 'SIGKILL',
          60_000,
        );
      } finally {
        watcher.close();
      }
      assert.notEqual(
        (await commandOf(w, 'machine.create'))?.state,
        'Succeeded',
        'killed before it answered',
      );
      await restartRecovery(w, s);
      const done = await waitJob(w, job, ['Succeeded'], 60_000);
      assert.ok(done.steps.every((st) => st.state === 'Succeeded'));

      const source = await openReadableDisk(sourceImageOf(s, 'disk0'));
      const atShutdown = await checkLedger(source).finally(() => source.close());
      assert.ok(atShutdown.ok && atShutdown.records > 0);
      await checkFailedOver(w, s, itemId, atShutdown.records);
    });
  },
);

void test(
  'unplanned failover succeeds although the recovery agent is killed with SIGKILL while it exposes the replica and again while it powers the machine on',
  { timeout: 120_000 },
  async () => {
    await withProtectedWeb(async (w, s, itemId) => {
      await ledger(s, 'freeze');
      await waitReplicaEqual(s, itemId);
      const frozen = (await ledger(s, 'status')).count ?? 0;
      assert.ok(frozen > 0);

      const job = await operate(w, itemId, 'unplanned-failover', {});
      // While replica.expose makes the exposure (its folder is there, its record maybe not yet).
      await killRecoveryWhen(w, s, 'replica.expose', () =>
        existsSync(join(s.recoveryData, 'exposures', itemId, 'failover')),
      );
      // While machine.powerOn waits to see the machine it started stay up: the process runs, no answer yet.
      await killRecoveryWhen(w, s, 'machine.powerOn', () => copiesOf(s, 'web').length > 0);
      const started = copiesOf(s, 'web');
      assert.equal((await commandOf(w, 'machine.powerOn'))?.state, 'Delivered', 'killed before it answered');
      await waitJob(w, job, ['Succeeded'], 60_000);
      assert.deepEqual(copiesOf(s, 'web'), started, 'the machine it started is the one that runs');
      await checkFailedOver(w, s, itemId, frozen);
    });
  },
);
