/**
 * Test failover and its cleanup (R-TF-1..3), unplanned and planned failover (R-FO-2,
 * 3, 5, 9, 11, 13), change recovery point (R-FO-7), commit (R-FO-8, R-RP-4) and cancel
 * failover (R-FO-10, 11) as durable jobs. Every effect on a site is an agent command
 * whose id derives from the step's effect key, so a step that runs again after a crash
 * finds its command (and result) instead of acting twice. Failback is a failover of a
 * reversed item: the same jobs, towards the primary site.
 */
import type { Job, Machine, Operation, ProtectedItem } from '../domain/model.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { stateOnFailure, stateOnSuccess } from '../domain/lifecycle.js';
import type { FailureOutcome, TransitionItem } from '../domain/lifecycle.js';
import { parseTestNetwork } from '../domain/placement.js';
import type { JobDefinition, StepContext, StepDefinition } from '../jobs/types.js';
import { waitUntilResumed } from '../jobs/manual-action.js';
import { isWaitRequest } from '../jobs/types.js';
import type { ReplicaCommitResult, ReplicaExposeResult, ReplicationDrainResult } from './agent-commands.js';
import type { WorkflowDeps } from './deps.js';
import { releaseItem, uuidFromKey } from './item-jobs.js';
import {
  command,
  expose,
  failoverMachineSpec,
  findMachineById,
  heldItem,
  isAbsent,
  normalizeExposure,
  recordCreatedMachine,
  resolvePoint,
  setPower,
  updateHeld,
} from './item-steps.js';
import type { FailoverMachineSpec, ResolvedPoint } from './item-steps.js';
import { streamAuthFor } from './trust.js';

export const TEST_FAILOVER = 'TestFailover';
export const TEST_FAILOVER_CLEANUP = 'TestFailoverCleanup';
export const PLANNED_FAILOVER = 'PlannedFailover';
export const UNPLANNED_FAILOVER = 'UnplannedFailover';
export const CHANGE_RECOVERY_POINT = 'ChangeRecoveryPoint';
export const COMMIT_FAILOVER = 'CommitFailover';
export const CANCEL_FAILOVER = 'CancelFailover';

/** A test failover left running this long is cleaned up automatically (R-TF-3). */
export const TEST_FAILOVER_MAX_AGE_MS = 14 * 24 * 3600_000;

/** The step of a test failover whose output is the test machine (`describeItem` reads it). */
export const TEST_MACHINE_STEP = 'Create the test machine';

/** The planned failover's snapshot of the target disks, taken before power-on (R-FO-10). */
export const PRE_POWER_ON_SNAPSHOT = 'pre-power-on';

/** Input of the failover jobs (test, planned, unplanned). */
export interface FailoverInput {
  itemId: string;
  op: 'TestFailover' | 'PlannedFailover' | 'UnplannedFailover';
  /** A point choice as `parsePointChoice` reads it. */
  point: string;
  shutdownSource: boolean;
  /** Test failover: a target network name, `isolated` or `none`. */
  network?: string;
  /** A failover of a reversed item (R-RP-3). */
  failback: boolean;
  /** The item's direction fields as the operation was accepted (for the failure state). */
  accepted: TransitionItem;
}

/** Input of change recovery point, commit, cleanup and cancel. */
export interface ItemOpInput {
  itemId: string;
  accepted: TransitionItem;
  point?: string;
  notes?: string;
  /** Cancel failover: started automatically after a planned failover failed (R-FO-11). */
  automatic?: boolean;
  /** Cancel failover: the planned failover it undoes. */
  failoverJobId?: string | null;
  /** Test cleanup: the test failover job whose machine it deletes. */
  testJobId?: string | null;
}

/** The steps an operator follows when the automatic cancel of a planned failover failed too (R-FO-11). */
export const MANUAL_CANCEL_STEPS =
  'Cancel the failover by hand: 1) power off the machine at the target site; 2) delete it (keep its disks); ' +
  '3) power the source machine on; 4) run "osr repair ITEM" to resume replication with a resync. ' +
  'Then retry the planned failover.';

const STEP = {
  prereq: 'Prerequisites check',
  shutdownSource: 'Shut down the source machine',
  stopReplication: 'Stop replication',
  drain: 'Synchronize pending changes',
  point: 'Prepare the recovery point',
  expose: 'Expose disks at the recovery point',
  prepareMachine: 'Prepare the machine for the target',
  create: 'Create the machine at the target',
  snapshot: 'Snapshot the target disks',
  start: 'Start the machine at the target',
  finalizeFailover: 'Finalize failover',
  createTest: TEST_MACHINE_STEP,
  exposeTest: 'Expose test disks',
  startTest: 'Start the test machine',
  completeTest: 'Complete test',
  deleteTest: 'Delete the test machine',
  releaseTest: 'Release test disks',
  finishCleanup: 'Finish cleanup',
} as const;

