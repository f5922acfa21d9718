import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../../domain/errors.js';
import { parseMachineConfig } from './machines.js';
import { demoSiteJson } from './demo.js';
import { parseSiteConfig } from './site.js';
import type { SiteConfig } from './site.js';

function site(): SiteConfig {
  return parseSiteConfig(demoSiteJson({ kind: 'onprem', octet: 1 }), '/s/site.json');
}

function refusal(fn: () => unknown): { message: string; details: { file: string; field: string } } {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof OsrError);
    assert.equal(err.code, 'VALIDATION_FAILED');
    return { message: err.message, details: err.details as { file: string; field: string } };
  }
  assert.fail('expected a VALIDATION_FAILED');
}

void test('a generated site.json is valid and gets defaults (container default, sync all, type file)', () => {
  const s = site();
  assert.equal(s.kind, 'onprem');
  assert.deepEqual(
    s.hosts.map((h) => h.name),
    ['host1', 'host2'],
  );
  assert.equal(s.datastores[0]?.type, 'file');
  assert.deepEqual(s.containers, [{ name: 'default', machines: [] }]);
  assert.equal(s.sync, 'all');
  assert.deepEqual(
    parseSiteConfig({ kind: 'cloud', hosts: [{ name: 'h', memoryMb: 1, cpus: 1 }], datastores: [] }, 'f')
      .containers,
    [{ name: 'default', machines: [] }],
  );
});

void test('site.json errors name the file and the field', () => {
  const base = demoSiteJson({ kind: 'onprem', octet: 1 }) as Record<string, unknown>;
  const cases: [unknown, string, RegExp][] = [
    [{ ...base, kind: 'moon' }, 'kind', /one of "onprem", "cloud"/],
    [{ ...base, hosts: [{ name: 'h', memoryMb: 0, cpus: 1 }] }, 'hosts[0].memoryMb', /integer ≥ 1/],
    [{ ...base, hosts: [] }, 'hosts', /at least one host/],
    [
      { ...base, datastores: [{ name: 'd', folder: '../x', hosts: [] }] },
      'datastores[0].folder',
      /inside the site folder/,
    ],
    [
      { ...base, datastores: [{ name: 'd', folder: 'x', hosts: ['nope'] }] },
      'datastores[0].hosts[0]',
      /unknown host/,
    ],
    [
      { ...base, networks: [{ name: 'n', subnets: [{ name: 's', cidr: '10.0.0.1/24' }] }] },
      'networks[0].subnets[0].cidr',
      /IPv4 block/,
    ],
    [{ ...base, extra: 1 }, 'extra', /unknown field/],
    [{ ...base, sync: ['ghost'] }, 'sync[0]', /unknown container/],
  ];
  for (const [value, field, reason] of cases) {
    const e = refusal(() => parseSiteConfig(value, '/s/site.json'));
    assert.equal(e.details.file, '/s/site.json');
    assert.equal(e.details.field, field, e.message);
    assert.match(e.message, reason);
    assert.ok(e.message.startsWith(`/s/site.json: ${field}: `), e.message);
  }
});

void test('machine.json is checked against the site', () => {
  const s = site();
  const good = {
    name: 'web',
    host: 'host1',
    cpus: 1,
    memoryMb: 512,
    command: ['osr', 'workload', 'ledger'],
    disks: [{ id: 'disk0', datastore: 'datastore1', path: 'web/disk0.img', sizeBytes: 1048576 }],
    nics: [{ network: 'prod', subnet: 'front', ip: '10.1.1.5' }, { network: null }],
  };
  const m = parseMachineConfig(good, '/m.json', s);
  assert.equal(m.runtime, 'process');
  assert.equal(m.osType, 'linux');
  assert.equal(m.guestTools, 'Installed');
  assert.deepEqual(m.nics[1], { network: null, subnet: null, ip: null });
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ ...good, host: 'host9' }, 'host', /unknown host/],
    [
      { ...good, disks: [{ ...good.disks[0], datastore: 'nope' }] },
      'disks[0].datastore',
      /unknown datastore/,
    ],
    [{ ...good, disks: [{ ...good.disks[0], sizeBytes: 256 }] }, 'disks[0].sizeBytes', /integer ≥ 512/],
    [{ ...good, disks: [{ ...good.disks[0], sizeBytes: 1025 }] }, 'disks[0].sizeBytes', /multiple of 512/],
    [{ ...good, disks: [good.disks[0], good.disks[0]] }, 'disks[1]', /duplicate disk id/],
    [{ ...good, nics: [{ network: 'prod', subnet: 'nope', ip: null }] }, 'nics[0].subnet', /no subnet/],
    [
      { ...good, nics: [{ network: 'prod', subnet: 'front', ip: '10.9.9.9' }] },
      'nics[0].ip',
      /not an assignable address/,
    ],
    [{ ...good, runtime: 'vmware' }, 'runtime', /one of/],
    [{ ...good, command: undefined }, 'command', /needs a command/],
    [{ ...good, container: 'ghost' }, 'container', /unknown container/],
  ];
  for (const [value, field, reason] of cases) {
    const e = refusal(() => parseMachineConfig(value, '/m.json', s));
    assert.equal(e.details.field, field, e.message);
    assert.match(e.message, reason);
  }
});
