import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import {
  agentIdentityUri,
  agentIdsIn,
  createCertificateRequest,
  issueCertificate,
  parseCertificateRequest,
} from './x509.js';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'osr-x509-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function openssl(args: string[], input?: string): { status: number | null; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', ...(input === undefined ? {} : { input }) });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A CSR made by openssl with a new key of `keyArgs` (e.g. `['-newkey', 'rsa:2048']`). */
function opensslCsr(name: string, keyArgs: string[], subj = `/CN=${name}`, ext?: string): string {
  const file = join(dir, `${name}.csr`);
  const r = openssl([
    'req',
    '-new',
    ...keyArgs,
    '-nodes',
    '-keyout',
    join(dir, `${name}.key`),
    '-out',
    file,
    '-subj',
    subj,
    ...(ext === undefined ? [] : ['-addext', ext]),
  ]);
  assert.equal(r.status, 0, r.out);
  return readFileSync(file, 'utf8');
}

function code(err: unknown): string | undefined {
  return err instanceof OsrError ? err.code : undefined;
}

void describe('certificate signing requests', () => {
  void it('round-trip: the names and key of a request we make, which openssl verifies too', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const pem = createCertificateRequest(privateKey, {
      commonName: 'agent-7',
      uris: [agentIdentityUri('7')],
    });
    const req = parseCertificateRequest(pem);
    assert.equal(req.commonName, 'agent-7');
    assert.deepEqual(req.uris, ['urn:osr:agent:7']);
    assert.equal(req.keyDescription, 'EC P-256');
    assert.ok(req.publicKey.equals(publicKey));
    const file = join(dir, 'ours.csr');
    writeFileSync(file, pem);
    const v = openssl(['req', '-in', file, '-noout', '-verify', '-text']);
    assert.equal(v.status, 0, v.out);
    assert.match(v.out, /verify OK/i);
    assert.match(v.out, /URI:urn:osr:agent:7/);
  });

  void it('reads requests openssl made: EC P-384 and RSA 2048 with their SANs', () => {
    const ec = parseCertificateRequest(
      opensslCsr(
        'p384',
        ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1'],
        '/O=x/CN=site-a',
        'subjectAltName=DNS:a.example,IP:10.0.0.1,URI:urn:osr:agent:9',
      ),
    );
    assert.equal(ec.keyDescription, 'EC P-384');
    assert.equal(ec.commonName, 'site-a');
    assert.deepEqual(ec.dnsNames, ['a.example']);
    assert.deepEqual(ec.ipAddresses, ['10.0.0.1']);
    assert.deepEqual(ec.uris, ['urn:osr:agent:9']);
    const rsa = parseCertificateRequest(opensslCsr('rsa2048', ['-newkey', 'rsa:2048']));
    assert.equal(rsa.keyDescription, 'RSA 2048');
    assert.equal(rsa.commonName, 'rsa2048');
  });

  void it('refuses weak or unsupported keys, altered requests and garbage with CERTIFICATE_REQUEST_INVALID', () => {
    const weak = opensslCsr('rsa1024', ['-newkey', 'rsa:1024']);
    assert.throws(
      () => parseCertificateRequest(weak),
      (e) => code(e) === 'CERTIFICATE_REQUEST_INVALID' && /RSA 1024/.test((e as Error).message),
    );
    const ed = opensslCsr('ed25519', ['-newkey', 'ed25519']);
    assert.throws(
      () => parseCertificateRequest(ed),
      (e) => code(e) === 'CERTIFICATE_REQUEST_INVALID',
    );
    const k = generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey;
    assert.throws(
      () => parseCertificateRequest(createCertificateRequest(k, { commonName: 'x' })),
      (e) => code(e) === 'CERTIFICATE_REQUEST_INVALID' && /secp256k1/.test((e as Error).message),
    );
    // The common name changed after signing: the signature no longer verifies.
    const good = createCertificateRequest(
      generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey,
      {
        commonName: 'aaaa',
      },
    );
    const der = Buffer.from(good.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const at = der.indexOf(Buffer.from('aaaa'));
    der.write('bbbb', at, 'latin1');
    const altered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    assert.throws(
      () => parseCertificateRequest(altered),
      (e) => code(e) === 'CERTIFICATE_REQUEST_INVALID' && /signature/.test((e as Error).message),
    );
    assert.throws(
      () => parseCertificateRequest('hello'),
      (e) => code(e) === 'CERTIFICATE_REQUEST_INVALID',
    );
    const truncated = `-----BEGIN CERTIFICATE REQUEST-----\n${der.subarray(0, 40).toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    assert.throws(
      () => parseCertificateRequest(truncated),
      (e) => code(e) === 'CERTIFICATE_REQUEST_INVALID',
    );
  });
});

void describe('certificates', () => {
  void it('a CA and a certificate it issues: node and openssl verify the chain, purposes and names', () => {
    const ca = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const now = Date.now();
    const caPem = issueCertificate(
      {
        commonName: 'test CA',
        publicKey: ca.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 86_400_000),
        isCa: true,
      },
      { privateKey: ca.privateKey },
    );
    const leafKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const leafPem = issueCertificate(
      {
        commonName: 'agent-1',
        uris: [agentIdentityUri('agent-1')],
        publicKey: leafKey.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(Date.UTC(2051, 0, 1)),
      },
      { certificatePem: caPem, privateKey: ca.privateKey },
    );
    const caCert = new X509Certificate(caPem);
    const leaf = new X509Certificate(leafPem);
    assert.equal(caCert.ca, true);
    assert.equal(leaf.ca, false);
    assert.ok(leaf.checkIssued(caCert) && leaf.verify(caCert.publicKey));
    assert.deepEqual(agentIdsIn(leaf.subjectAltName), ['agent-1']);
    assert.equal(new Date(leaf.validTo).getUTCFullYear(), 2051, 'GeneralizedTime from 2050 on');
    writeFileSync(join(dir, 'ca.pem'), caPem);
    writeFileSync(join(dir, 'leaf.pem'), leafPem);
    for (const purpose of ['sslserver', 'sslclient']) {
      const v = openssl([
        'verify',
        '-purpose',
        purpose,
        '-CAfile',
        join(dir, 'ca.pem'),
        join(dir, 'leaf.pem'),
      ]);
      assert.equal(v.status, 0, v.out);
      assert.match(v.out, /leaf\.pem: OK/);
    }
    const text = openssl(['x509', '-in', join(dir, 'leaf.pem'), '-noout', '-text']).out;
    assert.match(text, /URI:urn:osr:agent:agent-1/);
    assert.match(text, /CA:FALSE/);
    // A self-signed certificate does not verify against the CA.
    const self = issueCertificate(
      {
        commonName: 'agent-1',
        publicKey: leafKey.publicKey,
        notBefore: new Date(now),
        notAfter: new Date(now + 1000_000),
      },
      { privateKey: createPrivateKey(leafKey.privateKey.export({ type: 'pkcs8', format: 'pem' })) },
    );
    writeFileSync(join(dir, 'self.pem'), self);
    assert.notEqual(openssl(['verify', '-CAfile', join(dir, 'ca.pem'), join(dir, 'self.pem')]).status, 0);
  });

  void it('reads agent ids only from URI names of the agent form', () => {
    assert.deepEqual(agentIdsIn('DNS:x, URI:urn:osr:agent:a-1, URI:urn:osr:agent:b'), ['a-1', 'b']);
    assert.deepEqual(agentIdsIn('URI:urn:osr:agentx:a, DNS:urn:osr:agent:b'), []);
    assert.deepEqual(agentIdsIn(undefined), []);
  });
});
