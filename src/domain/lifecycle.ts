/**
 * The protected-item lifecycle of DESIGN §4: which operations an item allows now, the
 * state an operation moves it to when its job starts, succeeds or fails, and the
 * failback refusal rules (R-RP-6, R-RP-7).
 *
 * ```
 * Unprotected ─enable─► InitialReplication ─finalize─► Protected ◄────────────────┐
 * Protected ─TestFailover─► test InProgress → WaitingForCleanup ─TestFailoverCleanup─► Protected
 * Protected ─Planned/UnplannedFailover─► FailedOver ─Commit─► FailoverCommitted
 * FailedOver ─ChangePit─► FailedOver
 * FailedOver(planned, cloud→onprem) ─CancelFailover─► Protected
 * FailoverCommitted ─ReverseReplicate─► Protected(reversed) ─────────────────────┘
 * Protected(reversed) ─failover (= failback)─► FailedOver ─Commit─► Unprotected
 * NeedsRepair ─RepairReplication─► Protected
 * ```
 *
 * One long operation at a time: while `currentJobId` is set the item allows nothing,
 * with one exception. A test failover job keeps the item (`currentJobId`) while it is
 * parked in WaitingForAction at "complete test" with `testFailoverState` =
 * `WaitingForCleanup`; `TestFailoverCleanup` is then allowed, and is carried out by
 * resuming that parked job (its remaining steps are the cleanup) — or, when the test
 * job has already ended (failed, or the workflow ends it after parking), by a new job.
 */
import { OsrError } from './errors.js';
import type { ErrorCode } from './errors.js';
import { OPERATIONS } from './model.js';
import type { HypervisorType, MachineOrigin, Operation, ProtectedItem, ProtectionState } from './model.js';

/** The fields of an item the lifecycle decides over. */
export type LifecycleItem = Pick<
  ProtectedItem,
  | 'protectionState'
  | 'testFailoverState'
  | 'currentJobId'
  | 'replicationHealth'
  | 'resyncRequired'
  | 'lastFailover'
  | 'reversed'
  | 'activeLocation'
>;

/** Facts outside the item that some rules need; an absent fact is not checked. */
export interface LifecycleContext {
  /**
   * Whether the agents of both sites are connected. `false` refuses PlannedFailover
   * (R-FO-9) and ReverseReplicate (R-RP-9) with AGENT_DISCONNECTED.
   */
  agentsConnected?: boolean;
}

/** Operations a stable protection state allows when no job holds the item and no test failover is active. */
const STATE_OPERATIONS: Readonly<Record<ProtectionState, readonly Operation[]>> = {
  EnablingProtection: [],
  // No failover before "Finalize protection" (R-REP-1).
  InitialReplication: ['DisableProtection'],
  Protected: ['TestFailover', 'PlannedFailover', 'UnplannedFailover', 'DisableProtection'],
  FailoverInProgress: [],
  // ChangePit only before commit (R-FO-7, R-FO-8).
  FailedOver: ['ChangePit', 'Commit', 'CancelFailover', 'DisableProtection'],
  CommitInProgress: [],
  FailoverCommitted: ['ReverseReplicate', 'DisableProtection'],
  ReprotectInProgress: [],
  CancelFailoverInProgress: [],
  DisablingProtection: [],
  NeedsRepair: ['RepairReplication', 'DisableProtection'],
  // Re-protection is a new enable, not an operation of this item.
  Unprotected: [],
};

interface Refusal {
  code: ErrorCode;
  reason: string;
}

/** Whether the last failover may be cancelled: planned, from a cloud site to an on-premises one (R-FO-10). */
function cancellableFailover(item: LifecycleItem): boolean {
  const f = item.lastFailover;
  return f !== null && f.type === 'planned' && f.fromKind === 'cloud' && f.toKind === 'onprem';
}

