/**
 * Job listing orders by (created_at, id) newest first; with `id` in the filtered indexes
 * a page is read straight off the index instead of sorting every matching job.
 */
import type { Kysely } from 'kysely';

const FILTERS = ['state', 'vault_id', 'type', 'target_id'] as const;

function oldName(column: (typeof FILTERS)[number]): string {
  return `jobs_${column === 'vault_id' ? 'vault' : column === 'target_id' ? 'target' : column}_created_idx`;
}

/** Replaces the (filter, created_at) job indexes with (filter, created_at, id). */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const column of FILTERS) {
    await db.schema.dropIndex(oldName(column)).execute();
    await db.schema
      .createIndex(`jobs_${column}_created_id_idx`)
      .on('jobs')
      .columns([column, 'created_at', 'id'])
      .execute();
  }
}
