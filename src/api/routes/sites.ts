/**
 * Sites and what their agents report about them: sites (`/vaults/{vault}/sites`),
 * a site's inventory, containers (R-INF-5: which ones the agent syncs) and
 * machines. Inventory rows are written only by agents (`PUT /agent/inventory`).
 */
import { Type } from '@fastify/type-provider-typebox';
import { OsrError, notFound } from '../../domain/errors.js';
import type { Container, Site } from '../../domain/model.js';
import { connectionOf, pageArray, paging, type ApiContext, type ApiInstance } from '../context.js';
import { Name, PagingQuery, Ref, SiteKind, pageOf, ref } from '../schemas.js';

const tags = ['sites'];
const VaultParams = Type.Object({ vault: Ref });
const SiteParams = Type.Object({ vault: Ref, site: Ref });

/** The site of a vault by id or name, or NOT_FOUND. */
export async function siteOf(ctx: ApiContext, vaultRef: string, siteRef: string): Promise<Site> {
  const vault = await ctx.store.vaults.get(vaultRef);
  return ctx.store.sites.get(vault.id, siteRef);
}

/**
 * A container of a vault by id, `site/container`, or a container name that is
 * unique in the vault; NOT_FOUND otherwise.
 */
export async function containerOf(ctx: ApiContext, vaultId: string, refText: string): Promise<Container> {
  const slash = refText.indexOf('/');
  if (slash > 0) {
    const site = await ctx.store.sites.get(vaultId, refText.slice(0, slash));
    const c = await ctx.store.containers.find(site.id, refText.slice(slash + 1));
    if (c === undefined) throw notFound('container', refText);
    return c;
  }
  const all = await allContainers(ctx, vaultId);
  const byId = all.find((c) => c.id === refText);
  if (byId) return byId;
  const byName = all.filter((c) => c.name === refText);
  if (byName.length === 1 && byName[0]) return byName[0];
  if (byName.length > 1) {
    throw new OsrError(
      'VALIDATION_FAILED',
      `container name '${refText}' is ambiguous; use site/container or the id`,
      {
        details: { container: refText, candidates: byName.map((c) => c.id) },
      },
    );
  }
  throw notFound('container', refText);
}

async function allContainers(ctx: ApiContext, vaultId: string): Promise<Container[]> {
  const out: Container[] = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await ctx.store.containers.list(vaultId, { limit: 1000, offset });
    out.push(...page.items);
    if (page.items.length < 1000) return out;
  }
}

