/**
 * The workflows test world: a real store (SQLite; PostgreSQL in its own schema when
 * OSR_TEST_PG is set), a real jobs engine and the workflows, two sites with inventory
 * and a policy, and scripted site agents that answer the command queue the way
 * `osr agent` does (every command type of docs/agent-protocol.md, with plausible
 * results) and send status reports. A test can make a command fail with a catalog code
 * or hold it unanswered.
 */
import type { Store } from '../../src/store/store.js';
import { openPostgresTestStore, openSqliteTestStore, testPostgresUrl } from '../../src/store/testing.js';
import type { TestStore } from '../../src/store/testing.js';
import { JobEngine } from '../../src/jobs/engine.js';
import type { Clock } from '../../src/jobs/types.js';
import { createWorkflows } from '../../src/workflows/index.js';
import type { Workflows } from '../../src/workflows/index.js';
import type { Agent, AgentCommand, Job, SiteKind } from '../../src/domain/model.js';

/** A failure a scripted agent answers with. */
export interface ScriptedFailure {
  code: string;
  message: string;
  seedCode?: number;
}

/**
 * Decides a command's fate: undefined = succeed; a failure (or a message, failed as
 * DATASTORE_NOT_ACCESSIBLE) = fail; the string `hold` = leave it unanswered.
 */
export type Script = (c: AgentCommand) => string | ScriptedFailure | undefined;

export interface Env {
  store: Store;
  engine: JobEngine;
  workflows: Workflows;
  vaultId: string;
  primarySiteId: string;
  recoverySiteId: string;
  primary: Agent | undefined;
  recovery: Agent | undefined;
  /** Site name of each agent started here, by agent id. */
  siteOf: Map<string, string>;
  /** Every command the scripted agents answered, in order. */
  seen: AgentCommand[];
  /** Commands held unanswered (script returned 'hold'). */
  held: AgentCommand[];
  /** Replaced by tests to script failures. */
  script: Script;
  /** Snapshots the agents report for a machine (`machine.snapshots`), by `site/machine` (e.g. `primary/web`). */
  snapshots: Map<string, string[]>;
  /** Starts a scripted agent for an agent row; returns its stop function. */
  startAgent(agent: Agent): () => Promise<void>;
  /** Stops the scripted loop of an agent started by `registerAgent`. */
  stopAgent(agentId: string): Promise<void>;
  /** Registers (creates) an agent for a site and starts its script. */
  registerAgent(siteId: string, name: string): Promise<Agent>;
  stop(): Promise<void>;
}

export interface SetupOptions {
  withRecoveryAgent?: boolean;
  withPrimaryAgent?: boolean;
  primaryKind?: SiteKind;
  recoveryKind?: SiteKind;
  clock?: Clock;
  /** Use this store (e.g. reopened by a second engine) instead of a new one. */
  dialect?: 'sqlite' | 'postgres';
}

/** The dialects to run on: SQLite, and PostgreSQL when OSR_TEST_PG is set. */
export function dialects(): ('sqlite' | 'postgres')[] {
  return testPostgresUrl() === undefined ? ['sqlite'] : ['sqlite', 'postgres'];
}

export async function waitUntil<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function jobEnded(store: Store, id: string): Promise<Job> {
  return waitUntil(`job ${id} to end`, async () => {
    const j = await store.jobs.get(id);
    return ['Succeeded', 'Failed', 'Cancelled'].includes(j.state) ? j : undefined;
  });
}

export async function jobSettled(store: Store, id: string): Promise<Job> {
  return waitUntil(`job ${id} to end or wait`, async () => {
    const j = await store.jobs.get(id);
    return ['Succeeded', 'Failed', 'Cancelled', 'WaitingForAction'].includes(j.state) ? j : undefined;
  });
}

interface ItemPayload {
  itemId: string;
  purpose?: string;
  point?: { sequence: number };
  disks?: { id: string; sizeBytes: number }[];
  minSequence?: number;
}

