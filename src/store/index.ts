/**
 * Opens the store (DESIGN §1: SQLite file by default, PostgreSQL for scale): the store
 * port's types plus `createStore`.
 */
import { sql } from 'kysely';
import type { Store, StoreConfig } from './store.js';
import type { DialectAdapter, StoreClock, StoreContext } from './repositories/context.js';
import { KyselyStore } from './kysely-store.js';
import { openSqlite } from './sqlite/dialect.js';
import { claimSqliteJob } from './sqlite/job-claim.js';
import { classifySqliteError } from './sqlite/errors.js';
import { openPostgres } from './postgres/dialect.js';
import { claimPostgresJob } from './postgres/job-claim.js';
import { classifyPostgresError } from './postgres/errors.js';

export * from './store.js';
export type { StoreClock } from './repositories/context.js';

/** Options for `createStore`. */
export interface CreateStoreOptions {
  /** Apply pending migrations before returning; default true. */
  migrate?: boolean;
  /** Clock for the times the store stamps itself (createdAt/updatedAt); default the system clock. */
  clock?: StoreClock;
  /** SQLite: how long to wait for another connection's write lock; default 10 s. */
  busyTimeoutMs?: number;
  /** PostgreSQL: errors of idle pooled connections; default a process warning. */
  onIdleError?: (err: Error) => void;
}

const systemClock: StoreClock = { now: () => new Date() };

const sqliteAdapter: DialectAdapter = {
  name: 'sqlite',
  rowLocks: false,
  claimJob: claimSqliteJob,
  classifyError: classifySqliteError,
};

const postgresAdapter: DialectAdapter = {
  name: 'postgres',
  rowLocks: true,
  claimJob: claimPostgresJob,
  classifyError: classifyPostgresError,
};

/** Opens a store over SQLite or PostgreSQL, migrated to the latest schema unless `migrate: false`. */
export async function createStore(config: StoreConfig, options: CreateStoreOptions = {}): Promise<Store> {
  const clock = options.clock ?? systemClock;
  let store: KyselyStore;
  if (config.dialect === 'sqlite') {
    const { db } = openSqlite(
      config.file,
      options.busyTimeoutMs === undefined ? {} : { busyTimeoutMs: options.busyTimeoutMs },
    );
    const ctx: StoreContext = { db, dialect: sqliteAdapter, clock };
    store = new KyselyStore(ctx);
  } else {
    const { db } = await openPostgres(config.url, {
      ...(config.schema === undefined ? {} : { schema: config.schema }),
      ...(config.poolSize === undefined ? {} : { poolSize: config.poolSize }),
      ...(options.onIdleError === undefined ? {} : { onIdleError: options.onIdleError }),
    });
    try {
      // Kysely's migrator looks for its tables in every schema unless told which one.
      const schema =
        config.schema ??
        (await sql<{ s: string }>`select current_schema() as s`.execute(db)).rows[0]?.s ??
        'public';
      store = new KyselyStore({ db, dialect: postgresAdapter, clock }, { schema });
    } catch (err) {
      await db.destroy();
      throw err;
    }
  }
  if (options.migrate ?? true) {
    try {
      await store.migrate();
    } catch (err) {
      await store.close();
      throw err;
    }
  }
  return store;
}
