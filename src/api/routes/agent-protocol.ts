/**
 * The agent protocol (docs/agent-protocol.md), spoken by site agents only:
 * registration with a key (R-INF-2) and a certificate request the control plane's CA
 * signs, certificate renewal, heartbeats (R-INF-3), inventory reports, the long-poll
 * command channel with results, replication status reports and the peer lookup for
 * the site-to-site stream. Every route but `register` needs the agent's own
 * credential as bearer token.
 */
import { randomUUID } from 'node:crypto';
import { Type } from '@fastify/type-provider-typebox';
import { OsrError, notFound } from '../../domain/errors.js';
import type { Agent, JobError } from '../../domain/model.js';
import { hashSecret, newSecret } from '../auth.js';
import { agentView, nowIso, type ApiContext, type ApiInstance } from '../context.js';
import { InventorySnapshot, ReplicationStatusBody, ReportedError, ref } from '../schemas.js';

const tags = ['agent protocol'];
/** Longest long-poll accepted. */
export const MAX_WAIT_MS = 60_000;
/** Long-poll wait when the agent gives none. */
export const DEFAULT_WAIT_MS = 25_000;
/** Name of the container created for a site that has none when its first agent registers. */
export const DEFAULT_CONTAINER_NAME = 'default';

const ServerTime = Type.Object({ serverTime: Type.String() });
const CertificateRequestPem = Type.String({ minLength: 1, maxLength: 64 * 1024 });
const IssuedCertificate = Type.Object({
  certificatePem: Type.String(),
  caCertificatePem: Type.String(),
  expiresAt: Type.String(),
});

function agentOf(req: { agent: Agent | null }): Agent {
  if (req.agent === null) throw new OsrError('UNAUTHORIZED', 'agent credential required');
  return req.agent;
}

