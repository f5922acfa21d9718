/**
 * Building blocks of the failover-lifecycle steps: the item the job holds, updates of
 * it that survive concurrent status reports, agent commands keyed by the step's effect
 * key, recovery-point resolution and the `machine.create` of a failed-over machine.
 */
import type { Machine, ProtectedItem } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import { parsePointChoice, selectRecoveryPoint } from '../domain/recovery-point.js';
import { resolveTargetNetwork } from '../domain/network.js';
import {
  chooseDatastore,
  chooseHost,
  guestToolsAfter,
  ipAfter,
  testNic,
  type PlacedNic,
  type TestNetworkChoice,
} from '../domain/placement.js';
import type { StepContext } from '../jobs/types.js';
import type { Store } from '../store/store.js';
import type {
  ControlPlaneCommandType,
  ExposedDisk,
  ExposurePurpose,
  ReplicaExposeResult,
  ReplicaPointResult,
} from './agent-commands.js';
import type { WorkflowDeps } from './deps.js';
import { assertHeldBy, uuidFromKey } from './item-jobs.js';

/** The item, refusing unless this job still holds it. */
export async function heldItem(deps: WorkflowDeps, itemId: string, jobId: string): Promise<ProtectedItem> {
  const item = await deps.store.items.getById(itemId);
  assertHeldBy(item, jobId);
  return item;
}

/**
 * Updates the item the job holds with compare-and-set, retrying when an agent's status
 * report bumped the version in between; refuses once another job holds the item.
 */
export async function updateHeld(
  store: Store,
  itemId: string,
  jobId: string,
  patch: Parameters<Store['items']['update']>[1],
): Promise<ProtectedItem> {
  for (let attempt = 1; ; attempt++) {
    const item = await store.items.getById(itemId);
    assertHeldBy(item, jobId);
    try {
      return await store.items.update(itemId, patch, { expectVersion: item.version });
    } catch (err) {
      if (!(err instanceof OsrError && err.code === 'OPERATION_NOT_ALLOWED') || attempt >= 20) throw err;
    }
  }
}

/** The machine by id, or undefined when it is gone (or the id is null). */
export async function findMachineById(store: Store, id: string | null): Promise<Machine | undefined> {
  if (id === null) return undefined;
  return store.machines.getById(id).catch((err: unknown) => {
    if (err instanceof OsrError && err.code === 'NOT_FOUND') return undefined;
    throw err;
  });
}

/**
 * Sends a command to the agent of `siteId` under an id derived from the step's effect
 * key (plus `part` when a step sends several) and waits for its result.
 */
export async function command<T>(
  deps: WorkflowDeps,
  ctx: StepContext<unknown>,
  siteId: string,
  type: ControlPlaneCommandType,
  payload: unknown,
  part?: string,
): Promise<T> {
  const site = await deps.store.sites.getById(siteId);
  const agent = await deps.commands.agentFor(site);
  const id = uuidFromKey(part === undefined ? ctx.effectKey : `${ctx.effectKey}:${part}`);
  return (await deps.commands.run(agent, id, type, payload, ctx.signal)) as T;
}

/**
 * R-RP-9: asks the agent of `site` for the snapshots of `machine` on its host and refuses with
 * MACHINE_HAS_SNAPSHOTS when there are any (reprotect to the original machine, failback to it).
 * Resolves with the (empty) list.
 */
