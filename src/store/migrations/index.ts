/**
 * Every migration of the store, in order, compiled in (no filesystem scanning of dist).
 * Append-only: add a new date-prefixed file and list it here; never edit one that landed.
 */
import type { Migration, MigrationProvider } from 'kysely';
import * as initial from './2026-11-25-001-initial.js';
import * as jobListIndexes from './2026-11-25-002-job-list-indexes.js';
import * as certificateAuthority from './2026-12-01-003-certificate-authority.js';

/** The migrations by name; names sort in the order they apply. */
export const migrations: Readonly<Record<string, Migration>> = {
  '2026-11-25-001-initial': initial,
  '2026-11-25-002-job-list-indexes': jobListIndexes,
  '2026-12-01-003-certificate-authority': certificateAuthority,
};

/** A `MigrationProvider` over the compiled-in list. */
export const staticMigrationProvider: MigrationProvider = {
  getMigrations: () => Promise.resolve({ ...migrations }),
};
