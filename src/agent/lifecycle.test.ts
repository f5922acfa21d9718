/**
 * The lifecycle commands on a real replica store and real NBD: points, exposures (idempotent, surviving a
 * restart at the same address), snapshot/revert, change point, commit, release, receiving stopped and resumed,
 * and the refusals with their codes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Change } from '../dataplane/changes.js';
import { NbdClient } from '../dataplane/nbd/client.js';
import { OsrError } from '../domain/errors.js';
import { LocalFabric, writeDemoSite } from '../fabric/local/index.js';
import type { LocalMachineCreateSpec } from '../fabric/local/index.js';
import type { ReplicaExposeResult } from '../workflows/agent-commands.js';
import { loadTlsIdentity } from './tls-identity.js';
import type { AgentTlsIdentity } from './tls-identity.js';
import { LifecycleService } from './lifecycle.js';
import { DataPlaneReplicationService } from './replication-dataplane.js';

const MiB = 1024 * 1024;
const ITEM = 'item-1';
let dir: string;
let identity: AgentTlsIdentity;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'osr-lifecycle-'));
  identity = await loadTlsIdentity(join(dir, 'tls-home'), 'lifecycle-test');
});
after(() => rmSync(dir, { recursive: true, force: true }));

async function open(dataDir: string): Promise<{ svc: DataPlaneReplicationService; lc: LifecycleService }> {
  const svc = new DataPlaneReplicationService({ dataDir, identity, dataAddress: '127.0.0.1:1' });
  await svc.load();
  const lc = new LifecycleService({ dataDir, dataPlane: svc });
  await lc.load();
  return { svc, lc };
}

async function close(x: { svc: DataPlaneReplicationService; lc: LifecycleService }): Promise<void> {
  await x.lc.close();
  await x.svc.close();
}

const fill = (byte: number, n = 4096): Buffer => Buffer.alloc(n, byte);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Writes A, point 1, writes B, point 2 (seqs 1–4) into a fresh replica of ITEM. */
async function prepared(
  dataDir: string,
): Promise<{ svc: DataPlaneReplicationService; lc: LifecycleService }> {
  const x = await open(dataDir);
  await x.svc.prepareReplica({
    itemId: ITEM,
    machine: { id: 'm1', name: 'web' },
    disks: [{ id: 'disk0', sizeBytes: MiB }],
    policy: {},
  });
  const store = x.svc.replicaStore(ITEM)!;
  const t = Date.now();
  const changes: Change[] = [
    { kind: 'write', seq: 1, time: t, diskId: 'disk0', offset: 0, data: fill(0xaa) },
    { kind: 'marker', seq: 2, time: t, markerType: 'crash-consistent', pointId: 'p1' },
    { kind: 'write', seq: 3, time: t, diskId: 'disk0', offset: 0, data: fill(0xbb) },
    { kind: 'marker', seq: 4, time: t, markerType: 'crash-consistent', pointId: 'p2' },
  ];
  await store.receive(changes);
  await store.process();
  return x;
}

async function nbd<T>(uri: string, fn: (c: NbdClient) => Promise<T>): Promise<T> {
  const u = new URL(uri);
  const c = await NbdClient.connect({
    host: u.hostname,
    port: Number(u.port),
    exportName: u.pathname.slice(1),
  });
  try {
    return await fn(c);
  } finally {
    await c.disconnect().catch(() => undefined);
  }
}

const firstByte = (uri: string): Promise<number> => nbd(uri, async (c) => (await c.read(0, 4096))[0]!);

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof OsrError && err.code === code);
}

