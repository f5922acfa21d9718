/**
 * What every command action needs: the resolved configuration, a client for the
 * server and the output for this invocation — built from the command's flags and
 * the global ones.
 */
import type { Command } from 'commander';
import { OsrClient } from './client.js';
import { resolveConfig, resolveToken } from './config.js';
import type { CliConfig, GlobalFlags } from './config.js';
import { Output } from './output.js';

/** The per-invocation context of a command action. */
export interface CommandContext {
  config: CliConfig;
  client: OsrClient;
  out: Output;
  /** The vault the command works in (`--vault`, `OSR_VAULT`, `default`). */
  vault: string;
}

/** Builds the context of a command from its own and its ancestors' options. */
export function contextOf(cmd: Command, env: NodeJS.ProcessEnv = process.env): CommandContext {
  const config = resolveConfig(cmd.optsWithGlobals<GlobalFlags>(), env);
  const client = new OsrClient({ server: config.server, token: () => resolveToken(config) });
  return { config, client, out: new Output(config.json), vault: config.vault };
}
