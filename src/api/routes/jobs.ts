/**
 * Jobs (R-JOB-1, R-JOB-2): list with filters, show with steps, cancel (the
 * workflows decide: unplanned failover needs `force`, 409 FORCE_REQUIRED, R-FO-5)
 * and resume a job parked WaitingForAction with an operator comment.
 */
import { Type } from '@fastify/type-provider-typebox';
import { OsrError } from '../../domain/errors.js';
import type { JobState } from '../../domain/model.js';
import type { JobListFilter } from '../../store/store.js';
import { paging, type ApiContext, type ApiInstance } from '../context.js';
import { IsoTime, PagingQuery, Ref, pageOf, ref } from '../schemas.js';
import { splitList } from './items.js';

const tags = ['jobs'];
const JobParams = Type.Object({ id: Ref });
const JOB_STATES: JobState[] = [
  'NotStarted',
  'InProgress',
  'WaitingForAction',
  'Succeeded',
  'Failed',
  'Cancelled',
];

/** Registers the job routes. */
export function jobRoutes(app: ApiInstance, ctx: ApiContext): void {
  app.get(
    '/jobs',
    {
      schema: {
        tags,
        querystring: Type.Object(
          {
            ...PagingQuery,
            vault: Type.Optional(Ref),
            state: Type.Optional(Type.Array(Type.String())),
            type: Type.Optional(Type.String({ minLength: 1 })),
            target: Type.Optional(Ref),
            since: Type.Optional(IsoTime),
            until: Type.Optional(IsoTime),
          },
          { additionalProperties: false },
        ),
        response: { 200: pageOf('Job') },
      },
    },
    async (req) => {
      const q = req.query;
      const states = splitList(q.state);
      for (const s of states) {
        if (!JOB_STATES.includes(s as JobState)) {
          const message = `must be one of ${JOB_STATES.join(', ')}`;
          throw new OsrError('VALIDATION_FAILED', `querystring.state: ${message}`, {
            details: [{ path: 'querystring.state', message }],
          });
        }
      }
      const filter: JobListFilter = { ...paging(q) };
      if (q.vault !== undefined) filter.vaultId = (await ctx.store.vaults.get(q.vault)).id;
      if (states.length > 0) filter.state = states as JobState[];
      if (q.type !== undefined) filter.type = q.type;
      if (q.target !== undefined) filter.targetId = q.target;
      if (q.since !== undefined) filter.since = new Date(q.since).toISOString();
      if (q.until !== undefined) filter.until = new Date(q.until).toISOString();
      return ctx.store.jobs.list(filter);
    },
  );

  app.get('/jobs/:id', { schema: { tags, params: JobParams, response: { 200: ref('Job') } } }, async (req) =>
    ctx.store.jobs.get(req.params.id),
  );

  app.post(
    '/jobs/:id/cancel',
    {
      schema: {
        tags,
        summary: 'Cancel a job; an unplanned failover needs force (R-FO-5)',
        params: JobParams,
        body: Type.Object({ force: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: ref('Job') },
      },
    },
    async (req) => ctx.workflows.cancelJob(req.params.id, req.body.force ?? false),
  );

  app.post(
    '/jobs/:id/resume',
    {
      schema: {
        tags,
        summary: 'Resume a job waiting for an operator action, with a comment',
        params: JobParams,
        body: Type.Object(
          { comment: Type.String({ minLength: 1, maxLength: 10_000 }) },
          { additionalProperties: false },
        ),
        response: { 200: ref('Job') },
      },
    },
    async (req) => ctx.engine.resume(req.params.id, req.body.comment),
  );
}
