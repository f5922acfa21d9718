/**
 * TypeBox schemas of the REST contract (DESIGN §5). The same objects validate
 * requests (Ajv, unknown fields refused), serialise responses and generate the
 * OpenAPI document: resource schemas carry an `$id`, are registered once with
 * `app.addSchema` (see `RESOURCE_SCHEMAS`) and appear as
 * `#/components/schemas/<Name>` in `/api/v1/openapi.json`.
 */
import { Type, type Static, type TSchema } from '@fastify/type-provider-typebox';
import { NAME_MAX_LENGTH, NAME_PATTERN } from '../domain/names.js';

const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

/** Resource names: 1–64 chars of letters, digits, `.`, `_`, `-`, starting with a letter or digit. */
export const Name = Type.String({ pattern: NAME_PATTERN.source, minLength: 1, maxLength: NAME_MAX_LENGTH });
/** An id, or a name where the route accepts either. */
export const Ref = Type.String({ minLength: 1, maxLength: 200 });
export const IsoTime = Type.String({ format: 'date-time' });

/** `?limit=&offset=` of every list route. */
export const PagingQuery = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  offset: Type.Optional(Type.Integer({ minimum: 0 })),
};

/** The error body of every refusal. */
export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.String(),
      message: Type.String(),
      details: Type.Unknown(),
    }),
  },
  { $id: 'Error' },
);

/** Schema reference to a registered resource schema, for route responses. */
export function ref(id: string): TSchema {
  return { $ref: `${id}#` };
}

/** `{items:[…], total}` of a resource. */
export function pageOf(id: string): TSchema {
  return Type.Object({ items: Type.Array(ref(id)), total: Type.Integer() });
}

export const Vault = Type.Object(
  { id: Type.String(), name: Type.String(), createdAt: Type.String() },
  { $id: 'Vault' },
);

export const SiteKind = Type.Union([Type.Literal('onprem'), Type.Literal('cloud')]);

export const Site = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    name: Type.String(),
    kind: SiteKind,
    createdAt: Type.String(),
  },
  { $id: 'Site' },
);

/** A registration key as listed (never the secret). */
export const RegistrationKey = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    siteId: Type.String(),
    createdAt: Type.String(),
    expiresAt: Type.String(),
    expired: Type.Boolean(),
  },
  { $id: 'RegistrationKey' },
);

/** The key file an agent registers with (R-INF-2); the only place the secret appears. */
export const KeyFile = Type.Object(
  {
    vaultId: Type.String(),
    siteId: Type.String(),
    siteName: Type.String(),
    server: Type.String(),
    key: Type.String(),
  },
  { $id: 'KeyFile' },
);

/** An agent as the operator sees it: no credential, connection derived from heartbeats (R-INF-3). */
export const Agent = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    siteId: Type.String(),
    friendlyName: Type.String(),
    version: Type.String(),
    dataAddress: Nullable(Type.String()),
    certificatePem: Nullable(Type.String()),
    registeredAt: Type.String(),
    lastHeartbeatAt: Nullable(Type.String()),
    connection: Type.Union([Type.Literal('Connected'), Type.Literal('Disconnected')]),
  },
  { $id: 'Agent' },
);

export const Container = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    siteId: Type.String(),
    name: Type.String(),
    synced: Type.Boolean(),
  },
  { $id: 'Container' },
);

const HostFields = {
  name: Type.String({ minLength: 1 }),
  memoryMb: Type.Number({ minimum: 0 }),
  freeMemoryMb: Type.Number({ minimum: 0 }),
  cpus: Type.Integer({ minimum: 0 }),
};
export const Host = Type.Object({ id: Type.String(), siteId: Type.String(), ...HostFields }, { $id: 'Host' });

const DatastoreFields = {
  name: Type.String({ minLength: 1 }),
  hostNames: Type.Array(Type.String()),
  type: Type.String(),
};
export const Datastore = Type.Object(
  { id: Type.String(), siteId: Type.String(), ...DatastoreFields },
  { $id: 'Datastore' },
);

