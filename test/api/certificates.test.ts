/**
 * The control plane's certificate authority through the agent protocol: registration signs the agent's
 * certificate request (checked by openssl, a client we did not write), a request naming another identity is
 * refused and registers nothing, and an agent trades a request for a new certificate with its credential.
 */
import { spawnSync } from 'node:child_process';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { agentIdentityUri, agentIdsIn, createCertificateRequest } from '../../src/domain/x509.js';
import { at, atStr, harnessVariants, withApi } from './harness.js';
import type { ApiHarness } from './harness.js';

const V = '/api/v1/vaults/default';
let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'osr-api-certs-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function request(commonName: string, uris: string[] = []): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return createCertificateRequest(privateKey, { commonName, uris });
}

/** `openssl verify` of `certPem` against `caPem` at the harness clock's time. */
function opensslVerify(h: ApiHarness, caPem: string, certPem: string): { ok: boolean; out: string } {
  const ca = join(dir, `ca-${Math.random()}.pem`);
  const cert = join(dir, `cert-${Math.random()}.pem`);
  writeFileSync(ca, caPem);
  writeFileSync(cert, certPem);
  const at = String(Math.floor(h.clock.now().getTime() / 1000));
  const r = spawnSync('openssl', ['verify', '-attime', at, '-purpose', 'sslclient', '-CAfile', ca, cert], {
    encoding: 'utf8',
  });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

async function keyFor(h: ApiHarness, site: string): Promise<string> {
  if ((await h.call('GET', `${V}/sites/${site}`)).status === 404) {
    await h.call('POST', `${V}/sites`, { body: { name: site, kind: 'onprem' } });
  }
  const k = await h.call('POST', `${V}/sites/${site}/keys`, { body: {} });
  return atStr(k, 'keyFile.key');
}

async function register(h: ApiHarness, site: string, certificateRequestPem?: string) {
  return h.call('POST', '/api/v1/agent/register', {
    token: null,
    body: {
      key: await keyFor(h, site),
      friendlyName: `${site}-agent`,
      version: '0.1.0',
      ...(certificateRequestPem === undefined ? {} : { certificateRequestPem }),
    },
  });
}

for (const variant of harnessVariants()) {
  const api = (fn: (h: ApiHarness) => Promise<void>) => () => withApi(() => variant.open(), fn);

  void describe(`agent certificates (${variant.name})`, () => {
    void it(
      'registration signs the agent’s request: a certificate for its new id that openssl verifies against the CA',
      api(async (h) => {
        const r = await register(h, 'primary', request('primary'));
        assert.equal(r.status, 201, JSON.stringify(r.body));
        const agentId = atStr(r, 'agentId');
        const certPem = atStr(r, 'certificate.certificatePem');
        const caPem = atStr(r, 'certificate.caCertificatePem');
        const cert = new X509Certificate(certPem);
        assert.deepEqual(agentIdsIn(cert.subjectAltName), [agentId]);
        assert.match(cert.subject, new RegExp(`CN=${agentId}`));
        assert.equal(new X509Certificate(caPem).ca, true);
        const v = opensslVerify(h, caPem, certPem);
        assert.ok(v.ok, v.out);
        const other = opensslVerify(h, atStr(r, 'certificate.caCertificatePem'), request('x'));
        assert.equal(other.ok, false, 'a request is not a certificate');
        // The control plane keeps what it issued; the agent's private key never reached it.
        const stored = await h.store.agents.get(agentId);
        assert.equal(stored.certificatePem, certPem);
        // Registration without a request still works (the agent asks for its certificate later).
        const plain = await register(h, 'primary');
        assert.equal(plain.status, 201);
        assert.equal(at(plain, 'certificate'), undefined);
      }),
    );

    void it(
      'a request naming another site or agent is refused before anything is registered',
      api(async (h) => {
        const first = await register(h, 'primary', request('primary'));
        const firstId = atStr(first, 'agentId');
        for (const [pem, code] of [
          [request('recovery'), 'CERTIFICATE_IDENTITY_MISMATCH'],
          [request(firstId), 'CERTIFICATE_IDENTITY_MISMATCH'],
          [request('primary', [agentIdentityUri(firstId)]), 'CERTIFICATE_IDENTITY_MISMATCH'],
          [
            '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n',
            'CERTIFICATE_REQUEST_INVALID',
          ],
        ] as const) {
          const r = await register(h, 'primary', pem);
          assert.equal(at(r, 'error.code'), code, JSON.stringify(r.body));
          assert.equal(r.status, code === 'CERTIFICATE_REQUEST_INVALID' ? 400 : 403);
        }
        const agents = await h.call('GET', `${V}/agents`);
        assert.equal(at(agents, 'total'), 1, 'no agent was registered by a refused request');
      }),
    );

    void it(
      'renewal: the agent trades a request naming itself for a new certificate; another agent’s identity is refused',
      api(async (h) => {
        const a = await register(h, 'primary', request('primary'));
        const b = await register(h, 'recovery', request('recovery'));
        const aId = atStr(a, 'agentId');
        const bId = atStr(b, 'agentId');
        const credential = atStr(a, 'credential');
        const renew = (pem: string, token: string | null = credential) =>
          h.call('POST', '/api/v1/agent/certificate', { token, body: { certificateRequestPem: pem } });

        assert.equal((await renew(request(aId), null)).status, 401);
        for (const pem of [request(bId), request(aId, [agentIdentityUri(bId)]), request('primary')]) {
          const refused = await renew(pem);
          assert.equal(refused.status, 403, JSON.stringify(refused.body));
          assert.equal(at(refused, 'error.code'), 'CERTIFICATE_IDENTITY_MISMATCH');
        }
        assert.equal((await h.store.agents.get(aId)).certificatePem, atStr(a, 'certificate.certificatePem'));

        h.clock.advance(3600_000);
        const r = await renew(request(aId, [agentIdentityUri(aId)]));
        assert.equal(r.status, 200, JSON.stringify(r.body));
        const renewed = new X509Certificate(atStr(r, 'certificatePem'));
        assert.notEqual(
          renewed.serialNumber,
          new X509Certificate(atStr(a, 'certificate.certificatePem')).serialNumber,
        );
        assert.deepEqual(agentIdsIn(renewed.subjectAltName), [aId]);
        assert.equal(atStr(r, 'caCertificatePem'), atStr(a, 'certificate.caCertificatePem'), 'the same CA');
        assert.ok(Date.parse(atStr(r, 'expiresAt')) > h.clock.now().getTime() + 80 * 24 * 3600_000);
        const v = opensslVerify(h, atStr(r, 'caCertificatePem'), atStr(r, 'certificatePem'));
        assert.ok(v.ok, v.out);
        assert.equal((await h.store.agents.get(aId)).certificatePem, atStr(r, 'certificatePem'));
        const events = await h.call('GET', `${V}/events`);
        assert.ok(JSON.stringify(events.body).includes('AgentCertificateIssued'));
      }),
    );
  });
}
