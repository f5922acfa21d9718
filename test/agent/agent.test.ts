/**
 * The site agent as a process (`osr agent`) against a real control plane: registration
 * (valid, unknown, expired key), credential reuse, heartbeat loss and return, inventory
 * sync from the site folder, power operations, machine snapshots and the seed errors as commands, the
 * control plane going away (95226) and coming back, the proxy path, and kill -9.
 */
import { execFile } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, afterEach, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { ERROR_CATALOG } from '../../src/domain/errors.js';
import type { Machine } from '../../src/domain/model.js';
import { alive, BIN, killAll, spawnOsr, startAgent, startWorld, waitUntil } from './harness.js';
import type { World } from './harness.js';
import { startProxy } from './proxy.js';

const exec = promisify(execFile);
const worlds: World[] = [];
afterEach(async () => {
  await killAll();
});
after(async () => {
  for (const w of worlds) await w.close();
});

async function world(options: { heartbeatTimeoutMs?: number } = {}): Promise<World> {
  const w = await startWorld(options);
  worlds.push(w);
  return w;
}

async function machines(w: World, site?: string): Promise<Machine[]> {
  const r = await w.api<{ items: (Machine & { siteName?: string })[] }>(
    'GET',
    '/vaults/default/machines?limit=1000',
  );
  if (site === undefined) return r.body.items;
  const s = await w.api<{ id: string }>('GET', `/vaults/default/sites/${site}`);
  return r.body.items.filter((m) => m.siteId === s.body.id);
}

async function machine(w: World, site: string, name: string): Promise<Machine | undefined> {
  return (await machines(w, site)).find((m) => m.name === name);
}

function fabricPid(dataDir: string, name: string): number | undefined {
  const state = JSON.parse(readFileSync(join(dataDir, 'fabric', 'fabric-state.json'), 'utf8')) as {
    machines: Record<string, { pid?: number }>;
  };
  return state.machines[name]?.pid;
}

void test('registers with a key, keeps its credential (0600), reports inventory and reuses the credential on restart', async () => {
  const w = await world();
  const key = await w.keyFile('alpha');
  const siteDir = await w.siteDir('alpha', [
    { name: 'web', host: 'host1', memoryMb: 256, cpus: 1, ip: '10.1.1.11' },
  ]);
  const dataDir = join(w.tmp, 'agent-alpha');
  const a = await startAgent(w, { site: 'alpha', siteDir, dataDir, keyFile: key });
  const credFile = join(dataDir, 'credential.json');
  assert.equal(statSync(credFile).mode & 0o777, 0o600);
  const cred = JSON.parse(readFileSync(credFile, 'utf8')) as { agentId: string; siteName: string };
  assert.equal(cred.siteName, 'alpha');
  const agents = await w.agents();
  assert.deepEqual(
    agents.map((x) => [x.id, x.connection]),
    [[cred.agentId, 'Connected']],
  );
  const web = await waitUntil('web in the inventory, running', async () => {
    const m = await machine(w, 'alpha', 'web');
    return m?.powerState === 'Running' ? m : undefined;
  });
  assert.match(web.disks[0]?.nbdUri ?? '', /^nbd:\/\/127\.0\.0\.1:\d+\/web-disk0$/);
  const detail = await w.api<{ certificatePem: string | null; dataAddress: string | null }>(
    'GET',
    `/vaults/default/agents/${cred.agentId}`,
  );
  assert.match(detail.body.certificatePem ?? '', /BEGIN CERTIFICATE/);
  // The harness gives each agent a loopback address of its own (the port is picked once).
  assert.match(detail.body.dataAddress ?? '', /^127\.\d+\.\d+\.\d+:\d+$/);
  const stopped = await a.stop();
  assert.equal(stopped.code, 0, a.err());

  // Restart without a key: the stored credential is used, no second registration.
  const b = await startAgent(w, { site: 'alpha', siteDir, dataDir });
  assert.match(b.out(), new RegExp(`osr agent ${cred.agentId} running`));
  assert.equal((await w.agents()).length, 1);
  await b.stop();
});

