/**
 * Starting a long operation on a protected item: the check and the claim on the item
 * happen before the job exists, so an operation outside `allowedOperations` is refused
 * before anything changes, and two operations can never hold one item at once.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Job, Operation, ProtectedItem } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import { assertAllowed, stateOnStart } from '../domain/lifecycle.js';
import type { LifecycleContext } from '../domain/lifecycle.js';
import type { Store } from '../store/store.js';
import type { JobEngine } from '../jobs/engine.js';

export interface StartItemJobOptions<I> {
  store: Store;
  engine: JobEngine;
  item: ProtectedItem;
  operation: Operation;
  /** Lifecycle facts the rules need (agents connected…). */
  context?: LifecycleContext;
  jobType: string;
  input: I;
  /** Extra fields set on the item together with the claim. */
  patch?: Partial<ProtectedItem>;
}

/**
 * Checks the operation is allowed, claims the item for a new job (compare-and-set on
 * the item's version, setting the operation's starting state) and submits the job. If the submit fails the claim is undone.
 */
export async function startItemJob<I>(o: StartItemJobOptions<I>): Promise<Job> {
  assertAllowed(o.item, o.operation, o.context);
  const jobId = randomUUID();
  const claimed = await o.store.items.update(
    o.item.id,
    {
      ...o.patch,
      ...stateOnStart(o.operation),
      currentJobId: jobId,
    },
    { expectVersion: o.item.version },
  );
  try {
    return await o.engine.submit({
      id: jobId,
      type: o.jobType,
      vaultId: o.item.vaultId,
      targetKind: 'protectedItem',
      targetId: o.item.id,
      targetName: o.item.name,
      input: o.input,
    });
  } catch (err) {
    await o.store.items.update(
      o.item.id,
      {
        currentJobId: null,
        protectionState: o.item.protectionState,
        testFailoverState: o.item.testFailoverState,
      },
      { expectVersion: claimed.version },
    );
    throw err;
  }
}

/**
 * Releases the item held by `jobId` and applies `patch`. Idempotent: when the item is
 * gone or already held by another job, nothing changes.
 */
export async function releaseItem(
  store: Store,
  itemId: string,
  jobId: string,
  patch: Partial<ProtectedItem>,
): Promise<ProtectedItem | undefined> {
  const item = await store.items.getById(itemId).catch((err: unknown) => {
    if (err instanceof OsrError && err.code === 'NOT_FOUND') return undefined;
    throw err;
  });
  if (item === undefined || item.currentJobId !== jobId) return item;
  return store.items.update(itemId, { ...patch, currentJobId: null }, { expectVersion: item.version });
}

/** A UUID derived from a key, so a re-run step creates the same job or command id. */
export function uuidFromKey(key: string): string {
  const h = createHash('sha256').update(key).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** Throws OPERATION_NOT_ALLOWED unless the running job still holds the item. */
export function assertHeldBy(item: ProtectedItem, jobId: string): void {
  if (item.currentJobId !== jobId) {
    throw new OsrError('OPERATION_NOT_ALLOWED', `item '${item.name}' is no longer held by job ${jobId}`, {
      details: { itemId: item.id, currentJobId: item.currentJobId, jobId },
    });
  }
}