/** The result a well-behaved agent gives for a command (see docs/agent-protocol.md). */
function resultOf(c: AgentCommand, sequences: Map<string, number>, env: Env): unknown {
  const p = (c.payload ?? {}) as ItemPayload & Record<string, unknown>;
  const exposed = (sequence: number) => ({
    purpose: p.purpose,
    sequence,
    disks: (p.disks ?? [{ id: 'disk0', sizeBytes: 1 << 20 }]).map((d) => ({
      id: d.id,
      sizeBytes: d.sizeBytes,
      exportName: `${p.itemId}-${p.purpose}-${d.id}`,
      nbdUri: `nbd://127.0.0.1:10809/${p.itemId}-${p.purpose}-${d.id}`,
    })),
  });
  switch (c.type) {
    case 'replica.point': {
      const next = Math.max((sequences.get(p.itemId) ?? 100) + 10, p.minSequence ?? 0);
      sequences.set(p.itemId, next);
      return { sequence: next, time: new Date().toISOString(), type: 'crash-consistent' };
    }
    case 'replica.expose':
    case 'replica.swapPoint':
      return exposed(p.point?.sequence ?? 0);
    case 'replica.commit':
      return { sequence: sequences.get(p.itemId) ?? 0, disks: [] };
    case 'replication.drain':
      return { lastSequence: 150 };
    case 'machine.snapshots': {
      const name = p['name'] as string;
      const site = env.siteOf.get(c.agentId) ?? 'other';
      return { machine: name, snapshots: env.snapshots.get(`${site}/${name}`) ?? [] };
    }
    case 'replication.reverse':
      return { mode: (p['target'] as { location: string }).location === 'original' ? 'delta' : 'full' };
    case 'machine.create':
      return {
        name: p['name'],
        hostName: p['host'],
        cpus: p['cpus'],
        memoryMb: p['memoryMb'],
        osType: p['osType'],
        hypervisor: p['runtime'] ?? 'process',
        powerState: 'Stopped',
        guestTools: p['guestTools'],
        origin: p['origin'],
        disks: [],
        nics: p['nics'],
        container: p['container'],
      };
    default:
      return { ok: true };
  }
}

