/**
 * Disable protection (R-REP-7, R-POL-5): stop replication at the source, delete the
 * replica at the recovery site when asked (or when the policy says so), then remove
 * the protected item and its recovery points. With `force`, sites whose agent is gone
 * are skipped so an operator can remove protection of a site that no longer exists.
 */
import type { Job, ProtectionState } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import { stateOnFailure } from '../domain/lifecycle.js';
import type { JobDefinition, StepContext } from '../jobs/types.js';
import { skipStep } from '../jobs/types.js';
import type { WorkflowDeps } from './deps.js';
import { assertHeldBy, releaseItem, uuidFromKey } from './item-jobs.js';
import type { AgentCommandType } from './agent-commands.js';

export const DISABLE_PROTECTION = 'DisableProtection';

export interface DisableProtectionInput {
  itemId: string;
  deleteReplica: boolean;
  force: boolean;
  previousState: ProtectionState;
}

async function tellAgent(
  deps: WorkflowDeps,
  ctx: StepContext<DisableProtectionInput>,
  siteId: string,
  type: AgentCommandType,
): Promise<unknown> {
  const item = await deps.store.items.getById(ctx.input.itemId);
  assertHeldBy(item, ctx.job.id);
  const site = await deps.store.sites.getById(siteId);
  try {
    const agent = await deps.commands.agentFor(site);
    return await deps.commands.run(agent, uuidFromKey(ctx.effectKey), type, { itemId: item.id }, ctx.signal);
  } catch (err) {
    const unreachable =
      err instanceof OsrError && (err.code === 'AGENT_NOT_REGISTERED' || err.code === 'AGENT_DISCONNECTED');
    if (ctx.input.force && unreachable)
      return skipStep(`${err.message}; its clean-up was skipped (force)`, { code: err.code });
    throw err;
  }
}

/** The Disable protection job type. */
export function disableProtectionJob(deps: WorkflowDeps): JobDefinition<DisableProtectionInput> {
  return {
    type: DISABLE_PROTECTION,
    displayName: 'Disable protection',
    cancellable: false,
    steps: [
      {
        name: 'Stop replication',
        async run(ctx) {
          const item = await deps.store.items.getById(ctx.input.itemId);
          return tellAgent(deps, ctx, item.sourceSiteId, 'replication.stop');
        },
      },
      {
        name: 'Delete replica',
        async run(ctx) {
          if (!ctx.input.deleteReplica)
            return skipStep('the replica is kept (the policy or the request says so)');
          const item = await deps.store.items.getById(ctx.input.itemId);
          return tellAgent(deps, ctx, item.targetSiteId, 'replica.delete');
        },
      },
      {
        name: 'Remove protection',
        async run(ctx) {
          const item = await deps.store.items.find(ctx.job.vaultId, ctx.input.itemId);
          if (item === undefined) return { removed: true };
          assertHeldBy(item, ctx.job.id);
          const points = await deps.store.points.deleteAllExcept(item.id, null);
          await deps.store.items.delete(item.id);
          return { removed: true, pointsDeleted: points };
        },
      },
    ],
    onEnd: async (job: Job) => {
      const input = job.input as DisableProtectionInput;
      const item = await deps.store.items.find(job.vaultId, input.itemId);
      if (item === undefined) return;
      const restored = stateOnFailure('DisableProtection', { ...item, protectionState: input.previousState });
      await releaseItem(deps.store, input.itemId, job.id, restored);
    },
  };
}
