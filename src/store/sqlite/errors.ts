/**
 * Classifies better-sqlite3 errors for `OsrError` mapping.
 */
import type { DbErrorKind } from '../repositories/context.js';

/** 'unique' for unique/primary-key violations, 'foreign-key' for foreign-key violations. */
export function classifySqliteError(err: unknown): DbErrorKind | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return 'unique';
  if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return 'foreign-key';
  return undefined;
}
