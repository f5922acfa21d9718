/**
 * Reprotect (R-RP-1, 2, 5, 9): after a committed failover, replicate the machine now
 * running at the recovery site back to the primary site. Original location: the
 * original machine's disks become the replica and only blocks that differ are sent.
 * Alternate location: a new machine is created on the chosen host and datastore and
 * everything is copied. The item's direction flips when the initial copy is done and
 * the first point exists; a failover of the reversed item is the failback.
 */
import type { Machine, ProtectedItem } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import { stateOnFailure, stateOnSuccess } from '../domain/lifecycle.js';
import type { TransitionItem } from '../domain/lifecycle.js';
import { chooseDatastore, chooseHost } from '../domain/placement.js';
import type { JobDefinition, StepContext } from '../jobs/types.js';
import type { Store } from '../store/store.js';
import type { ReverseTarget } from './agent-commands.js';
import type { WorkflowDeps } from './deps.js';
import { releaseItem } from './item-jobs.js';
import { command, findMachineById, heldItem, refuseSnapshots, updateHeld } from './item-steps.js';
import { streamAuthFor } from './trust.js';

export const REPROTECT = 'Reprotect';

/** Input of the Reprotect job. */
export interface ReprotectInput {
  itemId: string;
  location: 'original' | 'alternate';
  host: string | null;
  datastore: string | null;
  /** Policy of the reverse direction (default: the item's). */
  policyId: string;
  accepted: TransitionItem;
}

/** One thing reprotect will create, as the preview lists it (R-RP-1). */
export interface PreviewEntry {
  kind: string;
  name: string;
  label: string;
}

/** What a reprotect would do: the direction and what it creates, each marked "(new)". */
export interface ReprotectPlan {
  direction: { from: string; to: string };
  location: 'original' | 'alternate';
  transfer: 'changed blocks only' | 'full copy';
  host: string;
  datastore: string | null;
  machine: string;
  creates: PreviewEntry[];
}

/** The machine at the recovery site that reprotect replicates back (the failed-over one). */
export async function failedOverMachine(store: Store, item: ProtectedItem): Promise<Machine> {
  const m = await findMachineById(store, item.lastFailover?.targetMachineId ?? null);
  if (m === undefined) {
    throw new OsrError('NOT_FOUND', `the failed-over machine of '${item.name}' no longer exists`, {
      details: { itemId: item.id, machineId: item.lastFailover?.targetMachineId ?? null },
    });
  }
  return m;
}

/**
 * Decides where the reverse replica goes and what that creates; refuses what cannot
 * work (original machine gone, unknown host or datastore, datastore not reachable from
 * the host: 8061, a machine of that name at an alternate location: 78052).
 */
export async function planReprotect(
  store: Store,
  item: ProtectedItem,
  params: { location?: 'original' | 'alternate'; host?: string; datastore?: string; policy?: string },
): Promise<ReprotectPlan> {
  const failedOver = await failedOverMachine(store, item);
  // The new target is the site the item was protected from.
  const newTarget = await store.sites.getById(item.sourceSiteId);
  const newSource = await store.sites.getById(item.targetSiteId);
  const original = await findMachineById(store, item.machineId);
  const location = params.location ?? 'original';
  const direction = { from: newSource.name, to: newTarget.name };
  const policyName = params.policy ?? (await store.policies.get(item.vaultId, item.policyId)).name;
  const replication: PreviewEntry = {
    kind: 'replication',
    name: `${failedOver.name}: ${newSource.name} → ${newTarget.name}`,
    label: `replication ${newSource.name} → ${newTarget.name} with policy ${policyName} (new)`,
  };
  if (location === 'original') {
    if (original === undefined || original.siteId !== newTarget.id) {
      throw new OsrError(
        'VALIDATION_FAILED',
        `the original machine of '${item.name}' no longer exists at site '${newTarget.name}'; reprotect to an alternate location (--location alternate --host H --datastore D)`,
        { details: { field: 'location', site: newTarget.name } },
      );
    }
    return {
      direction,
      location,
      transfer: 'changed blocks only',
      host: original.hostName,
      datastore: original.disks[0]?.datastore ?? null,
      machine: original.name,
      creates: [replication],
    };
  }
  if (params.host === undefined || params.datastore === undefined) {
    throw new OsrError('VALIDATION_FAILED', 'an alternate location needs a host and a datastore', {
      details: { field: params.host === undefined ? 'host' : 'datastore' },
    });
  }
  const host = chooseHost(await store.inventory.hosts(newTarget.id), failedOver.memoryMb, params.host);
  const ds = chooseDatastore(await store.inventory.datastores(newTarget.id), host.name, params.datastore);
  const name = item.failoverSettings.targetName ?? failedOver.name;
  const clash = await store.machines.find(newTarget.id, name);
  if (clash !== undefined) {
    throw new OsrError(
      'MACHINE_NAME_CONFLICT',
      `a machine named '${name}' already exists at site '${newTarget.name}'`,
      { details: { site: newTarget.name, machine: name } },
    );
  }
  return {
    direction,
    location,
    transfer: 'full copy',
    host: host.name,
    datastore: ds.name,
    machine: name,
    creates: [
      { kind: 'machine', name, label: `machine ${name} on host ${host.name} (new)` },
      ...failedOver.disks.map((d) => ({
        kind: 'disk',
        name: `${name}/${d.id}`,
        label: `disk ${name}/${d.id} (${d.sizeBytes} bytes) on datastore ${ds.name} (new)`,
      })),
      replication,
    ],
  };
}

