import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

/** This agent's TLS identity (PEM). */
export interface TlsIdentity {
  readonly key: string;
  readonly cert: string;
}

/**
 * The SHA-256 fingerprint (`AA:BB:…`, upper case) of a certificate given as PEM, or a fingerprint given directly
 * (any case, with or without colons).
 */
export function fingerprintOf(pemOrFingerprint: string): string {
  if (pemOrFingerprint.includes('-----BEGIN')) return new X509Certificate(pemOrFingerprint).fingerprint256;
  const hex = pemOrFingerprint.replace(/[^0-9a-fA-F]/g, '').toUpperCase();
  if (hex.length !== 64) throw new RangeError('a pinned fingerprint must be a SHA-256 (64 hex digits)');
  return hex.match(/../g)!.join(':');
}

/**
 * Certificate pinning: true when the peer of `socket` presented a certificate whose fingerprint is one of
 * `pins`. Chains and names are not consulted — the pin is the whole trust decision (agents use self-signed
 * certificates the control plane hands to both ends).
 */
export function peerIsPinned(socket: TLSSocket, pins: ReadonlySet<string>): boolean {
  const cert = socket.getPeerCertificate();
  // An empty object means no certificate was presented.
  if (!cert || typeof cert.fingerprint256 !== 'string') return false;
  return pins.has(cert.fingerprint256.toUpperCase());
}
