/**
 * PostgreSQL job claim: `SELECT … FOR UPDATE SKIP LOCKED` then update, in one
 * transaction, so concurrent workers each take a different job without waiting.
 */
import type { Kysely } from 'kysely';
import type { Database, JobsTable } from '../schema.js';
import { selectRunnable, takeJob } from '../repositories/job-lease.js';

/** See `ClaimJob`. */
export async function claimPostgresJob(
  db: Kysely<Database>,
  owner: string,
  leaseMs: number,
  now: string,
  types: readonly string[] | undefined,
): Promise<JobsTable | undefined> {
  const run = async (trx: Kysely<Database>): Promise<JobsTable | undefined> => {
    const row = await selectRunnable(trx, now, types).forUpdate().skipLocked().executeTakeFirst();
    return row === undefined ? undefined : takeJob(trx, row, owner, leaseMs, now);
  };
  return db.isTransaction ? run(db) : db.transaction().execute(run);
}
