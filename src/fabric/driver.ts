/**
 * The fabric driver port (DESIGN §3): what a site agent needs from its site — the
 * inventory it reports and the compute it drives. The `local` driver makes a site out
 * of a folder; later drivers (libvirt, vSphere, Hyper-V, Azure) implement the same port.
 * Failures carry the catalog's codes (TARGET_HOST_OUT_OF_MEMORY, MACHINE_NAME_CONFLICT,
 * MACHINE_NOT_RUNNING, DATASTORE_NOT_ACCESSIBLE, NOT_FOUND, VALIDATION_FAILED).
 */
import type { WriteObserver } from '../dataplane/nbd/observed-backend.js';
import type {
  Datastore,
  GuestToolsState,
  Host,
  HypervisorType,
  Machine,
  MachineNic,
  MachineOrigin,
  Network,
  OsType,
} from '../domain/model.js';

/** A machine as a driver reports it (the inventory shape of the agent protocol). */
export type FabricMachine = Omit<Machine, 'id' | 'siteId' | 'containerId' | 'updatedAt'> & {
  container: string | null;
};

/** The whole site as a driver sees it; structurally the store's `InventorySnapshot`. */
export interface FabricInventory {
  hosts: Omit<Host, 'id' | 'siteId'>[];
  datastores: Omit<Datastore, 'id' | 'siteId'>[];
  networks: Omit<Network, 'id' | 'siteId'>[];
  containers: { name: string }[];
  machines: FabricMachine[];
}

/** A disk of a machine to create: an image on a datastore (created sparse when missing). */
export interface MachineCreateDisk {
  id: string;
  datastore: string;
  /** Image path relative to the datastore folder; default `<machine>/<disk id>.img`. */
  path?: string;
  sizeBytes: number;
  /** An existing image to copy (sparse) into place, e.g. a replica's disk at failover. */
  sourceFile?: string;
}

/** What `createMachine` needs (failover creates machines from disks with NICs). */
export interface MachineCreateSpec {
  name: string;
  host: string;
  container?: string | null;
  cpus: number;
  memoryMb: number;
  osType: OsType;
  runtime?: Exclude<HypervisorType, 'physical'>;
  disks: MachineCreateDisk[];
  nics: MachineNic[];
  guestTools?: GuestToolsState;
  origin?: MachineOrigin;
  /** The process runtime's command line (argv); `osr` as first word runs this product's CLI. */
  command?: string[];
  /** Power the machine on once created. Default false. */
  powerOn?: boolean;
}

/** Snapshots a machine has on its host (reprotect needs none, R-RP-9). */
export interface SnapshotState {
  machine: string;
  snapshots: string[];
}

/** Options of `shutdown`. */
export interface ShutdownOptions {
  /** Wait this long after the graceful request before forcing power off. */
  timeoutMs?: number;
}

/** The compute and inventory of one site. */
export interface FabricDriver {
  /** Driver name, e.g. `local`. */
  readonly kind: string;
  /** The site's inventory now (hosts with free memory, datastores, networks, containers, machines). */
  inventory(): Promise<FabricInventory>;
  /** Every machine of the site. */
  listMachines(): Promise<FabricMachine[]>;
  /** The machine, or undefined. */
  findMachine(name: string): Promise<FabricMachine | undefined>;
  /** Powers on; already running is success. TARGET_HOST_OUT_OF_MEMORY, DATASTORE_NOT_ACCESSIBLE, MACHINE_NOT_RUNNING (did not come up). */
  powerOn(name: string): Promise<FabricMachine>;
  /** Graceful shutdown, forced after the timeout; already stopped is success. */
  shutdown(name: string, options?: ShutdownOptions): Promise<FabricMachine>;
  /** Immediate power off; already stopped is success. */
  powerOff(name: string): Promise<FabricMachine>;
  /** Refuses unless the machine is running and responding (MACHINE_NOT_RUNNING). */
  ensureRunning(name: string): Promise<FabricMachine>;
  /** Creates a machine from disks with NICs. MACHINE_NAME_CONFLICT, DATASTORE_NOT_ACCESSIBLE. */
  createMachine(spec: MachineCreateSpec): Promise<FabricMachine>;
  /** Deletes a stopped machine (and its disk images when `deleteDisks`); absent is success. */
  deleteMachine(name: string, options?: { deleteDisks?: boolean }): Promise<{ deleted: boolean }>;
  /**
   * The snapshots the machine has on its host, running or not (the agent's
   * `machine.snapshots`; reprotect refuses while there are any, R-RP-9). NOT_FOUND when
   * there is no such machine.
   */
  snapshotState(name: string): Promise<SnapshotState>;
  /** The machine's guest tools state (R-RP-10). NOT_FOUND when there is no such machine. */
  guestToolsState(name: string): Promise<GuestToolsState>;
  /**
   * Routes every mutation of the disk through `observer` from now on (null: back to none).
   * The replication service hooks its write journal here.
   */
  setDiskObserver(machine: string, diskId: string, observer: WriteObserver | null): void;
  /** Calls `listener` whenever the inventory may have changed; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
  /** Stops machines it runs (gracefully), stops serving disks, releases files. */
  close(): Promise<void>;
}
