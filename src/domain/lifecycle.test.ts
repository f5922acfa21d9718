import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import {
  allowedOperations,
  assertAllowed,
  assertCancellable,
  cancelRule,
  failbackRefusal,
  isAllowed,
  stateOnFailure,
  stateOnStart,
  stateOnSuccess,
} from './lifecycle.js';
import type { FailbackFacts, FailureOutcome, LifecycleItem, TransitionItem } from './lifecycle.js';
import { OPERATIONS } from './model.js';
import type { FailoverRecord, Operation, ProtectionState, TestFailoverState } from './model.js';

const PROTECTION_STATES: ProtectionState[] = [
  'EnablingProtection',
  'InitialReplication',
  'Protected',
  'FailoverInProgress',
  'FailedOver',
  'CommitInProgress',
  'FailoverCommitted',
  'ReprotectInProgress',
  'CancelFailoverInProgress',
  'DisablingProtection',
  'NeedsRepair',
  'Unprotected',
];
const TEST_STATES: TestFailoverState[] = ['None', 'InProgress', 'WaitingForCleanup', 'CleanupInProgress'];

const cancellableFailover: FailoverRecord = {
  type: 'planned',
  pointId: 'p1',
  jobId: 'j0',
  fromKind: 'cloud',
  toKind: 'onprem',
  targetMachineId: 'm2',
  startedAt: '2030-01-01T00:00:00Z',
};

function item(over: Partial<LifecycleItem> = {}): LifecycleItem {
  return {
    protectionState: 'Protected',
    testFailoverState: 'None',
    currentJobId: null,
    replicationHealth: 'Normal',
    resyncRequired: false,
    lastFailover: cancellableFailover,
    reversed: false,
    activeLocation: 'primary',
    ...over,
  };
}

/** The exact allowed set per protection state with no job, no test failover, healthy, cancellable last failover. */
const EXPECTED_BY_STATE: Record<ProtectionState, Operation[]> = {
  EnablingProtection: [],
  InitialReplication: ['DisableProtection'],
  Protected: ['TestFailover', 'PlannedFailover', 'UnplannedFailover', 'DisableProtection'],
  FailoverInProgress: [],
  FailedOver: ['ChangePit', 'Commit', 'CancelFailover', 'DisableProtection'],
  CommitInProgress: [],
  FailoverCommitted: ['ReverseReplicate', 'DisableProtection'],
  ReprotectInProgress: [],
  CancelFailoverInProgress: [],
  DisablingProtection: [],
  NeedsRepair: ['DisableProtection', 'RepairReplication'],
  Unprotected: [],
};

function expected(state: ProtectionState, test: TestFailoverState, jobHeld: boolean): Operation[] {
  if (jobHeld) return test === 'WaitingForCleanup' ? ['TestFailoverCleanup'] : [];
  if (test !== 'None') return ['TestFailoverCleanup'];
  return EXPECTED_BY_STATE[state];
}

void describe('allowedOperations: every state combination', () => {
  for (const state of PROTECTION_STATES) {
    for (const test of TEST_STATES) {
      for (const jobHeld of [false, true]) {
        const want = expected(state, test, jobHeld);
        void it(`${state} / test ${test} / ${jobHeld ? 'job running' : 'no job'} → [${want.join(', ')}]`, () => {
          const it0 = item({
            protectionState: state,
            testFailoverState: test,
            currentJobId: jobHeld ? 'job-1' : null,
          });
          assert.deepEqual(allowedOperations(it0), want);
          for (const op of OPERATIONS) {
            assert.equal(isAllowed(it0, op), want.includes(op), op);
            if (want.includes(op)) assert.doesNotThrow(() => assertAllowed(it0, op));
            else assert.throws(() => assertAllowed(it0, op), OsrError);
          }
        });
      }
    }
  }

  void it('lists operations in the OPERATIONS order', () => {
    const ops = allowedOperations(item({ protectionState: 'FailedOver' }));
    assert.deepEqual(
      ops,
      OPERATIONS.filter((op) => ops.includes(op)),
    );
  });
});

