/**
 * `site.json` of a local site (DESIGN §3): the site's kind, hosts, datastores (folders
 * relative to the site folder, with the hosts that reach them), networks with subnets,
 * containers, and which containers the agent syncs (R-INF-5).
 */
import { join, resolve, sep } from 'node:path';
import { parseCidr } from '../../domain/ipv4.js';
import type { SiteKind } from '../../domain/model.js';
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

/** The file name of a site's description inside its folder. */
export const SITE_FILE = 'site.json';

export interface SiteHostConfig {
  name: string;
  memoryMb: number;
  cpus: number;
}

export interface SiteDatastoreConfig {
  name: string;
  /** Folder relative to the site folder. */
  folder: string;
  /** Hosts that can reach this datastore. */
  hosts: string[];
  type: string;
}

export interface SiteNetworkConfig {
  name: string;
  subnets: { name: string; cidr: string }[];
}

export interface SiteContainerConfig {
  name: string;
  /** Machines placed in this container (besides those whose machine.json names it). */
  machines: string[];
}

/** A validated `site.json`. */
export interface SiteConfig {
  /** Optional display name; the control plane's site name is what the agent registered with. */
  name: string | null;
  kind: SiteKind;
  hosts: SiteHostConfig[];
  datastores: SiteDatastoreConfig[];
  networks: SiteNetworkConfig[];
  containers: SiteContainerConfig[];
  /** Containers whose metadata the agent reports: all, or the named ones (R-INF-5). */
  sync: 'all' | string[];
}

/** Validates a parsed `site.json`; `file` is used in error messages. */
export function parseSiteConfig(raw: unknown, file: string): SiteConfig {
  const at: At = { file, path: '' };
  const o = object(raw, at, ['name', 'kind', 'hosts', 'datastores', 'networks', 'containers', 'sync']);
  const hostsAt = child(at, 'hosts');
  const hosts = array(o['hosts'], hostsAt).map((h, i) => {
    const a = child(hostsAt, i);
    const ho = object(h, a, ['name', 'memoryMb', 'cpus']);
    return {
      name: name(ho['name'], child(a, 'name')),
      memoryMb: integer(ho['memoryMb'], child(a, 'memoryMb')),
      cpus: integer(ho['cpus'], child(a, 'cpus')),
    };
  });
  if (hosts.length === 0) throw invalid(hostsAt, 'a site needs at least one host');
  unique(hosts, (h) => h.name, hostsAt, 'host');

  const dsAt = child(at, 'datastores');
  const datastores = array(o['datastores'], dsAt).map((d, i) => {
    const a = child(dsAt, i);
    const dO = object(d, a, ['name', 'folder', 'hosts', 'type']);
    const folder = string(dO['folder'], child(a, 'folder'));
    if (folder.startsWith('/') || folder.split(/[\\/]/).includes('..')) {
      throw invalid(child(a, 'folder'), 'must be a path inside the site folder (relative, without "..")');
    }
    const hAt = child(a, 'hosts');
    const dsHosts = array(dO['hosts'], hAt).map((h, j) => {
      const n = string(h, child(hAt, j));
      if (!hosts.some((x) => x.name === n)) throw invalid(child(hAt, j), `unknown host ${JSON.stringify(n)}`);
      return n;
    });
    return {
      name: name(dO['name'], child(a, 'name')),
      folder,
      hosts: dsHosts,
      type: nullableString(dO['type'], child(a, 'type')) ?? 'file',
    };
  });
  unique(datastores, (d) => d.name, dsAt, 'datastore');

  const netAt = child(at, 'networks');
  const networks = array(o['networks'], netAt, true).map((n, i) => {
    const a = child(netAt, i);
    const nO = object(n, a, ['name', 'subnets']);
    const sAt = child(a, 'subnets');
    const subnets = array(nO['subnets'], sAt, true).map((s, j) => {
      const sa = child(sAt, j);
      const so = object(s, sa, ['name', 'cidr']);
      const cidr = string(so['cidr'], child(sa, 'cidr'));
      if (parseCidr(cidr) === undefined) {
        throw invalid(child(sa, 'cidr'), 'must be an IPv4 block like 10.0.1.0/24 (host bits zero)');
      }
      return { name: name(so['name'], child(sa, 'name')), cidr };
    });
    unique(subnets, (s) => s.name, sAt, 'subnet');
    return { name: name(nO['name'], child(a, 'name')), subnets };
  });
  unique(networks, (n) => n.name, netAt, 'network');

  const cAt = child(at, 'containers');
  const containers = array(o['containers'], cAt, true).map((c, i) => {
    const a = child(cAt, i);
    const cO = object(c, a, ['name', 'machines']);
    const mAt = child(a, 'machines');
    return {
      name: name(cO['name'], child(a, 'name')),
      machines: array(cO['machines'], mAt, true).map((m, j) => name(m, child(mAt, j))),
    };
  });
  if (containers.length === 0) containers.push({ name: 'default', machines: [] });
  unique(containers, (c) => c.name, cAt, 'container');

  const syncAt = child(at, 'sync');
  let sync: 'all' | string[] = 'all';
  if (o['sync'] !== undefined && o['sync'] !== 'all') {
    sync = array(o['sync'], syncAt).map((s, j) => {
      const n = string(s, child(syncAt, j));
      if (!containers.some((c) => c.name === n)) {
        throw invalid(child(syncAt, j), `unknown container ${JSON.stringify(n)}`);
      }
      return n;
    });
  }

  return {
    name: nullableString(o['name'], child(at, 'name')),
    kind: oneOf(o['kind'], child(at, 'kind'), ['onprem', 'cloud'] as const),
    hosts,
    datastores,
    networks,
    containers,
    sync,
  };
}

/** Reads and validates `<siteDir>/site.json`. */
export async function loadSiteConfig(siteDir: string): Promise<SiteConfig> {
  const file = join(siteDir, SITE_FILE);
  return parseSiteConfig(await readJsonFile(file), file);
}

/** Absolute folder of a datastore; never outside the site folder. */
export function datastoreFolder(siteDir: string, ds: SiteDatastoreConfig): string {
  const root = resolve(siteDir);
  const folder = resolve(root, ds.folder);
  if (folder !== root && !folder.startsWith(root + sep)) {
    throw invalid(
      { file: join(siteDir, SITE_FILE), path: `datastores.${ds.name}.folder` },
      'outside the site folder',
    );
  }
  return folder;
}

/** Whether the container is synced under the site's `sync` setting. */
export function isContainerSynced(site: SiteConfig, container: string): boolean {
  return site.sync === 'all' || site.sync.includes(container);
}
