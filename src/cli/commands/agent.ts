/**
 * `osr agent`: run a site agent (`osr agent --site NAME --server URL --key FILE
 * --site-dir DIR`, also spelled `osr agent run …`), and the operator views
 * `osr agent list|show` of registered agents and whether they are connected (R-INF-3).
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { pino } from 'pino';
import { SiteAgent } from '../../agent/agent.js';
import { OsrError } from '../../domain/errors.js';
import type { Agent, AgentConnection, Site } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { OsrClient, Page } from '../client.js';
import { contextOf } from '../context.js';
import { formatTime } from '../output.js';
import { intArg, pagingNote, withPaging } from './common.js';
import { waitForShutdownSignal } from './server.js';
import type { GlobalFlags } from '../config.js';
import { Output } from '../output.js';

/** An agent as the API shows it: no credential, with its connection state. */
export type AgentView = Omit<Agent, 'credentialHash'> & { connection: AgentConnection };

/** Site names by id, for tables that show a site name instead of its id. */
export async function siteNames(client: OsrClient, vault: string): Promise<Map<string, string>> {
  const page = await client.get<Page<Site>>(vaultPath(vault, 'sites'), { limit: 1000 });
  return new Map(page.items.map((s) => [s.id, s.name]));
}

/** Options of running an agent, as commander parses them. */
interface AgentRunFlags {
  site?: string;
  key?: string;
  siteDir?: string;
  proxy?: string;
  dataAddress?: string;
  name?: string;
  logLevel?: string;
  backoffMax?: number;
  pollWait?: number;
  inventoryPoll?: number;
  shutdownTimeout?: number;
  pointInterval?: number;
  certificateCheck?: number;
  exitWithParent?: boolean | number;
}

function withRunOptions(cmd: Command): Command {
  return cmd
    .option('--site <name>', 'the site this agent serves (must match the key file)')
    .option('--key <file>', 'registration key file (needed until the agent has registered)')
    .option('--site-dir <dir>', 'the site folder with site.json and machines/')
    .option('--proxy <url>', 'HTTP proxy for the control plane, http://[user:pass@]host:port')
    .option(
      '--data-address <host[:port]>',
      "address of the site-to-site stream: receivers listen on its host at the policies' replication ports",
    )
    .option('--name <name>', 'friendly name shown by `osr agent list`')
    .option('--log-level <level>', 'log level (default: OSR_LOG_LEVEL or info); logs go to stderr')
    .option('--backoff-max <ms>', 'longest wait between reconnect attempts (default 30000)', intArg(1))
    .option('--poll-wait <ms>', 'long-poll wait for commands (default 25000)', intArg(0))
    .option(
      '--inventory-poll <ms>',
      'how often the site folder is checked for changes (default 1000)',
      intArg(10),
    )
    .option('--shutdown-timeout <ms>', 'graceful machine shutdown before SIGKILL (default 30000)', intArg(0))
    .option(
      '--point-interval <ms>',
      "crash-consistent recovery points this often instead of the policy's copy frequency (demos, tests)",
      intArg(100),
    )
    .option(
      '--certificate-check <ms>',
      'how often the stream certificate is checked for renewal (default 60000)',
      intArg(100),
    )
    .option(
      '--exit-with-parent [pid]',
      'stop (shutting machines down) when the process that started the agent (whose pid it is) ends',
      intArg(1),
    );
}

/**
 * Calls `onGone` once the process that started this one has ended, that is once this
 * process is no longer its child (checked now, then each second): an `osr up` killed hard
 * must not leave its agents and their machines behind, whether the agent is running or
 * still waiting to register. `parent` is the starter's pid when it passed it (a starter that
 * died before this process read its own parent is still noticed). Returns a function that
 * stops watching.
 */
function watchParent(parent: number, onGone: () => void): () => void {
  const check = (): boolean => {
    if (process.ppid === parent) return false;
    clearInterval(timer);
    onGone();
    return true;
  };
  const timer = setInterval(check, 1000);
  timer.unref();
  queueMicrotask(check);
  return () => clearInterval(timer);
}

