/**
 * Seeds a vault with what the API tests and the API benchmark need, straight through
 * the store port: two sites with inventory (hosts, datastores, networks, containers,
 * machines), a policy, and protected items.
 */
import type { Machine, Policy, ProtectedItem, Site } from '../../src/domain/model.js';
import { POLICY_DEFAULTS } from '../../src/domain/policy.js';
import type { InventorySnapshot, Store } from '../../src/store/store.js';

/** What `seedWorld` created. */
export interface World {
  vaultId: string;
  primary: Site;
  recovery: Site;
  policy: Policy;
  machines: Machine[];
}

/** An inventory snapshot of `machines` machines named `${prefix}0…`, on host `h1`. */
export function snapshot(machines: number, prefix = 'vm'): InventorySnapshot {
  return {
    hosts: [{ name: 'h1', memoryMb: 65536, freeMemoryMb: 32768, cpus: 16 }],
    datastores: [{ name: 'ds1', hostNames: ['h1'], type: 'file' }],
    networks: [
      {
        name: 'lan',
        subnets: [
          { name: 'front', cidr: '10.0.1.0/24' },
          { name: 'back', cidr: '10.0.2.0/24' },
        ],
      },
    ],
    containers: [{ name: 'default' }],
    machines: Array.from({ length: machines }, (_, i) => ({
      name: `${prefix}${i}`,
      hostName: 'h1',
      cpus: 2,
      memoryMb: 2048,
      osType: 'linux' as const,
      hypervisor: 'process' as const,
      powerState: 'Running' as const,
      guestTools: 'Installed' as const,
      origin: 'inventory' as const,
      disks: [
        { id: 'disk0', sizeBytes: 1 << 30, datastore: 'ds1', path: `${prefix}${i}/disk0.img`, nbdUri: null },
      ],
      nics: [{ network: 'lan', subnet: 'front', ip: null }],
      container: 'default',
    })),
  };
}

/** Two sites (`primary` on-premises, `recovery` cloud) with inventory, and a policy. */
export async function seedWorld(
  store: Store,
  vaultId: string,
  machines: number,
  now: string,
): Promise<World> {
  const primary = await store.sites.create({ vaultId, name: 'primary', kind: 'onprem' });
  const recovery = await store.sites.create({ vaultId, name: 'recovery', kind: 'cloud' });
  await store.inventory.replace(primary.id, snapshot(machines), now);
  await store.inventory.replace(recovery.id, snapshot(0), now);
  const policy = await store.policies.create({ vaultId, name: 'gold', ...POLICY_DEFAULTS });
  const all: Machine[] = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await store.machines.list(vaultId, { siteId: primary.id, limit: 1000, offset });
    all.push(...page.items);
    if (page.items.length < 1000) break;
  }
  return { vaultId, primary, recovery, policy, machines: all };
}

/** A protected item for `machine`, Protected, replicating primary → recovery. */
export async function seedItem(store: Store, world: World, machine: Machine): Promise<ProtectedItem> {
  const sourceContainer = (await store.containers.listBySite(world.primary.id))[0];
  const targetContainer = (await store.containers.listBySite(world.recovery.id))[0];
  if (sourceContainer === undefined || targetContainer === undefined) throw new Error('seed: no containers');
  return store.items.create({
    vaultId: world.vaultId,
    name: machine.name,
    machineId: machine.id,
    policyId: world.policy.id,
    sourceSiteId: world.primary.id,
    targetSiteId: world.recovery.id,
    sourceContainerId: sourceContainer.id,
    targetContainerId: targetContainer.id,
    primarySiteId: world.primary.id,
    protectionState: 'Protected',
    testFailoverState: 'None',
    activeLocation: 'primary',
    reversed: false,
    replicationHealth: 'Normal',
    healthReason: null,
    rpoSeconds: 42,
    initialReplicationProgress: 100,
    resyncRequired: false,
    replicationGroupId: null,
    failoverSettings: {
      targetName: null,
      cpus: null,
      memoryMb: null,
      network: null,
      subnet: null,
      ip: null,
      disks: [],
    },
    lastFailover: null,
    currentJobId: null,
  });
}