export async function refuseSnapshots(
  deps: WorkflowDeps,
  ctx: StepContext<unknown>,
  site: { id: string; name: string },
  machine: string,
  operation: string,
  host?: string,
): Promise<string[]> {
  const answer = await command<unknown>(
    deps,
    ctx,
    site.id,
    'machine.snapshots',
    { name: machine },
    'snapshots',
  );
  const list = (answer as { snapshots?: unknown } | null)?.snapshots;
  if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) {
    throw new OsrError(
      'INTERNAL',
      `the agent's machine.snapshots answer for '${machine}' has no snapshot list`,
      {
        details: { machine, answer },
      },
    );
  }
  if (list.length > 0) {
    const where = host === undefined ? `at site '${site.name}'` : `on host '${host}' at site '${site.name}'`;
    throw new OsrError(
      'MACHINE_HAS_SNAPSHOTS',
      `machine '${machine}' has ${list.length} snapshot(s) ${where} (${list.join(', ')}); ${operation} needs none`,
      { details: { site: site.name, ...(host === undefined ? {} : { host }), machine, snapshots: list } },
    );
  }
  return list;
}

/** True for errors that mean "that thing is not there" (an idempotent undo may ignore them). */
export function isAbsent(err: unknown): boolean {
  return err instanceof OsrError && err.code === 'NOT_FOUND';
}

/** The point a failover step brings the machine up at. */
export interface ResolvedPoint {
  pointId: string;
  sequence: number;
  time: string;
  type: string;
  /** `cut`: the replica processed everything received and cut this point (Latest). */
  how: 'cut' | 'existing';
}

/**
 * Resolves a point choice (R-FO-2): an existing point from the store, or — for
 * `latest` — asks the recovery agent to process everything pending and cut a point,
 * which is then recorded like a reported one. `minSequence` makes the agent wait
 * for a drained source first (planned failover).
 */
export async function resolvePoint(
  deps: WorkflowDeps,
  ctx: StepContext<unknown>,
  item: ProtectedItem,
  choiceText: string,
  options: { failback?: boolean; minSequence?: number } = {},
): Promise<ResolvedPoint> {
  const choice = parsePointChoice(choiceText);
  const points = (await deps.store.points.list(item.id, { limit: 100_000 })).items;
  const selection = selectRecoveryPoint(points, choice, {
    ...(options.failback === true ? { failback: true } : {}),
    now: deps.clock.now(),
  });
  if (selection.mode === 'existing') {
    const p = selection.point;
    return { pointId: p.id, sequence: p.sequence, time: p.time, type: p.type, how: 'existing' };
  }
  const cut = await command<ReplicaPointResult>(deps, ctx, item.targetSiteId, 'replica.point', {
    itemId: item.id,
    ...(options.minSequence === undefined ? {} : { minSequence: options.minSequence, timeoutMs: 5 * 60_000 }),
  });
  if (cut === null || typeof cut !== 'object' || typeof cut.sequence !== 'number') {
    throw new OsrError('INTERNAL', 'the recovery agent answered replica.point without a point', {
      details: { result: cut },
    });
  }
  const p = await deps.store.points.add({
    itemId: item.id,
    sequence: cut.sequence,
    time: typeof cut.time === 'string' ? cut.time : deps.clock.now().toISOString(),
    type: cut.type === 'app-consistent' ? 'app-consistent' : 'crash-consistent',
    groupPointId: null,
  });
  return { pointId: p.id, sequence: p.sequence, time: p.time, type: p.type, how: 'cut' };
}

/** Exposes the item's disks at `point` for `purpose` (`replica.expose` at the target). */
export async function expose(
  deps: WorkflowDeps,
  ctx: StepContext<unknown>,
  item: ProtectedItem,
  source: Machine,
  purpose: ExposurePurpose,
  point: ResolvedPoint,
): Promise<ReplicaExposeResult> {
  const result = await command<ReplicaExposeResult>(deps, ctx, item.targetSiteId, 'replica.expose', {
    itemId: item.id,
    purpose,
    point: { sequence: point.sequence, pointId: point.pointId },
    disks: source.disks.map((d) => ({ id: d.id, sizeBytes: d.sizeBytes })),
    stopReceiving: purpose === 'failover',
  });
  return normalizeExposure(result, purpose, point.sequence, source);
}

