/**
 * Enable protection (R-REP-1..4): "Enable protection" prepares the replica at the
 * recovery site, starts replication at the source and follows the initial copy; it then
 * hands the item to "Finalize protection", which waits for the first recovery point and
 * marks the item Protected — only then can it fail over. "Repair replication" runs the
 * same steps again with a resync of the replica.
 */
import type { Job, ProtectedItem } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import type { JobDefinition, StepContext } from '../jobs/types.js';
import type { WorkflowDeps } from './deps.js';
import { assertHeldBy, releaseItem, uuidFromKey } from './item-jobs.js';
import { streamAuthFor } from './trust.js';

/** Input of the Enable protection and Repair replication jobs. */
export interface EnableProtectionInput {
  itemId: string;
  /** R-REP-4: the replica already exists at the target; verify by hashes instead of a full copy. */
  replicaExists: boolean;
  /** Repair: compare source and replica by block hashes and send only what differs. */
  resync: boolean;
}

export const ENABLE_PROTECTION = 'EnableProtection';
export const FINALIZE_PROTECTION = 'FinalizeProtection';
export const REPAIR_REPLICATION = 'RepairReplication';

interface Loaded {
  item: ProtectedItem;
}

async function load(deps: WorkflowDeps, ctx: StepContext<EnableProtectionInput>): Promise<Loaded> {
  const item = await deps.store.items.getById(ctx.input.itemId);
  assertHeldBy(item, ctx.job.id);
  return { item };
}

