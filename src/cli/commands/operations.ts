/**
 * The operations on a protected item, one verb each (DESIGN §5): `failover`,
 * `test-cleanup`, `change-point`, `commit`, `cancel-failover`, `reprotect`,
 * `unprotect`, `repair`. Each starts a job (202) or is refused before anything changes
 * (409 OPERATION_NOT_ALLOWED); `--wait` follows the job.
 */
import { Option } from 'commander';
import type { Command } from 'commander';
import { vaultPath } from '../client.js';
import type { OsrClient } from '../client.js';
import { contextOf } from '../context.js';
import { usageError } from '../errors.js';
import { followJob, handleStartedJob } from '../job-follow.js';
import { Output } from '../output.js';
import { withWait } from './common.js';

/** The failover flags as commander parses them. */
export interface FailoverFlags {
  type: 'test' | 'planned' | 'unplanned';
  point?: string;
  shutdownSource?: boolean;
  network?: string;
}

/** The route and body of a failover of the given type; usage error for flags that do not fit the type. */
export function failoverRequest(flags: FailoverFlags): { op: string; body: Record<string, unknown> } {
  if (flags.network !== undefined && flags.type !== 'test') {
    throw usageError(
      '--network goes with --type test (a planned or unplanned failover uses the network mapping)',
    );
  }
  if (flags.shutdownSource && flags.type !== 'unplanned') {
    throw usageError(
      '--shutdown-source goes with --type unplanned (a planned failover always shuts the source down)',
    );
  }
  const body: Record<string, unknown> = {};
  if (flags.point !== undefined) body['point'] = flags.point;
  if (flags.type === 'test') {
    if (flags.network !== undefined) body['network'] = flags.network;
    return { op: 'test-failover', body };
  }
  if (flags.type === 'planned') return { op: 'planned-failover', body };
  if (flags.shutdownSource) body['shutdownSource'] = true;
  return { op: 'unplanned-failover', body };
}

/** What `reprotect --preview` answers: what reprotect would do and create. */
export interface ReprotectPreview {
  direction?: { from: string; to: string };
  location?: string;
  transfer?: string;
  creates: { kind: string; name: string; label?: string }[];
}

function defineOperation(
  program: Command,
  name: string,
  description: string,
  configure: (cmd: Command) => Command,
  body: (opts: Record<string, unknown>) => Record<string, unknown>,
  op: string = name,
): void {
  withWait(
    configure(program.command(name).description(description).argument('<item>', 'item id or name')),
  ).action(async (item: string, opts: Record<string, unknown>, cmd: Command) => {
    const request = body(opts);
    const { client, out, vault } = contextOf(cmd);
    const res = await client.post(vaultPath(vault, 'items', item, op), request);
    await handleStartedJob(client, out, res, { wait: opts['wait'] === true });
  });
}