/** An exposure result with every disk present (an agent may answer tersely). */
export function normalizeExposure(
  result: unknown,
  purpose: ExposurePurpose,
  sequence: number,
  source: Machine,
): ReplicaExposeResult {
  const r = (typeof result === 'object' && result !== null ? result : {}) as Partial<ReplicaExposeResult>;
  const disks: ExposedDisk[] = source.disks.map((d) => {
    const got = Array.isArray(r.disks) ? r.disks.find((x) => x.id === d.id) : undefined;
    return {
      id: d.id,
      sizeBytes: d.sizeBytes,
      exportName: got?.exportName ?? '',
      nbdUri: got?.nbdUri ?? '',
    };
  });
  return { purpose, sequence: typeof r.sequence === 'number' ? r.sequence : sequence, disks };
}

/** How the machine at the target is connected. */
export type NetworkPlan = { kind: 'derive' } | { kind: 'test'; choice: TestNetworkChoice };

/** What `machine.create` gets at failover (the `MachineCreateSpec` of the fabric, with exposure-backed disks). */
export interface FailoverMachineSpec {
  name: string;
  host: string;
  container: string | null;
  cpus: number;
  memoryMb: number;
  osType: Machine['osType'];
  runtime?: 'process' | 'qemu';
  disks: {
    id: string;
    sizeBytes: number;
    datastore: string;
    exposure: { itemId: string; purpose: ExposurePurpose; diskId: string };
  }[];
  nics: PlacedNic[];
  guestTools: Machine['guestTools'];
  origin: Machine['origin'];
  powerOn: false;
  /** Failback: the machine exists at the primary site; point its disks at the exposure instead of creating it. */
  reuseExisting: boolean;
}

/**
 * The spec of the machine a failover (or test failover) brings up at the item's target
 * site: host and datastores from inventory, NICs from the network mapping and the
 * item's settings (R-NET-2..5) or the test's choice (R-TF-1), guest tools and IP per
 * R-RP-10/11. A failback reuses the machine that holds the reverse replica.
 */
export async function failoverMachineSpec(
  deps: WorkflowDeps,
  item: ProtectedItem,
  source: Machine,
  opts: {
    name: string;
    purpose: ExposurePurpose;
    network: NetworkPlan;
    existing: Machine | undefined;
    origin: Machine['origin'];
  },
): Promise<FailoverMachineSpec> {
  const store = deps.store;
  const settings = item.failoverSettings;
  const failback = item.reversed && opts.purpose === 'failover';
  const cpus = opts.existing?.cpus ?? settings.cpus ?? source.cpus;
  const memoryMb = opts.existing?.memoryMb ?? settings.memoryMb ?? source.memoryMb;
  const hosts = await store.inventory.hosts(item.targetSiteId);
  const host = opts.existing?.hostName ?? chooseHost(hosts, memoryMb).name;
  const datastores = await store.inventory.datastores(item.targetSiteId);
  const disks = source.disks.map((d) => {
    const wanted = settings.disks.find((x) => x.diskId === d.id)?.datastore ?? null;
    const existingDisk = opts.existing?.disks.find((x) => x.id === d.id);
    const ds = existingDisk?.datastore ?? chooseDatastore(datastores, host, wanted).name;
    return {
      id: d.id,
      sizeBytes: d.sizeBytes,
      datastore: ds,
      exposure: { itemId: item.id, purpose: opts.purpose, diskId: d.id },
    };
  });
  const sourceNics = source.nics.length > 0 ? source.nics : [{ network: null, subnet: null, ip: null }];
  let nics: PlacedNic[];
  if (opts.network.kind === 'test') {
    const choice = opts.network.choice;
    let resolved = null;
    if (choice.kind === 'network') {
      const first = sourceNics[0];
      const srcNet =
        first?.network == null ? undefined : await store.inventory.findNetwork(source.siteId, first.network);
      resolved = resolveTargetNetwork({
        sourceNetwork: srcNet ?? null,
        sourceSubnet: first?.subnet ?? null,
        mappings: await store.networkMappings.list(item.vaultId),
        targetNetworks: await store.inventory.networks(item.targetSiteId),
        override: { network: choice.name },
      });
    }
    nics = sourceNics.map(() => testNic(choice, resolved));
  } else if (failback && opts.existing !== undefined) {
    // Back on the original machine: its own networks, with the IP rule of R-RP-11.
    nics = opts.existing.nics.map((n) => ({ ...n, ip: ipAfter(source.osType, n.ip, null) }));
  } else {
    const mappings = await store.networkMappings.list(item.vaultId);
    const targetNetworks = await store.inventory.networks(item.targetSiteId);
    nics = [];
    for (const [i, n] of sourceNics.entries()) {
      const srcNet =
        n.network == null ? undefined : await store.inventory.findNetwork(source.siteId, n.network);
      const res = resolveTargetNetwork({
        sourceNetwork: srcNet ?? null,
        sourceSubnet: n.subnet,
        mappings,
        targetNetworks,
        override: i === 0 ? { network: settings.network, subnet: settings.subnet, ip: settings.ip } : null,
      });
      const ip = res.network === null ? null : ipAfter(source.osType, n.ip, i === 0 ? settings.ip : null);
      nics.push({ network: res.network, subnet: res.subnet, ip });
    }
  }
  const container = await store.containers.getById(item.targetContainerId).catch(() => undefined);
  return {
    name: opts.name,
    host,
    container: container?.name ?? null,
    cpus,
    memoryMb,
    osType: source.osType,
    ...(source.hypervisor === 'physical' ? {} : { runtime: source.hypervisor }),
    disks,
    nics,
    guestTools: opts.purpose === 'test' ? source.guestTools : guestToolsAfter(source.osType, failback),
    origin: opts.origin,
    powerOn: false,
    reuseExisting: opts.existing !== undefined,
  };
}

