import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import type { Datastore, Host } from './model.js';
import {
  chooseDatastore,
  chooseHost,
  guestToolsAfter,
  ipAfter,
  parseTestNetwork,
  testNic,
} from './placement.js';

const host = (name: string, freeMemoryMb: number): Host => ({
  id: name,
  siteId: 's',
  name,
  memoryMb: 16384,
  freeMemoryMb,
  cpus: 4,
});
const ds = (name: string, hostNames: string[]): Datastore => ({
  id: name,
  siteId: 's',
  name,
  hostNames,
  type: 'file',
});

function code(c: string) {
  return (e: unknown) => e instanceof OsrError && e.code === c;
}

void test('chooseHost: the roomiest host that fits, else the roomiest (8038 at power-on), a named one wins', () => {
  const hosts = [host('a', 1024), host('b', 4096), host('c', 2048)];
  assert.equal(chooseHost(hosts, 512).name, 'b');
  assert.equal(chooseHost(hosts, 8192).name, 'b');
  assert.equal(chooseHost([host('x', 100), host('y', 100)], 512).name, 'x', 'ties break by name');
  assert.equal(chooseHost(hosts, 512, 'a').name, 'a');
  assert.throws(() => chooseHost(hosts, 512, 'nope'), code('NOT_FOUND'));
  assert.throws(() => chooseHost([], 512), code('VALIDATION_FAILED'));
});

void test('chooseDatastore: reachable from the host, 8061 when not, first reachable by default', () => {
  const all = [ds('d1', ['h1']), ds('d2', ['h2']), ds('d3', ['h1', 'h2'])];
  assert.equal(chooseDatastore(all, 'h2').name, 'd2');
  assert.equal(chooseDatastore(all, 'h1', 'd3').name, 'd3');
  assert.throws(
    () => chooseDatastore(all, 'h1', 'd2'),
    (e: unknown) => {
      assert.ok(e instanceof OsrError);
      assert.equal(e.code, 'DATASTORE_NOT_ACCESSIBLE');
      assert.equal(e.seedCode, 8061);
      return true;
    },
  );
  assert.throws(() => chooseDatastore(all, 'h1', 'nope'), code('NOT_FOUND'));
  assert.throws(() => chooseDatastore(all, 'h9'), code('DATASTORE_NOT_ACCESSIBLE'));
});

void test('guest tools and IP after failover and failback (R-RP-10, R-RP-11)', () => {
  assert.equal(guestToolsAfter('windows', false), 'Disabled');
  assert.equal(guestToolsAfter('linux', false), 'Removed');
  assert.equal(guestToolsAfter('linux', true), 'Installed');
  assert.equal(guestToolsAfter('windows', true), 'Installed');
  assert.equal(ipAfter('linux', '10.0.0.5', null), null, 'Linux static IP → DHCP');
  assert.equal(ipAfter('windows', '10.0.0.5', null), '10.0.0.5', 'Windows keeps its static IP');
  assert.equal(ipAfter('linux', '10.0.0.5', '10.1.0.9'), '10.1.0.9', 'a chosen IP wins');
  assert.equal(ipAfter('windows', null, null), null);
});

void test('test network choice: isolated by default, none, a named network; NICs for each (R-TF-1)', () => {
  assert.deepEqual(parseTestNetwork(undefined), { kind: 'isolated' });
  assert.deepEqual(parseTestNetwork('None'), { kind: 'none' });
  assert.deepEqual(parseTestNetwork('ISOLATED'), { kind: 'isolated' });
  assert.deepEqual(parseTestNetwork('dr-test'), { kind: 'network', name: 'dr-test' });
  assert.throws(() => parseTestNetwork('  '), code('VALIDATION_FAILED'));
  assert.deepEqual(testNic({ kind: 'none' }, null), { network: null, subnet: null, ip: null });
  assert.deepEqual(testNic({ kind: 'isolated' }, null), {
    network: null,
    subnet: null,
    ip: null,
    isolated: true,
  });
  assert.deepEqual(
    testNic(
      { kind: 'network', name: 'dr-test' },
      { network: 'dr-test', subnet: 'front', ip: '10.0.0.9', reason: 'override' },
    ),
    { network: 'dr-test', subnet: 'front', ip: null },
    'a drill never takes a static IP',
  );
});