/** Runs the agent until SIGINT/SIGTERM (or an unrecoverable error, e.g. an expired key). */
async function runAgent(cmd: Command): Promise<void> {
  // Merged with the parent's: `osr agent run --site x` leaves --site to `agent`, which also knows it.
  const flags = cmd.optsWithGlobals<AgentRunFlags & GlobalFlags>();
  const globals = flags;
  const out = new Output(globals.json === true);
  if (flags.site === undefined || flags.siteDir === undefined) {
    throw new OsrError(
      'VALIDATION_FAILED',
      'osr agent needs --site NAME and --site-dir DIR (and --key FILE to register)',
    );
  }
  const siteDir = resolve(flags.siteDir);
  const dataDir = resolve(globals.data ?? process.env['OSR_DATA'] ?? resolve(siteDir, '.agent'));
  const server = globals.server ?? process.env['OSR_SERVER'];
  const logger = pino(
    { level: flags.logLevel ?? process.env['OSR_LOG_LEVEL'] ?? 'info', base: { site: flags.site } },
    pino.destination(2),
  );
  const abort = new AbortController();
  const stopWatching =
    flags.exitWithParent !== undefined && flags.exitWithParent !== false
      ? watchParent(flags.exitWithParent === true ? process.ppid : flags.exitWithParent, () => {
          logger.warn({}, 'the process that started this agent ended; stopping');
          abort.abort();
        })
      : () => undefined;
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let agent: SiteAgent;
  try {
    agent = await SiteAgent.start({
      site: flags.site,
      siteDir,
      dataDir,
      ...(server === undefined ? {} : { server }),
      ...(flags.key === undefined ? {} : { keyFile: resolve(flags.key) }),
      ...(flags.proxy === undefined ? {} : { proxy: flags.proxy }),
      ...(flags.dataAddress === undefined ? {} : { dataAddress: flags.dataAddress }),
      ...(flags.name === undefined ? {} : { friendlyName: flags.name }),
      ...(flags.backoffMax === undefined ? {} : { backoffMaxMs: flags.backoffMax }),
      ...(flags.pollWait === undefined ? {} : { pollWaitMs: flags.pollWait }),
      ...(flags.inventoryPoll === undefined ? {} : { inventoryPollMs: flags.inventoryPoll }),
      ...(flags.shutdownTimeout === undefined ? {} : { shutdownTimeoutMs: flags.shutdownTimeout }),
      ...(flags.pointInterval === undefined ? {} : { crashPointIntervalMs: flags.pointInterval }),
      ...(flags.certificateCheck === undefined ? {} : { certificateCheckMs: flags.certificateCheck }),
      log: logger,
      signal: abort.signal,
    });
  } catch (err) {
    stopWatching();
    // Stopped while still waiting for the control plane: a clean stop, not a failure.
    if (abort.signal.aborted) return;
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (abort.signal.aborted) {
    stopWatching();
    await agent.stop();
    return;
  }
  const ready = { agentId: agent.agentId, site: flags.site, dataDir, session: agent.session };
  out.result(ready, () =>
    out.line(`osr agent ${agent.agentId} running for site ${flags.site} (data ${dataDir})`),
  );
  try {
    // A second signal while stopping (Ctrl-C reaches `osr up` and its agents alike) must not cut the
    // machines' graceful shutdown short.
    await Promise.race([
      waitForShutdownSignal(() => logger.warn({}, 'already stopping; machines are being shut down')),
      agent.done,
      new Promise<void>((resolveAborted) =>
        abort.signal.addEventListener('abort', () => resolveAborted(), { once: true }),
      ),
    ]);
  } finally {
    stopWatching();
    await agent.stop();
  }
  if (!out.json) out.line('osr agent stopped');
}

/** Registers the `agent` command group. */
export function registerAgentCommands(program: Command): void {
  const agent = withRunOptions(
    program
      .command('agent')
      .description(
        'run a site agent (--site, --server, --key, --site-dir), or list|show the agents registered with the vault',
      ),
  ).action((_flags: AgentRunFlags, cmd: Command) => runAgent(cmd));

  withRunOptions(agent.command('run').description('run a site agent (same as `osr agent --site …`)')).action(
    (_flags: AgentRunFlags, cmd: Command) => runAgent(cmd),
  );

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
