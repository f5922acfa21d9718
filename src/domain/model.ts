/**
 * The control plane's resource model (DESIGN §4). Plain data, no behaviour: the
 * store persists these shapes, the API serialises them, the rules in this folder
 * decide over them. Ids are opaque strings; times are ISO-8601 UTC strings.
 */

/** A tenant-level container of everything else (R-INF-1). */
export interface Vault {
  id: string;
  name: string;
  createdAt: string;
}

/** Site kind; decides the direction rules of R-FO-10 (cancel planned failover only cloud→onprem). */
export type SiteKind = 'onprem' | 'cloud';

/** A place where machines run [fabric]. */
export interface Site {
  id: string;
  vaultId: string;
  name: string;
  kind: SiteKind;
  createdAt: string;
}

/**
 * A registration key for one site (R-INF-2). The secret is shown once at creation
 * (in the key file) and only its hash is kept.
 */
export interface RegistrationKey {
  id: string;
  vaultId: string;
  siteId: string;
  secretHash: string;
  createdAt: string;
  expiresAt: string;
}

/** Agent connection status as the control plane sees it (R-INF-3). */
export type AgentConnection = 'Connected' | 'Disconnected';

/** A registered site agent [provider]. */
export interface Agent {
  id: string;
  vaultId: string;
  siteId: string;
  friendlyName: string;
  credentialHash: string;
  version: string;
  /** host:port where this agent accepts the site-to-site replication stream. */
  dataAddress: string | null;
  /** PEM certificate the agent presents on the site-to-site stream (pinned by peers). */
  certificatePem: string | null;
  registeredAt: string;
  lastHeartbeatAt: string | null;
}

/** A group of machines on a site [protection container / cloud] (R-INF-5, R-INF-6). */
export interface Container {
  id: string;
  vaultId: string;
  siteId: string;
  name: string;
  /** Whether the agent syncs this container's metadata (R-INF-5: all or chosen). */
  synced: boolean;
}

/** A compute host of a site, as reported in inventory. */
export interface Host {
  id: string;
  siteId: string;
  name: string;
  memoryMb: number;
  freeMemoryMb: number;
  cpus: number;
}

/** A datastore and the hosts that can reach it. */
export interface Datastore {
  id: string;
  siteId: string;
  name: string;
  hostNames: string[];
  /** e.g. 'file'; raw-device-mapped disks cannot be recreated (R-RP-12). */
  type: string;
}

export interface Subnet {
  name: string;
  cidr: string;
}

/** A network of a site with its subnets (R-NET-*). */
export interface Network {
  id: string;
  siteId: string;
  name: string;
  subnets: Subnet[];
}

/** Source network → target network (R-NET-1). */
export interface NetworkMapping {
  id: string;
  vaultId: string;
  sourceNetworkId: string;
  targetNetworkId: string;
  createdAt: string;
}

export type PowerState = 'Running' | 'Stopped' | 'Unknown';
export type OsType = 'linux' | 'windows';
export type GuestToolsState = 'Installed' | 'Disabled' | 'Removed' | 'NotInstalled';
/** How a machine came to exist; failback is refused for hand-made machines (R-RP-6). */
export type MachineOrigin = 'inventory' | 'failover' | 'test-failover' | 'manual';
/** Hypervisor type of a machine; failback across types is refused (R-RP-7). */
export type HypervisorType = 'process' | 'qemu' | 'physical';

export interface MachineDisk {
  /** Stable disk id within the machine (e.g. `disk0`). */
  id: string;
  sizeBytes: number;
  datastore: string;
  /** Path of the image relative to the datastore folder. */
  path: string;
  /** NBD address where the disk is served by its site agent, e.g. nbd://127.0.0.1:10809/web-disk0. */
  nbdUri: string | null;
}

export interface MachineNic {
  network: string | null;
  subnet: string | null;
  /** Static IPv4 address, or null for DHCP. */
  ip: string | null;
  /** A test machine's NIC on a network of its own (test failover into an isolated network, R-TF-1). */
  isolated?: boolean;
}

/** A machine of a site [protectable item], as reported in inventory. */
export interface Machine {
  id: string;
  siteId: string;
  containerId: string | null;
  name: string;
  hostName: string;
  cpus: number;
  memoryMb: number;
  osType: OsType;
  hypervisor: HypervisorType;
  powerState: PowerState;
  guestTools: GuestToolsState;
  origin: MachineOrigin;
  disks: MachineDisk[];
  nics: MachineNic[];
  updatedAt: string;
}

/** Copy frequencies allowed by R-POL-1, in seconds. */
export const COPY_FREQUENCIES_SECONDS = [30, 300, 900] as const;
export type CopyFrequencySeconds = (typeof COPY_FREQUENCIES_SECONDS)[number];