void test('points, exposure at a point, snapshot/revert, change point, restart at the same address, commit', async () => {
  const dataDir = join(dir, 'a');
  let x = await prepared(dataDir);
  try {
    // replica.point: Latest holds everything received; a repeat answers the same point.
    const latest = await x.lc.point({ itemId: ITEM });
    assert.ok(latest.sequence >= 4);
    assert.deepEqual(await x.lc.point({ itemId: ITEM }), latest);

    const payload = {
      itemId: ITEM,
      purpose: 'failover',
      point: { sequence: 2, pointId: 'cp-1' },
      disks: [{ id: 'disk0', sizeBytes: MiB }],
      stopReceiving: true,
    };
    const exposed = await x.lc.expose(payload);
    const uri = exposed.disks[0]!.nbdUri;
    assert.equal(exposed.sequence, 2);
    assert.deepEqual(await x.lc.expose(payload), exposed, 'a repeat answers the same exposure');
    assert.equal(x.svc.replicaStore(ITEM)!.status().processorRunning, false, 'receiving stopped');
    assert.equal(await firstByte(uri), 0xaa, 'the disk reads as at point 1');

    // Writes go to the overlay, never to the replica's base.
    await nbd(uri, async (c) => {
      await c.write(0, fill(0x11));
      await c.flush();
    });
    assert.equal(await firstByte(uri), 0x11);
    assert.equal((await x.svc.replicaStore(ITEM)!.openBase('disk0').read(0, 1))[0], 0xbb);

    // Snapshot, more writes, revert.
    await x.lc.snapshot({ itemId: ITEM, purpose: 'failover', snapshot: 'pre-power-on' });
    await nbd(uri, async (c) => {
      await c.write(0, fill(0x22));
      await c.flush();
    });
    await x.lc.revert({ itemId: ITEM, purpose: 'failover', snapshot: 'pre-power-on' });
    assert.equal(await firstByte(uri), 0x11);
    await rejectsWith(x.lc.revert({ itemId: ITEM, purpose: 'failover', snapshot: 'other' }), 'NOT_FOUND');

    // Change point: the overlay starts afresh at point 2; the address stays.
    const swapped: ReplicaExposeResult = await x.lc.swapPoint({
      itemId: ITEM,
      purpose: 'failover',
      point: { sequence: 4, pointId: 'cp-2' },
    });
    assert.equal(swapped.disks[0]!.nbdUri, uri);
    assert.equal(await firstByte(uri), 0xbb);
    await nbd(uri, async (c) => {
      await c.write(0, fill(0x33));
      await c.flush();
    });

    // Restart: the exposure is served again at the same address with what was flushed.
    await close(x);
    x = await open(dataDir);
    assert.ok(x.lc.backendFor({ itemId: ITEM, purpose: 'failover', diskId: 'disk0' }));
    assert.equal(await firstByte(uri), 0x33);
    assert.equal(x.svc.replicaStore(ITEM)!.status().processorRunning, false, 'still not receiving');

    // Commit: the base is the failed-over disk, served at the same address; no point is left.
    const committed = await x.lc.commit({ itemId: ITEM, purpose: 'failover' });
    assert.equal(committed.disks[0]!.nbdUri, uri);
    assert.deepEqual(await x.lc.commit({ itemId: ITEM, purpose: 'failover' }), committed);
    assert.equal((await x.svc.replicaStore(ITEM)!.openBase('disk0').read(0, 1))[0], 0x33);
    assert.equal(x.svc.replicaStore(ITEM)!.points().length, 0);
    await nbd(uri, async (c) => {
      await c.write(4096, fill(0x44));
      await c.flush();
    });
    assert.equal((await x.svc.replicaStore(ITEM)!.openBase('disk0').read(4096, 1))[0], 0x44);
    await rejectsWith(
      x.lc.swapPoint({ itemId: ITEM, purpose: 'failover', point: { sequence: 2, pointId: null } }),
      'OPERATION_NOT_ALLOWED',
    );
  } finally {
    await close(x);
  }
});

