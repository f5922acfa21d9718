/**
 * The site agent (`osr agent`, DESIGN §1): the control plane's hands on one site. It
 * registers once with a registration key (R-INF-2) and keeps the credential, dials out
 * (directly or through a proxy, R-INF-4), heartbeats at the interval the server gave
 * (R-INF-3), reports the site's inventory at start and whenever it changes, long-polls
 * commands with one session id per process and executes them idempotently by id, and
 * reconnects with capped exponential backoff whenever the control plane cannot be
 * reached (logged as CONTROL_PLANE_UNREACHABLE, 95226). Its machines and their disks
 * keep running while the control plane is away.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import * as net from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { OsrError } from '../domain/errors.js';
import type { FabricDriver } from '../fabric/driver.js';
import { LocalFabric } from '../fabric/local/index.js';
import { CommandExecutor, commandHandlers } from './commands.js';
import { ControlPlaneClient, ControlPlaneError } from './control-plane.js';
import type { ChannelCommand } from './control-plane.js';
import {
  CommandLog,
  loadCredential,
  loadOrInitSettings,
  removeCredential,
  saveCredential,
} from './data-dir.js';
import type { StoredCredential } from './data-dir.js';
import { parseProxyUrl } from './http.js';
import { DataPlaneReplicationService } from './replication-dataplane.js';
import { LifecycleService } from './lifecycle.js';
import type { ReplicationService } from './replication.js';
import { certificateRequest, loadTlsIdentity, renewalReason, saveIssuedIdentity } from './tls-identity.js';
import type { AgentTlsIdentity } from './tls-identity.js';

/** The log calls the agent makes (pino's signature). */
export interface AgentLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const silent: AgentLogger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/** A registration key file as the vault hands it out (`POST …/sites/{site}/keys` → `keyFile`). */
export interface KeyFile {
  vaultId: string;
  siteId: string;
  siteName: string;
  server: string;
  key: string;
}

/** Options of `SiteAgent.start`. */
export interface SiteAgentOptions {
  /** The site this agent serves; must match the key file and a stored credential. */
  site: string;
  /** The site folder (`site.json`, `machines/`). */
  siteDir: string;
  /** Where the credential, certificate, command log and fabric state live. */
  dataDir: string;
  /** Control plane URL; default: the stored credential's, else the key file's. */
  server?: string;
  /** Registration key file; needed for the first start (and after a credential is refused). */
  keyFile?: string;
  /** `http://[user:pass@]host:port` of an HTTP proxy for every control-plane request. */
  proxy?: string;
  friendlyName?: string;
  version?: string;
  /**
   * `host[:port]` advertised for the site-to-site stream: receivers listen on its host at the policies'
   * replication ports (default host 127.0.0.1; default port, for items without a policy port, one picked once).
   */
  dataAddress?: string;
  log?: AgentLogger;
  /** First reconnect delay (default 500 ms), doubled per failure up to `backoffMaxMs` (default 30 s). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Long-poll wait (default 25 s). */
  pollWaitMs?: number;
  /** How often the site folder is looked at for changes (default 1 s). */
  inventoryPollMs?: number;
  /** Inventory is re-sent at least this often (default 5 min). */
  inventoryRefreshMs?: number;
  /** Graceful machine shutdown time before SIGKILL (default 30 s). */
  shutdownTimeoutMs?: number;
  /** Replaces the local fabric (tests, other drivers). */
  fabric?: FabricDriver;
  /** Replaces the data-plane replication service. */
  replication?: ReplicationService;
  /** How often replication status is reported (default 2 s). */
  replicationStatusMs?: number;
  /** Crash-consistent points this often instead of the policy's copy frequency (tests, demos). */
  crashPointIntervalMs?: number;
  /** How often the agent checks whether its stream certificate needs renewing (default 1 min). */
  certificateCheckMs?: number;
  /** Aborts a start that is still waiting for the control plane. */
  signal?: AbortSignal;
}

