/**
 * The composition root of the control plane (`osr server`, `osr up`): data folder,
 * admin token, store, jobs engine, workflows, agents' command channel and the REST
 * API, listening on a socket. `close()` undoes it in reverse: stop accepting
 * requests (waiting long-polls answer at once), stop the engine (running steps
 * finish or are abandoned to the lease), close the store.
 */
import { mkdir, readFile, writeFile, chmod, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import { createStore } from '../store/index.js';
import type { Store, StoreConfig } from '../store/store.js';
import { JobEngine } from '../jobs/engine.js';
import { systemClock, type Clock } from '../jobs/types.js';
import { createWorkflows } from '../workflows/index.js';
import { AgentChannel } from './agent-channel.js';
import { DEFAULT_HEARTBEAT_TIMEOUT_MS, buildApp } from './app.js';
import { newSecret } from './auth.js';

/** Name of the vault created on first start. */
export const DEFAULT_VAULT_NAME = 'default';
/** Settings key remembering that the default vault was created (so deleting it is final). */
const DEFAULT_VAULT_SETTING = 'default-vault-id';
/** File in the data folder holding the admin token (mode 0600). */
export const ADMIN_TOKEN_FILE = 'admin-token';
/** File in the data folder holding the server's stable worker id. */
export const INSTANCE_ID_FILE = 'instance-id';
/** Default bound on waiting for running steps at close. */
export const DEFAULT_STOP_TIMEOUT_MS = 5000;
/** Default TCP port of the control plane. */
export const DEFAULT_PORT = 7480;

export interface StartServerOptions {
  /** Where the SQLite file and the admin token live; created if missing. */
  dataDir: string;
  /** Address to listen on (default 127.0.0.1). */
  host?: string;
  /** TCP port (default 7480; 0 picks a free one). */
  port?: number;
  /** A PostgreSQL URL; default: the SQLite file `<dataDir>/osr.db`. */
  database?: string;
  /** PostgreSQL schema to use (created if missing); default: the connection's search_path. */
  databaseSchema?: string;
  /** No heartbeat for this long → agent Disconnected (default 60 s). */
  heartbeatTimeoutMs?: number;
  /** pino level (default `OSR_LOG_LEVEL` or `info`); `silent` for none. Logs go to stderr. */
  logLevel?: string;
  /** Test clock; default the system clock. */
  clock?: Clock;
  /** Jobs run at once by this server's engine (default 4). */
  concurrency?: number;
  /**
   * How long `close()` lets running job steps finish before abandoning them to their
   * lease (default 5 s). Abandoned jobs resume after a restart, so a short wait keeps
   * Ctrl-C responsive while a step waits on an agent.
   */
  stopTimeoutMs?: number;
  /** Validity of the agents' stream certificates (default 90 days; agents renew in its last third). */
  agentCertificateLifetimeMs?: number;
}

/** A running control plane. */
export interface RunningServer {
  /** Base URL, e.g. `http://127.0.0.1:7480` (without `/api/v1`). */
  url: string;
  adminToken: string;
  /** Stops accepting, stops the engine, closes the store; idempotent. */
  close(): Promise<void>;
}

/**
 * Reads `<dataDir>/admin-token`, creating it (32 random bytes, base64url, mode 0600)
 * on first start; an existing file is reused and its mode tightened to 0600.
 */
export async function ensureAdminToken(dataDir: string): Promise<string> {
  const file = join(dataDir, ADMIN_TOKEN_FILE);
  try {
    await writeFile(file, newSecret() + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
  const token = (await readFile(file, 'utf8')).trim();
  if (token.length === 0)
    throw new Error(`admin token file ${file} is empty; delete it to create a new token`);
  return token;
}

/**
 * This installation's stable worker id (`DATA/instance-id`, created once). The jobs
 * engine leases jobs under it, so after a crash the restarted server recognises the
 * jobs it held and resumes them at once instead of waiting for the leases to expire.
 */
export async function ensureInstanceId(dataDir: string): Promise<string> {
  const file = join(dataDir, INSTANCE_ID_FILE);
  try {
    await writeFile(file, randomUUID() + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const id = (await readFile(file, 'utf8')).trim();
  if (!/^[0-9a-f-]{36}$/.test(id))
    throw new Error(`instance id file ${file} is damaged; delete it to create a new id`);
  return id;
}

/** Creates the vault `default` on first start (never again once it was created). */
export async function ensureDefaultVault(store: Store): Promise<void> {
  if ((await store.settings.get(DEFAULT_VAULT_SETTING)) !== undefined) return;
  const existing = await store.vaults.find(DEFAULT_VAULT_NAME);
  const vault = existing ?? (await store.vaults.create({ name: DEFAULT_VAULT_NAME }));
  await store.settings.set(DEFAULT_VAULT_SETTING, vault.id);
}

/** Starts the control plane and listens; see {@link StartServerOptions}. */
export async function startServer(options: StartServerOptions): Promise<RunningServer> {
  const clock = options.clock ?? systemClock;
  const heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
  const logger: Logger = pino(
    { level: options.logLevel ?? process.env.OSR_LOG_LEVEL ?? 'info', base: { svc: 'osr-server' } },
    pino.destination(2),
  );

  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const adminToken = await ensureAdminToken(options.dataDir);

  const config: StoreConfig =
    options.database === undefined
      ? { dialect: 'sqlite', file: join(options.dataDir, 'osr.db') }
      : {
          dialect: 'postgres',
          url: options.database,
          ...(options.databaseSchema === undefined ? {} : { schema: options.databaseSchema }),
        };
  const store = await createStore(config);
  const cleanup: (() => Promise<void>)[] = [() => store.close()];
  const unwind = async () => {
    for (const step of cleanup.reverse()) await step();
  };

  try {
    await ensureDefaultVault(store);
    const owner = `osr-server:${await ensureInstanceId(options.dataDir)}`;
    const resumed = await store.jobs.releaseHeldBy(owner, clock.now().toISOString());
    if (resumed.length > 0) logger.warn({ jobs: resumed }, 'resuming jobs this server held when it stopped');
    const engine = new JobEngine({
      store,
      clock,
      owner,
      logger: logger.child({ part: 'jobs' }),
      stopTimeoutMs: options.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS,
      ...(options.concurrency === undefined ? {} : { concurrency: options.concurrency }),
    });
    const channel = new AgentChannel({ store, clock });
    const workflows = createWorkflows({
      store,
      engine,
      clock,
      heartbeatTimeoutMs,
      onCommandEnqueued: (agentId: string) => channel.notify(agentId),
      logger: logger.child({ part: 'workflows' }),
    });
    workflows.register();
    engine.start();
    cleanup.push(() => engine.stop());
    // R-TF-3: test failovers left more than 14 days are cleaned up; checked hourly.
    const stopSweeper = workflows.startSweeper();
    cleanup.push(() => {
      stopSweeper();
      return Promise.resolve();
    });

    const app = await buildApp({
      store,
      engine,
      workflows,
      adminToken,
      dataDir: options.dataDir,
      heartbeatTimeoutMs,
      clock,
      channel,
      logger: logger.child({ part: 'api' }),
      ...(options.agentCertificateLifetimeMs === undefined
        ? {}
        : { agentCertificateLifetimeMs: options.agentCertificateLifetimeMs }),
    });
    cleanup.push(async () => {
      channel.close();
      await app.close();
    });
    const host = options.host ?? '127.0.0.1';
    await app.listen({ host, port: options.port ?? DEFAULT_PORT });
    const address = app.server.address() as AddressInfo;
    const url = `http://${urlHost(host)}:${address.port}`;
    logger.info({ url, dataDir: options.dataDir, dialect: store.dialect }, 'control plane listening');

    let closing: Promise<void> | undefined;
    return {
      url,
      adminToken,
      close: () => {
        closing ??= (async () => {
          logger.info('control plane stopping');
          await unwind();
          logger.info('control plane stopped');
          logger.flush();
        })();
        return closing;
      },
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}
