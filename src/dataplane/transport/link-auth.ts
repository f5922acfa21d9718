/**
 * How the two ends of the replication link authenticate each other (R-POL-7). Both modes run over TLS 1.3.
 *
 * - `certificate` (the default): the peer's certificate must chain to the certificate authority this end trusts
 *   (the control plane's) and carry the URI the control plane named for the peer (its agent identity). Checked
 *   when the handshake is done, before a byte of the stream is exchanged.
 * - `token` (shared identity): both ends hold one secret. Each proves it with an HMAC over a keying-material
 *   export of this very TLS session (RFC 8446 §7.5), so a proof can neither be replayed nor relayed through a
 *   man in the middle, and the secret itself never crosses the link. Certificates are not consulted.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

/** This end's key and certificate (PEM). */
export interface TlsIdentity {
  readonly key: string;
  readonly cert: string;
}

/** What this end requires of its peer. */
export type PeerAuth =
  /** `identity`: a URI the peer's certificate must carry as a subject alternative name. */
  | { readonly mode: 'certificate'; readonly identity: string }
  | { readonly mode: 'token'; readonly token: string };

/** Codes of the refusals below; a link refused for one of them does not heal by retrying. */
export const AUTH_REFUSAL_CODES: ReadonlySet<string> = new Set([
  'PEER_CERTIFICATE_UNTRUSTED',
  'PEER_IDENTITY_MISMATCH',
  'TOKEN_REJECTED',
]);

/** This end refused its peer. */
export class LinkAuthError extends Error {
  override readonly name = 'LinkAuthError';
  constructor(
    readonly code: 'PEER_CERTIFICATE_UNTRUSTED' | 'PEER_IDENTITY_MISMATCH' | 'TOKEN_REJECTED',
    message: string,
  ) {
    super(message);
  }
}

function describeVerifyError(code: string): string {
  switch (code) {
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
      return 'is self-signed, not issued by the control plane’s CA';
    // A peer that sends its own (untrusted) root along with its certificate.
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'CERT_SIGNATURE_FAILURE':
      return 'is issued by another CA than the control plane’s';
    case 'CERT_HAS_EXPIRED':
      return 'has expired';
    case 'CERT_NOT_YET_VALID':
      return 'is not valid yet';
    default:
      return 'does not verify against the control plane’s CA';
  }
}

/**
 * The certificate-mode verdict on a finished handshake: undefined when the peer's certificate chains to the
 * trusted CA (`hasTrustedCa`: this end was configured with one) and names `identity`, else the refusal.
 * `peer` says which end the peer is, for the message.
 */
export function certificateRefusal(
  socket: TLSSocket,
  hasTrustedCa: boolean,
  identity: string,
  peer: 'sender' | 'receiver',
): LinkAuthError | undefined {
  if (!hasTrustedCa) {
    return new LinkAuthError(
      'PEER_CERTIFICATE_UNTRUSTED',
      `cannot check the ${peer}'s certificate: this agent has no CA certificate from the control plane yet`,
    );
  }
  const cert = socket.getPeerCertificate();
  // An empty object means no certificate was presented.
  if (!cert || typeof cert.fingerprint256 !== 'string') {
    return new LinkAuthError('PEER_CERTIFICATE_UNTRUSTED', `the ${peer} presented no certificate`);
  }
  if (!socket.authorized) {
    // Node gives the OpenSSL verify code here (e.g. DEPTH_ZERO_SELF_SIGNED_CERT), typed as an Error.
    const reason = String(socket.authorizationError);
    const issuer = typeof cert.issuer?.CN === 'string' ? cert.issuer.CN : '?';
    return new LinkAuthError(
      'PEER_CERTIFICATE_UNTRUSTED',
      `the ${peer}'s certificate ${describeVerifyError(reason)} (${reason}; issuer "${issuer}")`,
    );
  }
  const names = (cert.subjectaltname ?? '').split(', ').filter((n) => n.startsWith('URI:'));
  if (!names.includes(`URI:${identity}`)) {
    return new LinkAuthError(
      'PEER_IDENTITY_MISMATCH',
      `the ${peer}'s certificate names ${names.length === 0 ? 'no agent' : names.map((n) => n.slice(4)).join(', ')}, not ${identity} as the control plane said`,
    );
  }
  return undefined;
}

/** This end's token proof for `groupId` on `socket` (hex). */
export function tokenProof(
  socket: TLSSocket,
  token: string,
  role: 'sender' | 'receiver',
  groupId: string,
): string {
  const ekm = socket.exportKeyingMaterial(32, 'EXPORTER-osr-replication-token', Buffer.from(groupId, 'utf8'));
  return createHmac('sha256', token).update(`${role}\n`).update(ekm).digest('hex');
}

/** True when `proof` is the peer's correct token proof (constant time). */
export function tokenProofMatches(
  socket: TLSSocket,
  token: string,
  role: 'sender' | 'receiver',
  groupId: string,
  proof: unknown,
): boolean {
  if (typeof proof !== 'string') return false;
  const want = Buffer.from(tokenProof(socket, token, role, groupId), 'hex');
  const got = Buffer.from(proof, 'hex');
  return got.length === want.length && timingSafeEqual(got, want);
}
