/**
 * `osr server` and `osr up`: the composition commands, the only place the CLI reaches
 * into `src/api` (for `startServer`). Both run until SIGINT/SIGTERM, then close the
 * server gracefully and exit 0.
 */
import type { Command } from 'commander';
import type { RunningServer, StartServerOptions } from '../../api/server.js';
import { adminTokenPath, DEFAULT_SERVER, DEFAULT_VAULT, resolveConfig } from '../config.js';
import type { GlobalFlags } from '../config.js';
import { Output } from '../output.js';
import { OsrClient } from '../client.js';
import { ChildGroup, finishUp, planUp, prepareUp } from '../up-plan.js';
import type { UpReady } from '../up-plan.js';
import { intArg } from './common.js';

/**
 * The control plane, loaded only by `server` and `up`: the other commands talk HTTP and
 * should neither pay for loading the server nor depend on it.
 */
async function loadStartServer(): Promise<(options: StartServerOptions) => Promise<RunningServer>> {
  return (await import('../../api/server.js')).startServer;
}

/** Resolves with the first SIGINT/SIGTERM; a second one during shutdown exits at once (code 130). */
export function waitForShutdownSignal(
  onForced: () => void = () => process.exit(130),
): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const first = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', first);
      process.off('SIGTERM', first);
      process.once('SIGINT', onForced);
      process.once('SIGTERM', onForced);
      resolve(signal);
    };
    process.on('SIGINT', first);
    process.on('SIGTERM', first);
  });
}

/** How a person on this machine points the CLI at this server (flags only where not the default). */
function cliHint(url: string, dataDir: string, cwd: string): string {
  const parts: string[] = [];
  if (url !== DEFAULT_SERVER) parts.push(`--server ${url}`);
  if (dataDir !== resolveConfig({}, {}, cwd).dataDir) parts.push(`--data ${dataDir}`);
  return parts.length === 0 ? '' : ' ' + parts.join(' ');
}

/** Registers `server` and `up`. */
export function registerServerCommands(program: Command): void {
  program
    .command('server')
    .description('run the control plane (REST API, jobs engine, store) until SIGINT/SIGTERM')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'TCP port (0 picks a free one)', intArg(0), 7480)
    .option('--database <url>', 'PostgreSQL URL (default: SQLite file in the data folder)')
    .option('--heartbeat-timeout <ms>', 'agents without a heartbeat this long show Disconnected', intArg(1))
    .option('--log-level <level>', 'log level (default: OSR_LOG_LEVEL or info)')
    .action(
      async (
        opts: { host: string; port: number; database?: string; heartbeatTimeout?: number; logLevel?: string },
        cmd: Command,
      ) => {
        const config = resolveConfig(cmd.optsWithGlobals<GlobalFlags>());
        const out = new Output(config.json);
        const startServer = await loadStartServer();
        const server = await startServer({
          dataDir: config.dataDir,
          host: opts.host,
          port: opts.port,
          database: opts.database,
          heartbeatTimeoutMs: opts.heartbeatTimeout,
          logLevel: opts.logLevel,
        });
        const ready = {
          url: server.url,
          dataDir: config.dataDir,
          adminTokenFile: adminTokenPath(config.dataDir),
        };
        out.result(ready, () => {
          out.line(`osr server listening on ${server.url}`);
          out.line(`Admin token: ${ready.adminTokenFile}`);
        });
        await waitForShutdownSignal();
        await server.close();
        if (!config.json) out.line('osr server stopped');
      },
    );

  program
    .command('up')
    .description(
      'start everything on this machine in one data folder: the control plane, agents for the sites primary and recovery, and demo machines',
    )
    .option('--port <n>', 'TCP port of the control plane (0 picks a free one)', intArg(0))
    .action(async (opts: { port?: number }, cmd: Command) => {
      const config = resolveConfig(cmd.optsWithGlobals<GlobalFlags>());
      const out = new Output(config.json);
      const first = planUp({ dataDir: config.dataDir, port: opts.port });
      // People running `osr up` read the printed summary; logs below warnings only on request.
      const startServer = await loadStartServer();
      const server = await startServer({
        dataDir: first.dataDir,
        host: first.host,
        port: first.port,
        logLevel: process.env['OSR_LOG_LEVEL'] ?? 'warn',
      });
      const plan = planUp({ dataDir: config.dataDir, port: first.port, serverUrl: server.url });
      const client = new OsrClient({ server: server.url, token: server.adminToken });
      const children = new ChildGroup((name, code, signal) =>
        out.note(`osr up: ${name} ended unexpectedly (${signal ?? `exit ${code}`})`),
      );
      let ready: UpReady | undefined;
      try {
        await prepareUp(client, plan, DEFAULT_VAULT);
        await children.start(plan.children);
        try {
          ready = await finishUp(client, plan, 90_000, DEFAULT_VAULT);
        } catch (err) {
          out.note(`osr up: ${(err as Error).message}; carrying on (see \`osr machine list\`)`);
        }
      } catch (err) {
        await children.stop(20_000);
        await server.close();
        throw err;
      }
      const hint = cliHint(server.url, plan.dataDir, process.cwd());
      const machines = (ready?.machines ?? []).map((m) => ({
        name: m.name,
        powerState: m.powerState,
        disks: m.disks.map((d) => ({ id: d.id, nbdUri: d.nbdUri })),
      }));
      const summary = {
        url: server.url,
        dataDir: plan.dataDir,
        adminToken: server.adminToken,
        adminTokenFile: adminTokenPath(plan.dataDir),
        vault: DEFAULT_VAULT,
        children: plan.children.map((c) => c.name),
        sites: plan.sites.map((s) => ({ name: s.name, kind: s.kind, siteDir: s.siteDir })),
        machines,
      };
      out.result(summary, () => {
        out.line(`osr is up at ${server.url}`);
        out.line(`Data folder:  ${plan.dataDir}`);
        out.line(`Admin token:  ${server.adminToken}  (also in ${summary.adminTokenFile})`);
        out.line(`Vault:        ${DEFAULT_VAULT}`);
        for (const st of plan.sites) out.line(`Site:         ${st.name} (${st.kind}), folder ${st.siteDir}`);
        for (const c of plan.children) out.line(`Started:      ${c.name}`);
        for (const m of machines) {
          out.line(
            `Machine:      ${m.name} ${m.powerState}  ${m.disks.map((d) => `${d.id}=${d.nbdUri ?? '-'}`).join(' ')}`,
          );
        }
        out.line('');
        out.line('Try next (in another terminal, from this folder):');
        out.line(`  osr${hint} vault list`);
        out.line(`  osr${hint} site list`);
        out.line(`  osr${hint} agent list`);
        out.line(`  osr${hint} machine list`);
        out.line(`  osr${hint} workload ledger-check --disk <a disk's nbd:// address>`);
        out.line(`  osr${hint} job list`);
        out.line('Stop with Ctrl-C; run `osr up` again to carry on with the same data and token.');
      });
      await waitForShutdownSignal();
      await children.stop(20_000);
      await server.close();
      if (!config.json) out.line('osr stopped');
    });
}