/** The name of the machine a failover brings up at the target (R-NET-5 target name). */
async function targetMachineName(deps: WorkflowDeps, item: ProtectedItem, source: Machine): Promise<string> {
  if (item.reversed) {
    const back = await findMachineById(deps.store, item.lastFailover?.targetMachineId ?? null);
    if (back !== undefined) return back.name;
  }
  return item.failoverSettings.targetName ?? source.name;
}

/** The test machine's name: beside the replica, never clashing with the failover machine. */
export function testMachineName(base: string): string {
  return `${base}-test`;
}

async function sourceMachine(deps: WorkflowDeps, item: ProtectedItem): Promise<Machine> {
  return deps.store.machines.getById(item.machineId);
}

/** The machine a failover of a reversed item returns to (original or alternate location). */
async function failbackMachine(deps: WorkflowDeps, item: ProtectedItem): Promise<Machine | undefined> {
  return item.reversed ? findMachineById(deps.store, item.lastFailover?.targetMachineId ?? null) : undefined;
}

function pointOf(ctx: StepContext<unknown>, step: string): ResolvedPoint {
  const p = ctx.outputs[step] as ResolvedPoint | undefined;
  if (p === undefined) throw new OsrError('INTERNAL', `step '${step}' left no recovery point`);
  return p;
}

function exposureOf(ctx: StepContext<unknown>, step: string): ReplicaExposeResult {
  const e = ctx.outputs[step] as ReplicaExposeResult | undefined;
  if (e === undefined) throw new OsrError('INTERNAL', `step '${step}' left no exposure`);
  return e;
}

interface CreatedMachine {
  machineId: string;
  name: string;
  spec: FailoverMachineSpec;
  disks: { id: string; nbdUri: string }[];
}

/** Creates (or, at failback, re-attaches) the machine at the target on the exposure. */
/** The spec of the machine to bring up at the target (placement, network, tools and IP rules). */
async function targetSpec(
  deps: WorkflowDeps,
  ctx: StepContext<FailoverInput>,
  item: ProtectedItem,
  purpose: 'test' | 'failover',
): Promise<FailoverMachineSpec> {
  const source = await sourceMachine(deps, item);
  const base = await targetMachineName(deps, item, source);
  const existing =
    purpose === 'failover'
      ? ((await failbackMachine(deps, item)) ?? (await leftByEarlierAttempt(deps, item, base)))
      : undefined;
  return failoverMachineSpec(deps, item, source, {
    name: purpose === 'test' ? testMachineName(base) : base,
    purpose,
    network:
      purpose === 'test' ? { kind: 'test', choice: parseTestNetwork(ctx.input.network) } : { kind: 'derive' },
    existing,
    origin: purpose === 'test' ? 'test-failover' : 'failover',
  });
}

/**
 * A machine an earlier, failed failover of this item created at the target (a retry
 * reuses it rather than failing on its name, 78052): made by failover, not the machine
 * of any other item, and made by this item — its last failover's machine, or one an
 * earlier failover job of the item had `machine.create` make. Any other machine of that
 * name (another item's failed-over machine left after its protection was disabled, one
 * an operator made) is not taken over: the create meets it as 78052.
 */
async function leftByEarlierAttempt(
  deps: WorkflowDeps,
  item: ProtectedItem,
  name: string,
): Promise<Machine | undefined> {
  const m = await deps.store.machines.find(item.targetSiteId, name);
  if (m === undefined || m.origin !== 'failover') return undefined;
  const owner = await deps.store.items.findByMachine(m.id);
  if (owner !== undefined && owner.id !== item.id) return undefined;
  if (item.lastFailover?.targetMachineId === m.id) return m;
  return (await createdByFailoverOf(deps, item, m)) ? m : undefined;
}

/** Whether a planned or unplanned failover job of the item made machine `m` (its `machine.create` succeeded). */
async function createdByFailoverOf(deps: WorkflowDeps, item: ProtectedItem, m: Machine): Promise<boolean> {
  for (const type of [PLANNED_FAILOVER, UNPLANNED_FAILOVER]) {
    const jobs = await deps.store.jobs.list({ targetId: item.id, type, limit: 1000 });
    for (const job of jobs.items) {
      const step = job.steps.find((st) => st.name === STEP.create);
      if (step === undefined || step.state === 'NotStarted') continue;
      // The step's command id, as `command()` derives it from the step's effect key.
      const cmd = await deps.store.commands.find(uuidFromKey(`${job.id}:${step.index}`));
      const payload = cmd?.payload as { name?: unknown } | undefined;
      if (cmd?.type === 'machine.create' && cmd.state === 'Succeeded' && payload?.name === m.name)
        return true;
    }
  }
  return false;
}

/**
 * What the machine needs beyond a plain copy when it comes up on the other side
 * (R-FO-6), as the job shows it: guest tools, static IPs that become DHCP, networks.
 */