function enableSteps(deps: WorkflowDeps): JobDefinition<EnableProtectionInput>['steps'] {
  return [
    {
      name: 'Prerequisites check',
      async run(ctx) {
        const { item } = await load(deps, ctx);
        const machine = await deps.store.machines.getById(item.machineId);
        const source = await deps.store.sites.getById(item.sourceSiteId);
        const target = await deps.store.sites.getById(item.targetSiteId);
        const sourceAgent = await deps.commands.agentFor(source);
        const targetAgent = await deps.commands.agentFor(target);
        const targetName = item.failoverSettings.targetName ?? machine.name;
        if (!ctx.input.replicaExists && !ctx.input.resync) {
          const clash = await deps.store.machines.find(target.id, targetName);
          if (clash !== undefined && clash.id !== machine.id) {
            throw new OsrError(
              'MACHINE_NAME_CONFLICT',
              `a machine named '${targetName}' already exists at site '${target.name}'`,
              { details: { site: target.name, machine: targetName } },
            );
          }
        }
        return { sourceAgentId: sourceAgent.id, targetAgentId: targetAgent.id, disks: machine.disks.length };
      },
    },
    {
      name: 'Prepare replica at the recovery site',
      async run(ctx) {
        const { item } = await load(deps, ctx);
        const machine = await deps.store.machines.getById(item.machineId);
        const policy = await deps.store.policies.get(item.vaultId, item.policyId);
        const targetAgent = await deps.commands.agentFor(await deps.store.sites.getById(item.targetSiteId));
        const sourceAgent = await deps.commands.agentFor(await deps.store.sites.getById(item.sourceSiteId));
        return deps.commands.run(
          targetAgent,
          uuidFromKey(ctx.effectKey),
          'replica.prepare',
          {
            itemId: item.id,
            machine: { id: machine.id, name: machine.name },
            disks: machine.disks.map((d) => ({ id: d.id, sizeBytes: d.sizeBytes })),
            policy: {
              copyFrequencySeconds: policy.copyFrequencySeconds,
              retentionHours: policy.retentionHours,
              appConsistentFrequencyHours: policy.appConsistentFrequencyHours,
              initialReplication: policy.initialReplication,
              replicationPort: policy.replicationPort,
            },
            auth: await streamAuthFor(deps.store, policy, item.id),
            replicaExists: ctx.input.replicaExists,
            resync: ctx.input.resync,
            // The recovery agent accepts the replication stream only from this agent (R-POL-7).
            peer: {
              agentId: sourceAgent.id,
              siteId: item.sourceSiteId,
              dataAddress: sourceAgent.dataAddress,
              certificatePem: sourceAgent.certificatePem,
            },
          },
          ctx.signal,
        );
      },
    },
    {
      name: 'Start replication',
      async run(ctx) {
        const { item } = await load(deps, ctx);
        const machine = await deps.store.machines.getById(item.machineId);
        const policy = await deps.store.policies.get(item.vaultId, item.policyId);
        const sourceAgent = await deps.commands.agentFor(await deps.store.sites.getById(item.sourceSiteId));
        const targetAgent = await deps.commands.agentFor(await deps.store.sites.getById(item.targetSiteId));
        const result = await deps.commands.run(
          sourceAgent,
          uuidFromKey(ctx.effectKey),
          'replication.start',
          {
            itemId: item.id,
            machine: { id: machine.id, name: machine.name },
            disks: machine.disks.map((d) => ({
              id: d.id,
              sizeBytes: d.sizeBytes,
              datastore: d.datastore,
              path: d.path,
            })),
            peer: {
              agentId: targetAgent.id,
              siteId: item.targetSiteId,
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
            replicaExists: ctx.input.replicaExists,
            resync: ctx.input.resync,
            // A replica already at the recovery site is brought level by block hashes, not copied again.
            ...(ctx.input.replicaExists && !ctx.input.resync ? { copy: 'delta' } : {}),
          },
          ctx.signal,
        );
        const now = await deps.store.items.getById(item.id);
        if (now.protectionState !== 'InitialReplication') {
          await deps.store.items.update(item.id, { protectionState: 'InitialReplication' });
        }
        return result;
      },
    },
    {
      name: 'Initial replication',
      async run(ctx) {
        for (;;) {
          const { item } = await load(deps, ctx);
          await ctx.progress(item.initialReplicationProgress);
          if (item.initialReplicationProgress >= 100) return { progress: 100 };
          await deps.sleep(deps.pollMs, ctx.signal);
        }
      },
    },
    {
      name: 'Hand over to Finalize protection',
      async run(ctx) {
        const item = await deps.store.items.getById(ctx.input.itemId);
        const finalizeId = uuidFromKey(`${ctx.effectKey}:finalize`);
        // Hand the item over first: if we die before the submit, the re-run sees the
        // item held by the finalize id and only submits.
        if (item.currentJobId !== finalizeId) assertHeldBy(item, ctx.job.id);
        const held =
          item.currentJobId === ctx.job.id
            ? await deps.store.items.update(
                item.id,
                { currentJobId: finalizeId },
                { expectVersion: item.version },
              )
            : item;
        if ((await deps.store.jobs.find(finalizeId)) === undefined) {
          await deps.engine.submit({
            id: finalizeId,
            type: FINALIZE_PROTECTION,
            vaultId: held.vaultId,
            targetKind: 'protectedItem',
            targetId: held.id,
            targetName: held.name,
            input: ctx.input,
          });
        }
        return { finalizeJobId: finalizeId };
      },
    },
  ];
}

/** Marks the item as needing repair after a failed enable, finalize or repair job. */
async function onFailed(deps: WorkflowDeps, job: Job): Promise<void> {
  const input = job.input as EnableProtectionInput;
  const reason = job.error === null ? `${job.displayName} ${job.state.toLowerCase()}` : job.error.message;
  await releaseItem(deps.store, input.itemId, job.id, {
    protectionState: 'NeedsRepair',
    replicationHealth: 'Critical',
    healthReason: `${job.displayName} did not complete: ${reason}`,
  });
}

/** The job types of enabling, finalizing and repairing protection. */
export function enableProtectionJobs(deps: WorkflowDeps): JobDefinition<EnableProtectionInput>[] {
  return [
    {
      type: ENABLE_PROTECTION,
      displayName: 'Enable protection',
      cancellable: true,
      steps: enableSteps(deps),
      onEnd: (job) => onFailed(deps, job),
    },
    {
      type: REPAIR_REPLICATION,
      displayName: 'Repair replication',
      cancellable: true,
      steps: enableSteps(deps),
      onEnd: (job) => onFailed(deps, job),
    },
    {
      type: FINALIZE_PROTECTION,
      displayName: 'Finalize protection',
      cancellable: false,
      steps: [
        {
          name: 'Wait for the first recovery point',
          async run(ctx) {
            for (;;) {
              const { item } = await load(deps, ctx);
              const points = await deps.store.points.list(item.id, { limit: 1 });
              const first = points.items[0];
              if (first !== undefined) return { pointId: first.id, time: first.time };
              await deps.sleep(deps.pollMs, ctx.signal);
            }
          },
        },
        {
          name: 'Finalize protection',
          async run(ctx) {
            const item = await deps.store.items.getById(ctx.input.itemId);
            // A re-run after the update landed finds the item already released.
            if (item.protectionState === 'Protected' && item.currentJobId === null) {
              return { protectionState: 'Protected' };
            }
            assertHeldBy(item, ctx.job.id);
            await deps.store.items.update(
              item.id,
              { protectionState: 'Protected', resyncRequired: false, healthReason: null, currentJobId: null },
              { expectVersion: item.version },
            );
            return { protectionState: 'Protected' };
          },
        },
      ],
      onEnd: (job) => onFailed(deps, job),
    },
  ];
}
