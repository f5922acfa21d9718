/**
 * Generated local sites for `osr up` and for tests: two hosts, one datastore both
 * reach, networks `prod` and `dr` with subnets and an `isolated` test network, one
 * container, and optional ledger machines (small sparse disks, autostart). A site
 * folder that already has a `site.json` is left alone, so a second `osr up` resumes.
 */
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { SiteKind } from '../../domain/model.js';
import { writeMachineConfig } from './machines.js';
import { SITE_FILE } from './site.js';

/** A ledger machine of a generated site. */
export interface DemoMachine {
  name: string;
  host: string;
  memoryMb: number;
  cpus: number;
  /** Static IP in the prod/front subnet, or null for DHCP. */
  ip: string | null;
  /** Disk size (default 64 MiB). */
  diskBytes?: number;
  /** Ledger records per second (default 5). */
  rate?: number;
}

/** Options of `writeDemoSite`. */
export interface DemoSiteOptions {
  kind: SiteKind;
  /** Second octet of the site's address plan (10.N.x.0/24), so two sites do not overlap. */
  octet: number;
  machines?: DemoMachine[];
  /** Host memory in MiB (default 8192 and 4096). */
  hostMemoryMb?: [number, number];
}

/** The demo machines `osr up` puts on the primary site. */
export const DEMO_MACHINES: DemoMachine[] = [
  { name: 'web', host: 'host1', memoryMb: 512, cpus: 1, ip: '10.1.1.11' },
  { name: 'app', host: 'host1', memoryMb: 1024, cpus: 2, ip: '10.1.1.12' },
  { name: 'db', host: 'host2', memoryMb: 2048, cpus: 2, ip: '10.1.2.13' },
];

/** The site.json of a generated site. */
export function demoSiteJson(o: DemoSiteOptions): unknown {
  const n = o.octet;
  const [m1, m2] = o.hostMemoryMb ?? [8192, 4096];
  return {
    kind: o.kind,
    hosts: [
      { name: 'host1', memoryMb: m1, cpus: 8 },
      { name: 'host2', memoryMb: m2, cpus: 4 },
    ],
    datastores: [{ name: 'datastore1', folder: 'datastores/datastore1', hosts: ['host1', 'host2'] }],
    networks: [
      {
        name: 'prod',
        subnets: [
          { name: 'front', cidr: `10.${n}.1.0/24` },
          { name: 'back', cidr: `10.${n}.2.0/24` },
        ],
      },
      {
        name: 'dr',
        subnets: [
          { name: 'front', cidr: `10.${n + 100}.1.0/24` },
          { name: 'back', cidr: `10.${n + 100}.2.0/24` },
        ],
      },
      { name: 'isolated', subnets: [{ name: 'test', cidr: `192.168.${n}.0/24` }] },
    ],
    containers: [{ name: 'default' }],
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Writes a generated site into `siteDir` unless it has a site.json; resolves whether it wrote one. */
export async function writeDemoSite(siteDir: string, o: DemoSiteOptions): Promise<boolean> {
  if (await exists(join(siteDir, SITE_FILE))) return false;
  await mkdir(join(siteDir, 'datastores', 'datastore1'), { recursive: true });
  await writeFile(join(siteDir, SITE_FILE + '.tmp'), JSON.stringify(demoSiteJson(o), null, 2) + '\n');
  for (const m of o.machines ?? []) {
    const subnet = m.ip !== null && m.ip.split('.')[2] === '2' ? 'back' : 'front';
    await writeMachineConfig(siteDir, {
      name: m.name,
      host: m.host,
      container: 'default',
      cpus: m.cpus,
      memoryMb: m.memoryMb,
      osType: 'linux',
      runtime: 'process',
      disks: [
        {
          id: 'disk0',
          datastore: 'datastore1',
          path: `${m.name}/disk0.img`,
          sizeBytes: m.diskBytes ?? 64 * 1024 * 1024,
        },
      ],
      nics: [{ network: 'prod', subnet, ip: m.ip }],
      guestTools: 'Installed',
      origin: 'inventory',
      command: ['osr', 'workload', 'ledger', '--rate', String(m.rate ?? 5)],
      httpPort: null,
      snapshots: [],
      autostart: true,
    });
  }
  // site.json last: a site folder with a site.json is complete.
  await rename(join(siteDir, SITE_FILE + '.tmp'), join(siteDir, SITE_FILE));
  return true;
}