export function extraProcessing(source: Machine, spec: FailoverMachineSpec): string[] {
  const out: string[] = [];
  if (spec.guestTools !== source.guestTools) {
    out.push(`guest tools: ${source.guestTools} → ${spec.guestTools} (${source.osType})`);
  }
  spec.nics.forEach((n, i) => {
    const from = source.nics[i];
    const where =
      n.network === null
        ? n.isolated === true
          ? 'an isolated network'
          : 'no network'
        : `${n.network}/${n.subnet ?? '-'}`;
    out.push(`NIC ${i}: ${from?.network ?? 'none'}/${from?.subnet ?? '-'} → ${where}`);
    if (from?.ip != null && n.ip === null) out.push(`NIC ${i}: static IP ${from.ip} → DHCP`);
    else if (n.ip !== null && n.ip !== from?.ip) out.push(`NIC ${i}: IP ${n.ip}`);
  });
  if (spec.reuseExisting)
    out.push(`disks of the existing machine ${spec.name} attached to the recovery point`);
  return out;
}

/** Creates (or, at failback, re-attaches) the machine at the target on the exposure. */
async function createAtTarget(
  deps: WorkflowDeps,
  ctx: StepContext<FailoverInput>,
  item: ProtectedItem,
  purpose: 'test' | 'failover',
  exposed: ReplicaExposeResult,
  prepared?: FailoverMachineSpec,
): Promise<CreatedMachine> {
  const spec = prepared ?? (await targetSpec(deps, ctx, item, purpose));
  const result = await command(deps, ctx, item.targetSiteId, 'machine.create', spec);
  const m = await recordCreatedMachine(
    deps.store,
    item,
    spec,
    exposed,
    result,
    deps.clock.now().toISOString(),
  );
  return {
    machineId: m.id,
    name: m.name,
    spec,
    disks: exposed.disks.map((d) => ({ id: d.id, nbdUri: d.nbdUri })),
  };
}

/** Drops a deleted machine's record; the agent's inventory report may have dropped it already. */
async function forgetMachine(deps: WorkflowDeps, machineId: string): Promise<void> {
  await deps.store.machines.delete(machineId).catch((err: unknown) => {
    if (!isAbsent(err)) throw err;
  });
}

function createdOf(ctx: StepContext<unknown>, step: string): CreatedMachine {
  const c = ctx.outputs[step] as CreatedMachine | undefined;
  if (c === undefined) throw new OsrError('INTERNAL', `step '${step}' left no machine`);
  return c;
}

async function powerOnAt(
  deps: WorkflowDeps,
  ctx: StepContext<unknown>,
  siteId: string,
  created: CreatedMachine,
): Promise<unknown> {
  const r = await command(deps, ctx, siteId, 'machine.powerOn', { name: created.name });
  await setPower(deps.store, created.machineId, 'Running');
  return { machine: created.name, result: r };
}

/** The NeedsRepair fields for an item left without replication. */
function needsRepair(reason: string): Partial<ProtectedItem> {
  return { protectionState: 'NeedsRepair', replicationHealth: 'Critical', healthReason: reason };
}

function failureOutcome(op: Operation, job: Job): FailureOutcome {
  if (job.state === 'Cancelled') return op === 'UnplannedFailover' ? 'force-cancelled' : 'cancelled';
  return 'failed';
}

async function releaseOnFailure(deps: WorkflowDeps, op: Operation, job: Job): Promise<void> {
  const input = job.input as { itemId: string; accepted: TransitionItem };
  const outcome = failureOutcome(op, job);
  const patch: Partial<ProtectedItem> = { ...stateOnFailure(op, input.accepted, outcome) };
  const stopped = job.steps.find((st) => st.name === STEP.stopReplication);
  const stopOutput = stopped?.output as { skipped?: boolean } | undefined;
  if (
    op === 'UnplannedFailover' &&
    patch.protectionState === 'Protected' &&
    stopped?.state === 'Succeeded' &&
    stopOutput?.skipped !== true
  ) {
    // Replication was stopped (R-FO-5): the item may fail over again, but not plan one.
    Object.assign(patch, {
      resyncRequired: true,
      replicationHealth: 'Critical',
      healthReason:
        'a failed unplanned failover stopped replication: retry the failover, or disable protection and protect the machine again',
    } satisfies Partial<ProtectedItem>);
  }
  if (patch.protectionState === 'NeedsRepair') {
    Object.assign(
      patch,
      needsRepair(
        outcome === 'force-cancelled'
          ? 'the unplanned failover was cancelled with force; replication is stopped'
          : `${job.displayName} did not complete: ${job.error?.message ?? job.state}`,
      ),
    );
  }
  await releaseItem(deps.store, input.itemId, job.id, patch);
}

// ─── test failover ──────────────────────────────────────────────────────────────

