/**
 * Vaults (R-INF-1): `GET/POST /vaults`, `GET/DELETE /vaults/{vault}`. A vault is
 * deleted only when it has no sites left (IN_USE otherwise).
 */
import { Type } from '@fastify/type-provider-typebox';
import { OsrError } from '../../domain/errors.js';
import { paging, type ApiContext, type ApiInstance } from '../context.js';
import { Name, PagingQuery, Ref, pageOf, ref } from '../schemas.js';

const tags = ['vaults'];
const VaultParams = Type.Object({ vault: Ref });

/** Registers the vault routes. */
export function vaultRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.get(
    '/vaults',
    {
      schema: {
        tags,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('Vault') },
      },
    },
    async (req) => ctx.store.vaults.list(paging(req.query)),
  );

  app.post(
    '/vaults',
    {
      schema: {
        tags,
        body: Type.Object({ name: Name }, { additionalProperties: false }),
        response: { 201: ref('Vault') },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.create({ name: req.body.name });
      return reply.code(201).send(vault);
    },
  );

  app.get(
    '/vaults/:vault',
    { schema: { tags, params: VaultParams, response: { 200: ref('Vault') } } },
    async (req) => ctx.store.vaults.get(req.params.vault),
  );

  app.delete('/vaults/:vault', { schema: { tags, params: VaultParams } }, async (req, reply) => {
    const vault = await ctx.store.vaults.get(req.params.vault);
    const sites = await ctx.store.sites.list(vault.id, { limit: 1 });
    if (sites.total > 0) {
      throw new OsrError('IN_USE', `vault '${vault.name}' still has ${sites.total} site(s)`, {
        details: { sites: sites.total },
      });
    }
    await ctx.store.vaults.delete(vault.id);
    return reply.code(204).send();
  });
}