/** Reads and checks a key file. */
export async function readKeyFile(file: string): Promise<KeyFile> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new OsrError(
      'VALIDATION_FAILED',
      `cannot read the registration key file ${file}: ${(err as Error).message}`,
      {
        details: { file },
        cause: err,
      },
    );
  }
  const k = raw as Partial<KeyFile> | null;
  // The API's key answer wraps the file as `keyFile`; accept that too.
  const inner = (raw as { keyFile?: Partial<KeyFile> } | null)?.keyFile;
  const f = inner ?? k;
  if (f === null || typeof f !== 'object' || typeof f.key !== 'string' || typeof f.siteName !== 'string') {
    throw new OsrError(
      'VALIDATION_FAILED',
      `${file} is not a registration key file (needs key and siteName)`,
      {
        details: { file },
      },
    );
  }
  return {
    vaultId: String(f.vaultId ?? ''),
    siteId: String(f.siteId ?? ''),
    siteName: f.siteName,
    server: String(f.server ?? ''),
    key: f.key,
  };
}

/** Capped exponential backoff with a little jitter. */
export class Backoff {
  #next: number;
  constructor(
    readonly initialMs: number,
    readonly maxMs: number,
  ) {
    this.#next = initialMs;
  }
  /** The delay before the next attempt; doubles each call up to the cap. */
  next(): number {
    const d = this.#next;
    this.#next = Math.min(this.maxMs, this.#next * 2);
    return Math.round(d * (0.8 + Math.random() * 0.4));
  }
  reset(): void {
    this.#next = this.initialMs;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

async function pickPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a !== null ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** A running site agent. */
export class SiteAgent {
  readonly fabric: FabricDriver;
  readonly replication: ReplicationService;
  /** Random per process start: the command channel hands each command to a session once. */
  readonly session = randomUUID();
  readonly #o: SiteAgentOptions;
  readonly #log: AgentLogger;
  readonly #client: ControlPlaneClient;
  readonly #commandLog: CommandLog;
  readonly #executor: CommandExecutor;
  readonly #lifecycle: LifecycleService | undefined;
  readonly #dataPlane: DataPlaneReplicationService | undefined;
  #tls: AgentTlsIdentity;
  readonly #dataAddress: string;
  readonly #stop = new AbortController();
  readonly #tasks = new Set<Promise<unknown>>();
  #credential: StoredCredential;
  #reachable = true;
  #reauth: Promise<void> | undefined;
  #inventoryDirty = true;
  #wakeInventory: (() => void) | undefined;
  #unsubscribe: (() => void) | undefined;
  #fatal: (err: Error) => void = () => undefined;
  /** Rejects when the agent stops on an unrecoverable error (e.g. its key expired); resolves on `stop()`. */
  readonly done: Promise<void>;
  #resolveDone: () => void = () => undefined;
  #stopping: Promise<void> | undefined;

  private constructor(
    o: SiteAgentOptions,
    client: ControlPlaneClient,
    credential: StoredCredential,
    fabric: FabricDriver,
    replication: ReplicationService,
    commandLog: CommandLog,
    tls: AgentTlsIdentity,
    dataAddress: string,
    dataPlane: DataPlaneReplicationService | undefined,
    lifecycle?: LifecycleService,
  ) {
    this.#o = o;
    this.#dataPlane = dataPlane;
    this.#lifecycle = lifecycle;
    this.#log = o.log ?? silent;
    this.#client = client;
    this.#credential = credential;
    this.fabric = fabric;
    this.replication = replication;
    this.#commandLog = commandLog;
    this.#executor = new CommandExecutor(
      commandHandlers(fabric, replication, lifecycle?.handlers() ?? {}),
      commandLog,
    );
    this.#tls = tls;
    this.#dataAddress = dataAddress;
    this.done = new Promise<void>((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#fatal = reject;
    });
    // Callers that only await stop() must not see an unhandled rejection.
    this.done.catch(() => undefined);
  }

  /** The agent id the control plane knows this agent by. */
  get agentId(): string {
    return this.#credential.agentId;
  }

  /** The stored registration. */
  get credential(): StoredCredential {
    return this.#credential;
  }

  /** The certificate, key and CA the agent uses on the stream now. */
  get tls(): AgentTlsIdentity {
    return this.#tls;
  }

  /** The command log (ids run, outcomes). */
  get commandLog(): CommandLog {
    return this.#commandLog;
  }

  /**
   * Opens the site (machines and disks come up even while the control plane is away),
   * registers unless a credential is stored, then starts heartbeat, inventory and
   * command loops. Rejects on an unrecoverable registration error (unknown or expired
   * key: the API's code); retries while the control plane cannot be reached.
   */
  static async start(o: SiteAgentOptions): Promise<SiteAgent> {
    const log = o.log ?? silent;
    await mkdir(o.dataDir, { recursive: true, mode: 0o700 });
    let credential = await loadCredential(o.dataDir);
    if (credential !== undefined && credential.siteName !== o.site) {
      throw new OsrError(
        'VALIDATION_FAILED',
        `the data folder ${o.dataDir} belongs to site '${credential.siteName}', not '${o.site}'`,
        {
          details: { dataDir: o.dataDir, site: credential.siteName },
        },
      );
    }
    let key: KeyFile | undefined;
    if (credential === undefined) {
      if (o.keyFile === undefined) {
        throw new OsrError(
          'REGISTRATION_KEY_INVALID',
          'the agent is not registered yet: pass --key with a registration key file',
        );
      }
      key = await readKeyFile(o.keyFile);
      if (key.siteName !== o.site) {
        throw new OsrError(
          'VALIDATION_FAILED',
          `the key file is for site '${key.siteName}', not '${o.site}'`,
          {
            details: { keyFile: o.keyFile, site: key.siteName },
          },
        );
      }
    }
    const server = o.server ?? credential?.server ?? key?.server;
    if (server === undefined || server === '') {
      throw new OsrError('VALIDATION_FAILED', 'no control plane URL: pass --server');
    }
    const client = new ControlPlaneClient({
      server,
      ...(o.proxy === undefined ? {} : { proxy: parseProxyUrl(o.proxy) }),
    });
    let tls = await loadTlsIdentity(o.dataDir, `osr-agent-${o.site}`);
    const settings = await loadOrInitSettings(o.dataDir, async () => ({ dataPort: await pickPort() }));
    const dataAddress = withPort(o.dataAddress ?? '127.0.0.1', settings.dataPort);
    const commandLog = await CommandLog.open(o.dataDir);
    let fabric: FabricDriver | undefined = o.fabric;
    let replication: ReplicationService | undefined = o.replication;
    // Journals are reopened before any disk is served, so no write after a restart escapes capture.
    const dataPlane =
      replication === undefined
        ? new DataPlaneReplicationService({
            dataDir: o.dataDir,
            identity: tls,
            dataAddress,
            peerLookup: (siteId) => client.peer(siteId),
            log,
            ...(o.crashPointIntervalMs === undefined ? {} : { crashPointIntervalMs: o.crashPointIntervalMs }),
          })
        : undefined;
    // Exposures (failover and test machines' disks) are served again before the fabric serves those machines.
    const lifecycle =
      dataPlane === undefined ? undefined : new LifecycleService({ dataDir: o.dataDir, dataPlane, log });
    try {
      await dataPlane?.load();
      await lifecycle?.load();
      if (fabric === undefined) {
        const local = await LocalFabric.open({
          siteDir: o.siteDir,
          stateDir: join(o.dataDir, 'fabric'),
          ...(o.shutdownTimeoutMs === undefined ? {} : { shutdownTimeoutMs: o.shutdownTimeoutMs }),
          ...(o.inventoryPollMs === undefined ? {} : { pollMs: o.inventoryPollMs }),
          ...(dataPlane === undefined
            ? {}
            : { diskObserver: (m: string, d: string) => dataPlane.observerFor(m, d) }),
          ...(lifecycle === undefined ? {} : { exposureBackend: (ref) => lifecycle.backendFor(ref) }),
          log,
        });
        local.watch();
        fabric = local;
      }
      replication ??= dataPlane!.bindFabric(fabric);
      lifecycle?.bindFabric(fabric);
      await replication.resume();
      if (credential === undefined && key !== undefined) {
        const signal = o.signal ?? new AbortController().signal;
        const registered = await registerWithRetry(o, log, client, key, tls, dataAddress, server, signal);
        credential = registered.credential;
        tls = registered.tls;
        dataPlane?.setIdentity(tls);
      }
      if (credential === undefined) throw new OsrError('INTERNAL', 'no credential after registration');
      client.credential = credential.credential;
      const agent = new SiteAgent(
        o,
        client,
        credential,
        fabric,
        replication,
        commandLog,
        tls,
        dataAddress,
        dataPlane,
        lifecycle,
      );
      agent.#run();
      return agent;
    } catch (err) {
      // Machines stop before their journals close: a write must never find its journal gone.
      if (o.fabric === undefined) await fabric?.close();
      await lifecycle?.close();
      await (replication ?? dataPlane)?.close();
      await commandLog.close();
      throw err;
    }
  }

  #spawn(name: string, fn: () => Promise<void>): void {
    const p = fn().catch((err: unknown) => {
      if (this.#stop.signal.aborted) return;
      this.#log.error({ err, loop: name }, 'agent loop failed');
      this.#fatal(err instanceof Error ? err : new Error(String(err)));
    });
    this.#tasks.add(p);
    void p.finally(() => this.#tasks.delete(p));
  }

  #run(): void {
    this.#log.info({ agentId: this.agentId, session: this.session }, 'agent running');
    this.#unsubscribe = this.fabric.onChange(() => {
      this.#inventoryDirty = true;
      this.#wakeInventory?.();
    });
    this.#spawn('heartbeat', () => this.#heartbeatLoop());
    this.#spawn('inventory', () => this.#inventoryLoop());
    this.#spawn('commands', () => this.#commandLoop());
    this.#spawn('certificate', () => this.#certificateLoop());
    if (this.replication.report !== undefined) this.#spawn('replication status', () => this.#statusLoop());
  }

  /** Handles a failed call: logs unreachability, re-registers on a refused credential; rethrows the rest. */
  async #onError(err: unknown, what: string): Promise<void> {
    if (err instanceof OsrError && err.code === 'CONTROL_PLANE_UNREACHABLE') {
      if (this.#reachable) {
        this.#reachable = false;
        this.#log.warn(
          { code: err.code, seedCode: err.seedCode, server: this.#client.server, err: err.message, what },
          `control plane unreachable (CONTROL_PLANE_UNREACHABLE ${err.seedCode ?? ''}); retrying with backoff`,
        );
      } else {
        this.#log.debug({ code: err.code, what }, 'control plane still unreachable');
      }
      return;
    }
    if (err instanceof ControlPlaneError && err.code === 'UNAUTHORIZED') {
      await this.#reregister();
      return;
    }
    if (err instanceof ControlPlaneError) {
      // A refused report (e.g. a body the server does not accept) must not take the site down with it:
      // machines keep running and the report is retried with backoff.
      const level = err.status >= 500 ? 'warn' : 'error';
      this.#log[level](
        { code: err.code, status: err.status, what, err: err.message, details: err.details },
        'the control plane refused a request; retrying',
      );
      return;
    }
    throw err;
  }

  #markReachable(): void {
    if (!this.#reachable) {
      this.#reachable = true;
      this.#log.info({ server: this.#client.server }, 'control plane reachable again');
    }
  }

  #reregister(): Promise<void> {
    this.#reauth ??= (async () => {
      this.#log.warn(
        { agentId: this.agentId },
        'the control plane refused the credential; registering again',
      );
      if (this.#o.keyFile === undefined) {
        throw new OsrError(
          'REGISTRATION_KEY_INVALID',
          'the credential was refused and no key file was given: register again with --key',
        );
      }
      const key = await readKeyFile(this.#o.keyFile);
      await removeCredential(this.#o.dataDir);
      const registered = await registerWithRetry(
        this.#o,
        this.#log,
        this.#client,
        key,
        this.#tls,
        this.#dataAddress,
        this.#client.server,
        this.#stop.signal,
      );
      this.#credential = registered.credential;
      this.#useIdentity(registered.tls);
      this.#client.credential = this.#credential.credential;
      this.#inventoryDirty = true;
    })().finally(() => (this.#reauth = undefined));
    return this.#reauth;
  }

  #backoff(): Backoff {
    return new Backoff(this.#o.backoffInitialMs ?? 500, this.#o.backoffMaxMs ?? 30_000);
  }

  async #heartbeatLoop(): Promise<void> {
    const signal = this.#stop.signal;
    const backoff = this.#backoff();
    let first = true;
    while (!signal.aborted) {
      try {
        await this.#client.heartbeat(
          first ? { version: this.#version(), dataAddress: this.#dataAddress } : {},
          signal,
        );
        first = false;
        backoff.reset();
        this.#markReachable();
        await sleep(this.#credential.heartbeatIntervalMs, signal);
      } catch (err) {
        if (signal.aborted) return;
        await this.#onError(err, 'heartbeat');
        await sleep(Math.min(backoff.next(), this.#credential.heartbeatIntervalMs), signal);
      }
    }
  }

  #useIdentity(tls: AgentTlsIdentity): void {
    this.#tls = tls;
    this.#dataPlane?.setIdentity(tls);
  }

  /**
   * Keeps the stream certificate issued by the control plane's CA: at start (an agent made before the control
   * plane had a CA trades its self-signed certificate in here, without registering again) and whenever it nears
   * the end of its life.
   */
  async #certificateLoop(): Promise<void> {
    const signal = this.#stop.signal;
    const backoff = this.#backoff();
    const everyMs = this.#o.certificateCheckMs ?? 60_000;
    while (!signal.aborted) {
      const reason = renewalReason(this.#tls, this.agentId, new Date());
      if (reason === null) {
        await sleep(everyMs, signal);
        continue;
      }
      try {
        const issued = await this.#client.renewCertificate(
          certificateRequest(this.#tls, this.agentId),
          signal,
        );
        this.#useIdentity(await saveIssuedIdentity(this.#o.dataDir, this.#tls, issued));
        backoff.reset();
        this.#markReachable();
        this.#log.info(
          { why: reason, expiresAt: issued.expiresAt },
          'stream certificate issued by the control plane',
        );
      } catch (err) {
        if (signal.aborted) return;
        await this.#onError(err, 'certificate');
        await sleep(backoff.next(), signal);
      }
    }
  }

  async #inventoryLoop(): Promise<void> {
    const signal = this.#stop.signal;
    const backoff = this.#backoff();
    const refreshMs = this.#o.inventoryRefreshMs ?? 5 * 60_000;
    while (!signal.aborted) {
      if (this.#inventoryDirty) {
        this.#inventoryDirty = false;
        try {
          await this.#client.inventory(await this.fabric.inventory(), signal);
          backoff.reset();
          this.#markReachable();
          this.#log.debug({}, 'inventory reported');
        } catch (err) {
          if (signal.aborted) return;
          this.#inventoryDirty = true;
          await this.#onError(err, 'inventory');
          await sleep(backoff.next(), signal);
          continue;
        }
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, refreshMs);
        const onAbort = (): void => done();
        signal.addEventListener('abort', onAbort, { once: true });
        this.#wakeInventory = done;
        function done(): void {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          resolve();
        }
      });
      this.#wakeInventory = undefined;
      // Woken by a change, or the refresh period is over: report either way.
      this.#inventoryDirty = true;
      // Let a burst of changes (several files saved at once) settle into one report.
      await sleep(50, signal);
    }
  }

  async #commandLoop(): Promise<void> {
    const signal = this.#stop.signal;
    const backoff = this.#backoff();
    const waitMs = this.#o.pollWaitMs ?? 25_000;
    while (!signal.aborted) {
      let cmds: ChannelCommand[];
      try {
        cmds = await this.#client.commands(this.session, waitMs, signal);
        backoff.reset();
        this.#markReachable();
      } catch (err) {
        if (signal.aborted) return;
        await this.#onError(err, 'commands');
        await sleep(backoff.next(), signal);
        continue;
      }
      for (const cmd of cmds) {
        this.#log.info({ commandId: cmd.id, type: cmd.type }, 'command received');
        this.#spawn(`command ${cmd.id}`, () => this.#handle(cmd));
      }
    }
  }

  /** Reports replication status and new recovery points (agent protocol §5) while anything replicates. */
  async #statusLoop(): Promise<void> {
    const signal = this.#stop.signal;
    const backoff = this.#backoff();
    const everyMs = this.#o.replicationStatusMs ?? 2000;
    while (!signal.aborted) {
      const report = this.replication.report?.();
      if (report !== undefined && report.items.length > 0) {
        try {
          const { rejected } = await this.#client.replicationStatus({ items: report.items }, signal);
          report.delivered();
          for (const r of rejected) {
            if (r.code !== 'NOT_FOUND') {
              this.#log.warn(
                { itemId: r.itemId, code: r.code, err: r.message },
                'replication status refused',
              );
              continue;
            }
            await this.replication.forget?.(r.itemId);
          }
          backoff.reset();
          this.#markReachable();
        } catch (err) {
          if (signal.aborted) return;
          if (err instanceof ControlPlaneError && err.status < 500 && err.code !== 'UNAUTHORIZED') {
            // An item the control plane no longer knows (e.g. protection disabled meanwhile) must not stop
            // the reports of the others; it is logged and reported again next time.
            this.#log.warn({ code: err.code, err: err.message }, 'replication status refused');
          } else {
            await this.#onError(err, 'replication status');
          }
          await sleep(backoff.next(), signal);
          continue;
        }
      }
      await sleep(everyMs, signal);
    }
  }

  async #handle(cmd: ChannelCommand): Promise<void> {
    const signal = this.#stop.signal;
    const outcome = await this.#executor.execute(cmd);
    this.#log.info(
      {
        commandId: cmd.id,
        type: cmd.type,
        state: outcome.state,
        ...(outcome.state === 'Failed' ? { code: outcome.error.code } : {}),
      },
      'command finished',
    );
    const backoff = this.#backoff();
    while (!signal.aborted) {
      try {
        await this.#client.result(cmd.id, outcome, signal);
        this.#markReachable();
        return;
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ControlPlaneError && err.code === 'NOT_FOUND') {
          this.#log.warn(
            { commandId: cmd.id },
            'the control plane no longer knows this command; result dropped',
          );
          return;
        }
        if (err instanceof ControlPlaneError && err.status === 400) {
          this.#log.error(
            { commandId: cmd.id, err: err.message, details: err.details },
            'the control plane refused the result; it stays in the command log',
          );
          return;
        }
        await this.#onError(err, 'result');
        await sleep(backoff.next(), signal);
      }
    }
  }

  #version(): string {
    return this.#o.version ?? '0.1.0';
  }

  /**
   * Stops the loops (an in-flight long-poll is cut), lets running commands finish,
   * shuts the site's machines down (they come back on the next start) and closes the
   * disks and logs. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#stop.abort();
      this.#wakeInventory?.();
      this.#unsubscribe?.();
      try {
        await this.#executor.drain();
        await Promise.all([...this.#tasks]);
      } finally {
        try {
          // Machines stop before their journals close: a write must never find its journal gone.
          if (this.#o.fabric === undefined) await this.fabric.close();
        } finally {
          try {
            await this.#lifecycle?.close();
            await this.replication.close();
          } finally {
            await this.#commandLog.close();
            this.#resolveDone();
          }
        }
      }
    })();
    return this.#stopping;
  }
}

async function registerWithRetry(
  o: SiteAgentOptions,
  log: AgentLogger,
  client: ControlPlaneClient,
  key: KeyFile,
  tls: AgentTlsIdentity,
  dataAddress: string,
  server: string,
  signal: AbortSignal,
): Promise<{ credential: StoredCredential; tls: AgentTlsIdentity }> {
  const backoff = new Backoff(o.backoffInitialMs ?? 500, o.backoffMaxMs ?? 30_000);
  for (;;) {
    let answer: Awaited<ReturnType<ControlPlaneClient['register']>>;
    try {
      answer = await client.register(
        key.key,
        {
          friendlyName: o.friendlyName ?? `${o.site}@${hostname()}`,
          version: o.version ?? '0.1.0',
          dataAddress,
          // The agent has no id yet: its request names its site.
          certificateRequestPem: certificateRequest(tls, o.site),
        },
        signal,
      );
    } catch (err) {
      if (err instanceof OsrError && err.code === 'CONTROL_PLANE_UNREACHABLE' && !signal.aborted) {
        const wait = backoff.next();
        log.warn(
          { code: err.code, seedCode: err.seedCode, server, err: err.message, retryInMs: wait },
          `control plane unreachable (CONTROL_PLANE_UNREACHABLE ${err.seedCode ?? ''}) while registering; retrying`,
        );
        await sleep(wait, signal);
        if (signal.aborted) throw err;
        continue;
      }
      if (err instanceof ControlPlaneError) throw err.toOsrError();
      throw err;
    }
    const { certificate, ...reg } = answer;
    if (reg.siteName !== o.site) {
      throw new OsrError(
        'VALIDATION_FAILED',
        `the key registered this agent for site '${reg.siteName}', not '${o.site}'`,
      );
    }
    const stored: StoredCredential = {
      ...reg,
      server,
      registeredAt: new Date().toISOString(),
    };
    await saveCredential(o.dataDir, stored);
    log.info({ agentId: reg.agentId, site: reg.siteName }, 'registered with the control plane');
    return {
      credential: stored,
      tls: certificate === undefined ? tls : await saveIssuedIdentity(o.dataDir, tls, certificate),
    };
  }
}

/** `host` or `host:port` as `host:port`, `port` filling in a missing one (`[v6]` for IPv6 hosts). */
export function withPort(address: string, port: number): string {
  if (/^(\[[^\]]+\]|[^:]+):\d{1,5}$/.test(address)) return address;
  const host = address.replace(/^\[|\]$/g, '');
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
