/**
 * The stores the jobs tests run against: SQLite always, PostgreSQL when OSR_TEST_PG is
 * set; each test gets its own temp file or schema, removed by `close`.
 */
import type { Store, StoreConfig } from '../../src/store/store.js';
import { openPostgresTestStore, openSqliteTestStore, testPostgresUrl } from '../../src/store/testing.js';
import type { TestStore } from '../../src/store/testing.js';

/** An opened store for one test; `close` removes what the test created. */
export interface OpenedStore {
  store: Store;
  /** Opens the same data from another process. */
  config: StoreConfig;
  /** A vault created for the test (jobs belong to a vault). */
  vaultId: string;
  close(): Promise<void>;
}

/** A store kind a test suite runs against. */
export interface StoreVariant {
  name: string;
  open(): Promise<OpenedStore>;
}

async function withVault(open: () => Promise<TestStore>): Promise<OpenedStore> {
  const t = await open();
  try {
    const vault = await t.store.vaults.create({ name: 'jobs-test' });
    return { store: t.store, config: t.config, vaultId: vault.id, close: () => t.cleanup() };
  } catch (err) {
    await t.cleanup();
    throw err;
  }
}

/** The variants to run: SQLite, and PostgreSQL when OSR_TEST_PG is set. */
export function storeVariants(): StoreVariant[] {
  const variants: StoreVariant[] = [{ name: 'sqlite', open: () => withVault(() => openSqliteTestStore()) }];
  if (testPostgresUrl() !== undefined) {
    variants.push({ name: 'postgres', open: () => withVault(() => openPostgresTestStore()) });
  }
  return variants;
}