/** How the initial copy is made (R-POL-6). */
export type InitialReplication =
  | { mode: 'now' }
  | { mode: 'scheduled'; startAt: string }
  | { mode: 'offline'; exportPath: string; importPath: string };

/** Authentication between primary and recovery (R-POL-7). */
export type ReplicationAuthentication = 'certificate' | 'token';

/** A bandwidth window: from/to are HH:MM local to the source site; days 0=Sunday…6. */
export interface BandwidthWindow {
  days: number[];
  from: string;
  to: string;
  limitMbps: number;
}

/** Bandwidth control for replication (R-POL-9): a default limit and optional windows. */
export interface BandwidthPolicy {
  /** Default limit in Mbit/s; null = unlimited. */
  limitMbps: number | null;
  windows: BandwidthWindow[];
}

/** Replication policy (R-POL-*). */
export interface Policy {
  id: string;
  vaultId: string;
  name: string;
  copyFrequencySeconds: CopyFrequencySeconds;
  retentionHours: number;
  /** 0 = off; else 1–12 and less than retentionHours (R-POL-3). */
  appConsistentFrequencyHours: number;
  compression: boolean;
  deleteReplicaOnDisable: boolean;
  initialReplication: InitialReplication;
  authentication: ReplicationAuthentication;
  replicationPort: number;
  bandwidth: BandwidthPolicy;
  createdAt: string;
  updatedAt: string;
}

/** Policy ↔ container association [protection container mapping] (R-POL-8). */
export interface PolicyAssociation {
  id: string;
  vaultId: string;
  policyId: string;
  sourceContainerId: string;
  targetContainerId: string;
  createdAt: string;
}

/** DESIGN §4 lifecycle of a protected item. */
export type ProtectionState =
  | 'EnablingProtection'
  | 'InitialReplication'
  | 'Protected'
  | 'FailoverInProgress'
  | 'FailedOver'
  | 'CommitInProgress'
  | 'FailoverCommitted'
  | 'ReprotectInProgress'
  | 'CancelFailoverInProgress'
  | 'DisablingProtection'
  | 'NeedsRepair'
  | 'Unprotected';

/** Test failover sub-state of a protected item (R-TF-*). */
export type TestFailoverState = 'None' | 'InProgress' | 'WaitingForCleanup' | 'CleanupInProgress';

/** Where the item's machine runs now. */
export type ActiveLocation = 'primary' | 'recovery';

export type ReplicationHealth = 'Normal' | 'Warning' | 'Critical';

export type FailoverType = 'test' | 'planned' | 'unplanned';

/** The `allowedOperations` vocabulary (ASR names). */
export const OPERATIONS = [
  'TestFailover',
  'TestFailoverCleanup',
  'PlannedFailover',
  'UnplannedFailover',
  'ChangePit',
  'Commit',
  'CancelFailover',
  'ReverseReplicate',
  'DisableProtection',
  'RepairReplication',
] as const;
export type Operation = (typeof OPERATIONS)[number];

/** Per-item settings applied at failover (R-NET-5). Null = derive (mapping, source). */
export interface FailoverSettings {
  targetName: string | null;
  cpus: number | null;
  memoryMb: number | null;
  network: string | null;
  subnet: string | null;
  ip: string | null;
  /** Per-disk overrides, e.g. target datastore. */
  disks: { diskId: string; datastore: string | null }[];
}

/** The last failover of an item, kept for change-point, commit, cancel and failback rules. */
export interface FailoverRecord {
  type: 'planned' | 'unplanned';
  pointId: string | null;
  jobId: string;
  /** Site kinds of the failover direction (R-FO-10 allows cancel only cloud→onprem). */
  fromKind: SiteKind;
  toKind: SiteKind;
  /**
   * The machine at the other side of the current replication direction: the machine a
   * failover brought up at the target, or — after reprotect — the machine at the new
   * target that holds the reverse replica (the original machine, or the one created at
   * an alternate location), which a failback brings up.
   */
  targetMachineId: string | null;
  startedAt: string;
  /** Journal sequence of the point the failed-over machine runs at. */
  sequence?: number;
  /** Hypervisor type of the machine first protected; failback refuses another type (R-RP-7). */
  sourceHypervisor?: HypervisorType;
  /** How the last reprotect placed the reverse replica (R-RP-2). */
  reverseLocation?: 'original' | 'alternate';
}

