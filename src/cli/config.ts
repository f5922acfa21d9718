/**
 * Where the CLI talks to and as whom: the server URL, the bearer token and the vault,
 * resolved from flags, then environment variables, then defaults (DESIGN §5).
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CliError } from './errors.js';

/** The server a CLI talks to when neither `--server` nor `OSR_SERVER` is given. */
export const DEFAULT_SERVER = 'http://127.0.0.1:7480';
/** The vault used when neither `--vault` nor `OSR_VAULT` is given (`osr up` creates it). */
export const DEFAULT_VAULT = 'default';
/** The data folder used when neither `--data` nor `OSR_DATA` is given. */
export const DEFAULT_DATA_DIR = '.osr';
/** File in the data folder holding the admin token (written by the server, mode 0600). */
export const ADMIN_TOKEN_FILE = 'admin-token';

/** The global flags as commander parsed them; every field is optional. */
export interface GlobalFlags {
  server?: string;
  token?: string;
  vault?: string;
  data?: string;
  json?: boolean;
}

/** The resolved configuration of one CLI invocation. */
export interface CliConfig {
  /** Base URL of the server, without a trailing slash and without `/api/v1`. */
  server: string;
  /** The token given by flag or environment; undefined means "read it from the data folder". */
  token: string | undefined;
  vault: string;
  /** Absolute path of the data folder. */
  dataDir: string;
  json: boolean;
}

/** Resolves flags over the environment over the defaults. Reads no files. */
export function resolveConfig(
  flags: GlobalFlags,
  env: NodeJS.ProcessEnv = process.env,
  cwd = process.cwd(),
): CliConfig {
  const server = nonEmpty(flags.server) ?? nonEmpty(env['OSR_SERVER']) ?? DEFAULT_SERVER;
  return {
    server: server.replace(/\/+$/, ''),
    token: nonEmpty(flags.token) ?? nonEmpty(env['OSR_TOKEN']),
    vault: nonEmpty(flags.vault) ?? nonEmpty(env['OSR_VAULT']) ?? DEFAULT_VAULT,
    dataDir: resolve(cwd, nonEmpty(flags.data) ?? nonEmpty(env['OSR_DATA']) ?? DEFAULT_DATA_DIR),
    json: flags.json === true,
  };
}

/** The path of the admin token file of a data folder. */
export function adminTokenPath(dataDir: string): string {
  return join(dataDir, ADMIN_TOKEN_FILE);
}

/**
 * The token to send: the one given, else the admin token of the data folder.
 * Throws CliError NO_TOKEN, saying where it looked, when there is none.
 */
export function resolveToken(config: CliConfig): string {
  if (config.token !== undefined) return config.token;
  const path = adminTokenPath(config.dataDir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CliError(
        'NO_TOKEN',
        `no token: pass --token, set OSR_TOKEN, or point --data/OSR_DATA at the server's data folder (${path} does not exist)`,
      );
    }
    throw new CliError('NO_TOKEN', `cannot read the admin token at ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const token = text.trim();
  if (token === '') throw new CliError('NO_TOKEN', `the admin token file ${path} is empty`);
  return token;
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}
