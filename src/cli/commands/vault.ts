/** `osr vault list|create|show|delete`. */
import type { Command } from 'commander';
import type { Vault } from '../../domain/model.js';
import { apiPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { formatTime } from '../output.js';
import { pagingNote, withPaging } from './common.js';

/** Registers the `vault` command group. */
export function registerVaultCommands(program: Command): void {
  const vault = program.command('vault').description('vaults: the top-level containers of everything else');

  withPaging(vault.command('list').description('list vaults')).action(
    async (opts: { limit?: number; offset?: number }, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const page = await client.get<Page<Vault>>('/vaults', opts);
      out.result(page, () => {
        out.table(page.items, [
          { header: 'name', value: (v) => v.name },
          { header: 'id', value: (v) => v.id },
          { header: 'created', value: (v) => formatTime(v.createdAt) },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );

  vault
    .command('create')
    .description('create a vault')
    .argument('<name>', 'vault name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const v = await client.post<Vault>('/vaults', { name });
      out.result(v, () => out.line(`Created vault ${v.name} (${v.id})`));
    });

  vault
    .command('show')
    .description('show a vault')
    .argument('<vault>', 'vault id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const v = await client.get<Vault>(apiPath('vaults', name));
      out.result(v, () =>
        out.fields([
          ['name', v.name],
          ['id', v.id],
          ['created', formatTime(v.createdAt)],
        ]),
      );
    });

  vault
    .command('delete')
    .description('delete a vault (refused while it has sites)')
    .argument('<vault>', 'vault id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const body = await client.delete(apiPath('vaults', name));
      out.result(body ?? {}, () => out.line(`Deleted vault ${name}`));
    });
}
