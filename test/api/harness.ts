/**
 * An in-process API over a real store (SQLite temp file, or a fresh PostgreSQL schema
 * when OSR_TEST_PG is set), a real jobs engine with a few test job types, a manual
 * clock, and recording workflows. Tests call it with `app.inject` via `call()`.
 */
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { AgentChannel } from '../../src/api/agent-channel.js';
import type { OperationParams, ProtectRequest, WorkflowsPort } from '../../src/api/context.js';
import type { ReplicationStatusReport } from '../../src/api/schemas.js';
import { OsrError, notFound } from '../../src/domain/errors.js';
import type { AgentCommand, FailoverSettings, Job, Operation } from '../../src/domain/model.js';
import { JobEngine } from '../../src/jobs/engine.js';
import { ManualClock } from '../../src/jobs/manual-clock.js';
import { waitFor } from '../../src/jobs/types.js';
import type { Store } from '../../src/store/store.js';
import { applyReplicationStatus } from '../../src/workflows/replication-status.js';
import { openPostgresTestStore, openSqliteTestStore, testPostgresUrl } from '../../src/store/testing.js';
import type { TestStore } from '../../src/store/testing.js';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

/** One call the recording workflows received. */
export interface WorkflowCall {
  method: string;
  args: unknown[];
}

/** Workflows that record their calls and answer with real jobs of test types. */
export class RecordingWorkflows implements WorkflowsPort {
  readonly calls: WorkflowCall[] = [];
  /** Thrown by the next `operate` (then cleared). */
  refuseNext: OsrError | undefined;

  constructor(
    private readonly store: Store,
    private readonly engine: JobEngine,
    private readonly clock: ManualClock,
  ) {}

  async protect(vaultId: string, req: ProtectRequest) {
    this.calls.push({ method: 'protect', args: [vaultId, req] });
    const machine = await this.store.machines.findInVault(vaultId, req.machine);
    if (machine === undefined) throw notFound('machine', req.machine);
    const policy = await this.store.policies.get(vaultId, req.policy);
    const target = await this.store.sites.get(vaultId, req.targetSite);
    const [sourceContainer] = await this.store.containers.listBySite(machine.siteId);
    const [targetContainer] = await this.store.containers.listBySite(target.id);
    if (!sourceContainer || !targetContainer) throw new OsrError('VALIDATION_FAILED', 'no containers');
    const item = await this.store.items.create({
      vaultId,
      name: req.name ?? machine.name,
      machineId: machine.id,
      policyId: policy.id,
      sourceSiteId: machine.siteId,
      targetSiteId: target.id,
      sourceContainerId: sourceContainer.id,
      targetContainerId: targetContainer.id,
      primarySiteId: machine.siteId,
      protectionState: 'EnablingProtection',
      testFailoverState: 'None',
      activeLocation: 'primary',
      reversed: false,
      replicationHealth: 'Normal',
      healthReason: null,
      rpoSeconds: null,
      initialReplicationProgress: 0,
      resyncRequired: false,
      replicationGroupId: null,
      failoverSettings: {
        targetName: null,
        cpus: null,
        memoryMb: null,
        network: null,
        subnet: null,
        ip: null,
        disks: [],
        ...req.settings,
      },
      lastFailover: null,
      currentJobId: null,
    });
    const job = await this.submit(vaultId, item.id, item.name);
    return { job, item };
  }

  async operate(vaultId: string, item: string, op: Operation, params: OperationParams): Promise<Job> {
    this.calls.push({ method: 'operate', args: [vaultId, item, op, params] });
    const refusal = this.refuseNext;
    this.refuseNext = undefined;
    if (refusal) throw refusal;
    const i = await this.store.items.get(vaultId, item);
    return this.submit(vaultId, i.id, i.name);
  }

  async reprotectPreview(vaultId: string, item: string, params: OperationParams) {
    this.calls.push({ method: 'reprotectPreview', args: [vaultId, item, params] });
    await this.store.items.get(vaultId, item);
    return { creates: [{ kind: 'machine', name: 'web', label: 'web (new)' }] };
  }

  async updateSettings(vaultId: string, item: string, settings: Partial<FailoverSettings>) {
    this.calls.push({ method: 'updateSettings', args: [vaultId, item, settings] });
    const i = await this.store.items.get(vaultId, item);
    return this.store.items.update(i.id, { failoverSettings: { ...i.failoverSettings, ...settings } });
  }

  async describeItem(vaultId: string, item: string) {
    this.calls.push({ method: 'describeItem', args: [vaultId, item] });
    const i = await this.store.items.get(vaultId, item);
    return {
      ...i,
      allowedOperations: ['TestFailover', 'DisableProtection'],
      latestPoints: { latest: null, latestAppConsistent: null },
      disks: [{ id: 'disk0', nbdUri: 'nbd://127.0.0.1:10809/x' }],
      pointCount: 0,
    };
  }

  async cancelJob(jobId: string, force: boolean) {
    this.calls.push({ method: 'cancelJob', args: [jobId, force] });
    return this.engine.cancel(jobId, { force });
  }

  onAgentCommandResult(agentId: string, command: AgentCommand): Promise<void> {
    this.calls.push({ method: 'onAgentCommandResult', args: [agentId, command] });
    return Promise.resolve();
  }

  /** Records the call, then applies the report as the real workflows do (unknown items: NOT_FOUND). */
  onReplicationStatus(agentId: string, report: ReplicationStatusReport): Promise<void> {
    this.calls.push({ method: 'onReplicationStatus', args: [agentId, report] });
    return applyReplicationStatus(this.store, this.clock, agentId, report);
  }

