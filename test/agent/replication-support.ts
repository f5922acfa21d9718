/**
 * Helpers for the replication end-to-end tests: a control plane with two real `osr agent`
 * processes (sites `primary` with one ledger machine, and `recovery`) whose control-plane
 * traffic passes through a byte-recording TCP forwarder, protection enabled through the
 * API, and ways to look at the source disk and the replica.
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { mkdir } from 'node:fs/promises';
import * as net from 'node:net';
import { join } from 'node:path';
import { after, afterEach } from 'node:test';
import { writeDemoSite } from '../../src/fabric/local/index.js';
import { killAll, startAgent, waitUntil } from './harness.js';
import type { Proc, World } from './harness.js';

/** A TCP forwarder to the control plane that keeps every byte agents sent through it. */
export interface Recorder {
  url: string;
  /** Everything clients sent (requests with their bodies), in order per connection. */
  sent(): Buffer;
  close(): Promise<void>;
}

/** Starts a recording forwarder to `targetUrl` (http://host:port). */
export async function startRecorder(targetUrl: string): Promise<Recorder> {
  const target = new URL(targetUrl);
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    client.on('data', (d: Buffer) => chunks.push(Buffer.from(d)));
    client.pipe(upstream);
    upstream.pipe(client);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    sent: () => Buffer.concat(chunks),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** The two sites of a replication test. */
export interface Sites {
  recorder: Recorder;
  primaryDir: string;
  recoveryDir: string;
  primaryData: string;
  recoveryData: string;
  primaryKey: string;
  recoveryKey: string;
  primary: Proc;
  recovery: Proc;
  /** The source image of `web`'s data disk (disk1). */
  sourceImage: string;
}

/** web's data disk (disk1); its ledger disk (disk0) is `LEDGER_BYTES`. */
export const DISK_BYTES = 8 * 1024 * 1024;
export const LEDGER_BYTES = 2 * 1024 * 1024;
/** Random bytes written into the source image before the agents start (initial copy must carry them). */
export const PREFILL_OFFSET = 4 * 1024 * 1024;

/** Starts both agents (through the recorder); the source image gets a random block before it is served. */
export async function startSites(w: World, extra: string[] = []): Promise<Sites> {
  const recorder = await startRecorder(w.server.url);
  const primaryKey = await w.keyFile('primary');
  const recoveryKey = await w.keyFile('recovery');
  const primaryDir = await w.siteDir('primary', [
    {
      name: 'web',
      host: 'host1',
      memoryMb: 256,
      cpus: 1,
      ip: '10.1.1.11',
      diskBytes: LEDGER_BYTES,
      rate: 20,
    },
  ]);
  // A second disk for the test's own data: the ledger (disk0) refuses to start on a disk with foreign bytes.
  const machineFile = join(primaryDir, 'machines', 'web', 'machine.json');
  const machine = JSON.parse(readFileSync(machineFile, 'utf8')) as { disks: unknown[] };
  machine.disks.push({ id: 'disk1', datastore: 'datastore1', path: 'web/disk1.img', sizeBytes: DISK_BYTES });
  writeFileSync(machineFile, JSON.stringify(machine, null, 2) + '\n');
  const recoveryDir = join(w.tmp, 'sites', 'recovery');
  await writeDemoSite(recoveryDir, { kind: 'onprem', octet: 2 });
  const sourceImage = join(primaryDir, 'datastores', 'datastore1', 'web', 'disk1.img');
  await mkdir(join(primaryDir, 'datastores', 'datastore1', 'web'), { recursive: true });
  const fd = openSync(sourceImage, 'w');
  try {
    ftruncateSync(fd, DISK_BYTES);
    writeSync(fd, randomBytes(256 * 1024), 0, 256 * 1024, PREFILL_OFFSET);
  } finally {
    closeSync(fd);
  }
  const primaryData = join(w.tmp, 'agent-primary');
  const recoveryData = join(w.tmp, 'agent-recovery');
  const recovery = await startAgent(w, {
    site: 'recovery',
    siteDir: recoveryDir,
    dataDir: recoveryData,
    keyFile: recoveryKey,
    server: recorder.url,
    extra,
  });
  const primary = await startAgent(w, {
    site: 'primary',
    siteDir: primaryDir,
    dataDir: primaryData,
    keyFile: primaryKey,
    server: recorder.url,
    extra,
  });
  return {
    recorder,
    primaryDir,
    recoveryDir,
    primaryData,
    recoveryData,
    primaryKey,
    recoveryKey,
    primary,
    recovery,
    sourceImage,
  };
}

/** Restarts an agent (same data folder, same recorder). */
export function restartAgent(
  w: World,
  s: Sites,
  site: 'primary' | 'recovery',
  extra: string[] = [],
): Promise<Proc> {
  return startAgent(w, {
    site,
    siteDir: site === 'primary' ? s.primaryDir : s.recoveryDir,
    dataDir: site === 'primary' ? s.primaryData : s.recoveryData,
    server: s.recorder.url,
    extra,
  });
}

/** A protected item as the API shows it. */
export interface ItemView {
  id: string;
  protectionState: string;
  initialReplicationProgress: number;
  replicationHealth: string;
  healthReason: string | null;
}

/** Creates a policy and protects `web` to `recovery`; resolves with the item id. */
export async function protectWeb(
  w: World,
  policy: Record<string, unknown> = {},
  policyName = 'e2e',
): Promise<string> {
  const web = await waitUntil('web in the inventory', async () => {
    const r = await w.api<{ items: { id: string; name: string; powerState: string }[] }>(
      'GET',
      '/vaults/default/machines?limit=100',
    );
    return r.body.items.find((m) => m.name === 'web' && m.powerState === 'Running');
  });
  const p = await w.api<{ id: string }>('POST', '/vaults/default/policies', { name: policyName, ...policy });
  if (p.status !== 201) throw new Error(`policy: ${p.status} ${JSON.stringify(p.body)}`);
  const r = await w.api<{ item: { id: string } }>('POST', '/vaults/default/items', {
    machine: web.id,
    policy: p.body.id,
    targetSite: 'recovery',
  });
  if (r.status !== 202) throw new Error(`protect: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.item.id;
}

/** Resolves once the item is Protected (fails early when it needs repair). */
export function waitProtected(w: World, itemId: string, timeoutMs = 90_000): Promise<ItemView> {
  return waitUntil(
    'the item to become Protected',
    async () => {
      const r = await w.api<ItemView>('GET', `/vaults/default/items/${itemId}`);
      if (r.body.protectionState === 'NeedsRepair') {
        throw new Error(`item needs repair: ${r.body.healthReason ?? ''}`);
      }
      return r.body.protectionState === 'Protected' ? r.body : undefined;
    },
    timeoutMs,
  );
}

/** The replica's base image of one of `web`'s disks ("latest processed"; default the data disk). */
export function replicaImage(s: Sites, itemId: string, diskId = 'disk1'): string {
  return join(s.recoveryData, 'replicas', itemId, 'store', 'disks', `${diskId}.img`);
}

/** The source image of one of `web`'s disks. */
export function sourceImageOf(s: Sites, diskId: string): string {
  return join(s.primaryDir, 'datastores', 'datastore1', 'web', `${diskId}.img`);
}

/** Bytes of a file range. */
export function readRange(file: string, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  if (!existsSync(file)) return b;
  const fd = openSync(file, 'r');
  try {
    readSync(fd, b, 0, length, offset);
  } finally {
    closeSync(fd);
  }
  return b;
}

/** The ledger's HTTP port (from the primary agent's fabric state). */
export function ledgerPort(s: Sites): number {
  const state = JSON.parse(readFileSync(join(s.primaryData, 'fabric', 'fabric-state.json'), 'utf8')) as {
    machines: Record<string, { httpPort?: number }>;
  };
  const port = state.machines['web']?.httpPort;
  if (port === undefined) throw new Error('web has no http port');
  return port;
}

/** Freezes or thaws the ledger (it finishes the write in flight on freeze). */
export async function ledger(s: Sites, op: 'freeze' | 'thaw' | 'status'): Promise<{ count?: number }> {
  const url = `http://127.0.0.1:${ledgerPort(s)}/${op}`;
  const r = await fetch(url, { method: op === 'status' ? 'GET' : 'POST' });
  return (await r.json()) as { count?: number };
}

/** Waits until the replica holds exactly the source images' bytes, both disks (the source must be quiet). */
export async function waitReplicaEqual(s: Sites, itemId: string, timeoutMs = 60_000): Promise<void> {
  await waitUntil(
    'the replica to equal the source disks',
    () =>
      ['disk0', 'disk1'].every((d) => {
        const file = replicaImage(s, itemId, d);
        return existsSync(file) && readFileSync(sourceImageOf(s, d)).equals(readFileSync(file));
      }),
    timeoutMs,
  );
}

/**
 * Lists a test file fills with the worlds and site recorders it starts; hooks registered here end
 * them (and every agent) after each test, so no process outlives its test.
 */
export function endedAfterEachTest(): { worlds: World[]; recorders: Sites['recorder'][] } {
  const worlds: World[] = [];
  const recorders: Sites['recorder'][] = [];
  afterEach(async () => {
    await killAll();
    for (const r of recorders.splice(0)) await r.close();
    for (const w of worlds.splice(0)) await w.close();
  });
  after(async () => {
    await killAll();
  });
  return { worlds, recorders };
}