function refusalOf(item: LifecycleItem, op: Operation, context: LifecycleContext): Refusal | undefined {
  if (item.currentJobId !== null) {
    if (op === 'TestFailoverCleanup' && item.testFailoverState === 'WaitingForCleanup') return undefined;
    return {
      code: 'OPERATION_NOT_ALLOWED',
      reason: `job ${item.currentJobId} is running on the item; wait for it to end`,
    };
  }
  if (item.testFailoverState !== 'None') {
    if (op === 'TestFailoverCleanup') return undefined;
    return {
      code: 'OPERATION_NOT_ALLOWED',
      reason: `a test failover is active (${item.testFailoverState}); clean it up first`,
    };
  }
  if (!STATE_OPERATIONS[item.protectionState].includes(op)) {
    return { code: 'OPERATION_NOT_ALLOWED', reason: `not allowed while the item is ${item.protectionState}` };
  }
  switch (op) {
    case 'PlannedFailover':
      if (item.resyncRequired) {
        return {
          code: 'REPLICATION_UNHEALTHY',
          reason: 'replication needs resync; a planned failover would lose data',
        };
      }
      if (item.replicationHealth === 'Critical') {
        return { code: 'REPLICATION_UNHEALTHY', reason: 'replication health is Critical' };
      }
      if (context.agentsConnected === false) {
        return {
          code: 'AGENT_DISCONNECTED',
          reason: 'a planned failover needs the agents of both sites connected',
        };
      }
      return undefined;
    case 'CancelFailover':
      if (!cancellableFailover(item)) {
        const f = item.lastFailover;
        return {
          code: 'CANCEL_FAILOVER_NOT_ALLOWED',
          reason:
            f === null
              ? 'the item has no failover to cancel'
              : `only a planned failover from a cloud site to an on-premises site can be cancelled (this one: ${f.type}, ${f.fromKind}→${f.toKind})`,
        };
      }
      return undefined;
    case 'ReverseReplicate':
      if (context.agentsConnected === false) {
        return { code: 'AGENT_DISCONNECTED', reason: 'reprotect needs the agents of both sites connected' };
      }
      return undefined;
    default:
      return undefined;
  }
}

/**
 * The operations allowed on `item` now, in {@link OPERATIONS} order. See the module
 * comment for the rules; `context` narrows the set when it reports disconnected agents.
 */
export function allowedOperations(item: LifecycleItem, context: LifecycleContext = {}): Operation[] {
  return OPERATIONS.filter((op) => refusalOf(item, op, context) === undefined);
}

/** Whether `op` is allowed on `item` now. */
export function isAllowed(item: LifecycleItem, op: Operation, context: LifecycleContext = {}): boolean {
  return refusalOf(item, op, context) === undefined;
}

/**
 * Throws unless `op` is allowed on `item` now. The code is OPERATION_NOT_ALLOWED for a
 * state refusal, or the specific REPLICATION_UNHEALTHY (R-FO-9), AGENT_DISCONNECTED
 * (R-FO-9, R-RP-9) or CANCEL_FAILOVER_NOT_ALLOWED (R-FO-10); all are HTTP 409/503 and
 * carry `details: { operation, protectionState, testFailoverState, currentJobId,
 * allowedOperations, reason }`.
 */
export function assertAllowed(item: LifecycleItem, op: Operation, context: LifecycleContext = {}): void {
  const refusal = refusalOf(item, op, context);
  if (refusal === undefined) return;
  const allowed = allowedOperations(item, context);
  const test = item.testFailoverState === 'None' ? '' : `, test failover ${item.testFailoverState}`;
  throw new OsrError(
    refusal.code,
    `${op} is not allowed: ${refusal.reason} (state ${item.protectionState}${test}). ` +
      `Allowed now: ${allowed.length === 0 ? 'none' : allowed.join(', ')}.`,
    {
      details: {
        operation: op,
        protectionState: item.protectionState,
        testFailoverState: item.testFailoverState,
        currentJobId: item.currentJobId,
        allowedOperations: allowed,
        reason: refusal.reason,
      },
    },
  );
}