void test('an unknown key and an expired key are refused with the API code and a non-zero exit', async () => {
  const w = await world();
  const siteDir = await w.siteDir('beta');
  const good = await w.keyFile('beta');
  const unknown = join(w.tmp, 'unknown.key.json');
  writeFileSync(unknown, JSON.stringify({ ...JSON.parse(readFileSync(good, 'utf8')), key: 'x'.repeat(43) }));
  const u = spawnOsr([
    'agent',
    '--site',
    'beta',
    '--server',
    w.server.url,
    '--site-dir',
    siteDir,
    '--data',
    join(w.tmp, 'a1'),
    '--key',
    unknown,
  ]);
  const ue = await u.exited;
  assert.notEqual(ue.code, 0);
  assert.match(u.err(), /\(REGISTRATION_KEY_INVALID\)/);

  w.clock.offsetMs = 6 * 24 * 3600_000; // the key is now older than 5 days
  try {
    const e = spawnOsr([
      'agent',
      '--site',
      'beta',
      '--server',
      w.server.url,
      '--site-dir',
      siteDir,
      '--data',
      join(w.tmp, 'a2'),
      '--key',
      good,
    ]);
    const ee = await e.exited;
    assert.notEqual(ee.code, 0);
    assert.match(e.err(), /\(REGISTRATION_KEY_EXPIRED\)/);
  } finally {
    w.clock.offsetMs = 0;
  }
  assert.deepEqual(await w.agents(), [], 'no agent was registered');
});

void test('heartbeat loss shows the agent Disconnected; a restarted agent is Connected again', async () => {
  const w = await world({ heartbeatTimeoutMs: 1200 });
  const key = await w.keyFile('gamma');
  const siteDir = await w.siteDir('gamma');
  const dataDir = join(w.tmp, 'agent-gamma');
  const a = await startAgent(w, { site: 'gamma', siteDir, dataDir, keyFile: key });
  // Connected for longer than the timeout: heartbeats keep coming at the interval the server gave.
  await new Promise((r) => setTimeout(r, 1800));
  assert.equal((await w.agents())[0]?.connection, 'Connected');
  await a.stop('SIGKILL');
  await waitUntil('Disconnected', async () => (await w.agents())[0]?.connection === 'Disconnected', 10_000);
  const b = await startAgent(w, { site: 'gamma', siteDir, dataDir });
  await waitUntil('Connected again', async () => (await w.agents())[0]?.connection === 'Connected', 10_000);
  assert.equal((await w.agents()).length, 1, 'the same agent, not a new registration');
  await b.stop();
});

void test('inventory follows changes of site.json and machine.json; containers are synced all or some', async () => {
  const w = await world();
  const key = await w.keyFile('delta');
  const siteDir = await w.siteDir('delta', [
    { name: 'web', host: 'host1', memoryMb: 256, cpus: 1, ip: null },
  ]);
  const a = await startAgent(w, {
    site: 'delta',
    siteDir,
    dataDir: join(w.tmp, 'agent-delta'),
    keyFile: key,
  });
  await waitUntil('web', () => machine(w, 'delta', 'web'));

  const mfile = join(siteDir, 'machines', 'web', 'machine.json');
  const m = JSON.parse(readFileSync(mfile, 'utf8')) as Record<string, unknown>;
  writeFileSync(mfile, JSON.stringify({ ...m, cpus: 3 }));
  await waitUntil('cpus 3', async () => (await machine(w, 'delta', 'web'))?.cpus === 3);

  const sfile = join(siteDir, 'site.json');
  const site = JSON.parse(readFileSync(sfile, 'utf8')) as { networks: unknown[]; containers: unknown[] };
  site.networks.push({ name: 'backup', subnets: [{ name: 'b1', cidr: '172.16.0.0/16' }] });
  site.containers = [{ name: 'default' }, { name: 'second' }];
  writeFileSync(sfile, JSON.stringify(site));
  await waitUntil('network backup and container second', async () => {
    const nets = await w.api<{ name: string }[] | { items: { name: string }[] }>(
      'GET',
      '/vaults/default/sites/delta/networks',
    );
    const cons = await w.api<{ name: string }[] | { items: { name: string }[] }>(
      'GET',
      '/vaults/default/sites/delta/containers',
    );
    const names = (b: { name: string }[] | { items: { name: string }[] }) =>
      (Array.isArray(b) ? b : b.items).map((x) => x.name);
    return names(nets.body).includes('backup') && names(cons.body).includes('second');
  });

  // A second machine in the second container (R-INF-6: two containers on one site), then sync only `default` (R-INF-5).
  const db = {
    ...m,
    name: 'db',
    container: 'second',
    disks: [{ id: 'disk0', datastore: 'datastore1', path: 'db/disk0.img', sizeBytes: 1048576 }],
    autostart: false,
  };
  const { mkdirSync } = await import('node:fs');
  mkdirSync(join(siteDir, 'machines', 'db'));
  writeFileSync(join(siteDir, 'machines', 'db', 'machine.json'), JSON.stringify(db));
  await waitUntil('db in container second', async () => (await machine(w, 'delta', 'db')) !== undefined);
  writeFileSync(sfile, JSON.stringify({ ...site, sync: ['default'] }));
  await waitUntil(
    'db left out once only default is synced',
    async () => (await machine(w, 'delta', 'db')) === undefined,
  );
  assert.ok(await machine(w, 'delta', 'web'));

  // An invalid machine.json is left out (and named in the log), the rest stays.
  writeFileSync(mfile, JSON.stringify({ ...m, memoryMb: -1 }));
  await a.waitFor(/machine\.json: memoryMb: must be an integer/);
  await a.stop();
});

