/**
 * Where and how a machine comes up at the other site at failover, test failover and
 * failback: which host, which datastore for each disk, what its NICs and guest tools
 * become (R-NET-2..5, R-RP-10, R-RP-11, R-TF-1). Pure decisions; the workflows send
 * the result to the site agent as a `machine.create`.
 */
import { OsrError } from './errors.js';
import type { Datastore, GuestToolsState, Host, MachineNic, OsType } from './model.js';
import type { TargetNetworkResolution } from './network.js';

/**
 * The host a machine of `memoryMb` goes to: the host with the most free memory among
 * those that have enough, else the host with the most free memory (powering on there
 * then fails with TARGET_HOST_OUT_OF_MEMORY, 8038, which tells the operator what to
 * do). `preferred` (a host name) wins when it exists. No host → VALIDATION_FAILED.
 */
export function chooseHost(hosts: readonly Host[], memoryMb: number, preferred?: string | null): Host {
  if (preferred != null) {
    const h = hosts.find((x) => x.name === preferred);
    if (h === undefined) {
      throw new OsrError('NOT_FOUND', `host '${preferred}' not found at the target site`, {
        details: { kind: 'host', key: preferred, available: hosts.map((x) => x.name) },
      });
    }
    return h;
  }
  const sorted = [...hosts].sort((a, b) => b.freeMemoryMb - a.freeMemoryMb || (a.name < b.name ? -1 : 1));
  const best = sorted.find((h) => h.freeMemoryMb >= memoryMb) ?? sorted[0];
  if (best === undefined) {
    throw new OsrError('VALIDATION_FAILED', 'the target site has no host to run the machine on', {
      details: { field: 'host' },
    });
  }
  return best;
}

/**
 * The datastore for a disk on `host`: the requested one (it must exist and be
 * reachable from the host: DATASTORE_NOT_ACCESSIBLE, 8061, otherwise), else the first
 * datastore the host reaches.
 */
export function chooseDatastore(
  datastores: readonly Datastore[],
  host: string,
  requested?: string | null,
): Datastore {
  if (requested != null) {
    const d = datastores.find((x) => x.name === requested);
    if (d === undefined) {
      throw new OsrError('NOT_FOUND', `datastore '${requested}' not found at the target site`, {
        details: { kind: 'datastore', key: requested, available: datastores.map((x) => x.name) },
      });
    }
    if (!d.hostNames.includes(host)) {
      throw new OsrError(
        'DATASTORE_NOT_ACCESSIBLE',
        `datastore '${d.name}' is not accessible from host '${host}'`,
        { details: { datastore: d.name, host, reachableFrom: d.hostNames } },
      );
    }
    return d;
  }
  const d = datastores.find((x) => x.hostNames.includes(host));
  if (d === undefined) {
    throw new OsrError('DATASTORE_NOT_ACCESSIBLE', `no datastore is accessible from host '${host}'`, {
      details: { host },
    });
  }
  return d;
}

/**
 * Guest tools of the machine after it moves: disabled (Windows) or removed (Linux)
 * when it goes to the other side, installed again when it comes back (R-RP-10).
 */
export function guestToolsAfter(osType: OsType, failback: boolean): GuestToolsState {
  if (failback) return 'Installed';
  return osType === 'windows' ? 'Disabled' : 'Removed';
}

/**
 * The static IP a NIC keeps after failover or failback (R-RP-11): an IP chosen in the
 * item's settings wins; otherwise a Windows machine keeps its static IP, while a Linux
 * machine gets DHCP (null) and keeps DHCP after failback.
 */
export function ipAfter(osType: OsType, sourceIp: string | null, chosenIp: string | null): string | null {
  if (chosenIp !== null) return chosenIp;
  return osType === 'windows' ? sourceIp : null;
}

/** How a test failover connects the test machine (R-TF-1): no network, an isolated one, or a named target network. */
export type TestNetworkChoice = { kind: 'none' } | { kind: 'isolated' } | { kind: 'network'; name: string };

/** Reads `--network NAME|isolated|none`; absent means isolated (a drill never touches production). */
export function parseTestNetwork(text: string | undefined): TestNetworkChoice {
  if (text === undefined) return { kind: 'isolated' };
  const v = text.trim();
  if (v === '') {
    throw new OsrError('VALIDATION_FAILED', "network must be a network name, 'isolated' or 'none'", {
      details: { field: 'network', value: text },
    });
  }
  if (v.toLowerCase() === 'none') return { kind: 'none' };
  if (v.toLowerCase() === 'isolated') return { kind: 'isolated' };
  return { kind: 'network', name: v };
}

/** A NIC as `machine.create` takes it: `isolated` asks the site for a network of the machine's own. */
export interface PlacedNic extends MachineNic {
  isolated?: boolean;
}

/** The NIC of a test machine for a choice; a named network comes resolved (subnet) from the caller. */
export function testNic(choice: TestNetworkChoice, resolved: TargetNetworkResolution | null): PlacedNic {
  switch (choice.kind) {
    case 'none':
      return { network: null, subnet: null, ip: null };
    case 'isolated':
      return { network: null, subnet: null, ip: null, isolated: true };
    case 'network':
      // A drill never takes the production IP: the test machine uses DHCP.
      return { network: resolved?.network ?? choice.name, subnet: resolved?.subnet ?? null, ip: null };
  }
}
