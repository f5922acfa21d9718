import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { CliError } from '../errors.js';
import { settingsBody } from './item.js';
import { parseStates } from './job.js';
import { failoverRequest } from './operations.js';
import { planGroups } from './plan.js';
import { parseAppConsistent, parseBandwidth, parseCopyFrequency, policyBody } from './policy.js';

const usage = (e: unknown): boolean => e instanceof CliError && e.code === 'USAGE' && e.exitCode === 2;

void test('copy frequencies are written as people say them', () => {
  assert.equal(parseCopyFrequency('30s'), 30);
  assert.equal(parseCopyFrequency('5m'), 300);
  assert.equal(parseCopyFrequency('15min'), 900);
  assert.equal(parseCopyFrequency('300'), 300);
  assert.throws(() => parseCopyFrequency('often'));
  assert.equal(parseAppConsistent('off'), 0);
  assert.equal(parseAppConsistent('4'), 4);
  assert.throws(() => parseAppConsistent('-1'));
  assert.equal(parseBandwidth('unlimited'), null);
  assert.equal(parseBandwidth('100'), 100);
  assert.throws(() => parseBandwidth('fast'));
});

void test('the policy body carries only the flags given', () => {
  assert.deepEqual(policyBody({}), {});
  assert.deepEqual(
    policyBody({
      copyFrequency: 300,
      retention: 24,
      appConsistent: 0,
      compression: false,
      deleteReplica: true,
      auth: 'token',
      port: 9000,
      bandwidth: 50,
      initial: 'offline',
      exportPath: '/e',
      importPath: '/i',
    }),
    {
      copyFrequencySeconds: 300,
      retentionHours: 24,
      appConsistentFrequencyHours: 0,
      compression: false,
      deleteReplicaOnDisable: true,
      authentication: 'token',
      replicationPort: 9000,
      bandwidth: { limitMbps: 50, windows: [] },
      initialReplication: { mode: 'offline', exportPath: '/e', importPath: '/i' },
    },
  );
  assert.deepEqual(policyBody({ initial: 'scheduled', startAt: '2030-01-01T00:00:00Z' }).initialReplication, {
    mode: 'scheduled',
    startAt: '2030-01-01T00:00:00Z',
  });
  assert.deepEqual(policyBody({ initial: 'now' }).initialReplication, { mode: 'now' });
  assert.throws(() => policyBody({ initial: 'scheduled' }), usage);
  assert.throws(() => policyBody({ initial: 'offline', exportPath: '/e' }), usage);
  assert.throws(() => policyBody({ startAt: '2030-01-01T00:00:00Z' }), usage);
});

void test('failover picks the route by type and refuses flags of another type', () => {
  assert.deepEqual(failoverRequest({ type: 'test', point: 'latest', network: 'isolated' }), {
    op: 'test-failover',
    body: { point: 'latest', network: 'isolated' },
  });
  assert.deepEqual(failoverRequest({ type: 'planned' }), { op: 'planned-failover', body: {} });
  assert.deepEqual(failoverRequest({ type: 'unplanned', point: 'p1', shutdownSource: true }), {
    op: 'unplanned-failover',
    body: { point: 'p1', shutdownSource: true },
  });
  assert.throws(() => failoverRequest({ type: 'planned', network: 'n' }), usage);
  assert.throws(() => failoverRequest({ type: 'test', shutdownSource: true }), usage);
});

void test('job states are validated, comma-split and de-duplicated', () => {
  assert.deepEqual(parseStates(['failed,Cancelled', 'FAILED']), ['Failed', 'Cancelled']);
  assert.deepEqual(parseStates([]), []);
  assert.throws(() => parseStates(['Running']), usage);
});

void test('plan groups split on commas and refuse an empty group', () => {
  assert.deepEqual(planGroups(['db', 'web1, web2']), [{ items: ['db'] }, { items: ['web1', 'web2'] }]);
  assert.throws(() => planGroups([' , ']), usage);
});

void test("item settings: 'auto' clears, numbers are checked", () => {
  assert.deepEqual(settingsBody({ targetName: 'web-dr', cpus: '2', ip: 'auto', network: 'prod' }), {
    targetName: 'web-dr',
    cpus: 2,
    ip: null,
    network: 'prod',
  });
  assert.deepEqual(settingsBody({ memoryMb: 'auto' }), { memoryMb: null });
  assert.throws(() => settingsBody({ cpus: '0' }), usage);
  assert.throws(() => settingsBody({ memoryMb: 'lots' }), usage);
});
