/**
 * The operations of the product as durable jobs (DESIGN §4): what the API and CLI call
 * to protect a machine, operate on a protected item, and take in agents' reports.
 * Decisions come from src/domain; every effect on a site goes through an agent command.
 */
import { randomUUID } from 'node:crypto';
import type {
  FailoverSettings,
  Job,
  Machine,
  Operation,
  ProtectedItem,
  RecoveryPoint,
} from '../domain/model.js';
import { OsrError, notFound } from '../domain/errors.js';
import { allowedOperations, assertAllowed, failbackRefusal } from '../domain/lifecycle.js';
import type { LifecycleContext, TransitionItem } from '../domain/lifecycle.js';
import { parsePointChoice, selectRecoveryPoint } from '../domain/recovery-point.js';
import { parseTestNetwork } from '../domain/placement.js';
import { validateName } from '../domain/names.js';
import { resolveTargetNetwork } from '../domain/network.js';
import { replicationHealth } from '../domain/health.js';
import type { Store } from '../store/store.js';
import type { JobEngine } from '../jobs/engine.js';
import type { Clock } from '../jobs/types.js';
import { systemClock } from '../jobs/types.js';
import { AgentCommands, isAgentConnected } from './agent-commands.js';
import type { WorkflowDeps } from './deps.js';
import { abortableSleep } from './deps.js';
import { ENABLE_PROTECTION, REPAIR_REPLICATION, enableProtectionJobs } from './enable-protection.js';
import type { EnableProtectionInput } from './enable-protection.js';
import { DISABLE_PROTECTION, disableProtectionJob } from './disable-protection.js';
import type { DisableProtectionInput } from './disable-protection.js';
import { startItemJob } from './item-jobs.js';
import {
  CANCEL_FAILOVER,
  CHANGE_RECOVERY_POINT,
  COMMIT_FAILOVER,
  PLANNED_FAILOVER,
  TEST_FAILOVER,
  TEST_FAILOVER_CLEANUP,
  TEST_FAILOVER_MAX_AGE_MS,
  TEST_MACHINE_STEP,
  UNPLANNED_FAILOVER,
  failoverJobs,
} from './failover.js';
import type { FailoverInput, ItemOpInput } from './failover.js';
import { REPROTECT, planReprotect, reprotectJob } from './reprotect.js';
import type { ReprotectInput, ReprotectPlan } from './reprotect.js';
import { applyReplicationStatus } from './replication-status.js';
import type { ReplicationStats, ReplicationStatusReport } from './replication-status.js';

export type { ReplicationStatusReport, ItemStatusReport, ReplicationStats } from './replication-status.js';
export type { ReprotectPlan } from './reprotect.js';
export { TEST_FAILOVER_MAX_AGE_MS } from './failover.js';

export interface WorkflowsOptions {
  store: Store;
  engine: JobEngine;
  clock?: Clock;
  /** An agent silent for longer counts as disconnected (default 60 s). */
  heartbeatTimeoutMs?: number;
  /** Called after a command is enqueued for an agent (wakes its long-poll). */
  onCommandEnqueued?: (agentId: string) => void;
  /** How often steps waiting on agent reports re-read the store (default 250 ms). */
  pollMs?: number;
  /** Where background work (the test failover sweeper) reports failures. */
  logger?: { warn(obj: object, msg: string): void };
}

/** Enable protection of a machine (R-REP-1). */
export interface ProtectRequest {
  machine: string;
  policy: string;
  targetSite: string;
  targetContainer?: string;
  name?: string;
  settings?: Partial<FailoverSettings>;
  /** R-REP-4: a replica of this machine already exists at the target (no new full copy). */
  replicaExists?: boolean;
}

/** Parameters of item operations; each operation reads the ones it needs. */
export interface OperationParams {
  point?: string;
  network?: string;
  shutdownSource?: boolean;
  notes?: string;
  force?: boolean;
  location?: 'original' | 'alternate';
  host?: string;
  datastore?: string;
  policy?: string;
  deleteReplica?: boolean;
  preview?: boolean;
}

