/**
 * The initial schema (DESIGN §4): every resource table, its unique names, foreign keys
 * and the indexes that job listing and claiming use. One migration for both dialects:
 * only portable types (text, integer, bigint, double precision) and the schema builder.
 */
import type { Kysely } from 'kysely';

/** Creates every table of the first release. */
export async function up(db: Kysely<unknown>): Promise<void> {
  const s = db.schema;

  await s
    .createTable('vaults')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();

  await s
    .createTable('sites')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('sites_vault_name_uq', ['vault_id', 'name'])
    .execute();

  await s
    .createTable('registration_keys')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('secret_hash', 'text', (c) => c.notNull().unique())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .execute();
  await s.createIndex('registration_keys_site_idx').on('registration_keys').column('site_id').execute();

  await s
    .createTable('agents')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('friendly_name', 'text', (c) => c.notNull())
    .addColumn('credential_hash', 'text', (c) => c.notNull().unique())
    .addColumn('version', 'text', (c) => c.notNull())
    .addColumn('data_address', 'text')
    .addColumn('certificate_pem', 'text')
    .addColumn('registered_at', 'text', (c) => c.notNull())
    .addColumn('last_heartbeat_at', 'text')
    .execute();
  await s.createIndex('agents_site_idx').on('agents').columns(['site_id', 'registered_at']).execute();
  await s.createIndex('agents_vault_idx').on('agents').column('vault_id').execute();

  await s
    .createTable('containers')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('synced', 'integer', (c) => c.notNull())
    .addUniqueConstraint('containers_site_name_uq', ['site_id', 'name'])
    .execute();
  await s.createIndex('containers_vault_idx').on('containers').column('vault_id').execute();

  await s
    .createTable('hosts')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('memory_mb', 'integer', (c) => c.notNull())
    .addColumn('free_memory_mb', 'integer', (c) => c.notNull())
    .addColumn('cpus', 'integer', (c) => c.notNull())
    .addUniqueConstraint('hosts_site_name_uq', ['site_id', 'name'])
    .execute();

  await s
    .createTable('datastores')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('host_names', 'text', (c) => c.notNull())
    .addColumn('type', 'text', (c) => c.notNull())
    .addUniqueConstraint('datastores_site_name_uq', ['site_id', 'name'])
    .execute();

  await s
    .createTable('networks')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('subnets', 'text', (c) => c.notNull())
    .addUniqueConstraint('networks_site_name_uq', ['site_id', 'name'])
    .execute();

  await s
    .createTable('machines')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('site_id', 'text', (c) => c.notNull().references('sites.id').onDelete('cascade'))
    .addColumn('container_id', 'text', (c) => c.references('containers.id').onDelete('set null'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('host_name', 'text', (c) => c.notNull())
    .addColumn('cpus', 'integer', (c) => c.notNull())
    .addColumn('memory_mb', 'integer', (c) => c.notNull())
    .addColumn('os_type', 'text', (c) => c.notNull())
    .addColumn('hypervisor', 'text', (c) => c.notNull())
    .addColumn('power_state', 'text', (c) => c.notNull())
    .addColumn('guest_tools', 'text', (c) => c.notNull())
    .addColumn('origin', 'text', (c) => c.notNull())
    .addColumn('disks', 'text', (c) => c.notNull())
    .addColumn('nics', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('machines_site_name_uq', ['site_id', 'name'])
    .execute();
  await s.createIndex('machines_container_idx').on('machines').column('container_id').execute();

  await s
    .createTable('policies')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('copy_frequency_seconds', 'integer', (c) => c.notNull())
    .addColumn('retention_hours', 'integer', (c) => c.notNull())
    .addColumn('app_consistent_frequency_hours', 'integer', (c) => c.notNull())
    .addColumn('compression', 'integer', (c) => c.notNull())
    .addColumn('delete_replica_on_disable', 'integer', (c) => c.notNull())
    .addColumn('initial_replication', 'text', (c) => c.notNull())
    .addColumn('authentication', 'text', (c) => c.notNull())
    .addColumn('replication_port', 'integer', (c) => c.notNull())
    .addColumn('bandwidth', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('policies_vault_name_uq', ['vault_id', 'name'])
    .execute();

  await s
    .createTable('policy_associations')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('policy_id', 'text', (c) => c.notNull().references('policies.id'))
    .addColumn('source_container_id', 'text', (c) => c.notNull().references('containers.id'))
    .addColumn('target_container_id', 'text', (c) => c.notNull().references('containers.id'))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('policy_associations_uq', [
      'policy_id',
      'source_container_id',
      'target_container_id',
    ])
    .execute();
  await s
    .createIndex('policy_associations_source_idx')
    .on('policy_associations')
    .column('source_container_id')
    .execute();
  await s
    .createIndex('policy_associations_target_idx')
    .on('policy_associations')
    .column('target_container_id')
    .execute();

  // Mappings die with their networks: a network gone from inventory cannot be mapped.
  await s
    .createTable('network_mappings')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('source_network_id', 'text', (c) =>
      c.notNull().unique().references('networks.id').onDelete('cascade'),
    )
    .addColumn('target_network_id', 'text', (c) => c.notNull().references('networks.id').onDelete('cascade'))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await s
    .createIndex('network_mappings_target_idx')
    .on('network_mappings')
    .column('target_network_id')
    .execute();

  await s
    .createTable('replication_groups')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('replication_groups_vault_name_uq', ['vault_id', 'name'])
    .execute();

  // machine_id has no foreign key on purpose: an item outlives its machine (a deleted
  // failed-over machine is what makes failback refuse, R-RP-6).
  await s
    .createTable('protected_items')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('machine_id', 'text', (c) => c.notNull().unique())
    .addColumn('failover_machine_id', 'text')
    .addColumn('policy_id', 'text', (c) => c.notNull().references('policies.id'))
    .addColumn('source_site_id', 'text', (c) => c.notNull().references('sites.id'))
    .addColumn('target_site_id', 'text', (c) => c.notNull().references('sites.id'))
    .addColumn('source_container_id', 'text', (c) => c.notNull().references('containers.id'))
    .addColumn('target_container_id', 'text', (c) => c.notNull().references('containers.id'))
    .addColumn('primary_site_id', 'text', (c) => c.notNull().references('sites.id'))
    .addColumn('protection_state', 'text', (c) => c.notNull())
    .addColumn('test_failover_state', 'text', (c) => c.notNull())
    .addColumn('active_location', 'text', (c) => c.notNull())
    .addColumn('reversed', 'integer', (c) => c.notNull())
    .addColumn('replication_health', 'text', (c) => c.notNull())
    .addColumn('health_reason', 'text')
    .addColumn('rpo_seconds', 'integer')
    .addColumn('initial_replication_progress', 'double precision', (c) => c.notNull())
    .addColumn('resync_required', 'integer', (c) => c.notNull())
    .addColumn('replication_group_id', 'text', (c) =>
      c.references('replication_groups.id').onDelete('set null'),
    )
    .addColumn('failover_settings', 'text', (c) => c.notNull())
    .addColumn('last_failover', 'text')
    .addColumn('current_job_id', 'text')
    .addColumn('version', 'integer', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('protected_items_vault_name_uq', ['vault_id', 'name'])
    .execute();
  await s
    .createIndex('protected_items_failover_machine_idx')
    .on('protected_items')
    .column('failover_machine_id')
    .execute();
  await s
    .createIndex('protected_items_group_idx')
    .on('protected_items')
    .column('replication_group_id')
    .execute();

  await s
    .createTable('recovery_points')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('item_id', 'text', (c) => c.notNull().references('protected_items.id').onDelete('cascade'))
    .addColumn('time', 'text', (c) => c.notNull())
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('sequence', 'bigint', (c) => c.notNull())
    .addColumn('group_point_id', 'text')
    .addUniqueConstraint('recovery_points_item_seq_type_uq', ['item_id', 'sequence', 'type'])
    .execute();
  await s
    .createIndex('recovery_points_item_time_idx')
    .on('recovery_points')
    .columns(['item_id', 'time'])
    .execute();

  await s
    .createTable('recovery_plans')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('groups', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('recovery_plans_vault_name_uq', ['vault_id', 'name'])
    .execute();

  // A vault's job and event history goes with the vault.
  await s
    .createTable('jobs')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id').onDelete('cascade'))
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('display_name', 'text', (c) => c.notNull())
    .addColumn('target_kind', 'text', (c) => c.notNull())
    .addColumn('target_id', 'text', (c) => c.notNull())
    .addColumn('target_name', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('input', 'text')
    .addColumn('steps', 'text', (c) => c.notNull())
    .addColumn('error', 'text')
    .addColumn('waiting', 'text')
    .addColumn('comments', 'text', (c) => c.notNull())
    .addColumn('cancellable', 'integer', (c) => c.notNull())
    .addColumn('cancel_requested', 'integer', (c) => c.notNull())
    .addColumn('attempts', 'integer', (c) => c.notNull())
    .addColumn('lease_owner', 'text')
    .addColumn('lease_expires_at', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('started_at', 'text')
    .addColumn('ended_at', 'text')
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  await s.createIndex('jobs_created_idx').on('jobs').columns(['created_at', 'id']).execute();
  await s.createIndex('jobs_state_created_idx').on('jobs').columns(['state', 'created_at']).execute();
  await s.createIndex('jobs_vault_created_idx').on('jobs').columns(['vault_id', 'created_at']).execute();
  await s.createIndex('jobs_type_created_idx').on('jobs').columns(['type', 'created_at']).execute();
  await s.createIndex('jobs_target_created_idx').on('jobs').columns(['target_id', 'created_at']).execute();
  await s.createIndex('jobs_lease_idx').on('jobs').columns(['state', 'lease_expires_at']).execute();

  await s
    .createTable('events')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('vault_id', 'text', (c) => c.notNull().references('vaults.id').onDelete('cascade'))
    .addColumn('time', 'text', (c) => c.notNull())
    .addColumn('severity', 'text', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('target_id', 'text')
    .addColumn('message', 'text', (c) => c.notNull())
    .addColumn('details', 'text')
    .execute();
  await s.createIndex('events_vault_time_idx').on('events').columns(['vault_id', 'time']).execute();

  await s
    .createTable('agent_commands')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('agent_id', 'text', (c) => c.notNull().references('agents.id').onDelete('cascade'))
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('payload', 'text')
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('result', 'text')
    .addColumn('error', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('delivered_at', 'text')
    .addColumn('completed_at', 'text')
    .execute();
  await s
    .createIndex('agent_commands_agent_state_idx')
    .on('agent_commands')
    .columns(['agent_id', 'state', 'created_at'])
    .execute();

  await s
    .createTable('settings')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('value', 'text', (c) => c.notNull())
    .execute();
}
