import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { NbdClient } from '../../dataplane/nbd/client.js';
import type { WriteObserver } from '../../dataplane/nbd/observed-backend.js';
import { OsrError } from '../../domain/errors.js';
import { LocalFabric, diskEnvName, qemuAvailable, writeDemoSite } from './index.js';

let tmp: string;
let siteDir: string;
let fabric: LocalFabric;

/** A machine process that records its environment and waits for SIGTERM. */
const MACHINE_SCRIPT = `require('fs').writeFileSync('env.json', JSON.stringify(process.env)); process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000);`;

function write(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2));
}

function expectCode(err: unknown, code: string): boolean {
  assert.ok(err instanceof OsrError, String(err));
  assert.equal(err.code, code);
  return true;
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'osr-fabric-'));
  siteDir = join(tmp, 'site');
  await writeDemoSite(siteDir, { kind: 'onprem', octet: 3, hostMemoryMb: [1024, 512] });
  const { mkdirSync } = await import('node:fs');
  for (const [name, host, mem] of [
    ['m1', 'host1', 600],
    ['m2', 'host1', 600],
  ] as const) {
    mkdirSync(join(siteDir, 'machines', name), { recursive: true });
    write(join(siteDir, 'machines', name, 'machine.json'), {
      name,
      host,
      cpus: 1,
      memoryMb: mem,
      command: [process.execPath, '-e', MACHINE_SCRIPT],
      disks: [{ id: 'disk0', datastore: 'datastore1', path: `${name}/disk0.img`, sizeBytes: 1048576 }],
      nics: [{ network: 'prod', subnet: 'front', ip: '10.3.1.7' }],
    });
  }
  fabric = await LocalFabric.open({ siteDir, stateDir: join(tmp, 'state'), shutdownTimeoutMs: 3000 });
});

after(async () => {
  await fabric.close();
  rmSync(tmp, { recursive: true, force: true });
});

void test('every disk is served over NBD, with writes going through the observer hook from the first one', async () => {
  const m1 = await fabric.findMachine('m1');
  const uri = m1?.disks[0]?.nbdUri;
  assert.match(uri ?? '', /^nbd:\/\/127\.0\.0\.1:\d+\/m1-disk0$/);
  // Asynchronously: the NBD server answering it runs in this process.
  const { stdout: list } = await promisify(execFile)('nbdinfo', ['--list', uri ?? '']);
  assert.match(list, /export="m1-disk0"/, 'an independent NBD client sees the export');

  const seen: number[] = [];
  const observer: WriteObserver = {
    onWrite: (e) => (seen.push(e.offset), Promise.resolve()),
    onZero: () => Promise.resolve(),
    onTrim: () => Promise.resolve(),
    onFlush: () => Promise.resolve(),
  };
  fabric.setDiskObserver('m1', 'disk0', observer);
  const u = new URL(uri ?? '');
  const c = await NbdClient.connect({ host: u.hostname, port: Number(u.port), exportName: 'm1-disk0' });
  try {
    await c.write(4096, Buffer.alloc(512, 7));
    await c.flush();
  } finally {
    await c.disconnect();
  }
  assert.deepEqual(seen, [4096]);
  fabric.setDiskObserver('m1', 'disk0', null);
  const image = readFileSync(join(siteDir, 'datastores', 'datastore1', 'm1', 'disk0.img'));
  assert.equal(image[4096], 7, 'and applied to the image');
});

