/**
 * The `local` fabric driver (DESIGN §3): a site made of a folder on this machine —
 * `site.json` plus `machines/<name>/machine.json` — whose machines really run (OS
 * processes, or QEMU VMs where QEMU is installed) on disks served by the agent's NBD
 * front. The seed errors are real checks here: not enough free memory on the host
 * (8038), a machine of that name already there (78052), machine not running or not
 * responding (78093), datastore not reachable from the host (8061).
 */
import { randomUUID } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, mkdir, open, readFile, readdir, rm, stat } from 'node:fs/promises';
import * as net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ObservedBackend, WriteObserver } from '../../dataplane/nbd/observed-backend.js';
import { OsrError, notFound } from '../../domain/errors.js';
import type { GuestToolsState, PowerState } from '../../domain/model.js';
import type {
  FabricDriver,
  FabricInventory,
  FabricMachine,
  MachineCreateSpec,
  ShutdownOptions,
  SnapshotState,
} from '../driver.js';
import { MachineDiskServer, ensureImage } from './disks.js';
import {
  MACHINES_DIR,
  containerOf,
  loadMachineConfigs,
  parseMachineConfig,
  writeMachineConfig,
} from './machines.js';
import type { DiskExposureRef, LocalNic, MachineConfig } from './machines.js';
import type { BlockBackend } from '../../dataplane/nbd/backend.js';
import { adoptProcess, findProcessByToken, startProcess } from './runtime-process.js';
import type { RunningProcess } from './runtime-process.js';
import { qemuAvailable, startQemu, stopQemu } from './runtime-qemu.js';
import { SITE_FILE, datastoreFolder, isContainerSynced, loadSiteConfig } from './site.js';
import type { SiteConfig } from './site.js';
import { FabricState } from './state.js';
import type { MachineRuntimeState } from './state.js';

export * from './machines.js';
export * from './site.js';
export { MachineDiskServer, SwitchableObserver, ensureImage } from './disks.js';
export { qemuAvailable } from './runtime-qemu.js';
export * from './demo.js';

/** The log calls the driver makes (pino's signature). */
export interface FabricLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const silentLogger: FabricLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };

/** Options of `LocalFabric.open`. */
export interface LocalFabricOptions {
  /** The site folder (holds `site.json` and `machines/`). */
  siteDir: string;
  /** Where the driver keeps its state and machine logs (the agent's data folder). */
  stateDir: string;
  /** Address the NBD front listens on (default 127.0.0.1). */
  nbdHost?: string;
  /** argv that runs this product's CLI, used for a machine command starting with `osr` (default: this node + bin/osr.js). */
  osrCommand?: string[];
  /** Graceful shutdown time before SIGKILL (default 30 s). */
  shutdownTimeoutMs?: number;
  /** A machine that ends within this time after power-on did not come up (MACHINE_NOT_RUNNING; default 300 ms). */
  startGraceMs?: number;
  /** Power on machines the operator left running when the agent last ran (default true). */
  autostart?: boolean;
  /** How often `watch()` looks for changed files (default 1 s). */
  pollMs?: number;
  log?: FabricLogger;
  /**
   * The observer a disk's mutations go to from the moment it is served (the replication service's write journal
   * of a replicating item, or null). Asked every time a machine's disks are (re)opened, so capture has no gap
   * between serving a disk and the replication service attaching to it after an agent restart.
   */
  diskObserver?: (machine: string, diskId: string) => WriteObserver | null;
  /**
   * The backend of a disk that runs on a replica exposure (`exposure` in machine.json: failover and test
   * failover machines), or undefined when that exposure is not there. The fabric serves it through its NBD front
   * like an image (so its writes can be journaled at reprotect) and never closes it.
   */
  exposureBackend?: (ref: DiskExposureRef) => BlockBackend | undefined;
}

/** `createMachine` of the local fabric also takes exposure-backed disks, isolated NICs and `reuseExisting`. */
export type LocalMachineCreateSpec = Omit<MachineCreateSpec, 'disks' | 'nics'> & {
  disks: (MachineCreateSpec['disks'][number] & { exposure?: DiskExposureRef })[];
  nics: LocalNic[];
  /** The machine exists (failback): point its disks at the exposures instead of creating it. */
  reuseExisting?: boolean;
  requestId?: string;
};

/**
 * The command a process-runtime machine brought up from a replica (disks on an exposure, or created by a failover
 * or reprotect) runs when the spec names none: the ledger
 * workload, continuing the ledger on its first disk (the local fabric's stand-in for the operating system the
 * disk of a real machine would boot).
 */
export const REPLICA_MACHINE_COMMAND = ['osr', 'workload', 'ledger'];