void test('power operations and machine lifecycle run as commands; the seed errors come back with catalog codes', async () => {
  const w = await world();
  const key = await w.keyFile('eps');
  const siteDir = await w.siteDir(
    'eps',
    [
      { name: 'web', host: 'host1', memoryMb: 256, cpus: 1, ip: '10.1.1.11' },
      { name: 'big', host: 'host2', memoryMb: 2048, cpus: 1, ip: null },
    ],
    [4096, 1024],
  );
  // A datastore only host1 reaches, and a machine on host2 with a disk there.
  const sfile = join(siteDir, 'site.json');
  const site = JSON.parse(readFileSync(sfile, 'utf8')) as { datastores: unknown[] };
  site.datastores.push({ name: 'local1', folder: 'datastores/datastore1', hosts: ['host1'] });
  writeFileSync(sfile, JSON.stringify(site));
  const bigFile = join(siteDir, 'machines', 'big', 'machine.json');
  writeFileSync(bigFile, JSON.stringify({ ...JSON.parse(readFileSync(bigFile, 'utf8')), autostart: false }));
  const { mkdirSync } = await import('node:fs');
  mkdirSync(join(siteDir, 'machines', 'far'));
  writeFileSync(
    join(siteDir, 'machines', 'far', 'machine.json'),
    JSON.stringify({
      name: 'far',
      host: 'host2',
      cpus: 1,
      memoryMb: 128,
      command: ['osr', 'workload', 'ledger'],
      disks: [{ id: 'disk0', datastore: 'local1', path: 'far/disk0.img', sizeBytes: 1048576 }],
    }),
  );
  const dataDir = join(w.tmp, 'agent-eps');
  const a = await startAgent(w, { site: 'eps', siteDir, dataDir, keyFile: key });
  await waitUntil('web running', async () => (await machine(w, 'eps', 'web'))?.powerState === 'Running');

  const expectFailure = async (
    id: string,
    type: string,
    payload: unknown,
    code: keyof typeof ERROR_CATALOG,
    seed: number | null,
  ) => {
    await w.enqueue('eps', id, type, payload);
    const r = await w.result(id);
    assert.equal(r.state, 'Failed', `${type} ${JSON.stringify(payload)} should fail`);
    assert.equal(r.error?.code, code);
    assert.equal(r.error?.seedCode, seed);
    assert.equal(r.error?.recommendedAction, ERROR_CATALOG[code].recommendedAction);
  };
  const expectOk = async (id: string, type: string, payload: unknown) => {
    await w.enqueue('eps', id, type, payload);
    const r = await w.result(id);
    assert.equal(r.state, 'Succeeded', `${type}: ${JSON.stringify(r.error)}`);
    return r.result;
  };

  await expectFailure('c-mem', 'machine.powerOn', { name: 'big' }, 'TARGET_HOST_OUT_OF_MEMORY', 8038);
  await expectFailure('c-ds', 'machine.powerOn', { name: 'far' }, 'DATASTORE_NOT_ACCESSIBLE', 8061);
  await expectFailure(
    'c-name',
    'machine.create',
    { name: 'web', host: 'host2', cpus: 1, memoryMb: 128, disks: [], nics: [] },
    'MACHINE_NAME_CONFLICT',
    78052,
  );
  await expectFailure('c-check-stopped', 'machine.check', { name: 'big' }, 'MACHINE_NOT_RUNNING', 78093);

  // machine.snapshots (R-RP-9): the snapshots the site folder records for a machine, running or not.
  assert.deepEqual(await expectOk('c-snap-web', 'machine.snapshots', { name: 'web' }), {
    machine: 'web',
    snapshots: [],
  });
  writeFileSync(
    bigFile,
    JSON.stringify({ ...JSON.parse(readFileSync(bigFile, 'utf8')), snapshots: ['before-upgrade'] }),
  );
  let probe = 0;
  const snapped = await waitUntil('the agent to see the snapshot of big', async () => {
    const r = (await expectOk(`c-snap-big-${probe++}`, 'machine.snapshots', { name: 'big' })) as {
      snapshots: string[];
    };
    return r.snapshots.length > 0 ? r : undefined;
  });
  assert.deepEqual(snapped, { machine: 'big', snapshots: ['before-upgrade'] });
  await expectFailure('c-snap-nobody', 'machine.snapshots', { name: 'nobody' }, 'NOT_FOUND', null);
  await expectFailure('c-snap-bad', 'machine.snapshots', {}, 'VALIDATION_FAILED', null);

  // A running machine that stopped responding (SIGSTOP) is not running for the check either.
  const pid = fabricPid(dataDir, 'web');
  assert.ok(pid !== undefined && alive(pid));
  await expectOk('c-check-ok', 'machine.check', { name: 'web' });
  process.kill(pid, 'SIGSTOP');
  try {
    await expectFailure('c-check-hung', 'machine.check', { name: 'web' }, 'MACHINE_NOT_RUNNING', 78093);
  } finally {
    process.kill(pid, 'SIGCONT');
  }

  await expectOk('c-shutdown', 'machine.shutdown', { name: 'web', timeoutMs: 5000 });
  assert.equal(alive(pid), false, 'the machine process ended');
  await waitUntil('web Stopped', async () => (await machine(w, 'eps', 'web'))?.powerState === 'Stopped');
  await expectOk('c-on', 'machine.powerOn', { name: 'web' });
  await waitUntil('web Running', async () => (await machine(w, 'eps', 'web'))?.powerState === 'Running');
  await expectOk('c-off', 'machine.powerOff', { name: 'web' });
  await waitUntil(
    'web Stopped again',
    async () => (await machine(w, 'eps', 'web'))?.powerState === 'Stopped',
  );

  // Create from disks with NICs (what failover does), power it on, then delete it.
  await expectOk('c-create', 'machine.create', {
    name: 'copy',
    host: 'host1',
    cpus: 1,
    memoryMb: 128,
    origin: 'failover',
    command: ['osr', 'workload', 'ledger', '--rate', '20'],
    disks: [
      {
        id: 'disk0',
        datastore: 'datastore1',
        sizeBytes: 1048576,
        sourceFile: join(siteDir, 'datastores', 'datastore1', 'web', 'disk0.img'),
      },
    ],
    nics: [{ network: 'dr', subnet: 'front', ip: '10.101.1.20' }],
    powerOn: true,
  });
  const copy = await waitUntil('copy running', async () => {
    const m = await machine(w, 'eps', 'copy');
    return m?.powerState === 'Running' ? m : undefined;
  });
  assert.equal(copy.origin, 'failover');
  assert.deepEqual(copy.nics, [{ network: 'dr', subnet: 'front', ip: '10.101.1.20' }]);
  assert.match(copy.disks[0]?.nbdUri ?? '', /\/copy-disk0$/);
  await expectOk('c-copy-off', 'machine.powerOff', { name: 'copy' });
  const deleted = (await expectOk('c-delete', 'machine.delete', { name: 'copy', deleteDisks: true })) as {
    deleted: boolean;
  };
  assert.equal(deleted.deleted, true);
  await waitUntil('copy gone', async () => (await machine(w, 'eps', 'copy')) === undefined);
  await expectOk('c-delete-again', 'machine.delete', { name: 'copy' });

  // Replication commands: a replica and a journal on the same site (the agent is its own peer, R-INF-6).
  const self = await w.store.agents.findBySite(
    (await w.store.sites.get((await w.store.vaults.get('default')).id, 'eps')).id,
  );
  assert.ok(self);
  const peer = {
    agentId: self.id,
    siteId: self.siteId,
    dataAddress: self.dataAddress,
    certificatePem: self.certificatePem,
  };
  const prep = (await expectOk('c-prep', 'replica.prepare', {
    itemId: 'item-1',
    machine: { id: 'm1', name: 'web' },
    disks: [{ id: 'disk0', sizeBytes: 1048576 }],
    peer,
  })) as { replicaPath: string };
  assert.ok(statSync(join(prep.replicaPath, 'replica.json')).isFile());
  await expectFailure(
    'c-start-nopeer',
    'replication.start',
    { itemId: 'item-1', machine: { id: 'm1', name: 'web' }, disks: [{ id: 'disk0', sizeBytes: 1048576 }] },
    'AGENT_NOT_REGISTERED',
    null,
  );
  const started = (await expectOk('c-start', 'replication.start', {
    itemId: 'item-1',
    machine: { id: 'm1', name: 'web' },
    disks: [{ id: 'disk0', sizeBytes: 1048576 }],
    peer,
  })) as { shipping: boolean };
  assert.equal(started.shipping, true, 'the disk is journaled and shipped');
  await expectOk('c-stop', 'replication.stop', { itemId: 'item-1' });
  await expectOk('c-del', 'replica.delete', { itemId: 'item-1' });
  assert.throws(() => statSync(prep.replicaPath));
  await expectFailure('c-unknown', 'machine.teleport', { name: 'web' }, 'OPERATION_UNAVAILABLE', null);
  await a.stop();
});