/** A protected item as operators see it (DESIGN §5 `osr item show`). */
export interface ItemView extends ProtectedItem {
  allowedOperations: Operation[];
  latestPoints: { latest: RecoveryPoint | null; latestAppConsistent: RecoveryPoint | null };
  pointCount: number;
  /** Lag, backlog, throughput and compression from the last agent report, if any since start. */
  replicationStats: ReplicationStats | null;
  /** The machine's disks at the active site, each with its NBD address. */
  disks: Machine['disks'];
  machine: { id: string; name: string; siteId: string; powerState: Machine['powerState'] } | null;
  /** While a test failover runs: its job and the test machine with its disks' NBD addresses. */
  testFailover: {
    jobId: string;
    machine: { id: string; name: string; disks: { id: string; nbdUri: string }[] } | null;
  } | null;
}

export interface Workflows {
  /** Registers every job type with the engine. Call once before `engine.start()`. */
  register(): void;
  protect(vaultId: string, req: ProtectRequest): Promise<{ job: Job; item: ProtectedItem }>;
  /** Starts an operation on an item; refused with OPERATION_NOT_ALLOWED (409) before anything changes. */
  operate(vaultId: string, item: string, op: Operation, params: OperationParams): Promise<Job>;
  updateSettings(vaultId: string, item: string, settings: Partial<FailoverSettings>): Promise<ProtectedItem>;
  describeItem(vaultId: string, item: string): Promise<ItemView>;
  /** Cancels a job; an unplanned failover needs `force` (FORCE_REQUIRED otherwise, R-FO-5). */
  cancelJob(jobId: string, force: boolean): Promise<Job>;
  /** Takes in an agent's replication status report (health, progress, recovery points). */
  onReplicationStatus(agentId: string, report: ReplicationStatusReport): Promise<void>;
  /** What a reprotect would do and create, each new resource marked "(new)" (R-RP-1). */
  reprotectPreview(vaultId: string, item: string, params: OperationParams): Promise<ReprotectPlan>;
  /**
   * Completes test failovers left waiting for cleanup longer than 14 days (R-TF-3):
   * resumes their parked job (or starts a cleanup job when it has ended). Returns the
   * items it cleaned up. The server calls it periodically; tests call it with a clock.
   */
  sweepTestFailovers(): Promise<string[]>;
  /** Calls {@link sweepTestFailovers} every `everyMs` until the returned stop function is called. */
  startSweeper(everyMs?: number): () => void;
}

/** Operation → the job type that carries it out, for the operations of this slice. */
const JOB_TYPE_OF: Record<Operation, string> = {
  TestFailover: TEST_FAILOVER,
  TestFailoverCleanup: TEST_FAILOVER_CLEANUP,
  PlannedFailover: PLANNED_FAILOVER,
  UnplannedFailover: UNPLANNED_FAILOVER,
  ChangePit: CHANGE_RECOVERY_POINT,
  Commit: COMMIT_FAILOVER,
  CancelFailover: CANCEL_FAILOVER,
  ReverseReplicate: REPROTECT,
  DisableProtection: DISABLE_PROTECTION,
  RepairReplication: REPAIR_REPLICATION,
};

/** The direction fields of an item, kept in a job's input for its failure state. */
function accepted(item: ProtectedItem): TransitionItem {
  return {
    protectionState: item.protectionState,
    reversed: item.reversed,
    sourceSiteId: item.sourceSiteId,
    targetSiteId: item.targetSiteId,
    sourceContainerId: item.sourceContainerId,
    targetContainerId: item.targetContainerId,
  };
}

