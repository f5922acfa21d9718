/** Alerts and events of a vault (R-MON-1): `GET /vaults/{vault}/events?since=&severity=`. */
import { Type } from '@fastify/type-provider-typebox';
import { paging, type ApiContext, type ApiInstance } from '../context.js';
import { IsoTime, PagingQuery, Ref, pageOf } from '../schemas.js';

/** Registers the event routes. */
export function eventRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.get(
    '/vaults/:vault/events',
    {
      schema: {
        tags: ['events'],
        params: Type.Object({ vault: Ref }),
        querystring: Type.Object(
          {
            ...PagingQuery,
            since: Type.Optional(IsoTime),
            severity: Type.Optional(
              Type.Union([Type.Literal('Info'), Type.Literal('Warning'), Type.Literal('Critical')]),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: pageOf('Event') },
      },
    },
    async (req) => {
      const vault = await ctx.store.vaults.get(req.params.vault);
      const { since, severity } = req.query;
      return ctx.store.events.list(vault.id, {
        ...paging(req.query),
        ...(since === undefined ? {} : { since: new Date(since).toISOString() }),
        ...(severity === undefined ? {} : { severity }),
      });
    },
  );
}
