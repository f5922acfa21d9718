/**
 * How workflow steps talk to site agents: through the store's command queue, never
 * directly. A step enqueues a command whose id is derived from its effect key, so a
 * step that runs again after a crash finds the same command (and its result) instead
 * of sending a second one; it then waits for the agent's result.
 */
import type { Agent, AgentCommand, Site } from '../domain/model.js';
import { ERROR_CATALOG, OsrError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import type { Store } from '../store/store.js';
import type { Clock } from '../jobs/types.js';
import { abortableSleep } from './deps.js';

/**
 * Agent command types the control plane sends (the agent side implements them). The
 * `machine.*` types drive a site's compute: payload `{name}` (shutdown also
 * `timeoutMs`, delete also `deleteDisks`; `machine.check` refuses with
 * MACHINE_NOT_RUNNING unless the machine runs and responds; `machine.snapshots`
 * answers `{machine, snapshots}`, the snapshots the machine has on its host, running
 * or not, NOT_FOUND when there is no such machine); `machine.create` takes the
 * `MachineCreateSpec` of `src/fabric/driver.ts`.
 */
export type AgentCommandType =
  | 'replica.prepare'
  | 'replica.delete'
  | 'replication.start'
  | 'replication.stop'
  | 'machine.powerOn'
  | 'machine.shutdown'
  | 'machine.powerOff'
  | 'machine.create'
  | 'machine.delete'
  | 'machine.check'
  | 'machine.snapshots';

/**
 * The failover-lifecycle commands (docs/agent-protocol.md §8). They are kept apart from
 * {@link AgentCommandType} — the set an agent must implement today — so an agent adds
 * them as its data plane grows; an agent that does not know one answers
 * OPERATION_UNAVAILABLE and the job step fails with that code.
 *
 * Recovery side (`replica.*`) works on the item's replica store: points are journal
 * sequences; an *exposure* is a read-only view at a point plus a writable sparse
 * overlay, served as NBD disks, one per purpose (`test` for a drill, `failover` for
 * the machine of a failover). Source side (`replication.drain`, `replication.reverse`).
 */
export type LifecycleCommandType =
  | 'replica.point'
  | 'replica.expose'
  | 'replica.swapPoint'
  | 'replica.commit'
  | 'replica.release'
  | 'replica.snapshot'
  | 'replica.revert'
  | 'replication.drain'
  | 'replication.reverse';

/** The lifecycle command types, for an agent to list what it implements. */
export const LIFECYCLE_COMMAND_TYPES: readonly LifecycleCommandType[] = [
  'replica.point',
  'replica.expose',
  'replica.swapPoint',
  'replica.commit',
  'replica.release',
  'replica.snapshot',
  'replica.revert',
  'replication.drain',
  'replication.reverse',
];

/** Every command type the control plane sends. */
export type ControlPlaneCommandType = AgentCommandType | LifecycleCommandType;

/** What an exposure is for: a test failover's machine or a failover's machine. */
export type ExposurePurpose = 'test' | 'failover';

/** A recovery point as the commands name it: its journal sequence (the truth) and the control plane's id. */
export interface PointRef {
  sequence: number;
  pointId: string | null;
}

/** `replica.point` (recovery agent): process everything received and cut a crash-consistent point. */
export interface ReplicaPointPayload {
  itemId: string;
  /** Wait until batches up to this sequence have arrived first (planned failover after a drain). */
  minSequence?: number;
  /** How long to wait for `minSequence` before failing with REPLICATION_UNHEALTHY. */
  timeoutMs?: number;
}
/** Result of `replica.point`: the point the replica now holds (the same one when repeated). */
export interface ReplicaPointResult {
  sequence: number;
  time: string;
  type: 'crash-consistent' | 'app-consistent';
}

/** `replica.expose` (recovery agent): serve the item's disks at `point` as view + overlay. */
export interface ReplicaExposePayload {
  itemId: string;
  purpose: ExposurePurpose;
  point: PointRef;
  disks: { id: string; sizeBytes: number }[];
  /** `failover`: the receiver stops applying batches for the item from now on (R-FO-5). */
  stopReceiving: boolean;
}
/** One exposed disk: where any NBD client reaches it. */
export interface ExposedDisk {
  id: string;
  sizeBytes: number;
  exportName: string;
  nbdUri: string;
}
/** Result of `replica.expose` and `replica.swapPoint`. */
export interface ReplicaExposeResult {
  purpose: ExposurePurpose;
  sequence: number;
  disks: ExposedDisk[];
}

/** `replica.swapPoint` (recovery agent): put another point's view under the exposure; its overlay starts empty. */
export interface ReplicaSwapPointPayload {
  itemId: string;
  purpose: ExposurePurpose;
  point: PointRef;
}

/** `replica.commit` (recovery agent): flatten view + overlay into the base, drop every other point. */
export interface ReplicaCommitPayload {
  itemId: string;
  purpose: 'failover';
}
/** Result of `replica.commit`. */
export interface ReplicaCommitResult {
  sequence: number;
  /** The disks now served from the base (same NBD addresses as the exposure). */
  disks: ExposedDisk[];
}

/** `replica.release` (recovery agent): drop the exposure (overlay and view); absent is success. */
export interface ReplicaReleasePayload {
  itemId: string;
  purpose: ExposurePurpose;
  /** Apply batches for the item again (cancel of a planned failover). */
  resumeReceiving: boolean;
}

/** `replica.snapshot` / `replica.revert` (recovery agent): a named snapshot of the exposure's overlay. */
export interface ReplicaSnapshotPayload {
  itemId: string;
  purpose: ExposurePurpose;
  snapshot: string;
}

/** `replication.drain` (source agent): ship everything captured, wait for the acknowledgement, stop capturing. */
export interface ReplicationDrainPayload {
  itemId: string;
  timeoutMs: number;
}
/** Result of `replication.drain`: the last sequence the recovery side acknowledged (= the last written). */
export interface ReplicationDrainResult {
  lastSequence: number;
}

/** Where reprotect puts the reverse replica at the primary site (R-RP-2). */
export type ReverseTarget =
  | { location: 'original'; machine: string }
  | { location: 'alternate'; machine: string; host: string; datastore: string };

/**
 * `replication.reverse` (the agent of the site the machine now runs at, which becomes
 * the source): capture the failed-over machine's disks and replicate them to `peer`;
 * `original` compares block hashes with the original disks and sends only what
 * differs, `alternate` copies everything.
 */
export interface ReplicationReversePayload {
  itemId: string;
  machine: { id: string; name: string };
  disks: { id: string; sizeBytes: number }[];
  peer: { agentId: string; siteId: string; dataAddress: string | null; certificatePem: string | null };
  target: ReverseTarget;
  policy: unknown;
}
/** Result of `replication.reverse`. */
export interface ReplicationReverseResult {
  mode: 'delta' | 'full';
}

/** A disk of `machine.create` at failover: backed by an exposure of the item's replica, not an image file. */
export interface ExposureDiskSpec {
  id: string;
  sizeBytes: number;
  datastore: string;
  exposure: { itemId: string; purpose: ExposurePurpose; diskId: string };
}

/** A NIC of `machine.create` (R-NET-2..4, R-TF-1): `isolated` puts it on a network of its own. */
export interface NicSpec {
  network: string | null;
  subnet: string | null;
  ip: string | null;
  isolated?: boolean;
}

export interface AgentCommandsOptions {
  store: Store;
  clock: Clock;
  /** How long an agent may stay silent before it counts as disconnected. */
  heartbeatTimeoutMs: number;
  /** Called after a command is enqueued so a long-poll waiting for that agent returns at once. */
  onCommandEnqueued?: (agentId: string) => void;
  /** How often a waiting step re-reads the command (default 200 ms). */
  pollMs?: number;
}

/** True when the agent's last heartbeat is recent enough (R-INF-3). */
export function isAgentConnected(agent: Agent, now: Date, heartbeatTimeoutMs: number): boolean {
  if (agent.lastHeartbeatAt === null) return false;
  return now.getTime() - Date.parse(agent.lastHeartbeatAt) <= heartbeatTimeoutMs;
}

/** Sends commands to site agents and waits for their results. */
export class AgentCommands {
  readonly #o: AgentCommandsOptions;

  constructor(options: AgentCommandsOptions) {
    this.#o = options;
  }

  /**
   * The site's registered agent; refuses with AGENT_NOT_REGISTERED when there is none
   * and, when `requireConnected`, with AGENT_DISCONNECTED when it stopped heartbeating.
   */
  async agentFor(site: Site, requireConnected = true): Promise<Agent> {
    const agent = await this.#o.store.agents.findBySite(site.id);
    if (agent === undefined) {
      throw new OsrError('AGENT_NOT_REGISTERED', `no agent is registered for site '${site.name}'`, {
        details: { siteId: site.id, site: site.name },
      });
    }
    if (requireConnected && !isAgentConnected(agent, this.#o.clock.now(), this.#o.heartbeatTimeoutMs)) {
      throw new OsrError('AGENT_DISCONNECTED', `the agent of site '${site.name}' is disconnected`, {
        details: {
          siteId: site.id,
          site: site.name,
          agentId: agent.id,
          lastHeartbeatAt: agent.lastHeartbeatAt,
        },
      });
    }
    return agent;
  }

  /**
   * Enqueues `type` for the agent under a deterministic id (`key`) and waits for its
   * result. A failed command becomes an OsrError carrying the agent's error fields.
   */
  async run(
    agent: Agent,
    key: string,
    type: ControlPlaneCommandType,
    payload: unknown,
    signal: AbortSignal,
    timeoutMs = 10 * 60_000,
  ): Promise<unknown> {
    const cmd = await this.#o.store.commands.enqueue(
      { id: key, agentId: agent.id, type, payload },
      this.#now(),
    );
    this.#o.onCommandEnqueued?.(agent.id);
    const done = await this.#waitDone(cmd, signal, timeoutMs);
    if (done.state === 'Failed') {
      const e = done.error;
      throw new OsrError(
        isKnownCode(e?.code) ? e.code : 'INTERNAL',
        e?.message ?? `agent command ${type} failed`,
        {
          details: { command: type, commandId: done.id, agentId: agent.id, agentError: e },
          ...(e?.possibleCauses === undefined ? {} : { possibleCauses: e.possibleCauses }),
          ...(e?.recommendedAction === undefined ? {} : { recommendedAction: e.recommendedAction }),
        },
      );
    }
    return done.result;
  }

  async #waitDone(cmd: AgentCommand, signal: AbortSignal, timeoutMs: number): Promise<AgentCommand> {
    const deadline = Date.now() + timeoutMs;
    let current = cmd;
    const pollMs = this.#o.pollMs ?? 200;
    while (current.state !== 'Succeeded' && current.state !== 'Failed') {
      signal.throwIfAborted();
      if (Date.now() > deadline) {
        throw new OsrError('AGENT_DISCONNECTED', `the agent did not answer command ${cmd.type} in time`, {
          details: { commandId: cmd.id, agentId: cmd.agentId, timeoutMs },
        });
      }
      await abortableSleep(pollMs, signal);
      const next = await this.#o.store.commands.find(cmd.id);
      if (next === undefined) throw new OsrError('INTERNAL', `agent command ${cmd.id} vanished`);
      current = next;
    }
    return current;
  }

  #now(): string {
    return this.#o.clock.now().toISOString();
  }
}

function isKnownCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && Object.hasOwn(ERROR_CATALOG, code);
}