/** The item fields an operation's job sets; everything else is left as it is. */
export type ItemStatePatch = Partial<
  Pick<
    ProtectedItem,
    | 'protectionState'
    | 'testFailoverState'
    | 'activeLocation'
    | 'reversed'
    | 'resyncRequired'
    | 'sourceSiteId'
    | 'targetSiteId'
    | 'sourceContainerId'
    | 'targetContainerId'
  >
>;

/** The item fields {@link stateOnSuccess} and {@link stateOnFailure} read. */
export type TransitionItem = Pick<
  ProtectedItem,
  'protectionState' | 'reversed' | 'sourceSiteId' | 'targetSiteId' | 'sourceContainerId' | 'targetContainerId'
>;

/** The state an operation's job sets on the item when it starts (together with `currentJobId`). */
export function stateOnStart(op: Operation): ItemStatePatch {
  switch (op) {
    case 'TestFailover':
      return { testFailoverState: 'InProgress' };
    case 'TestFailoverCleanup':
      return { testFailoverState: 'CleanupInProgress' };
    // ChangePit brings the machine at the target up again at another point: a failover again.
    case 'PlannedFailover':
    case 'UnplannedFailover':
    case 'ChangePit':
      return { protectionState: 'FailoverInProgress' };
    case 'Commit':
      return { protectionState: 'CommitInProgress' };
    case 'CancelFailover':
      return { protectionState: 'CancelFailoverInProgress' };
    case 'ReverseReplicate':
      return { protectionState: 'ReprotectInProgress' };
    case 'DisableProtection':
      return { protectionState: 'DisablingProtection' };
    case 'RepairReplication':
      // Repair is a resync: the replica is brought level with the source again.
      return { protectionState: 'InitialReplication' };
  }
}

/** Where a failover (or failback) brings the machine: the other side of the replication direction. */
function failoverDestination(item: TransitionItem): ProtectedItem['activeLocation'] {
  return item.reversed ? 'primary' : 'recovery';
}

function failoverOrigin(item: TransitionItem): ProtectedItem['activeLocation'] {
  return item.reversed ? 'recovery' : 'primary';
}

/**
 * The state an operation's job sets when it succeeds (the job then clears
 * `currentJobId`). A failover of a reversed item is a failback: it brings the machine
 * back to the primary site, and its commit leaves the item Unprotected (R-RP-4).
 * Reprotect swaps the replication direction. `item` is the item as the operation was
 * accepted; only its direction fields are read.
 */
export function stateOnSuccess(op: Operation, item: TransitionItem): ItemStatePatch {
  switch (op) {
    case 'TestFailover':
      return { testFailoverState: 'WaitingForCleanup' };
    case 'TestFailoverCleanup':
      return { testFailoverState: 'None' };
    case 'PlannedFailover':
    case 'UnplannedFailover':
      return { protectionState: 'FailedOver', activeLocation: failoverDestination(item) };
    case 'ChangePit':
      return { protectionState: 'FailedOver' };
    case 'Commit':
      return item.reversed ? { protectionState: 'Unprotected' } : { protectionState: 'FailoverCommitted' };
    case 'CancelFailover':
      return { protectionState: 'Protected', activeLocation: failoverOrigin(item) };
    case 'ReverseReplicate':
      return {
        protectionState: 'Protected',
        reversed: !item.reversed,
        resyncRequired: false,
        sourceSiteId: item.targetSiteId,
        targetSiteId: item.sourceSiteId,
        sourceContainerId: item.targetContainerId,
        targetContainerId: item.sourceContainerId,
      };
    case 'DisableProtection':
      return { protectionState: 'Unprotected', testFailoverState: 'None' };
    case 'RepairReplication':
      return { protectionState: 'Protected', resyncRequired: false };
  }
}

