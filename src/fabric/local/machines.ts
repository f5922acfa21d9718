/**
 * `machines/<name>/machine.json` of a local site: a machine's host, container, size,
 * runtime, disks (image files on datastores) and NICs. Read and validated against the
 * site (hosts, datastores, networks, subnets, containers must exist); written when the
 * agent creates a machine (failover).
 */
import { mkdir, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isAssignableIn } from '../../domain/ipv4.js';
import type { GuestToolsState, MachineNic, MachineOrigin, OsType } from '../../domain/model.js';
import type { SiteConfig } from './site.js';
import {
  array,
  child,
  integer,
  invalid,
  name,
  nullableString,
  object,
  oneOf,
  readJsonFile,
  string,
  unique,
} from './validate.js';
import type { At } from './validate.js';

/** Folder of the machine folders inside a site folder. */
export const MACHINES_DIR = 'machines';
/** The machine description inside a machine folder. */
export const MACHINE_FILE = 'machine.json';

/** Runtimes a local machine can have. */
export type LocalRuntime = 'process' | 'qemu';

export interface MachineDiskConfig {
  id: string;
  datastore: string;
  /** Image path relative to the datastore folder. */
  path: string;
  sizeBytes: number;
  /**
   * The disk is an exposure of a replica (failover, test failover): the agent's lifecycle service serves it
   * (recovery-point view + writable overlay, or the committed replica); no image file at `path` is used.
   */
  exposure?: DiskExposureRef;
}

/** Which exposure a disk runs on: the item's replica, the exposure's purpose, the replica's disk. */
export interface DiskExposureRef {
  itemId: string;
  purpose: 'test' | 'failover';
  diskId: string;
}

/** A NIC of a local machine; `isolated` = on a network of the machine's own (a test failover's, R-TF-1). */
export interface LocalNic extends MachineNic {
  isolated?: boolean;
}

/** A validated `machine.json`. */
export interface MachineConfig {
  name: string;
  host: string;
  container: string | null;
  cpus: number;
  memoryMb: number;
  osType: OsType;
  runtime: LocalRuntime;
  disks: MachineDiskConfig[];
  nics: LocalNic[];
  guestTools: GuestToolsState;
  origin: MachineOrigin;
  /** argv of the process runtime; a first word `osr` runs this product's CLI. */
  command: string[] | null;
  /** Port the workload serves its status on (OSR_HTTP_PORT); null = the agent picks one. */
  httpPort: number | null;
  /** Snapshots the machine has on its host (R-RP-9 refuses reprotect while there are any). */
  snapshots: string[];
  /** Power on when the agent starts, unless an operator shut it down (like a hypervisor's autostart). */
  autostart: boolean;
}

const FIELDS = [
  'name',
  'host',
  'container',
  'cpus',
  'memoryMb',
  'osType',
  'runtime',
  'disks',
  'nics',
  'guestTools',
  'origin',
  'command',
  'httpPort',
  'snapshots',
  'autostart',
] as const;

