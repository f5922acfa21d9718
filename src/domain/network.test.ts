import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import { resolveTargetNetwork, validateNetworkMapping } from './network.js';
import type { ResolveTargetNetworkInput } from './network.js';
import type { Network, NetworkMapping } from './model.js';

const srcProd: Network = {
  id: 'n-src-prod',
  siteId: 'primary',
  name: 'prod',
  subnets: [
    { name: 'web', cidr: '10.0.1.0/24' },
    { name: 'db', cidr: '10.0.2.0/24' },
  ],
};
const srcDev: Network = {
  id: 'n-src-dev',
  siteId: 'primary',
  name: 'dev',
  subnets: [{ name: 'all', cidr: '10.9.0.0/16' }],
};
const srcLab: Network = { id: 'n-src-lab', siteId: 'primary', name: 'lab', subnets: [] };
const dstDr: Network = {
  id: 'n-dst-dr',
  siteId: 'recovery',
  name: 'dr',
  subnets: [
    { name: 'app', cidr: '172.16.0.0/24' },
    { name: 'db', cidr: '172.16.1.0/24' },
  ],
};
const dstIsolated: Network = {
  id: 'n-dst-iso',
  siteId: 'recovery',
  name: 'isolated',
  subnets: [{ name: 'test', cidr: '192.168.50.0/24' }],
};
const dstEmpty: Network = { id: 'n-dst-empty', siteId: 'recovery', name: 'empty', subnets: [] };

function mapping(
  sourceNetworkId: string,
  targetNetworkId: string,
  id = `m-${sourceNetworkId}`,
): NetworkMapping {
  return { id, vaultId: 'v', sourceNetworkId, targetNetworkId, createdAt: '2030-01-01T00:00:00Z' };
}

const mappings = [mapping(srcProd.id, dstDr.id), mapping(srcLab.id, dstEmpty.id)];
const targetNetworks = [dstDr, dstIsolated, dstEmpty];

function resolve(partial: Partial<ResolveTargetNetworkInput>) {
  return resolveTargetNetwork({
    sourceNetwork: srcProd,
    sourceSubnet: 'db',
    mappings,
    targetNetworks,
    ...partial,
  });
}

function refusedWith(fn: () => unknown, code: string, field: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof OsrError, String(err));
    assert.equal(err.code, code);
    assert.equal((err.details as { field: string }).field, field);
    return true;
  });
}

void describe('resolveTargetNetwork without override (R-NET-2, R-NET-3)', () => {
  void it('mapped network, subnet of the same name', () =>
    assert.deepEqual(resolve({}), { network: 'dr', subnet: 'db', ip: null, reason: 'mapped-same-subnet' }));
  void it('mapped network, first subnet when no subnet has that name', () =>
    assert.deepEqual(resolve({ sourceSubnet: 'web' }), {
      network: 'dr',
      subnet: 'app',
      ip: null,
      reason: 'mapped-first-subnet',
    }));
  void it('mapped network, first subnet when the source has no subnet', () =>
    assert.equal(resolve({ sourceSubnet: null }).subnet, 'app'));
  void it('mapped network without subnets', () =>
    assert.deepEqual(resolve({ sourceNetwork: srcLab, sourceSubnet: null }), {
      network: 'empty',
      subnet: null,
      ip: null,
      reason: 'mapped-no-subnet',
    }));
  void it('no mapping → no network', () =>
    assert.deepEqual(resolve({ sourceNetwork: srcDev, sourceSubnet: 'all' }), {
      network: null,
      subnet: null,
      ip: null,
      reason: 'no-mapping',
    }));
  void it('no source network → no network', () =>
    assert.deepEqual(resolve({ sourceNetwork: null, sourceSubnet: null }), {
      network: null,
      subnet: null,
      ip: null,
      reason: 'source-not-connected',
    }));
  void it('a null override is no override', () =>
    assert.equal(
      resolve({ override: { network: null, subnet: null, ip: null } }).reason,
      'mapped-same-subnet',
    ));
  void it('a mapping to a network missing from the target inventory is NOT_FOUND', () =>
    assert.throws(
      () => resolve({ targetNetworks: [dstIsolated] }),
      (err: unknown) => err instanceof OsrError && err.code === 'NOT_FOUND',
    ));
});

