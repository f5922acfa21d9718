/**
 * Classifies pg errors (SQLSTATE) for `OsrError` mapping.
 */
import type { DbErrorKind } from '../repositories/context.js';

/** 'unique' for 23505 unique_violation, 'foreign-key' for 23503 foreign_key_violation. */
export function classifyPostgresError(err: unknown): DbErrorKind | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === '23505') return 'unique';
  if (code === '23503') return 'foreign-key';
  return undefined;
}