function cleanupSteps(deps: WorkflowDeps): StepDefinition<FailoverInput & ItemOpInput>[] {
  return [
    {
      name: STEP.deleteTest,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const created = await testMachineOf(deps, ctx, item);
        await updateHeld(deps.store, item.id, ctx.job.id, { testFailoverState: 'CleanupInProgress' });
        const off = await command(
          deps,
          ctx,
          item.targetSiteId,
          'machine.powerOff',
          { name: created.name },
          'off',
        )
          .then(() => 'stopped')
          .catch((err: unknown) => {
            if (isAbsent(err)) return 'absent';
            throw err;
          });
        await command(
          deps,
          ctx,
          item.targetSiteId,
          'machine.delete',
          { name: created.name, deleteDisks: false },
          'delete',
        );
        const m = await deps.store.machines.find(item.targetSiteId, created.name);
        if (m !== undefined) await forgetMachine(deps, m.id);
        return { machine: created.name, powerOff: off, deleted: true };
      },
    },
    {
      name: STEP.releaseTest,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return command(deps, ctx, item.targetSiteId, 'replica.release', {
          itemId: item.id,
          purpose: 'test',
          resumeReceiving: false,
        });
      },
    },
    {
      name: STEP.finishCleanup,
      async run(ctx) {
        const item = await deps.store.items.getById(ctx.input.itemId);
        const notes = notesOf(ctx);
        if (item.currentJobId !== ctx.job.id) return { testFailoverState: item.testFailoverState, notes };
        await updateHeld(deps.store, item.id, ctx.job.id, { testFailoverState: 'None', currentJobId: null });
        return { testFailoverState: 'None', notes };
      },
    },
  ];
}

function notesOf(ctx: StepContext<FailoverInput & ItemOpInput>): string | null {
  const fromWait = ctx.outputs[STEP.completeTest] as { notes?: string } | undefined;
  return fromWait?.notes ?? ctx.input.notes ?? null;
}

/** The test machine to delete: from this job's own step, or the test job's, or by name. */
async function testMachineOf(
  deps: WorkflowDeps,
  ctx: StepContext<FailoverInput & ItemOpInput>,
  item: ProtectedItem,
): Promise<{ name: string }> {
  const own = ctx.outputs[STEP.createTest] as CreatedMachine | undefined;
  if (own !== undefined) return { name: own.name };
  if (ctx.input.testJobId != null) {
    const testJob = await deps.store.jobs.find(ctx.input.testJobId);
    const out = testJob?.steps.find((s) => s.name === STEP.createTest)?.output as CreatedMachine | undefined;
    if (out?.name !== undefined) return { name: out.name };
  }
  const source = await sourceMachine(deps, item);
  return { name: testMachineName(await targetMachineName(deps, item, source)) };
}

function testFailoverJob(deps: WorkflowDeps): JobDefinition<FailoverInput & ItemOpInput> {
  return {
    type: TEST_FAILOVER,
    displayName: 'Test failover',
    cancellable: true,
    steps: [
      {
        name: STEP.prereq,
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const target = await deps.store.sites.getById(item.targetSiteId);
          const agent = await deps.commands.agentFor(target);
          return { targetAgentId: agent.id, network: parseTestNetwork(ctx.input.network) };
        },
      },
      {
        name: STEP.point,
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          return resolvePoint(deps, ctx, item, ctx.input.point, { failback: ctx.input.failback });
        },
      },
      {
        name: STEP.exposeTest,
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          return expose(deps, ctx, item, await sourceMachine(deps, item), 'test', pointOf(ctx, STEP.point));
        },
      },
      {
        name: STEP.createTest,
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          return createAtTarget(deps, ctx, item, 'test', exposureOf(ctx, STEP.exposeTest));
        },
      },
      {
        name: STEP.startTest,
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          return powerOnAt(deps, ctx, item.targetSiteId, createdOf(ctx, STEP.createTest));
        },
      },
      {
        name: STEP.completeTest,
        async run(ctx) {
          const answer = waitUntilResumed(
            ctx,
            'complete-test',
            'Check the test machine, then complete the test (osr test-cleanup ITEM --notes …) to delete it.',
          );
          if (isWaitRequest(answer)) {
            const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
            if (item.testFailoverState === 'InProgress') {
              await updateHeld(deps.store, item.id, ctx.job.id, { testFailoverState: 'WaitingForCleanup' });
            }
            return answer;
          }
          return { notes: answer };
        },
      },
      ...cleanupSteps(deps),
    ],
    onEnd: (job) => releaseOnFailure(deps, 'TestFailover', job),
  };
}

function testCleanupJob(deps: WorkflowDeps): JobDefinition<FailoverInput & ItemOpInput> {
  return {
    type: TEST_FAILOVER_CLEANUP,
    displayName: 'Test failover cleanup',
    cancellable: false,
    steps: cleanupSteps(deps),
    onEnd: (job) => releaseOnFailure(deps, 'TestFailoverCleanup', job),
  };
}

// ─── planned and unplanned failover ─────────────────────────────────────────────