void test('power on gives the process its disks and NICs; shutdown is graceful; memory is checked per host', async () => {
  const on = await fabric.powerOn('m1');
  assert.equal(on.powerState, 'Running');
  assert.equal((await fabric.powerOn('m1')).powerState, 'Running', 'power on is idempotent');
  const envFile = join(siteDir, 'machines', 'm1', 'env.json');
  const { existsSync } = await import('node:fs');
  const deadline = Date.now() + 10_000;
  while (!existsSync(envFile)) {
    assert.ok(Date.now() < deadline, 'the machine never wrote its environment');
    await new Promise((r) => setTimeout(r, 20));
  }
  const env = JSON.parse(readFileSync(envFile, 'utf8')) as Record<string, string>;
  assert.equal(env[diskEnvName('disk0')], on.disks[0]?.nbdUri);
  assert.equal(env['OSR_NIC0_IP'], '10.3.1.7');
  assert.equal(env['OSR_NIC0_NETWORK'], 'prod');
  assert.match(env['OSR_HTTP_PORT'] ?? '', /^\d+$/);
  const inv = await fabric.inventory();
  assert.equal(inv.hosts.find((h) => h.name === 'host1')?.freeMemoryMb, 1024 - 600);

  await assert.rejects(fabric.powerOn('m2'), (e) => expectCode(e, 'TARGET_HOST_OUT_OF_MEMORY'));
  await assert.rejects(fabric.ensureRunning('m2'), (e) => expectCode(e, 'MACHINE_NOT_RUNNING'));
  const pid = fabric.runtimeInfo('m1').pid;
  assert.ok(pid !== undefined);
  const off = await fabric.shutdown('m1');
  assert.equal(off.powerState, 'Stopped');
  assert.throws(() => process.kill(pid, 0), 'the process ended');
  assert.equal((await fabric.shutdown('m1')).powerState, 'Stopped', 'shutdown is idempotent');
  assert.equal((await fabric.powerOn('m2')).powerState, 'Running', 'the memory is free again');
  await fabric.powerOff('m2');
});

void test('a machine that ends right after power on is MACHINE_NOT_RUNNING; a missing datastore folder is 8061', async () => {
  await fabric.createMachine({
    name: 'dies',
    host: 'host2',
    cpus: 1,
    memoryMb: 64,
    osType: 'linux',
    command: [process.execPath, '-e', 'process.exit(3)'],
    disks: [],
    nics: [],
  });
  await assert.rejects(fabric.powerOn('dies'), (e) => expectCode(e, 'MACHINE_NOT_RUNNING'));
  await assert.rejects(
    fabric.createMachine({
      name: 'dies',
      host: 'host1',
      cpus: 1,
      memoryMb: 64,
      osType: 'linux',
      command: ['true'],
      disks: [],
      nics: [],
    }),
    (e) => expectCode(e, 'MACHINE_NAME_CONFLICT'),
  );
  assert.deepEqual(await fabric.deleteMachine('dies'), { deleted: true });

  const site = JSON.parse(readFileSync(join(siteDir, 'site.json'), 'utf8')) as { datastores: unknown[] };
  site.datastores.push({ name: 'gone', folder: 'datastores/not-mounted', hosts: ['host1', 'host2'] });
  write(join(siteDir, 'site.json'), site);
  await fabric.reload();
  await assert.rejects(
    fabric.createMachine({
      name: 'nowhere',
      host: 'host1',
      cpus: 1,
      memoryMb: 64,
      osType: 'linux',
      command: ['true'],
      disks: [{ id: 'disk0', datastore: 'gone', sizeBytes: 1048576 }],
      nics: [],
    }),
    (e) => expectCode(e, 'DATASTORE_NOT_ACCESSIBLE'),
  );
});

void test(
  'qemu runtime',
  { skip: qemuAvailable() ? false : 'qemu-system-x86_64 is not installed here' },
  async () => {
    const m = await fabric.createMachine({
      name: 'vm',
      host: 'host1',
      cpus: 1,
      memoryMb: 128,
      osType: 'linux',
      runtime: 'qemu',
      disks: [{ id: 'disk0', datastore: 'datastore1', sizeBytes: 1048576 }],
      nics: [],
      powerOn: true,
    });
    assert.equal(m.powerState, 'Running');
    assert.equal((await fabric.shutdown('vm', { timeoutMs: 3000 })).powerState, 'Stopped');
    await fabric.deleteMachine('vm', { deleteDisks: true });
  },
);
