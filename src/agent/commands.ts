/**
 * The commands an agent executes (the `AgentCommandType`s of the control plane) and
 * how: each id at most once to completion — the outcome is logged durably before it is
 * reported, and a redelivered id is answered from the log. A command that was running
 * when the agent died is run again, so every handler is idempotent (power on a running
 * machine, delete an absent one, prepare an existing replica all succeed; a create is
 * recognised by the command id that made it).
 */
import { OsrError, toOsrError } from '../domain/errors.js';
import type { FabricDriver, MachineCreateSpec } from '../fabric/driver.js';
import type { AgentCommandType } from '../workflows/agent-commands.js';
import type { CommandLog } from './data-dir.js';
import type { ChannelCommand, CommandOutcome } from './control-plane.js';
import type { ReplicaPreparePayload, ReplicationService, ReplicationStartPayload } from './replication.js';

/** What a handler gets besides the payload. */
export interface CommandContext {
  commandId: string;
}

/** Runs one command type. */
export type CommandHandler = (payload: unknown, ctx: CommandContext) => Promise<unknown>;

function fields(payload: unknown, type: string): Record<string, unknown> {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new OsrError('VALIDATION_FAILED', `${type}: the payload must be an object`);
  }
  return payload as Record<string, unknown>;
}

function str(o: Record<string, unknown>, key: string, type: string): string {
  const v = o[key];
  if (typeof v !== 'string' || v === '') {
    throw new OsrError('VALIDATION_FAILED', `${type}: '${key}' must be a non-empty string`, {
      details: { field: key },
    });
  }
  return v;
}

function itemPayload(payload: unknown, type: string): { itemId: string } {
  return { itemId: str(fields(payload, type), 'itemId', type) };
}

/**
 * The handlers of every command type this agent implements; `extra` adds or replaces handlers (the failover
 * lifecycle's, `LifecycleService.handlers()`).
 */
export function commandHandlers(
  fabric: FabricDriver,
  replication: ReplicationService,
  extra: Record<string, CommandHandler> = {},
): Record<AgentCommandType, CommandHandler> & Record<string, CommandHandler> {
  const base: Record<AgentCommandType, CommandHandler> = {
    'replica.prepare': (p) => {
      itemPayload(p, 'replica.prepare');
      return replication.prepareReplica(p as ReplicaPreparePayload);
    },
    'replica.delete': (p) => replication.deleteReplica(itemPayload(p, 'replica.delete')),
    'replication.start': (p) => {
      const o = fields(p, 'replication.start');
      itemPayload(p, 'replication.start');
      const m = fields(o['machine'], 'replication.start machine');
      str(m, 'name', 'replication.start machine');
      if (!Array.isArray(o['disks']))
        throw new OsrError('VALIDATION_FAILED', "replication.start: 'disks' must be an array");
      return replication.startReplication(p as ReplicationStartPayload);
    },
    'replication.stop': (p) => replication.stopReplication(itemPayload(p, 'replication.stop')),
    'machine.powerOn': (p) => fabric.powerOn(str(fields(p, 'machine.powerOn'), 'name', 'machine.powerOn')),
    'machine.shutdown': (p) => {
      const o = fields(p, 'machine.shutdown');
      const timeoutMs = typeof o['timeoutMs'] === 'number' ? o['timeoutMs'] : undefined;
      return fabric.shutdown(
        str(o, 'name', 'machine.shutdown'),
        timeoutMs === undefined ? {} : { timeoutMs },
      );
    },
    'machine.powerOff': (p) =>
      fabric.powerOff(str(fields(p, 'machine.powerOff'), 'name', 'machine.powerOff')),
    'machine.check': async (p) => {
      const name = str(fields(p, 'machine.check'), 'name', 'machine.check');
      const m = await fabric.ensureRunning(name);
      return {
        machine: m,
        snapshots: (await fabric.snapshotState(name)).snapshots,
        guestTools: await fabric.guestToolsState(name),
      };
    },
    'machine.snapshots': (p) =>
      fabric.snapshotState(str(fields(p, 'machine.snapshots'), 'name', 'machine.snapshots')),
    'machine.create': (p, ctx) => {
      const o = fields(p, 'machine.create');
      str(o, 'name', 'machine.create');
      str(o, 'host', 'machine.create');
      if (!Array.isArray(o['disks']))
        throw new OsrError('VALIDATION_FAILED', "machine.create: 'disks' must be an array");
      const spec = { nics: [], osType: 'linux', ...o } as unknown as MachineCreateSpec;
      return fabric.createMachine({ ...spec, requestId: ctx.commandId } as MachineCreateSpec);
    },
    'machine.delete': (p) => {
      const o = fields(p, 'machine.delete');
      return fabric.deleteMachine(str(o, 'name', 'machine.delete'), {
        deleteDisks: o['deleteDisks'] === true,
      });
    },
  };
  return { ...base, ...extra };
}

/** The outcome a failure is reported with: the catalog's code, causes and action (R-JOB-2). */
export function failureOutcome(err: unknown): CommandOutcome {
  const e = toOsrError(err);
  return {
    state: 'Failed',
    error: {
      code: e.code,
      message: e.message,
      possibleCauses: e.possibleCauses,
      recommendedAction: e.recommendedAction,
      ...(e.seedCode === null ? {} : { seedCode: e.seedCode }),
    },
  };
}

/** Runs commands once per id, with the log as the memory of what ran. */
export class CommandExecutor {
  readonly #handlers: Record<string, CommandHandler>;
  readonly #log: CommandLog;
  readonly #running = new Map<string, Promise<CommandOutcome>>();

  constructor(handlers: Record<string, CommandHandler>, log: CommandLog) {
    this.#handlers = handlers;
    this.#log = log;
  }

  /** Ids being executed now. */
  get running(): string[] {
    return [...this.#running.keys()];
  }

  /**
   * The command's outcome: from the log when it already finished, the running
   * execution when it is in progress, else a new execution (logged before it starts
   * and after it ends). Never rejects: failures are outcomes.
   */
  execute(cmd: ChannelCommand): Promise<CommandOutcome> {
    const done = this.#log.outcome(cmd.id);
    if (done !== undefined) return Promise.resolve(done);
    const running = this.#running.get(cmd.id);
    if (running !== undefined) return running;
    const p = this.#run(cmd).finally(() => this.#running.delete(cmd.id));
    this.#running.set(cmd.id, p);
    return p;
  }

  async #run(cmd: ChannelCommand): Promise<CommandOutcome> {
    const handler = Object.hasOwn(this.#handlers, cmd.type) ? this.#handlers[cmd.type] : undefined;
    let outcome: CommandOutcome;
    if (handler === undefined) {
      outcome = failureOutcome(
        new OsrError('OPERATION_UNAVAILABLE', `this agent does not implement command '${cmd.type}'`, {
          details: { type: cmd.type },
        }),
      );
    } else {
      await this.#log.started(cmd.id, cmd.type);
      try {
        outcome = { state: 'Succeeded', result: (await handler(cmd.payload, { commandId: cmd.id })) ?? null };
      } catch (err) {
        outcome = failureOutcome(err);
      }
    }
    await this.#log.done(cmd.id, cmd.type, outcome);
    return outcome;
  }

  /** Waits for the commands running now. */
  async drain(): Promise<void> {
    await Promise.all([...this.#running.values()]);
  }
}
