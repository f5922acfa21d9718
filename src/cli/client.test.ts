import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrClient, apiPath, jobOf, vaultPath } from './client.js';
import { CliError } from './errors.js';

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  contentType: string | undefined;
  body: string;
}

let server: Server;
let base: string;
const seen: Seen[] = [];
let reply: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => res.end();

before(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        auth: req.headers.authorization,
        contentType: req.headers['content-type'],
        body,
      });
      reply(req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve, reject) => server.close((e) => (e ? reject(e) : resolve())));
});

function json(status: number, body: unknown, headers: Record<string, string> = {}) {
  return (_req: IncomingMessage, res: ServerResponse): void => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
}

void test('paths encode each segment', () => {
  assert.equal(vaultPath('my vault', 'sites', 'a/b'), '/vaults/my%20vault/sites/a%2Fb');
  assert.equal(apiPath('jobs', 'x?y'), '/jobs/x%3Fy');
});

void test('GET sends the bearer token and the query, and parses the JSON answer', async () => {
  seen.length = 0;
  reply = json(200, { items: [{ id: 'v1' }], total: 1 });
  const client = new OsrClient({ server: base + '/', token: () => 'tok' });
  const page = await client.get<{ items: { id: string }[]; total: number }>('/vaults', {
    limit: 5,
    state: ['A', 'B'],
    skip: undefined,
    flag: true,
  });
  assert.deepEqual(page, { items: [{ id: 'v1' }], total: 1 });
  assert.equal(seen[0]?.method, 'GET');
  assert.equal(seen[0]?.url, '/api/v1/vaults?limit=5&state=A&state=B&flag=true');
  assert.equal(seen[0]?.auth, 'Bearer tok');
  assert.equal(seen[0]?.contentType, undefined);
});

void test('POST sends JSON ({} when no body) and exposes status and Location', async () => {
  seen.length = 0;
  reply = json(202, { job: { id: 'j1', steps: [] } }, { location: '/api/v1/jobs/j1' });
  const client = new OsrClient({ server: base, token: 't' });
  const res = await client.request('POST', '/vaults/v/items/i/commit');
  assert.equal(res.status, 202);
  assert.equal(res.location, '/api/v1/jobs/j1');
  assert.equal(jobOf(res.body).id, 'j1');
  assert.equal(seen[0]?.body, '{}');
  assert.equal(seen[0]?.contentType, 'application/json');
  await client.post('/vaults', { name: 'x' });
  assert.equal(seen[1]?.body, '{"name":"x"}');
});

void test('an empty 204 answer resolves undefined', async () => {
  reply = (_req, res) => {
    res.writeHead(204);
    res.end();
  };
  const client = new OsrClient({ server: base, token: 't' });
  assert.equal(await client.delete('/vaults/x'), undefined);
});

void test('API error bodies become CliErrors with the same code, message, status and details', async () => {
  reply = json(400, {
    error: { code: 'POLICY_INVALID', message: 'retention too long', details: { field: 'r' } },
  });
  const client = new OsrClient({ server: base, token: 't' });
  await assert.rejects(
    client.post('/vaults/v/policies', {}),
    (e: unknown) =>
      e instanceof CliError &&
      e.code === 'POLICY_INVALID' &&
      e.message === 'retention too long' &&
      e.status === 400 &&
      (e.details as { field: string }).field === 'r' &&
      e.exitCode === 1,
  );
});

void test('a non-JSON error answer keeps the status in the code', async () => {
  reply = (_req, res) => {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end('bad gateway\nmore');
  };
  const client = new OsrClient({ server: base, token: 't' });
  await assert.rejects(
    client.get('/x'),
    (e: unknown) => e instanceof CliError && e.code === 'HTTP_502' && e.message.includes('bad gateway'),
  );
});

void test('a 2xx answer that is not JSON is refused', async () => {
  reply = (_req, res) => res.end('<html>');
  const client = new OsrClient({ server: base, token: 't' });
  await assert.rejects(client.get('/x'), (e: unknown) => e instanceof CliError && e.code === 'BAD_RESPONSE');
});

void test('health needs no token; other calls without one fail before sending', async () => {
  seen.length = 0;
  reply = json(200, { status: 'ok', version: '0.1.0' });
  const client = new OsrClient({ server: base });
  assert.deepEqual(await client.health(), { status: 'ok', version: '0.1.0' });
  assert.equal(seen[0]?.auth, undefined);
  await assert.rejects(client.get('/vaults'), (e: unknown) => e instanceof CliError && e.code === 'NO_TOKEN');
  assert.equal(seen.length, 1);
});

void test('job helpers: list joins states with commas, cancel and resume send their bodies', async () => {
  seen.length = 0;
  reply = json(200, { items: [], total: 0 });
  const client = new OsrClient({ server: base, token: 't' });
  await client.listJobs({ vault: 'default', state: ['Failed', 'Cancelled'], limit: 3 });
  assert.equal(seen[0]?.url, '/api/v1/jobs?vault=default&state=Failed%2CCancelled&limit=3');
  await client.cancelJob('j 1', true);
  assert.equal(seen[1]?.url, '/api/v1/jobs/j%201/cancel');
  assert.equal(seen[1]?.body, '{"force":true}');
  await client.cancelJob('j1');
  assert.equal(seen[2]?.body, '{}');
  await client.resumeJob('j1', 'done');
  assert.equal(seen[3]?.body, '{"comment":"done"}');
});

void test('an unreachable server is UNREACHABLE with exit code 4', async () => {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const client = new OsrClient({ server: `http://127.0.0.1:${port}`, token: 't' });
  await assert.rejects(
    client.get('/vaults'),
    (e: unknown) =>
      e instanceof CliError &&
      e.code === 'UNREACHABLE' &&
      e.exitCode === 4 &&
      e.message.includes('ECONNREFUSED'),
  );
});

void test('jobOf finds the job in {job} or takes a bare job, and refuses anything else', () => {
  const job = { id: 'j', steps: [] };
  assert.equal(jobOf({ job, item: {} }).id, 'j');
  assert.equal(jobOf(job).id, 'j');
  assert.throws(
    () => jobOf({ item: {} }),
    (e: unknown) => e instanceof CliError && e.code === 'BAD_RESPONSE',
  );
});
