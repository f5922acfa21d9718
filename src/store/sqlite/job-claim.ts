/**
 * SQLite job claim: select-then-update inside one `BEGIN IMMEDIATE` transaction (the
 * driver's transactions always take the write lock first), so two stores on the same
 * file never claim the same job.
 */
import type { Kysely } from 'kysely';
import type { Database, JobsTable } from '../schema.js';
import { selectRunnable, takeJob } from '../repositories/job-lease.js';

/** See `ClaimJob`. */
export async function claimSqliteJob(
  db: Kysely<Database>,
  owner: string,
  leaseMs: number,
  now: string,
  types: readonly string[] | undefined,
): Promise<JobsTable | undefined> {
  const run = async (trx: Kysely<Database>): Promise<JobsTable | undefined> => {
    const row = await selectRunnable(trx, now, types).executeTakeFirst();
    return row === undefined ? undefined : takeJob(trx, row, owner, leaseMs, now);
  };
  return db.isTransaction ? run(db) : db.transaction().execute(run);
}
