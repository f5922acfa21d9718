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
 * MACHINE_NOT_RUNNING unless the machine runs and responds); `machine.create` takes
 * the `MachineCreateSpec` of `src/fabric/driver.ts`.
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
  | 'machine.check';

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
    type: AgentCommandType,
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