function failoverSteps(deps: WorkflowDeps, planned: boolean): StepDefinition<FailoverInput>[] {
  const steps: StepDefinition<FailoverInput>[] = [
    {
      name: STEP.prereq,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const source = await deps.store.sites.getById(item.sourceSiteId);
        const target = await deps.store.sites.getById(item.targetSiteId);
        const targetAgent = await deps.commands.agentFor(target);
        // A planned failover needs the source too (R-FO-9); an unplanned one goes on without it.
        const sourceAgent = planned
          ? await deps.commands.agentFor(source)
          : await deps.commands.agentFor(source).catch(() => undefined);
        return {
          targetAgentId: targetAgent.id,
          sourceAgentId: sourceAgent?.id ?? null,
          direction: `${source.name} → ${target.name}`,
          failback: ctx.input.failback,
        };
      },
    },
    {
      name: STEP.shutdownSource,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        if (!planned && !ctx.input.shutdownSource) return { skipped: true, reason: 'not requested' };
        const machine = await sourceMachine(deps, item);
        try {
          const r = await command(deps, ctx, item.sourceSiteId, 'machine.shutdown', {
            name: machine.name,
            timeoutMs: 60_000,
          });
          await setPower(deps.store, machine.id, 'Stopped');
          return { machine: machine.name, result: r };
        } catch (err) {
          // R-FO-3: an unplanned failover continues when the source cannot be shut down.
          if (planned || (err instanceof Error && err.name === 'JobAbortedError')) throw err;
          const e = toOsrError(err);
          return { machine: machine.name, failed: true, code: e.code, message: e.message };
        }
      },
    },
  ];
  if (planned) {
    steps.push({
      name: STEP.drain,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return command<ReplicationDrainResult>(deps, ctx, item.sourceSiteId, 'replication.drain', {
          itemId: item.id,
          timeoutMs: 5 * 60_000,
        });
      },
    });
  } else {
    steps.push({
      name: STEP.stopReplication,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        try {
          return await command(deps, ctx, item.sourceSiteId, 'replication.stop', { itemId: item.id });
        } catch (err) {
          // The source site may be gone: the recovery side stops receiving at the exposure.
          if (err instanceof Error && err.name === 'JobAbortedError') throw err;
          const e = toOsrError(err);
          return { skipped: true, code: e.code, reason: e.message };
        }
      },
    });
  }
  steps.push(
    {
      name: STEP.point,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        if (planned) {
          // Zero data loss (R-FO-9): a new point that holds everything the source wrote.
          const drained = ctx.outputs[STEP.drain] as Partial<ReplicationDrainResult> | undefined;
          return resolvePoint(deps, ctx, item, 'latest', {
            ...(typeof drained?.lastSequence === 'number' ? { minSequence: drained.lastSequence } : {}),
          });
        }
        return resolvePoint(deps, ctx, item, ctx.input.point, { failback: ctx.input.failback });
      },
    },
    {
      name: STEP.expose,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return expose(deps, ctx, item, await sourceMachine(deps, item), 'failover', pointOf(ctx, STEP.point));
      },
    },
    {
      // R-FO-6: the extra processing the machine needs at the other side, shown as its own step.
      name: STEP.prepareMachine,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const spec = await targetSpec(deps, ctx, item, 'failover');
        return { spec, processing: extraProcessing(await sourceMachine(deps, item), spec) };
      },
    },
    {
      name: STEP.create,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const prepared = ctx.outputs[STEP.prepareMachine] as { spec?: FailoverMachineSpec } | undefined;
        return createAtTarget(deps, ctx, item, 'failover', exposureOf(ctx, STEP.expose), prepared?.spec);
      },
    },
  );
  if (planned) {
    steps.push({
      name: STEP.snapshot,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return command(deps, ctx, item.targetSiteId, 'replica.snapshot', {
          itemId: item.id,
          purpose: 'failover',
          snapshot: PRE_POWER_ON_SNAPSHOT,
        });
      },
    });
  }
  steps.push(
    {
      name: STEP.start,
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return powerOnAt(deps, ctx, item.targetSiteId, createdOf(ctx, STEP.create));
      },
    },
    {
      name: STEP.finalizeFailover,
      async run(ctx) {
        const item = await deps.store.items.getById(ctx.input.itemId);
        const created = createdOf(ctx, STEP.create);
        const point = pointOf(ctx, STEP.point);
        if (item.currentJobId !== ctx.job.id && item.lastFailover?.jobId === ctx.job.id) {
          return { protectionState: item.protectionState, machine: created.name };
        }
        const source = await deps.store.sites.getById(item.sourceSiteId);
        const target = await deps.store.sites.getById(item.targetSiteId);
        const sourceMachineRow = await findMachineById(deps.store, item.machineId);
        const previous = item.lastFailover;
        await updateHeld(deps.store, item.id, ctx.job.id, {
          ...stateOnSuccess(ctx.input.op, ctx.input.accepted),
          lastFailover: {
            type: planned ? 'planned' : 'unplanned',
            pointId: point.pointId,
            sequence: point.sequence,
            jobId: ctx.job.id,
            fromKind: source.kind,
            toKind: target.kind,
            targetMachineId: created.machineId,
            startedAt: ctx.job.startedAt ?? ctx.job.createdAt,
            sourceHypervisor:
              previous?.sourceHypervisor ?? sourceMachineRow?.hypervisor ?? created.spec.runtime ?? 'process',
            ...(previous?.reverseLocation === undefined ? {} : { reverseLocation: previous.reverseLocation }),
          },
          currentJobId: null,
        });
        return { protectionState: 'FailedOver', machine: created.name, pointId: point.pointId };
      },
    },
  );
  return steps;
}