/** The agent of `siteId` as the peer a replica pins. */
async function peerOf(
  deps: WorkflowDeps,
  siteId: string,
): Promise<{ agentId: string; siteId: string; dataAddress: string | null; certificatePem: string | null }> {
  const agent = await deps.commands.agentFor(await deps.store.sites.getById(siteId));
  return { agentId: agent.id, siteId, dataAddress: agent.dataAddress, certificatePem: agent.certificatePem };
}

function planOf(ctx: StepContext<ReprotectInput>): ReprotectPlan {
  const p = ctx.outputs['Prerequisites check'] as { plan?: ReprotectPlan } | undefined;
  if (p?.plan === undefined) throw new OsrError('INTERNAL', 'the prerequisites check left no plan');
  return p.plan;
}

/** The Reprotect job type. */
export function reprotectJob(deps: WorkflowDeps): JobDefinition<ReprotectInput> {
  return {
    type: REPROTECT,
    displayName: 'Reprotect',
    cancellable: true,
    steps: [
      {
        name: 'Prerequisites check',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          // R-RP-5, R-RP-9: both agents registered and connected; the failed-over machine running.
          const newTarget = await deps.store.sites.getById(item.sourceSiteId);
          const newSource = await deps.store.sites.getById(item.targetSiteId);
          const targetAgent = await deps.commands.agentFor(newTarget);
          await deps.commands.agentFor(newSource);
          const plan = await planReprotect(deps.store, item, {
            location: ctx.input.location,
            ...(ctx.input.host === null ? {} : { host: ctx.input.host }),
            ...(ctx.input.datastore === null ? {} : { datastore: ctx.input.datastore }),
          });
          const failedOver = await failedOverMachine(deps.store, item);
          const check = await command(deps, ctx, newSource.id, 'machine.check', { name: failedOver.name });
          // R-RP-9: the machine protected back must have no snapshots on its host (an alternate location is a new machine).
          const snapshots =
            plan.location === 'original'
              ? await refuseSnapshots(deps, ctx, newTarget, plan.machine, 'reprotect', plan.host)
              : [];
          return { plan, primaryAgentId: targetAgent.id, machineCheck: check, snapshots };
        },
      },
      {
        name: 'Prepare the replica at the primary site',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const plan = planOf(ctx);
          const failedOver = await failedOverMachine(deps.store, item);
          const policy = await deps.store.policies.get(item.vaultId, ctx.input.policyId);
          let replicaMachine: Machine | undefined;
          if (plan.location === 'alternate') {
            const ds = plan.datastore ?? '';
            const spec = {
              name: plan.machine,
              host: plan.host,
              container: (await deps.store.containers.getById(item.sourceContainerId)).name,
              cpus: failedOver.cpus,
              memoryMb: failedOver.memoryMb,
              osType: failedOver.osType,
              ...(failedOver.hypervisor === 'physical' ? {} : { runtime: failedOver.hypervisor }),
              disks: failedOver.disks.map((d) => ({ id: d.id, datastore: ds, sizeBytes: d.sizeBytes })),
              nics: failedOver.nics,
              guestTools: 'Installed',
              origin: 'failover',
              powerOn: false,
            };
            await command(deps, ctx, item.sourceSiteId, 'machine.create', spec, 'create');
            const existing = await deps.store.machines.find(item.sourceSiteId, plan.machine);
            replicaMachine = await deps.store.machines.upsert({
              ...(existing === undefined ? {} : { id: existing.id }),
              siteId: item.sourceSiteId,
              containerId: item.sourceContainerId,
              name: plan.machine,
              hostName: plan.host,
              cpus: failedOver.cpus,
              memoryMb: failedOver.memoryMb,
              osType: failedOver.osType,
              hypervisor: failedOver.hypervisor,
              powerState: 'Stopped',
              guestTools: 'Installed',
              origin: 'failover',
              disks: failedOver.disks.map((d) => ({
                id: d.id,
                sizeBytes: d.sizeBytes,
                datastore: ds,
                path: `${plan.machine}/${d.id}.img`,
                nbdUri: null,
              })),
              nics: failedOver.nics,
              updatedAt: deps.clock.now().toISOString(),
            });
          } else {
            replicaMachine = await findMachineById(deps.store, item.machineId);
          }
          if (replicaMachine === undefined) throw new OsrError('NOT_FOUND', 'the original machine is gone');
          // The old direction's points do not describe the reverse replica.
          await deps.store.points.deleteAllExcept(item.id, null);
          const target: ReverseTarget =
            plan.location === 'original'
              ? { location: 'original', machine: replicaMachine.name }
              : {
                  location: 'alternate',
                  machine: replicaMachine.name,
                  host: plan.host,
                  datastore: plan.datastore ?? '',
                };
          const prepared = await command(
            deps,
            ctx,
            item.sourceSiteId,
            'replica.prepare',
            {
              itemId: item.id,
              machine: { id: failedOver.id, name: failedOver.name },
              disks: failedOver.disks.map((d) => ({ id: d.id, sizeBytes: d.sizeBytes })),
              policy: {
                copyFrequencySeconds: policy.copyFrequencySeconds,
                retentionHours: policy.retentionHours,
                appConsistentFrequencyHours: policy.appConsistentFrequencyHours,
                initialReplication: { mode: 'now' },
                replicationPort: policy.replicationPort,
              },
              auth: await streamAuthFor(deps.store, policy, item.id),
              replicaExists: plan.location === 'original',
              resync: plan.location === 'original',
              target,
              // The primary agent accepts the reverse stream only from the new source's agent (R-POL-7).
              peer: await peerOf(deps, item.targetSiteId),
            },
            'prepare',
          );
          return {
            replicaMachineId: replicaMachine.id,
            replicaMachine: replicaMachine.name,
            target,
            prepared,
          };
        },
      },
      {
        name: 'Start reverse replication',
        async run(ctx) {
          const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
          const failedOver = await failedOverMachine(deps.store, item);
          const prepared = ctx.outputs['Prepare the replica at the primary site'] as {
            target: ReverseTarget;
          };
          const primary = await deps.store.sites.getById(item.sourceSiteId);
          const primaryAgent = await deps.commands.agentFor(primary);
          const policy = await deps.store.policies.get(item.vaultId, ctx.input.policyId);
          return command(deps, ctx, item.targetSiteId, 'replication.reverse', {
            itemId: item.id,
            machine: { id: failedOver.id, name: failedOver.name },
            disks: failedOver.disks.map((d) => ({ id: d.id, sizeBytes: d.sizeBytes })),
            peer: {
              agentId: primaryAgent.id,
              siteId: primary.id,
              dataAddress: primaryAgent.dataAddress,
              certificatePem: primaryAgent.certificatePem,
            },
            target: prepared.target,
            policy: {
              copyFrequencySeconds: policy.copyFrequencySeconds,
              appConsistentFrequencyHours: policy.appConsistentFrequencyHours,
              compression: policy.compression,
              bandwidth: policy.bandwidth,
              authentication: policy.authentication,
              replicationPort: policy.replicationPort,
            },
            auth: await streamAuthFor(deps.store, policy, item.id),
          });
        },
      },
      {
        name: 'Initial replication',
        async run(ctx) {
          for (;;) {
            const item = await heldItem(deps, ctx.input.itemId, ctx.job.id);
            await ctx.progress(item.initialReplicationProgress);
            const first = (await deps.store.points.list(item.id, { limit: 1 })).items[0];
            if (item.initialReplicationProgress >= 100 && first !== undefined) {
              return { progress: 100, firstPointId: first.id };
            }
            await deps.sleep(deps.pollMs, ctx.signal);
          }
        },
      },
      {
        name: 'Finalize reprotect',
        async run(ctx) {
          const item = await deps.store.items.getById(ctx.input.itemId);
          if (item.currentJobId !== ctx.job.id) return { protectionState: item.protectionState };
          const prepared = ctx.outputs['Prepare the replica at the primary site'] as {
            replicaMachineId: string;
          };
          const failedOver = await failedOverMachine(deps.store, item);
          const lf = item.lastFailover;
          await updateHeld(deps.store, item.id, ctx.job.id, {
            ...stateOnSuccess('ReverseReplicate', ctx.input.accepted),
            machineId: failedOver.id,
            policyId: ctx.input.policyId,
            lastFailover:
              lf === null
                ? null
                : { ...lf, targetMachineId: prepared.replicaMachineId, reverseLocation: ctx.input.location },
            healthReason: null,
            currentJobId: null,
          });
          return { protectionState: 'Protected', reversed: !ctx.input.accepted.reversed };
        },
      },
    ],
    onEnd: async (job) => {
      const input = job.input as ReprotectInput;
      await releaseItem(deps.store, input.itemId, job.id, {
        ...stateOnFailure('ReverseReplicate', input.accepted),
        healthReason: `Reprotect did not complete: ${job.error?.message ?? job.state}; retry it`,
      });
    },
  };
}
