/**
 * PostgreSQL through a pg Pool. With a schema, the schema is created if missing and every
 * pooled connection starts with `search_path` set to it, so tests (and several
 * installations) can share one database.
 */
import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import { OsrError } from '../../domain/errors.js';
import type { Database } from '../schema.js';

/** Options for opening a PostgreSQL store. */
export interface PostgresOptions {
  /** Schema to use (created if missing); default: the server's search_path. */
  schema?: string;
  /** Pool size; default 10. */
  poolSize?: number;
  /** Errors of idle pooled connections (e.g. the server restarted); default: a process warning. */
  onIdleError?: (err: Error) => void;
}

/** An open PostgreSQL database: the Kysely handle over its pool. */
export interface PostgresHandle {
  db: Kysely<Database>;
}

const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** Opens a pool to `url`, creating `options.schema` first if it is given and missing. */
export async function openPostgres(url: string, options: PostgresOptions = {}): Promise<PostgresHandle> {
  const { schema } = options;
  if (schema !== undefined) {
    if (!SCHEMA_NAME.test(schema)) {
      throw new OsrError(
        'VALIDATION_FAILED',
        `PostgreSQL schema name '${schema}' is not a plain identifier`,
        {
          details: { schema },
        },
      );
    }
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(`create schema if not exists "${schema}"`);
    } finally {
      await client.end();
    }
  }
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? 10,
    ...(schema === undefined ? {} : { options: `-c search_path=${schema}` }),
  });
  const onIdleError = options.onIdleError ?? ((err: Error) => process.emitWarning(err));
  pool.on('error', onIdleError);
  return { db: new Kysely<Database>({ dialect: new PostgresDialect({ pool }) }) };
}
