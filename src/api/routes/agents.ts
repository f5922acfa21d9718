/**
 * Registered agents as operators see them (R-INF-3): friendly name, version, last
 * heartbeat and `connection`, derived at read time from `lastHeartbeatAt` and the
 * server's heartbeat timeout with the injected clock. The first time a read sees an
 * agent Disconnected after a heartbeat, a Warning event is recorded (once per
 * heartbeat gap, remembered in memory).
 */
import { Type } from '@fastify/type-provider-typebox';
import type { Agent } from '../../domain/model.js';
import { notFound } from '../../domain/errors.js';
import { agentView, nowIso, paging, type ApiContext, type ApiInstance } from '../context.js';
import { PagingQuery, Ref, pageOf, ref } from '../schemas.js';

const tags = ['agents'];

/** Registers the agent routes (operator side; the agents' own endpoints are in agent-protocol.ts). */
export function agentRoutes(app: ApiInstance, ctx: ApiContext): void {
  const warned = new Set<string>();

  const view = async (agent: Agent) => {
    const v = agentView(ctx, agent);
    const gapKey = `${agent.id}@${agent.lastHeartbeatAt ?? ''}`;
    if (v.connection === 'Disconnected' && agent.lastHeartbeatAt !== null && !warned.has(gapKey)) {
      warned.add(gapKey);
      await ctx.store.events.add({
        vaultId: agent.vaultId,
        severity: 'Warning',
        kind: 'AgentDisconnected',
        targetId: agent.id,
        message: `agent '${agent.friendlyName}' has sent no heartbeat since ${agent.lastHeartbeatAt}`,
        details: { siteId: agent.siteId, lastHeartbeatAt: agent.lastHeartbeatAt },
        time: nowIso(ctx),
      });
    }
    return v;
  };

  app.get(
    '/vaults/:vault/agents',
    {
      schema: {
        tags,
        params: Type.Object({ vault: Ref }),
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('Agent') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const page = await ctx.store.agents.list(vault.id, paging(req.query));
      const items = [];
      for (const a of page.items) items.push(await view(a));
      return { items, total: page.total };
    },
  );

  app.get(
    '/vaults/:vault/agents/:id',
    {
      schema: {
        tags,
        params: Type.Object({ vault: Ref, id: Ref }),
        response: { 200: ref('Agent') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const agent = await ctx.store.agents.find(req.params.id);
      if (agent === undefined || agent.vaultId !== vault.id) throw notFound('agent', req.params.id);
      return view(agent);
    },
  );
}
