/**
 * The control plane's key material, made once on first start and shared by every
 * control-plane instance on the same database (and restored with it, R-INF-8): the
 * certificate authority that issues the agents' stream certificates, and the secret
 * the replication tokens of the policy's `token` authentication derive from.
 */
import type { Kysely } from 'kysely';

/** Creates `certificate_authority` (one row, id `default`). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('certificate_authority')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('certificate_pem', 'text', (c) => c.notNull())
    .addColumn('private_key_pem', 'text', (c) => c.notNull())
    .addColumn('replication_secret', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
}
