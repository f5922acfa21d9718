/**
 * The stores the jobs tests run against: SQLite always, PostgreSQL when OSR_TEST_PG is set.
 */
import type { Store } from '../../src/store/store.js';
import { memoryStore } from './memory-jobs.js';

/** An opened store for one test; `close` removes what the test created. */
export interface OpenedStore {
  store: Pick<Store, 'jobs'>;
  /** A vault created for the test (jobs belong to a vault). */
  vaultId: string;
  close(): Promise<void>;
}

/** A store kind a test suite runs against. */
export interface StoreVariant {
  name: string;
  open(): Promise<OpenedStore>;
}

/** The variants to run. */
export function storeVariants(): StoreVariant[] {
  return [
    {
      name: 'memory',
      open: () =>
        Promise.resolve({ store: memoryStore(), vaultId: 'vault-1', close: () => Promise.resolve() }),
    },
  ];
}