interface Entry {
  config: MachineConfig;
  /** JSON of the config the disks are served for. */
  servedFor: string;
  disks: MachineDiskServer | undefined;
  /** Why the disks are not served (datastore folder missing, image size mismatch). */
  diskError: OsrError | undefined;
  proc: RunningProcess | undefined;
}

/** The state fields of a machine process, cleared once it ended. */
const NO_PROCESS = {
  pid: undefined,
  argv: undefined,
  startTime: undefined,
  token: undefined,
} satisfies Partial<MachineRuntimeState>;

/** The default argv for `osr`: this node and the repository's bin/osr.js. */
export function defaultOsrCommand(): string[] {
  const bin = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'bin', 'osr.js');
  return [process.execPath, bin];
}

/** The environment variable that carries a disk's NBD address, e.g. `OSR_DISK_DISK0`. */
export function diskEnvName(diskId: string): string {
  return `OSR_DISK_${diskId.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      srv.close(() =>
        typeof a === 'object' && a !== null ? resolvePort(a.port) : reject(new Error('no port')),
      );
    });
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.F_OK);
    return true;
  } catch {
    return false;
  }
}

/** Whether the process is stopped (SIGSTOP) or a zombie: alive but not responding. */
async function processUnresponsive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'T' || state === 't' || state === 'Z';
  } catch {
    return false;
  }
}

/** Copies `from` to `to` skipping all-zero 64 KiB blocks, so the copy stays sparse. */
async function sparseCopy(from: string, to: string, sizeBytes: number): Promise<void> {
  await mkdir(dirname(to), { recursive: true });
  const src = await open(from, 'r');
  const dst = await open(to, 'wx');
  try {
    const buf = Buffer.alloc(64 * 1024);
    for (let off = 0; off < sizeBytes; off += buf.length) {
      const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, sizeBytes - off), off);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      if (chunk.some((b) => b !== 0)) await dst.write(chunk, 0, bytesRead, off);
    }
    await dst.truncate(sizeBytes);
    await dst.sync();
  } finally {
    await src.close();
    await dst.close();
  }
}

/** A site folder as a fabric driver. */
export class LocalFabric implements FabricDriver {
  readonly kind = 'local';
  readonly siteDir: string;
  readonly stateDir: string;
  #site: SiteConfig;
  readonly #state: FabricState;
  readonly #entries = new Map<string, Entry>();
  readonly #listeners = new Set<() => void>();
  readonly #locks = new Map<string, Promise<void>>();
  readonly #o: Required<Omit<LocalFabricOptions, 'log' | 'diskObserver' | 'exposureBackend'>> & {
    log: FabricLogger;
    diskObserver: LocalFabricOptions['diskObserver'];
    exposureBackend: LocalFabricOptions['exposureBackend'];
  };
  #problems: string[] = [];
  #signature = '';
  #watchTimer: NodeJS.Timeout | undefined;
  #closed = false;

  private constructor(options: LocalFabricOptions, site: SiteConfig, state: FabricState) {
    this.siteDir = resolve(options.siteDir);
    this.stateDir = resolve(options.stateDir);
    this.#site = site;
    this.#state = state;
    this.#o = {
      siteDir: this.siteDir,
      stateDir: this.stateDir,
      nbdHost: options.nbdHost ?? '127.0.0.1',
      osrCommand: options.osrCommand ?? defaultOsrCommand(),
      shutdownTimeoutMs: options.shutdownTimeoutMs ?? 30_000,
      startGraceMs: options.startGraceMs ?? 300,
      autostart: options.autostart ?? true,
      pollMs: options.pollMs ?? 1000,
      log: options.log ?? silentLogger,
      diskObserver: options.diskObserver,
      exposureBackend: options.exposureBackend,
    };
  }

  /**
   * Reads the site (an invalid `site.json` is thrown; an invalid `machine.json` is
   * logged and left out), serves every machine's disks, adopts machine processes a
   * killed agent left running and, with `autostart`, powers on the machines that were
   * running when the agent last stopped.
   */
  static async open(options: LocalFabricOptions): Promise<LocalFabric> {
    const site = await loadSiteConfig(options.siteDir);
    const state = await FabricState.load(options.stateDir);
    await mkdir(join(options.stateDir, 'machines'), { recursive: true });
    const fabric = new LocalFabric(options, site, state);
    try {
      fabric.#signature = await fabric.#fileSignature();
      await fabric.#reconcile(site, await fabric.#loadMachines(site));
      await fabric.#resume();
    } catch (err) {
      await fabric.close();
      throw err;
    }
    return fabric;
  }

  /** The validated `site.json` in use. */
  get site(): SiteConfig {
    return this.#site;
  }

  /** Machine folders that could not be read at the last load, as messages. */
  get problems(): string[] {
    return [...this.#problems];
  }

  /** Process id and status port of a running machine (for tests and operators). */
  runtimeInfo(name: string): { pid: number | undefined; httpPort: number | undefined } {
    const e = this.#entries.get(name);
    return { pid: e?.proc?.alive ? e.proc.pid : undefined, httpPort: this.#state.get(name)?.httpPort };
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Looks at the site's files every `pollMs` (sizes and mtimes of site.json and each
   * machine.json) and reloads when they changed. Errors of a reload are logged; the
   * last good configuration stays in use.
   */
  watch(): void {
    if (this.#watchTimer !== undefined) return;
    let busy = false;
    this.#watchTimer = setInterval(() => {
      if (busy || this.#closed) return;
      busy = true;
      this.reloadIfChanged().then(
        () => (busy = false),
        (err: unknown) => {
          busy = false;
          this.#o.log.error({ err }, 'reloading the site folder failed');
        },
      );
    }, this.#o.pollMs);
    this.#watchTimer.unref();
  }

  /** Reloads when the files changed since the last load; resolves whether it reloaded. */
  async reloadIfChanged(): Promise<boolean> {
    const sig = await this.#fileSignature();
    if (sig === this.#signature) return false;
    this.#signature = sig;
    await this.reload();
    return true;
  }

  /** Re-reads site.json and every machine.json, serves new disks, drops removed stopped machines. */
  async reload(): Promise<void> {
    await this.#withLock('site', async () => {
      let site: SiteConfig;
      try {
        site = await loadSiteConfig(this.siteDir);
      } catch (err) {
        this.#o.log.error({ err }, 'site.json is invalid; keeping the last valid one');
        this.#problems = [String((err as Error).message)];
        this.#emit();
        return;
      }
      this.#site = site;
      await this.#reconcile(site, await this.#loadMachines(site));
    });
    this.#emit();
  }

  async #loadMachines(site: SiteConfig): Promise<MachineConfig[]> {
    const { machines, problems } = await loadMachineConfigs(this.siteDir, site);
    this.#problems = problems.map((p) => p.error.message);
    for (const p of problems)
      this.#o.log.warn({ machine: p.folder, err: p.error.message }, 'machine left out of the inventory');
    return machines;
  }

  async #fileSignature(): Promise<string> {
    const parts: string[] = [];
    const sig = async (file: string): Promise<void> => {
      try {
        const s = await stat(file);
        parts.push(`${file}:${s.size}:${s.mtimeMs}`);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        parts.push(`${file}:-`);
      }
    };
    await sig(join(this.siteDir, SITE_FILE));
    let names: string[] = [];
    try {
      names = (await readdir(join(this.siteDir, MACHINES_DIR))).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const n of names) await sig(join(this.siteDir, MACHINES_DIR, n, 'machine.json'));
    return parts.join('|');
  }

  async #reconcile(site: SiteConfig, machines: MachineConfig[]): Promise<void> {
    const seen = new Set<string>();
    for (const m of machines) {
      seen.add(m.name);
      const json = JSON.stringify(m);
      const e = this.#entries.get(m.name);
      if (e === undefined) {
        const entry: Entry = {
          config: m,
          servedFor: '',
          disks: undefined,
          diskError: undefined,
          proc: undefined,
        };
        this.#entries.set(m.name, entry);
        await this.#serveDisks(site, entry);
        continue;
      }
      const running = e.proc?.alive === true;
      if (json !== e.servedFor && !running) {
        e.config = m;
        await this.#serveDisks(site, e);
      } else if (json !== JSON.stringify(e.config)) {
        if (running && JSON.stringify(m.disks) !== JSON.stringify(e.config.disks)) {
          this.#o.log.warn({ machine: m.name }, 'disk changes take effect when the machine is stopped');
        }
        e.config = m;
      }
    }
    for (const [name, e] of this.#entries) {
      if (seen.has(name)) continue;
      if (e.proc?.alive) {
        this.#o.log.warn(
          { machine: name },
          'machine.json is gone but the machine runs; it stays until stopped',
        );
        continue;
      }
      await e.disks?.close();
      this.#entries.delete(name);
    }
  }

  async #serveDisks(site: SiteConfig, e: Entry): Promise<void> {
    await e.disks?.close();
    e.disks = undefined;
    e.diskError = undefined;
    e.servedFor = JSON.stringify(e.config);
    const m = e.config;
    try {
      const images = [];
      for (const d of m.disks) {
        if (d.exposure !== undefined) {
          const backend = this.#o.exposureBackend?.(d.exposure);
          if (backend === undefined) {
            throw new OsrError(
              'NOT_FOUND',
              `disk '${d.id}' of '${m.name}' runs on the ${d.exposure.purpose} exposure of item '${d.exposure.itemId}', which is not there`,
              { details: { machine: m.name, disk: d.id, exposure: d.exposure } },
            );
          }
          images.push({ id: d.id, file: '', sizeBytes: d.sizeBytes, backend });
          continue;
        }
        const ds = site.datastores.find((x) => x.name === d.datastore);
        if (ds === undefined) throw notFound('datastore', d.datastore);
        const folder = datastoreFolder(this.siteDir, ds);
        if (!(await exists(folder))) {
          throw new OsrError(
            'DATASTORE_NOT_ACCESSIBLE',
            `datastore '${ds.name}' (${folder}) is not accessible`,
            {
              details: { datastore: ds.name, folder, machine: m.name, disk: d.id },
            },
          );
        }
        const file = join(folder, d.path);
        if ((await ensureImage(file, d.sizeBytes)) === 'created') {
          this.#o.log.info({ machine: m.name, disk: d.id, file }, 'created an empty sparse disk image');
        }
        images.push({ id: d.id, file, sizeBytes: d.sizeBytes });
      }
      const st = this.#state.get(m.name);
      e.disks = await MachineDiskServer.open(m.name, images, this.#o.nbdHost, st?.nbdPort);
      for (const d of e.disks?.disks ?? []) d.observer.set(this.#o.diskObserver?.(m.name, d.id) ?? null);
      if (e.disks !== undefined && st?.nbdPort !== e.disks.port) {
        await this.#state.update(m.name, { nbdPort: e.disks.port });
      }
    } catch (err) {
      e.diskError =
        err instanceof OsrError
          ? err
          : new OsrError(
              'DATASTORE_NOT_ACCESSIBLE',
              `the disks of '${m.name}' cannot be served: ${(err as Error).message}`,
              {
                details: { machine: m.name },
                cause: err,
              },
            );
      this.#o.log.warn({ machine: m.name, err: e.diskError.message }, 'disks not served');
    }
  }

  /**
   * Adopts the machine processes a previous agent left running (recognised by pid, start time and start
   * token, never by pid alone) and powers on the machines that should run and do not.
   */
  async #resume(): Promise<void> {
    for (const [name, e] of this.#entries) {
      const st = this.#state.get(name);
      if (st?.pid !== undefined || st?.token !== undefined) {
        const proc = this.#adopt(st);
        if (proc !== undefined) {
          this.#attach(name, e, proc);
          // Found by its token alone: the previous agent died before it recorded the pid.
          if (st.pid === undefined) await this.#state.update(name, proc.identity);
          this.#o.log.info({ machine: name, pid: proc.pid }, 'adopted the running machine');
          continue;
        }
        await this.#state.update(name, NO_PROCESS);
      }
      const wanted = st?.desired === 'Running' || (e.config.autostart && st?.desired !== 'Stopped');
      if (this.#o.autostart && wanted) {
        try {
          await this.powerOn(name);
          this.#o.log.info({ machine: name }, 'powered on again (it was running when the agent stopped)');
        } catch (err) {
          this.#o.log.error({ machine: name, err }, 'could not power the machine on again');
        }
      }
    }
  }

  /** The recorded machine process when it still runs: by its pid, or (pid never recorded) by its start token. */
  #adopt(st: MachineRuntimeState): RunningProcess | undefined {
    if (st.pid !== undefined) {
      return adoptProcess({
        pid: st.pid,
        argv: st.argv ?? [],
        ...(st.startTime === undefined ? {} : { startTime: st.startTime }),
        ...(st.token === undefined ? {} : { token: st.token }),
      });
    }
    const found = st.token === undefined ? undefined : findProcessByToken(st.token);
    return found === undefined ? undefined : adoptProcess(found);
  }

  #attach(name: string, e: Entry, proc: RunningProcess): void {
    e.proc = proc;
    void proc.exited
      .then(async ({ code, signal }) => {
        if (e.proc !== proc) return;
        e.proc = undefined;
        if (!this.#closed) {
          this.#o.log.info({ machine: name, code, signal }, 'machine stopped');
          await this.#state.update(name, NO_PROCESS);
        }
        this.#emit();
      })
      .catch((err: unknown) =>
        this.#o.log.error({ machine: name, err }, 'recording a stopped machine failed'),
      );
  }

  #emit(): void {
    for (const l of this.#listeners) l();
  }

  async #withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.#locks.get(key) === tail) this.#locks.delete(key);
    }
  }

  #entry(name: string): Entry {
    const e = this.#entries.get(name);
    if (e === undefined) throw notFound('machine', name);
    return e;
  }

  #powerState(e: Entry): PowerState {
    return e.proc?.alive ? 'Running' : 'Stopped';
  }

  #view(e: Entry): FabricMachine {
    const m = e.config;
    return {
      name: m.name,
      hostName: m.host,
      cpus: m.cpus,
      memoryMb: m.memoryMb,
      osType: m.osType,
      hypervisor: m.runtime,
      powerState: this.#powerState(e),
      guestTools: m.guestTools,
      origin: m.origin,
      disks: m.disks.map((d) => ({
        id: d.id,
        sizeBytes: d.sizeBytes,
        datastore: d.datastore,
        path: d.path,
        nbdUri: e.disks?.uri(d.id) ?? null,
      })),
      nics: m.nics.map((n) => ({ ...n })),
      container: containerOf(this.#site, m),
    };
  }

  #freeMemoryMb(host: string): number {
    const h = this.#site.hosts.find((x) => x.name === host);
    if (h === undefined) return 0;
    let used = 0;
    for (const e of this.#entries.values()) {
      if (e.config.host === host && e.proc?.alive) used += e.config.memoryMb;
    }
    return h.memoryMb - used;
  }

  async inventory(): Promise<FabricInventory> {
    const site = this.#site;
    const synced = (c: string | null): boolean => c === null || isContainerSynced(site, c);
    return {
      hosts: site.hosts.map((h) => ({
        name: h.name,
        memoryMb: h.memoryMb,
        freeMemoryMb: this.#freeMemoryMb(h.name),
        cpus: h.cpus,
      })),
      datastores: site.datastores.map((d) => ({ name: d.name, hostNames: [...d.hosts], type: d.type })),
      networks: site.networks.map((n) => ({ name: n.name, subnets: n.subnets.map((s) => ({ ...s })) })),
      containers: site.containers.filter((c) => synced(c.name)).map((c) => ({ name: c.name })),
      machines: (await this.listMachines()).filter((m) => synced(m.container)),
    };
  }

  listMachines(): Promise<FabricMachine[]> {
    return Promise.resolve(
      [...this.#entries.values()].map((e) => this.#view(e)).sort((a, b) => a.name.localeCompare(b.name)),
    );
  }

  findMachine(name: string): Promise<FabricMachine | undefined> {
    const e = this.#entries.get(name);
    return Promise.resolve(e === undefined ? undefined : this.#view(e));
  }

  /** DATASTORE_NOT_ACCESSIBLE unless every disk's datastore lists the host and its folder exists. */
  async #checkDatastores(m: MachineConfig, host: string): Promise<void> {
    for (const d of m.disks) {
      const ds = this.#site.datastores.find((x) => x.name === d.datastore);
      if (ds === undefined) throw notFound('datastore', d.datastore);
      if (!ds.hosts.includes(host)) {
        throw new OsrError(
          'DATASTORE_NOT_ACCESSIBLE',
          `datastore '${ds.name}' is not accessible from host '${host}'`,
          {
            details: { datastore: ds.name, host, reachableFrom: ds.hosts, machine: m.name, disk: d.id },
          },
        );
      }
      const folder = datastoreFolder(this.siteDir, ds);
      if (!(await exists(folder))) {
        throw new OsrError(
          'DATASTORE_NOT_ACCESSIBLE',
          `datastore '${ds.name}' (${folder}) is not accessible`,
          {
            details: { datastore: ds.name, folder, host, machine: m.name, disk: d.id },
          },
        );
      }
    }
  }

  async powerOn(name: string): Promise<FabricMachine> {
    return this.#withLock(`machine:${name}`, async () => {
      const e = this.#entry(name);
      if (e.proc?.alive) return this.#view(e);
      const m = e.config;
      await this.#checkDatastores(m, m.host);
      if (e.diskError !== undefined || (m.disks.length > 0 && e.disks === undefined)) {
        await this.#serveDisks(this.#site, e);
        if (e.diskError !== undefined) throw e.diskError;
      }
      return this.#withLock(`host:${m.host}`, async () => {
        const free = this.#freeMemoryMb(m.host);
        if (free < m.memoryMb) {
          throw new OsrError(
            'TARGET_HOST_OUT_OF_MEMORY',
            `host '${m.host}' has ${free} MiB free; machine '${m.name}' needs ${m.memoryMb} MiB`,
            { details: { host: m.host, freeMemoryMb: free, requiredMemoryMb: m.memoryMb, machine: m.name } },
          );
        }
        // The token is durable before the process exists: an agent killed before it records the pid still finds it.
        const token = randomUUID();
        await this.#state.update(name, { ...NO_PROCESS, token });
        const proc = await this.#start(e, token);
        this.#attach(name, e, proc);
        await this.#state.update(name, { desired: 'Running', ...proc.identity });
        await this.#checkStarted(e, proc);
        this.#emit();
        return this.#view(e);
      });
    });
  }

  async #checkStarted(e: Entry, proc: RunningProcess): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([
      proc.exited.then((r) => r),
      new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), this.#o.startGraceMs))),
    ]);
    clearTimeout(timer);
    if (ended !== undefined) {
      await this.#state.update(e.config.name, { desired: 'Stopped' });
      const log = await readFile(this.#logFile(e.config.name), 'utf8').catch(() => '');
      throw new OsrError(
        'MACHINE_NOT_RUNNING',
        `machine '${e.config.name}' ended right after power-on (${ended.signal ?? `exit ${ended.code}`})`,
        {
          details: { machine: e.config.name, code: ended.code, signal: ended.signal, log: log.slice(-2000) },
        },
      );
    }
  }

  #logFile(name: string): string {
    return join(this.stateDir, 'machines', `${name}.log`);
  }

  #qmpSocket(name: string): string {
    return join(this.stateDir, 'machines', `${name}.qmp`);
  }

  async #start(e: Entry, token: string): Promise<RunningProcess> {
    const m = e.config;
    if (m.runtime === 'qemu') {
      if (!qemuAvailable()) {
        throw new OsrError(
          'OPERATION_UNAVAILABLE',
          `machine '${m.name}' needs QEMU (qemu-system-x86_64), which is not installed`,
          {
            details: { machine: m.name },
          },
        );
      }
      const disks = (e.disks?.disks ?? []).map((d) => ({
        id: d.id,
        host: e.disks?.host ?? '127.0.0.1',
        port: e.disks?.port ?? 0,
        exportName: d.exportName,
      }));
      await rm(this.#qmpSocket(m.name), { force: true });
      return startQemu(m, disks, this.#qmpSocket(m.name), this.#logFile(m.name), token);
    }
    const st = this.#state.get(m.name);
    const httpPort = m.httpPort ?? st?.httpPort ?? (await freePort('127.0.0.1'));
    if (st?.httpPort !== httpPort) await this.#state.update(m.name, { httpPort });
    const env: Record<string, string> = {
      OSR_MACHINE: m.name,
      OSR_HTTP_HOST: '127.0.0.1',
      OSR_HTTP_PORT: String(httpPort),
      OSR_DISKS: m.disks.map((d) => d.id).join(','),
    };
    for (const d of m.disks) {
      const uri = e.disks?.uri(d.id);
      if (uri) env[diskEnvName(d.id)] = uri;
    }
    m.nics.forEach((n, i) => {
      env[`OSR_NIC${i}_NETWORK`] = n.network ?? '';
      env[`OSR_NIC${i}_SUBNET`] = n.subnet ?? '';
      env[`OSR_NIC${i}_IP`] = n.ip ?? '';
      env[`OSR_NIC${i}_MODE`] =
        n.network === null
          ? n.isolated === true
            ? 'isolated'
            : 'disconnected'
          : n.ip === null
            ? 'dhcp'
            : 'static';
    });
    const command = m.command ?? [];
    const argv = command[0] === 'osr' ? [...this.#o.osrCommand, ...command.slice(1)] : command;
    return startProcess({
      machine: m.name,
      argv,
      env,
      logFile: this.#logFile(m.name),
      cwd: join(this.siteDir, MACHINES_DIR, m.name),
      token,
    });
  }

  async shutdown(name: string, options: ShutdownOptions = {}): Promise<FabricMachine> {
    return this.#stop(name, options.timeoutMs ?? this.#o.shutdownTimeoutMs, true);
  }

  async powerOff(name: string): Promise<FabricMachine> {
    return this.#stop(name, 0, false);
  }

  async #stop(
    name: string,
    timeoutMs: number,
    graceful: boolean,
    desired: 'Stopped' | 'Running' = 'Stopped',
  ): Promise<FabricMachine> {
    return this.#withLock(`machine:${name}`, async () => {
      const e = this.#entry(name);
      // The machine is stopped even when its state cannot be recorded (the error is raised after).
      const recorded = this.#state.update(name, { desired }).then(
        () => undefined,
        (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
      );
      const proc = e.proc;
      if (proc?.alive) {
        if (!graceful) {
          proc.signal('SIGKILL');
          await proc.exited;
        } else if (e.config.runtime === 'qemu') {
          await stopQemu(proc, this.#qmpSocket(name), timeoutMs);
        } else {
          const clean = await proc.stop(timeoutMs);
          if (!clean)
            this.#o.log.warn({ machine: name, timeoutMs }, 'machine did not shut down in time; powered off');
        }
      }
      this.#emit();
      const failed = await recorded;
      if (failed !== undefined) throw failed;
      await this.#state.update(name, NO_PROCESS);
      return this.#view(e);
    });
  }

  async ensureRunning(name: string): Promise<FabricMachine> {
    const e = this.#entry(name);
    const proc = e.proc;
    if (!proc?.alive) {
      throw new OsrError('MACHINE_NOT_RUNNING', `machine '${name}' is not running`, {
        details: { machine: name, powerState: 'Stopped' },
      });
    }
    if (await processUnresponsive(proc.pid)) {
      throw new OsrError('MACHINE_NOT_RUNNING', `machine '${name}' is not responding`, {
        details: { machine: name, pid: proc.pid, powerState: 'Running' },
      });
    }
    return this.#view(e);
  }

  async createMachine(input: MachineCreateSpec & { requestId?: string }): Promise<FabricMachine> {
    const spec = input as LocalMachineCreateSpec;
    if (spec.reuseExisting === true && this.#entries.has(spec.name)) return this.#reattach(spec);
    const created = await this.#withLock('site', async () => {
      const existing = this.#entries.get(spec.name);
      const folderExists = await exists(join(this.siteDir, MACHINES_DIR, spec.name));
      const before = this.#state.get(spec.name);
      // The same command again (redelivered after the agent died in it): what it made is its own.
      const again = spec.requestId !== undefined && before?.createdBy === spec.requestId;
      if (again && existing !== undefined) return existing;
      if (!again && (existing !== undefined || folderExists)) {
        throw new OsrError(
          'MACHINE_NAME_CONFLICT',
          `a machine named '${spec.name}' already exists on this site${existing ? ` (host '${existing.config.host}')` : ''}`,
          {
            details: { machine: spec.name, host: existing?.config.host ?? null },
          },
        );
      }
      const file = join(this.siteDir, MACHINES_DIR, spec.name, 'machine.json');
      const config = parseMachineConfig(
        {
          name: spec.name,
          host: spec.host,
          container: spec.container ?? null,
          cpus: spec.cpus,
          memoryMb: spec.memoryMb,
          osType: spec.osType,
          runtime: spec.runtime ?? 'process',
          disks: spec.disks.map((d) => ({
            id: d.id,
            datastore: d.datastore,
            path: d.path ?? `${spec.name}/${d.id}.img`,
            sizeBytes: d.sizeBytes,
            ...(d.exposure === undefined ? {} : { exposure: d.exposure }),
          })),
          nics: spec.nics,
          guestTools: spec.guestTools ?? 'Installed',
          origin: spec.origin ?? 'manual',
          ...(spec.command !== undefined
            ? { command: spec.command }
            : (spec.runtime ?? 'process') === 'process' &&
                (spec.disks.some((d) => d.exposure !== undefined) ||
                  spec.origin === 'failover' ||
                  spec.origin === 'test-failover')
              ? { command: REPLICA_MACHINE_COMMAND }
              : {}),
        },
        file,
        this.#site,
      );
      await this.#checkDatastores(config, config.host);
      const images: { image: string; source: string | undefined; sizeBytes: number }[] = [];
      for (const [i, d] of config.disks.entries()) {
        const ds = this.#site.datastores.find((x) => x.name === d.datastore);
        if (ds === undefined) throw notFound('datastore', d.datastore);
        if (d.exposure !== undefined) continue;
        const image = join(datastoreFolder(this.siteDir, ds), d.path);
        if (!again && (await exists(image))) {
          throw new OsrError('MACHINE_NAME_CONFLICT', `disk image ${image} already exists`, {
            details: { machine: spec.name, disk: d.id, image },
          });
        }
        images.push({ image, source: spec.disks[i]?.sourceFile, sizeBytes: d.sizeBytes });
      }
      // Durable before anything is made, so a redelivery after a crash from here on knows the leftovers as its own.
      if (spec.requestId !== undefined && !again)
        await this.#state.update(spec.name, { createdBy: spec.requestId });
      const removeImages = async (): Promise<void> => {
        for (const { image } of images) {
          await rm(image, { force: true });
          await rm(image + '.osrmap', { force: true });
        }
      };
      try {
        // A copy a crashed run of this command began is made again from the start.
        if (again) await removeImages();
        for (const { image, source, sizeBytes } of images) {
          if (source !== undefined) await sparseCopy(source, image, sizeBytes);
        }
        await writeMachineConfig(this.siteDir, config);
      } catch (err) {
        await removeImages();
        await this.#state.update(spec.name, { createdBy: before?.createdBy });
        throw err;
      }
      await this.#state.update(spec.name, { desired: 'Stopped' });
      const entry: Entry = { config, servedFor: '', disks: undefined, diskError: undefined, proc: undefined };
      this.#entries.set(config.name, entry);
      await this.#serveDisks(this.#site, entry);
      this.#signature = await this.#fileSignature();
      return entry;
    });
    this.#emit();
    if (spec.powerOn === true) return this.powerOn(spec.name);
    return this.#view(created);
  }

  /**
   * Failback (`reuseExisting`): the machine exists; its disks are pointed at the exposures of the spec (machine.json
   * rewritten, disks served again). The machine must be stopped.
   */
  async #reattach(spec: LocalMachineCreateSpec): Promise<FabricMachine> {
    const view = await this.#withLock('site', () =>
      this.#withLock(`machine:${spec.name}`, async () => {
        const e = this.#entry(spec.name);
        if (e.proc?.alive) {
          throw new OsrError(
            'OPERATION_NOT_ALLOWED',
            `machine '${spec.name}' is running; its disks cannot be pointed at the recovery point`,
            { details: { machine: spec.name, powerState: 'Running' } },
          );
        }
        const disks = e.config.disks.map((d) => {
          const wanted = spec.disks.find((x) => x.id === d.id);
          return wanted?.exposure === undefined ? d : { ...d, exposure: wanted.exposure };
        });
        const config: MachineConfig = { ...e.config, disks };
        await writeMachineConfig(this.siteDir, config);
        e.config = config;
        await this.#serveDisks(this.#site, e);
        this.#signature = await this.#fileSignature();
        return this.#view(e);
      }),
    );
    this.#emit();
    return view;
  }

  async deleteMachine(name: string, options: { deleteDisks?: boolean } = {}): Promise<{ deleted: boolean }> {
    const result = await this.#withLock('site', () =>
      this.#withLock(`machine:${name}`, async () => {
        const e = this.#entries.get(name);
        if (e === undefined) return { deleted: false };
        if (e.proc?.alive) {
          throw new OsrError(
            'OPERATION_NOT_ALLOWED',
            `machine '${name}' is running; shut it down or power it off first`,
            {
              details: { machine: name, powerState: 'Running' },
            },
          );
        }
        await e.disks?.close();
        if (options.deleteDisks === true) {
          for (const d of e.config.disks) {
            if (d.exposure !== undefined) continue;
            const ds = this.#site.datastores.find((x) => x.name === d.datastore);
            if (ds === undefined) continue;
            const image = join(datastoreFolder(this.siteDir, ds), d.path);
            await rm(image, { force: true });
            await rm(image + '.osrmap', { force: true });
          }
        }
        await rm(join(this.siteDir, MACHINES_DIR, name), { recursive: true, force: true });
        await this.#state.remove(name);
        this.#entries.delete(name);
        this.#signature = await this.#fileSignature();
        return { deleted: true };
      }),
    );
    this.#emit();
    return result;
  }

  snapshotState(name: string): Promise<SnapshotState> {
    const e = this.#entry(name);
    return Promise.resolve({ machine: name, snapshots: [...e.config.snapshots] });
  }

  guestToolsState(name: string): Promise<GuestToolsState> {
    return Promise.resolve(this.#entry(name).config.guestTools);
  }

  setDiskObserver(machine: string, diskId: string, observer: WriteObserver | null): void {
    const e = this.#entry(machine);
    const d = e.disks?.disk(diskId);
    if (d === undefined) {
      throw e.diskError ?? notFound('disk', `${machine}/${diskId}`);
    }
    d.observer.set(observer);
  }

  /** Names of the running machines that have a disk on the item's exposure of `purpose`. */
  runningOnExposure(itemId: string, purpose: string): string[] {
    return [...this.#entries.values()]
      .filter(
        (e) =>
          e.proc?.alive === true &&
          e.config.disks.some((d) => d.exposure?.itemId === itemId && d.exposure.purpose === purpose),
      )
      .map((e) => e.config.name);
  }

  /**
   * The served (journaled) backend of a disk: initial copy and resync read it in write order
   * (`ObservedBackend.readInOrder`). NOT_FOUND when the machine or disk is not served.
   */
  diskBackend(machine: string, diskId: string): ObservedBackend {
    const e = this.#entry(machine);
    const d = e.disks?.disk(diskId);
    if (d === undefined) throw e.diskError ?? notFound('disk', `${machine}/${diskId}`);
    return d.backend;
  }

  /**
   * Stops the machines it runs (gracefully, keeping their desired state so the next
   * start brings them back), stops serving disks and closes the images.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#watchTimer !== undefined) clearInterval(this.#watchTimer);
    const errors: unknown[] = [];
    await Promise.all(
      [...this.#entries.entries()].map(async ([name, e]) => {
        if (!e.proc?.alive) return;
        try {
          await this.#stop(name, this.#o.shutdownTimeoutMs, true, 'Running');
        } catch (err) {
          errors.push(err);
          e.proc?.signal('SIGKILL');
        }
      }),
    );
    // Every disk is closed even when something failed before, so nothing keeps the process alive.
    for (const e of this.#entries.values()) {
      try {
        await e.disks?.close();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#entries.clear();
    if (errors.length > 0) throw errors[0];
  }
}
