/**
 * The control plane's durability promise, end to end: `osr server` is SIGKILLed while
 * an Enable protection job waits for an agent's answer in its third step; a new
 * `osr server` on the same data folder resumes the job at that step, and no step's
 * effect (a command to an agent) happens twice. Agents are played over the agent
 * protocol (the real agent is its own issue); they execute commands idempotently by id.
 */
import { after, before, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, spawnOsr } from '../cli/harness.js';
import type { RunningOsr } from '../cli/harness.js';

interface Server {
  proc: RunningOsr;
  url: string;
}

async function startServer(dataDir: string, extra: string[] = []): Promise<Server> {
  const proc = spawnOsr(['server', '--data', dataDir, '--port', '0', ...extra], {
    env: cleanEnv({ OSR_LOG_LEVEL: 'warn' }),
  });
  const m = await proc.waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
  return { proc, url: m[1] ?? '' };
}

async function call<T>(
  server: Server,
  token: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const res = await fetch(`${server.url}/api/v1${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: (text === '' ? undefined : JSON.parse(text)) as T };
}

async function ok<T>(p: Promise<{ status: number; body: T }>): Promise<T> {
  const r = await p;
  assert.ok(r.status < 300, `HTTP ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body;
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Job {
  id: string;
  state: string;
  attempts: number;
  error: { code: string } | null;
  steps: { name: string; state: string; output: unknown }[];
}

/** A played agent: executes each command id once, whatever the redeliveries. */
class PlayedAgent {
  readonly executed = new Map<string, string>();
  readonly held = new Set<string>();
  answerStart = false;
  /** The command type it holds unanswered until `answerStart`. */
  holdType = 'replication.start';

  constructor(
    readonly credential: string,
    readonly name: string,
  ) {}

  /** One round: heartbeat, take commands, answer those it may answer now. */
  async round(server: Server): Promise<void> {
    await ok(call(server, this.credential, 'POST', '/agent/heartbeat', {}));
    const { commands } = await ok(
      call<{ commands: { id: string; type: string }[] }>(
        server,
        this.credential,
        'GET',
        `/agent/commands?waitMs=100&session=${this.name}`,
      ),
    );
    for (const c of commands) {
      if (!this.executed.has(c.id)) this.executed.set(c.id, c.type);
      if (c.type === this.holdType && !this.answerStart) {
        this.held.add(c.id);
        continue;
      }
      await ok(
        call(server, this.credential, 'POST', `/agent/commands/${c.id}/result`, { state: 'Succeeded' }),
      );
    }
    if (this.answerStart) {
      for (const id of this.held) {
        await ok(
          call(server, this.credential, 'POST', `/agent/commands/${id}/result`, { state: 'Succeeded' }),
        );
      }
      this.held.clear();
    }
  }
}

/** Two sites with played agents, inventory (machine `web` at primary) and policy `gold`. */
async function playWorld(server: Server, token: string): Promise<[PlayedAgent, PlayedAgent]> {
  const admin = <T>(method: string, path: string, body?: unknown) =>
    ok(call<T>(server, token, method, path, body));
  await admin('POST', '/vaults/default/sites', { name: 'primary', kind: 'onprem' });
  await admin('POST', '/vaults/default/sites', { name: 'recovery', kind: 'onprem' });
  const agents: PlayedAgent[] = [];
  for (const site of ['primary', 'recovery']) {
    const key = await admin<{ keyFile: { key: string } }>('POST', `/vaults/default/sites/${site}/keys`, {});
    const reg = await ok(
      call<{ credential: string }>(server, '', 'POST', '/agent/register', {
        key: key.keyFile.key,
        friendlyName: `${site}-agent`,
        version: 'played',
      }),
    );
    const agent = new PlayedAgent(reg.credential, site);
    agents.push(agent);
    await ok(
      call(server, reg.credential, 'PUT', '/agent/inventory', {
        hosts: [{ name: 'h1', memoryMb: 4096, freeMemoryMb: 4096, cpus: 2 }],
        datastores: [{ name: 'ds1', hostNames: ['h1'], type: 'file' }],
        networks: [{ name: 'prod', subnets: [{ name: 's1', cidr: '10.0.0.0/24' }] }],
        containers: [{ name: 'cloud' }],
        machines:
          site === 'primary'
            ? [
                {
                  name: 'web',
                  container: 'cloud',
                  hostName: 'h1',
                  cpus: 1,
                  memoryMb: 256,
                  osType: 'linux',
                  hypervisor: 'process',
                  powerState: 'Running',
                  guestTools: 'Installed',
                  origin: 'inventory',
                  disks: [
                    {
                      id: 'disk0',
                      sizeBytes: 1048576,
                      datastore: 'ds1',
                      path: 'web/disk0.raw',
                      nbdUri: null,
                    },
                  ],
                  nics: [{ network: 'prod', subnet: 's1', ip: null }],
                },
              ]
            : [],
      }),
    );
  }
  await admin('POST', '/vaults/default/policies', {
    name: 'gold',
    copyFrequencySeconds: 30,
    retentionHours: 24,
  });
  return agents as [PlayedAgent, PlayedAgent];
}

describe('osr server killed mid-job', () => {
  let dataDir: string;
  const servers: Server[] = [];
  before(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'osr-crash-'));
  });
  after(async () => {
    for (const s of servers) {
      if (s.proc.child.exitCode === null && s.proc.child.signalCode === null) s.proc.child.kill('SIGKILL');
      await s.proc.exited;
    }
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('resumes the job at the interrupted step after a restart; no effect happens twice', async () => {
    let server = await startServer(dataDir);
    servers.push(server);
    const token = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
    const admin = <T>(method: string, path: string, body?: unknown) =>
      ok(call<T>(server, token, method, path, body));

    const [primary, recovery] = await playWorld(server, token);
    const started = await admin<{ job: Job; item: { id: string } }>('POST', '/vaults/default/items', {
      machine: 'web',
      policy: 'gold',
      targetSite: 'recovery',
    });
    const jobId = started.job.id;
    const itemId = started.item.id;

    // Play both agents until the job sits in "Start replication" with the command held.
    await until('the job to wait in Start replication', async () => {
      await primary.round(server);
      await recovery.round(server);
      const job = await admin<Job>('GET', `/jobs/${jobId}`);
      return job.steps[2]?.state === 'InProgress' && primary.held.size === 1 ? job : undefined;
    });

    server.proc.child.kill('SIGKILL');
    const killed = await server.proc.exited;
    assert.equal(killed.signal, 'SIGKILL');

    server = await startServer(dataDir);
    servers.push(server);
    primary.answerStart = true;
    const done = await until('the job to end', async () => {
      await primary.round(server);
      await recovery.round(server);
      await ok(
        call(server, recovery.credential, 'POST', '/agent/replication-status', {
          items: [
            {
              itemId,
              initialReplicationProgress: primary.held.size === 0 ? 100 : 0,
              points: [{ sequence: 1, time: new Date().toISOString(), type: 'crash-consistent' }],
            },
          ],
        }),
      );
      const job = await admin<Job>('GET', `/jobs/${jobId}`);
      return ['Succeeded', 'Failed', 'Cancelled'].includes(job.state) ? job : undefined;
    });
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    assert.deepEqual(
      done.steps.map((s) => s.state),
      ['Succeeded', 'Succeeded', 'Succeeded', 'Succeeded', 'Succeeded'],
    );
    assert.equal(done.attempts, 2, 'taken over once, by the restarted server');

    // Every effect happened once: one command of each kind, each executed once by id.
    assert.deepEqual([...recovery.executed.values()], ['replica.prepare']);
    assert.deepEqual([...primary.executed.values()], ['replication.start']);

    const item = await until('the item to be Protected', async () => {
      const i = await admin<{ protectionState: string }>('GET', `/vaults/default/items/${itemId}`);
      return i.protectionState === 'Protected' ? i : undefined;
    });
    assert.equal(item.protectionState, 'Protected');
  });

  it('an unplanned failover resumes after a kill in "Create the machine at the target"; each command runs once', async () => {
    const dir = join(dataDir, 'failover');
    let server = await startServer(dir);
    servers.push(server);
    const token = readFileSync(join(dir, 'admin-token'), 'utf8').trim();
    const admin = <T>(method: string, path: string, body?: unknown) =>
      ok(call<T>(server, token, method, path, body));
    const [primary, recovery] = await playWorld(server, token);
    primary.answerStart = true;
    const started = await admin<{ job: Job; item: { id: string } }>('POST', '/vaults/default/items', {
      machine: 'web',
      policy: 'gold',
      targetSite: 'recovery',
    });
    const itemId = started.item.id;
    await until('the item to be Protected', async () => {
      await primary.round(server);
      await recovery.round(server);
      await ok(
        call(server, recovery.credential, 'POST', '/agent/replication-status', {
          items: [
            {
              itemId,
              initialReplicationProgress: 100,
              points: [{ sequence: 1, time: new Date().toISOString(), type: 'crash-consistent' }],
            },
          ],
        }),
      );
      const i = await admin<{ protectionState: string }>('GET', `/vaults/default/items/${itemId}`);
      return i.protectionState === 'Protected' ? i : undefined;
    });

    recovery.holdType = 'machine.create';
    const failover = await admin<{ job: Job }>('POST', '/vaults/default/items/web/unplanned-failover', {
      point: 'latest-processed',
      shutdownSource: true,
    });
    const jobId = failover.job.id;
    await until('the failover to wait in "Create the machine at the target"', async () => {
      await primary.round(server);
      await recovery.round(server);
      const job = await admin<Job>('GET', `/jobs/${jobId}`);
      return job.steps[6]?.state === 'InProgress' && recovery.held.size === 1 ? job : undefined;
    });

    server.proc.child.kill('SIGKILL');
    assert.equal((await server.proc.exited).signal, 'SIGKILL');
    server = await startServer(dir);
    servers.push(server);
    recovery.answerStart = true;
    const done = await until('the failover to end', async () => {
      await primary.round(server);
      await recovery.round(server);
      const job = await admin<Job>('GET', `/jobs/${jobId}`);
      return ['Succeeded', 'Failed', 'Cancelled'].includes(job.state) ? job : undefined;
    });
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    assert.deepEqual(
      done.steps.map((s) => s.name),
      [
        'Prerequisites check',
        'Shut down the source machine',
        'Stop replication',
        'Prepare the recovery point',
        'Expose disks at the recovery point',
        'Prepare the machine for the target',
        'Create the machine at the target',
        'Start the machine at the target',
        'Finalize failover',
      ],
    );
    assert.equal(done.attempts, 2, 'taken over once, by the restarted server');
    assert.deepEqual(
      [...primary.executed.values()],
      ['replication.start', 'machine.shutdown', 'replication.stop'],
    );
    assert.deepEqual(
      [...recovery.executed.values()],
      ['replica.prepare', 'replica.expose', 'machine.create', 'machine.powerOn'],
    );
    const item = await admin<{ protectionState: string; activeLocation: string }>(
      'GET',
      `/vaults/default/items/${itemId}`,
    );
    assert.equal(item.protectionState, 'FailedOver');
    assert.equal(item.activeLocation, 'recovery');
  });
});