/**
 * How an operation's job ended without success:
 * - `failed`: a step failed (the workflow has undone what it could);
 * - `cancelled`: an operator cancelled it;
 * - `force-cancelled`: an operator cancelled an unplanned failover with force (R-FO-5);
 * - `rollback-failed`: a planned failover or a cancel failed and so did its automatic
 *   rollback (R-FO-11): the operator must recover by hand.
 */
export type FailureOutcome = 'failed' | 'cancelled' | 'force-cancelled' | 'rollback-failed';

/**
 * The state an operation's job sets when it fails or is cancelled (the job then clears
 * `currentJobId`). `item` is the item as the operation was accepted, before
 * {@link stateOnStart} (workflows keep it in the job input); DisableProtection restores
 * its state so the disable can be retried.
 *
 * - TestFailover / TestFailoverCleanup → test WaitingForCleanup (a failed test may have
 *   created resources; cleanup deletes whatever exists).
 * - PlannedFailover → Protected (rolled back, R-FO-11); `rollback-failed` → NeedsRepair.
 * - UnplannedFailover → Protected so it can be retried; `force-cancelled` → NeedsRepair
 *   (replication was stopped, R-FO-5).
 * - ChangePit, Commit → FailedOver; CancelFailover → FailedOver (`rollback-failed` → NeedsRepair).
 * - ReverseReplicate → FailoverCommitted (retry later, R-RP-5); RepairReplication → NeedsRepair.
 */
export function stateOnFailure(
  op: Operation,
  item: TransitionItem,
  outcome: FailureOutcome = 'failed',
): ItemStatePatch {
  switch (op) {
    case 'TestFailover':
    case 'TestFailoverCleanup':
      return { testFailoverState: 'WaitingForCleanup' };
    case 'PlannedFailover':
      return { protectionState: outcome === 'rollback-failed' ? 'NeedsRepair' : 'Protected' };
    case 'UnplannedFailover':
      return {
        protectionState:
          outcome === 'force-cancelled' || outcome === 'rollback-failed' ? 'NeedsRepair' : 'Protected',
      };
    case 'ChangePit':
    case 'Commit':
      return { protectionState: 'FailedOver' };
    case 'CancelFailover':
      return { protectionState: outcome === 'rollback-failed' ? 'NeedsRepair' : 'FailedOver' };
    case 'ReverseReplicate':
      return { protectionState: 'FailoverCommitted' };
    case 'DisableProtection':
      return {
        protectionState: STATE_OPERATIONS[item.protectionState].includes('DisableProtection')
          ? item.protectionState
          : 'NeedsRepair',
      };
    case 'RepairReplication':
      return { protectionState: 'NeedsRepair' };
  }
}

/** Whether an operator may cancel an operation's job: `yes`, only with force, or `no`. */
export type CancelRule = 'yes' | 'force' | 'no';

/**
 * How an operation's job may be cancelled. Unplanned failover needs force because the
 * item stops replicating (R-FO-5); ChangePit, Commit, CancelFailover, cleanup and
 * disable run to the end because stopping them half-way leaves nothing to roll back to.
 */
export function cancelRule(op: Operation): CancelRule {
  switch (op) {
    case 'TestFailover':
    case 'PlannedFailover':
    case 'ReverseReplicate':
    case 'RepairReplication':
      return 'yes';
    case 'UnplannedFailover':
      return 'force';
    case 'TestFailoverCleanup':
    case 'ChangePit':
    case 'Commit':
    case 'CancelFailover':
    case 'DisableProtection':
      return 'no';
  }
}

/**
 * Throws JOB_NOT_CANCELLABLE when `op`'s job cannot be cancelled, or FORCE_REQUIRED
 * when it can only be cancelled with force and `force` is not set (the warning of R-FO-5).
 */