void describe('conditions on top of the state', () => {
  void it('planned failover needs healthy replication (R-FO-9)', () => {
    assert.deepEqual(allowedOperations(item({ replicationHealth: 'Critical' })), [
      'TestFailover',
      'UnplannedFailover',
      'DisableProtection',
    ]);
    assert.deepEqual(allowedOperations(item({ resyncRequired: true })), [
      'TestFailover',
      'UnplannedFailover',
      'DisableProtection',
    ]);
    assert.ok(isAllowed(item({ replicationHealth: 'Warning' }), 'PlannedFailover'));
  });

  void it('planned failover and reprotect need both agents when the context says they are not connected', () => {
    assert.deepEqual(allowedOperations(item(), { agentsConnected: false }), [
      'TestFailover',
      'UnplannedFailover',
      'DisableProtection',
    ]);
    assert.deepEqual(allowedOperations(item(), { agentsConnected: true }), EXPECTED_BY_STATE.Protected);
    assert.deepEqual(
      allowedOperations(item({ protectionState: 'FailoverCommitted' }), { agentsConnected: false }),
      ['DisableProtection'],
    );
  });

  const directions: [FailoverRecord | null, boolean][] = [
    [cancellableFailover, true],
    [{ ...cancellableFailover, type: 'unplanned' }, false],
    [{ ...cancellableFailover, fromKind: 'onprem', toKind: 'onprem' }, false],
    [{ ...cancellableFailover, fromKind: 'onprem', toKind: 'cloud' }, false],
    [{ ...cancellableFailover, fromKind: 'cloud', toKind: 'cloud' }, false],
    [null, false],
  ];
  for (const [lastFailover, allowed] of directions) {
    const label =
      lastFailover === null
        ? 'no record'
        : `${lastFailover.type} ${lastFailover.fromKind}→${lastFailover.toKind}`;
    void it(`cancel failover for ${label}: ${allowed ? 'allowed' : 'refused'} (R-FO-10)`, () => {
      const it0 = item({ protectionState: 'FailedOver', lastFailover });
      assert.equal(isAllowed(it0, 'CancelFailover'), allowed);
      assert.deepEqual(
        allowedOperations(it0),
        allowed ? EXPECTED_BY_STATE.FailedOver : ['ChangePit', 'Commit', 'DisableProtection'],
      );
      if (!allowed) {
        assert.throws(
          () => assertAllowed(it0, 'CancelFailover'),
          (err: unknown) => err instanceof OsrError && err.code === 'CANCEL_FAILOVER_NOT_ALLOWED',
        );
      }
    });
  }

  void it('a reversed (failback) item follows the same rules', () => {
    assert.deepEqual(
      allowedOperations(item({ reversed: true, activeLocation: 'recovery' })),
      EXPECTED_BY_STATE.Protected,
    );
    assert.deepEqual(
      allowedOperations(item({ reversed: true, protectionState: 'FailedOver', activeLocation: 'primary' })),
      EXPECTED_BY_STATE.FailedOver,
    );
  });
});