void test('an unreachable control plane is logged as CONTROL_PLANE_UNREACHABLE (95226) and the agent comes back when it returns', async () => {
  const w = await world();
  const key = await w.keyFile('zeta');
  const siteDir = await w.siteDir('zeta');
  const proxy = await startProxy();
  try {
    // Through a proxy the test can cut: closing it makes the control plane unreachable for the agent.
    const a = await startAgent(w, {
      site: 'zeta',
      siteDir,
      dataDir: join(w.tmp, 'agent-zeta'),
      keyFile: key,
      extra: ['--proxy', proxy.url],
    });
    await proxy.close();
    await a.waitFor(/CONTROL_PLANE_UNREACHABLE/, 15_000);
    assert.match(a.err(), /"seedCode":95226/);
    assert.equal(a.child.exitCode, null, 'the agent keeps retrying');
    const back = await startProxy(undefined, undefined, proxy.port);
    try {
      await a.waitFor(/control plane reachable again/, 15_000);
      await waitUntil('heartbeats through the new proxy', () =>
        back.seen.includes('POST /api/v1/agent/heartbeat'),
      );
    } finally {
      await a.stop();
      await back.close();
    }
  } finally {
    await proxy.close();
  }
  // Direct: the agent started while the server is away retries registration, then registers.
  const b = spawnOsr([
    'agent',
    '--site',
    'zeta',
    '--server',
    'http://127.0.0.1:9',
    '--site-dir',
    siteDir,
    '--data',
    join(w.tmp, 'agent-zeta2'),
    '--key',
    key,
    '--backoff-max',
    '200',
  ]);
  await b.waitFor(/CONTROL_PLANE_UNREACHABLE/);
  await b.stop();
});