/** Hands a failed planned failover to an automatic cancel job (R-FO-11). */
async function rollBackPlanned(deps: WorkflowDeps, job: Job): Promise<void> {
  const input = job.input as FailoverInput;
  const nothingDone = job.steps.slice(1).every((s) => s.state === 'NotStarted');
  if (nothingDone) {
    await releaseOnFailure(deps, 'PlannedFailover', job);
    return;
  }
  const cancelId = uuidFromKey(`${job.id}:automatic-cancel`);
  const item = await deps.store.items.getById(input.itemId).catch(() => undefined);
  if (item === undefined) return;
  if (item.currentJobId === job.id) {
    await updateHeld(deps.store, item.id, job.id, {
      protectionState: 'CancelFailoverInProgress',
      currentJobId: cancelId,
    });
  } else if (item.currentJobId !== cancelId) {
    return;
  }
  if ((await deps.store.jobs.find(cancelId)) !== undefined) return;
  const cancelInput: ItemOpInput = {
    itemId: item.id,
    accepted: input.accepted,
    automatic: true,
    failoverJobId: job.id,
  };
  await deps.engine.submit({
    id: cancelId,
    type: CANCEL_FAILOVER,
    vaultId: item.vaultId,
    targetKind: 'protectedItem',
    targetId: item.id,
    targetName: item.name,
    input: cancelInput,
  });
  await deps.store.events.add({
    vaultId: item.vaultId,
    severity: 'Warning',
    kind: 'PlannedFailoverRolledBack',
    targetId: item.id,
    message: `Planned failover of '${item.name}' did not complete (${job.error?.message ?? job.state}); an automatic cancel job ${cancelId} restores the item.`,
    details: { failoverJobId: job.id, cancelJobId: cancelId },
    time: deps.clock.now().toISOString(),
  });
}

// ─── change recovery point, commit ──────────────────────────────────────────────

function changePointJob(deps: WorkflowDeps): JobDefinition<ItemOpInput> {
  return {
    type: CHANGE_RECOVERY_POINT,
    displayName: 'Change recovery point',
    cancellable: false,
    steps: [
      {
        name: 'Resolve the recovery point',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          return resolvePoint(deps, ctx, item, ctx.input.point ?? 'latest-processed');
        },
      },
      {
        name: 'Stop the machine at the target',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const m = await findMachineById(deps.store, item.lastFailover?.targetMachineId ?? null);
          if (m === undefined) throw new OsrError('NOT_FOUND', 'the failed-over machine is gone');
          await command(deps, ctx, item.targetSiteId, 'machine.powerOff', { name: m.name });
          await setPower(deps.store, m.id, 'Stopped');
          return { machine: m.name };
        },
      },
      {
        name: 'Swap the recovery point',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const p = pointOf(ctx, 'Resolve the recovery point');
          const r = await command(deps, ctx, item.targetSiteId, 'replica.swapPoint', {
            itemId: item.id,
            purpose: 'failover',
            point: { sequence: p.sequence, pointId: p.pointId },
          });
          return normalizeExposure(r, 'failover', p.sequence, await sourceMachine(deps, item));
        },
      },
      {
        name: 'Start the machine at the target',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const m = await findMachineById(deps.store, item.lastFailover?.targetMachineId ?? null);
          if (m === undefined) throw new OsrError('NOT_FOUND', 'the failed-over machine is gone');
          await command(deps, ctx, item.targetSiteId, 'machine.powerOn', { name: m.name });
          await setPower(deps.store, m.id, 'Running');
          return { machine: m.name };
        },
      },
      {
        name: 'Finalize',
        async run(ctx) {
          const item = await deps.store.items.getById(ctx.input.itemId);
          const p = pointOf(ctx, 'Resolve the recovery point');
          if (item.currentJobId !== ctx.job.id) return { pointId: item.lastFailover?.pointId ?? null };
          const lf = item.lastFailover;
          await updateHeld(deps.store, item.id, ctx.job.id, {
            ...stateOnSuccess('ChangePit', ctx.input.accepted),
            ...(lf === null ? {} : { lastFailover: { ...lf, pointId: p.pointId, sequence: p.sequence } }),
            currentJobId: null,
          });
          return { pointId: p.pointId, sequence: p.sequence };
        },
      },
    ],
    onEnd: (job) => releaseOnFailure(deps, 'ChangePit', job),
  };
}