/** Registers the operation verbs. */
export function registerOperationCommands(program: Command): void {
  withWait(
    program
      .command('failover')
      .description('fail an item over: test (isolated copy), planned (no data loss) or unplanned')
      .argument('<item>', 'item id or name')
      .addOption(
        new Option('--type <type>', 'kind of failover')
          .choices(['test', 'planned', 'unplanned'])
          .makeOptionMandatory(),
      )
      .option('--point <point>', 'latest | latest-processed | latest-app-consistent | point id | ISO time')
      .option('--shutdown-source', 'unplanned: try to shut the source machine down first')
      .option('--network <network>', "test: network to attach the test machine to, 'isolated' or 'none'"),
  ).action(async (item: string, opts: FailoverFlags & { wait?: boolean }, cmd: Command) => {
    const { op, body } = failoverRequest(opts);
    const { client, out, vault } = contextOf(cmd);
    const res = await client.post(vaultPath(vault, 'items', item, op), body);
    await handleStartedJob(client, out, res, { wait: opts.wait === true });
  });

  defineOperation(
    program,
    'test-cleanup',
    'clean up after a test failover (delete the test machine)',
    (c) => c.option('--notes <text>', 'notes about the test, kept with the job'),
    (o) => (typeof o['notes'] === 'string' ? { notes: o['notes'] } : {}),
    'test-failover-cleanup',
  );

  defineOperation(
    program,
    'change-point',
    'bring a failed-over machine up at another recovery point',
    (c) =>
      c.requiredOption(
        '--point <point>',
        'latest | latest-processed | latest-app-consistent | point id | ISO time',
      ),
    (o) => ({ point: o['point'] }),
  );

  defineOperation(
    program,
    'commit',
    'commit a failover (drops the other recovery points)',
    (c) => c,
    () => ({}),
  );

  defineOperation(
    program,
    'cancel-failover',
    'cancel a planned failover (cloud → on-premises only) and go back to the source',
    (c) => c,
    () => ({}),
  );

  defineOperation(
    program,
    'repair',
    'repair replication of an item that needs it (resync)',
    (c) => c,
    () => ({}),
  );

  withWait(
    program
      .command('unprotect')
      .description('disable protection of an item')
      .argument('<item>', 'item id or name')
      .option('--delete-replica', 'delete the replica disks too')
      .option(
        '--force',
        'cancel the job running on the item first (even an unplanned failover), and skip clean-up at sites whose agent is gone',
      ),
  ).action(
    async (
      item: string,
      opts: { deleteReplica?: boolean; force?: boolean; wait?: boolean },
      cmd: Command,
    ) => {
      const { client, out, vault } = contextOf(cmd);
      if (opts.force) await cancelCurrentJob(client, out, vault, item);
      const body: Record<string, unknown> = {};
      if (opts.deleteReplica) body['deleteReplica'] = true;
      if (opts.force) body['force'] = true;
      const res = await client.post(vaultPath(vault, 'items', item, 'unprotect'), body);
      await handleStartedJob(client, out, res, { wait: opts.wait === true });
    },
  );

  withWait(
    program
      .command('reprotect')
      .description('start replicating a failed-over item in the reverse direction')
      .argument('<item>', 'item id or name')
      .addOption(
        new Option('--location <where>', 'where the replica goes').choices(['original', 'alternate']),
      )
      .option('--host <host>', 'alternate location: target host')
      .option('--datastore <datastore>', 'alternate location: target datastore')
      .option('--policy <policy>', 'policy for the reverse direction (default: the same)')
      .option('--preview', 'only show what reprotect would create'),
  ).action(
    async (
      item: string,
      opts: {
        location?: string;
        host?: string;
        datastore?: string;
        policy?: string;
        preview?: boolean;
        wait?: boolean;
      },
      cmd: Command,
    ) => {
      if (opts.location === 'alternate' && (opts.host === undefined || opts.datastore === undefined)) {
        throw usageError('--location alternate needs --host and --datastore');
      }
      const body: Record<string, unknown> = {};
      for (const k of ['location', 'host', 'datastore', 'policy'] as const)
        if (opts[k] !== undefined) body[k] = opts[k];
      if (opts.preview) body['preview'] = true;
      const { client, out, vault } = contextOf(cmd);
      const path = vaultPath(vault, 'items', item, 'reprotect');
      if (!opts.preview) {
        const res = await client.post(path, body);
        await handleStartedJob(client, out, res, { wait: opts.wait === true });
        return;
      }
      const preview = await client.post<ReprotectPreview>(path, body);
      out.result(preview, () => {
        if (preview.direction) {
          out.line(
            `Reprotect of ${item}: ${preview.direction.from} → ${preview.direction.to}, ${preview.location ?? 'original'} location (${preview.transfer ?? ''})`,
          );
        }
        out.line(`Reprotect of ${item} would create:`);
        if (preview.creates.length === 0) out.line('  (nothing)');
        for (const c of preview.creates) out.line(`  ${c.label ?? `${c.kind} ${c.name} (new)`}`);
      });
    },
  );
}

/**
 * `unprotect --force`: cancels (with force) the job that holds the item and waits until
 * it has stopped, so that disabling protection is then allowed. The API's FORCE_REQUIRED
 * warning applies: after a forced cancel of an unplanned failover the item needs repair.
 */
async function cancelCurrentJob(client: OsrClient, out: Output, vault: string, item: string): Promise<void> {
  const view = await client.get<{ currentJobId: string | null }>(vaultPath(vault, 'items', item));
  if (view.currentJobId === null) return;
  const jobId = view.currentJobId;
  await client.cancelJob(jobId, true);
  out.note(`Cancelled job ${jobId} (forced); the item will need repair before it replicates again.`);
  // A quiet follow (json mode prints nothing while polling): only the end matters here.
  await followJob(client, jobId, { out: new Output(true, out.stdout, out.stderr), style: 'lines' });
}
