/**
 * Recovery plans (R-PLAN-1, R-PLAN-2) and replication groups (R-PLAN-4). Plan
 * groups name their items by id or name; the stored plan keeps item ids.
 */
import { Type, type Static } from '@fastify/type-provider-typebox';
import { OsrError, notFound } from '../../domain/errors.js';
import type { PlanGroup } from '../../domain/model.js';
import { pageArray, paging, type ApiContext, type ApiInstance } from '../context.js';
import { Name, PagingQuery, PlanGroupBody, Ref, pageOf, ref } from '../schemas.js';

const VaultParams = Type.Object({ vault: Ref });
const PlanParams = Type.Object({ vault: Ref, plan: Ref });

/** Registers the recovery-plan and replication-group routes. */
export function planRoutes(app: ApiInstance, ctx: ApiContext): void {
  const resolveGroups = async (
    vaultId: string,
    groups: Static<typeof PlanGroupBody>[],
  ): Promise<PlanGroup[]> => {
    const seen = new Set<string>();
    const out: PlanGroup[] = [];
    for (const [gi, g] of groups.entries()) {
      const itemIds: string[] = [];
      for (const [ii, itemRef] of g.items.entries()) {
        const item = await ctx.store.items.find(vaultId, itemRef);
        if (item === undefined) {
          throw new OsrError('NOT_FOUND', `protected item '${itemRef}' not found`, {
            details: { kind: 'protected item', key: itemRef, path: `body.groups.${gi}.items.${ii}` },
          });
        }
        if (seen.has(item.id)) {
          const message = `item '${item.name}' appears more than once in the plan`;
          throw new OsrError('VALIDATION_FAILED', message, {
            details: [{ path: `body.groups.${gi}.items.${ii}`, message }],
          });
        }
        seen.add(item.id);
        itemIds.push(item.id);
      }
      out.push({ itemIds, before: g.before ?? [], after: g.after ?? [] });
    }
    return out;
  };

  app.get(
    '/vaults/:vault/plans',
    {
      schema: {
        tags: ['recovery plans'],
        params: VaultParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('RecoveryPlan') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.store.plans.list(vault.id, paging(req.query));
    },
  );

  app.post(
    '/vaults/:vault/plans',
    {
      schema: {
        tags: ['recovery plans'],
        params: VaultParams,
        body: Type.Object({ name: Name, groups: Type.Array(PlanGroupBody) }, { additionalProperties: false }),
        response: { 201: ref('RecoveryPlan') },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const groups = await resolveGroups(vault.id, req.body.groups);
      const plan = await ctx.store.plans.create({ vaultId: vault.id, name: req.body.name, groups });
      return reply.code(201).send(plan);
    },
  );

  app.get(
    '/vaults/:vault/plans/:plan',
    { schema: { tags: ['recovery plans'], params: PlanParams, response: { 200: ref('RecoveryPlan') } } },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.store.plans.get(vault.id, req.params.plan);
    },
  );

  app.patch(
    '/vaults/:vault/plans/:plan',
    {
      schema: {
        tags: ['recovery plans'],
        params: PlanParams,
        body: Type.Object(
          { name: Type.Optional(Name), groups: Type.Optional(Type.Array(PlanGroupBody)) },
          { additionalProperties: false },
        ),
        response: { 200: ref('RecoveryPlan') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const plan = await ctx.store.plans.get(vault.id, req.params.plan);
      const groups =
        req.body.groups === undefined ? undefined : await resolveGroups(vault.id, req.body.groups);
      return ctx.store.plans.update(plan.id, {
        ...(req.body.name === undefined ? {} : { name: req.body.name }),
        ...(groups === undefined ? {} : { groups }),
      });
    },
  );

  app.delete(
    '/vaults/:vault/plans/:plan',
    { schema: { tags: ['recovery plans'], params: PlanParams } },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const plan = await ctx.store.plans.get(vault.id, req.params.plan);
      await ctx.store.plans.delete(plan.id);
      return reply.code(204).send();
    },
  );

  app.get(
    '/vaults/:vault/replication-groups',
    {
      schema: {
        tags: ['replication groups'],
        params: VaultParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('ReplicationGroup') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return pageArray(await ctx.store.groups.list(vault.id), req.query);
    },
  );

  app.post(
    '/vaults/:vault/replication-groups',
    {
      schema: {
        tags: ['replication groups'],
        params: VaultParams,
        body: Type.Object({ name: Name }, { additionalProperties: false }),
        response: { 201: ref('ReplicationGroup') },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const group = await ctx.store.groups.create({ vaultId: vault.id, name: req.body.name });
      return reply.code(201).send(group);
    },
  );

  app.delete(
    '/vaults/:vault/replication-groups/:id',
    { schema: { tags: ['replication groups'], params: Type.Object({ vault: Ref, id: Ref }) } },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const group = await ctx.store.groups.find(vault.id, req.params.id);
      if (group === undefined) throw notFound('replication group', req.params.id);
      const members = await ctx.store.items.list(vault.id, { replicationGroupId: group.id, limit: 1 });
      if (members.total > 0) {
        throw new OsrError('IN_USE', `replication group '${group.name}' still has ${members.total} item(s)`, {
          details: { items: members.total },
        });
      }
      await ctx.store.groups.delete(group.id);
      return reply.code(204).send();
    },
  );
}