void describe('resolveTargetNetwork with override (R-NET-5)', () => {
  void it('network override wins over the mapping, with the same-name/first-subnet rule', () =>
    assert.deepEqual(resolve({ override: { network: 'isolated' } }), {
      network: 'isolated',
      subnet: 'test',
      ip: null,
      reason: 'override',
    }));
  void it('network override by id', () =>
    assert.equal(resolve({ override: { network: 'n-dst-iso' } }).network, 'isolated'));
  void it('network override for an unmapped source', () =>
    assert.equal(resolve({ sourceNetwork: srcDev, override: { network: 'dr', subnet: 'db' } }).subnet, 'db'));
  void it('subnet override inside the mapped network', () =>
    assert.deepEqual(resolve({ override: { subnet: 'app' } }), {
      network: 'dr',
      subnet: 'app',
      ip: null,
      reason: 'override',
    }));
  void it('IP inside the chosen subnet', () =>
    assert.deepEqual(resolve({ override: { network: 'dr', subnet: 'db', ip: '172.16.1.20' } }), {
      network: 'dr',
      subnet: 'db',
      ip: '172.16.1.20',
      reason: 'override',
    }));
  void it('IP alone uses the derived subnet', () =>
    assert.deepEqual(resolve({ override: { ip: '172.16.1.21' } }), {
      network: 'dr',
      subnet: 'db',
      ip: '172.16.1.21',
      reason: 'override',
    }));

  void it('refuses an unknown network', () =>
    refusedWith(() => resolve({ override: { network: 'nope' } }), 'VALIDATION_FAILED', 'network'));
  void it('refuses a subnet not in the network', () =>
    refusedWith(
      () => resolve({ override: { network: 'isolated', subnet: 'db' } }),
      'VALIDATION_FAILED',
      'subnet',
    ));
  void it('refuses a subnet with no network to put it in', () =>
    refusedWith(
      () => resolve({ sourceNetwork: srcDev, override: { subnet: 'db' } }),
      'VALIDATION_FAILED',
      'subnet',
    ));
  void it('refuses an IP with no network', () =>
    refusedWith(
      () => resolve({ sourceNetwork: null, override: { ip: '172.16.1.5' } }),
      'VALIDATION_FAILED',
      'ip',
    ));
  void it('refuses an IP outside the subnet', () =>
    refusedWith(() => resolve({ override: { subnet: 'app', ip: '172.16.1.5' } }), 'VALIDATION_FAILED', 'ip'));
  void it('refuses the network and broadcast addresses', () => {
    refusedWith(() => resolve({ override: { subnet: 'app', ip: '172.16.0.0' } }), 'VALIDATION_FAILED', 'ip');
    refusedWith(
      () => resolve({ override: { subnet: 'app', ip: '172.16.0.255' } }),
      'VALIDATION_FAILED',
      'ip',
    );
  });
  void it('refuses a malformed IP', () =>
    refusedWith(
      () => resolve({ override: { subnet: 'app', ip: '172.16.0.300' } }),
      'VALIDATION_FAILED',
      'ip',
    ));
  void it('refuses an IP in a network without subnets', () =>
    refusedWith(
      () => resolve({ override: { network: 'empty', ip: '10.0.0.1' } }),
      'VALIDATION_FAILED',
      'ip',
    ));
});

void describe('validateNetworkMapping (R-NET-1, R-INF-6)', () => {
  const containers = [{ siteId: 'primary' }, { siteId: 'recovery' }];

  void it('accepts networks of two sites', () =>
    assert.doesNotThrow(() =>
      validateNetworkMapping({
        sourceNetwork: srcDev,
        targetNetwork: dstDr,
        existingMappings: mappings,
        containers,
      }),
    ));
  void it('refuses a network mapped to itself', () =>
    refusedWith(
      () =>
        validateNetworkMapping({
          sourceNetwork: srcDev,
          targetNetwork: srcDev,
          existingMappings: [],
          containers: [...containers, { siteId: 'primary' }],
        }),
      'VALIDATION_FAILED',
      'targetNetworkId',
    ));
  void it('refuses two networks of a site with one container', () =>
    refusedWith(
      () =>
        validateNetworkMapping({
          sourceNetwork: srcDev,
          targetNetwork: srcLab,
          existingMappings: [],
          containers,
        }),
      'VALIDATION_FAILED',
      'targetNetworkId',
    ));
  void it('accepts two networks of a site with two containers (single-site deployment)', () =>
    assert.doesNotThrow(() =>
      validateNetworkMapping({
        sourceNetwork: srcDev,
        targetNetwork: srcLab,
        existingMappings: [],
        containers: [...containers, { siteId: 'primary' }],
      }),
    ));
  void it('refuses a source network that is already mapped', () =>
    refusedWith(
      () =>
        validateNetworkMapping({
          sourceNetwork: srcProd,
          targetNetwork: dstIsolated,
          existingMappings: mappings,
          containers,
        }),
      'ALREADY_EXISTS',
      'sourceNetworkId',
    ));
  void it('lets an existing mapping be changed (R-NET-4)', () =>
    assert.doesNotThrow(() =>
      validateNetworkMapping({
        sourceNetwork: srcProd,
        targetNetwork: dstIsolated,
        existingMappings: mappings,
        containers,
        replacingMappingId: `m-${srcProd.id}`,
      }),
    ));
});