const Subnet = Type.Object(
  { name: Type.String({ minLength: 1 }), cidr: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);
const NetworkFields = { name: Type.String({ minLength: 1 }), subnets: Type.Array(Subnet) };
export const Network = Type.Object(
  { id: Type.String(), siteId: Type.String(), ...NetworkFields },
  { $id: 'Network' },
);

/** A network mapping with the names of both ends, so people need not look ids up. */
export const NetworkMapping = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    sourceNetworkId: Type.String(),
    targetNetworkId: Type.String(),
    sourceSiteId: Type.String(),
    sourceSite: Type.String(),
    sourceNetwork: Type.String(),
    targetSiteId: Type.String(),
    targetSite: Type.String(),
    targetNetwork: Type.String(),
    createdAt: Type.String(),
  },
  { $id: 'NetworkMapping' },
);

const MachineDisk = Type.Object(
  {
    id: Type.String({ minLength: 1 }),
    sizeBytes: Type.Number({ minimum: 0 }),
    datastore: Type.String(),
    path: Type.String(),
    nbdUri: Nullable(Type.String()),
  },
  { additionalProperties: false },
);
const MachineNic = Type.Object(
  {
    network: Nullable(Type.String()),
    subnet: Nullable(Type.String()),
    ip: Nullable(Type.String()),
    isolated: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
const MachineFields = {
  name: Type.String({ minLength: 1 }),
  hostName: Type.String(),
  cpus: Type.Integer({ minimum: 0 }),
  memoryMb: Type.Number({ minimum: 0 }),
  osType: Type.Union([Type.Literal('linux'), Type.Literal('windows')]),
  hypervisor: Type.Union([Type.Literal('process'), Type.Literal('qemu'), Type.Literal('physical')]),
  powerState: Type.Union([Type.Literal('Running'), Type.Literal('Stopped'), Type.Literal('Unknown')]),
  guestTools: Type.Union([
    Type.Literal('Installed'),
    Type.Literal('Disabled'),
    Type.Literal('Removed'),
    Type.Literal('NotInstalled'),
  ]),
  origin: Type.Union([
    Type.Literal('inventory'),
    Type.Literal('failover'),
    Type.Literal('test-failover'),
    Type.Literal('manual'),
  ]),
  disks: Type.Array(MachineDisk),
  nics: Type.Array(MachineNic),
};
export const Machine = Type.Object(
  {
    id: Type.String(),
    siteId: Type.String(),
    containerId: Nullable(Type.String()),
    ...MachineFields,
    updatedAt: Type.String(),
  },
  { $id: 'Machine' },
);

/** The site inventory report an agent sends (`InventorySnapshot` of the store port). */
export const InventorySnapshot = Type.Object(
  {
    hosts: Type.Array(Type.Object(HostFields, { additionalProperties: false })),
    datastores: Type.Array(Type.Object(DatastoreFields, { additionalProperties: false })),
    networks: Type.Array(Type.Object(NetworkFields, { additionalProperties: false })),
    containers: Type.Array(Type.Object({ name: Name }, { additionalProperties: false })),
    machines: Type.Array(
      Type.Object({ ...MachineFields, container: Nullable(Type.String()) }, { additionalProperties: false }),
    ),
  },
  { additionalProperties: false },
);

const InitialReplication = Type.Union([
  Type.Object({ mode: Type.Literal('now') }, { additionalProperties: false }),
  Type.Object({ mode: Type.Literal('scheduled'), startAt: Type.String() }, { additionalProperties: false }),
  Type.Object(
    { mode: Type.Literal('offline'), exportPath: Type.String(), importPath: Type.String() },
    { additionalProperties: false },
  ),
]);
const Bandwidth = Type.Object(
  {
    limitMbps: Nullable(Type.Number()),
    windows: Type.Array(
      Type.Object(
        {
          days: Type.Array(Type.Integer()),
          from: Type.String(),
          to: Type.String(),
          limitMbps: Type.Number(),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
/** Policy settings; the value rules (R-POL-*) are checked by `validatePolicy` → 400 POLICY_INVALID. */
const PolicySettings = {
  copyFrequencySeconds: Type.Integer(),
  retentionHours: Type.Number(),
  appConsistentFrequencyHours: Type.Number(),
  compression: Type.Boolean(),
  deleteReplicaOnDisable: Type.Boolean(),
  initialReplication: InitialReplication,
  authentication: Type.Union([Type.Literal('certificate'), Type.Literal('token')]),
  replicationPort: Type.Integer(),
  bandwidth: Bandwidth,
};
export const Policy = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    name: Type.String(),
    ...PolicySettings,
    createdAt: Type.String(),
    updatedAt: Type.String(),
  },
  { $id: 'Policy' },
);
const Duration = Type.Union([Type.Number(), Type.String()]);
/** Policy settings in requests: durations as numbers or `30s`/`5m`/`24h` strings (see `validatePolicy`). */
const PolicyInputFields = {
  copyFrequencySeconds: Type.Optional(Duration),
  retentionHours: Type.Optional(Duration),
  appConsistentFrequencyHours: Type.Optional(Duration),
  compression: Type.Optional(Type.Boolean()),
  deleteReplicaOnDisable: Type.Optional(Type.Boolean()),
  initialReplication: Type.Optional(InitialReplication),
  authentication: Type.Optional(PolicySettings.authentication),
  replicationPort: Type.Optional(Type.Integer()),
  bandwidth: Type.Optional(
    Type.Object(
      {
        limitMbps: Type.Optional(Nullable(Type.Number())),
        windows: Type.Optional(Bandwidth.properties.windows),
      },
      { additionalProperties: false },
    ),
  ),
};
export const PolicyCreateBody = Type.Object(
  { name: Name, ...PolicyInputFields },
  { additionalProperties: false },
);
export const PolicyPatchBody = Type.Object(
  { name: Type.Optional(Name), ...PolicyInputFields },
  { additionalProperties: false },
);

export const PolicyAssociation = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    policyId: Type.String(),
    sourceContainerId: Type.String(),
    targetContainerId: Type.String(),
    createdAt: Type.String(),
  },
  { $id: 'PolicyAssociation' },
);

const FailoverSettingsFields = {
  targetName: Nullable(Type.String()),
  cpus: Nullable(Type.Integer({ minimum: 1 })),
  memoryMb: Nullable(Type.Integer({ minimum: 1 })),
  network: Nullable(Type.String()),
  subnet: Nullable(Type.String()),
  ip: Nullable(Type.String()),
  disks: Type.Array(
    Type.Object(
      { diskId: Type.String({ minLength: 1 }), datastore: Nullable(Type.String()) },
      { additionalProperties: false },
    ),
  ),
};
export const FailoverSettings = Type.Object(FailoverSettingsFields, { $id: 'FailoverSettings' });
/** R-NET-5: any subset of the failover settings. */
export const FailoverSettingsPatch = Type.Partial(Type.Object(FailoverSettingsFields), {
  additionalProperties: false,
});

const ItemFields = {
  id: Type.String(),
  vaultId: Type.String(),
  name: Type.String(),
  machineId: Type.String(),
  policyId: Type.String(),
  sourceSiteId: Type.String(),
  targetSiteId: Type.String(),
  sourceContainerId: Type.String(),
  targetContainerId: Type.String(),
  primarySiteId: Type.String(),
  protectionState: Type.String(),
  testFailoverState: Type.String(),
  activeLocation: Type.String(),
  reversed: Type.Boolean(),
  replicationHealth: Type.String(),
  healthReason: Nullable(Type.String()),
  rpoSeconds: Nullable(Type.Number()),
  initialReplicationProgress: Type.Number(),
  resyncRequired: Type.Boolean(),
  replicationGroupId: Nullable(Type.String()),
  failoverSettings: ref('FailoverSettings'),
  lastFailover: Type.Unknown(),
  currentJobId: Nullable(Type.String()),
  version: Type.Integer(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
};
export const ProtectedItem = Type.Object(ItemFields, { $id: 'ProtectedItem' });

export const RecoveryPoint = Type.Object(
  {
    id: Type.String(),
    itemId: Type.String(),
    time: Type.String(),
    type: Type.String(),
    sequence: Type.Number(),
    groupPointId: Nullable(Type.String()),
  },
  { $id: 'RecoveryPoint' },
);

/** An item with what an operator needs to act on it (R-REP-6); extra fields the workflows add pass through. */
export const ItemView = Type.Object(
  {
    ...ItemFields,
    allowedOperations: Type.Array(Type.String()),
    latestPoints: Type.Object({
      latest: Nullable(ref('RecoveryPoint')),
      latestAppConsistent: Nullable(ref('RecoveryPoint')),
    }),
    /** Each disk of the machine at the active site, with its NBD address (`nbdUri`). */
    disks: Type.Array(Type.Unknown()),
    pointCount: Type.Optional(Type.Integer()),
    replicationStats: Type.Optional(Type.Unknown()),
    /** The machine at the active site. */
    machine: Type.Optional(
      Nullable(
        Type.Object({
          id: Type.String(),
          name: Type.String(),
          siteId: Type.String(),
          powerState: Type.String(),
        }),
      ),
    ),
    /** While a test failover runs: its job and the test machine's disks with their NBD addresses. */
    testFailover: Type.Optional(
      Nullable(
        Type.Object({
          jobId: Type.String(),
          machine: Nullable(
            Type.Object({
              id: Type.String(),
              name: Type.String(),
              disks: Type.Array(Type.Object({ id: Type.String(), nbdUri: Type.String() })),
            }),
          ),
        }),
      ),
    ),
  },
  { $id: 'ItemView', additionalProperties: true },
);

/** What a reprotect would do (R-RP-1): direction, location, transfer, and what it creates, marked "(new)". */
export const ReprotectPreview = Type.Object(
  {
    direction: Type.Optional(Type.Object({ from: Type.String(), to: Type.String() })),
    location: Type.Optional(Type.String()),
    transfer: Type.Optional(Type.String()),
    host: Type.Optional(Type.String()),
    datastore: Type.Optional(Nullable(Type.String())),
    machine: Type.Optional(Type.String()),
    creates: Type.Array(Type.Object({ kind: Type.String(), name: Type.String(), label: Type.String() })),
  },
  { $id: 'ReprotectPreview' },
);

export const ReplicationGroup = Type.Object(
  { id: Type.String(), vaultId: Type.String(), name: Type.String(), createdAt: Type.String() },
  { $id: 'ReplicationGroup' },
);

export const PlanAction = Type.Union([
  Type.Object(
    {
      kind: Type.Literal('script'),
      name: Type.String({ minLength: 1 }),
      path: Type.String({ minLength: 1 }),
      timeoutSeconds: Type.Integer({ minimum: 1 }),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    { kind: Type.Literal('manual'), name: Type.String({ minLength: 1 }), instructions: Type.String() },
    { additionalProperties: false },
  ),
]);

export const RecoveryPlan = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    name: Type.String(),
    groups: Type.Array(
      Type.Object({
        itemIds: Type.Array(Type.String()),
        before: Type.Array(Type.Unknown()),
        after: Type.Array(Type.Unknown()),
      }),
    ),
    createdAt: Type.String(),
    updatedAt: Type.String(),
  },
  { $id: 'RecoveryPlan' },
);
/** A plan group in requests: items by id or name. */
export const PlanGroupBody = Type.Object(
  {
    items: Type.Array(Ref),
    before: Type.Optional(Type.Array(PlanAction)),
    after: Type.Optional(Type.Array(PlanAction)),
  },
  { additionalProperties: false },
);

const JobErrorFields = {
  code: Type.String(),
  message: Type.String(),
  possibleCauses: Type.String(),
  recommendedAction: Type.String(),
  seedCode: Nullable(Type.Number()),
};
export const JobError = Type.Object(JobErrorFields, { $id: 'JobError' });

export const Job = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    type: Type.String(),
    displayName: Type.String(),
    targetKind: Type.String(),
    targetId: Type.String(),
    targetName: Type.String(),
    state: Type.String(),
    input: Type.Unknown(),
    steps: Type.Array(
      Type.Object({
        index: Type.Integer(),
        name: Type.String(),
        state: Type.String(),
        startedAt: Nullable(Type.String()),
        endedAt: Nullable(Type.String()),
        progress: Nullable(Type.Number()),
        error: Nullable(ref('JobError')),
        /** Why a Skipped step did nothing. */
        skipReason: Nullable(Type.String()),
        output: Type.Unknown(),
      }),
    ),
    error: Nullable(ref('JobError')),
    waiting: Nullable(Type.Object({ name: Type.String(), prompt: Type.String(), since: Type.String() })),
    comments: Type.Array(Type.Object({ at: Type.String(), text: Type.String() })),
    cancellable: Type.Boolean(),
    cancelRequested: Type.Boolean(),
    attempts: Type.Integer(),
    createdAt: Type.String(),
    startedAt: Nullable(Type.String()),
    endedAt: Nullable(Type.String()),
    updatedAt: Type.String(),
  },
  { $id: 'Job' },
);

export const OsrEvent = Type.Object(
  {
    id: Type.String(),
    vaultId: Type.String(),
    time: Type.String(),
    severity: Type.String(),
    kind: Type.String(),
    targetId: Nullable(Type.String()),
    message: Type.String(),
    details: Type.Unknown(),
  },
  { $id: 'Event' },
);

export const AgentCommand = Type.Object(
  { id: Type.String(), type: Type.String(), payload: Type.Unknown() },
  { $id: 'AgentCommand' },
);

/** A job error an agent reports: code and message required, the rest filled from the catalog shape. */
export const ReportedError = Type.Object(
  {
    code: Type.String({ minLength: 1 }),
    message: Type.String(),
    possibleCauses: Type.Optional(Type.String()),
    recommendedAction: Type.Optional(Type.String()),
    seedCode: Type.Optional(Nullable(Type.Integer())),
  },
  { additionalProperties: false },
);

/**
 * One item's replication state as an agent reports it. The source agent knows lag,
 * backlog, throughput and compression; the recovery agent knows progress and points;
 * each sends what it knows, so every field but the item id is optional.
 */
export const ReplicationStatusItem = Type.Object(
  {
    itemId: Type.String({ minLength: 1 }),
    rpoSeconds: Type.Optional(Nullable(Type.Number({ minimum: 0 }))),
    lagSeconds: Type.Optional(Type.Number({ minimum: 0 })),
    lagBytes: Type.Optional(Type.Number({ minimum: 0 })),
    backlogBytes: Type.Optional(Type.Number({ minimum: 0 })),
    throughputBps: Type.Optional(Type.Number({ minimum: 0 })),
    compressionRatio: Type.Optional(Type.Number({ minimum: 0 })),
    health: Type.Optional(
      Type.Union([Type.Literal('Normal'), Type.Literal('Warning'), Type.Literal('Critical')]),
    ),
    healthReason: Type.Optional(Nullable(Type.String())),
    initialReplicationProgress: Type.Optional(Type.Number({ minimum: 0, maximum: 100 })),
    resyncRequired: Type.Optional(Type.Boolean()),
    points: Type.Optional(
      Type.Array(
        Type.Object(
          {
            /** The point id the replica knows it by (the stream marker's id); generated when absent. */
            id: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
            sequence: Type.Integer({ minimum: 0 }),
            time: IsoTime,
            type: Type.Union([Type.Literal('crash-consistent'), Type.Literal('app-consistent')]),
          },
          { additionalProperties: false },
        ),
        { maxItems: 10000 },
      ),
    ),
  },
  { additionalProperties: false },
);
export const ReplicationStatusBody = Type.Object(
  { items: Type.Array(ReplicationStatusItem) },
  { additionalProperties: false },
);
/** A replication status report, as the workflows receive it. */
export type ReplicationStatusReport = Static<typeof ReplicationStatusBody>;

/** Every schema with an `$id`, registered with `app.addSchema` (order: referenced before referencing). */
export const RESOURCE_SCHEMAS: TSchema[] = [
  ErrorBody,
  Vault,
  Site,
  RegistrationKey,
  KeyFile,
  Agent,
  Container,
  Host,
  Datastore,
  Network,
  NetworkMapping,
  Machine,
  Policy,
  PolicyAssociation,
  FailoverSettings,
  ProtectedItem,
  RecoveryPoint,
  ItemView,
  ReprotectPreview,
  ReplicationGroup,
  RecoveryPlan,
  JobError,
  Job,
  OsrEvent,
  AgentCommand,
];
