import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeSync,
} from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { OsrError } from '../domain/errors.js';
import { LocalFabric, writeDemoSite } from '../fabric/local/index.js';
import { loadTlsIdentity } from './tls-identity.js';
import { withPort } from './agent.js';
import { DataPlaneReplicationService, parseHostPort } from './replication-dataplane.js';

function code(err: unknown): string {
  return err instanceof OsrError ? err.code : String(err);
}

void test('--data-address takes a host alone (the port picked once fills in) or host:port', () => {
  assert.equal(withPort('127.0.0.2', 4000), '127.0.0.2:4000');
  assert.equal(withPort('10.0.0.5:9555', 4000), '10.0.0.5:9555');
  assert.equal(withPort('::1', 4000), '[::1]:4000');
  assert.equal(withPort('[::1]:80', 4000), '[::1]:80');
});

void test('parseHostPort reads host:port and [v6]:port and refuses anything else', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:9443'), { host: '127.0.0.1', port: 9443 });
  assert.deepEqual(parseHostPort('[::1]:80'), { host: '::1', port: 80 });
  for (const bad of ['', 'host', 'host:', 'host:0', 'host:70000', ':80']) {
    assert.throws(
      () => parseHostPort(bad),
      (e) => code(e) === 'VALIDATION_FAILED',
      bad,
    );
  }
});

