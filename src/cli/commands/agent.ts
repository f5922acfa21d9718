/** `osr agent list|show`: registered site agents and whether they are connected (R-INF-3). */
import type { Command } from 'commander';
import type { Agent, AgentConnection, Site } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { OsrClient, Page } from '../client.js';
import { contextOf } from '../context.js';
import { formatTime } from '../output.js';
import { pagingNote, withPaging } from './common.js';

/** An agent as the API shows it: no credential, with its connection state. */
export type AgentView = Omit<Agent, 'credentialHash'> & { connection: AgentConnection };

/** Site names by id, for tables that show a site name instead of its id. */
export async function siteNames(client: OsrClient, vault: string): Promise<Map<string, string>> {
  const page = await client.get<Page<Site>>(vaultPath(vault, 'sites'), { limit: 1000 });
  return new Map(page.items.map((s) => [s.id, s.name]));
}

/** Registers the `agent` command group. */
export function registerAgentCommands(program: Command): void {
  const agent = program.command('agent').description('site agents registered with the vault');

  withPaging(agent.command('list').description('list agents with Connected/Disconnected')).action(
    async (opts: { limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<AgentView>>(vaultPath(vault, 'agents'), opts);
      if (out.json) return out.printJson(page);
      const sites = await siteNames(client, vault);
      out.table(page.items, [
        { header: 'id', value: (a) => a.id },
        { header: 'name', value: (a) => a.friendlyName },
        { header: 'site', value: (a) => sites.get(a.siteId) ?? a.siteId },
        { header: 'connection', value: (a) => a.connection },
        { header: 'last heartbeat', value: (a) => formatTime(a.lastHeartbeatAt) },
        { header: 'version', value: (a) => a.version },
      ]);
      const more = pagingNote(page.items.length, page.total);
      if (more) out.line(more);
    },
  );

  agent
    .command('show')
    .description('show an agent')
    .argument('<id>', 'agent id')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const a = await client.get<AgentView>(vaultPath(vault, 'agents', id));
      if (out.json) return out.printJson(a);
      const sites = await siteNames(client, vault);
      out.fields([
        ['id', a.id],
        ['name', a.friendlyName],
        ['site', sites.get(a.siteId) ?? a.siteId],
        ['connection', a.connection],
        ['last heartbeat', formatTime(a.lastHeartbeatAt)],
        ['registered', formatTime(a.registeredAt)],
        ['version', a.version],
        ['data address', a.dataAddress],
        ['certificate', a.certificatePem ? 'yes' : 'no'],
      ]);
    });
}