void test('a drill beside replication: release drops it, resume receiving, refusals with their codes', async () => {
  const x = await prepared(join(dir, 'b'));
  try {
    const drill = await x.lc.expose({
      itemId: ITEM,
      purpose: 'test',
      point: { sequence: 4, pointId: null },
      disks: [{ id: 'disk0', sizeBytes: MiB }],
      stopReceiving: false,
    });
    assert.equal(x.svc.replicaStore(ITEM)!.status().processorRunning, true, 'replication goes on');
    const uri = drill.disks[0]!.nbdUri;
    assert.equal(await firstByte(uri), 0xbb);
    // A retried exposure at another point replaces it.
    const again = await x.lc.expose({
      itemId: ITEM,
      purpose: 'test',
      point: { sequence: 2, pointId: null },
      disks: [{ id: 'disk0', sizeBytes: MiB }],
      stopReceiving: false,
    });
    assert.equal(await firstByte(again.disks[0]!.nbdUri), 0xaa);
    assert.deepEqual(await x.lc.release({ itemId: ITEM, purpose: 'test', resumeReceiving: false }), {
      itemId: ITEM,
      purpose: 'test',
      released: true,
    });
    await assert.rejects(firstByte(again.disks[0]!.nbdUri));
    assert.equal(x.lc.backendFor({ itemId: ITEM, purpose: 'test', diskId: 'disk0' }), undefined);
    assert.equal(
      (
        (await x.lc.release({ itemId: ITEM, purpose: 'test', resumeReceiving: false })) as {
          released: boolean;
        }
      ).released,
      false,
      'absent is success',
    );

    // Stop and resume receiving (a cancelled failover).
    await x.lc.expose({
      itemId: ITEM,
      purpose: 'failover',
      point: { sequence: 4, pointId: null },
      disks: [{ id: 'disk0', sizeBytes: MiB }],
      stopReceiving: true,
    });
    assert.equal(x.svc.replicaStore(ITEM)!.status().processorRunning, false);
    await x.lc.release({ itemId: ITEM, purpose: 'failover', resumeReceiving: true });
    assert.equal(x.svc.replicaStore(ITEM)!.status().processorRunning, true);

    const base = {
      itemId: ITEM,
      purpose: 'test',
      disks: [{ id: 'disk0', sizeBytes: MiB }],
      stopReceiving: false,
    };
    await rejectsWith(x.lc.expose({ ...base, point: { sequence: 99, pointId: null } }), 'NO_RECOVERY_POINT');
    await rejectsWith(
      x.lc.expose({ ...base, itemId: 'other', point: { sequence: 2, pointId: null } }),
      'NOT_FOUND',
    );
    await rejectsWith(
      x.lc.expose({
        ...base,
        disks: [{ id: 'disk9', sizeBytes: MiB }],
        point: { sequence: 2, pointId: null },
      }),
      'NOT_FOUND',
    );
    await rejectsWith(
      x.lc.expose({ ...base, purpose: 'other', point: { sequence: 2, pointId: null } }),
      'VALIDATION_FAILED',
    );
    await rejectsWith(x.lc.expose({ ...base, point: {} }), 'VALIDATION_FAILED');
    await rejectsWith(x.lc.commit({ itemId: ITEM, purpose: 'failover' }), 'NOT_FOUND');
    await rejectsWith(
      x.lc.swapPoint({ itemId: ITEM, purpose: 'test', point: { sequence: 2, pointId: null } }),
      'NOT_FOUND',
    );
    await rejectsWith(x.lc.point({ itemId: ITEM, minSequence: 50, timeoutMs: 100 }), 'REPLICATION_UNHEALTHY');
    await rejectsWith(x.lc.point({ itemId: 'bad id!' }), 'VALIDATION_FAILED');
    await rejectsWith(x.lc.drain({ itemId: ITEM, timeoutMs: 100 }), 'NOT_FOUND');

    // Deleting the replica drops its exposures first.
    const last = await x.lc.expose({ ...base, point: { sequence: 4, pointId: null } });
    await x.lc.deleteReplica({ itemId: ITEM });
    await assert.rejects(firstByte(last.disks[0]!.nbdUri));
    assert.equal(x.svc.replicaStore(ITEM), undefined);
  } finally {
    await close(x);
  }
});

