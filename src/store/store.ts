/**
 * The store port: repositories for every resource of DESIGN §4. One implementation
 * (`createStore`) runs over SQLite (better-sqlite3) or PostgreSQL (pg) through Kysely;
 * every repository behaves the same on both, which the shared store test suite proves.
 *
 * Conventions: `findX()` returns `undefined` when absent, `getX()` throws
 * `OsrError('NOT_FOUND')`; creates return the stored row; unique names clash with
 * `OsrError('ALREADY_EXISTS')`; list methods take a `ListOptions` and return a `Page`.
 * Times are ISO-8601 strings; the caller passes "now" where the store compares times
 * so a test clock can drive it.
 */
import type {
  Agent,
  AgentCommand,
  AgentCommandState,
  Container,
  Datastore,
  EventSeverity,
  Host,
  Job,
  JobError,
  JobState,
  JobStep,
  JobWaiting,
  Machine,
  Network,
  NetworkMapping,
  OsrEvent,
  Policy,
  PolicyAssociation,
  ProtectedItem,
  RecoveryPlan,
  RecoveryPoint,
  RegistrationKey,
  ReplicationGroup,
  Site,
  Vault,
} from '../domain/model.js';

export type Dialect = 'sqlite' | 'postgres';

/** Paging for list methods; `limit` defaults to 100 and is capped at 1000. */
export interface ListOptions {
  limit?: number;
  offset?: number;
}

export interface Page<T> {
  items: T[];
  total: number;
}

/** A new row: everything but the id and the times the store sets. */
export type New<T, Omit_ extends keyof T = never> = Omit<T, 'id' | Omit_> & { id?: string };

export interface VaultRepository {
  create(v: { name: string; id?: string }): Promise<Vault>;
  find(idOrName: string): Promise<Vault | undefined>;
  get(idOrName: string): Promise<Vault>;
  list(opts?: ListOptions): Promise<Page<Vault>>;
  delete(id: string): Promise<void>;
}

export interface RegistrationKeyRepository {
  create(k: New<RegistrationKey>): Promise<RegistrationKey>;
  findBySecretHash(secretHash: string): Promise<RegistrationKey | undefined>;
  listBySite(siteId: string): Promise<RegistrationKey[]>;
  delete(id: string): Promise<void>;
}

export interface SiteRepository {
  create(s: New<Site, 'createdAt'>): Promise<Site>;
  find(vaultId: string, idOrName: string): Promise<Site | undefined>;
  get(vaultId: string, idOrName: string): Promise<Site>;
  /** By id alone (agents know their site id). */
  getById(id: string): Promise<Site>;
  list(vaultId: string, opts?: ListOptions): Promise<Page<Site>>;
  delete(id: string): Promise<void>;
}

export interface AgentRepository {
  create(a: New<Agent>): Promise<Agent>;
  find(id: string): Promise<Agent | undefined>;
  get(id: string): Promise<Agent>;
  findByCredentialHash(credentialHash: string): Promise<Agent | undefined>;
  /** The newest agent registered for a site, if any. */
  findBySite(siteId: string): Promise<Agent | undefined>;
  list(vaultId: string, opts?: ListOptions): Promise<Page<Agent>>;
  update(id: string, patch: Partial<Omit<Agent, 'id' | 'vaultId' | 'siteId'>>): Promise<Agent>;
  delete(id: string): Promise<void>;
}

export interface ContainerRepository {
  create(c: New<Container>): Promise<Container>;
  find(siteId: string, idOrName: string): Promise<Container | undefined>;
  getById(id: string): Promise<Container>;
  listBySite(siteId: string): Promise<Container[]>;
  list(vaultId: string, opts?: ListOptions): Promise<Page<Container>>;
  update(id: string, patch: Partial<Pick<Container, 'name' | 'synced'>>): Promise<Container>;
  delete(id: string): Promise<void>;
}

/** A site's inventory as an agent reports it. */
export interface InventorySnapshot {
  hosts: Omit<Host, 'id' | 'siteId'>[];
  datastores: Omit<Datastore, 'id' | 'siteId'>[];
  networks: Omit<Network, 'id' | 'siteId'>[];
  containers: { name: string }[];
  machines: (Omit<Machine, 'id' | 'siteId' | 'containerId' | 'updatedAt'> & { container: string | null })[];
}

/**
 * Hosts, datastores and networks of a site. `replace` makes the stored inventory equal
 * the snapshot (upsert by name, delete what is gone) in one transaction; ids of rows
 * that stay keep their ids. Machines are replaced too (via `MachineRepository`);
 * containers named in the snapshot are created when missing, never deleted.
 */
