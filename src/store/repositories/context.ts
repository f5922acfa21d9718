/**
 * What every repository is built over: the Kysely handle (the root database or an open
 * transaction), the dialect's few specific behaviours, and the clock for times the store
 * sets itself. Plus the small helpers that map rows ⇄ model values the same way everywhere.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely, Transaction } from 'kysely';
import { OsrError } from '../../domain/errors.js';
import type { Dialect, ListOptions } from '../store.js';
import type { Database, JobsTable } from '../schema.js';

/** Time source for the times the store stamps itself (createdAt, updatedAt). */
export interface StoreClock {
  now(): Date;
}

/** How a database error is classified for mapping onto `OsrError`. */
export type DbErrorKind = 'unique' | 'foreign-key';

/** Claims one runnable job row (see `JobRepository.claim`) or returns undefined. */
export type ClaimJob = (
  db: Kysely<Database>,
  owner: string,
  leaseMs: number,
  now: string,
  types: readonly string[] | undefined,
) => Promise<JobsTable | undefined>;

/** The behaviours that differ between SQLite and PostgreSQL, implemented in the dialect folders. */
export interface DialectAdapter {
  readonly name: Dialect;
  /** True when `SELECT … FOR UPDATE` locks rows (PostgreSQL); SQLite locks the database per transaction. */
  readonly rowLocks: boolean;
  readonly claimJob: ClaimJob;
  classifyError(err: unknown): DbErrorKind | undefined;
}

/** What a repository is constructed with. */
export interface StoreContext {
  readonly db: Kysely<Database>;
  readonly dialect: DialectAdapter;
  readonly clock: StoreClock;
}

/** Runs `fn` in a transaction, or inside the already-open one when `ctx.db` is a transaction. */
export async function inTransaction<T>(ctx: StoreContext, fn: (tx: StoreContext) => Promise<T>): Promise<T> {
  if (ctx.db.isTransaction) return fn(ctx);
  return ctx.db.transaction().execute((trx: Transaction<Database>) => fn({ ...ctx, db: trx }));
}

/** The caller's id, or a new random UUID. */
export function newId(id: string | undefined): string {
  return id ?? randomUUID();
}

/**
 * Canonical ISO-8601 UTC form of a time (fixed width, millisecond precision), so that
 * stored times compare correctly as text on both dialects.
 */
export function isoTime(t: string, field = 'time'): string {
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) {
    throw new OsrError('VALIDATION_FAILED', `${field} '${t}' is not a valid ISO-8601 time`, {
      details: { field, value: t },
    });
  }
  return d.toISOString();
}

/** `isoTime` for nullable values. */
export function isoTimeOrNull(t: string | null, field = 'time'): string | null {
  return t === null ? null : isoTime(t, field);
}

/** The store clock's now, canonical ISO. */
export function nowIso(ctx: StoreContext): string {
  return ctx.clock.now().toISOString();
}

/** JSON text for a value; `undefined` is stored as SQL NULL like `null`. */
export function toJson(v: unknown): string | null {
  return v === undefined || v === null ? null : JSON.stringify(v);
}

/** JSON text for a value that is never null (arrays, objects). */
export function toJsonRequired(v: unknown): string {
  return JSON.stringify(v ?? null);
}

/** Parses a JSON column; SQL NULL becomes `null`. */
export function fromJson<T>(s: string | null): T | null {
  return s === null ? null : (JSON.parse(s) as T);
}

/** Parses a JSON column that is never null. */
export function fromJsonRequired<T>(s: string): T {
  return JSON.parse(s) as T;
}

export function toInt(b: boolean): number {
  return b ? 1 : 0;
}

export function toBool(n: number | string | boolean): boolean {
  return n === true || Number(n) === 1;
}

/** `limit` (default 100, capped at 1000) and `offset` (default 0) from list options. */
export function paging(opts: ListOptions | undefined): { limit: number; offset: number } {
  const limit = Math.min(Math.max(Math.trunc(opts?.limit ?? 100), 0), 1000);
  const offset = Math.max(Math.trunc(opts?.offset ?? 0), 0);
  return { limit, offset };
}

/** `count(*)` arrives as a string from PostgreSQL (int8). */
export function countOf(row: { n: number | string | bigint } | undefined): number {
  return row === undefined ? 0 : Number(row.n);
}

/** Number of rows a delete/update touched. */
export function affected(r: { numDeletedRows?: bigint; numUpdatedRows?: bigint }): number {
  return Number(r.numDeletedRows ?? r.numUpdatedRows ?? 0n);
}

/** The row whose id equals `idOrName`, else the one whose name does. */
export function pickByIdOrName<R extends { id: string; name: string }>(
  rows: R[],
  idOrName: string,
): R | undefined {
  return rows.find((r) => r.id === idOrName) ?? rows.find((r) => r.name === idOrName);
}

/** What a statement was doing, for turning database errors into product errors. */
export interface Attempt {
  kind: string;
  key: string;
  op: 'write' | 'delete';
}

/**
 * Runs a statement and maps constraint violations: unique → ALREADY_EXISTS; a foreign key
 * on write → NOT_FOUND (something it refers to is missing); on delete → IN_USE.
 */
export async function guard<T>(ctx: StoreContext, what: Attempt, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw mapDbError(ctx, err, what);
  }
}

/** See `guard`. Errors that are not constraint violations are returned unchanged. */
export function mapDbError(ctx: StoreContext, err: unknown, what: Attempt): unknown {
  if (err instanceof OsrError) return err;
  const kind = ctx.dialect.classifyError(err);
  if (kind === 'unique') {
    return new OsrError('ALREADY_EXISTS', `${what.kind} '${what.key}' already exists`, {
      details: { kind: what.kind, key: what.key },
      cause: err,
    });
  }
  if (kind === 'foreign-key') {
    if (what.op === 'delete') {
      return new OsrError('IN_USE', `${what.kind} '${what.key}' is still in use`, {
        details: { kind: what.kind, key: what.key },
        cause: err,
      });
    }
    return new OsrError('NOT_FOUND', `a resource that ${what.kind} '${what.key}' refers to does not exist`, {
      details: { kind: what.kind, key: what.key },
      cause: err,
    });
  }
  return err;
}
