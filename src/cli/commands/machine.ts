/** `osr machine list|show`: machines of the vault's sites as their agents report them. */
import type { Command } from 'commander';
import type { Machine } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { formatTime } from '../output.js';
import { siteNames } from './agent.js';
import { pagingNote, withPaging } from './common.js';

/** `disk0=nbd://…` for each disk (the disk id alone when it is not served). */
export function diskSummary(disks: Machine['disks']): string[] {
  return disks.map((d) => (d.nbdUri ? `${d.id}=${d.nbdUri}` : d.id));
}

/** Registers the `machine` command group. */
export function registerMachineCommands(program: Command): void {
  const machine = program.command('machine').description('machines of the sites (what can be protected)');

  withPaging(
    machine
      .command('list')
      .description('list machines')
      .option('--site <site>', 'only this site (id or name)')
      .option('--container <container>', 'only this container (id or name)'),
  ).action(
    async (opts: { site?: string; container?: string; limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<Machine>>(vaultPath(vault, 'machines'), opts);
      if (out.json) return out.printJson(page);
      const sites = await siteNames(client, vault);
      out.table(page.items, [
        { header: 'name', value: (m) => m.name },
        { header: 'site', value: (m) => sites.get(m.siteId) ?? m.siteId },
        { header: 'host', value: (m) => m.hostName },
        { header: 'power', value: (m) => m.powerState },
        { header: 'disks', value: (m) => diskSummary(m.disks) },
      ]);
      const more = pagingNote(page.items.length, page.total);
      if (more) out.line(more);
    },
  );

  machine
    .command('show')
    .description('show a machine with its disks and NICs')
    .argument('<machine>', 'machine id, SITE/NAME, or a name only one site has')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const m = await client.get<Machine>(vaultPath(vault, 'machines', name));
      if (out.json) return out.printJson(m);
      const sites = await siteNames(client, vault);
      out.fields([
        ['name', m.name],
        ['id', m.id],
        ['site', sites.get(m.siteId) ?? m.siteId],
        ['host', m.hostName],
        ['power', m.powerState],
        ['cpus', m.cpus],
        ['memory MB', m.memoryMb],
        ['os', m.osType],
        ['hypervisor', m.hypervisor],
        ['guest tools', m.guestTools],
        ['origin', m.origin],
        ['updated', formatTime(m.updatedAt)],
      ]);
      out.line();
      out.table(m.disks, [
        { header: 'disk', value: (d) => d.id },
        { header: 'size', value: (d) => d.sizeBytes },
        { header: 'datastore', value: (d) => d.datastore },
        { header: 'path', value: (d) => d.path },
        { header: 'nbd', value: (d) => d.nbdUri },
      ]);
      out.line();
      out.table(m.nics, [
        { header: 'network', value: (n) => n.network },
        { header: 'subnet', value: (n) => n.subnet },
        { header: 'ip', value: (n) => n.ip ?? 'DHCP' },
      ]);
    });
}
