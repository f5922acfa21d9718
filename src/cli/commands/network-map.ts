/** `osr network-map list|create|update|delete`, and `osr network list` (R-NET-1). */
import type { Command } from 'commander';
import type { Network } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { itemsOf } from './common.js';

/** A network mapping as the API shows it, with both ends named. */
export interface NetworkMappingView {
  id: string;
  sourceSite: string;
  sourceNetwork: string;
  targetSite: string;
  targetNetwork: string;
  sourceNetworkId: string;
  targetNetworkId: string;
  createdAt: string;
}

/** Registers the `network-map` and `network` command groups. */
export function registerNetworkMapCommands(program: Command): void {
  const map = program.command('network-map').description('network mappings: source network → target network');

  map
    .command('list')
    .description('list network mappings')
    .action(async (_opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.get<NetworkMappingView[] | Page<NetworkMappingView>>(
        vaultPath(vault, 'network-mappings'),
      );
      out.result(body, () =>
        out.table(itemsOf(body), [
          { header: 'id', value: (m) => m.id },
          { header: 'source', value: (m) => `${m.sourceSite}/${m.sourceNetwork}` },
          { header: 'target', value: (m) => `${m.targetSite}/${m.targetNetwork}` },
        ]),
      );
    });

  map
    .command('create')
    .description('map a source network to a target network')
    .requiredOption('--source-site <site>', 'source site id or name')
    .requiredOption('--source-network <network>', 'source network id or name')
    .requiredOption('--target-site <site>', 'target site id or name')
    .requiredOption('--target-network <network>', 'target network id or name')
    .action(
      async (
        opts: { sourceSite: string; sourceNetwork: string; targetSite: string; targetNetwork: string },
        cmd: Command,
      ) => {
        const { client, out, vault } = contextOf(cmd);
        const m = await client.post<NetworkMappingView>(vaultPath(vault, 'network-mappings'), {
          sourceSite: opts.sourceSite,
          sourceNetwork: opts.sourceNetwork,
          targetSite: opts.targetSite,
          targetNetwork: opts.targetNetwork,
        });
        out.result(m, () =>
          out.line(
            `Mapped ${m.sourceSite}/${m.sourceNetwork} → ${m.targetSite}/${m.targetNetwork} (${m.id})`,
          ),
        );
      },
    );

  map
    .command('update')
    .description('point a mapping at another target network')
    .argument('<id>', 'mapping id')
    .requiredOption('--target-network <network>', 'target network id or name')
    .action(async (id: string, opts: { targetNetwork: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const m = await client.patch<NetworkMappingView>(vaultPath(vault, 'network-mappings', id), {
        targetNetwork: opts.targetNetwork,
      });
      out.result(m, () =>
        out.line(`Mapped ${m.sourceSite}/${m.sourceNetwork} → ${m.targetSite}/${m.targetNetwork} (${m.id})`),
      );
    });

  map
    .command('delete')
    .description('delete a network mapping')
    .argument('<id>', 'mapping id')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.delete(vaultPath(vault, 'network-mappings', id));
      out.result(body ?? {}, () => out.line(`Deleted network mapping ${id}`));
    });

  program
    .command('network')
    .description('networks of a site')
    .command('list')
    .description("list a site's networks and subnets")
    .requiredOption('--site <site>', 'site id or name')
    .action(async (opts: { site: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.get<Network[] | Page<Network>>(
        vaultPath(vault, 'sites', opts.site, 'networks'),
      );
      out.result(body, () =>
        out.table(itemsOf(body), [
          { header: 'name', value: (n) => n.name },
          { header: 'subnets', value: (n) => n.subnets.map((s) => `${s.name} ${s.cidr}`) },
          { header: 'id', value: (n) => n.id },
        ]),
      );
    });
}
