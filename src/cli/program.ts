/**
 * The `osr` program (DESIGN §5): every command group on one commander program, and
 * `run`, which parses the arguments and turns any failure into one line,
 * `osr: <message> (<code>)`, and a non-zero exit code (see `EXIT_CODES`);
 * `OSR_DEBUG=1` adds the stack.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { registerAgentCommands } from './commands/agent.js';
import { registerContainerCommands } from './commands/container.js';
import { registerEventCommands } from './commands/event.js';
import { registerItemCommands } from './commands/item.js';
import { registerJobCommands } from './commands/job.js';
import { registerKeyCommands } from './commands/key.js';
import { registerMachineCommands } from './commands/machine.js';
import { registerNbdCommands } from './commands/nbd.js';
import { registerNetworkMapCommands } from './commands/network-map.js';
import { registerOperationCommands } from './commands/operations.js';
import { registerPlanCommands } from './commands/plan.js';
import { registerPolicyCommands } from './commands/policy.js';
import { registerServerCommands } from './commands/server.js';
import { registerSiteCommands } from './commands/site.js';
import { registerVaultCommands } from './commands/vault.js';
import { registerWorkloadCommands } from './commands/workload.js';
import { CliError, EXIT_CODES } from './errors.js';

/** The version in package.json (shown by `osr --version`). */
export function cliVersion(): string {
  const path = fileURLToPath(new URL('../../../package.json', import.meta.url));
  return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
}

/** Builds the `osr` program with every command group; parse it with `parseAsync`. */
export function buildProgram(): Command {
  const program = new Command('osr')
    .description('Open Site Recovery: replicate machines to a recovery site and fail them over')
    .version(cliVersion(), '-V, --version')
    .option('--server <url>', 'control plane URL (env OSR_SERVER, default http://127.0.0.1:7480)')
    .option('--token <token>', 'bearer token (env OSR_TOKEN, default: the admin token in the data folder)')
    .option('--vault <vault>', 'vault id or name (env OSR_VAULT, default "default")')
    .option('--data <dir>', 'data folder (env OSR_DATA, default ./.osr)')
    .option('--json', "print the API's JSON instead of tables")
    .exitOverride()
    .configureOutput({
      // Commander's own messages ("error: unknown option …") become our one-line form.
      outputError: (text, write) => write(`osr: ${text.replace(/^error:\s*/, '').trim()} (USAGE)\n`),
    });
  registerServerCommands(program);
  registerVaultCommands(program);
  registerSiteCommands(program);
  registerKeyCommands(program);
  registerAgentCommands(program);
  registerContainerCommands(program);
  registerMachineCommands(program);
  registerNetworkMapCommands(program);
  registerPolicyCommands(program);
  registerItemCommands(program);
  registerOperationCommands(program);
  registerPlanCommands(program);
  registerJobCommands(program);
  registerEventCommands(program);
  registerNbdCommands(program);
  registerWorkloadCommands(program);
  return program;
}

/** The lines printed for a failure (stderr), and the exit code. */
export function describeFailure(err: unknown, debug: boolean): { lines: string[]; exitCode: number } {
  if (err instanceof CommanderError) {
    // Commander has printed its message already (help, version, usage error).
    const ok = err.exitCode === 0;
    return { lines: [], exitCode: ok ? EXIT_CODES.ok : EXIT_CODES.usage };
  }
  const stack = debug && err instanceof Error && err.stack ? [err.stack] : [];
  if (err instanceof CliError) {
    const lines = [`osr: ${oneLine(err.message)} (${err.code})`];
    if (err.code === 'FORCE_REQUIRED') {
      lines.push(
        'Warning: going ahead stops replication of the item; it will no longer replicate and will need repair (osr repair).',
        'If you accept that, repeat the command with --force.',
      );
    }
    // The error stays one line; the message already names the offending field.
    if (debug && err.details !== null) lines.push(`osr: details: ${oneLine(JSON.stringify(err.details))}`);
    return { lines: [...lines, ...stack], exitCode: err.exitCode };
  }
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  return {
    lines: [`osr: ${oneLine(message)} (${typeof code === 'string' ? code : 'ERROR'})`, ...stack],
    exitCode: EXIT_CODES.error,
  };
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/** Runs `osr` with these arguments (as `process.argv`) and resolves with the exit code. */
export async function run(argv: readonly string[] = process.argv): Promise<number> {
  try {
    await buildProgram().parseAsync([...argv]);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT_CODES.ok;
  } catch (err) {
    const { lines, exitCode } = describeFailure(err, process.env['OSR_DEBUG'] === '1');
    for (const l of lines) process.stderr.write(l + '\n');
    return exitCode;
  }
}