export function assertCancellable(op: Operation, force = false): void {
  const rule = cancelRule(op);
  if (rule === 'no') {
    throw new OsrError('JOB_NOT_CANCELLABLE', `${op} cannot be cancelled once started.`, {
      details: { operation: op },
    });
  }
  if (rule === 'force' && !force) {
    throw new OsrError(
      'FORCE_REQUIRED',
      `Cancelling ${op} stops replication of the item; it will need repair. Repeat with force to confirm.`,
      { details: { operation: op } },
    );
  }
}

/** Facts about a failback request that the control plane gathers from inventory (R-RP-6, R-RP-7). */
export interface FailbackFacts {
  /** The machine that the failover created at the recovery side still exists. */
  targetMachineExists: boolean;
  /** How that machine came to exist (only `failover` may fail back). */
  targetMachineOrigin: MachineOrigin | null;
  /** It was moved to another container (resource group). */
  movedToOtherContainer: boolean;
  /** Protection of the item was disabled. */
  protectionDisabled: boolean;
  /** Hypervisor type of the original machine at the primary site. */
  sourceHypervisor: HypervisorType;
  /** Hypervisor type the failback would create the machine on at the primary site. */
  targetHypervisor: HypervisorType;
  /** The item was migrated (migration completed): there is nothing to fail back to. */
  migrationCompleted?: boolean;
}

/** Why a failback is refused; `details.reason` of FAILBACK_NOT_ALLOWED. */
export type FailbackRefusalReason =
  | 'migration-completed'
  | 'protection-disabled'
  | 'machine-deleted'
  | 'machine-moved'
  | 'machine-not-from-failover'
  | 'not-original-site'
  | 'physical-target'
  | 'hypervisor-mismatch';

const VIRTUAL: readonly HypervisorType[] = ['process', 'qemu'];

/**
 * The refusal of a failback, or undefined when it may go ahead. A failback is a
 * failover of a reversed item; for an item that is not reversed this returns
 * undefined. Refused (R-RP-6) when migration was completed, protection was disabled,
 * the failed-over machine was deleted, moved to another container or not created by
 * failover; and (R-RP-7) when the item would not go back to its primary site, or the
 * hypervisor types differ — except that a physical machine fails back as a virtual one
 * (and never as a physical one).
 */
export function failbackRefusal(
  item: Pick<ProtectedItem, 'reversed' | 'targetSiteId' | 'primarySiteId' | 'name'>,
  facts: FailbackFacts,
): OsrError | undefined {
  if (!item.reversed) return undefined;
  const refuse = (reason: FailbackRefusalReason, text: string): OsrError =>
    new OsrError('FAILBACK_NOT_ALLOWED', `Failback of '${item.name}' is not possible: ${text}.`, {
      details: { reason, ...facts },
    });
  if (facts.migrationCompleted === true) return refuse('migration-completed', 'its migration was completed');
  if (facts.protectionDisabled) return refuse('protection-disabled', 'protection was disabled');
  if (!facts.targetMachineExists) return refuse('machine-deleted', 'the failed-over machine was deleted');
  if (facts.movedToOtherContainer) {
    return refuse('machine-moved', 'the failed-over machine was moved to another container');
  }
  if (facts.targetMachineOrigin !== 'failover') {
    return refuse(
      'machine-not-from-failover',
      `the machine at the recovery site was not created by failover (origin: ${facts.targetMachineOrigin ?? 'unknown'})`,
    );
  }
  if (item.targetSiteId !== item.primarySiteId) {
    return refuse('not-original-site', 'failback goes only to the original (primary) site');
  }
  if (facts.sourceHypervisor === 'physical') {
    if (!VIRTUAL.includes(facts.targetHypervisor)) {
      return refuse('physical-target', 'a physical server fails back only as a virtual machine');
    }
    return undefined;
  }
  if (facts.targetHypervisor !== facts.sourceHypervisor) {
    return refuse(
      'hypervisor-mismatch',
      `the machine came from ${facts.sourceHypervisor} and cannot fail back to ${facts.targetHypervisor}`,
    );
  }
  return undefined;
}
