import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../domain/errors.js';
import { agentIdentityUri, agentIdsIn, createCertificateRequest } from '../domain/x509.js';
import { createStore } from '../store/index.js';
import { openPostgresTestStore, openSqliteTestStore, testPostgresUrl } from '../store/testing.js';
import type { TestStore } from '../store/testing.js';
import { loadTrust } from './trust.js';

const dialects: { name: string; open: () => Promise<TestStore> }[] = [
  { name: 'sqlite', open: () => openSqliteTestStore() },
  ...(testPostgresUrl() === undefined ? [] : [{ name: 'postgres', open: () => openPostgresTestStore() }]),
];

function csr(commonName: string, uris: string[] = []): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return createCertificateRequest(privateKey, { commonName, uris });
}

function code(err: unknown): string | undefined {
  return err instanceof OsrError ? err.code : undefined;
}

for (const d of dialects) {
  void describe(`control-plane trust (${d.name})`, () => {
    void it('is made once and shared: two control planes on one database (or a restored copy) issue and trust one CA', async () => {
      const t = await d.open();
      const second = await createStore(t.config, { migrate: false });
      try {
        // Both start at once on an empty table: whichever insert wins, both end up with the same authority.
        const [a, b] = await Promise.all([loadTrust(t.store), loadTrust(second)]);
        assert.equal(a.caCertificatePem, b.caCertificatePem);
        assert.equal(a.replicationToken('item-1'), b.replicationToken('item-1'));
        const issued = b.issueAgentCertificate(
          csr('agent-b'),
          { agentId: 'agent-b', siteName: 's', registering: false },
          new Date(),
        );
        const ca = new X509Certificate(a.caCertificatePem);
        assert.ok(new X509Certificate(issued.certificatePem).verify(ca.publicKey));
        assert.equal((await loadTrust(t.store)).caCertificatePem, a.caCertificatePem, 'kept across restarts');
      } finally {
        await second.close();
        await t.cleanup();
      }
    });

    void it('issues for the requester only: its id (or its site, registering), nothing else', async () => {
      const t = await d.open();
      try {
        const trust = await loadTrust(t.store, { agentCertificateLifetimeMs: 3600_000 });
        const now = new Date('2030-01-01T00:00:00Z');
        const reg = { agentId: 'new-agent', siteName: 'primary', registering: true };
        const issued = trust.issueAgentCertificate(csr('primary'), reg, now);
        const cert = new X509Certificate(issued.certificatePem);
        assert.deepEqual(agentIdsIn(cert.subjectAltName), ['new-agent']);
        assert.match(cert.subject, /CN=new-agent/);
        assert.equal(issued.expiresAt, '2030-01-01T01:00:00.000Z');
        assert.equal(issued.caCertificatePem, trust.caCertificatePem);

        const refused = (pem: string, who: typeof reg, want: string): void =>
          assert.throws(
            () => trust.issueAgentCertificate(pem, who, now),
            (e) => code(e) === want,
          );
        const renewing = { agentId: 'a1', siteName: 'primary', registering: false };
        refused(csr('recovery'), reg, 'CERTIFICATE_IDENTITY_MISMATCH');
        refused(csr('primary', [agentIdentityUri('a1')]), reg, 'CERTIFICATE_IDENTITY_MISMATCH');
        refused(csr('a2'), renewing, 'CERTIFICATE_IDENTITY_MISMATCH');
        refused(csr('a1', [agentIdentityUri('a2')]), renewing, 'CERTIFICATE_IDENTITY_MISMATCH');
        refused(csr('primary'), renewing, 'CERTIFICATE_IDENTITY_MISMATCH');
        refused(csr('a1', ['https://example.com']), renewing, 'CERTIFICATE_IDENTITY_MISMATCH');
        refused('not a request', renewing, 'CERTIFICATE_REQUEST_INVALID');
        const renewed = trust.issueAgentCertificate(csr('a1', [agentIdentityUri('a1')]), renewing, now);
        assert.deepEqual(agentIdsIn(new X509Certificate(renewed.certificatePem).subjectAltName), ['a1']);
      } finally {
        await t.cleanup();
      }
    });

    void it('derives a replication token per item that nobody can guess from the item id', async () => {
      const t = await d.open();
      try {
        const trust = await loadTrust(t.store);
        const token = trust.replicationToken('item-1');
        assert.match(token, /^[A-Za-z0-9_-]{43}$/);
        assert.equal(trust.replicationToken('item-1'), token);
        assert.notEqual(trust.replicationToken('item-2'), token);
        const other = await openSqliteTestStore();
        try {
          assert.notEqual(
            (await loadTrust(other.store)).replicationToken('item-1'),
            token,
            'another installation',
          );
        } finally {
          await other.cleanup();
        }
      } finally {
        await t.cleanup();
      }
    });
  });
}