export interface InventoryRepository {
  replace(siteId: string, snapshot: InventorySnapshot, now: string): Promise<void>;
  hosts(siteId: string): Promise<Host[]>;
  datastores(siteId: string): Promise<Datastore[]>;
  networks(siteId: string): Promise<Network[]>;
  findNetwork(siteId: string, idOrName: string): Promise<Network | undefined>;
  getNetworkById(id: string): Promise<Network>;
}

export interface MachineListFilter extends ListOptions {
  siteId?: string;
  containerId?: string;
}

export interface MachineRepository {
  find(siteId: string, idOrName: string): Promise<Machine | undefined>;
  /**
   * By id, by `SITE/NAME`, or by name across the vault's sites (names are unique per
   * site). A bare name that matches machines on several sites is refused with
   * AMBIGUOUS_NAME rather than picking one.
   */
  findInVault(vaultId: string, ref: string): Promise<Machine | undefined>;
  getById(id: string): Promise<Machine>;
  list(vaultId: string, filter?: MachineListFilter): Promise<Page<Machine>>;
  upsert(m: New<Machine>): Promise<Machine>;
  update(id: string, patch: Partial<Omit<Machine, 'id' | 'siteId'>>): Promise<Machine>;
  delete(id: string): Promise<void>;
}

export interface PolicyRepository {
  create(p: New<Policy, 'createdAt' | 'updatedAt'>): Promise<Policy>;
  find(vaultId: string, idOrName: string): Promise<Policy | undefined>;
  get(vaultId: string, idOrName: string): Promise<Policy>;
  list(vaultId: string, opts?: ListOptions): Promise<Page<Policy>>;
  update(
    id: string,
    patch: Partial<Omit<Policy, 'id' | 'vaultId' | 'createdAt' | 'updatedAt'>>,
  ): Promise<Policy>;
  delete(id: string): Promise<void>;
}

export interface PolicyAssociationRepository {
  create(a: New<PolicyAssociation, 'createdAt'>): Promise<PolicyAssociation>;
  find(id: string): Promise<PolicyAssociation | undefined>;
  list(
    vaultId: string,
    filter?: { policyId?: string; sourceContainerId?: string },
  ): Promise<PolicyAssociation[]>;
  delete(id: string): Promise<void>;
}

export interface NetworkMappingRepository {
  create(m: New<NetworkMapping, 'createdAt'>): Promise<NetworkMapping>;
  find(id: string): Promise<NetworkMapping | undefined>;
  /** The mapping whose source is this network, if any (one per source network). */
  findBySource(sourceNetworkId: string): Promise<NetworkMapping | undefined>;
  list(vaultId: string): Promise<NetworkMapping[]>;
  update(id: string, patch: { targetNetworkId: string }): Promise<NetworkMapping>;
  delete(id: string): Promise<void>;
}

export interface ItemListFilter extends ListOptions {
  protectionState?: ProtectedItem['protectionState'][];
  replicationHealth?: ProtectedItem['replicationHealth'];
  replicationGroupId?: string;
}

export interface ProtectedItemRepository {
  create(i: New<ProtectedItem, 'createdAt' | 'updatedAt' | 'version'>): Promise<ProtectedItem>;
  find(vaultId: string, idOrName: string): Promise<ProtectedItem | undefined>;
  get(vaultId: string, idOrName: string): Promise<ProtectedItem>;
  /** With `forUpdate` inside `transaction`, the row stays locked (PostgreSQL) until the transaction ends. */
  getById(id: string, opts?: { forUpdate?: boolean }): Promise<ProtectedItem>;
  /** The item protecting this machine (on either side), if any. */
  findByMachine(machineId: string): Promise<ProtectedItem | undefined>;
  list(vaultId: string, filter?: ItemListFilter): Promise<Page<ProtectedItem>>;
  /**
   * Updates and bumps `version`. With `expectVersion`, refuses with
   * `OsrError('OPERATION_NOT_ALLOWED')` when the stored version differs (compare-and-set).
   */
  update(
    id: string,
    patch: Partial<Omit<ProtectedItem, 'id' | 'vaultId' | 'createdAt' | 'updatedAt' | 'version'>>,
    opts?: { expectVersion?: number },
  ): Promise<ProtectedItem>;
  delete(id: string): Promise<void>;
}

export interface RecoveryPointRepository {
  /** Idempotent by (itemId, sequence, type): a repeated report does not duplicate a point. */
  add(p: New<RecoveryPoint>): Promise<RecoveryPoint>;
  find(id: string): Promise<RecoveryPoint | undefined>;
  /** Newest first. */
  list(itemId: string, opts?: ListOptions & { type?: RecoveryPoint['type'] }): Promise<Page<RecoveryPoint>>;
  /** Deletes points older than `before`; returns how many. */
  pruneOlderThan(itemId: string, before: string): Promise<number>;
  /** Deletes every point of the item except `keepId` (commit, R-FO-8); returns how many. */
  deleteAllExcept(itemId: string, keepId: string | null): Promise<number>;
}

