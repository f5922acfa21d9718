/**
 * The agent's identity on the site-to-site stream, kept in `DATA/tls/`: its private key (`key.pem`, mode 0600,
 * made here and never sent anywhere), the certificate the control plane's CA issued for it (`cert.pem`) and that
 * CA's certificate (`ca.pem`), which peers' certificates must chain to. Before the first issue (an agent that has
 * not reached the control plane yet) `cert.pem` is a self-signed placeholder, which peers refuse in certificate
 * mode; an agent made before the control plane had a CA has such a certificate too and trades it in at its next
 * start (`renewalReason`).
 */
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { agentIdsIn, createCertificateRequest, issueCertificate } from '../domain/x509.js';

/** What the agent presents and trusts on the stream. */
export interface AgentTlsIdentity {
  keyPem: string;
  certPem: string;
  /** The control plane's CA certificate; null until the first certificate was issued. */
  caPem: string | null;
}

/** What the control plane answers to a certificate request (registration or renewal). */
export interface IssuedIdentity {
  certificatePem: string;
  caCertificatePem: string;
}

async function writeAtomically(file: string, text: string, mode: number): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, text, { mode });
  await chmod(tmp, mode);
  const fh = await open(tmp, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

async function readOptional(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Loads `DATA/tls/`; on first start makes an EC P-256 key and a self-signed placeholder certificate (CN
 * `placeholderName`). An existing key (an older agent's, made with openssl) is kept.
 */
export async function loadTlsIdentity(dataDir: string, placeholderName: string): Promise<AgentTlsIdentity> {
  const dir = join(dataDir, 'tls');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const keyFile = join(dir, 'key.pem');
  let keyPem = await readOptional(keyFile);
  if (keyPem === null) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    await writeAtomically(keyFile, keyPem, 0o600);
  } else {
    await chmod(keyFile, 0o600);
  }
  let certPem = await readOptional(join(dir, 'cert.pem'));
  const key = createPrivateKey(keyPem);
  if (certPem === null || !new X509Certificate(certPem).checkPrivateKey(key)) {
    const now = Date.now();
    certPem = issueCertificate(
      {
        commonName: placeholderName.replace(/[^A-Za-z0-9._-]/g, '-'),
        publicKey: createPublicKey(key),
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 365 * 24 * 3600_000),
      },
      { privateKey: key },
    );
    await writeAtomically(join(dir, 'cert.pem'), certPem, 0o644);
  }
  return { keyPem, certPem, caPem: await readOptional(join(dir, 'ca.pem')) };
}

/**
 * A certificate signing request for the agent's key: at registration (no id yet) it names the site, after it
 * the agent's id.
 */
export function certificateRequest(identity: AgentTlsIdentity, commonName: string): string {
  return createCertificateRequest(createPrivateKey(identity.keyPem), { commonName });
}

/** Keeps an issued certificate and its CA; the CA first, so a crash in between leaves a pair that asks for renewal. */
export async function saveIssuedIdentity(
  dataDir: string,
  identity: AgentTlsIdentity,
  issued: IssuedIdentity,
): Promise<AgentTlsIdentity> {
  const dir = join(dataDir, 'tls');
  await writeAtomically(join(dir, 'ca.pem'), issued.caCertificatePem, 0o644);
  await writeAtomically(join(dir, 'cert.pem'), issued.certificatePem, 0o644);
  return { keyPem: identity.keyPem, certPem: issued.certificatePem, caPem: issued.caCertificatePem };
}

/**
 * Why the agent must ask the control plane for a new certificate now, or null: no CA yet, a certificate the CA
 * did not issue (self-signed, an older agent's), one for another agent, or one in the last third of its life.
 */
export function renewalReason(identity: AgentTlsIdentity, agentId: string, now: Date): string | null {
  if (identity.caPem === null) return 'the agent has no certificate from the control plane yet';
  const cert = new X509Certificate(identity.certPem);
  const ca = new X509Certificate(identity.caPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    return 'the certificate was not issued by the control plane’s CA';
  }
  if (!agentIdsIn(cert.subjectAltName).includes(agentId))
    return `the certificate is not for agent ${agentId}`;
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (now.getTime() >= to - (to - from) / 3)
    return `the certificate expires at ${new Date(to).toISOString()}`;
  return null;
}