function commitJob(deps: WorkflowDeps): JobDefinition<ItemOpInput> {
  return {
    type: COMMIT_FAILOVER,
    displayName: 'Commit',
    cancellable: false,
    steps: [
      {
        name: 'Commit the failover',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          return command<ReplicaCommitResult>(deps, ctx, item.targetSiteId, 'replica.commit', {
            itemId: item.id,
            purpose: 'failover',
          });
        },
      },
      {
        name: 'Delete the other recovery points',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const keep = item.reversed ? null : (item.lastFailover?.pointId ?? null);
          return { deleted: await deps.store.points.deleteAllExcept(item.id, keep), kept: keep };
        },
      },
      {
        // Failback (R-RP-4): the machine at the recovery site goes; the primary runs unprotected.
        name: 'Delete the machine at the recovery site',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          if (!item.reversed) return { skipped: true, reason: 'not a failback' };
          const m = await findMachineById(deps.store, item.machineId);
          if (m === undefined) return { skipped: true, reason: 'already gone' };
          await command(deps, ctx, item.sourceSiteId, 'replication.stop', { itemId: item.id }, 'stop');
          await command(deps, ctx, item.sourceSiteId, 'machine.powerOff', { name: m.name }, 'off').catch(
            (err: unknown) => {
              if (!isAbsent(err)) throw err;
            },
          );
          await command(
            deps,
            ctx,
            item.sourceSiteId,
            'machine.delete',
            { name: m.name, deleteDisks: true },
            'delete',
          );
          await forgetMachine(deps, m.id);
          return { deleted: m.name };
        },
      },
      {
        name: 'Finalize commit',
        async run(ctx) {
          const item = await deps.store.items.getById(ctx.input.itemId);
          if (item.currentJobId !== ctx.job.id) return { protectionState: item.protectionState };
          const patch: Partial<ProtectedItem> = {
            ...stateOnSuccess('Commit', ctx.input.accepted),
            currentJobId: null,
          };
          if (item.reversed) {
            // Back to the first direction, unprotected until protected again (R-RP-4).
            const primaryMachine = item.lastFailover?.targetMachineId ?? item.machineId;
            Object.assign(patch, {
              machineId: primaryMachine,
              reversed: false,
              sourceSiteId: item.targetSiteId,
              targetSiteId: item.sourceSiteId,
              sourceContainerId: item.targetContainerId,
              targetContainerId: item.sourceContainerId,
              activeLocation: 'primary',
              lastFailover: null,
              replicationHealth: 'Normal',
              healthReason: 'failback committed: the machine runs at the primary site unprotected',
              rpoSeconds: null,
            } satisfies Partial<ProtectedItem>);
          }
          const done = await updateHeld(deps.store, item.id, ctx.job.id, patch);
          return { protectionState: done.protectionState };
        },
      },
    ],
    onEnd: (job) => releaseOnFailure(deps, 'Commit', job),
  };
}

// ─── cancel failover (operator, or automatic after a failed planned failover) ──

/** Re-throws a step's failure with the manual steps as the recommended action (R-FO-11). */
function manualOnFailure(step: StepDefinition<ItemOpInput>): StepDefinition<ItemOpInput> {
  return {
    name: step.name,
    async run(ctx) {
      try {
        return await step.run(ctx);
      } catch (err) {
        if (err instanceof Error && err.name === 'JobAbortedError') throw err;
        const e = toOsrError(err);
        throw new OsrError(e.code, `${e.message}. The cancel of the failover did not complete.`, {
          details: { step: step.name, cause: e.details, manualSteps: MANUAL_CANCEL_STEPS },
          possibleCauses: e.possibleCauses,
          recommendedAction: `${e.recommendedAction} ${MANUAL_CANCEL_STEPS}`,
          cause: err,
        });
      }
    },
  };
}

/** The target machine of the failover being cancelled: from its job's output, or the item's record. */
async function cancelledMachine(
  deps: WorkflowDeps,
  ctx: StepContext<ItemOpInput>,
  item: ProtectedItem,
): Promise<{ id: string | null; name: string } | undefined> {
  if (ctx.input.failoverJobId != null) {
    const fj = await deps.store.jobs.find(ctx.input.failoverJobId);
    const out = fj?.steps.find((s) => s.name === STEP.create)?.output as CreatedMachine | undefined;
    if (out?.name !== undefined) return { id: out.machineId, name: out.name };
    return undefined;
  }
  const m = await findMachineById(deps.store, item.lastFailover?.targetMachineId ?? null);
  return m === undefined ? undefined : { id: m.id, name: m.name };
}