/** Validates a parsed `machine.json` against its site; `file` is used in error messages. */
export function parseMachineConfig(raw: unknown, file: string, site: SiteConfig): MachineConfig {
  const at: At = { file, path: '' };
  const o = object(raw, at, FIELDS);
  const hostAt = child(at, 'host');
  const host = string(o['host'], hostAt);
  if (!site.hosts.some((h) => h.name === host)) {
    throw invalid(
      hostAt,
      `unknown host ${JSON.stringify(host)} (site.json has ${site.hosts.map((h) => h.name).join(', ')})`,
    );
  }
  const cAt = child(at, 'container');
  const container = nullableString(o['container'], cAt);
  if (container !== null && !site.containers.some((c) => c.name === container)) {
    throw invalid(cAt, `unknown container ${JSON.stringify(container)}`);
  }

  const dAt = child(at, 'disks');
  const disks = array(o['disks'], dAt).map((d, i) => {
    const a = child(dAt, i);
    const dO = object(d, a, ['id', 'datastore', 'path', 'sizeBytes', 'exposure']);
    const datastore = string(dO['datastore'], child(a, 'datastore'));
    if (!site.datastores.some((x) => x.name === datastore)) {
      throw invalid(child(a, 'datastore'), `unknown datastore ${JSON.stringify(datastore)}`);
    }
    const path = string(dO['path'], child(a, 'path'));
    if (path.startsWith('/') || path.split(/[\\/]/).includes('..')) {
      throw invalid(child(a, 'path'), 'must be a path inside the datastore folder (relative, without "..")');
    }
    const sizeBytes = integer(dO['sizeBytes'], child(a, 'sizeBytes'), 512);
    if (sizeBytes % 512 !== 0) throw invalid(child(a, 'sizeBytes'), 'must be a multiple of 512');
    const id = name(dO['id'], child(a, 'id'));
    if (dO['exposure'] === undefined || dO['exposure'] === null) return { id, datastore, path, sizeBytes };
    const eAt = child(a, 'exposure');
    const eO = object(dO['exposure'], eAt, ['itemId', 'purpose', 'diskId']);
    const exposure: DiskExposureRef = {
      itemId: string(eO['itemId'], child(eAt, 'itemId')),
      purpose: oneOf(eO['purpose'], child(eAt, 'purpose'), ['test', 'failover'] as const),
      diskId: string(eO['diskId'], child(eAt, 'diskId')),
    };
    return { id, datastore, path, sizeBytes, exposure };
  });
  unique(disks, (d) => d.id, dAt, 'disk id');
  unique(disks, (d) => `${d.datastore}/${d.path}`, dAt, 'disk image');

  const nAt = child(at, 'nics');
  const nics = array(o['nics'], nAt, true).map((n, i): LocalNic => {
    const a = child(nAt, i);
    const nO = object(n, a, ['network', 'subnet', 'ip', 'isolated']);
    const network = nullableString(nO['network'], child(a, 'network'));
    const subnet = nullableString(nO['subnet'], child(a, 'subnet'));
    const ip = nullableString(nO['ip'], child(a, 'ip'));
    const isolated = booleanField(nO['isolated'], child(a, 'isolated'));
    if (network === null) {
      if (subnet !== null || ip !== null)
        throw invalid(child(a, 'network'), 'a subnet or IP needs a network');
      return isolated ? { network, subnet, ip, isolated } : { network, subnet, ip };
    }
    if (isolated) throw invalid(child(a, 'isolated'), 'an isolated NIC has no network');
    const net = site.networks.find((x) => x.name === network);
    if (net === undefined) throw invalid(child(a, 'network'), `unknown network ${JSON.stringify(network)}`);
    const sub = subnet === null ? undefined : net.subnets.find((s) => s.name === subnet);
    if (subnet !== null && sub === undefined) {
      throw invalid(
        child(a, 'subnet'),
        `network ${JSON.stringify(network)} has no subnet ${JSON.stringify(subnet)}`,
      );
    }
    if (ip !== null) {
      if (sub === undefined) throw invalid(child(a, 'ip'), 'a static IP needs a subnet');
      if (!isAssignableIn(ip, sub.cidr))
        throw invalid(child(a, 'ip'), `${ip} is not an assignable address of ${sub.cidr}`);
    }
    return { network, subnet, ip };
  });

  const cmdAt = child(at, 'command');
  const command =
    o['command'] === undefined || o['command'] === null
      ? null
      : array(o['command'], cmdAt).map((w, i) => string(w, child(cmdAt, i)));
  if (command !== null && command.length === 0) throw invalid(cmdAt, 'must not be empty');
  const runtime =
    o['runtime'] === undefined
      ? 'process'
      : oneOf(o['runtime'], child(at, 'runtime'), ['process', 'qemu'] as const);
  if (runtime === 'process' && command === null) throw invalid(cmdAt, 'the process runtime needs a command');

  const snapAt = child(at, 'snapshots');
  return {
    name: name(o['name'], child(at, 'name')),
    host,
    container,
    cpus: integer(o['cpus'], child(at, 'cpus')),
    memoryMb: integer(o['memoryMb'], child(at, 'memoryMb')),
    osType:
      o['osType'] === undefined
        ? 'linux'
        : oneOf(o['osType'], child(at, 'osType'), ['linux', 'windows'] as const),
    runtime,
    disks,
    nics,
    guestTools:
      o['guestTools'] === undefined
        ? 'Installed'
        : oneOf(o['guestTools'], child(at, 'guestTools'), [
            'Installed',
            'Disabled',
            'Removed',
            'NotInstalled',
          ] as const),
    origin:
      o['origin'] === undefined
        ? 'inventory'
        : oneOf(o['origin'], child(at, 'origin'), [
            'inventory',
            'failover',
            'test-failover',
            'manual',
          ] as const),
    command,
    httpPort:
      o['httpPort'] === undefined || o['httpPort'] === null
        ? null
        : integer(o['httpPort'], child(at, 'httpPort')),
    snapshots: array(o['snapshots'], snapAt, true).map((s, i) => string(s, child(snapAt, i))),
    autostart: booleanField(o['autostart'], child(at, 'autostart')),
  };
}

