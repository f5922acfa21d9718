/**
 * The control plane's trust for the site-to-site stream (R-POL-7): a certificate authority that issues each
 * agent a certificate naming it (certificate authentication), and a secret from which each protected item's
 * replication token derives (`token` authentication, the "shared identity"). Both are made on first start and
 * kept in the store, so every control-plane instance on one database, and a restored backup of it (R-INF-8),
 * issues and trusts the same ones.
 */
import { createHmac, createPrivateKey, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { OsrError } from '../domain/errors.js';
import type { Policy } from '../domain/model.js';
import { agentIdentityUri, issueCertificate, parseCertificateRequest } from '../domain/x509.js';
import type { Store } from '../store/store.js';

/** How long an agent certificate is valid by default (agents renew in its last third). */
export const DEFAULT_AGENT_CERTIFICATE_LIFETIME_MS = 90 * 24 * 3600_000;
/** How long the certificate authority is valid. */
const CA_LIFETIME_MS = 20 * 365 * 24 * 3600_000;
/** Clock skew between the control plane and agents that a fresh certificate tolerates (at most a tenth of its life). */
const BACKDATE_MS = 5 * 60_000;

/** Who a certificate is for. */
export interface CertificateSubject {
  agentId: string;
  siteName: string;
  /** At registration the agent does not know its id yet: its request may name its site instead. */
  registering: boolean;
}

/** A certificate the authority issued. */
export interface IssuedCertificate {
  certificatePem: string;
  caCertificatePem: string;
  expiresAt: string;
}

/** The loaded trust of the control plane. */
export interface ControlPlaneTrust {
  /** The CA certificate agents verify their peers against. */
  readonly caCertificatePem: string;
  /**
   * Checks an agent's certificate signing request (well-formed, self-signed by an accepted key, naming only the
   * requester) and issues its certificate: CN = agent id, URI SAN `urn:osr:agent:<id>`, TLS client and server.
   * `CERTIFICATE_REQUEST_INVALID` or `CERTIFICATE_IDENTITY_MISMATCH` otherwise.
   */
  issueAgentCertificate(requestPem: string, subject: CertificateSubject, now: Date): IssuedCertificate;
  /** The secret both agents of an item authenticate the stream with in `token` mode. */
  replicationToken(itemId: string): string;
}

/** Options of {@link loadTrust}. */
export interface LoadTrustOptions {
  /** Validity of issued agent certificates (default 90 days). */
  agentCertificateLifetimeMs?: number;
  now?: Date;
}

function newAuthority(now: Date): { certificatePem: string; privateKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const certificatePem = issueCertificate(
    {
      // A random suffix tells two installations' authorities apart in every tool that shows an issuer.
      commonName: `osr control plane CA ${randomBytes(4).toString('hex')}`,
      publicKey,
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(now.getTime() + CA_LIFETIME_MS),
      isCa: true,
    },
    { privateKey },
  );
  return { certificatePem, privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
}

/** The requested names an agent may carry: its id (or, registering, its site name) and nothing else. */
function checkIdentity(requestPem: string, s: CertificateSubject): KeyObject {
  const req = parseCertificateRequest(requestPem);
  if (req.dnsNames.length > 0 || req.ipAddresses.length > 0 || req.otherNames > 0) {
    throw new OsrError(
      'CERTIFICATE_REQUEST_INVALID',
      'an agent certificate names only its agent: the request may not ask for DNS names, IP addresses or other names',
      { details: { dnsNames: req.dnsNames, ipAddresses: req.ipAddresses } },
    );
  }
  const own = agentIdentityUri(s.agentId);
  for (const uri of req.uris) {
    if (s.registering || uri !== own) {
      throw new OsrError(
        'CERTIFICATE_IDENTITY_MISMATCH',
        s.registering
          ? `the request names ${uri}, but an agent has no id before it registers`
          : `the request names ${uri}, not this agent (${own})`,
        { details: { requested: uri, agentId: s.agentId } },
      );
    }
  }
  const allowed = s.registering ? s.siteName : s.agentId;
  if (req.commonName !== undefined && req.commonName !== allowed) {
    throw new OsrError(
      'CERTIFICATE_IDENTITY_MISMATCH',
      `the request's common name '${req.commonName}' is not ${s.registering ? `this site ('${s.siteName}')` : `this agent's id (${s.agentId})`}`,
      { details: { requested: req.commonName, expected: allowed } },
    );
  }
  return req.publicKey;
}

/** Loads the control plane's trust from the store, making it on first use. */
export async function loadTrust(store: Store, options: LoadTrustOptions = {}): Promise<ControlPlaneTrust> {
  const now = options.now ?? new Date();
  const stored =
    (await store.authority.find()) ??
    (await store.authority.ensure({
      ...newAuthority(now),
      replicationSecret: randomBytes(32).toString('base64url'),
      createdAt: now.toISOString(),
    }));
  const caKey = createPrivateKey(stored.privateKeyPem);
  const caNotAfter = Date.parse(new X509Certificate(stored.certificatePem).validTo);
  const lifetime = options.agentCertificateLifetimeMs ?? DEFAULT_AGENT_CERTIFICATE_LIFETIME_MS;
  const secret = Buffer.from(stored.replicationSecret, 'base64url');
  return {
    caCertificatePem: stored.certificatePem,
    issueAgentCertificate(requestPem, subject, at) {
      const publicKey = checkIdentity(requestPem, subject);
      const notAfter = new Date(Math.min(at.getTime() + lifetime, caNotAfter));
      const certificatePem = issueCertificate(
        {
          commonName: subject.agentId,
          uris: [agentIdentityUri(subject.agentId)],
          publicKey,
          // Agents renew in the last third of notBefore..notAfter: the backdate must not eat that up.
          notBefore: new Date(at.getTime() - Math.min(BACKDATE_MS, lifetime / 10)),
          notAfter,
        },
        { certificatePem: stored.certificatePem, privateKey: caKey },
      );
      return { certificatePem, caCertificatePem: stored.certificatePem, expiresAt: notAfter.toISOString() };
    },
    replicationToken(itemId) {
      return createHmac('sha256', secret).update(`replication-token:${itemId}`).digest('base64url');
    },
  };
}

/** How the two agents of an item authenticate their stream, as commands carry it. */
export type StreamAuth = { mode: 'certificate' } | { mode: 'token'; token: string };

/** The stream authentication of `itemId` under `policy` (its token is derived, never stored). */
export async function streamAuthFor(store: Store, policy: Policy, itemId: string): Promise<StreamAuth> {
  if (policy.authentication !== 'token') return { mode: 'certificate' };
  return { mode: 'token', token: (await loadTrust(store)).replicationToken(itemId) };
}