/**
 * Records the machine `machine.create` made (the agent's inventory report follows and
 * keeps the id, matched by name), with its disks at their exposure's NBD addresses.
 */
export async function recordCreatedMachine(
  store: Store,
  item: ProtectedItem,
  spec: FailoverMachineSpec,
  exposed: ReplicaExposeResult,
  result: unknown,
  now: string,
): Promise<Machine> {
  const r = (typeof result === 'object' && result !== null ? result : {}) as Partial<Machine>;
  const existing = await store.machines.find(item.targetSiteId, spec.name);
  return store.machines.upsert({
    ...(existing === undefined ? {} : { id: existing.id }),
    siteId: item.targetSiteId,
    containerId: existing?.containerId ?? item.targetContainerId,
    name: spec.name,
    hostName: typeof r.hostName === 'string' ? r.hostName : spec.host,
    cpus: spec.cpus,
    memoryMb: spec.memoryMb,
    osType: spec.osType,
    hypervisor: existing?.hypervisor ?? r.hypervisor ?? spec.runtime ?? 'process',
    powerState: 'Stopped',
    guestTools: spec.guestTools,
    origin: existing?.origin ?? spec.origin,
    disks: spec.disks.map((d) => {
      const e = exposed.disks.find((x) => x.id === d.id);
      const old = existing?.disks.find((x) => x.id === d.id);
      return {
        id: d.id,
        sizeBytes: d.sizeBytes,
        datastore: d.datastore,
        path: old?.path ?? '',
        nbdUri: e?.nbdUri === undefined || e.nbdUri === '' ? (old?.nbdUri ?? null) : e.nbdUri,
      };
    }),
    nics: spec.nics.map((n) => ({ network: n.network, subnet: n.subnet, ip: n.ip })),
    updatedAt: now,
  });
}

/** Marks a machine's power state in the store (the agent's next inventory report confirms it). */
export async function setPower(
  store: Store,
  machineId: string,
  powerState: Machine['powerState'],
): Promise<void> {
  const m = await findMachineById(store, machineId);
  if (m !== undefined && m.powerState !== powerState) await store.machines.update(m.id, { powerState });
}
