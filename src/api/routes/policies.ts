/**
 * Replication policies (R-POL-*) and their container associations (R-POL-8).
 * Values are checked by the domain's `validatePolicy` / `validatePolicyPatch`
 * (400 POLICY_INVALID naming the field) before anything is written. A policy in
 * use by protected items or associations cannot be deleted (IN_USE).
 */
import { Type } from '@fastify/type-provider-typebox';
import { OsrError, notFound } from '../../domain/errors.js';
import { validatePolicy, validatePolicyPatch } from '../../domain/policy.js';
import { pageArray, paging, type ApiContext, type ApiInstance } from '../context.js';
import { PagingQuery, PolicyCreateBody, PolicyPatchBody, Ref, pageOf, ref } from '../schemas.js';
import { containerOf } from './sites.js';

const tags = ['policies'];
const VaultParams = Type.Object({ vault: Ref });
const PolicyParams = Type.Object({ vault: Ref, policy: Ref });

/** Registers the policy and association routes. */
export function policyRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.get(
    '/vaults/:vault/policies',
    {
      schema: {
        tags,
        params: VaultParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('Policy') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.store.policies.list(vault.id, paging(req.query));
    },
  );

  app.post(
    '/vaults/:vault/policies',
    { schema: { tags, params: VaultParams, body: PolicyCreateBody, response: { 201: ref('Policy') } } },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const { name, ...input } = req.body;
      const settings = validatePolicy(input, { now: ctx.clock.now() });
      const policy = await ctx.store.policies.create({ vaultId: vault.id, name, ...settings });
      return reply.code(201).send(policy);
    },
  );

  app.get(
    '/vaults/:vault/policies/:policy',
    { schema: { tags, params: PolicyParams, response: { 200: ref('Policy') } } },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.store.policies.get(vault.id, req.params.policy);
    },
  );

  app.patch(
    '/vaults/:vault/policies/:policy',
    { schema: { tags, params: PolicyParams, body: PolicyPatchBody, response: { 200: ref('Policy') } } },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const existing = await ctx.store.policies.get(vault.id, req.params.policy);
      const { name, ...input } = req.body;
      const settings = validatePolicyPatch(existing, input, { now: ctx.clock.now() });
      return ctx.store.policies.update(existing.id, { ...settings, ...(name === undefined ? {} : { name }) });
    },
  );

  app.delete(
    '/vaults/:vault/policies/:policy',
    { schema: { tags, params: PolicyParams } },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const policy = await ctx.store.policies.get(vault.id, req.params.policy);
      const associations = await ctx.store.associations.list(vault.id, { policyId: policy.id });
      const items = await itemsUsingPolicy(ctx, vault.id, policy.id);
      if (associations.length > 0 || items.length > 0) {
        throw new OsrError('IN_USE', `policy '${policy.name}' is used by associations or protected items`, {
          details: { associations: associations.map((a) => a.id), items },
        });
      }
      await ctx.store.policies.delete(policy.id);
      return reply.code(204).send();
    },
  );

  app.get(
    '/vaults/:vault/policies/:policy/associations',
    {
      schema: {
        tags,
        params: PolicyParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('PolicyAssociation') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const policy = await ctx.store.policies.get(vault.id, req.params.policy);
      return pageArray(await ctx.store.associations.list(vault.id, { policyId: policy.id }), req.query);
    },
  );

  app.post(
    '/vaults/:vault/policies/:policy/associations',
    {
      schema: {
        tags,
        params: PolicyParams,
        body: Type.Object({ sourceContainer: Ref, targetContainer: Ref }, { additionalProperties: false }),
        response: { 201: ref('PolicyAssociation') },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const policy = await ctx.store.policies.get(vault.id, req.params.policy);
      const source = await containerOf(ctx, vault.id, req.body.sourceContainer);
      const target = await containerOf(ctx, vault.id, req.body.targetContainer);
      if (source.id === target.id) {
        throw new OsrError('VALIDATION_FAILED', 'source and target container must differ', {
          details: [{ path: 'body.targetContainer', message: 'must differ from the source container' }],
        });
      }
      const existing = await ctx.store.associations.list(vault.id, { sourceContainerId: source.id });
      if (existing.some((a) => a.policyId === policy.id && a.targetContainerId === target.id)) {
        throw new OsrError('ALREADY_EXISTS', 'this association already exists', {
          details: { policy: policy.id, sourceContainer: source.id, targetContainer: target.id },
        });
      }
      const association = await ctx.store.associations.create({
        vaultId: vault.id,
        policyId: policy.id,
        sourceContainerId: source.id,
        targetContainerId: target.id,
      });
      return reply.code(201).send(association);
    },
  );

  app.delete(
    '/vaults/:vault/policies/:policy/associations/:id',
    { schema: { tags, params: Type.Object({ vault: Ref, policy: Ref, id: Ref }) } },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const policy = await ctx.store.policies.get(vault.id, req.params.policy);
      const a = await ctx.store.associations.find(req.params.id);
      if (a === undefined || a.policyId !== policy.id) throw notFound('association', req.params.id);
      await ctx.store.associations.delete(a.id);
      return reply.code(204).send();
    },
  );
}

async function itemsUsingPolicy(ctx: ApiContext, vaultId: string, policyId: string): Promise<string[]> {
  const ids: string[] = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await ctx.store.items.list(vaultId, { limit: 1000, offset });
    for (const i of page.items) if (i.policyId === policyId) ids.push(i.id);
    if (page.items.length < 1000) return ids;
  }
}