void describe('assertAllowed errors', () => {
  function caught(fn: () => void): OsrError {
    try {
      fn();
    } catch (err) {
      assert.ok(err instanceof OsrError);
      return err;
    }
    assert.fail('expected a throw');
  }

  void it('refuses with OPERATION_NOT_ALLOWED naming the state and the allowed operations', () => {
    const err = caught(() => assertAllowed(item({ protectionState: 'FailedOver' }), 'PlannedFailover'));
    assert.equal(err.code, 'OPERATION_NOT_ALLOWED');
    assert.deepEqual(err.details, {
      operation: 'PlannedFailover',
      protectionState: 'FailedOver',
      testFailoverState: 'None',
      currentJobId: null,
      allowedOperations: ['ChangePit', 'Commit', 'CancelFailover', 'DisableProtection'],
      reason: 'not allowed while the item is FailedOver',
    });
    assert.match(err.message, /FailedOver/);
    assert.match(err.message, /ChangePit, Commit, CancelFailover, DisableProtection/);
  });

  void it('names the running job', () => {
    const err = caught(() => assertAllowed(item({ currentJobId: 'job-42' }), 'UnplannedFailover'));
    assert.equal(err.code, 'OPERATION_NOT_ALLOWED');
    assert.match(err.message, /job-42/);
    assert.deepEqual((err.details as { allowedOperations: Operation[] }).allowedOperations, []);
  });

  void it('refuses a second test failover while one is active', () => {
    const err = caught(() => assertAllowed(item({ testFailoverState: 'WaitingForCleanup' }), 'TestFailover'));
    assert.equal(err.code, 'OPERATION_NOT_ALLOWED');
    assert.deepEqual((err.details as { allowedOperations: Operation[] }).allowedOperations, [
      'TestFailoverCleanup',
    ]);
  });

  void it('uses REPLICATION_UNHEALTHY and AGENT_DISCONNECTED for planned failover', () => {
    assert.equal(
      caught(() => assertAllowed(item({ resyncRequired: true }), 'PlannedFailover')).code,
      'REPLICATION_UNHEALTHY',
    );
    assert.equal(
      caught(() => assertAllowed(item({ replicationHealth: 'Critical' }), 'PlannedFailover')).code,
      'REPLICATION_UNHEALTHY',
    );
    assert.equal(
      caught(() => assertAllowed(item(), 'PlannedFailover', { agentsConnected: false })).code,
      'AGENT_DISCONNECTED',
    );
    assert.equal(
      caught(() =>
        assertAllowed(item({ protectionState: 'FailoverCommitted' }), 'ReverseReplicate', {
          agentsConnected: false,
        }),
      ).code,
      'AGENT_DISCONNECTED',
    );
  });

  void it('a state refusal wins over a condition refusal', () => {
    assert.equal(
      caught(() =>
        assertAllowed(item({ protectionState: 'NeedsRepair', resyncRequired: true }), 'PlannedFailover'),
      ).code,
      'OPERATION_NOT_ALLOWED',
    );
  });
});

const forward: TransitionItem = {
  protectionState: 'Protected',
  reversed: false,
  sourceSiteId: 'primary',
  targetSiteId: 'recovery',
  sourceContainerId: 'c-primary',
  targetContainerId: 'c-recovery',
};
const reversed: TransitionItem = {
  ...forward,
  reversed: true,
  sourceSiteId: 'recovery',
  targetSiteId: 'primary',
  sourceContainerId: 'c-recovery',
  targetContainerId: 'c-primary',
};

