/**
 * The `Store` over Kysely: the repositories bound to one handle (the database, or an open
 * transaction for the store `transaction()` hands out).
 */
import { Migrator, sql, type Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { Dialect, Store } from './store.js';
import type { Database } from './schema.js';
import { staticMigrationProvider } from './migrations/index.js';
import type { StoreContext } from './repositories/context.js';
import { KyselyVaultRepository } from './repositories/vaults.js';
import { KyselyRegistrationKeyRepository } from './repositories/keys.js';
import { KyselySiteRepository } from './repositories/sites.js';
import { KyselyAgentRepository } from './repositories/agents.js';
import { KyselyContainerRepository } from './repositories/containers.js';
import { KyselyInventoryRepository } from './repositories/inventory.js';
import { KyselyMachineRepository } from './repositories/machines.js';
import { KyselyPolicyRepository } from './repositories/policies.js';
import { KyselyPolicyAssociationRepository } from './repositories/associations.js';
import { KyselyNetworkMappingRepository } from './repositories/network-mappings.js';
import { KyselyProtectedItemRepository } from './repositories/items.js';
import { KyselyRecoveryPointRepository } from './repositories/points.js';
import { KyselyReplicationGroupRepository } from './repositories/groups.js';
import { KyselyRecoveryPlanRepository } from './repositories/plans.js';
import { KyselyJobRepository } from './repositories/jobs.js';
import { KyselyEventRepository } from './repositories/events.js';
import { KyselyAgentCommandRepository } from './repositories/commands.js';
import { KyselySettingsRepository } from './repositories/settings.js';
import { KyselyCertificateAuthorityRepository } from './repositories/authority.js';

/** Where the migration bookkeeping tables live (PostgreSQL: the store's schema). */
export interface MigrationTarget {
  schema?: string;
}

/** A `Store` whose repositories run over `ctx.db`. */
export class KyselyStore implements Store {
  readonly dialect: Dialect;
  readonly vaults: KyselyVaultRepository;
  readonly keys: KyselyRegistrationKeyRepository;
  readonly sites: KyselySiteRepository;
  readonly agents: KyselyAgentRepository;
  readonly containers: KyselyContainerRepository;
  readonly inventory: KyselyInventoryRepository;
  readonly machines: KyselyMachineRepository;
  readonly policies: KyselyPolicyRepository;
  readonly associations: KyselyPolicyAssociationRepository;
  readonly networkMappings: KyselyNetworkMappingRepository;
  readonly items: KyselyProtectedItemRepository;
  readonly points: KyselyRecoveryPointRepository;
  readonly groups: KyselyReplicationGroupRepository;
  readonly plans: KyselyRecoveryPlanRepository;
  readonly jobs: KyselyJobRepository;
  readonly events: KyselyEventRepository;
  readonly commands: KyselyAgentCommandRepository;
  readonly settings: KyselySettingsRepository;
  readonly authority: KyselyCertificateAuthorityRepository;

  constructor(
    private readonly ctx: StoreContext,
    private readonly migrationTarget: MigrationTarget = {},
  ) {
    this.dialect = ctx.dialect.name;
    this.vaults = new KyselyVaultRepository(ctx);
    this.keys = new KyselyRegistrationKeyRepository(ctx);
    this.sites = new KyselySiteRepository(ctx);
    this.agents = new KyselyAgentRepository(ctx);
    this.containers = new KyselyContainerRepository(ctx);
    this.inventory = new KyselyInventoryRepository(ctx);
    this.machines = new KyselyMachineRepository(ctx);
    this.policies = new KyselyPolicyRepository(ctx);
    this.associations = new KyselyPolicyAssociationRepository(ctx);
    this.networkMappings = new KyselyNetworkMappingRepository(ctx);
    this.items = new KyselyProtectedItemRepository(ctx);
    this.points = new KyselyRecoveryPointRepository(ctx);
    this.groups = new KyselyReplicationGroupRepository(ctx);
    this.plans = new KyselyRecoveryPlanRepository(ctx);
    this.jobs = new KyselyJobRepository(ctx);
    this.events = new KyselyEventRepository(ctx);
    this.commands = new KyselyAgentCommandRepository(ctx);
    this.settings = new KyselySettingsRepository(ctx);
    this.authority = new KyselyCertificateAuthorityRepository(ctx);
  }

  /** The Kysely handle, for the store's own tools (benchmarks, diagnostics); not for other layers. */
  get db(): Kysely<Database> {
    return this.ctx.db;
  }

  /**
   * Inside a transaction store, nested calls run in the same transaction. On SQLite the
   * transaction holds the store's only connection: calling the outer (non-transaction)
   * store from inside `fn` would wait forever.
   */
  async transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    if (this.ctx.db.isTransaction) return fn(this);
    return this.ctx.db
      .transaction()
      .execute((trx) => fn(new KyselyStore({ ...this.ctx, db: trx }, this.migrationTarget)));
  }

  async migrate(): Promise<void> {
    this.refuseInTransaction('migrate');
    const migrator = new Migrator({
      db: this.ctx.db,
      provider: staticMigrationProvider,
      ...(this.migrationTarget.schema === undefined
        ? {}
        : { migrationTableSchema: this.migrationTarget.schema }),
    });
    const { error, results } = await migrator.migrateToLatest();
    if (error !== undefined) {
      const failed = results?.find((r) => r.status === 'Error')?.migrationName;
      const reason = error instanceof Error ? error.message : JSON.stringify(error);
      throw new OsrError('INTERNAL', `store migration ${failed ?? ''} failed: ${reason}`, { cause: error });
    }
  }

  async analyze(): Promise<void> {
    this.refuseInTransaction('analyze');
    await sql`analyze`.execute(this.ctx.db);
  }

  async close(): Promise<void> {
    this.refuseInTransaction('close');
    await this.ctx.db.destroy();
  }

  private refuseInTransaction(what: string): void {
    if (this.ctx.db.isTransaction) {
      throw new OsrError('INTERNAL', `store.${what}() cannot be called inside a transaction`);
    }
  }
}
