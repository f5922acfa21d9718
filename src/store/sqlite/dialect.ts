/**
 * SQLite through better-sqlite3: one connection per store, WAL, foreign keys on.
 *
 * Kysely's own SQLite driver begins transactions with a plain (deferred) BEGIN and lets
 * better-sqlite3 wait for locks synchronously. We use our own driver instead:
 * - transactions are `BEGIN IMMEDIATE`, so a transaction takes the write lock before it
 *   reads and two writers never both read-then-write (claims, compare-and-set);
 * - the single connection is held by one transaction at a time (a mutex), so concurrent
 *   async callers cannot interleave statements inside someone else's transaction;
 * - a busy database is waited for asynchronously (retry with backoff up to
 *   `busyTimeoutMs`) instead of with SQLite's blocking busy handler: a blocking wait
 *   would freeze the event loop, and with it any other connection of the same process
 *   that holds the lock and needs the loop to finish its transaction.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import {
  CompiledQuery,
  Kysely,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type DatabaseConnection,
  type Driver,
  type QueryResult,
} from 'kysely';
import type { Database } from '../schema.js';

/** Options for opening a SQLite store. */
export interface SqliteOptions {
  /** How long a statement waits for another connection's write lock before failing; default 10 s. */
  busyTimeoutMs?: number;
}

/** An open SQLite database: the Kysely handle over it. */
export interface SqliteHandle {
  db: Kysely<Database>;
}

/** Opens (creating if needed) the SQLite file, or ':memory:'. */
export function openSqlite(file: string, options: SqliteOptions = {}): SqliteHandle {
  if (file !== ':memory:' && file !== '') mkdirSync(dirname(file), { recursive: true });
  const raw = new BetterSqlite3(file);
  try {
    // SQLite's own busy handler blocks the thread; we wait asynchronously instead (see above).
    raw.pragma('busy_timeout = 0');
    raw.pragma('journal_mode = WAL');
    raw.pragma('foreign_keys = ON');
  } catch (err) {
    raw.close();
    throw err;
  }
  const driver = new SqliteDriver(raw, options.busyTimeoutMs ?? 10_000);
  const db = new Kysely<Database>({
    dialect: {
      createDriver: () => driver,
      createQueryCompiler: () => new SqliteQueryCompiler(),
      createAdapter: () => new SqliteAdapter(),
      createIntrospector: (k) => new SqliteIntrospector(k),
    },
  });
  return { db };
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

class SqliteConnection implements DatabaseConnection {
  constructor(
    private readonly raw: BetterSqlite3.Database,
    private readonly busyTimeoutMs: number,
  ) {}

  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    const deadline = Date.now() + this.busyTimeoutMs;
    let delay = 1;
    for (;;) {
      // A statement inside an open transaction is not retried on its own: after
      // BEGIN IMMEDIATE we hold the write lock, and a retry could not restore a rolled-back state.
      const retryable = !this.raw.inTransaction || /^\s*commit\b/i.test(compiled.sql);
      try {
        return this.run<R>(compiled);
      } catch (err) {
        if (!retryable || !isBusy(err) || Date.now() >= deadline) throw err;
      }
      await new Promise<void>((resolve) => setTimeout(resolve, delay + Math.random() * delay));
      delay = Math.min(delay * 2, 50);
    }
  }

  private run<R>(compiled: CompiledQuery): QueryResult<R> {
    const stmt = this.raw.prepare(compiled.sql);
    const params = compiled.parameters as unknown[];
    if (stmt.reader) return { rows: stmt.all(params) as R[] };
    const { changes, lastInsertRowid } = stmt.run(params);
    return { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
  }

  streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('streaming queries are not supported by the store');
  }
}

class Mutex {
  #tail: Promise<void> = Promise.resolve();

  /** Resolves with the unlock function once every earlier holder has unlocked. */
  async lock(): Promise<() => void> {
    let unlock!: () => void;
    const next = new Promise<void>((resolve) => (unlock = resolve));
    const previous = this.#tail;
    this.#tail = previous.then(() => next);
    await previous;
    return unlock;
  }
}

class SqliteDriver implements Driver {
  readonly #mutex = new Mutex();
  readonly #connection: SqliteConnection;
  #unlock: (() => void) | undefined;

  constructor(
    private readonly raw: BetterSqlite3.Database,
    busyTimeoutMs: number,
  ) {
    this.#connection = new SqliteConnection(raw, busyTimeoutMs);
  }

  init(): Promise<void> {
    return Promise.resolve();
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    this.#unlock = await this.#mutex.lock();
    return this.#connection;
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('commit'));
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('rollback'));
  }

  releaseConnection(): Promise<void> {
    const unlock = this.#unlock;
    this.#unlock = undefined;
    unlock?.();
    return Promise.resolve();
  }

  destroy(): Promise<void> {
    this.raw.close();
    return Promise.resolve();
  }
}
