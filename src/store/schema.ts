/**
 * The Kysely `Database` interface: one typed schema for SQLite and PostgreSQL.
 *
 * Column conventions (the same on both dialects):
 * - ids, foreign keys, names and states are TEXT columns;
 * - times are canonical ISO-8601 UTC TEXT (`Date.prototype.toISOString()`, fixed width), so
 *   text order is time order and `<`/`>=` comparisons in SQL are correct on both dialects;
 * - booleans are INTEGER 0/1;
 * - nested structures (disks, NICs, subnets, settings, job input and steps, plan groups)
 *   are JSON TEXT, parsed by the repositories;
 * - `bigint` columns and `count(*)` may arrive as strings from PostgreSQL, hence `BigNumber`.
 */
import type { ColumnType } from 'kysely';

/** A bigint column: PostgreSQL returns int8 as a string; repositories convert with `Number()`. */
export type BigNumber = ColumnType<number | string, number, number>;

/** JSON stored as TEXT. */
export type JsonText = string;

export interface VaultsTable {
  id: string;
  name: string;
  created_at: string;
}

export interface RegistrationKeysTable {
  id: string;
  vault_id: string;
  site_id: string;
  secret_hash: string;
  created_at: string;
  expires_at: string;
}

export interface SitesTable {
  id: string;
  vault_id: string;
  name: string;
  kind: string;
  created_at: string;
}

export interface AgentsTable {
  id: string;
  vault_id: string;
  site_id: string;
  friendly_name: string;
  credential_hash: string;
  version: string;
  data_address: string | null;
  certificate_pem: string | null;
  registered_at: string;
  last_heartbeat_at: string | null;
}

export interface ContainersTable {
  id: string;
  vault_id: string;
  site_id: string;
  name: string;
  synced: number;
}

export interface HostsTable {
  id: string;
  site_id: string;
  name: string;
  memory_mb: number;
  free_memory_mb: number;
  cpus: number;
}

export interface DatastoresTable {
  id: string;
  site_id: string;
  name: string;
  /** JSON string[] */
  host_names: JsonText;
  type: string;
}

export interface NetworksTable {
  id: string;
  site_id: string;
  name: string;
  /** JSON Subnet[] */
  subnets: JsonText;
}

export interface MachinesTable {
  id: string;
  site_id: string;
  container_id: string | null;
  name: string;
  host_name: string;
  cpus: number;
  memory_mb: number;
  os_type: string;
  hypervisor: string;
  power_state: string;
  guest_tools: string;
  origin: string;
  /** JSON MachineDisk[] */
  disks: JsonText;
  /** JSON MachineNic[] */
  nics: JsonText;
  updated_at: string;
}

export interface PoliciesTable {
  id: string;
  vault_id: string;
  name: string;
  copy_frequency_seconds: number;
  retention_hours: number;
  app_consistent_frequency_hours: number;
  compression: number;
  delete_replica_on_disable: number;
  /** JSON InitialReplication */
  initial_replication: JsonText;
  authentication: string;
  replication_port: number;
  /** JSON BandwidthPolicy */
  bandwidth: JsonText;
  created_at: string;
  updated_at: string;
}

export interface PolicyAssociationsTable {
  id: string;
  vault_id: string;
  policy_id: string;
  source_container_id: string;
  target_container_id: string;
  created_at: string;
}

export interface NetworkMappingsTable {
  id: string;
  vault_id: string;
  source_network_id: string;
  target_network_id: string;
  created_at: string;
}

export interface ReplicationGroupsTable {
  id: string;
  vault_id: string;
  name: string;
  created_at: string;
}

export interface ProtectedItemsTable {
  id: string;
  vault_id: string;
  name: string;
  machine_id: string;
  /** `last_failover.targetMachineId`, kept as a column so `findByMachine` can use an index. */
  failover_machine_id: string | null;
  policy_id: string;
  source_site_id: string;
  target_site_id: string;
  source_container_id: string;
  target_container_id: string;
  primary_site_id: string;
  protection_state: string;
  test_failover_state: string;
  active_location: string;
  reversed: number;
  replication_health: string;
  health_reason: string | null;
  rpo_seconds: number | null;
  initial_replication_progress: number;
  resync_required: number;
  replication_group_id: string | null;
  /** JSON FailoverSettings */
  failover_settings: JsonText;
  /** JSON FailoverRecord | null */
  last_failover: JsonText | null;
  current_job_id: string | null;
  version: number;
  created_at: string;
  updated_at: string;
}

export interface RecoveryPointsTable {
  id: string;
  item_id: string;
  time: string;
  type: string;
  sequence: BigNumber;
  group_point_id: string | null;
}

export interface RecoveryPlansTable {
  id: string;
  vault_id: string;
  name: string;
  /** JSON PlanGroup[] */
  groups: JsonText;
  created_at: string;
  updated_at: string;
}

export interface JobsTable {
  id: string;
  vault_id: string;
  type: string;
  display_name: string;
  target_kind: string;
  target_id: string;
  target_name: string;
  state: string;
  /** JSON */
  input: JsonText | null;
  /** JSON JobStep[] */
  steps: JsonText;
  /** JSON JobError | null */
  error: JsonText | null;
  /** JSON JobWaiting | null */
  waiting: JsonText | null;
  /** JSON { at, text }[] */
  comments: JsonText;
  cancellable: number;
  cancel_requested: number;
  attempts: number;
  lease_owner: string | null;
  lease_expires_at: string | null;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  updated_at: string;
}

export interface EventsTable {
  id: string;
  vault_id: string;
  time: string;
  severity: string;
  kind: string;
  target_id: string | null;
  message: string;
  /** JSON */
  details: JsonText | null;
}

export interface AgentCommandsTable {
  id: string;
  agent_id: string;
  type: string;
  /** JSON */
  payload: JsonText | null;
  state: string;
  /** JSON */
  result: JsonText | null;
  /** JSON JobError | null */
  error: JsonText | null;
  created_at: string;
  delivered_at: string | null;
  completed_at: string | null;
}

export interface SettingsTable {
  key: string;
  value: string;
}

/** The control plane's certificate authority and replication secret (one row, id `default`). */
export interface CertificateAuthorityTable {
  id: string;
  certificate_pem: string;
  private_key_pem: string;
  replication_secret: string;
  created_at: string;
}

/** Every table of the store. */
export interface Database {
  vaults: VaultsTable;
  registration_keys: RegistrationKeysTable;
  sites: SitesTable;
  agents: AgentsTable;
  containers: ContainersTable;
  hosts: HostsTable;
  datastores: DatastoresTable;
  networks: NetworksTable;
  machines: MachinesTable;
  policies: PoliciesTable;
  policy_associations: PolicyAssociationsTable;
  network_mappings: NetworkMappingsTable;
  replication_groups: ReplicationGroupsTable;
  protected_items: ProtectedItemsTable;
  recovery_points: RecoveryPointsTable;
  recovery_plans: RecoveryPlansTable;
  jobs: JobsTable;
  events: EventsTable;
  agent_commands: AgentCommandsTable;
  settings: SettingsTable;
  certificate_authority: CertificateAuthorityTable;
}
