/** `osr plan list|create|show|delete`: recovery plans (R-PLAN-1). */
import type { Command } from 'commander';
import type { RecoveryPlan } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { usageError } from '../errors.js';
import { formatTime } from '../output.js';
import { collect, pagingNote, withPaging } from './common.js';

/** `['a,b', 'c']` → `[{items:['a','b']}, {items:['c']}]`; usage error for an empty group. */
export function planGroups(groups: readonly string[]): { items: string[] }[] {
  return groups.map((g, i) => {
    const items = g
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '');
    if (items.length === 0) throw usageError(`--group ${i + 1} names no item`);
    return { items };
  });
}

/** Registers the `plan` command group. */
export function registerPlanCommands(program: Command): void {
  const plan = program
    .command('plan')
    .description('recovery plans: ordered groups of items failed over together');

  withPaging(plan.command('list').description('list recovery plans')).action(
    async (opts: { limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<RecoveryPlan>>(vaultPath(vault, 'plans'), opts);
      out.result(page, () => {
        out.table(page.items, [
          { header: 'name', value: (p) => p.name },
          { header: 'groups', value: (p) => p.groups.length },
          { header: 'items', value: (p) => p.groups.reduce((n, g) => n + g.itemIds.length, 0) },
          { header: 'id', value: (p) => p.id },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );

  plan
    .command('create')
    .description(
      'create a recovery plan; each --group is a comma-separated list of items, groups run in order',
    )
    .argument('<name>', 'plan name')
    .requiredOption('--group <items>', 'ITEM,ITEM… (repeat for the next group)', collect)
    .action(async (name: string, opts: { group: string[] }, cmd: Command) => {
      const groups = planGroups(opts.group);
      const { client, out, vault } = contextOf(cmd);
      const p = await client.post<RecoveryPlan>(vaultPath(vault, 'plans'), { name, groups });
      out.result(p, () => out.line(`Created plan ${p.name} with ${p.groups.length} group(s) (${p.id})`));
    });

  plan
    .command('show')
    .description('show a recovery plan')
    .argument('<plan>', 'plan id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const p = await client.get<RecoveryPlan>(vaultPath(vault, 'plans', name));
      out.result(p, () => {
        out.fields([
          ['name', p.name],
          ['id', p.id],
          ['updated', formatTime(p.updatedAt)],
        ]);
        p.groups.forEach((g, i) => {
          out.line(`Group ${i + 1}: ${g.itemIds.join(', ')}`);
          for (const a of g.before) out.line(`  before: ${a.kind} ${a.name}`);
          for (const a of g.after) out.line(`  after:  ${a.kind} ${a.name}`);
        });
      });
    });

  plan
    .command('delete')
    .description('delete a recovery plan')
    .argument('<plan>', 'plan id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.delete(vaultPath(vault, 'plans', name));
      out.result(body ?? {}, () => out.line(`Deleted plan ${name}`));
    });
}