void describe('transitions', () => {
  void it('start states', () => {
    const table: Record<Operation, object> = {
      TestFailover: { testFailoverState: 'InProgress' },
      TestFailoverCleanup: { testFailoverState: 'CleanupInProgress' },
      PlannedFailover: { protectionState: 'FailoverInProgress' },
      UnplannedFailover: { protectionState: 'FailoverInProgress' },
      ChangePit: { protectionState: 'FailoverInProgress' },
      Commit: { protectionState: 'CommitInProgress' },
      CancelFailover: { protectionState: 'CancelFailoverInProgress' },
      ReverseReplicate: { protectionState: 'ReprotectInProgress' },
      DisableProtection: { protectionState: 'DisablingProtection' },
      RepairReplication: { protectionState: 'InitialReplication' },
    };
    for (const op of OPERATIONS) assert.deepEqual(stateOnStart(op), table[op], op);
  });

  void it('every start state holds the item against every other operation', () => {
    for (const op of OPERATIONS) {
      const started = { ...item(), ...stateOnStart(op), currentJobId: 'j' };
      assert.deepEqual(allowedOperations(started), [], op);
    }
  });

  void it('success states of a forward item', () => {
    const table: Record<Operation, object> = {
      TestFailover: { testFailoverState: 'WaitingForCleanup' },
      TestFailoverCleanup: { testFailoverState: 'None' },
      PlannedFailover: { protectionState: 'FailedOver', activeLocation: 'recovery' },
      UnplannedFailover: { protectionState: 'FailedOver', activeLocation: 'recovery' },
      ChangePit: { protectionState: 'FailedOver' },
      Commit: { protectionState: 'FailoverCommitted' },
      CancelFailover: { protectionState: 'Protected', activeLocation: 'primary' },
      ReverseReplicate: {
        protectionState: 'Protected',
        reversed: true,
        resyncRequired: false,
        sourceSiteId: 'recovery',
        targetSiteId: 'primary',
        sourceContainerId: 'c-recovery',
        targetContainerId: 'c-primary',
      },
      DisableProtection: { protectionState: 'Unprotected', testFailoverState: 'None' },
      RepairReplication: { protectionState: 'Protected', resyncRequired: false },
    };
    for (const op of OPERATIONS) assert.deepEqual(stateOnSuccess(op, forward), table[op], op);
  });

  void it('failback: failover of a reversed item goes to the primary, its commit leaves it unprotected (R-RP-4)', () => {
    assert.deepEqual(stateOnSuccess('PlannedFailover', reversed), {
      protectionState: 'FailedOver',
      activeLocation: 'primary',
    });
    assert.deepEqual(stateOnSuccess('UnplannedFailover', reversed), {
      protectionState: 'FailedOver',
      activeLocation: 'primary',
    });
    assert.deepEqual(stateOnSuccess('Commit', reversed), { protectionState: 'Unprotected' });
    assert.deepEqual(stateOnSuccess('CancelFailover', reversed), {
      protectionState: 'Protected',
      activeLocation: 'recovery',
    });
    assert.deepEqual(stateOnSuccess('ReverseReplicate', reversed), {
      protectionState: 'Protected',
      reversed: false,
      resyncRequired: false,
      sourceSiteId: 'primary',
      targetSiteId: 'recovery',
      sourceContainerId: 'c-primary',
      targetContainerId: 'c-recovery',
    });
  });

  const failures: [Operation, FailureOutcome, ProtectionState | undefined, object][] = [
    ['TestFailover', 'failed', undefined, { testFailoverState: 'WaitingForCleanup' }],
    ['TestFailover', 'cancelled', undefined, { testFailoverState: 'WaitingForCleanup' }],
    ['TestFailoverCleanup', 'failed', undefined, { testFailoverState: 'WaitingForCleanup' }],
    ['PlannedFailover', 'failed', undefined, { protectionState: 'Protected' }],
    ['PlannedFailover', 'cancelled', undefined, { protectionState: 'Protected' }],
    ['PlannedFailover', 'rollback-failed', undefined, { protectionState: 'NeedsRepair' }],
    ['UnplannedFailover', 'failed', undefined, { protectionState: 'Protected' }],
    ['UnplannedFailover', 'force-cancelled', undefined, { protectionState: 'NeedsRepair' }],
    ['UnplannedFailover', 'rollback-failed', undefined, { protectionState: 'NeedsRepair' }],
    ['ChangePit', 'failed', 'FailedOver', { protectionState: 'FailedOver' }],
    ['Commit', 'failed', 'FailedOver', { protectionState: 'FailedOver' }],
    ['CancelFailover', 'failed', 'FailedOver', { protectionState: 'FailedOver' }],
    ['CancelFailover', 'rollback-failed', 'FailedOver', { protectionState: 'NeedsRepair' }],
    ['ReverseReplicate', 'failed', 'FailoverCommitted', { protectionState: 'FailoverCommitted' }],
    ['ReverseReplicate', 'cancelled', 'FailoverCommitted', { protectionState: 'FailoverCommitted' }],
    ['DisableProtection', 'failed', 'Protected', { protectionState: 'Protected' }],
    ['DisableProtection', 'failed', 'FailedOver', { protectionState: 'FailedOver' }],
    ['DisableProtection', 'failed', 'InitialReplication', { protectionState: 'InitialReplication' }],
    ['DisableProtection', 'failed', 'NeedsRepair', { protectionState: 'NeedsRepair' }],
    // Given the in-progress item by mistake, it falls back to a state that still allows the retry.
    ['DisableProtection', 'failed', 'DisablingProtection', { protectionState: 'NeedsRepair' }],
    ['RepairReplication', 'failed', 'NeedsRepair', { protectionState: 'NeedsRepair' }],
    ['RepairReplication', 'cancelled', 'NeedsRepair', { protectionState: 'NeedsRepair' }],
  ];
  for (const [op, outcome, before, want] of failures) {
    void it(`${op} ${outcome}${before === undefined ? '' : ` from ${before}`} → ${JSON.stringify(want)}`, () => {
      assert.deepEqual(
        stateOnFailure(op, { ...forward, protectionState: before ?? 'Protected' }, outcome),
        want,
      );
    });
  }

  void it('after a failure the operation can be retried or recovered', () => {
    const retry: [Operation, Operation][] = [
      ['TestFailover', 'TestFailoverCleanup'],
      ['TestFailoverCleanup', 'TestFailoverCleanup'],
      ['PlannedFailover', 'PlannedFailover'],
      ['UnplannedFailover', 'UnplannedFailover'],
      ['ChangePit', 'ChangePit'],
      ['Commit', 'Commit'],
      ['CancelFailover', 'CancelFailover'],
      ['ReverseReplicate', 'ReverseReplicate'],
      ['RepairReplication', 'RepairReplication'],
    ];
    for (const [op, next] of retry) {
      const start = item({ protectionState: op === 'ReverseReplicate' ? 'FailoverCommitted' : 'Protected' });
      const after = { ...start, ...stateOnStart(op), ...stateOnFailure(op, forward), currentJobId: null };
      assert.ok(
        isAllowed(after, next),
        `${op} failed → ${next} allowed (state ${after.protectionState}/${after.testFailoverState})`,
      );
    }
  });

  void it('walks the whole DESIGN §4 cycle: protect, test, failover, commit, reprotect, failback, commit', () => {
    let it0: LifecycleItem & TransitionItem = { ...item(), ...forward };
    const run = (op: Operation): void => {
      assertAllowed(it0, op);
      const accepted = it0;
      it0 = { ...it0, ...stateOnStart(op), currentJobId: 'j' };
      it0 = { ...it0, ...stateOnSuccess(op, accepted), currentJobId: null };
    };
    run('TestFailover');
    assert.equal(it0.testFailoverState, 'WaitingForCleanup');
    run('TestFailoverCleanup');
    assert.equal(it0.testFailoverState, 'None');
    run('PlannedFailover');
    assert.equal(it0.activeLocation, 'recovery');
    it0 = { ...it0, lastFailover: { ...cancellableFailover, fromKind: 'onprem', toKind: 'onprem' } };
    run('ChangePit');
    run('Commit');
    assert.equal(it0.protectionState, 'FailoverCommitted');
    run('ReverseReplicate');
    assert.equal(it0.reversed, true);
    assert.equal(it0.targetSiteId, 'primary');
    run('UnplannedFailover');
    assert.equal(it0.activeLocation, 'primary');
    run('Commit');
    assert.equal(it0.protectionState, 'Unprotected');
    assert.deepEqual(allowedOperations(it0), []);
  });
});

