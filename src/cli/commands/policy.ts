/** `osr policy list|create|show|update|delete|associate` (R-POL-*). */
import { InvalidArgumentError, Option } from 'commander';
import type { Command } from 'commander';
import type { InitialReplication, Policy, PolicyAssociation } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { usageError } from '../errors.js';
import { formatTime } from '../output.js';
import { intArg, itemsOf, numberArg, onOffArg, pagingNote, positiveNumberArg, withPaging } from './common.js';

/** The policy flags as commander parses them. */
export interface PolicyFlags {
  copyFrequency?: number;
  retention?: number;
  appConsistent?: number;
  compression?: boolean;
  deleteReplica?: boolean;
  initial?: 'now' | 'scheduled' | 'offline';
  startAt?: string;
  exportPath?: string;
  importPath?: string;
  auth?: 'certificate' | 'token';
  port?: number;
  bandwidth?: number | null;
}

/** The policy fields of a create or update request. */
export interface PolicyBody {
  copyFrequencySeconds?: number;
  retentionHours?: number;
  appConsistentFrequencyHours?: number;
  compression?: boolean;
  deleteReplicaOnDisable?: boolean;
  initialReplication?: InitialReplication;
  authentication?: 'certificate' | 'token';
  replicationPort?: number;
  bandwidth?: { limitMbps: number | null; windows: [] };
}

/** `30s`, `5m`, `15m` (also `300`, `5min`, `0.5m`…) → seconds; the server decides which are allowed. */
export function parseCopyFrequency(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?)?$/i.exec(value.trim());
  if (!m) throw new InvalidArgumentError('expected 30s, 5m or 15m.');
  const n = Number(m[1]);
  const unit = (m[2] ?? 's').toLowerCase();
  return Math.round(unit.startsWith('m') ? n * 60 : n);
}

/** `off` → 0, else hours. */
export function parseAppConsistent(value: string): number {
  if (value.trim().toLowerCase() === 'off') return 0;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError("expected hours or 'off'.");
  return n;
}

/** Mbit/s, or `unlimited`/`off`/`0` for no limit (null). */
export function parseBandwidth(value: string): number | null {
  const v = value.trim().toLowerCase();
  if (v === 'unlimited' || v === 'off' || v === '0') return null;
  return positiveNumberArg(value);
}

/**
 * The request fields for the flags given (only those; the server applies defaults and
 * the R-POL rules). Throws a usage error for an incomplete `--initial`.
 */
export function policyBody(flags: PolicyFlags): PolicyBody {
  const body: PolicyBody = {};
  if (flags.copyFrequency !== undefined) body.copyFrequencySeconds = flags.copyFrequency;
  if (flags.retention !== undefined) body.retentionHours = flags.retention;
  if (flags.appConsistent !== undefined) body.appConsistentFrequencyHours = flags.appConsistent;
  if (flags.compression !== undefined) body.compression = flags.compression;
  if (flags.deleteReplica !== undefined) body.deleteReplicaOnDisable = flags.deleteReplica;
  if (flags.auth !== undefined) body.authentication = flags.auth;
  if (flags.port !== undefined) body.replicationPort = flags.port;
  if (flags.bandwidth !== undefined) body.bandwidth = { limitMbps: flags.bandwidth, windows: [] };
  if (flags.initial === undefined) {
    if (flags.startAt !== undefined || flags.exportPath !== undefined || flags.importPath !== undefined) {
      throw usageError('--start-at, --export-path and --import-path go with --initial scheduled|offline');
    }
  } else if (flags.initial === 'now') {
    body.initialReplication = { mode: 'now' };
  } else if (flags.initial === 'scheduled') {
    if (flags.startAt === undefined) throw usageError('--initial scheduled needs --start-at ISO-TIME');
    body.initialReplication = { mode: 'scheduled', startAt: flags.startAt };
  } else {
    if (flags.exportPath === undefined || flags.importPath === undefined) {
      throw usageError('--initial offline needs --export-path P and --import-path P');
    }
    body.initialReplication = { mode: 'offline', exportPath: flags.exportPath, importPath: flags.importPath };
  }
  return body;
}

function withPolicyFlags(cmd: Command): Command {
  return cmd
    .option(
      '--copy-frequency <freq>',
      'how often a crash-consistent point is made: 30s, 5m or 15m',
      parseCopyFrequency,
    )
    .option('--retention <hours>', 'how long points are kept, 1–360 hours', numberArg)
    .option(
      '--app-consistent <hours|off>',
      "app-consistent point frequency, 1–12 hours, or 'off'",
      parseAppConsistent,
    )
    .option('--compression <on|off>', 'compress replication traffic', onOffArg)
    .option('--delete-replica <on|off>', 'delete the replica when protection is disabled', onOffArg)
    .addOption(
      new Option('--initial <mode>', 'initial replication: now, scheduled or offline').choices([
        'now',
        'scheduled',
        'offline',
      ]),
    )
    .option('--start-at <iso>', 'with --initial scheduled: when the initial copy starts')
    .option('--export-path <path>', 'with --initial offline: where the source writes the export')
    .option('--import-path <path>', 'with --initial offline: where the target reads the import')
    .addOption(new Option('--auth <kind>', 'site-to-site authentication').choices(['certificate', 'token']))
    .option('--port <n>', 'replication port', intArg(1))
    .option('--bandwidth <mbps>', "bandwidth limit in Mbit/s, or 'unlimited'", parseBandwidth);
}