/** A machine with replication enabled, and its replica [replication protected item]. */
export interface ProtectedItem {
  id: string;
  vaultId: string;
  name: string;
  /** The machine being protected (on the current source site). */
  machineId: string;
  policyId: string;
  /** Current replication source and target. Reprotect swaps them. */
  sourceSiteId: string;
  targetSiteId: string;
  sourceContainerId: string;
  targetContainerId: string;
  /** The site where the item was first protected (failback goes back there). */
  primarySiteId: string;
  protectionState: ProtectionState;
  testFailoverState: TestFailoverState;
  activeLocation: ActiveLocation;
  /** false = primary→recovery; true = after reprotect, recovery→primary. */
  reversed: boolean;
  replicationHealth: ReplicationHealth;
  healthReason: string | null;
  /** Seconds since the newest recovery point, or null before the first one. */
  rpoSeconds: number | null;
  initialReplicationProgress: number;
  resyncRequired: boolean;
  replicationGroupId: string | null;
  failoverSettings: FailoverSettings;
  lastFailover: FailoverRecord | null;
  /** The job that currently holds this item (only one long operation at a time). */
  currentJobId: string | null;
  /** Incremented on every update; used for compare-and-set. */
  version: number;
  createdAt: string;
  updatedAt: string;
}

export type RecoveryPointType = 'crash-consistent' | 'app-consistent';

/** A consistent point a replica can be brought up at (R-REP-3). */
export interface RecoveryPoint {
  id: string;
  itemId: string;
  time: string;
  type: RecoveryPointType;
  /** Journal sequence number the point sits at. */
  sequence: number;
  /** Multi-machine consistent point shared by a replication group, if any. */
  groupPointId: string | null;
}

/** Items that share multi-machine consistent points (R-PLAN-4). */
export interface ReplicationGroup {
  id: string;
  vaultId: string;
  name: string;
  createdAt: string;
}

/** An action before or after a plan group (R-PLAN-2). */
export type PlanAction =
  | { kind: 'script'; name: string; path: string; timeoutSeconds: number }
  | { kind: 'manual'; name: string; instructions: string };

export interface PlanGroup {
  /** Items in one group fail over in parallel; groups run in order. */
  itemIds: string[];
  before: PlanAction[];
  after: PlanAction[];
}

/** Ordered groups of protected items failed over together (R-PLAN-1). */
export interface RecoveryPlan {
  id: string;
  vaultId: string;
  name: string;
  groups: PlanGroup[];
  createdAt: string;
  updatedAt: string;
}

export type JobState =
  'NotStarted' | 'InProgress' | 'WaitingForAction' | 'Succeeded' | 'Failed' | 'Cancelled';
export type StepState = 'NotStarted' | 'InProgress' | 'Succeeded' | 'Failed' | 'Skipped' | 'Cancelled';

/** What an operator needs to act on a failure (R-JOB-2). */
export interface JobError {
  code: string;
  message: string;
  possibleCauses: string;
  recommendedAction: string;
  seedCode: number | null;
}

export interface JobStep {
  index: number;
  name: string;
  state: StepState;
  startedAt: string | null;
  endedAt: string | null;
  /** Step progress 0–100 where the step reports it. */
  progress: number | null;
  error: JobError | null;
  /** Why the step was Skipped (it had nothing to do); null for any other state. */
  skipReason: string | null;
  /** Whatever the step returned; later steps read it. */
  output: unknown;
}

/** A manual action a job is parked on (WaitingForAction). */
export interface JobWaiting {
  name: string;
  prompt: string;
  since: string;
}

/** Every long operation (R-JOB-1). */
export interface Job {
  id: string;
  vaultId: string;
  type: string;
  displayName: string;
  targetKind: string;
  targetId: string;
  targetName: string;
  state: JobState;
  input: unknown;
  steps: JobStep[];
  error: JobError | null;
  waiting: JobWaiting | null;
  comments: { at: string; text: string }[];
  cancellable: boolean;
  cancelRequested: boolean;
  attempts: number;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  updatedAt: string;
}

export type EventSeverity = 'Info' | 'Warning' | 'Critical';

/** Alerts and events for the dashboard (R-MON-1). */
export interface OsrEvent {
  id: string;
  vaultId: string;
  time: string;
  severity: EventSeverity;
  kind: string;
  targetId: string | null;
  message: string;
  details: unknown;
}

export type AgentCommandState = 'Pending' | 'Delivered' | 'Succeeded' | 'Failed';

/** A command for an agent, delivered over its command channel and executed idempotently by id. */
export interface AgentCommand {
  id: string;
  agentId: string;
  type: string;
  payload: unknown;
  state: AgentCommandState;
  result: unknown;
  error: JobError | null;
  createdAt: string;
  deliveredAt: string | null;
  completedAt: string | null;
}