void test('--exit-with-parent: an agent still waiting to register stops when the process that started it ends', async () => {
  const w = await world();
  const key = await w.keyFile('theta');
  const siteDir = await w.siteDir('theta');
  // A parent that starts the agent against an address where nothing answers, prints the agent's
  // pid and exits at once: the agent is left retrying registration with a dead parent.
  const script = [
    "const { spawn } = require('node:child_process');",
    `const c = spawn(process.execPath, ${JSON.stringify([
      BIN,
      'agent',
      '--site',
      'theta',
      '--server',
      'http://127.0.0.1:9',
      '--site-dir',
      siteDir,
      '--data',
      join(w.tmp, 'agent-theta'),
      '--key',
      key,
      '--backoff-max',
      '200',
      '--exit-with-parent',
    ])}.concat(String(process.pid)), { stdio: 'ignore', detached: true });`,
    'console.log(c.pid); c.unref();',
  ].join('\n');
  const { stdout } = await exec(process.execPath, ['-e', script]);
  const pid = Number(stdout.trim());
  assert.ok(Number.isInteger(pid) && pid > 0);
  try {
    await waitUntil('the orphaned agent to stop', () => !alive(pid), 15_000);
  } finally {
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
});

void test('through an HTTP proxy with credentials: every control-plane request goes via the proxy', async () => {
  const w = await world();
  const key = await w.keyFile('eta');
  const siteDir = await w.siteDir('eta');
  const proxy = await startProxy('agent', 's3cret:!');
  try {
    const a = await startAgent(w, {
      site: 'eta',
      siteDir,
      dataDir: join(w.tmp, 'agent-eta'),
      keyFile: key,
      extra: ['--proxy', proxy.url],
    });
    await waitUntil('register, heartbeat, inventory and a poll through the proxy', () =>
      [
        'POST /api/v1/agent/register',
        'POST /api/v1/agent/heartbeat',
        'PUT /api/v1/agent/inventory',
        'GET /api/v1/agent/commands',
      ].every((r) => proxy.seen.includes(r)),
    );
    assert.equal(proxy.refused, 0, 'the credentials were sent');
    await a.stop();
    const wrong = await startProxy('agent', 'other');
    try {
      const b = spawnOsr([
        'agent',
        '--site',
        'eta',
        '--site-dir',
        siteDir,
        '--data',
        join(w.tmp, 'agent-eta'),
        '--proxy',
        wrong.url.replace('other', 'nope'),
        '--backoff-max',
        '200',
      ]);
      await b.waitFor(/CONTROL_PLANE_UNREACHABLE/);
      assert.ok(wrong.refused > 0);
      await b.stop();
    } finally {
      await wrong.close();
    }
  } finally {
    await proxy.close();
  }
});

void test('kill -9 and restart: same credential, running machines adopted, a command run once even if its result was lost', async () => {
  const w = await world();
  const key = await w.keyFile('theta');
  const siteDir = await w.siteDir('theta', [
    { name: 'web', host: 'host1', memoryMb: 256, cpus: 1, ip: null },
  ]);
  const dataDir = join(w.tmp, 'agent-theta');
  const proxy = await startProxy();
  try {
    const a = await startAgent(w, {
      site: 'theta',
      siteDir,
      dataDir,
      keyFile: key,
      extra: ['--proxy', proxy.url],
    });
    const agentId = (await w.agents())[0]?.id;
    await waitUntil('web running', async () => (await machine(w, 'theta', 'web'))?.powerState === 'Running');
    const pid = fabricPid(dataDir, 'web');
    assert.ok(pid !== undefined);

    proxy.blockResults = true;
    await w.enqueue('theta', 'once-1', 'replica.prepare', {
      itemId: 'item-k',
      machine: { id: 'm', name: 'web' },
      disks: [{ id: 'disk0', sizeBytes: 1048576 }],
    });
    const logFile = join(dataDir, 'commands.jsonl');
    await waitUntil('the command ran and its outcome was logged', () =>
      readFileSync(logFile, 'utf8').includes('"event":"done"'),
    );
    await waitUntil('the agent tried to report it', () =>
      proxy.seen.includes('POST /api/v1/agent/commands/once-1/result'),
    );
    assert.equal((await w.store.commands.find('once-1'))?.state, 'Delivered');
    await a.stop('SIGKILL');
    assert.ok(alive(pid), 'the machine outlives its agent');

    const b = await startAgent(w, { site: 'theta', siteDir, dataDir });
    const r = await w.result('once-1');
    assert.equal(r.state, 'Succeeded');
    const starts = readFileSync(logFile, 'utf8')
      .split('\n')
      .filter((l) => l.includes('"id":"once-1"') && l.includes('"event":"started"'));
    assert.equal(starts.length, 1, 'the redelivered command was answered from the log, not run again');
    assert.deepEqual(
      (await w.agents()).map((x) => x.id),
      [agentId],
      'no new registration',
    );
    assert.equal(fabricPid(dataDir, 'web'), pid, 'the running machine was adopted, not restarted');
    assert.equal((await machine(w, 'theta', 'web'))?.powerState, 'Running');
    await b.stop();
    assert.equal(alive(pid), false, 'a clean agent stop shuts its machines down');
  } finally {
    await proxy.close();
  }
});