/** Creates the world. Agents heartbeat and answer until `stop`. */
export async function setup(options: SetupOptions = {}): Promise<Env> {
  const opened: TestStore =
    options.dialect === 'postgres' ? await openPostgresTestStore() : await openSqliteTestStore();
  const store = opened.store;
  const clock = options.clock;
  const engine = new JobEngine({ store, pollMs: 20, leaseMs: 5000, ...(clock ? { clock } : {}) });
  const workflows = createWorkflows({
    store,
    engine,
    pollMs: 20,
    ...(clock ? { clock, heartbeatTimeoutMs: 10 * 365 * 24 * 3600_000 } : {}),
  });
  workflows.register();
  engine.start();
  const vault = await store.vaults.create({ name: 'v1' });
  const now = new Date().toISOString();
  const p = await store.sites.create({
    vaultId: vault.id,
    name: 'primary',
    kind: options.primaryKind ?? 'onprem',
  });
  const r = await store.sites.create({
    vaultId: vault.id,
    name: 'recovery',
    kind: options.recoveryKind ?? 'onprem',
  });
  const snapshot = (machines: string[], networks: string[]) => ({
    hosts: [
      { name: 'h1', memoryMb: 8192, freeMemoryMb: 8192, cpus: 4 },
      { name: 'h2', memoryMb: 4096, freeMemoryMb: 4096, cpus: 2 },
    ],
    datastores: [
      { name: 'ds1', hostNames: ['h1', 'h2'], type: 'file' },
      { name: 'ds2', hostNames: ['h2'], type: 'file' },
    ],
    networks: networks.map((name) => ({
      name,
      subnets: [
        { name: 'default', cidr: '10.0.0.0/24' },
        { name: 'back', cidr: '10.0.1.0/24' },
      ],
    })),
    containers: [{ name: 'cloud1' }],
    machines: machines.map((name) => ({
      name,
      container: 'cloud1',
      hostName: 'h1',
      cpus: 1,
      memoryMb: 512,
      osType: 'linux' as const,
      hypervisor: 'process' as const,
      powerState: 'Running' as const,
      guestTools: 'Installed' as const,
      origin: 'inventory' as const,
      disks: [{ id: 'disk0', sizeBytes: 1 << 20, datastore: 'ds1', path: `${name}/disk0.raw`, nbdUri: null }],
      nics: [{ network: 'prod', subnet: 'default', ip: '10.0.0.5' }],
    })),
  });
  await store.inventory.replace(p.id, snapshot(['web', 'db'], ['prod']), now);
  await store.inventory.replace(r.id, snapshot(['db'], ['prod-dr', 'test-net']), now);
  await store.policies.create({
    vaultId: vault.id,
    name: 'gold',
    copyFrequencySeconds: 30,
    retentionHours: 24,
    appConsistentFrequencyHours: 4,
    compression: true,
    deleteReplicaOnDisable: true,
    initialReplication: { mode: 'now' },
    authentication: 'certificate',
    replicationPort: 9443,
    bandwidth: { limitMbps: null, windows: [] },
  });
  const createAgent = (siteId: string, name: string) =>
    store.agents.create({
      vaultId: vault.id,
      siteId,
      friendlyName: name,
      credentialHash: `hash-${name}-${Math.random()}`,
      version: 'test',
      dataAddress: '127.0.0.1:1',
      certificatePem: null,
      registeredAt: now,
      lastHeartbeatAt: now,
    });
  const sequences = new Map<string, number>();
  const agentStops = new Map<string, () => Promise<void>>();
  const stops: (() => Promise<void>)[] = [];
  const env: Env = {
    store,
    engine,
    workflows,
    vaultId: vault.id,
    primarySiteId: p.id,
    recoverySiteId: r.id,
    primary: undefined,
    recovery: undefined,
    siteOf: new Map(),
    seen: [],
    held: [],
    script: () => undefined,
    snapshots: new Map(),
    startAgent(agent) {
      let stopped = false;
      const loop = async (): Promise<void> => {
        while (!stopped) {
          const t = new Date().toISOString();
          await store.agents.update(agent.id, {
            lastHeartbeatAt: (clock?.now() ?? new Date()).toISOString(),
          });
          for (const c of await store.commands.takeForAgent(agent.id, t)) {
            if (env.seen.some((s) => s.id === c.id) || env.held.some((h) => h.id === c.id)) continue;
            const fate = env.script(c);
            if (fate === 'hold') {
              env.held.push(c);
              continue;
            }
            env.seen.push(c);
            if (fate !== undefined) {
              const f =
                typeof fate === 'string'
                  ? { code: 'DATASTORE_NOT_ACCESSIBLE', message: fate, seedCode: 8061 }
                  : fate;
              await store.commands.complete(
                c.id,
                'Failed',
                null,
                {
                  code: f.code,
                  message: f.message,
                  possibleCauses: 'scripted',
                  recommendedAction: 'scripted',
                  seedCode: f.seedCode ?? null,
                },
                t,
              );
              continue;
            }
            if (c.type === 'machine.delete') {
              // A real agent's inventory report often lands before the command's result.
              const gone = await store.machines.find(agent.siteId, (c.payload as { name: string }).name);
              if (gone !== undefined) await store.machines.delete(gone.id);
            }
            await store.commands.complete(c.id, 'Succeeded', resultOf(c, sequences, env), null, t);
            if (c.type === 'replication.start' || c.type === 'replication.reverse') {
              const payload = c.payload as { itemId: string; resume?: boolean };
              if (payload.resume === true) continue;
              const itemId = payload.itemId;
              await workflows.onReplicationStatus(agent.id, {
                items: [{ itemId, initialReplicationProgress: 50 }],
              });
              const seq = (sequences.get(itemId) ?? 0) + 10;
              sequences.set(itemId, seq);
              await workflows.onReplicationStatus(agent.id, {
                items: [
                  {
                    itemId,
                    initialReplicationProgress: 100,
                    points: [
                      {
                        sequence: seq,
                        time: (clock?.now() ?? new Date()).toISOString(),
                        type: 'crash-consistent',
                      },
                    ],
                  },
                ],
              });
            }
          }
          await new Promise((res) => setTimeout(res, 10));
        }
      };
      const running = loop();
      const stop = async () => {
        stopped = true;
        await running;
      };
      stops.push(stop);
      return stop;
    },
    async registerAgent(siteId, name) {
      const a = await createAgent(siteId, name);
      env.siteOf.set(a.id, siteId === p.id ? 'primary' : 'recovery');
      agentStops.set(a.id, env.startAgent(a));
      return a;
    },
    async stopAgent(agentId) {
      await agentStops.get(agentId)?.();
    },
    stop: async () => {
      for (const s of stops) await s();
      await engine.stop();
      await opened.cleanup();
    },
  };
  if (options.withPrimaryAgent !== false) env.primary = await env.registerAgent(p.id, 'primary-agent');
  if (options.withRecoveryAgent !== false) env.recovery = await env.registerAgent(r.id, 'recovery-agent');
  return env;
}

/** Protects `web` and waits until it is Protected; forgets the commands seen so far. */
export async function protectWeb(env: Env, machine = 'web'): Promise<void> {
  const { job } = await env.workflows.protect(env.vaultId, {
    machine,
    policy: 'gold',
    targetSite: 'recovery',
  });
  await jobEnded(env.store, job.id);
  await waitUntil('Protected', async () =>
    (await env.store.items.get(env.vaultId, machine)).protectionState === 'Protected' ? true : undefined,
  );
  env.seen.length = 0;
}

/** The site ('primary' | 'recovery') a command went to, and its type. */
export function sent(env: Env): string[] {
  return env.seen.map((c) => `${env.siteOf.get(c.agentId) ?? 'other'}:${c.type}`);
}