void test('a machine of the local fabric runs on an exposure: its writes reach the overlay; a running machine keeps its exposure', async () => {
  const dataDir = join(dir, 'c');
  const x = await prepared(dataDir);
  const siteDir = join(dir, 'site-c');
  await writeDemoSite(siteDir, { kind: 'onprem', octet: 3 });
  const fabric = await LocalFabric.open({
    siteDir,
    stateDir: join(dataDir, 'fabric'),
    exposureBackend: (ref) => x.lc.backendFor(ref),
    shutdownTimeoutMs: 2000,
  });
  x.lc.bindFabric(fabric);
  try {
    const payload = {
      itemId: ITEM,
      purpose: 'test',
      point: { sequence: 2, pointId: null },
      disks: [{ id: 'disk0', sizeBytes: MiB }],
      stopReceiving: false,
    };
    const exposed = await x.lc.expose(payload);
    // The machine writes one byte pattern through its own disk address (OSR_DISK_DISK0) and stays up.
    const client = JSON.stringify(new URL('../dataplane/nbd/client.js', import.meta.url).href);
    const script =
      `const {NbdClient}=await import(${client});const u=new URL(process.env.OSR_DISK_DISK0);` +
      'const c=await NbdClient.connect({host:u.hostname,port:Number(u.port),exportName:u.pathname.slice(1)});' +
      'await c.write(0,Buffer.alloc(4096,0x5a));await c.flush();await c.disconnect();setInterval(()=>{},1000);';
    const spec: LocalMachineCreateSpec = {
      name: 'web-test',
      host: 'host1',
      cpus: 1,
      memoryMb: 64,
      osType: 'linux',
      command: [process.execPath, '--input-type=module', '-e', script],
      disks: [
        {
          id: 'disk0',
          datastore: 'datastore1',
          sizeBytes: MiB,
          exposure: { itemId: ITEM, purpose: 'test', diskId: 'disk0' },
        },
      ],
      nics: [{ network: null, subnet: null, ip: null, isolated: true }],
      origin: 'test-failover',
    };
    const m = await fabric.createMachine(spec);
    assert.equal(m.disks[0]!.nbdUri?.startsWith('nbd://'), true);
    await fabric.powerOn('web-test');
    const deadline = Date.now() + 20_000;
    while ((await firstByte(exposed.disks[0]!.nbdUri)) !== 0x5a) {
      assert.ok(Date.now() < deadline, 'the machine wrote through its exposure-backed disk');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(
      (await x.svc.replicaStore(ITEM)!.openBase('disk0').read(0, 1))[0],
      0xbb,
      'the base is untouched',
    );
    assert.deepEqual(fabric.runningOnExposure(ITEM, 'test'), ['web-test']);
    await rejectsWith(x.lc.expose({ ...payload, point: { sequence: 4, pointId: null } }), 'IN_USE');
    await fabric.powerOff('web-test');
    const replaced = await x.lc.expose({ ...payload, point: { sequence: 4, pointId: null } });
    assert.equal(await firstByte(replaced.disks[0]!.nbdUri), 0xbb);
    await fabric.deleteMachine('web-test', { deleteDisks: true });
    assert.equal(
      await firstByte(replaced.disks[0]!.nbdUri),
      0xbb,
      'deleting the machine leaves the exposure',
    );
  } finally {
    await fabric.close();
    await close(x);
  }
});

void test('commit under a machine that keeps writing: no write is lost or refused, the address stays', async () => {
  const x = await open(join(dir, 'busy'));
  const size = 48 * MiB;
  try {
    await x.svc.prepareReplica({
      itemId: ITEM,
      machine: { id: 'm1', name: 'web' },
      disks: [{ id: 'disk0', sizeBytes: size }],
      policy: {},
    });
    const store = x.svc.replicaStore(ITEM)!;
    await store.receive([
      { kind: 'write', seq: 1, time: Date.now(), diskId: 'disk0', offset: 0, data: fill(0xaa, MiB) },
      { kind: 'marker', seq: 2, time: Date.now(), markerType: 'crash-consistent', pointId: 'p1' },
    ]);
    await store.process();
    const exposed = await x.lc.expose({
      itemId: ITEM,
      purpose: 'failover',
      point: { sequence: 2, pointId: 'cp-1' },
      disks: [{ id: 'disk0', sizeBytes: size }],
      stopReceiving: true,
    });
    const uri = exposed.disks[0]!.nbdUri;
    const expect = Buffer.alloc(size);
    fill(0xaa, MiB).copy(expect, 0);
    await nbd(uri, async (c) => {
      // Enough overlay data that the commit's copy takes a while.
      for (let off = 0; off < 40 * MiB; off += MiB) {
        const data = fill(((off / MiB) % 200) + 1, MiB);
        await c.write(off, data);
        data.copy(expect, off);
      }
      await c.flush();
      let stop = false;
      let during = 0;
      const writer = (async () => {
        for (let i = 0; !stop; i++) {
          const off = ((i * 7919) % (size / 4096 - 16)) * 4096;
          const data = fill((i % 250) + 3, 4096 * (1 + (i % 16)));
          data.writeUInt32LE(i, 0);
          await c.write(off, data);
          data.copy(expect, off);
          during++;
        }
      })();
      const committed = await x.lc.commit({ itemId: ITEM, purpose: 'failover' });
      // Keep writing a little after the switch, then stop.
      await sleep(50);
      stop = true;
      await writer;
      await c.flush();
      assert.equal(committed.disks[0]!.nbdUri, uri, 'same address after commit');
      assert.ok(during >= 10, `the machine wrote ${during} times around the commit`);
    });
    const base = await store.openBase('disk0').read(0, size);
    assert.ok(base.equals(expect), 'the base holds every write, also those made during the commit');
    assert.equal(store.points().length, 0);
  } finally {
    await close(x);
  }
});
