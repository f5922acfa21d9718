/**
 * The dialect-neutral halves of claiming a job; the dialect folders wrap them in the
 * transaction and lock that each database needs (`sqlite/job-claim.ts`, `postgres/job-claim.ts`).
 */
import { sql, type Kysely } from 'kysely';
import type { Database, JobsTable } from '../schema.js';

/**
 * Runnable jobs, oldest first: NotStarted; InProgress without a lease (resumed or
 * released); InProgress whose lease expired before `now` (a crashed worker's job).
 */
export function selectRunnable(db: Kysely<Database>, now: string, types: readonly string[] | undefined) {
  let q = db
    .selectFrom('jobs')
    .selectAll()
    .where((eb) =>
      eb.or([
        eb('state', '=', 'NotStarted'),
        eb.and([
          eb('state', '=', 'InProgress'),
          eb.or([eb('lease_owner', 'is', null), eb('lease_expires_at', '<', now)]),
        ]),
      ]),
    );
  if (types !== undefined) {
    if (types.length === 0) q = q.where(sql<boolean>`1 = 0`);
    else q = q.where('type', 'in', [...types]);
  }
  return q.orderBy('created_at').orderBy('id').limit(1);
}

/**
 * Gives `row` to `owner` until now+leaseMs. A first start or a takeover from an expired
 * lease counts as an attempt; picking up a resumed or released job does not.
 */
export async function takeJob(
  db: Kysely<Database>,
  row: JobsTable,
  owner: string,
  leaseMs: number,
  now: string,
): Promise<JobsTable | undefined> {
  const expiresAt = new Date(Date.parse(now) + leaseMs).toISOString();
  const countsAsAttempt = row.state === 'NotStarted' || row.lease_owner !== null;
  return db
    .updateTable('jobs')
    .set({
      state: 'InProgress',
      lease_owner: owner,
      lease_expires_at: expiresAt,
      started_at: row.started_at ?? now,
      attempts: row.attempts + (countsAsAttempt ? 1 : 0),
      updated_at: now,
    })
    .where('id', '=', row.id)
    .returningAll()
    .executeTakeFirst();
}
