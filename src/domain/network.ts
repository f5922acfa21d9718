/**
 * Network rules (R-NET-1…R-NET-5, R-INF-6): which target network, subnet and IP a
 * replica's NIC gets after failover, and whether a network mapping may be created.
 */
import { OsrError, notFound } from './errors.js';
import { isAssignableIn } from './ipv4.js';
import type { Container, Network, NetworkMapping, Subnet } from './model.js';

/** Why {@link resolveTargetNetwork} chose what it chose (stable values for UIs and tests). */
export type NetworkResolutionReason =
  /** The NIC is not connected to any network at the source. */
  | 'source-not-connected'
  /** The source network has no mapping: the replica connects to no network (R-NET-2). */
  | 'no-mapping'
  /** Mapped network, subnet of the same name as the source subnet (R-NET-3). */
  | 'mapped-same-subnet'
  /** Mapped network, no subnet of that name: its first subnet (R-NET-3). */
  | 'mapped-first-subnet'
  /** Mapped network that has no subnets. */
  | 'mapped-no-subnet'
  /** The item's failover settings chose the network and/or subnet (R-NET-5). */
  | 'override';

/** A per-item choice from the item's failover settings (R-NET-5); null/absent = derive. */
export interface NetworkOverride {
  /** Target network name (or id). */
  network?: string | null;
  /** Subnet name within the chosen network. */
  subnet?: string | null;
  /** Static IPv4 address inside the chosen subnet; null = DHCP. */
  ip?: string | null;
}

/** Input of {@link resolveTargetNetwork}. */
export interface ResolveTargetNetworkInput {
  /** The source NIC's network (from the source site's inventory), or null when not connected. */
  sourceNetwork: Pick<Network, 'id' | 'name'> | null;
  /** The source NIC's subnet name, or null. */
  sourceSubnet: string | null;
  /** Network mappings of the vault. */
  mappings: readonly NetworkMapping[];
  /** Networks of the target site (inventory). */
  targetNetworks: readonly Network[];
  override?: NetworkOverride | null;
}

/** Where a replica NIC connects after failover. */
export interface TargetNetworkResolution {
  /** Target network name, or null for no network. */
  network: string | null;
  /** Subnet name, or null. */
  subnet: string | null;
  /** Static IPv4 address from the override, or null (DHCP). */
  ip: string | null;
  reason: NetworkResolutionReason;
}

function refuse(field: string, message: string, extra: Record<string, unknown>): OsrError {
  return new OsrError('VALIDATION_FAILED', message, { details: { field, ...extra } });
}

function subnetFor(
  network: Network,
  sourceSubnet: string | null,
): { subnet: Subnet | undefined; same: boolean } {
  const same = sourceSubnet === null ? undefined : network.subnets.find((s) => s.name === sourceSubnet);
  if (same !== undefined) return { subnet: same, same: true };
  return { subnet: network.subnets[0], same: false };
}

/**
 * Decides the target network, subnet and IP of one replica NIC.
 *
 * Without an override: a mapped source network gives the mapped target network, with
 * the subnet of the same name as the source subnet, else the network's first subnet
 * (R-NET-3); an unmapped or unconnected source gives no network (R-NET-2).
 *
 * An override (R-NET-5) wins and is validated: the network must be one of
 * `targetNetworks` (matched by name, then id); the subnet must exist in the chosen
 * network (when only a subnet is given, the mapped network is the chosen one); the IP
 * must be assignable inside the chosen subnet's CIDR. Refusals are
 * `OsrError('VALIDATION_FAILED')` with `details.field` = `network` | `subnet` | `ip`.
 * A mapping whose target network is missing from `targetNetworks` throws NOT_FOUND.
 */