void test('replication commands refuse bad payloads with catalog codes and leave nothing behind', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-dp-svc-'));
  const siteDir = join(dir, 'site');
  await writeDemoSite(siteDir, { kind: 'onprem', octet: 3 });
  const fabric = await LocalFabric.open({ siteDir, stateDir: join(dir, 'data', 'fabric'), autostart: false });
  const identity = await loadTlsIdentity(join(dir, 'data'), 'osr-agent-test');
  const svc = new DataPlaneReplicationService({
    dataDir: join(dir, 'data'),
    identity,
    dataAddress: '127.0.0.1:1',
    fabric,
  });
  try {
    await svc.resume();
    const machine = { id: 'm', name: 'web' };
    const disks = [{ id: 'disk0', sizeBytes: 1024 * 1024 }];
    const peer = { agentId: 'a', siteId: 's', dataAddress: '127.0.0.1:2', certificatePem: identity.certPem };
    await assert.rejects(
      svc.prepareReplica({ itemId: '../x', machine, disks }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.prepareReplica({ itemId: 'i1', machine, disks: [] }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.prepareReplica({ itemId: 'i1', machine, disks: [{ id: 'disk0', sizeBytes: -1 }] }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.startReplication({ itemId: 'i1', machine, disks }),
      (e) => code(e) === 'AGENT_NOT_REGISTERED',
    );
    await assert.rejects(
      svc.startReplication({ itemId: 'i1', machine, disks, peer: { ...peer, dataAddress: 'nowhere' } }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.startReplication({ itemId: 'i1', machine, disks, peer }),
      (e) => code(e) === 'NOT_FOUND',
    );
    assert.equal(svc.journal('i1'), undefined);
    assert.deepEqual(svc.report().items, []);
    // Stop and delete of what does not exist succeed (idempotent commands).
    assert.deepEqual(await svc.stopReplication({ itemId: 'i1' }), { itemId: 'i1', stopped: false });
    assert.equal(((await svc.deleteReplica({ itemId: 'i1' })) as { deleted: boolean }).deleted, false);
  } finally {
    await svc.close();
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

void test('an offline export cut short by a restart exports again by itself and the replica ends equal', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-dp-offline-'));
  const MiB = 1024 * 1024;
  const siteDir = join(dir, 'site');
  await writeDemoSite(siteDir, {
    kind: 'onprem',
    octet: 3,
    machines: [{ name: 'web', host: 'host1', memoryMb: 256, cpus: 1, ip: null, diskBytes: 24 * MiB }],
  });
  // Every block allocated, so the export has many blocks to write and can be cut short after the first.
  const image = join(siteDir, 'datastores', 'datastore1', 'web', 'disk0.img');
  mkdirSync(join(image, '..'), { recursive: true });
  const fd = openSync(image, 'w');
  ftruncateSync(fd, 24 * MiB);
  for (let at = 0; at < 24 * MiB; at += MiB) writeSync(fd, randomBytes(MiB), 0, MiB, at);
  closeSync(fd);
  const fabric = await LocalFabric.open({ siteDir, stateDir: join(dir, 'src', 'fabric'), autostart: false });
  const seeds = join(dir, 'seeds');
  const port = await freePort();
  const policy = {
    initialReplication: { mode: 'offline', exportPath: seeds, importPath: seeds },
    replicationPort: port,
  };
  const auth = { mode: 'token', token: 'offline-test-token-0123456789' };
  const item = {
    itemId: 'i1',
    machine: { id: 'm', name: 'web' },
    disks: [{ id: 'disk0', sizeBytes: 24 * MiB }],
  };
  const open = async (): Promise<DataPlaneReplicationService> => {
    const svc = new DataPlaneReplicationService({
      dataDir: join(dir, 'src'),
      identity: await loadTlsIdentity(join(dir, 'src'), 'src'),
      dataAddress: '127.0.0.1:2',
      fabric,
    });
    await svc.resume();
    return svc;
  };
  let source: DataPlaneReplicationService | undefined;
  let recovery: DataPlaneReplicationService | undefined;
  try {
    recovery = new DataPlaneReplicationService({
      dataDir: join(dir, 'dst'),
      identity: await loadTlsIdentity(join(dir, 'dst'), 'dst'),
      dataAddress: '127.0.0.1:1',
    });
    await recovery.resume();
    await recovery.prepareReplica({
      ...item,
      policy,
      auth,
      peer: { agentId: 'src', siteId: 's', dataAddress: null },
    });
    source = await open();
    await source.startReplication({
      ...item,
      policy,
      auth,
      peer: { agentId: 'dst', siteId: 'd', dataAddress: '127.0.0.1:1' },
    });
    const journal = source.journal('i1')!;
    // The export is under way — a placeholder journaled, its seed file unfinished — when the agent goes down.
    await until('the first placeholders', () => journal.writtenSeq >= 2);
    await source.close();
    source = undefined;
    const state = JSON.parse(readFileSync(join(dir, 'src', 'replication', 'i1', 'source.json'), 'utf8')) as {
      copy: { state: string };
    };
    assert.equal(state.copy.state, 'copying', 'the export was cut short');
    assert.ok(!existsSync(join(seeds, 'i1.osrseed')), 'no finished seed file');

    source = await open();
    const finished = await until('the export to finish again', () => existsSync(join(seeds, 'i1.osrseed')));
    assert.ok(finished);
    assert.deepEqual(
      readdirSync(seeds).filter((f) => f.endsWith('.part')),
      [],
      'the unfinished file was replaced',
    );
    await until('the copy acknowledged', () => {
      const r = source!.report().items.find((i) => i.itemId === 'i1');
      return r?.initialReplicationProgress === 100;
    });
    const store = recovery.replicaStore('i1')!;
    await until('the replica to equal the source', () =>
      readFileSync(join(dir, 'dst', 'replicas', 'i1', 'store', 'disks', 'disk0.img')).equals(
        readFileSync(image),
      ),
    );
    assert.ok(store.lastReceivedSeq() > 0);
  } finally {
    await source?.close();
    await recovery?.close();
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('a delta resync (reprotect to the original machine) is followed at once by a recovery point', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-dp-delta-'));
  const MiB = 1024 * 1024;
  const siteDir = join(dir, 'site');
  await writeDemoSite(siteDir, {
    kind: 'onprem',
    octet: 3,
    machines: [{ name: 'web', host: 'host1', memoryMb: 256, cpus: 1, ip: null, diskBytes: 8 * MiB }],
  });
  const image = join(siteDir, 'datastores', 'datastore1', 'web', 'disk0.img');
  mkdirSync(join(image, '..'), { recursive: true });
  const fd = openSync(image, 'w');
  ftruncateSync(fd, 8 * MiB);
  writeSync(fd, randomBytes(8 * MiB), 0, 8 * MiB, 0);
  closeSync(fd);
  const fabric = await LocalFabric.open({ siteDir, stateDir: join(dir, 'src', 'fabric'), autostart: false });
  const policy = { replicationPort: await freePort() };
  const auth = { mode: 'token', token: 'delta-test-token-0123456789' };
  const item = {
    itemId: 'i1',
    machine: { id: 'm', name: 'web' },
    disks: [{ id: 'disk0', sizeBytes: 8 * MiB }],
  };
  const replicaImage = join(dir, 'dst', 'replicas', 'i1', 'store', 'disks', 'disk0.img');
  // Points only when something asks for one: the copy frequency alone would not cut one within the test.
  const crashPointIntervalMs = 3600_000;
  const recovery = new DataPlaneReplicationService({
    dataDir: join(dir, 'dst'),
    identity: await loadTlsIdentity(join(dir, 'dst'), 'dst'),
    dataAddress: '127.0.0.1:1',
    crashPointIntervalMs,
  });
  const source = new DataPlaneReplicationService({
    dataDir: join(dir, 'src'),
    identity: await loadTlsIdentity(join(dir, 'src'), 'src'),
    dataAddress: '127.0.0.1:2',
    fabric,
    crashPointIntervalMs,
  });
  try {
    await recovery.resume();
    await source.resume();
    const peer = { agentId: 'dst', siteId: 'd', dataAddress: '127.0.0.1:1' };
    await recovery.prepareReplica({
      ...item,
      policy,
      auth,
      peer: { agentId: 'src', siteId: 's', dataAddress: null },
    });
    await source.startReplication({ ...item, policy, auth, peer });
    // Processed points only: `points()` also lists markers received but not yet applied (`pending`).
    const first = await until('the first point', () => recovery.replicaStore('i1')?.latestProcessed());
    assert.ok(readFileSync(replicaImage).equals(readFileSync(image)));

    // Replication stops; the source disk changes in three places; replication starts again as a delta.
    await source.stopReplication({ itemId: 'i1' });
    const wfd = openSync(image, 'r+');
    for (const at of [0, 3 * MiB + 512, 8 * MiB - 4096]) writeSync(wfd, randomBytes(4096), 0, 4096, at);
    closeSync(wfd);
    await recovery.prepareReplica({
      ...item,
      policy,
      auth,
      peer: { agentId: 'src', siteId: 's', dataAddress: null },
      replicaExists: true,
    });
    await source.startReplication({ ...item, policy, auth, peer, copy: 'delta', replicaExists: true });
    const next = await until(
      'a point after the delta',
      () =>
        recovery
          .replicaStore('i1')
          ?.points()
          .find((p) => p.seq > first.seq && !p.pending),
      20_000,
    );
    assert.ok(next);
    assert.ok(
      readFileSync(replicaImage).equals(readFileSync(image)),
      'the replica equals the changed source',
    );
  } finally {
    await source.close();
    await recovery.close();
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
