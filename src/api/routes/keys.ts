/**
 * Registration keys of a site (R-INF-2). `POST …/keys` answers the key file, the
 * only place the secret ever appears; the store keeps its sha256. A key is valid
 * for 5 days from creation and may register several agents until then.
 */
import { Type } from '@fastify/type-provider-typebox';
import { notFound } from '../../domain/errors.js';
import { hashSecret, newSecret } from '../auth.js';
import { keyView, pageArray, type ApiContext, type ApiInstance } from '../context.js';
import { PagingQuery, Ref, pageOf, ref } from '../schemas.js';
import { siteOf } from './sites.js';

/** How long a registration key is valid (R-INF-2). */
export const REGISTRATION_KEY_TTL_MS = 5 * 24 * 3600 * 1000;

const tags = ['registration keys'];
const SiteParams = Type.Object({ vault: Ref, site: Ref });

/** Registers the registration-key routes. */
export function keyRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.post(
    '/vaults/:vault/sites/:site/keys',
    {
      schema: {
        tags,
        params: SiteParams,
        body: Type.Object({}, { additionalProperties: false }),
        response: {
          201: Type.Object({ id: Type.String(), expiresAt: Type.String(), keyFile: ref('KeyFile') }),
        },
      },
    },
    async (req, reply) => {
      const site = await siteOf(ctx, req.params.vault, req.params.site);
      const secret = newSecret();
      const now = ctx.clock.now();
      const key = await ctx.store.keys.create({
        vaultId: site.vaultId,
        siteId: site.id,
        secretHash: hashSecret(secret),
        createdAt: now.toISOString(),
        expiresAt: new Date(now.getTime() + REGISTRATION_KEY_TTL_MS).toISOString(),
      });
      return reply.code(201).send({
        id: key.id,
        expiresAt: key.expiresAt,
        keyFile: {
          vaultId: site.vaultId,
          siteId: site.id,
          siteName: site.name,
          server: `${req.protocol}://${req.host}`,
          key: secret,
        },
      });
    },
  );

  app.get(
    '/vaults/:vault/sites/:site/keys',
    {
      schema: {
        tags,
        params: SiteParams,
        querystring: Type.Object(PagingQuery, { additionalProperties: false }),
        response: { 200: pageOf('RegistrationKey') },
      },
    },
    async (req) => {
      const site = await siteOf(ctx, req.params.vault, req.params.site);
      const keys = await ctx.store.keys.listBySite(site.id);
      return pageArray(
        keys.map((k) => keyView(ctx, k)),
        req.query,
      );
    },
  );

  app.delete(
    '/vaults/:vault/sites/:site/keys/:id',
    { schema: { tags, params: Type.Object({ vault: Ref, site: Ref, id: Ref }) } },
    async (req, reply) => {
      const site = await siteOf(ctx, req.params.vault, req.params.site);
      const keys = await ctx.store.keys.listBySite(site.id);
      if (!keys.some((k) => k.id === req.params.id)) throw notFound('registration key', req.params.id);
      await ctx.store.keys.delete(req.params.id);
      return reply.code(204).send();
    },
  );
}