export function resolveTargetNetwork(input: ResolveTargetNetworkInput): TargetNetworkResolution {
  const override = input.override ?? {};
  const hasOverride =
    (override.network ?? null) !== null ||
    (override.subnet ?? null) !== null ||
    (override.ip ?? null) !== null;

  let mapped: Network | undefined;
  const mapping =
    input.sourceNetwork === null
      ? undefined
      : input.mappings.find((m) => m.sourceNetworkId === input.sourceNetwork?.id);
  if (mapping !== undefined) {
    mapped = input.targetNetworks.find((n) => n.id === mapping.targetNetworkId);
    if (mapped === undefined) throw notFound('target network', mapping.targetNetworkId);
  }

  if (!hasOverride) {
    if (input.sourceNetwork === null)
      return { network: null, subnet: null, ip: null, reason: 'source-not-connected' };
    if (mapped === undefined) return { network: null, subnet: null, ip: null, reason: 'no-mapping' };
    const { subnet, same } = subnetFor(mapped, input.sourceSubnet);
    return {
      network: mapped.name,
      subnet: subnet?.name ?? null,
      ip: null,
      reason: subnet === undefined ? 'mapped-no-subnet' : same ? 'mapped-same-subnet' : 'mapped-first-subnet',
    };
  }

  let network: Network | undefined = mapped;
  if ((override.network ?? null) !== null) {
    const wanted = override.network ?? '';
    network =
      input.targetNetworks.find((n) => n.name === wanted) ??
      input.targetNetworks.find((n) => n.id === wanted);
    if (network === undefined) {
      throw refuse('network', `Target network '${wanted}' does not exist at the target site.`, {
        value: wanted,
        available: input.targetNetworks.map((n) => n.name),
      });
    }
  }
  if (network === undefined) {
    throw refuse(
      (override.subnet ?? null) !== null ? 'subnet' : 'ip',
      'A subnet or IP address needs a target network: choose one or map the source network.',
      { value: override.subnet ?? override.ip ?? null },
    );
  }

  let subnet: Subnet | undefined;
  if ((override.subnet ?? null) !== null) {
    const wanted = override.subnet ?? '';
    subnet = network.subnets.find((s) => s.name === wanted);
    if (subnet === undefined) {
      throw refuse('subnet', `Subnet '${wanted}' does not exist in target network '${network.name}'.`, {
        value: wanted,
        network: network.name,
        available: network.subnets.map((s) => s.name),
      });
    }
  } else {
    subnet = subnetFor(network, input.sourceSubnet).subnet;
  }

  const ip = override.ip ?? null;
  if (ip !== null) {
    if (subnet === undefined) {
      throw refuse('ip', `Target network '${network.name}' has no subnet to assign IP address ${ip} in.`, {
        value: ip,
        network: network.name,
      });
    }
    if (!isAssignableIn(ip, subnet.cidr)) {
      throw refuse(
        'ip',
        `IP address '${ip}' cannot be assigned in subnet '${subnet.name}' (${subnet.cidr}) of network '${network.name}'.`,
        { value: ip, subnet: subnet.name, cidr: subnet.cidr },
      );
    }
  }
  return { network: network.name, subnet: subnet?.name ?? null, ip, reason: 'override' };
}

/** Input of {@link validateNetworkMapping}. */
export interface ValidateNetworkMappingInput {
  sourceNetwork: Pick<Network, 'id' | 'name' | 'siteId'>;
  targetNetwork: Pick<Network, 'id' | 'name' | 'siteId'>;
  /** Mappings that exist now in the vault. */
  existingMappings: readonly Pick<NetworkMapping, 'id' | 'sourceNetworkId'>[];
  /** Containers of the vault (only the source site's matter: see R-INF-6). */
  containers: readonly Pick<Container, 'siteId'>[];
  /** When changing an existing mapping (R-NET-4), its id: it does not count as a duplicate. */
  replacingMappingId?: string;
}

/**
 * Checks that a network mapping may be created (R-NET-1, R-INF-6): source and target
 * are different networks; they are on different sites, or on one site that has at
 * least two containers (a single-site deployment replicates between containers); and
 * the source network is not mapped already. Throws VALIDATION_FAILED (details.field
 * `targetNetworkId`) or ALREADY_EXISTS (details.field `sourceNetworkId`).
 */
export function validateNetworkMapping(input: ValidateNetworkMappingInput): void {
  const { sourceNetwork: source, targetNetwork: target } = input;
  if (source.id === target.id) {
    throw refuse('targetNetworkId', `Network '${source.name}' cannot be mapped to itself.`, {
      sourceNetworkId: source.id,
      targetNetworkId: target.id,
    });
  }
  if (source.siteId === target.siteId) {
    const containers = input.containers.filter((c) => c.siteId === source.siteId).length;
    if (containers < 2) {
      throw refuse(
        'targetNetworkId',
        `Networks '${source.name}' and '${target.name}' are on the same site, which has ${containers} container(s); ` +
          'map to a network of another site, or give this site a second container to replicate between.',
        { sourceNetworkId: source.id, targetNetworkId: target.id, siteId: source.siteId, containers },
      );
    }
  }
  const existing = input.existingMappings.find(
    (m) => m.sourceNetworkId === source.id && m.id !== input.replacingMappingId,
  );
  if (existing !== undefined) {
    throw new OsrError(
      'ALREADY_EXISTS',
      `Network '${source.name}' is already mapped (mapping ${existing.id}).`,
      {
        details: { field: 'sourceNetworkId', sourceNetworkId: source.id, mappingId: existing.id },
      },
    );
  }
}