void describe('cancel rules', () => {
  void it('classifies every operation', () => {
    const table: Record<Operation, string> = {
      TestFailover: 'yes',
      TestFailoverCleanup: 'no',
      PlannedFailover: 'yes',
      UnplannedFailover: 'force',
      ChangePit: 'no',
      Commit: 'no',
      CancelFailover: 'no',
      ReverseReplicate: 'yes',
      DisableProtection: 'no',
      RepairReplication: 'yes',
    };
    for (const op of OPERATIONS) assert.equal(cancelRule(op), table[op], op);
  });
  void it('unplanned failover needs force (R-FO-5)', () => {
    assert.throws(
      () => assertCancellable('UnplannedFailover'),
      (err: unknown) => err instanceof OsrError && err.code === 'FORCE_REQUIRED',
    );
    assert.doesNotThrow(() => assertCancellable('UnplannedFailover', true));
    assert.doesNotThrow(() => assertCancellable('PlannedFailover'));
    assert.throws(
      () => assertCancellable('Commit', true),
      (err: unknown) => err instanceof OsrError && err.code === 'JOB_NOT_CANCELLABLE',
    );
  });
});

void describe('failbackRefusal (R-RP-6, R-RP-7)', () => {
  const failbackItem = { name: 'web', reversed: true, targetSiteId: 'primary', primarySiteId: 'primary' };
  const ok: FailbackFacts = {
    targetMachineExists: true,
    targetMachineOrigin: 'failover',
    movedToOtherContainer: false,
    protectionDisabled: false,
    sourceHypervisor: 'qemu',
    targetHypervisor: 'qemu',
  };

  void it('allows a machine created by failover, same hypervisor', () =>
    assert.equal(failbackRefusal(failbackItem, ok), undefined));
  void it('allows a physical server to fail back as a virtual machine', () => {
    assert.equal(
      failbackRefusal(failbackItem, { ...ok, sourceHypervisor: 'physical', targetHypervisor: 'qemu' }),
      undefined,
    );
    assert.equal(
      failbackRefusal(failbackItem, { ...ok, sourceHypervisor: 'physical', targetHypervisor: 'process' }),
      undefined,
    );
  });
  void it('does not judge an item that is not reversed (not a failback)', () =>
    assert.equal(
      failbackRefusal({ ...failbackItem, reversed: false }, { ...ok, targetMachineExists: false }),
      undefined,
    ));

  const refusals: [string, Partial<FailbackFacts>, string, Partial<typeof failbackItem>?][] = [
    ['migration completed', { migrationCompleted: true }, 'migration-completed'],
    ['protection disabled', { protectionDisabled: true }, 'protection-disabled'],
    ['machine deleted', { targetMachineExists: false }, 'machine-deleted'],
    ['machine moved', { movedToOtherContainer: true }, 'machine-moved'],
    ['hand-made machine', { targetMachineOrigin: 'manual' }, 'machine-not-from-failover'],
    ['inventory machine', { targetMachineOrigin: 'inventory' }, 'machine-not-from-failover'],
    ['test machine', { targetMachineOrigin: 'test-failover' }, 'machine-not-from-failover'],
    ['unknown origin', { targetMachineOrigin: null }, 'machine-not-from-failover'],
    ['other site', {}, 'not-original-site', { targetSiteId: 'elsewhere' }],
    [
      'physical to physical',
      { sourceHypervisor: 'physical', targetHypervisor: 'physical' },
      'physical-target',
    ],
    ['qemu to process', { sourceHypervisor: 'qemu', targetHypervisor: 'process' }, 'hypervisor-mismatch'],
    [
      'process to physical',
      { sourceHypervisor: 'process', targetHypervisor: 'physical' },
      'hypervisor-mismatch',
    ],
  ];
  for (const [label, facts, reason, itemOver] of refusals) {
    void it(`refuses: ${label}`, () => {
      const err = failbackRefusal({ ...failbackItem, ...itemOver }, { ...ok, ...facts });
      assert.ok(err instanceof OsrError);
      assert.equal(err.code, 'FAILBACK_NOT_ALLOWED');
      assert.equal((err.details as { reason: string }).reason, reason);
      assert.match(err.message, /web/);
    });
  }
});
