/**
 * A small IPv4 and CIDR helper for the network rules (R-NET-5): parse dotted quads and
 * `a.b.c.d/n` blocks, and decide whether an address may be assigned inside a subnet.
 */

/** An IPv4 block: its network address (as an unsigned 32-bit number) and prefix length. */
export interface Ipv4Cidr {
  network: number;
  prefix: number;
}

const OCTET = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** The address as an unsigned 32-bit number, or undefined when `text` is not a dotted quad (no leading zeros). */
export function parseIpv4(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!OCTET.test(part)) return undefined;
    value = value * 256 + Number(part);
  }
  return value;
}

/** Dotted-quad text of an unsigned 32-bit address. */
export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Parses `a.b.c.d/n` (0 ≤ n ≤ 32). Host bits must be zero (`10.0.0.1/24` is refused),
 * since a subnet declared that way is almost always a typo. Undefined when invalid.
 */
export function parseCidr(text: string): Ipv4Cidr | undefined {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(text.trim());
  if (m === null) return undefined;
  const address = parseIpv4(m[1] ?? '');
  const prefix = Number(m[2]);
  if (address === undefined || prefix > 32) return undefined;
  if ((address & ~maskOf(prefix)) >>> 0 !== 0) return undefined;
  return { network: address, prefix };
}

/** Whether `ip` lies inside `cidr` (both as text); false when either is malformed. */
export function ipInCidr(ip: string, cidr: string): boolean {
  const address = parseIpv4(ip);
  const block = parseCidr(cidr);
  if (address === undefined || block === undefined) return false;
  return (address & maskOf(block.prefix)) >>> 0 === block.network;
}

/**
 * Whether `ip` can be given to a machine in subnet `cidr`: inside the block and, for
 * blocks of /30 and larger, neither the network nor the broadcast address.
 */
export function isAssignableIn(ip: string, cidr: string): boolean {
  if (!ipInCidr(ip, cidr)) return false;
  const block = parseCidr(cidr);
  const address = parseIpv4(ip);
  if (block === undefined || address === undefined) return false;
  if (block.prefix >= 31) return true;
  const broadcast = (block.network | ~maskOf(block.prefix)) >>> 0;
  return address !== block.network && address !== broadcast;
}