/** Creates the workflows over a store and a jobs engine. */
export function createWorkflows(options: WorkflowsOptions): Workflows {
  const clock = options.clock ?? systemClock;
  const heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? 60_000;
  const { store, engine } = options;
  const stats = new Map<string, ReplicationStats>();
  const deps: WorkflowDeps = {
    store,
    engine,
    clock,
    pollMs: options.pollMs ?? 250,
    sleep: abortableSleep,
    commands: new AgentCommands({
      store,
      clock,
      heartbeatTimeoutMs,
      ...(options.onCommandEnqueued === undefined ? {} : { onCommandEnqueued: options.onCommandEnqueued }),
    }),
  };

  async function lifecycleContext(item: ProtectedItem): Promise<LifecycleContext> {
    const now = clock.now();
    const connected = async (siteId: string): Promise<boolean> => {
      const agent = await store.agents.findBySite(siteId);
      return agent !== undefined && isAgentConnected(agent, now, heartbeatTimeoutMs);
    };
    return { agentsConnected: (await connected(item.sourceSiteId)) && (await connected(item.targetSiteId)) };
  }

  /** The item's machine at its active site: the source machine, or the one a failover brought up. */
  async function activeMachine(item: ProtectedItem): Promise<Machine | undefined> {
    const sourceSide = item.reversed ? 'recovery' : 'primary';
    const id =
      item.activeLocation !== sourceSide && item.lastFailover?.targetMachineId != null
        ? item.lastFailover.targetMachineId
        : item.machineId;
    return activeMachineById(id);
  }

  /** The running test failover's machine and disks, from its job (DESIGN §5 `item show`). */
  async function testFailoverView(item: ProtectedItem): Promise<ItemView['testFailover']> {
    if (item.testFailoverState === 'None') return null;
    const job =
      item.currentJobId === null ? await lastTestJob(item.id) : await store.jobs.find(item.currentJobId);
    if (job === undefined) return null;
    const out = job.steps.find((st) => st.name === TEST_MACHINE_STEP)?.output as
      { machineId?: string; name?: string; disks?: { id: string; nbdUri: string }[] } | undefined;
    return {
      jobId: job.id,
      machine:
        out?.machineId === undefined || out.name === undefined
          ? null
          : { id: out.machineId, name: out.name, disks: out.disks ?? [] },
    };
  }

  async function lastTestJob(itemId: string): Promise<Job | undefined> {
    const jobs = await store.jobs.list({ targetId: itemId, type: TEST_FAILOVER, limit: 1, offset: 0 });
    return jobs.items[0];
  }

  /**
   * Test cleanup (R-TF-2): resumes the test job parked at "Complete test" (its remaining
   * steps delete what it created), or starts a cleanup job when that job has ended.
   */
  async function cleanupTest(item: ProtectedItem, notes: string | null): Promise<Job> {
    assertAllowed(item, 'TestFailoverCleanup', {});
    if (item.currentJobId !== null) {
      const job = await store.jobs.get(item.currentJobId);
      if (job.type === TEST_FAILOVER && job.state === 'WaitingForAction') {
        await store.items.update(
          item.id,
          { testFailoverState: 'CleanupInProgress' },
          { expectVersion: item.version },
        );
        return engine.resume(job.id, notes ?? 'Test complete.');
      }
      throw new OsrError('OPERATION_NOT_ALLOWED', `job ${job.id} is still running on the item`, {
        details: { currentJobId: job.id, state: job.state },
      });
    }
    const input: ItemOpInput = {
      itemId: item.id,
      accepted: accepted(item),
      testJobId: (await lastTestJob(item.id))?.id ?? null,
      ...(notes === null ? {} : { notes }),
    };
    return startItemJob({
      store,
      engine,
      item,
      operation: 'TestFailoverCleanup',
      jobType: TEST_FAILOVER_CLEANUP,
      input,
    });
  }

  /** R-FO-2, R-RP-3: the choice parses and, unless it is `latest`, names a retained point. */
  async function checkPoint(item: ProtectedItem, text: string, failback: boolean): Promise<void> {
    const choice = parsePointChoice(text);
    if (choice.kind === 'latest' && !failback) return;
    const points = (await store.points.list(item.id, { limit: 100_000 })).items;
    selectRecoveryPoint(points, choice, { failback, now: clock.now() });
  }

  /** R-TF-1: `none`, `isolated`, or a network of the target site. */
  async function checkTestNetwork(item: ProtectedItem, network: string | undefined): Promise<void> {
    const choice = parseTestNetwork(network);
    if (choice.kind !== 'network') return;
    const n = await store.inventory.findNetwork(item.targetSiteId, choice.name);
    if (n === undefined) {
      const available = (await store.inventory.networks(item.targetSiteId)).map((x) => x.name);
      throw new OsrError(
        'VALIDATION_FAILED',
        `network '${choice.name}' does not exist at the target site; use one of ${[...available, 'isolated', 'none'].join(', ')}`,
        { details: { field: 'network', value: choice.name, available } },
      );
    }
  }

  /** R-RP-6, R-RP-7: a failback needs the failed-over machine as failover left it, and the same hypervisor type. */
  async function assertFailbackAllowed(item: ProtectedItem): Promise<void> {
    const failedOver = await activeMachineById(item.machineId);
    const back = await activeMachineById(item.lastFailover?.targetMachineId ?? null);
    const refusal = failbackRefusal(item, {
      targetMachineExists: failedOver !== undefined,
      targetMachineOrigin: failedOver?.origin ?? null,
      movedToOtherContainer: failedOver !== undefined && failedOver.containerId !== item.sourceContainerId,
      protectionDisabled: false,
      sourceHypervisor: item.lastFailover?.sourceHypervisor ?? back?.hypervisor ?? 'process',
      targetHypervisor: back?.hypervisor ?? item.lastFailover?.sourceHypervisor ?? 'process',
    });
    if (refusal !== undefined) throw refusal;
  }

  async function activeMachineById(id: string | null): Promise<Machine | undefined> {
    if (id === null) return undefined;
    return store.machines.getById(id).catch((err: unknown) => {
      if (err instanceof OsrError && err.code === 'NOT_FOUND') return undefined;
      throw err;
    });
  }

  /** R-TF-3: completes test failovers waiting for cleanup for more than 14 days. */
  async function sweepTestFailovers(): Promise<string[]> {
    const cleaned: string[] = [];
    const now = clock.now().getTime();
    for (const vault of (await store.vaults.list({ limit: 10_000, offset: 0 })).items) {
      const items = await store.items.list(vault.id, { limit: 100_000, offset: 0 });
      for (const item of items.items) {
        if (item.testFailoverState !== 'WaitingForCleanup') continue;
        const testJob = item.currentJobId === null ? undefined : await store.jobs.find(item.currentJobId);
        const since =
          testJob?.waiting?.since ??
          testJob?.endedAt ??
          (await lastTestJob(item.id))?.endedAt ??
          item.updatedAt;
        if (now - Date.parse(since) < TEST_FAILOVER_MAX_AGE_MS) continue;
        try {
          await cleanupTest(item, 'Completed automatically: the test failover ran for more than 14 days.');
          cleaned.push(item.id);
        } catch (err) {
          if (!(err instanceof OsrError && err.code === 'OPERATION_NOT_ALLOWED')) throw err;
        }
      }
    }
    return cleaned;
  }

  /** Starts an operation on the item as it is now (see `operate`). */
  async function operateOnce(
    vaultId: string,
    itemKey: string,
    op: Operation,
    params: OperationParams,
  ): Promise<Job> {
    const item = await store.items.get(vaultId, itemKey);
    const context = await lifecycleContext(item);
    const jobType = JOB_TYPE_OF[op];
    // Refuse what is not allowed in this state first (409), then what needs an agent (503).
    assertAllowed(item, op, {});
    if (op === 'PlannedFailover' || op === 'ReverseReplicate') {
      await deps.commands.agentFor(await store.sites.getById(item.sourceSiteId));
      await deps.commands.agentFor(await store.sites.getById(item.targetSiteId));
    }
    const start = <I>(input: I, patch?: Partial<ProtectedItem>): Promise<Job> =>
      startItemJob({
        store,
        engine,
        item,
        operation: op,
        context,
        jobType,
        input,
        ...(patch === undefined ? {} : { patch }),
      });
    switch (op) {
      case 'DisableProtection': {
        const policy = await store.policies.get(vaultId, item.policyId);
        // After a failover the machine at the target runs on the replica: keep it.
        const runsOnReplica = item.activeLocation !== (item.reversed ? 'recovery' : 'primary');
        if (runsOnReplica && params.deleteReplica === true) {
          throw new OsrError(
            'VALIDATION_FAILED',
            `the failed-over machine of '${item.name}' runs on the replica; disable protection without deleting it`,
            { details: { field: 'deleteReplica', protectionState: item.protectionState } },
          );
        }
        const input: DisableProtectionInput = {
          itemId: item.id,
          deleteReplica: !runsOnReplica && (params.deleteReplica ?? policy.deleteReplicaOnDisable),
          force: params.force ?? false,
          previousState: item.protectionState,
        };
        return start(input);
      }
      case 'RepairReplication': {
        const input: EnableProtectionInput = { itemId: item.id, replicaExists: false, resync: true };
        return start(input, { initialReplicationProgress: 0, resyncRequired: true });
      }
      case 'TestFailover':
      case 'PlannedFailover':
      case 'UnplannedFailover': {
        const failback = item.reversed;
        if (failback) await assertFailbackAllowed(item);
        const point = params.point ?? (failback ? 'latest-processed' : 'latest');
        await checkPoint(item, point, failback);
        if (op === 'TestFailover') {
          await checkTestNetwork(item, params.network);
        } else if (params.network !== undefined) {
          throw new OsrError('VALIDATION_FAILED', 'network goes with a test failover only', {
            details: { field: 'network' },
          });
        }
        if (
          op === 'PlannedFailover' &&
          params.point !== undefined &&
          parsePointChoice(point).kind !== 'latest'
        ) {
          throw new OsrError(
            'VALIDATION_FAILED',
            'a planned failover always fails over to a new point holding every change (latest)',
            { details: { field: 'point', value: params.point } },
          );
        }
        const input: FailoverInput = {
          itemId: item.id,
          op,
          point,
          // R-RP-3: the failed-over machine is shut down during failback.
          shutdownSource: params.shutdownSource ?? failback,
          ...(params.network === undefined ? {} : { network: params.network }),
          failback,
          accepted: accepted(item),
        };
        return start(input);
      }
      case 'TestFailoverCleanup':
        return cleanupTest(item, params.notes ?? null);
      case 'ChangePit': {
        const point = params.point ?? 'latest-processed';
        await checkPoint(item, point, false);
        const input: ItemOpInput = { itemId: item.id, accepted: accepted(item), point };
        return start(input);
      }
      case 'Commit':
      case 'CancelFailover': {
        const input: ItemOpInput = { itemId: item.id, accepted: accepted(item), failoverJobId: null };
        return start(input);
      }
      case 'ReverseReplicate': {
        await planReprotect(store, item, reprotectParams(params));
        const policy = await store.policies.get(vaultId, params.policy ?? item.policyId);
        const input: ReprotectInput = {
          itemId: item.id,
          location: params.location ?? 'original',
          host: params.host ?? null,
          datastore: params.datastore ?? null,
          policyId: policy.id,
          accepted: accepted(item),
        };
        return start(input, { initialReplicationProgress: 0 });
      }
    }
  }

  return {
    register() {
      for (const def of enableProtectionJobs(deps)) engine.register(def);
      engine.register(disableProtectionJob(deps));
      for (const def of failoverJobs(deps)) engine.register(def);
      engine.register(reprotectJob(deps));
    },

    async protect(vaultId, req) {
      const machine = await store.machines.findInVault(vaultId, req.machine);
      if (machine === undefined) throw notFound('machine', req.machine);
      let existing = await store.items.findByMachine(machine.id);
      if (existing?.protectionState === 'Unprotected' && existing.currentJobId === null) {
        // After a committed failback the item stays Unprotected (R-RP-4): protecting the
        // machine again replaces it.
        await store.points.deleteAllExcept(existing.id, null);
        await store.items.delete(existing.id);
        existing = undefined;
      }
      if (existing !== undefined) {
        throw new OsrError(
          'ALREADY_EXISTS',
          `machine '${machine.name}' is already protected by item '${existing.name}'`,
          {
            details: { machine: machine.name, item: existing.name, itemId: existing.id },
          },
        );
      }
      const policy = await store.policies.get(vaultId, req.policy);
      const sourceSite = await store.sites.getById(machine.siteId);
      const targetSite = await store.sites.get(vaultId, req.targetSite);
      const sourceContainer =
        machine.containerId !== null
          ? await store.containers.getById(machine.containerId)
          : (await store.containers.listBySite(sourceSite.id))[0];
      if (sourceContainer === undefined) {
        throw new OsrError(
          'VALIDATION_FAILED',
          `site '${sourceSite.name}' has no container for machine '${machine.name}'`,
          {
            details: { field: 'machine', site: sourceSite.name },
          },
        );
      }
      const targetContainer = await chooseTargetContainer(
        store,
        vaultId,
        policy.id,
        sourceContainer.id,
        targetSite.id,
        req.targetContainer,
      );
      if (targetContainer.id === sourceContainer.id) {
        throw new OsrError(
          'VALIDATION_FAILED',
          'the target container must differ from the source container',
          {
            details: { field: 'targetContainer', container: targetContainer.name },
          },
        );
      }
      const name = validateName('item', req.name ?? machine.name);
      const settings: FailoverSettings = {
        targetName: req.settings?.targetName ?? null,
        cpus: req.settings?.cpus ?? null,
        memoryMb: req.settings?.memoryMb ?? null,
        network: req.settings?.network ?? null,
        subnet: req.settings?.subnet ?? null,
        ip: req.settings?.ip ?? null,
        disks: req.settings?.disks ?? [],
      };
      await validateSettings(store, vaultId, machine, targetSite.id, settings);
      const jobId = randomUUID();
      const item = await store.items.create({
        vaultId,
        name,
        machineId: machine.id,
        policyId: policy.id,
        sourceSiteId: sourceSite.id,
        targetSiteId: targetSite.id,
        sourceContainerId: sourceContainer.id,
        targetContainerId: targetContainer.id,
        primarySiteId: sourceSite.id,
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
        failoverSettings: settings,
        lastFailover: null,
        currentJobId: jobId,
      });
      const input: EnableProtectionInput = {
        itemId: item.id,
        replicaExists: req.replicaExists ?? false,
        resync: false,
      };
      try {
        const job = await engine.submit({
          id: jobId,
          type: ENABLE_PROTECTION,
          vaultId,
          targetKind: 'protectedItem',
          targetId: item.id,
          targetName: item.name,
          input,
        });
        return { job, item };
      } catch (err) {
        await store.items.delete(item.id);
        throw err;
      }
    },

    async operate(vaultId, itemKey, op, params) {
      // The claim is a compare-and-set on the item's version; a status report landing in
      // between bumps it, so read again and decide again.
      for (let attempt = 1; ; attempt++) {
        try {
          return await operateOnce(vaultId, itemKey, op, params);
        } catch (err) {
          if (!isStaleVersion(err) || attempt >= 5) throw err;
        }
      }
    },

    async reprotectPreview(vaultId, itemKey, params) {
      const item = await store.items.get(vaultId, itemKey);
      assertAllowed(item, 'ReverseReplicate', {});
      return planReprotect(store, item, reprotectParams(params));
    },

    sweepTestFailovers,

    startSweeper(everyMs = 3600_000) {
      let running: Promise<unknown> = Promise.resolve();
      const t = setInterval(() => {
        running = running
          .then(() => sweepTestFailovers())
          .catch((err: unknown) => options.logger?.warn({ err }, 'test failover auto-cleanup failed'));
      }, everyMs);
      t.unref();
      return () => clearInterval(t);
    },

    async updateSettings(vaultId, itemKey, patch) {
      // Status reports update the item concurrently: retry the compare-and-set a few times.
      for (let attempt = 1; ; attempt++) {
        const item = await store.items.get(vaultId, itemKey);
        const machine = await store.machines.getById(item.machineId);
        const settings: FailoverSettings = { ...item.failoverSettings, ...patch };
        await validateSettings(store, vaultId, machine, item.targetSiteId, settings);
        try {
          return await store.items.update(
            item.id,
            { failoverSettings: settings },
            { expectVersion: item.version },
          );
        } catch (err) {
          if (!(err instanceof OsrError && err.code === 'OPERATION_NOT_ALLOWED') || attempt >= 5) throw err;
        }
      }
    },

    async describeItem(vaultId, itemKey) {
      const item = await store.items.get(vaultId, itemKey);
      const context = await lifecycleContext(item);
      const [points, app] = await Promise.all([
        store.points.list(item.id, { limit: 1 }),
        store.points.list(item.id, { limit: 1, type: 'app-consistent' }),
      ]);
      const latest = points.items[0] ?? null;
      const now = clock.now();
      const rpoSeconds =
        latest === null ? null : Math.max(0, Math.round((now.getTime() - Date.parse(latest.time)) / 1000));
      const policy = await store.policies.get(vaultId, item.policyId);
      const health = trackingReplication(item)
        ? replicationHealth({
            rpoSeconds,
            copyFrequencySeconds: policy.copyFrequencySeconds,
            resyncRequired: item.resyncRequired,
            lastStatusAt: item.updatedAt,
            now,
            agentConnected: context.agentsConnected ?? false,
            reported: { health: item.replicationHealth, reason: item.healthReason },
          })
        : { health: item.replicationHealth, reason: item.healthReason };
      const machine = await activeMachine(item);
      return {
        ...item,
        rpoSeconds,
        replicationHealth: item.protectionState === 'NeedsRepair' ? 'Critical' : health.health,
        healthReason: item.protectionState === 'NeedsRepair' ? item.healthReason : health.reason,
        allowedOperations: allowedOperations(item, context),
        latestPoints: { latest, latestAppConsistent: app.items[0] ?? null },
        pointCount: points.total,
        replicationStats: stats.get(item.id) ?? null,
        disks: machine?.disks ?? [],
        machine:
          machine === undefined
            ? null
            : { id: machine.id, name: machine.name, siteId: machine.siteId, powerState: machine.powerState },
        testFailover: await testFailoverView(item),
      };
    },

    async cancelJob(jobId, force) {
      const job = await store.jobs.get(jobId);
      if (
        job.type === 'UnplannedFailover' &&
        !force &&
        (job.state === 'InProgress' || job.state === 'NotStarted')
      ) {
        throw new OsrError(
          'FORCE_REQUIRED',
          'cancelling a running unplanned failover stops it, and the item will no longer replicate until it is repaired',
          { details: { jobId, type: job.type } },
        );
      }
      return engine.cancel(jobId, { force });
    },

    async onReplicationStatus(agentId, report) {
      await applyReplicationStatus(store, clock, agentId, report, stats);
    },
  };
}

