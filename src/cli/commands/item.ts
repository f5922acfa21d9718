/** `osr protect`, `osr item list|show|settings` and `osr point list`. */
import { Option } from 'commander';
import type { Command } from 'commander';
import type { FailoverSettings, ProtectedItem, RecoveryPoint } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { usageError } from '../errors.js';
import { handleStartedJob } from '../job-follow.js';
import { cell, formatTime } from '../output.js';
import type { Column } from '../output.js';
import { pagingNote, withPaging, withWait } from './common.js';

/** `GET …/items/{item}`: the item plus what an operator needs to act on it. */
export type ItemView = ProtectedItem & {
  allowedOperations: string[];
  latestPoints: { latest: RecoveryPoint | null; latestAppConsistent: RecoveryPoint | null };
  disks: unknown[];
  /** The machine at the active site. */
  machine?: { id: string; name: string; siteId: string; powerState: string } | null;
  /** While a test failover runs: its job and the test machine's disks. */
  testFailover?: {
    jobId: string;
    machine: { id: string; name: string; disks: { id: string; nbdUri: string }[] } | null;
  } | null;
  [key: string]: unknown;
};

/** A table whose columns are the union of the rows' keys (for shapes the CLI does not fix). */
export function objectColumns(rows: readonly unknown[]): Column<unknown>[] {
  const keys: string[] = [];
  for (const r of rows) {
    if (typeof r !== 'object' || r === null) continue;
    for (const k of Object.keys(r)) if (!keys.includes(k)) keys.push(k);
  }
  return keys.map((k) => ({ header: k, value: (r) => cell((r as Record<string, unknown>)[k]) }));
}

function rpo(seconds: number | null): string {
  return seconds === null ? '-' : `${Math.round(seconds)}s`;
}

/** The request fields of `item settings`; `auto` clears a field (derive it again). */
export function settingsBody(flags: {
  targetName?: string;
  cpus?: string;
  memoryMb?: string;
  network?: string;
  subnet?: string;
  ip?: string;
}): Partial<FailoverSettings> {
  const text = (v: string): string | null => (v === 'auto' ? null : v);
  const num = (name: string, v: string): number | null => {
    if (v === 'auto') return null;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1)
      throw usageError(`--${name} expects a whole number of at least 1, or 'auto'`);
    return n;
  };
  const body: Partial<FailoverSettings> = {};
  if (flags.targetName !== undefined) body.targetName = text(flags.targetName);
  if (flags.cpus !== undefined) body.cpus = num('cpus', flags.cpus);
  if (flags.memoryMb !== undefined) body.memoryMb = num('memory-mb', flags.memoryMb);
  if (flags.network !== undefined) body.network = text(flags.network);
  if (flags.subnet !== undefined) body.subnet = text(flags.subnet);
  if (flags.ip !== undefined) body.ip = text(flags.ip);
  return body;
}

