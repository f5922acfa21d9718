/**
 * Networks and network mappings (R-NET-1…R-NET-4). Networks come from the agents'
 * inventory; a mapping joins a source network to a target network, one mapping per
 * source network. Responses name both ends (site and network) beside their ids.
 */
import { Type } from '@fastify/type-provider-typebox';
import { OsrError, notFound } from '../../domain/errors.js';
import type { Network, NetworkMapping } from '../../domain/model.js';
import { pageArray, type ApiContext, type ApiInstance } from '../context.js';
import { PagingQuery, Ref, pageOf, ref } from '../schemas.js';
import { siteOf } from './sites.js';

const tags = ['networks'];
const VaultParams = Type.Object({ vault: Ref });
const MappingParams = Type.Object({ vault: Ref, id: Ref });

/** Registers the network and network-mapping routes. */
export function networkRoutes(app: ApiInstance, ctx: ApiContext): void {
  const networkOf = async (vaultRef: string, siteRef: string, networkRef: string, field: string) => {
    const site = await siteOf(ctx, vaultRef, siteRef);
    const network = await ctx.store.inventory.findNetwork(site.id, networkRef);
    if (network === undefined) {
      throw new OsrError('NOT_FOUND', `network '${networkRef}' not found on site '${site.name}'`, {
        details: { kind: 'network', key: networkRef, site: site.name, field },
      });
    }
    return network;
  };

  const view = async (m: NetworkMapping) => {
    const [source, target] = await Promise.all([
      ctx.store.inventory.getNetworkById(m.sourceNetworkId),
      ctx.store.inventory.getNetworkById(m.targetNetworkId),
    ]);
    const [sourceSite, targetSite] = await Promise.all([
      ctx.store.sites.getById(source.siteId),
      ctx.store.sites.getById(target.siteId),
    ]);
    return {
      ...m,
      sourceSiteId: sourceSite.id,
      sourceSite: sourceSite.name,
      sourceNetwork: source.name,
      targetSiteId: targetSite.id,
      targetSite: targetSite.name,
      targetNetwork: target.name,
    };
  };

  const mappingOf = async (vaultRef: string, id: string) => {
    const vault = await ctx.store.vaults.get(vaultRef);
    const m = await ctx.store.networkMappings.find(id);
    if (m === undefined || m.vaultId !== vault.id) throw notFound('network mapping', id);
    return m;
  };

  const refuseSame = (source: Network, target: Network) => {
    if (source.id === target.id) {
      throw new OsrError('VALIDATION_FAILED', 'a network cannot be mapped to itself', {
        details: [{ path: 'body.targetNetwork', message: 'must differ from the source network' }],
      });
    }
  };

  app.get(
    '/vaults/:vault/sites/:site/networks',
    {
      schema: {
        tags,
        params: Type.Object({ vault: Ref, site: Ref }),
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('Network') },
      },
    },
    async (req) => {
      const site = await siteOf(ctx, req.params.vault, req.params.site);
      return pageArray(await ctx.store.inventory.networks(site.id), req.query);
    },
  );

  app.get(
    '/vaults/:vault/network-mappings',
    {
      schema: {
        tags,
        params: VaultParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('NetworkMapping') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const page = pageArray(await ctx.store.networkMappings.list(vault.id), req.query);
      return { items: await Promise.all(page.items.map(view)), total: page.total };
    },
  );

  app.post(
    '/vaults/:vault/network-mappings',
    {
      schema: {
        tags,
        params: VaultParams,
        body: Type.Object(
          { sourceSite: Ref, sourceNetwork: Ref, targetSite: Ref, targetNetwork: Ref },
          { additionalProperties: false },
        ),
        response: { 201: ref('NetworkMapping') },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const b = req.body;
      const source = await networkOf(vault.id, b.sourceSite, b.sourceNetwork, 'sourceNetwork');
      const target = await networkOf(vault.id, b.targetSite, b.targetNetwork, 'targetNetwork');
      refuseSame(source, target);
      const existing = await ctx.store.networkMappings.findBySource(source.id);
      if (existing !== undefined) {
        throw new OsrError('ALREADY_EXISTS', `network '${source.name}' is already mapped`, {
          details: { mapping: existing.id },
        });
      }
      const m = await ctx.store.networkMappings.create({
        vaultId: vault.id,
        sourceNetworkId: source.id,
        targetNetworkId: target.id,
      });
      return reply.code(201).send(await view(m));
    },
  );

  app.get(
    '/vaults/:vault/network-mappings/:id',
    { schema: { tags, params: MappingParams, response: { 200: ref('NetworkMapping') } } },
    async (req) => view(await mappingOf(req.params.vault, req.params.id)),
  );

  app.patch(
    '/vaults/:vault/network-mappings/:id',
    {
      schema: {
        tags,
        params: MappingParams,
        body: Type.Object(
          { targetNetwork: Ref, targetSite: Type.Optional(Ref) },
          { additionalProperties: false },
        ),
        response: { 200: ref('NetworkMapping') },
      },
    },
    async (req) => {
      const m = await mappingOf(req.params.vault, req.params.id);
      const current = await ctx.store.inventory.getNetworkById(m.targetNetworkId);
      const siteRef = req.body.targetSite ?? current.siteId;
      const target = await networkOf(req.params.vault, siteRef, req.body.targetNetwork, 'targetNetwork');
      refuseSame(await ctx.store.inventory.getNetworkById(m.sourceNetworkId), target);
      return view(await ctx.store.networkMappings.update(m.id, { targetNetworkId: target.id }));
    },
  );

  app.delete(
    '/vaults/:vault/network-mappings/:id',
    { schema: { tags, params: MappingParams } },
    async (req, reply) => {
      const m = await mappingOf(req.params.vault, req.params.id);
      await ctx.store.networkMappings.delete(m.id);
      return reply.code(204).send();
    },
  );
}
