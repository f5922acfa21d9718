/**
 * The server side of the agents' command channel (docs/agent-protocol.md).
 *
 * Commands are durable rows in the store (`store.commands`); this service adds the
 * in-process wake-up that makes the long-poll answer as soon as a command is
 * enqueued: an EventEmitter keyed by agent id. Anyone who enqueues through
 * `send()` wakes the agent's waiting poll at once; code that enqueues through the
 * store directly (e.g. inside a transaction) calls `notify(agentId)` afterwards —
 * the function handed to the workflows as their `onCommandEnqueued` hook. As a
 * safety net (a forgotten notify, or a command enqueued by another control-plane
 * instance on the same PostgreSQL) a waiting poll also re-reads the store every
 * `recheckMs`.
 *
 * Redelivery: the store hands out Pending commands and, again, Delivered ones that
 * were never completed (so nothing is lost when an agent restarts). To keep a poll
 * from returning the same in-flight command over and over, an agent passes a
 * `session` id (new per agent process); within one session a command is delivered
 * once. A new session — the agent restarted — or a server restart (this map is in
 * memory) gets every uncompleted command again; agents execute by id, idempotently.
 */
import { EventEmitter } from 'node:events';
import type { AgentCommand } from '../domain/model.js';
import type { Store } from '../store/store.js';
import { systemClock, type Clock } from '../jobs/types.js';

export interface AgentChannelOptions {
  store: Store;
  clock?: Clock;
  /** How often a waiting poll re-reads the store even without a notification (default 1000 ms). */
  recheckMs?: number;
  /** Most commands handed out per poll (default 50). */
  batch?: number;
}

const CLOSE = Symbol('close');
/** How many uncompleted commands are read per poll before filtering out the ones in flight. */
const TAKE_LIMIT = 1000;

interface SessionState {
  session: string;
  delivered: Set<string>;
}

/** Enqueues commands for agents and serves their long-polls. */
export class AgentChannel {
  private readonly store: Store;
  private readonly clock: Clock;
  private readonly recheckMs: number;
  private readonly batch: number;
  private readonly emitter = new EventEmitter();
  private readonly sessions = new Map<string, SessionState>();
  private closed = false;

  constructor(options: AgentChannelOptions) {
    this.store = options.store;
    this.clock = options.clock ?? systemClock;
    this.recheckMs = options.recheckMs ?? 1000;
    this.batch = options.batch ?? 50;
    // One listener per waiting poll; many agents may wait at once.
    this.emitter.setMaxListeners(0);
  }

  /** Enqueues a command (idempotent by `id`) and wakes the agent's waiting poll. */
  async send(agentId: string, type: string, payload: unknown, id?: string): Promise<AgentCommand> {
    const cmd = await this.store.commands.enqueue(
      { agentId, type, payload, ...(id === undefined ? {} : { id }) },
      this.clock.now().toISOString(),
    );
    this.notify(agentId);
    return cmd;
  }

  /** Wakes the agent's waiting poll (call after enqueuing through the store directly). */
  notify(agentId: string): void {
    this.emitter.emit(agentId);
  }

  /**
   * Waits up to `waitMs` for commands for the agent and returns them (possibly none).
   * Returns at once when commands are there, as soon as one is enqueued, when
   * `signal` aborts (the client went away) or when the channel closes.
   */
  async poll(
    agentId: string,
    waitMs: number,
    session: string | undefined,
    signal?: AbortSignal,
  ): Promise<AgentCommand[]> {
    let woken = false;
    let wake: (() => void) | undefined;
    const onEvent = () => {
      woken = true;
      wake?.();
    };
    this.emitter.on(agentId, onEvent);
    this.emitter.on(CLOSE, onEvent);
    signal?.addEventListener('abort', onEvent);
    try {
      const deadline = Date.now() + waitMs;
      for (;;) {
        woken = false;
        const cmds = await this.take(agentId, session);
        if (cmds.length > 0) return cmds;
        const remaining = deadline - Date.now();
        if (remaining <= 0 || this.closed || signal?.aborted) return [];
        if (!woken) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, Math.min(remaining, this.recheckMs));
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          wake = undefined;
        }
      }
    } finally {
      this.emitter.off(agentId, onEvent);
      this.emitter.off(CLOSE, onEvent);
      signal?.removeEventListener('abort', onEvent);
    }
  }

  /** True once `close()` was called. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Ends every waiting poll (they answer with no commands); used at server shutdown. */
  close(): void {
    this.closed = true;
    this.emitter.emit(CLOSE);
  }

  private async take(agentId: string, session: string | undefined): Promise<AgentCommand[]> {
    const cmds = await this.store.commands.takeForAgent(agentId, this.clock.now().toISOString(), TAKE_LIMIT);
    if (session === undefined) return cmds.slice(0, this.batch);
    let state = this.sessions.get(agentId);
    if (state === undefined || state.session !== session) {
      state = { session, delivered: new Set() };
      this.sessions.set(agentId, state);
    }
    const known = state.delivered;
    // Forget ids the store no longer hands out (completed), so the set stays small.
    const current = new Set(cmds.map((c) => c.id));
    for (const id of known) if (!current.has(id)) known.delete(id);
    const fresh = cmds.filter((c) => !known.has(c.id)).slice(0, this.batch);
    for (const c of fresh) known.add(c.id);
    return fresh;
  }
}