/** Registers the site, inventory, container and machine routes. */
export function siteRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.get(
    '/vaults/:vault/sites',
    {
      schema: {
        tags,
        params: VaultParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('Site') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      return ctx.store.sites.list(vault.id, paging(req.query));
    },
  );

  app.post(
    '/vaults/:vault/sites',
    {
      schema: {
        tags,
        params: VaultParams,
        body: Type.Object({ name: Name, kind: SiteKind }, { additionalProperties: false }),
        response: { 201: ref('Site') },
      },
    },
    async (req, reply) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const site = await ctx.store.sites.create({
        vaultId: vault.id,
        name: req.body.name,
        kind: req.body.kind,
      });
      return reply.code(201).send(site);
    },
  );

  app.get(
    '/vaults/:vault/sites/:site',
    { schema: { tags, params: SiteParams, response: { 200: ref('Site') } } },
    async (req) => siteOf(ctx, req.params.vault, req.params.site),
  );

  app.delete('/vaults/:vault/sites/:site', { schema: { tags, params: SiteParams } }, async (req, reply) => {
    const site = await siteOf(ctx, req.params.vault, req.params.site);
    const users = await itemsOnSite(ctx, site);
    if (users.length > 0) {
      throw new OsrError('IN_USE', `site '${site.name}' is used by ${users.length} protected item(s)`, {
        details: { items: users },
      });
    }
    const agent = await ctx.store.agents.findBySite(site.id);
    if (agent !== undefined && connectionOf(agent, ctx.clock.now(), ctx.heartbeatTimeoutMs) === 'Connected') {
      throw new OsrError(
        'IN_USE',
        `site '${site.name}' has a connected agent (${agent.friendlyName}); stop the agent first, then delete the site once it shows Disconnected`,
        { details: { agent: agent.id } },
      );
    }
    await ctx.store.sites.delete(site.id);
    return reply.code(204).send();
  });

  app.get(
    '/vaults/:vault/sites/:site/inventory',
    {
      schema: {
        tags,
        params: SiteParams,
        response: {
          200: Type.Object({
            hosts: Type.Array(ref('Host')),
            datastores: Type.Array(ref('Datastore')),
            networks: Type.Array(ref('Network')),
            containers: Type.Array(ref('Container')),
          }),
        },
      },
    },
    async (req) => {
      const site = await siteOf(ctx, req.params.vault, req.params.site);
      const [hosts, datastores, networks, containers] = await Promise.all([
        ctx.store.inventory.hosts(site.id),
        ctx.store.inventory.datastores(site.id),
        ctx.store.inventory.networks(site.id),
        ctx.store.containers.listBySite(site.id),
      ]);
      return { hosts, datastores, networks, containers };
    },
  );

  app.get(
    '/vaults/:vault/sites/:site/containers',
    {
      schema: {
        tags,
        params: SiteParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('Container') },
      },
    },
    async (req) => {
      const site = await siteOf(ctx, req.params.vault, req.params.site);
      return pageArray(await ctx.store.containers.listBySite(site.id), req.query);
    },
  );

  app.patch(
    '/vaults/:vault/containers/:id',
    {
      schema: {
        tags,
        params: Type.Object({ vault: Ref, id: Ref }),
        body: Type.Object({ synced: Type.Boolean() }, { additionalProperties: false }),
        response: { 200: ref('Container') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const c = await containerOf(ctx, vault.id, req.params.id);
      return ctx.store.containers.update(c.id, { synced: req.body.synced });
    },
  );

  app.get(
    '/vaults/:vault/machines',
    {
      schema: {
        tags: ['machines'],
        params: VaultParams,
        querystring: Type.Object(
          { ...PagingQuery, site: Type.Optional(Ref), container: Type.Optional(Ref) },
          { additionalProperties: false },
        ),
        response: { 200: pageOf('Machine') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const { site, container } = req.query;
      const siteId = site === undefined ? undefined : (await ctx.store.sites.get(vault.id, site)).id;
      let containerId: string | undefined;
      if (container !== undefined) {
        if (siteId !== undefined) {
          const c = await ctx.store.containers.find(siteId, container);
          if (c === undefined) throw notFound('container', container);
          containerId = c.id;
        } else {
          containerId = (await containerOf(ctx, vault.id, container)).id;
        }
      }
      return ctx.store.machines.list(vault.id, {
        ...paging(req.query),
        ...(siteId === undefined ? {} : { siteId }),
        ...(containerId === undefined ? {} : { containerId }),
      });
    },
  );

  app.get(
    '/vaults/:vault/machines/:machine',
    {
      schema: {
        tags: ['machines'],
        params: Type.Object({ vault: Ref, machine: Ref }),
        response: { 200: ref('Machine') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const m = await ctx.store.machines.findInVault(vault.id, req.params.machine);
      if (m === undefined) throw notFound('machine', req.params.machine);
      return m;
    },
  );
}

async function itemsOnSite(ctx: ApiContext, site: Site): Promise<string[]> {
  const ids: string[] = [];
  for (let offset = 0; ; offset += 1000) {
    const page = await ctx.store.items.list(site.vaultId, { limit: 1000, offset });
    for (const i of page.items) {
      if (i.sourceSiteId === site.id || i.targetSiteId === site.id || i.primarySiteId === site.id)
        ids.push(i.id);
    }
    if (page.items.length < 1000) return ids;
  }
}
