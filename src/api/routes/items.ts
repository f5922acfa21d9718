/**
 * Protected items and their operations (R-REP-*, R-FO-*, R-TF-*, R-RP-*). Every
 * decision — is the operation allowed now, which point, which network — belongs
 * to the workflows and the domain; these routes validate the request shape, call
 * the workflows and shape the answer: long operations answer 202 `{job}` with a
 * `Location: /api/v1/jobs/{id}` header; an operation not allowed in the item's
 * state is refused by the workflows with 409 OPERATION_NOT_ALLOWED before anything
 * changes.
 */
import { Type, type TSchema } from '@fastify/type-provider-typebox';
import type { Job, Operation, ProtectionState } from '../../domain/model.js';
import type { FastifyReply } from 'fastify';
import { OsrError, notFound } from '../../domain/errors.js';
import { paging, type ApiContext, type ApiInstance, type OperationParams } from '../context.js';
import { FailoverSettingsPatch, PagingQuery, Ref, pageOf, ref } from '../schemas.js';

const tags = ['protected items'];
const VaultParams = Type.Object({ vault: Ref });
const ItemParams = Type.Object({ vault: Ref, item: Ref });

/** A recovery point choice: `latest|latest-processed|latest-app-consistent|<point id>|<ISO time>`. */
const Point = Type.String({
  minLength: 1,
  maxLength: 100,
  description: 'latest (default) | latest-processed | latest-app-consistent | a point id | an ISO time',
});

const PROTECTION_STATES: ProtectionState[] = [
  'EnablingProtection',
  'InitialReplication',
  'Protected',
  'FailoverInProgress',
  'FailedOver',
  'CommitInProgress',
  'FailoverCommitted',
  'ReprotectInProgress',
  'CancelFailoverInProgress',
  'DisablingProtection',
  'NeedsRepair',
  'Unprotected',
];

const JobAccepted = Type.Object({ job: ref('Job') });

/** Answers 202 with the job and its Location. */
export function accepted<T extends { job: Job }>(reply: FastifyReply, body: T): FastifyReply {
  return reply.code(202).header('location', `/api/v1/jobs/${body.job.id}`).send(body);
}

interface OperationRoute {
  path: string;
  op: Operation;
  body: TSchema;
  summary: string;
}

const OPERATION_ROUTES: OperationRoute[] = [
  {
    path: 'test-failover',
    op: 'TestFailover',
    summary: 'Test failover (DR drill) at a point, into no network or an isolated one (R-TF-1)',
    body: Type.Object(
      {
        point: Type.Optional(Point),
        network: Type.Optional(
          Type.String({
            minLength: 1,
            description: "a network of the target site, 'isolated' (the default) or 'none'",
          }),
        ),
      },
      { additionalProperties: false },
    ),
  },
  {
    path: 'test-failover-cleanup',
    op: 'TestFailoverCleanup',
    summary: 'Complete a test failover and delete what it created (R-TF-2)',
    body: Type.Object(
      { notes: Type.Optional(Type.String({ maxLength: 10_000 })) },
      { additionalProperties: false },
    ),
  },
  {
    path: 'planned-failover',
    op: 'PlannedFailover',
    summary:
      'Planned failover without data loss (R-FO-9): shut down, synchronize, final point, snapshot, power on; a failure starts an automatic cancel',
    body: Type.Object({ point: Type.Optional(Point) }, { additionalProperties: false }),
  },
  {
    path: 'unplanned-failover',
    op: 'UnplannedFailover',
    summary:
      'Unplanned failover, optionally shutting the source down first (R-FO-3); replication stops; cancelling it needs force and leaves the item needing repair',
    body: Type.Object(
      { point: Type.Optional(Point), shutdownSource: Type.Optional(Type.Boolean()) },
      { additionalProperties: false },
    ),
  },
  {
    path: 'change-point',
    op: 'ChangePit',
    summary: 'Bring the failed-over machine up at another recovery point (R-FO-7)',
    body: Type.Object({ point: Point }, { additionalProperties: false }),
  },
  {
    path: 'commit',
    op: 'Commit',
    summary: 'Commit the failover (R-FO-8)',
    body: Type.Object({}, { additionalProperties: false }),
  },
  {
    path: 'cancel-failover',
    op: 'CancelFailover',
    summary: 'Cancel a planned cloud→on-premises failover (R-FO-10)',
    body: Type.Object({}, { additionalProperties: false }),
  },
  {
    path: 'repair',
    op: 'RepairReplication',
    summary: 'Repair replication of an item that needs it',
    body: Type.Object({}, { additionalProperties: false }),
  },
  {
    path: 'unprotect',
    op: 'DisableProtection',
    summary: 'Disable protection, optionally deleting the replica (R-REP-7, R-POL-5)',
    body: Type.Object(
      {
        deleteReplica: Type.Optional(Type.Boolean()),
        /** Remove protection even where a site's agent is gone (its clean-up is skipped and reported). */
        force: Type.Optional(Type.Boolean()),
      },
      { additionalProperties: false },
    ),
  },
];

