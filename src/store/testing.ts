/**
 * Throwaway stores for tests of any layer: a SQLite file in a fresh temp folder, or a
 * fresh schema in the PostgreSQL database named by `OSR_TEST_PG`. `cleanup()` closes the
 * store and removes the folder or drops the schema.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { createStore, type CreateStoreOptions } from './index.js';
import type { Store, StoreConfig } from './store.js';

/** A store to test against, the config that opens more stores on the same data, and its cleanup. */
export interface TestStore {
  store: Store;
  config: StoreConfig;
  cleanup(): Promise<void>;
}

/** The PostgreSQL URL for tests (`OSR_TEST_PG`), or undefined when PostgreSQL tests are off. */
export function testPostgresUrl(): string | undefined {
  const url = process.env.OSR_TEST_PG;
  return url === undefined || url === '' ? undefined : url;
}

/** A migrated store on a new SQLite file in a new temp folder. */
export async function openSqliteTestStore(options: CreateStoreOptions = {}): Promise<TestStore> {
  const dir = await mkdtemp(join(tmpdir(), 'osr-store-'));
  const config: StoreConfig = { dialect: 'sqlite', file: join(dir, 'osr.db') };
  try {
    const store = await createStore(config, options);
    return {
      store,
      config,
      cleanup: async () => {
        try {
          await store.close();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** A migrated store in a new schema of the `url` database (default `OSR_TEST_PG`). */
export async function openPostgresTestStore(
  options: CreateStoreOptions = {},
  url: string | undefined = testPostgresUrl(),
): Promise<TestStore> {
  if (url === undefined) throw new Error('OSR_TEST_PG is not set');
  const schema = `osr_test_${randomUUID().replaceAll('-', '')}`;
  const config: StoreConfig = { dialect: 'postgres', url, schema, poolSize: 5 };
  const drop = async (): Promise<void> => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(`drop schema if exists "${schema}" cascade`);
    } finally {
      await client.end();
    }
  };
  try {
    const store = await createStore(config, options);
    return {
      store,
      config,
      cleanup: async () => {
        try {
          await store.close();
        } finally {
          await drop();
        }
      },
    };
  } catch (err) {
    await drop();
    throw err;
  }
}
