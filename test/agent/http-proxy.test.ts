/**
 * The agent's HTTP client through a proxy: CONNECT tunnels for https targets and
 * absolute-URI requests for http targets, with Proxy-Authorization; a refusing proxy
 * is a clear error.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { HttpClient, parseProxyUrl } from '../../src/agent/http.js';
import { startProxy } from './proxy.js';

let tmp: string;
/** The HTTPS control plane's key and certificate (made with openssl, valid for 127.0.0.1). */
let identity: { keyPem: string; certPem: string };
let httpsServer: https.Server;
let httpServer: http.Server;
const hits: string[] = [];

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'osr-http-'));
  const [key, cert] = [join(tmp, 'key.pem'), join(tmp, 'cert.pem')];
  const made = spawnSync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=control-plane',
    '-addext',
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout',
    key,
    '-out',
    cert,
  ]);
  assert.equal(made.status, 0, String(made.stderr));
  identity = { keyPem: readFileSync(key, 'utf8'), certPem: readFileSync(cert, 'utf8') };
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    hits.push(`${req.method} ${req.url} ${req.headers['proxy-authorization'] ?? '-'}`);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, url: req.url }));
  };
  httpsServer = https.createServer({ cert: identity.certPem, key: identity.keyPem }, handler);
  httpServer = http.createServer(handler);
  await new Promise<void>((r) => httpsServer.listen(0, '127.0.0.1', () => r()));
  await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', () => r()));
});

after(async () => {
  httpsServer.closeAllConnections();
  httpServer.closeAllConnections();
  await new Promise<void>((r) => httpsServer.close(() => r()));
  await new Promise<void>((r) => httpServer.close(() => r()));
  rmSync(tmp, { recursive: true, force: true });
});

void test('parseProxyUrl reads host, port and optional credentials', () => {
  assert.deepEqual(parseProxyUrl('http://proxy.example:8080'), {
    host: 'proxy.example',
    port: 8080,
    authorization: undefined,
  });
  const p = parseProxyUrl('http://us%40er:p%3Ass@10.0.0.1:3128');
  assert.equal(p.authorization, `Basic ${Buffer.from('us@er:p:ss').toString('base64')}`);
  assert.equal(parseProxyUrl('proxy:3128').host, 'proxy');
  assert.throws(() => parseProxyUrl('https://proxy:3128'), /only http:\/\/ proxies/);
});

void test('https through a CONNECT tunnel with credentials; the target never sees them', async () => {
  const proxy = await startProxy('u', 'p w');
  try {
    const client = new HttpClient({ proxy: parseProxyUrl(proxy.url), ca: identity.certPem });
    const port = (httpsServer.address() as AddressInfo).port;
    const res = await client.request({ method: 'GET', url: `https://localhost:${port}/api/v1/health?x=1` });
    assert.equal(res.status, 200);
    assert.deepEqual(JSON.parse(res.body), { ok: true, url: '/api/v1/health?x=1' });
    assert.deepEqual(proxy.seen, [`CONNECT localhost:${port}`]);
    assert.equal(proxy.refused, 0);
    assert.equal(hits.at(-1), 'GET /api/v1/health?x=1 -');
  } finally {
    await proxy.close();
  }
});

void test('http through the proxy as an absolute-URI request', async () => {
  const proxy = await startProxy('u', 'p');
  try {
    const client = new HttpClient({ proxy: parseProxyUrl(proxy.url) });
    const port = (httpServer.address() as AddressInfo).port;
    const res = await client.request({
      method: 'POST',
      url: `http://127.0.0.1:${port}/api/v1/agent/heartbeat`,
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(res.status, 200);
    assert.deepEqual(proxy.seen, ['POST /api/v1/agent/heartbeat']);
    assert.equal(hits.at(-1), 'POST /api/v1/agent/heartbeat -', 'the proxy strips its credentials');
  } finally {
    await proxy.close();
  }
});

void test('a proxy that refuses the credentials is a clear error for CONNECT and a 407 for http', async () => {
  const proxy = await startProxy('u', 'right');
  try {
    const wrong = parseProxyUrl(proxy.url.replace('right', 'wrong'));
    const client = new HttpClient({ proxy: wrong, ca: identity.certPem });
    const port = (httpsServer.address() as AddressInfo).port;
    await assert.rejects(
      client.request({ method: 'GET', url: `https://localhost:${port}/` }),
      /refused CONNECT .*407/,
    );
    const res = await client.request({
      method: 'GET',
      url: `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}/`,
    });
    assert.equal(res.status, 407);
    assert.equal(proxy.refused, 2);
  } finally {
    await proxy.close();
  }
});