/** The store's refusal of a compare-and-set on a changed item (not a lifecycle refusal). */
function isStaleVersion(err: unknown): boolean {
  return (
    err instanceof OsrError &&
    err.code === 'OPERATION_NOT_ALLOWED' &&
    typeof err.details === 'object' &&
    err.details !== null &&
    'expectedVersion' in err.details
  );
}

function reprotectParams(params: OperationParams): {
  location?: 'original' | 'alternate';
  host?: string;
  datastore?: string;
  policy?: string;
} {
  return {
    ...(params.location === undefined ? {} : { location: params.location }),
    ...(params.host === undefined ? {} : { host: params.host }),
    ...(params.datastore === undefined ? {} : { datastore: params.datastore }),
    ...(params.policy === undefined ? {} : { policy: params.policy }),
  };
}

/** Replication health is tracked while the item replicates (not while failed over). */
function trackingReplication(item: ProtectedItem): boolean {
  return item.protectionState === 'Protected' || item.protectionState === 'InitialReplication';
}

async function chooseTargetContainer(
  store: Store,
  vaultId: string,
  policyId: string,
  sourceContainerId: string,
  targetSiteId: string,
  requested: string | undefined,
) {
  if (requested !== undefined) {
    const c = await store.containers.find(targetSiteId, requested);
    if (c === undefined) throw notFound('container', requested);
    return c;
  }
  const associations = await store.associations.list(vaultId, { policyId, sourceContainerId });
  for (const a of associations) {
    const c = await store.containers.getById(a.targetContainerId);
    if (c.siteId === targetSiteId) return c;
  }
  const first = (await store.containers.listBySite(targetSiteId)).find((c) => c.id !== sourceContainerId);
  if (first === undefined) {
    throw new OsrError('VALIDATION_FAILED', 'the target site has no container to replicate into', {
      details: { field: 'targetContainer' },
    });
  }
  return first;
}