/** Registers the agent-protocol routes under `/agent`. */
export function agentProtocolRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.post(
    '/agent/register',
    {
      config: { auth: 'none' },
      schema: {
        tags,
        security: [],
        summary: 'Register an agent with a registration key (R-INF-2)',
        body: Type.Object(
          {
            key: Type.String({ minLength: 1, maxLength: 200 }),
            friendlyName: Type.String({ minLength: 1, maxLength: 200 }),
            version: Type.String({ minLength: 1, maxLength: 100 }),
            dataAddress: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
            certificateRequestPem: Type.Optional(CertificateRequestPem),
          },
          { additionalProperties: false },
        ),
        response: {
          201: Type.Object({
            agentId: Type.String(),
            credential: Type.String(),
            vaultId: Type.String(),
            siteId: Type.String(),
            siteName: Type.String(),
            heartbeatIntervalMs: Type.Integer(),
            certificate: Type.Optional(IssuedCertificate),
          }),
        },
      },
    },
    async (req, reply) => {
      const key = await ctx.store.keys.findBySecretHash(hashSecret(req.body.key));
      if (key === undefined) {
        throw new OsrError('REGISTRATION_KEY_INVALID', 'the registration key is not known to this server');
      }
      const now = ctx.clock.now();
      if (now.getTime() >= Date.parse(key.expiresAt)) {
        throw new OsrError('REGISTRATION_KEY_EXPIRED', `the registration key expired at ${key.expiresAt}`, {
          details: { keyId: key.id, expiresAt: key.expiresAt },
        });
      }
      const site = await ctx.store.sites.getById(key.siteId);
      const agentId = randomUUID();
      // Checked and signed before anything is stored: a refused request registers nothing.
      const certificate =
        req.body.certificateRequestPem === undefined
          ? undefined
          : ctx.trust.issueAgentCertificate(
              req.body.certificateRequestPem,
              { agentId, siteName: site.name, registering: true },
              now,
            );
      const credential = newSecret();
      const agent = await ctx.store.agents.create({
        id: agentId,
        vaultId: key.vaultId,
        siteId: site.id,
        friendlyName: req.body.friendlyName,
        credentialHash: hashSecret(credential),
        version: req.body.version,
        dataAddress: req.body.dataAddress ?? null,
        certificatePem: certificate?.certificatePem ?? null,
        registeredAt: now.toISOString(),
        lastHeartbeatAt: now.toISOString(),
      });
      const containers = await ctx.store.containers.listBySite(site.id);
      if (containers.length === 0) {
        await ctx.store.containers.create({
          vaultId: site.vaultId,
          siteId: site.id,
          name: DEFAULT_CONTAINER_NAME,
          synced: true,
        });
      }
      await ctx.store.events.add({
        vaultId: site.vaultId,
        severity: 'Info',
        kind: 'AgentRegistered',
        targetId: agent.id,
        message: `agent '${agent.friendlyName}' registered for site '${site.name}'`,
        details: { siteId: site.id, keyId: key.id, version: agent.version },
        time: now.toISOString(),
      });
      return reply.code(201).send({
        agentId: agent.id,
        credential,
        vaultId: site.vaultId,
        siteId: site.id,
        siteName: site.name,
        heartbeatIntervalMs: ctx.heartbeatIntervalMs,
        ...(certificate === undefined ? {} : { certificate }),
      });
    },
  );

  app.post(
    '/agent/certificate',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'Issue the agent a new stream certificate for its certificate request (upgrade or renewal)',
        body: Type.Object({ certificateRequestPem: CertificateRequestPem }, { additionalProperties: false }),
        response: { 200: IssuedCertificate },
      },
    },
    async (req) => {
      const agent = agentOf(req);
      const site = await ctx.store.sites.getById(agent.siteId);
      const now = ctx.clock.now();
      const issued = ctx.trust.issueAgentCertificate(
        req.body.certificateRequestPem,
        { agentId: agent.id, siteName: site.name, registering: false },
        now,
      );
      await ctx.store.agents.update(agent.id, { certificatePem: issued.certificatePem });
      await ctx.store.events.add({
        vaultId: agent.vaultId,
        severity: 'Info',
        kind: 'AgentCertificateIssued',
        targetId: agent.id,
        message: `agent '${agent.friendlyName}' got a new stream certificate, valid until ${issued.expiresAt}`,
        details: { siteId: site.id, expiresAt: issued.expiresAt },
        time: now.toISOString(),
      });
      return issued;
    },
  );

  app.post(
    '/agent/heartbeat',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'Heartbeat; may also update the agent’s version and data address',
        body: Type.Object(
          {
            version: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
            dataAddress: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: ServerTime },
      },
    },
    async (req) => {
      const agent = agentOf(req);
      const now = nowIso(ctx);
      await ctx.store.agents.update(agent.id, { lastHeartbeatAt: now, ...req.body });
      return { serverTime: now };
    },
  );

  app.put(
    '/agent/inventory',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'Replace the site’s inventory with this snapshot',
        body: InventorySnapshot,
        response: { 200: ServerTime },
      },
    },
    async (req) => {
      const agent = agentOf(req);
      const now = nowIso(ctx);
      await ctx.store.inventory.replace(agent.siteId, req.body, now);
      return { serverTime: now };
    },
  );

  app.get(
    '/agent/commands',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'Long-poll for commands',
        querystring: Type.Object(
          {
            waitMs: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_WAIT_MS })),
            session: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ commands: Type.Array(ref('AgentCommand')) }) },
      },
    },
    async (req, reply) => {
      const agent = agentOf(req);
      const gone = new AbortController();
      const onClose = () => gone.abort();
      reply.raw.once('close', onClose);
      try {
        const cmds = await ctx.channel.poll(
          agent.id,
          req.query.waitMs ?? DEFAULT_WAIT_MS,
          req.query.session,
          gone.signal,
        );
        // At shutdown the server already closed idle keep-alive sockets; this one would
        // otherwise stay open until the keep-alive timeout and hold close() up.
        if (ctx.channel.isClosed) void reply.header('connection', 'close');
        return { commands: cmds.map((c) => ({ id: c.id, type: c.type, payload: c.payload })) };
      } finally {
        reply.raw.off('close', onClose);
      }
    },
  );

  app.post(
    '/agent/commands/:id/result',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'Report a command’s result (idempotent by command id)',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 200 }) }),
        body: Type.Object(
          {
            state: Type.Union([Type.Literal('Succeeded'), Type.Literal('Failed')]),
            result: Type.Optional(Type.Unknown()),
            error: Type.Optional(ReportedError),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ id: Type.String(), state: Type.String(), duplicate: Type.Boolean() }),
        },
      },
    },
    async (req) => {
      const agent = agentOf(req);
      const existing = await ctx.store.commands.find(req.params.id);
      if (existing === undefined || existing.agentId !== agent.id) throw notFound('command', req.params.id);
      if (existing.state === 'Succeeded' || existing.state === 'Failed') {
        return { id: existing.id, state: existing.state, duplicate: true };
      }
      const e = req.body.error;
      const error: JobError | null =
        e === undefined
          ? req.body.state === 'Failed'
            ? {
                code: 'INTERNAL',
                message: 'the agent reported a failure without an error',
                possibleCauses: '',
                recommendedAction: '',
                seedCode: null,
              }
            : null
          : {
              code: e.code,
              message: e.message,
              possibleCauses: e.possibleCauses ?? '',
              recommendedAction: e.recommendedAction ?? '',
              seedCode: e.seedCode ?? null,
            };
      const cmd = await ctx.store.commands.complete(
        existing.id,
        req.body.state,
        req.body.result ?? null,
        error,
        nowIso(ctx),
      );
      if (ctx.workflows.onAgentCommandResult) await ctx.workflows.onAgentCommandResult(agent.id, cmd);
      return { id: cmd.id, state: cmd.state, duplicate: false };
    },
  );

  app.post(
    '/agent/replication-status',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'Report replication state, RPO and new recovery points of items',
        body: ReplicationStatusBody,
        response: {
          200: Type.Object({
            serverTime: Type.String(),
            rejected: Type.Array(
              Type.Object({ itemId: Type.String(), code: Type.String(), message: Type.String() }),
            ),
          }),
        },
      },
    },
    async (req) => {
      const agent = agentOf(req);
      // Item by item: an item the control plane no longer knows (or that is not this agent's)
      // must not keep the recovery points of the others from being recorded.
      const rejected: { itemId: string; code: string; message: string }[] = [];
      for (const item of req.body.items) {
        try {
          await ctx.workflows.onReplicationStatus(agent.id, { items: [item] });
        } catch (err) {
          if (!(err instanceof OsrError) || (err.code !== 'NOT_FOUND' && err.code !== 'FORBIDDEN')) throw err;
          rejected.push({ itemId: item.itemId, code: err.code, message: err.message });
        }
      }
      return { serverTime: nowIso(ctx), rejected };
    },
  );

  app.get(
    '/agent/peers/:siteId',
    {
      config: { auth: 'agent' },
      schema: {
        tags,
        summary: 'The peer site’s agent, for the site-to-site replication stream',
        params: Type.Object({ siteId: Type.String({ minLength: 1, maxLength: 200 }) }),
        response: {
          200: Type.Object({
            agentId: Type.String(),
            siteId: Type.String(),
            dataAddress: Type.Union([Type.String(), Type.Null()]),
            certificatePem: Type.Union([Type.String(), Type.Null()]),
            connection: Type.String(),
          }),
        },
      },
    },
    async (req) => {
      const agent = agentOf(req);
      const site = await ctx.store.sites.get(agent.vaultId, req.params.siteId);
      const peer = await ctx.store.agents.findBySite(site.id);
      if (peer === undefined) {
        throw new OsrError('AGENT_NOT_REGISTERED', `no agent is registered for site '${site.name}'`, {
          details: { siteId: site.id },
        });
      }
      const v = agentView(ctx, peer);
      return {
        agentId: peer.id,
        siteId: site.id,
        dataAddress: peer.dataAddress,
        certificatePem: peer.certificatePem,
        connection: v.connection,
      };
    },
  );
}