/** Registers the protected-item routes. */
export function itemRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.post(
    '/vaults/:vault/items',
    {
      schema: {
        tags,
        summary: 'Enable protection of a machine (R-REP-1)',
        params: VaultParams,
        body: Type.Object(
          {
            machine: Ref,
            policy: Ref,
            targetSite: Ref,
            targetContainer: Type.Optional(Ref),
            name: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
            settings: Type.Optional(FailoverSettingsPatch),
            replicaExists: Type.Optional(Type.Boolean()),
          },
          { additionalProperties: false },
        ),
        response: { 202: Type.Object({ job: ref('Job'), item: ref('ProtectedItem') }) },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const result = await ctx.workflows.protect(vault.id, req.body);
      return accepted(reply, result);
    },
  );

  app.get(
    '/vaults/:vault/items',
    {
      schema: {
        tags,
        params: VaultParams,
        querystring: Type.Object(
          {
            ...PagingQuery,
            state: Type.Optional(Type.Array(Type.String())),
            health: Type.Optional(
              Type.Union([Type.Literal('Normal'), Type.Literal('Warning'), Type.Literal('Critical')]),
            ),
            group: Type.Optional(Ref),
          },
          { additionalProperties: false },
        ),
        response: { 200: pageOf('ProtectedItem') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const states = splitList(req.query.state);
      for (const s of states) {
        if (!PROTECTION_STATES.includes(s as ProtectionState)) {
          throw validation('querystring.state', `must be one of ${PROTECTION_STATES.join(', ')}`);
        }
      }
      let groupId: string | undefined;
      if (req.query.group !== undefined) {
        const g = await ctx.store.groups.find(vault.id, req.query.group);
        if (g === undefined) throw notFound('replication group', req.query.group);
        groupId = g.id;
      }
      return ctx.store.items.list(vault.id, {
        ...paging(req.query),
        ...(states.length > 0 ? { protectionState: states as ProtectionState[] } : {}),
        ...(req.query.health ? { replicationHealth: req.query.health } : {}),
        ...(groupId ? { replicationGroupId: groupId } : {}),
      });
    },
  );

  app.get(
    '/vaults/:vault/items/:item',
    { schema: { tags, params: ItemParams, response: { 200: ref('ItemView') } } },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.workflows.describeItem(vault.id, req.params.item);
    },
  );

  app.patch(
    '/vaults/:vault/items/:item/settings',
    {
      schema: {
        tags,
        summary: 'Change the failover settings of an item (R-NET-5)',
        params: ItemParams,
        body: FailoverSettingsPatch,
        response: { 200: ref('ProtectedItem') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.workflows.updateSettings(vault.id, req.params.item, req.body);
    },
  );

  app.get(
    '/vaults/:vault/items/:item/points',
    {
      schema: {
        tags,
        params: ItemParams,
        querystring: Type.Object(
          {
            ...PagingQuery,
            type: Type.Optional(
              Type.Union([Type.Literal('crash-consistent'), Type.Literal('app-consistent')]),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: pageOf('RecoveryPoint') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const item = await ctx.store.items.get(vault.id, req.params.item);
      return ctx.store.points.list(item.id, {
        ...paging(req.query),
        ...(req.query.type ? { type: req.query.type } : {}),
      });
    },
  );

  for (const r of OPERATION_ROUTES) {
    app.post(
      `/vaults/:vault/items/:item/${r.path}`,
      {
        schema: {
          tags,
          summary: r.summary,
          params: ItemParams,
          body: r.body,
          response: { 202: JobAccepted },
        },
      },
      async (req, reply) => {
        const vault = await ctx.store.vaults.get(req.params.vault);
        const job = await ctx.workflows.operate(vault.id, req.params.item, r.op, req.body as OperationParams);
        return accepted(reply, { job });
      },
    );
  }

  app.post(
    '/vaults/:vault/items/:item/reprotect',
    {
      schema: {
        tags,
        summary:
          'Reverse replication after a committed failover (R-RP-1, R-RP-2); preview lists what it would create',
        params: ItemParams,
        body: Type.Object(
          {
            location: Type.Optional(Type.Union([Type.Literal('original'), Type.Literal('alternate')])),
            host: Type.Optional(Type.String({ minLength: 1 })),
            datastore: Type.Optional(Type.String({ minLength: 1 })),
            policy: Type.Optional(Ref),
            preview: Type.Optional(Type.Boolean()),
          },
          { additionalProperties: false },
        ),
        response: { 200: ref('ReprotectPreview'), 202: JobAccepted },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const params = req.body as OperationParams;
      if (params.preview === true) {
        if (ctx.workflows.reprotectPreview === undefined) {
          throw new OsrError('OPERATION_NOT_ALLOWED', 'reprotect preview is not available on this server');
        }
        return reply.code(200).send(await ctx.workflows.reprotectPreview(vault.id, req.params.item, params));
      }
      const job = await ctx.workflows.operate(vault.id, req.params.item, 'ReverseReplicate', params);
      return accepted(reply, { job });
    },
  );
}

/** `?state=a&state=b` and `?state=a,b` alike. */
export function splitList(values: string[] | undefined): string[] {
  if (values === undefined) return [];
  return values
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter((v) => v.length > 0);
}

function validation(path: string, message: string) {
  return new OsrError('VALIDATION_FAILED', `${path}: ${message}`, { details: [{ path, message }] });
}