function showPolicy(p: Policy): [string, unknown][] {
  const ir = p.initialReplication;
  const initial =
    ir.mode === 'scheduled'
      ? `scheduled at ${ir.startAt}`
      : ir.mode === 'offline'
        ? `offline (export ${ir.exportPath}, import ${ir.importPath})`
        : 'now';
  return [
    ['name', p.name],
    ['id', p.id],
    ['copy frequency', `${p.copyFrequencySeconds}s`],
    ['retention', `${p.retentionHours}h`],
    [
      'app-consistent',
      p.appConsistentFrequencyHours === 0 ? 'off' : `every ${p.appConsistentFrequencyHours}h`,
    ],
    ['compression', p.compression ? 'on' : 'off'],
    ['delete replica', p.deleteReplicaOnDisable ? 'on' : 'off'],
    ['initial replication', initial],
    ['authentication', p.authentication],
    ['replication port', p.replicationPort],
    ['bandwidth', p.bandwidth.limitMbps === null ? 'unlimited' : `${p.bandwidth.limitMbps} Mbit/s`],
    [
      'bandwidth windows',
      p.bandwidth.windows.map((w) => `${w.days.join('')} ${w.from}-${w.to} ${w.limitMbps}Mbps`),
    ],
    ['updated', formatTime(p.updatedAt)],
  ];
}

/** Registers the `policy` command group. */
export function registerPolicyCommands(program: Command): void {
  const policy = program
    .command('policy')
    .description('replication policies and their container associations');

  withPaging(policy.command('list').description('list policies')).action(
    async (opts: { limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<Policy>>(vaultPath(vault, 'policies'), opts);
      out.result(page, () => {
        out.table(page.items, [
          { header: 'name', value: (p) => p.name },
          { header: 'copy', value: (p) => `${p.copyFrequencySeconds}s` },
          { header: 'retention', value: (p) => `${p.retentionHours}h` },
          {
            header: 'app-consistent',
            value: (p) => (p.appConsistentFrequencyHours === 0 ? 'off' : `${p.appConsistentFrequencyHours}h`),
          },
          { header: 'compression', value: (p) => (p.compression ? 'on' : 'off') },
          { header: 'id', value: (p) => p.id },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );

  withPolicyFlags(
    policy.command('create').description('create a policy').argument('<name>', 'policy name'),
  ).action(async (name: string, opts: PolicyFlags, cmd: Command) => {
    const body = { name, ...policyBody(opts) };
    const { client, out, vault } = contextOf(cmd);
    const p = await client.post<Policy>(vaultPath(vault, 'policies'), body);
    out.result(p, () => out.line(`Created policy ${p.name} (${p.id})`));
  });

  policy
    .command('show')
    .description('show a policy')
    .argument('<policy>', 'policy id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const p = await client.get<Policy>(vaultPath(vault, 'policies', name));
      out.result(p, () => out.fields(showPolicy(p)));
    });

  withPolicyFlags(
    policy
      .command('update')
      .description('change settings of a policy')
      .argument('<policy>', 'policy id or name')
      .option('--name <name>', 'rename it'),
  ).action(async (name: string, opts: PolicyFlags & { name?: string }, cmd: Command) => {
    const body = { ...(opts.name === undefined ? {} : { name: opts.name }), ...policyBody(opts) };
    if (Object.keys(body).length === 0) throw usageError('nothing to change: give at least one setting');
    const { client, out, vault } = contextOf(cmd);
    const p = await client.patch<Policy>(vaultPath(vault, 'policies', name), body);
    out.result(p, () => out.line(`Updated policy ${p.name}`));
  });

  policy
    .command('delete')
    .description('delete a policy')
    .argument('<policy>', 'policy id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.delete(vaultPath(vault, 'policies', name));
      out.result(body ?? {}, () => out.line(`Deleted policy ${name}`));
    });

  policy
    .command('associate')
    .description('associate a policy with a source and a target container')
    .argument('<policy>', 'policy id or name')
    .requiredOption('--source-container <c>', 'source container id or name')
    .requiredOption('--target-container <c>', 'target container id or name')
    .action(
      async (name: string, opts: { sourceContainer: string; targetContainer: string }, cmd: Command) => {
        const { client, out, vault } = contextOf(cmd);
        const a = await client.post<PolicyAssociation>(vaultPath(vault, 'policies', name, 'associations'), {
          sourceContainer: opts.sourceContainer,
          targetContainer: opts.targetContainer,
        });
        out.result(a, () =>
          out.line(`Associated policy ${name}: ${a.sourceContainerId} → ${a.targetContainerId} (${a.id})`),
        );
      },
    );

  policy
    .command('associations')
    .description("list a policy's container associations")
    .argument('<policy>', 'policy id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.get<PolicyAssociation[] | Page<PolicyAssociation>>(
        vaultPath(vault, 'policies', name, 'associations'),
      );
      out.result(body, () =>
        out.table(itemsOf(body), [
          { header: 'id', value: (a) => a.id },
          { header: 'source container', value: (a) => a.sourceContainerId },
          { header: 'target container', value: (a) => a.targetContainerId },
        ]),
      );
    });

  policy
    .command('dissociate')
    .description('remove a container association of a policy')
    .argument('<policy>', 'policy id or name')
    .argument('<id>', 'association id')
    .action(async (name: string, id: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.delete(vaultPath(vault, 'policies', name, 'associations', id));
      out.result(body ?? {}, () => out.line(`Removed association ${id}`));
    });
}
