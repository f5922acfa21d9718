/**
 * PostgreSQL through a pg Pool. With a schema, the schema is created if missing and every
 * pooled connection starts with `search_path` set to it, so tests (and several
 * installations) can share one database.
 */
import pg from 'pg';
import {
  Kysely,
  PostgresAdapter,
  PostgresDialect,
  PostgresQueryCompiler,
  sql,
  type DatabaseIntrospector,
  type DatabaseMetadata,
  type SchemaMetadata,
  type TableMetadata,
} from 'kysely';
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
  const dialect = new PostgresDialect({ pool });
  return {
    db: new Kysely<Database>({
      dialect: {
        createDriver: () => dialect.createDriver(),
        createAdapter: () => new PostgresAdapter(),
        createQueryCompiler: () => new PostgresQueryCompiler(),
        createIntrospector: (db) => new CurrentSchemaIntrospector(db),
      },
    }),
  };
}

/**
 * What Kysely's migrator needs to know (which tables exist), for the current schema only.
 * Kysely's own introspector reads every schema of the database and calls functions
 * (`has_schema_privilege` by name) that fail when another session drops a schema
 * meanwhile — as parallel tests, each in its own schema, do all the time. Tables are
 * listed without their columns.
 */
class CurrentSchemaIntrospector implements DatabaseIntrospector {
  constructor(private readonly db: Kysely<unknown>) {}

  async getSchemas(): Promise<SchemaMetadata[]> {
    const r = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace`.execute(
      this.db,
    );
    return r.rows.map((x) => ({ name: x.name }));
  }

  async getTables(): Promise<TableMetadata[]> {
    const r = await sql<{ name: string; schema: string; kind: string }>`
      select c.relname as name, n.nspname as schema, c.relkind as kind
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where n.nspname = current_schema() and c.relkind in ('r', 'v', 'p')
      order by c.relname`.execute(this.db);
    return r.rows.map((x) => ({ name: x.name, schema: x.schema, isView: x.kind === 'v', columns: [] }));
  }

  async getMetadata(): Promise<DatabaseMetadata> {
    return { tables: await this.getTables() };
  }
}
