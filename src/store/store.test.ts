/**
 * The store contract suite: every repository's behaviour, run against SQLite always and
 * against PostgreSQL when OSR_TEST_PG is set (each test on its own temp file or schema).
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../domain/errors.js';
import type { FailoverSettings, Machine, ProtectedItem } from '../domain/model.js';
import { createStore } from './index.js';
import { LeaseLostError, type InventorySnapshot, type NewJob, type Store } from './store.js';
import { openPostgresTestStore, openSqliteTestStore, testPostgresUrl, type TestStore } from './testing.js';

/** Opens a fresh, migrated, empty store. */
export type OpenStore = () => Promise<TestStore>;

const T0 = '2026-11-25T10:00:00.000Z';
function at(seconds: number): string {
  return new Date(Date.parse(T0) + seconds * 1000).toISOString();
}

async function rejectsCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof OsrError, `expected OsrError ${code}, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

async function withStore(open: OpenStore, fn: (s: Store, t: TestStore) => Promise<void>): Promise<void> {
  const t = await open();
  try {
    await fn(t.store, t);
  } finally {
    await t.cleanup();
  }
}

const snapshot: InventorySnapshot = {
  hosts: [
    { name: 'h1', memoryMb: 8192, freeMemoryMb: 4096, cpus: 8 },
    { name: 'h2', memoryMb: 4096, freeMemoryMb: 1024, cpus: 4 },
  ],
  datastores: [{ name: 'ds1', hostNames: ['h1', 'h2'], type: 'file' }],
  networks: [
    { name: 'lan', subnets: [{ name: 'a', cidr: '10.0.0.0/24' }] },
    { name: 'dmz', subnets: [] },
  ],
  containers: [{ name: 'c1' }],
  machines: [
    {
      name: 'web',
      container: 'c1',
      hostName: 'h1',
      cpus: 2,
      memoryMb: 1024,
      osType: 'linux',
      hypervisor: 'process',
      powerState: 'Running',
      guestTools: 'Installed',
      origin: 'inventory',
      disks: [{ id: 'disk0', sizeBytes: 1 << 20, datastore: 'ds1', path: 'web/disk0.img', nbdUri: null }],
      nics: [{ network: 'lan', subnet: 'a', ip: null }],
    },
    {
      name: 'db',
      container: null,
      hostName: 'h2',
      cpus: 1,
      memoryMb: 512,
      osType: 'linux',
      hypervisor: 'process',
      powerState: 'Stopped',
      guestTools: 'NotInstalled',
      origin: 'inventory',
      disks: [],
      nics: [],
    },
  ],
};

const settings: FailoverSettings = {
  targetName: null,
  cpus: null,
  memoryMb: null,
  network: null,
  subnet: null,
  ip: null,
  disks: [],
};

/** A vault with a primary and a recovery site, containers, a policy, inventory and one item. */
async function seed(s: Store) {
  const vault = await s.vaults.create({ name: 'v' });
  const primary = await s.sites.create({ vaultId: vault.id, name: 'primary', kind: 'onprem' });
  const recovery = await s.sites.create({ vaultId: vault.id, name: 'recovery', kind: 'cloud' });
  await s.inventory.replace(primary.id, snapshot, T0);
  const src = await s.containers.find(primary.id, 'c1');
  assert.ok(src);
  const dst = await s.containers.create({ vaultId: vault.id, siteId: recovery.id, name: 'c1', synced: true });
  const policy = await s.policies.create({
    vaultId: vault.id,
    name: 'p',
    copyFrequencySeconds: 300,
    retentionHours: 24,
    appConsistentFrequencyHours: 4,
    compression: true,
    deleteReplicaOnDisable: false,
    initialReplication: { mode: 'now' },
    authentication: 'certificate',
    replicationPort: 9443,
    bandwidth: { limitMbps: null, windows: [] },
  });
  const web = await s.machines.find(primary.id, 'web');
  assert.ok(web);
  const item = await s.items.create(
    newItem(vault.id, 'web', web, policy.id, primary.id, recovery.id, src.id, dst.id),
  );
  return { vault, primary, recovery, src, dst, policy, web, item };
}

function newItem(
  vaultId: string,
  name: string,
  machine: Machine,
  policyId: string,
  sourceSiteId: string,
  targetSiteId: string,
  sourceContainerId: string,
  targetContainerId: string,
): Omit<ProtectedItem, 'id' | 'createdAt' | 'updatedAt' | 'version'> {
  return {
    vaultId,
    name,
    machineId: machine.id,
    policyId,
    sourceSiteId,
    targetSiteId,
    sourceContainerId,
    targetContainerId,
    primarySiteId: sourceSiteId,
    protectionState: 'EnablingProtection',
    testFailoverState: 'None',
    activeLocation: 'primary',
    reversed: false,
    replicationHealth: 'Normal',
    healthReason: null,
    rpoSeconds: null,
    initialReplicationProgress: 0,
    resyncRequired: false,
    replicationGroupId: null,
    failoverSettings: settings,
    lastFailover: null,
    currentJobId: null,
  };
}

function newJob(vaultId: string, extra: Partial<NewJob> = {}): NewJob {
  return {
    vaultId,
    type: 'test-job',
    displayName: 'Test job',
    targetKind: 'item',
    targetId: 'item-1',
    targetName: 'web',
    input: { n: 1 },
    stepNames: ['one', 'two'],
    cancellable: true,
    ...extra,
  };
}

/** Runs the whole contract against stores from `open`. */
export function storeSuite(name: string, open: OpenStore): void {
  void describe(`store contract: ${name}`, () => {
    void it('migrating twice is a no-op', () =>
      withStore(open, async (s, t) => {
        await s.migrate();
        await s.vaults.create({ name: 'kept' });
        await s.migrate();
        const again = await createStore(t.config);
        try {
          assert.equal((await again.vaults.get('kept')).name, 'kept');
        } finally {
          await again.close();
        }
      }));

    void it('vaults: create, find by id or name, list, unique name, delete', () =>
      withStore(open, async (s) => {
        const a = await s.vaults.create({ name: 'alpha' });
        const b = await s.vaults.create({ name: 'beta', id: 'vault-b' });
        assert.equal(b.id, 'vault-b');
        assert.match(a.id, /^[0-9a-f-]{36}$/);
        assert.deepEqual(await s.vaults.get('alpha'), a);
        assert.deepEqual(await s.vaults.find(a.id), a);
        assert.equal(await s.vaults.find('nope'), undefined);
        await rejectsCode(s.vaults.get('nope'), 'NOT_FOUND');
        await rejectsCode(s.vaults.create({ name: 'alpha' }), 'ALREADY_EXISTS');
        const page = await s.vaults.list({ limit: 1 });
        assert.equal(page.total, 2);
        assert.deepEqual(
          page.items.map((v) => v.name),
          ['alpha'],
        );
        assert.deepEqual(
          (await s.vaults.list({ offset: 1 })).items.map((v) => v.name),
          ['beta'],
        );
        await s.vaults.delete(a.id);
        assert.equal(await s.vaults.find(a.id), undefined);
        await rejectsCode(s.vaults.delete(a.id), 'NOT_FOUND');
      }));

    void it('vaults: a vault with sites is in use; its jobs and events go with it', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        await s.jobs.create(newJob(v.id), T0);
        await s.events.add({
          vaultId: v.id,
          severity: 'Info',
          kind: 'k',
          targetId: null,
          message: 'm',
          time: T0,
        });
        await rejectsCode(s.vaults.delete(v.id), 'IN_USE');
        await s.sites.delete(site.id);
        await s.vaults.delete(v.id);
        assert.equal((await s.jobs.list()).total, 0);
      }));

    void it('sites: unique per vault, get by id, list, not found', () =>
      withStore(open, async (s) => {
        const v1 = await s.vaults.create({ name: 'v1' });
        const v2 = await s.vaults.create({ name: 'v2' });
        const a = await s.sites.create({ vaultId: v1.id, name: 'primary', kind: 'onprem' });
        await s.sites.create({ vaultId: v2.id, name: 'primary', kind: 'cloud' });
        await rejectsCode(
          s.sites.create({ vaultId: v1.id, name: 'primary', kind: 'cloud' }),
          'ALREADY_EXISTS',
        );
        await rejectsCode(s.sites.create({ vaultId: 'missing', name: 'x', kind: 'cloud' }), 'NOT_FOUND');
        assert.deepEqual(await s.sites.get(v1.id, 'primary'), a);
        assert.deepEqual(await s.sites.getById(a.id), a);
        assert.equal(await s.sites.find(v2.id, a.id), undefined);
        await rejectsCode(s.sites.getById('nope'), 'NOT_FOUND');
        const page = await s.sites.list(v1.id);
        assert.equal(page.total, 1);
        assert.equal(page.items[0]?.kind, 'onprem');
        await s.sites.delete(a.id);
        await rejectsCode(s.sites.get(v1.id, 'primary'), 'NOT_FOUND');
      }));

    void it('registration keys: by secret hash, by site, delete; die with their site', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        const k = await s.keys.create({
          vaultId: v.id,
          siteId: site.id,
          secretHash: 'h1',
          createdAt: T0,
          expiresAt: at(5 * 86400),
        });
        await s.keys.create({
          vaultId: v.id,
          siteId: site.id,
          secretHash: 'h2',
          createdAt: at(1),
          expiresAt: at(2),
        });
        assert.deepEqual(await s.keys.findBySecretHash('h1'), k);
        assert.equal(await s.keys.findBySecretHash('zz'), undefined);
        assert.deepEqual(
          (await s.keys.listBySite(site.id)).map((x) => x.secretHash),
          ['h1', 'h2'],
        );
        await rejectsCode(
          s.keys.create({ vaultId: v.id, siteId: site.id, secretHash: 'h1', createdAt: T0, expiresAt: T0 }),
          'ALREADY_EXISTS',
        );
        await s.keys.delete(k.id);
        await rejectsCode(s.keys.delete(k.id), 'NOT_FOUND');
        await s.sites.delete(site.id);
        assert.equal(await s.keys.findBySecretHash('h2'), undefined);
      }));

    void it('agents: create, find by credential and site (newest), update, list, delete', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        const base = {
          vaultId: v.id,
          siteId: site.id,
          friendlyName: 'agent',
          version: '0.1.0',
          dataAddress: null,
          certificatePem: null,
          lastHeartbeatAt: null,
        };
        const a1 = await s.agents.create({ ...base, credentialHash: 'c1', registeredAt: T0 });
        const a2 = await s.agents.create({ ...base, credentialHash: 'c2', registeredAt: at(10) });
        await rejectsCode(
          s.agents.create({ ...base, credentialHash: 'c1', registeredAt: T0 }),
          'ALREADY_EXISTS',
        );
        assert.deepEqual(await s.agents.findByCredentialHash('c1'), a1);
        assert.equal((await s.agents.findBySite(site.id))?.id, a2.id);
        const u = await s.agents.update(a1.id, { lastHeartbeatAt: at(20), dataAddress: '127.0.0.1:1' });
        assert.equal(u.lastHeartbeatAt, at(20));
        assert.equal(u.dataAddress, '127.0.0.1:1');
        assert.equal(u.friendlyName, 'agent');
        assert.deepEqual(await s.agents.get(a1.id), u);
        await rejectsCode(s.agents.update('nope', { version: 'x' }), 'NOT_FOUND');
        assert.equal((await s.agents.list(v.id)).total, 2);
        await s.agents.delete(a2.id);
        assert.equal(await s.agents.find(a2.id), undefined);
        await rejectsCode(s.agents.get(a2.id), 'NOT_FOUND');
      }));

    void it('containers: unique per site, find, update, list, delete', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        const c = await s.containers.create({ vaultId: v.id, siteId: site.id, name: 'gold', synced: false });
        await s.containers.create({ vaultId: v.id, siteId: site.id, name: 'silver', synced: true });
        await rejectsCode(
          s.containers.create({ vaultId: v.id, siteId: site.id, name: 'gold', synced: true }),
          'ALREADY_EXISTS',
        );
        assert.deepEqual(await s.containers.find(site.id, 'gold'), c);
        assert.deepEqual(await s.containers.getById(c.id), c);
        assert.equal(c.synced, false);
        const u = await s.containers.update(c.id, { synced: true });
        assert.equal(u.synced, true);
        await rejectsCode(s.containers.update(c.id, { name: 'silver' }), 'ALREADY_EXISTS');
        assert.deepEqual(
          (await s.containers.listBySite(site.id)).map((x) => x.name),
          ['gold', 'silver'],
        );
        assert.equal((await s.containers.list(v.id, { limit: 1 })).total, 2);
        await s.containers.delete(c.id);
        await rejectsCode(s.containers.getById(c.id), 'NOT_FOUND');
      }));

    void it('inventory: replace upserts by name, keeps ids, deletes what is gone', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        await s.inventory.replace(site.id, snapshot, T0);
        const hosts = await s.inventory.hosts(site.id);
        assert.deepEqual(
          hosts.map((h) => [h.name, h.freeMemoryMb]),
          [
            ['h1', 4096],
            ['h2', 1024],
          ],
        );
        assert.deepEqual((await s.inventory.datastores(site.id))[0]?.hostNames, ['h1', 'h2']);
        const lan = await s.inventory.findNetwork(site.id, 'lan');
        assert.deepEqual(lan?.subnets, [{ name: 'a', cidr: '10.0.0.0/24' }]);
        assert.deepEqual(await s.inventory.getNetworkById(lan.id), lan);
        const web = await s.machines.find(site.id, 'web');
        const c1 = await s.containers.find(site.id, 'c1');
        assert.equal(web?.containerId, c1?.id);
        assert.equal(web?.disks[0]?.path, 'web/disk0.img');
        assert.equal(web?.updatedAt, T0);

        const h1 = hosts[0];
        await s.inventory.replace(
          site.id,
          {
            hosts: [{ name: 'h1', memoryMb: 8192, freeMemoryMb: 100, cpus: 8 }],
            datastores: [],
            networks: [{ name: 'lan', subnets: [] }],
            containers: [],
            machines: [{ ...snapshot.machines[0]!, powerState: 'Stopped' }],
          },
          at(60),
        );
        const hosts2 = await s.inventory.hosts(site.id);
        assert.deepEqual(hosts2, [{ ...h1, freeMemoryMb: 100 }]);
        assert.deepEqual(await s.inventory.datastores(site.id), []);
        assert.deepEqual(
          (await s.inventory.networks(site.id)).map((n) => [n.id, n.subnets.length]),
          [[lan.id, 0]],
        );
        const web2 = await s.machines.find(site.id, 'web');
        assert.equal(web2?.id, web?.id);
        assert.equal(web2?.powerState, 'Stopped');
        assert.equal(web2?.updatedAt, at(60));
        assert.equal(await s.machines.find(site.id, 'db'), undefined);
        assert.equal((await s.containers.listBySite(site.id)).length, 1, 'containers are never deleted');
        await rejectsCode(s.inventory.getNetworkById('nope'), 'NOT_FOUND');
        await rejectsCode(s.inventory.replace('nope', snapshot, T0), 'NOT_FOUND');
      }));

    void it('inventory: a failed replace changes nothing', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        await s.inventory.replace(site.id, snapshot, T0);
        const bad: InventorySnapshot = {
          ...snapshot,
          hosts: [],
          machines: [{ ...snapshot.machines[0]!, container: 'no-such-container' }],
        };
        await rejectsCode(s.inventory.replace(site.id, bad, at(1)), 'NOT_FOUND');
        assert.equal((await s.inventory.hosts(site.id)).length, 2);
        assert.equal((await s.machines.list(v.id)).total, 2);
      }));

    void it('machines: upsert by name keeps the id, update, list filters, find in vault', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const p = await s.sites.create({ vaultId: v.id, name: 'p', kind: 'onprem' });
        const r = await s.sites.create({ vaultId: v.id, name: 'r', kind: 'onprem' });
        const c = await s.containers.create({ vaultId: v.id, siteId: p.id, name: 'c', synced: true });
        const { container: _c, ...shape } = snapshot.machines[0]!;
        const m = await s.machines.upsert({ ...shape, siteId: p.id, containerId: c.id, updatedAt: T0 });
        const again = await s.machines.upsert({
          ...shape,
          siteId: p.id,
          containerId: c.id,
          cpus: 4,
          updatedAt: at(1),
        });
        assert.equal(again.id, m.id);
        assert.equal((await s.machines.getById(m.id)).cpus, 4);
        const other = await s.machines.upsert({
          ...shape,
          name: 'web',
          siteId: r.id,
          containerId: null,
          updatedAt: T0,
        });
        assert.notEqual(other.id, m.id);
        const u = await s.machines.update(m.id, { powerState: 'Stopped', origin: 'failover' });
        assert.equal(u.powerState, 'Stopped');
        assert.equal(u.cpus, 4);
        assert.deepEqual(await s.machines.getById(m.id), u);
        await s.machines.upsert({ ...shape, name: 'db', siteId: p.id, containerId: null, updatedAt: T0 });
        await rejectsCode(s.machines.update(m.id, { name: 'db' }), 'ALREADY_EXISTS');
        await rejectsCode(s.machines.update('nope', { cpus: 1 }), 'NOT_FOUND');
        await s.machines.delete((await s.machines.find(p.id, 'db'))!.id);
        assert.equal((await s.machines.list(v.id)).total, 2);
        assert.equal((await s.machines.list(v.id, { siteId: r.id })).total, 1);
        assert.deepEqual(
          (await s.machines.list(v.id, { containerId: c.id })).items.map((x) => x.id),
          [m.id],
        );
        assert.equal((await s.machines.findInVault(v.id, other.id))?.siteId, r.id);
        await rejectsCode(s.machines.findInVault(v.id, 'web'), 'AMBIGUOUS_NAME');
        assert.equal((await s.machines.findInVault(v.id, 'p/web'))?.id, m.id);
        assert.equal((await s.machines.findInVault(v.id, 'r/web'))?.id, other.id);
        assert.equal(await s.machines.findInVault(v.id, 'nosuchsite/web'), undefined);
        assert.equal((await s.machines.findInVault(v.id, `r/${other.id}`))?.id, other.id);
        const v2 = await s.vaults.create({ name: 'v2' });
        assert.equal(await s.machines.findInVault(v2.id, other.id), undefined);
        await s.machines.delete(other.id);
        await rejectsCode(s.machines.getById(other.id), 'NOT_FOUND');
        await rejectsCode(s.machines.delete(other.id), 'NOT_FOUND');
      }));

    void it('policies: create, update, unique name, in use by an item', () =>
      withStore(open, async (s) => {
        const { vault, policy } = await seed(s);
        assert.deepEqual(await s.policies.get(vault.id, 'p'), policy);
        assert.equal(policy.compression, true);
        assert.deepEqual(policy.initialReplication, { mode: 'now' });
        const u = await s.policies.update(policy.id, {
          retentionHours: 48,
          initialReplication: { mode: 'scheduled', startAt: T0 },
        });
        assert.equal(u.retentionHours, 48);
        assert.equal(u.copyFrequencySeconds, 300);
        assert.deepEqual(u.initialReplication, { mode: 'scheduled', startAt: T0 });
        assert.deepEqual(await s.policies.get(vault.id, policy.id), u);
        const { id: _id, createdAt: _c, updatedAt: _u, ...rest } = policy;
        await rejectsCode(s.policies.create(rest), 'ALREADY_EXISTS');
        await s.policies.create({ ...rest, name: 'q' });
        await rejectsCode(s.policies.update(policy.id, { name: 'q' }), 'ALREADY_EXISTS');
        assert.equal((await s.policies.list(vault.id)).total, 2);
        await rejectsCode(s.policies.delete(policy.id), 'IN_USE');
        await rejectsCode(s.policies.update('nope', {}), 'NOT_FOUND');
        await rejectsCode(s.policies.get(vault.id, 'nope'), 'NOT_FOUND');
      }));

    void it('policy associations and network mappings', () =>
      withStore(open, async (s) => {
        const { vault, primary, recovery, src, dst, policy } = await seed(s);
        const a = await s.associations.create({
          vaultId: vault.id,
          policyId: policy.id,
          sourceContainerId: src.id,
          targetContainerId: dst.id,
        });
        assert.deepEqual(await s.associations.find(a.id), a);
        assert.deepEqual(await s.associations.list(vault.id, { policyId: policy.id }), [a]);
        assert.deepEqual(await s.associations.list(vault.id, { sourceContainerId: dst.id }), []);
        await rejectsCode(
          s.associations.create({
            vaultId: vault.id,
            policyId: policy.id,
            sourceContainerId: src.id,
            targetContainerId: dst.id,
          }),
          'ALREADY_EXISTS',
        );
        await s.associations.delete(a.id);
        assert.equal(await s.associations.find(a.id), undefined);

        await s.inventory.replace(recovery.id, { ...snapshot, machines: [], containers: [] }, T0);
        const lan = await s.inventory.findNetwork(primary.id, 'lan');
        const rlan = await s.inventory.findNetwork(recovery.id, 'lan');
        const rdmz = await s.inventory.findNetwork(recovery.id, 'dmz');
        assert.ok(lan && rlan && rdmz);
        const m = await s.networkMappings.create({
          vaultId: vault.id,
          sourceNetworkId: lan.id,
          targetNetworkId: rlan.id,
        });
        await rejectsCode(
          s.networkMappings.create({ vaultId: vault.id, sourceNetworkId: lan.id, targetNetworkId: rdmz.id }),
          'ALREADY_EXISTS',
        );
        assert.deepEqual(await s.networkMappings.findBySource(lan.id), m);
        const u = await s.networkMappings.update(m.id, { targetNetworkId: rdmz.id });
        assert.equal(u.targetNetworkId, rdmz.id);
        assert.deepEqual(await s.networkMappings.list(vault.id), [u]);
        await rejectsCode(s.networkMappings.update('nope', { targetNetworkId: rdmz.id }), 'NOT_FOUND');
        // A network gone from inventory takes its mappings with it.
        await s.inventory.replace(
          recovery.id,
          { ...snapshot, networks: [], machines: [], containers: [] },
          at(1),
        );
        assert.equal(await s.networkMappings.find(m.id), undefined);
      }));

    void it('items: create, find, by machine, list filters, one per machine, delete', () =>
      withStore(open, async (s) => {
        const { vault, primary, recovery, src, dst, policy, web, item } = await seed(s);
        assert.equal(item.version, 1);
        assert.deepEqual(await s.items.get(vault.id, 'web'), item);
        assert.deepEqual(await s.items.getById(item.id), item);
        assert.deepEqual(await s.items.findByMachine(web.id), item);
        await rejectsCode(
          s.items.create(newItem(vault.id, 'web2', web, policy.id, primary.id, recovery.id, src.id, dst.id)),
          'ALREADY_EXISTS',
        );
        const db = await s.machines.find(primary.id, 'db');
        assert.ok(db);
        const group = await s.groups.create({ vaultId: vault.id, name: 'g' });
        const second = await s.items.create({
          ...newItem(vault.id, 'db', db, policy.id, primary.id, recovery.id, src.id, dst.id),
          protectionState: 'Protected',
          replicationHealth: 'Critical',
          replicationGroupId: group.id,
        });
        assert.equal((await s.items.list(vault.id)).total, 2);
        assert.deepEqual(
          (await s.items.list(vault.id, { protectionState: ['Protected', 'FailedOver'] })).items.map(
            (i) => i.id,
          ),
          [second.id],
        );
        assert.equal((await s.items.list(vault.id, { replicationHealth: 'Normal' })).items[0]?.id, item.id);
        assert.equal((await s.items.list(vault.id, { replicationGroupId: group.id })).total, 1);
        assert.equal((await s.items.list(vault.id, { limit: 1, offset: 1 })).items[0]?.name, 'web');
        await s.groups.delete(group.id);
        assert.equal((await s.items.getById(second.id)).replicationGroupId, null);

        const failedOver = await s.items.update(second.id, {
          lastFailover: {
            type: 'planned',
            pointId: null,
            jobId: 'j',
            fromKind: 'onprem',
            toKind: 'cloud',
            targetMachineId: 'replica-machine',
            startedAt: T0,
          },
        });
        assert.deepEqual(await s.items.findByMachine('replica-machine'), failedOver);
        assert.equal(await s.items.findByMachine('nothing'), undefined);
        await s.items.delete(second.id);
        await rejectsCode(s.items.getById(second.id), 'NOT_FOUND');
        await rejectsCode(s.items.delete(second.id), 'NOT_FOUND');
        await rejectsCode(s.items.get(vault.id, 'db'), 'NOT_FOUND');
      }));

    void it('items: update bumps the version; a stale expectVersion is refused', () =>
      withStore(open, async (s) => {
        const { item } = await seed(s);
        const u1 = await s.items.update(item.id, {
          protectionState: 'InitialReplication',
          initialReplicationProgress: 12.5,
        });
        assert.equal(u1.version, 2);
        assert.equal(u1.initialReplicationProgress, 12.5);
        assert.equal(u1.name, 'web');
        const u2 = await s.items.update(item.id, { protectionState: 'Protected' }, { expectVersion: 2 });
        assert.equal(u2.version, 3);
        await rejectsCode(
          s.items.update(item.id, { protectionState: 'FailedOver' }, { expectVersion: 2 }),
          'OPERATION_NOT_ALLOWED',
        );
        const stored = await s.items.getById(item.id);
        assert.equal(stored.protectionState, 'Protected');
        assert.equal(stored.version, 3);
        assert.deepEqual(stored, u2);
        await rejectsCode(s.items.update('nope', {}), 'NOT_FOUND');
      }));

    void it('items: concurrent compare-and-set lets exactly one writer win', () =>
      withStore(open, async (s) => {
        const { item } = await seed(s);
        const results = await Promise.allSettled(
          Array.from({ length: 5 }, (_, i) =>
            s.items.update(item.id, { currentJobId: `job-${i}` }, { expectVersion: item.version }),
          ),
        );
        assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
        for (const r of results) {
          if (r.status === 'rejected') assert.equal((r.reason as OsrError).code, 'OPERATION_NOT_ALLOWED');
        }
        assert.equal((await s.items.getById(item.id)).version, 2);
      }));

    void it('transactions: commit, rollback, nesting and a locked read', () =>
      withStore(open, async (s) => {
        const { vault, item } = await seed(s);
        await s.transaction(async (tx) => {
          const i = await tx.items.getById(item.id, { forUpdate: true });
          await tx.items.update(i.id, { currentJobId: 'j1' }, { expectVersion: i.version });
          await tx.transaction((inner) => inner.settings.set('k', 'v'));
        });
        assert.equal((await s.items.getById(item.id)).currentJobId, 'j1');
        assert.equal(await s.settings.get('k'), 'v');
        await assert.rejects(
          s.transaction(async (tx) => {
            await tx.vaults.create({ name: 'doomed' });
            await tx.items.update(item.id, { currentJobId: 'j2' });
            throw new Error('boom');
          }),
          /boom/,
        );
        assert.equal(await s.vaults.find('doomed'), undefined);
        assert.equal((await s.items.getById(item.id)).currentJobId, 'j1');
        assert.equal((await s.vaults.get(vault.id)).name, 'v');
      }));

    void it('transactions: concurrent read-modify-write transactions do not interleave', () =>
      withStore(open, async (s) => {
        const { item } = await seed(s);
        await Promise.all(
          Array.from({ length: 10 }, (_, i) =>
            s.transaction(async (tx) => {
              const current = await tx.items.getById(item.id, { forUpdate: true });
              await tx.settings.set(`seen-${i}`, String(current.version));
              await tx.items.update(item.id, { rpoSeconds: i }, { expectVersion: current.version });
            }),
          ),
        );
        assert.equal((await s.items.getById(item.id)).version, 11);
      }));

    void it('recovery points: idempotent add, list newest first, prune, delete all except', () =>
      withStore(open, async (s) => {
        const { item } = await seed(s);
        const p1 = await s.points.add({
          itemId: item.id,
          time: at(0),
          type: 'crash-consistent',
          sequence: 10,
          groupPointId: null,
        });
        const dup = await s.points.add({
          itemId: item.id,
          time: at(0),
          type: 'crash-consistent',
          sequence: 10,
          groupPointId: null,
        });
        assert.deepEqual(dup, p1);
        const p2 = await s.points.add({
          itemId: item.id,
          time: at(300),
          type: 'app-consistent',
          sequence: 20,
          groupPointId: 'g1',
        });
        const p3 = await s.points.add({
          itemId: item.id,
          time: at(600),
          type: 'crash-consistent',
          sequence: 2 ** 40,
          groupPointId: null,
        });
        assert.equal(p3.sequence, 2 ** 40);
        assert.deepEqual(await s.points.find(p2.id), p2);
        const all = await s.points.list(item.id);
        assert.equal(all.total, 3);
        assert.deepEqual(
          all.items.map((p) => p.id),
          [p3.id, p2.id, p1.id],
        );
        assert.deepEqual(
          (await s.points.list(item.id, { type: 'app-consistent' })).items.map((p) => p.id),
          [p2.id],
        );
        assert.equal(await s.points.pruneOlderThan(item.id, at(300)), 1);
        assert.equal(await s.points.find(p1.id), undefined);
        assert.equal(await s.points.deleteAllExcept(item.id, p2.id), 1);
        assert.deepEqual(
          (await s.points.list(item.id)).items.map((p) => p.id),
          [p2.id],
        );
        assert.equal(await s.points.deleteAllExcept(item.id, null), 1);
        assert.equal((await s.points.list(item.id)).total, 0);
        await rejectsCode(
          s.points.add({
            itemId: 'nope',
            time: T0,
            type: 'crash-consistent',
            sequence: 1,
            groupPointId: null,
          }),
          'NOT_FOUND',
        );
      }));

    void it('replication groups and recovery plans', () =>
      withStore(open, async (s) => {
        const { vault, item } = await seed(s);
        const g = await s.groups.create({ vaultId: vault.id, name: 'g' });
        await rejectsCode(s.groups.create({ vaultId: vault.id, name: 'g' }), 'ALREADY_EXISTS');
        assert.deepEqual(await s.groups.find(vault.id, 'g'), g);
        assert.deepEqual(await s.groups.list(vault.id), [g]);
        await s.groups.delete(g.id);
        await rejectsCode(s.groups.delete(g.id), 'NOT_FOUND');

        const groups = [
          {
            itemIds: [item.id],
            before: [],
            after: [{ kind: 'manual' as const, name: 'check', instructions: 'look' }],
          },
        ];
        const plan = await s.plans.create({ vaultId: vault.id, name: 'plan', groups });
        assert.deepEqual(plan.groups, groups);
        assert.deepEqual(await s.plans.get(vault.id, 'plan'), plan);
        await rejectsCode(s.plans.create({ vaultId: vault.id, name: 'plan', groups: [] }), 'ALREADY_EXISTS');
        const u = await s.plans.update(plan.id, { name: 'renamed', groups: [] });
        assert.equal(u.name, 'renamed');
        assert.deepEqual(u.groups, []);
        assert.deepEqual(await s.plans.get(vault.id, plan.id), u);
        assert.equal((await s.plans.list(vault.id)).total, 1);
        await s.plans.delete(plan.id);
        await rejectsCode(s.plans.get(vault.id, 'renamed'), 'NOT_FOUND');
        await rejectsCode(s.plans.update(plan.id, { name: 'x' }), 'NOT_FOUND');
      }));

    void it('events: add and list newest first with filters', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        await s.events.add({
          vaultId: v.id,
          severity: 'Info',
          kind: 'a',
          targetId: null,
          message: '1',
          time: at(0),
        });
        const e2 = await s.events.add({
          vaultId: v.id,
          severity: 'Critical',
          kind: 'b',
          targetId: 't',
          message: '2',
          details: { rpo: 9000 },
          time: at(10),
        });
        await s.events.add({
          vaultId: v.id,
          severity: 'Info',
          kind: 'c',
          targetId: null,
          message: '3',
          time: at(20),
        });
        assert.deepEqual(
          (await s.events.list(v.id)).items.map((e) => e.message),
          ['3', '2', '1'],
        );
        assert.deepEqual((await s.events.list(v.id, { severity: 'Critical' })).items, [e2]);
        assert.equal((await s.events.list(v.id, { since: at(10) })).total, 2);
      }));

    void it('settings: get, set, overwrite', () =>
      withStore(open, async (s) => {
        assert.equal(await s.settings.get('default-vault'), undefined);
        await s.settings.set('default-vault', 'a');
        await s.settings.set('default-vault', 'b');
        assert.equal(await s.settings.get('default-vault'), 'b');
      }));

    void it('commands: enqueue is idempotent by id; take redelivers until completed; complete once', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const site = await s.sites.create({ vaultId: v.id, name: 's', kind: 'onprem' });
        const agent = await s.agents.create({
          vaultId: v.id,
          siteId: site.id,
          friendlyName: 'a',
          credentialHash: 'c',
          version: '1',
          dataAddress: null,
          certificatePem: null,
          registeredAt: T0,
          lastHeartbeatAt: null,
        });
        const c1 = await s.commands.enqueue(
          { id: 'cmd-1', agentId: agent.id, type: 'start', payload: { m: 'web' } },
          at(0),
        );
        const again = await s.commands.enqueue(
          { id: 'cmd-1', agentId: agent.id, type: 'other', payload: null },
          at(5),
        );
        assert.deepEqual(again, c1);
        assert.equal(c1.state, 'Pending');
        const c2 = await s.commands.enqueue({ agentId: agent.id, type: 'stop', payload: null }, at(1));
        await rejectsCode(
          s.commands.enqueue({ agentId: 'nope', type: 'x', payload: null }, at(1)),
          'NOT_FOUND',
        );

        const first = await s.commands.takeForAgent(agent.id, at(2));
        assert.deepEqual(
          first.map((c) => [c.id, c.state, c.deliveredAt]),
          [
            ['cmd-1', 'Delivered', at(2)],
            [c2.id, 'Delivered', at(2)],
          ],
        );
        assert.deepEqual(first[0]?.payload, { m: 'web' });
        const done = await s.commands.complete('cmd-1', 'Succeeded', { ok: true }, null, at(3));
        assert.equal(done.state, 'Succeeded');
        assert.deepEqual(done.result, { ok: true });
        const twice = await s.commands.complete('cmd-1', 'Failed', null, null, at(4));
        assert.deepEqual(twice, done);
        // After an agent restart, the delivered but not completed command comes again.
        assert.deepEqual(
          (await s.commands.takeForAgent(agent.id, at(5))).map((c) => c.id),
          [c2.id],
        );
        assert.deepEqual(
          (await s.commands.takeForAgent(agent.id, at(5), 0)).map((c) => c.id),
          [],
        );
        assert.equal((await s.commands.list(agent.id, { state: ['Succeeded'] })).total, 1);
        assert.equal((await s.commands.list(agent.id)).total, 2);
        await rejectsCode(s.commands.complete('nope', 'Succeeded', null, null, at(6)), 'NOT_FOUND');
        assert.equal(await s.commands.find('nope'), undefined);
      }));

    void it('jobs: create with steps, get, list filters newest first with total', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const v2 = await s.vaults.create({ name: 'v2' });
        const j1 = await s.jobs.create(newJob(v.id, { id: 'job-1' }), at(0));
        assert.equal(j1.id, 'job-1');
        assert.equal(j1.state, 'NotStarted');
        assert.deepEqual(
          j1.steps.map((x) => [x.index, x.name, x.state]),
          [
            [0, 'one', 'NotStarted'],
            [1, 'two', 'NotStarted'],
          ],
        );
        assert.deepEqual(j1.input, { n: 1 });
        assert.deepEqual(await s.jobs.get('job-1'), j1);
        await rejectsCode(s.jobs.create(newJob(v.id, { id: 'job-1' }), at(0)), 'ALREADY_EXISTS');
        await rejectsCode(s.jobs.create(newJob('nope'), at(0)), 'NOT_FOUND');
        await rejectsCode(s.jobs.get('nope'), 'NOT_FOUND');
        await s.jobs.create(newJob(v.id, { type: 'failover', targetId: 'item-2' }), at(10));
        await s.jobs.create(newJob(v2.id, { type: 'failover' }), at(20));
        const j4 = await s.jobs.create(newJob(v.id), at(30));
        await s.jobs.requestCancel(j4.id, at(31));

        const all = await s.jobs.list();
        assert.equal(all.total, 4);
        assert.deepEqual(
          all.items.map((j) => j.createdAt),
          [at(30), at(20), at(10), at(0)],
        );
        assert.equal((await s.jobs.list({ vaultId: v.id })).total, 3);
        assert.equal((await s.jobs.list({ type: 'failover' })).total, 2);
        assert.equal((await s.jobs.list({ targetId: 'item-2' })).total, 1);
        assert.equal((await s.jobs.list({ state: ['Cancelled'] })).items[0]?.id, j4.id);
        assert.equal((await s.jobs.list({ state: ['NotStarted', 'Cancelled'] })).total, 4);
        assert.equal((await s.jobs.list({ state: [] })).total, 0);
        const window = await s.jobs.list({ since: at(10), until: at(30) });
        assert.deepEqual(
          window.items.map((j) => j.createdAt),
          [at(20), at(10)],
        );
        const page = await s.jobs.list({ limit: 2, offset: 1 });
        assert.equal(page.total, 4);
        assert.deepEqual(
          page.items.map((j) => j.createdAt),
          [at(20), at(10)],
        );
        // Times given with another offset still compare correctly.
        assert.equal((await s.jobs.list({ since: '2026-11-25T11:00:20+01:00' })).total, 2);
      }));

    void it('jobs: claim takes the oldest runnable job, filtered by type, and sets the lease', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const a = await s.jobs.create(newJob(v.id, { type: 'a' }), at(1));
        const b = await s.jobs.create(newJob(v.id, { type: 'b' }), at(0));
        assert.equal(await s.jobs.claim('w', 1000, at(2), []), undefined);
        const first = await s.jobs.claim('w1', 30_000, at(2), ['a']);
        assert.equal(first?.id, a.id);
        assert.equal(first.state, 'InProgress');
        assert.equal(first.startedAt, at(2));
        assert.equal(first.attempts, 1);
        const second = await s.jobs.claim('w2', 30_000, at(3));
        assert.equal(second?.id, b.id);
        assert.equal(await s.jobs.claim('w3', 30_000, at(4)), undefined);
      }));

    void it('jobs: lease fencing, renew, release, expiry takeover with attempts', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const j = await s.jobs.create(newJob(v.id), at(0));
        await s.jobs.claim('w1', 10_000, at(0));
        await s.jobs.updateStep(
          j.id,
          'w1',
          0,
          { state: 'InProgress', startedAt: at(1), progress: 50 },
          at(1),
        );
        await assert.rejects(s.jobs.updateStep(j.id, 'w2', 0, { state: 'Failed' }, at(1)), LeaseLostError);
        await assert.rejects(s.jobs.renewLease(j.id, 'w2', 10_000, at(1)), LeaseLostError);
        await rejectsCode(s.jobs.renewLease('nope', 'w1', 10_000, at(1)), 'NOT_FOUND');
        await rejectsCode(s.jobs.updateStep(j.id, 'w1', 9, { state: 'Failed' }, at(1)), 'NOT_FOUND');
        await s.jobs.renewLease(j.id, 'w1', 10_000, at(8));
        assert.equal(
          await s.jobs.claim('w2', 10_000, at(12)),
          undefined,
          'renewed lease is still held at 12s',
        );
        const taken = await s.jobs.claim('w2', 10_000, at(19));
        assert.equal(taken?.id, j.id);
        assert.equal(taken.attempts, 2);
        assert.equal(taken.startedAt, at(0));
        assert.equal(taken.steps[0]?.progress, 50);
        await assert.rejects(
          s.jobs.updateStep(j.id, 'w1', 0, { state: 'Succeeded' }, at(20)),
          LeaseLostError,
        );
        await assert.rejects(s.jobs.finish(j.id, 'w1', 'Succeeded', null, at(20)), LeaseLostError);
        await s.jobs.releaseLease(j.id, 'w2');
        await assert.rejects(s.jobs.releaseLease(j.id, 'w2'), LeaseLostError);
        const resumed = await s.jobs.claim('w3', 10_000, at(21));
        assert.equal(resumed?.id, j.id);
        assert.equal(resumed.attempts, 2, 'a released job is picked up without counting an attempt');
      }));

    void it('jobs: steps, append, output, finish', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const j = await s.jobs.create(newJob(v.id), at(0));
        await s.jobs.claim('w', 10_000, at(0));
        await s.jobs.updateStep(
          j.id,
          'w',
          0,
          { state: 'Succeeded', startedAt: at(1), endedAt: at(2), output: { disk: 'd0' } },
          at(2),
        );
        await s.jobs.appendSteps(j.id, 'w', ['three'], at(2));
        const err = {
          code: 'INTERNAL',
          message: 'x',
          possibleCauses: 'c',
          recommendedAction: 'r',
          seedCode: null,
        };
        await s.jobs.updateStep(j.id, 'w', 2, { state: 'Failed', error: err }, at(3));
        await s.jobs.finish(j.id, 'w', 'Failed', err, at(4));
        const done = await s.jobs.get(j.id);
        assert.equal(done.state, 'Failed');
        assert.deepEqual(done.error, err);
        assert.equal(done.endedAt, at(4));
        assert.deepEqual(
          done.steps.map((x) => [x.index, x.name, x.state]),
          [
            [0, 'one', 'Succeeded'],
            [1, 'two', 'NotStarted'],
            [2, 'three', 'Failed'],
          ],
        );
        assert.deepEqual(done.steps[0]?.output, { disk: 'd0' });
        assert.equal(done.steps[0]?.endedAt, at(2));
        assert.deepEqual(done.steps[2]?.error, err);
        await assert.rejects(s.jobs.updateStep(j.id, 'w', 1, { state: 'Skipped' }, at(5)), LeaseLostError);
        assert.equal(await s.jobs.claim('w', 10_000, at(100)), undefined, 'ended jobs are never claimed');
      }));

    void it('jobs: park and resume with a comment; resume only when waiting', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const j = await s.jobs.create(newJob(v.id), at(0));
        await rejectsCode(s.jobs.resume(j.id, 'early', at(0)), 'JOB_NOT_WAITING');
        await s.jobs.claim('w', 10_000, at(0));
        await s.jobs.park(j.id, 'w', { name: 'check', prompt: 'Look at it' }, at(1));
        const parked = await s.jobs.get(j.id);
        assert.equal(parked.state, 'WaitingForAction');
        assert.deepEqual(parked.waiting, { name: 'check', prompt: 'Look at it', since: at(1) });
        assert.equal(await s.jobs.claim('w', 10_000, at(2)), undefined, 'a parked job is not claimable');
        await assert.rejects(s.jobs.renewLease(j.id, 'w', 10_000, at(2)), LeaseLostError);
        await s.jobs.addComment(j.id, 'looking', at(2));
        const resumed = await s.jobs.resume(j.id, 'all good', at(3));
        assert.equal(resumed.state, 'InProgress');
        assert.equal(resumed.waiting, null);
        assert.deepEqual(resumed.comments, [
          { at: at(2), text: 'looking' },
          { at: at(3), text: 'all good' },
        ]);
        assert.deepEqual(await s.jobs.get(j.id), resumed);
        const again = await s.jobs.claim('w2', 10_000, at(4));
        assert.equal(again?.id, j.id);
        assert.equal(again.attempts, 1);
        await rejectsCode(s.jobs.resume(j.id, 'again', at(5)), 'JOB_NOT_WAITING');
        await rejectsCode(s.jobs.addComment('nope', 'x', at(5)), 'NOT_FOUND');
      }));

    void it('jobs: cancel rules', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const notStarted = await s.jobs.create(newJob(v.id), at(0));
        const c = await s.jobs.requestCancel(notStarted.id, at(1));
        assert.equal(c.state, 'Cancelled');
        assert.equal(c.endedAt, at(1));
        assert.ok(c.steps.every((x) => x.state === 'Cancelled'));
        assert.deepEqual(await s.jobs.get(notStarted.id), c);
        await rejectsCode(s.jobs.requestCancel(notStarted.id, at(2)), 'JOB_NOT_CANCELLABLE');

        const running = await s.jobs.create(newJob(v.id), at(2));
        await s.jobs.claim('w', 10_000, at(2));
        const r = await s.jobs.requestCancel(running.id, at(3));
        assert.equal(r.state, 'InProgress');
        assert.equal(r.cancelRequested, true);
        await s.jobs.finish(running.id, 'w', 'Cancelled', null, at(4));
        await rejectsCode(s.jobs.requestCancel(running.id, at(5)), 'JOB_NOT_CANCELLABLE');

        const waiting = await s.jobs.create(newJob(v.id), at(6));
        await s.jobs.claim('w', 10_000, at(6));
        await s.jobs.park(waiting.id, 'w', { name: 'n', prompt: 'p' }, at(7));
        const w = await s.jobs.requestCancel(waiting.id, at(8));
        assert.equal(w.state, 'Cancelled');
        assert.equal(w.waiting, null);

        const fixed = await s.jobs.create(newJob(v.id, { cancellable: false }), at(9));
        await rejectsCode(s.jobs.requestCancel(fixed.id, at(10)), 'JOB_NOT_CANCELLABLE');
        const forced = await s.jobs.requestCancel(fixed.id, at(10), { force: true });
        assert.equal(forced.state, 'Cancelled');
        await rejectsCode(s.jobs.requestCancel('nope', at(10)), 'NOT_FOUND');
      }));

    void it('jobs: the reaper frees expired leases and counts the attempt', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const a = await s.jobs.create(newJob(v.id), at(0));
        const b = await s.jobs.create(newJob(v.id), at(1));
        await s.jobs.create(newJob(v.id), at(2));
        await s.jobs.claim('w1', 5_000, at(3));
        await s.jobs.claim('w2', 60_000, at(3));
        assert.deepEqual(await s.jobs.reapExpired(at(5)), []);
        assert.deepEqual(await s.jobs.reapExpired(at(9)), [a.id]);
        assert.deepEqual(await s.jobs.reapExpired(at(9)), []);
        const reaped = await s.jobs.get(a.id);
        assert.equal(reaped.state, 'InProgress');
        assert.equal(reaped.attempts, 2);
        await assert.rejects(s.jobs.renewLease(a.id, 'w1', 5_000, at(9)), LeaseLostError);
        const again = await s.jobs.claim('w3', 5_000, at(10));
        assert.equal(again?.id, a.id);
        assert.equal(again.attempts, 2, 'the reaper already counted this attempt');
        assert.equal((await s.jobs.get(b.id)).attempts, 1);
      }));

    void it('jobs: releaseHeldBy frees only the given owner’s running jobs at once', () =>
      withStore(open, async (s) => {
        const v = await s.vaults.create({ name: 'v' });
        const a = await s.jobs.create(newJob(v.id), at(0));
        const b = await s.jobs.create(newJob(v.id), at(1));
        await s.jobs.claim('server-1', 60_000, at(2));
        await s.jobs.claim('server-2', 60_000, at(2));
        assert.deepEqual(await s.jobs.releaseHeldBy('server-1', at(3)), [a.id]);
        assert.deepEqual(await s.jobs.releaseHeldBy('server-1', at(3)), []);
        const freed = await s.jobs.get(a.id);
        assert.equal(freed.state, 'InProgress');
        assert.equal(freed.attempts, 2);
        await assert.rejects(s.jobs.renewLease(a.id, 'server-1', 5_000, at(4)), LeaseLostError);
        const again = await s.jobs.claim('server-1', 60_000, at(4));
        assert.equal(again?.id, a.id, 'claimable before its old lease would have expired');
        await s.jobs.renewLease(b.id, 'server-2', 5_000, at(4));
      }));

    void it('jobs: concurrent claimers on separate stores each take every job exactly once', () =>
      withStore(open, async (s, t) => {
        const v = await s.vaults.create({ name: 'v' });
        await s.transaction(async (tx) => {
          for (let i = 0; i < 200; i++) await tx.jobs.create(newJob(v.id), at(i));
        });
        const stores = await Promise.all(
          Array.from({ length: 4 }, () => createStore(t.config, { migrate: false })),
        );
        try {
          // Rounds in which all four claim at the same moment: every round races them for real,
          // and each of the four must come back with a different job until the jobs run out.
          const claimed: string[] = [];
          for (let round = 0; round < 50; round++) {
            const got = await Promise.all(
              stores.map((store, w) => store.jobs.claim(`worker-${w}`, 60_000, at(1000))),
            );
            assert.ok(
              got.every((j) => j !== undefined),
              `round ${round}: every claimer got a job`,
            );
            const ids = got.map((j) => j?.id ?? '');
            assert.equal(new Set(ids).size, 4, `round ${round}: four different jobs`);
            claimed.push(...ids);
          }
          const none = await Promise.all(stores.map((store) => store.jobs.claim('late', 60_000, at(1000))));
          assert.ok(
            none.every((j) => j === undefined),
            'nothing left to claim',
          );
          assert.equal(claimed.length, 200);
          assert.equal(new Set(claimed).size, 200);
          const page = await s.jobs.list({ state: ['InProgress'], limit: 1000 });
          assert.equal(page.total, 200);
          assert.ok(page.items.every((j) => j.attempts === 1));
        } finally {
          await Promise.all(stores.map((x) => x.close()));
        }
      }));
  });
}

storeSuite('sqlite', openSqliteTestStore);

const pgUrl = testPostgresUrl();
if (pgUrl !== undefined) storeSuite('postgres', () => openPostgresTestStore({}, pgUrl));