export interface ReplicationGroupRepository {
  create(g: New<ReplicationGroup, 'createdAt'>): Promise<ReplicationGroup>;
  find(vaultId: string, idOrName: string): Promise<ReplicationGroup | undefined>;
  list(vaultId: string): Promise<ReplicationGroup[]>;
  delete(id: string): Promise<void>;
}

export interface RecoveryPlanRepository {
  create(p: New<RecoveryPlan, 'createdAt' | 'updatedAt'>): Promise<RecoveryPlan>;
  find(vaultId: string, idOrName: string): Promise<RecoveryPlan | undefined>;
  get(vaultId: string, idOrName: string): Promise<RecoveryPlan>;
  list(vaultId: string, opts?: ListOptions): Promise<Page<RecoveryPlan>>;
  update(id: string, patch: Partial<Pick<RecoveryPlan, 'name' | 'groups'>>): Promise<RecoveryPlan>;
  delete(id: string): Promise<void>;
}

export interface JobListFilter extends ListOptions {
  vaultId?: string;
  state?: JobState[];
  type?: string;
  targetId?: string;
  /** createdAt >= since */
  since?: string;
  /** createdAt < until */
  until?: string;
}

/** What a caller gives to create a job. Steps are created with it, all NotStarted. */
export interface NewJob {
  id?: string;
  vaultId: string;
  type: string;
  displayName: string;
  targetKind: string;
  targetId: string;
  targetName: string;
  input: unknown;
  stepNames: string[];
  cancellable: boolean;
}

/** A lease on a job: only its owner may change the job's steps and state. */
export interface JobLease {
  owner: string;
  /** ISO time the lease ends unless renewed. */
  expiresAt: string;
}

/**
 * Jobs and steps with leases (DESIGN §4, STYLE "Data and concurrency"). Every method
 * taking a lease owner fails with `LeaseLostError` when another worker holds the job.
 */
export interface JobRepository {
  create(job: NewJob, now: string): Promise<Job>;
  find(id: string): Promise<Job | undefined>;
  get(id: string): Promise<Job>;
  list(filter?: JobListFilter): Promise<Page<Job>>;
  /**
   * Claims one runnable job: NotStarted (oldest first), or InProgress whose lease
   * expired before `now` (a crashed worker's job; `attempts` is incremented). Uses
   * `FOR UPDATE SKIP LOCKED` on PostgreSQL and `BEGIN IMMEDIATE` on SQLite so two
   * workers never claim the same job. Sets state InProgress, startedAt if unset.
   */
  claim(owner: string, leaseMs: number, now: string, types?: string[]): Promise<Job | undefined>;
  /** Extends the lease; throws LeaseLostError if `owner` no longer holds it. */
  renewLease(id: string, owner: string, leaseMs: number, now: string): Promise<void>;
  /** Releases the lease without changing state (the job becomes claimable again). */
  releaseLease(id: string, owner: string): Promise<void>;
  /** Updates one step (state, times, progress, output, error), fenced by the lease. */
  updateStep(
    id: string,
    owner: string,
    index: number,
    patch: Partial<Omit<JobStep, 'index' | 'name'>>,
    now: string,
  ): Promise<void>;
  /** Appends steps (a workflow may add steps as it learns more), fenced by the lease. */
  appendSteps(id: string, owner: string, names: string[], now: string): Promise<void>;
  /** Ends the job (Succeeded, Failed, Cancelled), releasing the lease. */
  finish(
    id: string,
    owner: string,
    state: 'Succeeded' | 'Failed' | 'Cancelled',
    error: JobError | null,
    now: string,
  ): Promise<void>;
  /** Parks the job in WaitingForAction, releasing the lease. */
  park(id: string, owner: string, waiting: Omit<JobWaiting, 'since'>, now: string): Promise<void>;
  /**
   * Resumes a WaitingForAction job with an operator comment: state back to InProgress
   * with no lease, so a worker claims it. Throws OsrError('JOB_NOT_WAITING') otherwise.
   */
  resume(id: string, comment: string, now: string): Promise<Job>;
  /**
   * Marks cancel requested (the worker cancels at the next step boundary); a NotStarted or WaitingForAction job is cancelled at once.
   * Refuses with JOB_NOT_CANCELLABLE when the job has ended, or when it is not cancellable and `opts.force` is not set
   * (with `force` the caller — the workflow layer — has decided a non-cancellable job may be cancelled).
   */
  requestCancel(id: string, now: string, opts?: { force?: boolean }): Promise<Job>;
  addComment(id: string, text: string, now: string): Promise<void>;
  /**
   * Reaper: jobs InProgress whose lease expired before `now` become claimable again
   * (lease cleared). Returns their ids. `claim` also takes expired jobs, so the reaper
   * is what makes stalled jobs visible and counted.
   */
  reapExpired(now: string): Promise<string[]>;
  /**
   * Makes every InProgress job leased by `owner` claimable at once (lease cleared,
   * `attempts` + 1). A server calls it at start with its stable owner id, so jobs its
   * previous, crashed incarnation held resume without waiting for their leases to expire.
   */
  releaseHeldBy(owner: string, now: string): Promise<string[]>;
}