/** Registers `protect`, `item` and `point`. */
export function registerItemCommands(program: Command): void {
  withWait(
    program
      .command('protect')
      .description('enable replication of a machine (starts an Enable protection job)')
      .argument('<machine>', 'machine id, SITE/NAME, or a name only one site has')
      .requiredOption('--policy <policy>', 'replication policy id or name')
      .requiredOption('--target-site <site>', 'recovery site id or name')
      .option('--target-container <container>', 'target container (default: from the policy association)')
      .option('--name <name>', 'name of the protected item (default: the machine name)')
      .option('--replica-exists', 'a replica of the disks is already at the target (offline seeding)'),
  ).action(
    async (
      machine: string,
      opts: {
        policy: string;
        targetSite: string;
        targetContainer?: string;
        name?: string;
        replicaExists?: boolean;
        wait?: boolean;
      },
      cmd: Command,
    ) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.post(vaultPath(vault, 'items'), {
        machine,
        policy: opts.policy,
        targetSite: opts.targetSite,
        ...(opts.targetContainer === undefined ? {} : { targetContainer: opts.targetContainer }),
        ...(opts.name === undefined ? {} : { name: opts.name }),
        ...(opts.replicaExists ? { replicaExists: true } : {}),
      });
      await handleStartedJob(client, out, body, { wait: opts.wait === true });
    },
  );

  const item = program.command('item').description('protected items (machines with replication enabled)');

  withPaging(
    item
      .command('list')
      .description('list protected items')
      .option('--state <state>', 'only items in this protection state (e.g. Protected, FailedOver)')
      .addOption(
        new Option('--health <health>', 'only items of this health').choices([
          'Normal',
          'Warning',
          'Critical',
        ]),
      ),
  ).action(
    async (opts: { state?: string; health?: string; limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<ProtectedItem>>(vaultPath(vault, 'items'), opts);
      out.result(page, () => {
        out.table(page.items, [
          { header: 'name', value: (i) => i.name },
          { header: 'state', value: (i) => i.protectionState },
          {
            header: 'test failover',
            value: (i) => (i.testFailoverState === 'None' ? '-' : i.testFailoverState),
          },
          { header: 'health', value: (i) => i.replicationHealth },
          { header: 'rpo', value: (i) => rpo(i.rpoSeconds) },
          { header: 'active', value: (i) => i.activeLocation },
          { header: 'id', value: (i) => i.id },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );

  item
    .command('show')
    .description('show a protected item: state, allowed operations, latest points, disks with NBD addresses')
    .argument('<item>', 'item id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const i = await client.get<ItemView>(vaultPath(vault, 'items', name));
      out.result(i, () => {
        const point = (p: RecoveryPoint | null): string => (p ? `${formatTime(p.time)} (${p.id})` : '-');
        const s = i.failoverSettings;
        out.fields([
          ['name', i.name],
          ['id', i.id],
          ['state', i.protectionState],
          ['test failover', i.testFailoverState],
          ['active location', i.activeLocation],
          ['direction', i.reversed ? 'recovery → primary (reprotected)' : 'primary → recovery'],
          ['health', i.healthReason ? `${i.replicationHealth} (${i.healthReason})` : i.replicationHealth],
          ['rpo', rpo(i.rpoSeconds)],
          ['initial replication', `${i.initialReplicationProgress}%`],
          ['resync required', i.resyncRequired ? 'yes' : 'no'],
          ['allowed operations', i.allowedOperations],
          ['latest point', point(i.latestPoints.latest)],
          ['latest app-consistent', point(i.latestPoints.latestAppConsistent)],
          ['current job', i.currentJobId],
          ['machine', i.machine ? `${i.machine.name} (${i.machine.powerState})` : '-'],
          ...(i.testFailover?.machine
            ? ([
                ['test machine', `${i.testFailover.machine.name} (job ${i.testFailover.jobId})`],
                ['test disks', i.testFailover.machine.disks.map((d) => `${d.id} ${d.nbdUri}`)],
              ] as [string, string | string[]][])
            : []),
          [
            'failover settings',
            [
              `name=${cell(s.targetName)}`,
              `cpus=${cell(s.cpus)}`,
              `memoryMb=${cell(s.memoryMb)}`,
              `network=${cell(s.network)}`,
              `subnet=${cell(s.subnet)}`,
              `ip=${cell(s.ip)}`,
            ].join(' '),
          ],
        ]);
        out.line();
        out.line('Disks');
        out.table(i.disks, objectColumns(i.disks));
      });
    });

  item
    .command('settings')
    .description("set an item's failover settings (R-NET-5); 'auto' clears a setting")
    .argument('<item>', 'item id or name')
    .option('--target-name <name>', 'name of the machine at the target')
    .option('--cpus <n>', 'CPUs at the target')
    .option('--memory-mb <n>', 'memory at the target in MB')
    .option('--network <name>', 'target network')
    .option('--subnet <name>', 'target subnet')
    .option('--ip <address>', "static IPv4 address at the target ('auto' for DHCP/derived)")
    .action(
      async (
        name: string,
        opts: {
          targetName?: string;
          cpus?: string;
          memoryMb?: string;
          network?: string;
          subnet?: string;
          ip?: string;
        },
        cmd: Command,
      ) => {
        const body = settingsBody(opts);
        if (Object.keys(body).length === 0) throw usageError('nothing to change: give at least one setting');
        const { client, out, vault } = contextOf(cmd);
        const res = await client.patch<ProtectedItem>(vaultPath(vault, 'items', name, 'settings'), body);
        out.result(res, () => out.line(`Updated failover settings of ${name}`));
      },
    );

  withPaging(
    program
      .command('point')
      .description('recovery points of a protected item')
      .command('list')
      .description("list an item's recovery points, newest first")
      .argument('<item>', 'item id or name')
      .addOption(
        new Option('--type <type>', 'only this type').choices(['crash-consistent', 'app-consistent']),
      ),
  ).action(async (name: string, opts: { type?: string; limit?: number; offset?: number }, cmd: Command) => {
    const { client, out, vault } = contextOf(cmd);
    const page = await client.get<Page<RecoveryPoint>>(vaultPath(vault, 'items', name, 'points'), opts);
    out.result(page, () => {
      out.table(page.items, [
        { header: 'time', value: (p) => formatTime(p.time) },
        { header: 'type', value: (p) => p.type },
        { header: 'sequence', value: (p) => p.sequence },
        { header: 'id', value: (p) => p.id },
      ]);
      const more = pagingNote(page.items.length, page.total);
      if (more) out.line(more);
    });
  });
}
