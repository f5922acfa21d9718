/**
 * What every route module receives: the store, the jobs engine and workflows (as
 * the small ports the API needs of them), the agents' command channel, the clock,
 * and a few helpers shared by the routes.
 */
import type { FastifyBaseLogger, FastifyInstance, RawServerDefault } from 'fastify';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type {
  Agent,
  AgentCommand,
  AgentConnection,
  FailoverSettings,
  Job,
  Operation,
  ProtectedItem,
  RegistrationKey,
  Vault,
} from '../domain/model.js';
import type { ListOptions, Store } from '../store/store.js';
import type { Clock } from '../jobs/types.js';
import type { AgentChannel } from './agent-channel.js';
import type { OperationParams, ProtectRequest } from '../workflows/index.js';
import type { ReplicationStatusReport } from './schemas.js';
import type { ControlPlaneTrust } from '../workflows/trust.js';

/** The Fastify instance type the route modules register on (TypeBox type provider). */
export type ApiInstance = FastifyInstance<
  RawServerDefault,
  IncomingMessage,
  ServerResponse,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

export type { ProtectRequest, OperationParams };

/** What the API needs of the workflows (src/workflows `Workflows` satisfies it). */
export interface WorkflowsPort {
  protect(vaultId: string, req: ProtectRequest): Promise<{ job: Job; item: ProtectedItem }>;
  /** Refuses with OPERATION_NOT_ALLOWED (409) before anything changes. */
  operate(vaultId: string, item: string, op: Operation, params: OperationParams): Promise<Job>;
  /** Optional: without it, a reprotect preview is refused with OPERATION_NOT_ALLOWED. */
  reprotectPreview?(
    vaultId: string,
    item: string,
    params: OperationParams,
  ): Promise<{ creates: { kind: string; name: string; label: string }[] }>;
  updateSettings(vaultId: string, item: string, settings: Partial<FailoverSettings>): Promise<ProtectedItem>;
  /** The item plus allowedOperations, latestPoints, disks, RPO and health (R-REP-6). */
  describeItem(vaultId: string, item: string): Promise<object>;
  /** Refuses an unplanned-failover cancel without force (FORCE_REQUIRED). */
  cancelJob(jobId: string, force: boolean): Promise<Job>;
  /** Optional: workflows may instead watch the command rows in the store. */
  onAgentCommandResult?(agentId: string, command: AgentCommand): Promise<void>;
  onReplicationStatus(agentId: string, report: ReplicationStatusReport): Promise<void>;
}

/** What the API needs of the jobs engine. */
export interface EnginePort {
  resume(jobId: string, comment: string): Promise<Job>;
}

/** Shared state of the route modules. */
export interface ApiContext {
  readonly store: Store;
  readonly engine: EnginePort;
  readonly workflows: WorkflowsPort;
  readonly channel: AgentChannel;
  readonly clock: Clock;
  readonly heartbeatTimeoutMs: number;
  readonly adminTokenHash: string;
  /** Agents are told to heartbeat this often. */
  readonly heartbeatIntervalMs: number;
  /** The certificate authority that signs the agents' stream certificates. */
  readonly trust: ControlPlaneTrust;
}

/** "now" as the store wants it, from the injected clock. */
export function nowIso(ctx: ApiContext): string {
  return ctx.clock.now().toISOString();
}

/** The vault named by a route parameter (id or name), or NOT_FOUND. */
export function vaultOf(ctx: ApiContext, ref: string): Promise<Vault> {
  return ctx.store.vaults.get(ref);
}

/** Paging options from a querystring. */
export function paging(q: { limit?: number; offset?: number }): ListOptions {
  return { limit: q.limit ?? 100, offset: q.offset ?? 0 };
}

/** Slices an in-memory list into a page (for repositories that return whole lists). */
export function pageArray<T>(
  all: T[],
  q: { limit?: number; offset?: number },
): { items: T[]; total: number } {
  const { limit = 100, offset = 0 } = paging(q);
  return { items: all.slice(offset, offset + limit), total: all.length };
}

/** Connected while the last heartbeat is younger than the timeout (R-INF-3). */
export function connectionOf(agent: Agent, now: Date, timeoutMs: number): AgentConnection {
  if (agent.lastHeartbeatAt === null) return 'Disconnected';
  const age = now.getTime() - Date.parse(agent.lastHeartbeatAt);
  return age <= timeoutMs ? 'Connected' : 'Disconnected';
}

/** An agent as the API shows it: without its credential hash, with its connection. */
export function agentView(
  ctx: ApiContext,
  agent: Agent,
): Omit<Agent, 'credentialHash'> & { connection: AgentConnection } {
  const { credentialHash: _hidden, ...rest } = agent;
  return { ...rest, connection: connectionOf(agent, ctx.clock.now(), ctx.heartbeatTimeoutMs) };
}

/** A registration key as listed: never the hash. */
export function keyView(
  ctx: ApiContext,
  key: RegistrationKey,
): Omit<RegistrationKey, 'secretHash'> & { expired: boolean } {
  const { secretHash: _hidden, ...rest } = key;
  return { ...rest, expired: ctx.clock.now().getTime() >= Date.parse(key.expiresAt) };
}