  private submit(vaultId: string, targetId: string, targetName: string): Promise<Job> {
    return this.engine.submit({
      type: 'test.noop',
      vaultId,
      targetKind: 'item',
      targetId,
      targetName,
      input: {},
    });
  }
}

/** A test API. */
export interface ApiHarness {
  app: FastifyInstance;
  store: Store;
  engine: JobEngine;
  clock: ManualClock;
  channel: AgentChannel;
  workflows: RecordingWorkflows;
  /** The vault `default`, created for the test. */
  vaultId: string;
  call(method: string, url: string, opts?: CallOptions): Promise<CallResult>;
  close(): Promise<void>;
}

export interface CallOptions {
  body?: unknown;
  /** Bearer token; default the admin token; null for none. */
  token?: string | null;
  /** Raw payload instead of JSON `body`. */
  payload?: string;
  headers?: Record<string, string>;
}

/** The value at a dotted path of a response body (`error.code`, `items.0.name`), or undefined. */
export function at(r: CallResult, path: string): unknown {
  let v: unknown = r.body;
  for (const key of path === '' ? [] : path.split('.')) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[key];
  }
  return v;
}

/** The string at a path (throws when it is not one). */
export function atStr(r: CallResult, path: string): string {
  const v = at(r, path);
  if (typeof v !== 'string') throw new Error(`${path} is not a string: ${JSON.stringify(v)}`);
  return v;
}

/** The array of objects at a path (throws when it is not an array). */
export function atList(r: CallResult, path: string): Record<string, unknown>[] {
  const v = at(r, path);
  if (!Array.isArray(v)) throw new Error(`${path} is not an array: ${JSON.stringify(v)}`);
  return v as Record<string, unknown>[];
}

export interface CallResult {
  status: number;
  body: unknown;
  headers: Record<string, unknown>;
}

export const HEARTBEAT_TIMEOUT_MS = 60_000;

async function openHarness(open: () => Promise<TestStore>, clock: ManualClock): Promise<ApiHarness> {
  const t = await open();
  const store = t.store;
  const engine = new JobEngine({ store, clock, pollMs: 10, leaseMs: 60_000 });
  engine.register({
    type: 'test.noop',
    displayName: 'No-op',
    cancellable: true,
    steps: [{ name: 'nothing', run: () => Promise.resolve('ok') }],
  });
  engine.register({
    type: 'test.wait',
    displayName: 'Waits for an operator',
    cancellable: true,
    steps: [
      {
        name: 'confirm',
        run: (ctx) =>
          Promise.resolve(ctx.comments.length > 0 ? 'confirmed' : waitFor('confirm', 'Confirm to go on')),
      },
    ],
  });
  engine.register({
    type: 'test.fixed',
    displayName: 'Not cancellable',
    cancellable: false,
    steps: [{ name: 'wait', run: () => Promise.resolve(waitFor('hold', 'Held')) }],
  });
  engine.start();
  const workflows = new RecordingWorkflows(store, engine, clock);
  const channel = new AgentChannel({ store, clock, recheckMs: 5000 });
  const vault = await store.vaults.create({ name: 'default' });
  const app = await buildApp({
    store,
    engine,
    workflows,
    adminToken: ADMIN_TOKEN,
    heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
    clock,
    channel,
  });
  return {
    app,
    store,
    engine,
    clock,
    channel,
    workflows,
    vaultId: vault.id,
    async call(method, url, opts = {}) {
      const token = opts.token === undefined ? ADMIN_TOKEN : opts.token;
      const headers: Record<string, string> = { ...opts.headers };
      if (token !== null) headers.authorization = `Bearer ${token}`;
      let payload: string | undefined = opts.payload;
      if (payload === undefined && opts.body !== undefined) payload = JSON.stringify(opts.body);
      if (payload !== undefined) headers['content-type'] ??= 'application/json';
      const res = await app.inject({
        method: method as 'GET',
        url,
        headers,
        ...(payload === undefined ? {} : { payload }),
      });
      const raw = res.body;
      return {
        status: res.statusCode,
        body:
          raw.length > 0 && String(res.headers['content-type']).includes('json')
            ? (JSON.parse(raw) as unknown)
            : raw,
        headers: res.headers,
      };
    },
    async close() {
      channel.close();
      await app.close();
      await engine.stop();
      await t.cleanup();
    },
  };
}

/** Runs `fn` on a harness `open` makes, closing it after. */
export async function withApi(
  open: () => Promise<ApiHarness>,
  fn: (h: ApiHarness) => Promise<void>,
): Promise<void> {
  const h = await open();
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

/** The store variants: SQLite always, PostgreSQL when OSR_TEST_PG is set. */
export function harnessVariants(): { name: string; open(clock?: ManualClock): Promise<ApiHarness> }[] {
  const variants = [
    {
      name: 'sqlite',
      open: (clock = new ManualClock('2030-01-01T00:00:00.000Z')) =>
        openHarness(() => openSqliteTestStore({ clock }), clock),
    },
  ];
  if (testPostgresUrl() !== undefined) {
    variants.push({
      name: 'postgres',
      open: (clock = new ManualClock('2030-01-01T00:00:00.000Z')) =>
        openHarness(() => openPostgresTestStore({ clock }), clock),
    });
  }
  return variants;
}