/** Checks per-item failover settings against the target site's networks (R-NET-5). */
async function validateSettings(
  store: Store,
  vaultId: string,
  machine: Machine,
  targetSiteId: string,
  settings: FailoverSettings,
): Promise<void> {
  if (settings.targetName !== null) validateName('targetName', settings.targetName);
  for (const [field, v] of [
    ['cpus', settings.cpus],
    ['memoryMb', settings.memoryMb],
  ] as const) {
    if (v !== null && (!Number.isInteger(v) || v < 1)) {
      throw new OsrError('VALIDATION_FAILED', `${field} must be a positive integer`, { details: { field } });
    }
  }
  for (const d of settings.disks) {
    if (!machine.disks.some((md) => md.id === d.diskId)) {
      throw new OsrError('VALIDATION_FAILED', `machine '${machine.name}' has no disk '${d.diskId}'`, {
        details: { field: 'disks', diskId: d.diskId },
      });
    }
  }
  if (settings.network === null && settings.subnet === null && settings.ip === null) return;
  const nic = machine.nics[0];
  const sourceNetwork =
    nic?.network == null ? undefined : await store.inventory.findNetwork(machine.siteId, nic.network);
  resolveTargetNetwork({
    sourceNetwork: sourceNetwork ?? null,
    sourceSubnet: nic?.subnet ?? null,
    mappings: await store.networkMappings.list(vaultId),
    targetNetworks: await store.inventory.networks(targetSiteId),
    override: { network: settings.network, subnet: settings.subnet, ip: settings.ip },
  });
}