function cancelFailoverJob(deps: WorkflowDeps): JobDefinition<ItemOpInput> {
  const steps: StepDefinition<ItemOpInput>[] = [
    {
      name: 'Stop the machine at the target',
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const m = await cancelledMachine(deps, ctx, item);
        if (m === undefined) return { skipped: true, reason: 'no machine was created' };
        await command(deps, ctx, item.targetSiteId, 'machine.powerOff', { name: m.name }).catch(
          (err: unknown) => {
            if (!isAbsent(err)) throw err;
          },
        );
        if (m.id !== null) await setPower(deps.store, m.id, 'Stopped');
        return { machine: m.name };
      },
    },
    {
      name: 'Revert the target disks',
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return command(deps, ctx, item.targetSiteId, 'replica.revert', {
          itemId: item.id,
          purpose: 'failover',
          snapshot: PRE_POWER_ON_SNAPSHOT,
        }).catch((err: unknown) => {
          if (isAbsent(err)) return { skipped: true, reason: 'no snapshot was taken' };
          throw err;
        });
      },
    },
    {
      name: 'Remove the machine at the target',
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const m = await cancelledMachine(deps, ctx, item);
        if (m === undefined) return { skipped: true, reason: 'no machine was created' };
        if (item.reversed)
          return { skipped: true, reason: 'the original machine stays; its disks are detached' };
        await command(deps, ctx, item.targetSiteId, 'machine.delete', { name: m.name, deleteDisks: false });
        if (m.id !== null) await forgetMachine(deps, m.id);
        return { deleted: m.name };
      },
    },
    {
      name: 'Release the disks and resume receiving',
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        return command(deps, ctx, item.targetSiteId, 'replica.release', {
          itemId: item.id,
          purpose: 'failover',
          resumeReceiving: true,
        });
      },
    },
    {
      name: 'Start the source machine',
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const m = await sourceMachine(deps, item);
        await command(deps, ctx, item.sourceSiteId, 'machine.powerOn', { name: m.name });
        await setPower(deps.store, m.id, 'Running');
        return { machine: m.name };
      },
    },
    {
      name: 'Resume replication',
      async run(ctx) {
        const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
        const m = await sourceMachine(deps, item);
        const target = await deps.store.sites.getById(item.targetSiteId);
        const targetAgent = await deps.commands.agentFor(target);
        const policy = await deps.store.policies.get(item.vaultId, item.policyId);
        return command(deps, ctx, item.sourceSiteId, 'replication.start', {
          itemId: item.id,
          machine: { id: m.id, name: m.name },
          disks: m.disks.map((d) => ({
            id: d.id,
            sizeBytes: d.sizeBytes,
            datastore: d.datastore,
            path: d.path,
          })),
          peer: {
            agentId: targetAgent.id,
            siteId: target.id,
            dataAddress: targetAgent.dataAddress,
            certificatePem: targetAgent.certificatePem,
          },
          policy: {
            copyFrequencySeconds: policy.copyFrequencySeconds,
            appConsistentFrequencyHours: policy.appConsistentFrequencyHours,
            compression: policy.compression,
            bandwidth: policy.bandwidth,
            initialReplication: policy.initialReplication,
            authentication: policy.authentication,
            replicationPort: policy.replicationPort,
          },
          auth: await streamAuthFor(deps.store, policy, item.id),
          replicaExists: true,
          resync: false,
          resume: true,
        });
      },
    },
    {
      name: 'Finalize cancel',
      async run(ctx) {
        const item = await deps.store.items.getById(ctx.input.itemId);
        if (item.currentJobId !== ctx.job.id) return { protectionState: item.protectionState };
        await updateHeld(deps.store, item.id, ctx.job.id, {
          ...stateOnSuccess('CancelFailover', ctx.input.accepted),
          // A failback keeps the record of where the reverse replica lives (the next failback needs it).
          lastFailover: item.reversed ? item.lastFailover : null,
          currentJobId: null,
        });
        return { protectionState: 'Protected' };
      },
    },
  ];
  return {
    type: CANCEL_FAILOVER,
    displayName: 'Cancel failover',
    cancellable: false,
    steps: steps.map(manualOnFailure),
    onEnd: async (job) => {
      const input = job.input as ItemOpInput;
      const reason = `the cancel of the failover did not complete (${job.error?.message ?? job.state}). ${MANUAL_CANCEL_STEPS}`;
      const item = await releaseItem(deps.store, input.itemId, job.id, {
        ...stateOnFailure('CancelFailover', input.accepted, 'rollback-failed'),
        ...needsRepair(reason),
      });
      if (item !== undefined) {
        await deps.store.events.add({
          vaultId: item.vaultId,
          severity: 'Critical',
          kind: 'CancelFailoverFailed',
          targetId: item.id,
          message: `Cancel failover of '${item.name}' failed: cancel it by hand. ${MANUAL_CANCEL_STEPS}`,
          details: {
            jobId: job.id,
            automatic: input.automatic === true,
            failoverJobId: input.failoverJobId ?? null,
          },
          time: deps.clock.now().toISOString(),
        });
      }
    },
  };
}

/** Every job type of this module. */
export function failoverJobs(deps: WorkflowDeps): JobDefinition<never>[] {
  const defs: JobDefinition<FailoverInput & ItemOpInput>[] = [testFailoverJob(deps), testCleanupJob(deps)];
  const planned: JobDefinition<FailoverInput> = {
    type: PLANNED_FAILOVER,
    displayName: 'Planned failover',
    cancellable: true,
    steps: failoverSteps(deps, true),
    onEnd: (job) => rollBackPlanned(deps, job),
  };
  const unplanned: JobDefinition<FailoverInput> = {
    type: UNPLANNED_FAILOVER,
    displayName: 'Unplanned failover',
    cancellable: false,
    steps: failoverSteps(deps, false),
    onEnd: (job) => releaseOnFailure(deps, 'UnplannedFailover', job),
  };
  return [...defs, planned, unplanned, changePointJob(deps), commitJob(deps), cancelFailoverJob(deps)];
}
