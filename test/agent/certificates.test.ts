/**
 * Agents' stream certificates with real `osr agent` processes: a new agent gets a CA-issued certificate at
 * registration (checked with openssl), an agent made before the control plane had a CA (self-signed openssl
 * certificate and a credential) trades it in at its next start without registering again, and a certificate
 * is renewed before it expires.
 */
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { agentIdsIn } from '../../src/domain/x509.js';
import { startAgent, startWorld, waitUntil } from './harness.js';
import type { World } from './harness.js';
import { endedAfterEachTest } from './replication-support.js';

const { worlds } = endedAfterEachTest();

function openssl(args: string[]): string {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `openssl ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return `${r.stdout}${r.stderr}`;
}

/** The agent's stream certificate verifies against the CA it was given, for TLS client and server use. */
function assertIssued(dataDir: string, agentId: string): X509Certificate {
  const tls = join(dataDir, 'tls');
  for (const purpose of ['sslclient', 'sslserver']) {
    const out = openssl([
      'verify',
      '-purpose',
      purpose,
      '-CAfile',
      join(tls, 'ca.pem'),
      join(tls, 'cert.pem'),
    ]);
    assert.match(out, /cert\.pem: OK/);
  }
  const cert = new X509Certificate(readFileSync(join(tls, 'cert.pem'), 'utf8'));
  assert.deepEqual(agentIdsIn(cert.subjectAltName), [agentId]);
  assert.equal(statSync(join(tls, 'key.pem')).mode & 0o777, 0o600, 'the private key is 0600');
  return cert;
}

function credentialOf(dataDir: string): { agentId: string } {
  return JSON.parse(readFileSync(join(dataDir, 'credential.json'), 'utf8')) as { agentId: string };
}

async function world(options: Parameters<typeof startWorld>[0] = {}): Promise<World> {
  const w = await startWorld(options);
  worlds.push(w);
  return w;
}

void test(
  'registration gives a new agent a CA-issued certificate; the CA is the control plane’s',
  { timeout: 120_000 },
  async () => {
    const w = await world();
    const dataDir = join(w.tmp, 'agent-alpha');
    const a = await startAgent(w, {
      site: 'alpha',
      siteDir: await w.siteDir('alpha'),
      dataDir,
      keyFile: await w.keyFile('alpha'),
    });
    const { agentId } = credentialOf(dataDir);
    const cert = assertIssued(dataDir, agentId);
    const stored = await w.store.agents.get(agentId);
    assert.equal(stored.certificatePem, readFileSync(join(dataDir, 'tls', 'cert.pem'), 'utf8'));
    const ca = (await w.store.authority.find())?.certificatePem;
    assert.equal(readFileSync(join(dataDir, 'tls', 'ca.pem'), 'utf8'), ca);
    assert.ok(cert.checkIssued(new X509Certificate(ca!)));
    assert.equal(readFileSync(join(dataDir, 'credential.json'), 'utf8').includes('PRIVATE KEY'), false);
    await a.stop();
  },
);

void test(
  'an agent registered before the CA (self-signed certificate, credential) gets a CA-issued one at its next start without registering again, and renews before expiry',
  { timeout: 120_000 },
  async () => {
    // Certificates live 8 s here: an agent renews in the last third, so within about 6 s.
    const w = await world({ agentCertificateLifetimeMs: 8000 });
    const siteDir = await w.siteDir('beta');
    const dataDir = join(w.tmp, 'agent-beta');
    // What an older agent left: a credential from a registration without a certificate request, and a key and
    // self-signed certificate it made with openssl itself.
    const keyFile = JSON.parse(readFileSync(await w.keyFile('beta'), 'utf8')) as {
      key: string;
      server: string;
    };
    const reg = await fetch(`${w.server.url}/api/v1/agent/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ key: keyFile.key, friendlyName: 'beta-agent', version: '0.0.9' }),
    });
    assert.equal(reg.status, 201);
    const registration = (await reg.json()) as Record<string, unknown>;
    mkdirSync(join(dataDir, 'tls'), { recursive: true });
    writeFileSync(
      join(dataDir, 'credential.json'),
      JSON.stringify({ ...registration, server: w.server.url, registeredAt: new Date().toISOString() }),
      { mode: 0o600 },
    );
    openssl([
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '3650',
      '-subj',
      '/CN=osr-agent-beta',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout',
      join(dataDir, 'tls', 'key.pem'),
      '-out',
      join(dataDir, 'tls', 'cert.pem'),
    ]);
    const oldKey = readFileSync(join(dataDir, 'tls', 'key.pem'), 'utf8');
    const agentId = String(registration['agentId']);

    const b = await startAgent(w, { site: 'beta', siteDir, dataDir, extra: ['--certificate-check', '200'] });
    await b.waitFor(/stream certificate issued by the control plane/, 30_000);
    const first = assertIssued(dataDir, agentId);
    assert.equal(
      readFileSync(join(dataDir, 'tls', 'key.pem'), 'utf8'),
      oldKey,
      'the same key: it never left',
    );
    assert.equal((await w.agents()).length, 1, 'no second registration');
    assert.equal(credentialOf(dataDir).agentId, agentId);

    const renewed = await waitUntil(
      'a renewal before the certificate expires',
      () => {
        const c = new X509Certificate(readFileSync(join(dataDir, 'tls', 'cert.pem'), 'utf8'));
        return c.serialNumber !== first.serialNumber ? c : undefined;
      },
      30_000,
    );
    assert.ok(Date.parse(renewed.validTo) > Date.parse(first.validTo));
    assert.ok(Date.now() < Date.parse(first.validTo), 'renewed while the old one was still valid');
    assertIssued(dataDir, agentId);
    // A fresh certificate is not renewed again at once (its next renewal is due in its own last third).
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(
      new X509Certificate(readFileSync(join(dataDir, 'tls', 'cert.pem'), 'utf8')).serialNumber,
      renewed.serialNumber,
    );
    await b.stop();
  },
);
