/** `osr site list|create|show|delete|inventory`. */
import { Option } from 'commander';
import type { Command } from 'commander';
import type { Datastore, Host, Network, Site } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { cell, formatTime } from '../output.js';
import { pagingNote, withPaging } from './common.js';

/** A site's inventory as `GET …/sites/{site}/inventory` answers it. */
export interface SiteInventory {
  hosts: Host[];
  datastores: Datastore[];
  networks: Network[];
  containers: { id: string; name: string; synced: boolean }[];
}

/** Registers the `site` command group. */
export function registerSiteCommands(program: Command): void {
  const site = program.command('site').description('sites of the vault (where machines run)');

  withPaging(site.command('list').description('list the sites of the vault')).action(
    async (opts: { limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<Site>>(vaultPath(vault, 'sites'), opts);
      out.result(page, () => {
        out.table(page.items, [
          { header: 'name', value: (s) => s.name },
          { header: 'kind', value: (s) => s.kind },
          { header: 'id', value: (s) => s.id },
          { header: 'created', value: (s) => formatTime(s.createdAt) },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );

  site
    .command('create')
    .description('create a site')
    .argument('<name>', 'site name')
    .addOption(
      new Option('--kind <kind>', 'on-premises or cloud').choices(['onprem', 'cloud']).makeOptionMandatory(),
    )
    .action(async (name: string, opts: { kind: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const s = await client.post<Site>(vaultPath(vault, 'sites'), { name, kind: opts.kind });
      out.result(s, () => {
        out.line(`Created site ${s.name} (${s.kind}, ${s.id})`);
        out.line(`Next: osr key create --site ${s.name}   (a registration key for the site's agent)`);
      });
    });

  site
    .command('show')
    .description('show a site')
    .argument('<site>', 'site id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const s = await client.get<Site>(vaultPath(vault, 'sites', name));
      out.result(s, () =>
        out.fields([
          ['name', s.name],
          ['id', s.id],
          ['kind', s.kind],
          ['created', formatTime(s.createdAt)],
        ]),
      );
    });

  site
    .command('delete')
    .description('delete a site')
    .argument('<site>', 'site id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.delete(vaultPath(vault, 'sites', name));
      out.result(body ?? {}, () => out.line(`Deleted site ${name}`));
    });

  site
    .command('inventory')
    .description("show a site's hosts, datastores, networks and containers as its agent reported them")
    .argument('<site>', 'site id or name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const inv = await client.get<SiteInventory>(vaultPath(vault, 'sites', name, 'inventory'));
      out.result(inv, () => {
        out.line('Hosts');
        out.table(inv.hosts, [
          { header: 'name', value: (h) => h.name },
          { header: 'cpus', value: (h) => h.cpus },
          { header: 'memory MB', value: (h) => h.memoryMb },
          { header: 'free MB', value: (h) => h.freeMemoryMb },
        ]);
        out.line();
        out.line('Datastores');
        out.table(inv.datastores, [
          { header: 'name', value: (d) => d.name },
          { header: 'type', value: (d) => d.type },
          { header: 'hosts', value: (d) => d.hostNames },
        ]);
        out.line();
        out.line('Networks');
        out.table(inv.networks, [
          { header: 'name', value: (n) => n.name },
          { header: 'subnets', value: (n) => n.subnets.map((s) => `${s.name} ${s.cidr}`) },
        ]);
        out.line();
        out.line('Containers');
        out.table(inv.containers, [
          { header: 'name', value: (c) => c.name },
          { header: 'id', value: (c) => c.id },
          { header: 'synced', value: (c) => cell(c.synced) },
        ]);
      });
    });
}
