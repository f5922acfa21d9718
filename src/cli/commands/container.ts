/** `osr container list|sync`: a site's containers and which are synced (R-INF-5). */
import type { Command } from 'commander';
import type { Container } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import { contextOf } from '../context.js';
import { usageError } from '../errors.js';
import { itemsOf } from './common.js';

/** Registers the `container` command group. */
export function registerContainerCommands(program: Command): void {
  const container = program.command('container').description('containers of a site (groups of machines)');

  container
    .command('list')
    .description("list a site's containers")
    .requiredOption('--site <site>', 'site id or name')
    .action(async (opts: { site: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.get<Container[] | { items: Container[] }>(
        vaultPath(vault, 'sites', opts.site, 'containers'),
      );
      out.result(body, () =>
        out.table(itemsOf(body), [
          { header: 'name', value: (c) => c.name },
          { header: 'id', value: (c) => c.id },
          { header: 'synced', value: (c) => (c.synced ? 'yes' : 'no') },
        ]),
      );
    });

  container
    .command('sync')
    .description("turn syncing of a container's metadata on or off")
    .argument('<id>', 'container id')
    .option('--on', 'sync it')
    .option('--off', 'stop syncing it')
    .action(async (id: string, opts: { on?: boolean; off?: boolean }, cmd: Command) => {
      if (opts.on === opts.off) throw usageError('give exactly one of --on or --off');
      const { client, out, vault } = contextOf(cmd);
      const c = await client.patch<Container>(vaultPath(vault, 'containers', id), {
        synced: opts.on === true,
      });
      out.result(c, () => out.line(`Container ${c.name} is ${c.synced ? 'synced' : 'not synced'}`));
    });
}