/** Thrown when a worker acts on a job whose lease it no longer holds. */
export class LeaseLostError extends Error {
  constructor(
    readonly jobId: string,
    readonly owner: string,
  ) {
    super(`lease on job ${jobId} is no longer held by ${owner}`);
    this.name = 'LeaseLostError';
  }
}

export interface EventRepository {
  add(e: {
    vaultId: string;
    severity: EventSeverity;
    kind: string;
    targetId: string | null;
    message: string;
    details?: unknown;
    time: string;
  }): Promise<OsrEvent>;
  list(
    vaultId: string,
    opts?: ListOptions & { since?: string; severity?: EventSeverity },
  ): Promise<Page<OsrEvent>>;
}

export interface AgentCommandRepository {
  /** Idempotent by id: enqueuing an existing id returns the existing command. */
  enqueue(
    c: { id?: string; agentId: string; type: string; payload: unknown },
    now: string,
  ): Promise<AgentCommand>;
  find(id: string): Promise<AgentCommand | undefined>;
  /** Pending commands (and Delivered ones not completed, for redelivery after an agent restart), oldest first; marks them Delivered. */
  takeForAgent(agentId: string, now: string, limit?: number): Promise<AgentCommand[]>;
  /** Records the result; a second completion of the same id is ignored (returns the stored command). */
  complete(
    id: string,
    state: Extract<AgentCommandState, 'Succeeded' | 'Failed'>,
    result: unknown,
    error: JobError | null,
    now: string,
  ): Promise<AgentCommand>;
  list(agentId: string, opts?: ListOptions & { state?: AgentCommandState[] }): Promise<Page<AgentCommand>>;
}

/** Key/value settings of the installation (e.g. the default vault id, schema facts). */
export interface SettingsRepository {
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string): Promise<void>;
}

/** The control plane's key material (see `CertificateAuthorityRepository`). */
export interface StoredAuthority {
  certificatePem: string;
  privateKeyPem: string;
  /** base64url; the replication tokens of `token` authentication derive from it. */
  replicationSecret: string;
  createdAt: string;
}

/**
 * The one certificate authority of the installation. `ensure` keeps the first one ever
 * stored: two control planes starting at once on one database both end up with the row
 * that won, whichever of them made it.
 */
export interface CertificateAuthorityRepository {
  find(): Promise<StoredAuthority | undefined>;
  /** Stores `candidate` unless an authority exists; returns the stored one. */
  ensure(candidate: StoredAuthority): Promise<StoredAuthority>;
}

/** The whole store. */
export interface Store {
  readonly dialect: Dialect;
  readonly vaults: VaultRepository;
  readonly keys: RegistrationKeyRepository;
  readonly sites: SiteRepository;
  readonly agents: AgentRepository;
  readonly containers: ContainerRepository;
  readonly inventory: InventoryRepository;
  readonly machines: MachineRepository;
  readonly policies: PolicyRepository;
  readonly associations: PolicyAssociationRepository;
  readonly networkMappings: NetworkMappingRepository;
  readonly items: ProtectedItemRepository;
  readonly points: RecoveryPointRepository;
  readonly groups: ReplicationGroupRepository;
  readonly plans: RecoveryPlanRepository;
  readonly jobs: JobRepository;
  readonly events: EventRepository;
  readonly commands: AgentCommandRepository;
  readonly settings: SettingsRepository;
  readonly authority: CertificateAuthorityRepository;
  /**
   * Runs `fn` in one database transaction with a store bound to it. Never hold it
   * across network or disk I/O. On SQLite it is `BEGIN IMMEDIATE`; on PostgreSQL
   * rows read with `forUpdate` stay locked until it ends.
   */
  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T>;
  /** Applies pending migrations (append-only, date-prefixed). */
  migrate(): Promise<void>;
  /**
   * Refreshes the query planner's statistics (ANALYZE). Optional; worth calling after a bulk
   * load (benchmarks, restores), since PostgreSQL picks poor plans on a freshly filled table.
   */
  analyze?(): Promise<void>;
  close(): Promise<void>;
}

/** How to open a store: a SQLite file (or ':memory:') or a PostgreSQL URL, with an optional schema. */
export type StoreConfig =
  | { dialect: 'sqlite'; file: string }
  | { dialect: 'postgres'; url: string; schema?: string; poolSize?: number };