function booleanField(v: unknown, at: At): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw invalid(at, 'must be true or false');
  return v;
}

/** A machine folder that could not be read, with the reason. */
export interface MachineProblem {
  folder: string;
  error: Error;
}

/**
 * Reads every `machines/<name>/machine.json` of the site. A folder whose file is
 * missing or invalid is returned as a problem, not thrown, so one bad machine does not
 * hide the others; the folder name must equal the machine's name.
 */
export async function loadMachineConfigs(
  siteDir: string,
  site: SiteConfig,
): Promise<{ machines: MachineConfig[]; problems: MachineProblem[] }> {
  const root = join(siteDir, MACHINES_DIR);
  let entries: string[];
  try {
    entries = (await readdir(root, { withFileTypes: true }))
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { machines: [], problems: [] };
    throw err;
  }
  const machines: MachineConfig[] = [];
  const problems: MachineProblem[] = [];
  for (const folder of entries.sort()) {
    const file = join(root, folder, MACHINE_FILE);
    try {
      const m = parseMachineConfig(await readJsonFile(file), file, site);
      if (m.name !== folder) {
        throw invalid({ file, path: 'name' }, `must equal the folder name ${JSON.stringify(folder)}`);
      }
      machines.push(m);
    } catch (err) {
      problems.push({ folder, error: err instanceof Error ? err : new Error(String(err)) });
    }
  }
  const images = new Map<string, string>();
  for (const m of machines) {
    for (const d of m.disks) {
      if (d.exposure !== undefined) continue;
      const key = `${d.datastore}/${d.path}`;
      const other = images.get(key);
      if (other !== undefined) {
        problems.push({
          folder: m.name,
          error: invalid(
            { file: join(root, m.name, MACHINE_FILE), path: `disks.${d.id}.path` },
            `image ${key} is already a disk of machine ${JSON.stringify(other)}`,
          ),
        });
      }
      images.set(key, m.name);
    }
  }
  const bad = new Set(problems.map((p) => p.folder));
  return { machines: machines.filter((m) => !bad.has(m.name)), problems };
}

/** Writes `machines/<name>/machine.json` atomically (write, then rename). */
export async function writeMachineConfig(siteDir: string, m: MachineConfig): Promise<void> {
  const dir = join(siteDir, MACHINES_DIR, m.name);
  await mkdir(dir, { recursive: true });
  const file = join(dir, MACHINE_FILE);
  const body: Record<string, unknown> = {
    name: m.name,
    host: m.host,
    container: m.container,
    cpus: m.cpus,
    memoryMb: m.memoryMb,
    osType: m.osType,
    runtime: m.runtime,
    disks: m.disks,
    nics: m.nics,
    guestTools: m.guestTools,
    origin: m.origin,
  };
  if (m.command !== null) body['command'] = m.command;
  if (m.httpPort !== null) body['httpPort'] = m.httpPort;
  if (m.snapshots.length > 0) body['snapshots'] = m.snapshots;
  if (m.autostart) body['autostart'] = true;
  await writeFile(file + '.tmp', JSON.stringify(body, null, 2) + '\n');
  await rename(file + '.tmp', file);
}

/** The container a machine is in: its own setting, else a container listing it, else the first one. */
export function containerOf(site: SiteConfig, m: MachineConfig): string | null {
  if (m.container !== null) return m.container;
  const listed = site.containers.find((c) => c.machines.includes(m.name));
  return listed?.name ?? site.containers[0]?.name ?? null;
}
