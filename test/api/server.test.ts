/**
 * The one real-socket test of the API surface: `startServer` on port 0 over a temp data
 * folder (SQLite; and PostgreSQL in its own schema when OSR_TEST_PG is set), called
 * with `fetch`. Checks the admin token file, the default vault, an agent registering
 * and long-polling over the socket, a graceful close that ends a waiting long-poll,
 * and a restart on the same data.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { startServer, type StartServerOptions } from '../../src/api/server.js';
import { testPostgresUrl } from '../../src/store/testing.js';
import { snapshot } from './seed.js';

interface Variant {
  name: string;
  options(): Partial<StartServerOptions>;
  cleanup(): Promise<void>;
}

function variants(): Variant[] {
  const out: Variant[] = [{ name: 'sqlite', options: () => ({}), cleanup: () => Promise.resolve() }];
  const url = testPostgresUrl();
  if (url !== undefined) {
    const schema = `osr_api_${randomUUID().replaceAll('-', '')}`;
    out.push({
      name: 'postgres',
      options: () => ({ database: url, databaseSchema: schema }),
      cleanup: async () => {
        const c = new pg.Client({ connectionString: url });
        await c.connect();
        try {
          await c.query(`drop schema if exists "${schema}" cascade`);
        } finally {
          await c.end();
        }
      },
    });
  }
  return out;
}

async function json(res: Response): Promise<Record<string, unknown>> {
  return (await res.json()) as Record<string, unknown>;
}

for (const v of variants()) {
  describe(`startServer over a real socket (${v.name})`, () => {
    it('serves the API, ends long-polls on close, and restarts with the same token and data', async () => {
      const dataDir = await mkdtemp(join(tmpdir(), 'osr-api-server-'));
      const opts: StartServerOptions = {
        dataDir,
        port: 0,
        logLevel: 'silent',
        stopTimeoutMs: 200,
        ...v.options(),
      };
      let server = await startServer(opts);
      try {
        assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
        const tokenFile = join(dataDir, 'admin-token');
        assert.equal((await readFile(tokenFile, 'utf8')).trim(), server.adminToken);
        assert.equal((await stat(tokenFile)).mode & 0o777, 0o600);
        const auth = { authorization: `Bearer ${server.adminToken}`, 'content-type': 'application/json' };

        const health = await fetch(`${server.url}/api/v1/health`);
        assert.equal(health.status, 200);
        assert.equal((await json(health)).status, 'ok');
        assert.equal((await fetch(`${server.url}/api/v1/vaults`)).status, 401);

        const vaults = await json(await fetch(`${server.url}/api/v1/vaults`, { headers: auth }));
        assert.deepEqual(
          (vaults.items as { name: string }[]).map((x) => x.name),
          ['default'],
        );
        const site = await fetch(`${server.url}/api/v1/vaults/default/sites`, {
          method: 'POST',
          headers: auth,
          body: JSON.stringify({ name: 'primary', kind: 'onprem' }),
        });
        assert.equal(site.status, 201);
        const key = await json(
          await fetch(`${server.url}/api/v1/vaults/default/sites/primary/keys`, {
            method: 'POST',
            headers: auth,
            body: '{}',
          }),
        );
        const keyFile = key.keyFile as { key: string; server: string };
        assert.equal(keyFile.server, server.url);
        const reg = await fetch(`${keyFile.server}/api/v1/agent/register`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ key: keyFile.key, friendlyName: 'p1', version: '0.1.0' }),
        });
        assert.equal(reg.status, 201);
        const credential = (await json(reg)).credential as string;

        // A long-poll waiting when the server closes must answer at once, not hold close().
        const poll = fetch(`${server.url}/api/v1/agent/commands?waitMs=30000`, {
          headers: { authorization: `Bearer ${credential}` },
        });
        await waitUntil(async () => {
          const r = await fetch(`${server.url}/api/v1/health`);
          return r.status === 200;
        });
        const t0 = Date.now();
        await server.close();
        const res = await poll.catch((err: unknown) => err);
        assert.ok(Date.now() - t0 < 10_000, 'close did not wait for the long-poll');
        if (res instanceof Response) {
          assert.equal(res.status, 200);
          assert.deepEqual((await json(res)).commands, []);
        }

        server = await startServer(opts);
        assert.equal(server.adminToken, (await readFile(tokenFile, 'utf8')).trim());
        const again = await json(await fetch(`${server.url}/api/v1/vaults/default/sites`, { headers: auth }));
        assert.equal(again.total, 1, 'data survived the restart');
        const vaults2 = await json(await fetch(`${server.url}/api/v1/vaults`, { headers: auth }));
        assert.equal(vaults2.total, 1, 'the default vault is created once');
        const hb = await fetch(`${server.url}/api/v1/agent/heartbeat`, {
          method: 'POST',
          headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/json' },
          body: '{}',
        });
        assert.equal(hb.status, 200, 'the agent credential survived the restart');

        // The real workflows behind the routes: protect answers 202 with a job, the
        // item view serialises, the recovery agent's long-poll receives the job's
        // command, and an operation outside allowedOperations is refused with 409.
        const agentAuth = { authorization: `Bearer ${credential}`, 'content-type': 'application/json' };
        const inv = await fetch(`${server.url}/api/v1/agent/inventory`, {
          method: 'PUT',
          headers: agentAuth,
          body: JSON.stringify(snapshot(1)),
        });
        assert.equal(inv.status, 200);
        const recovery = await registerOver(server.url, auth, 'recovery');
        await fetch(`${server.url}/api/v1/agent/inventory`, {
          method: 'PUT',
          headers: recovery,
          body: JSON.stringify(snapshot(0)),
        });
        const policy = await fetch(`${server.url}/api/v1/vaults/default/policies`, {
          method: 'POST',
          headers: auth,
          body: JSON.stringify({ name: 'gold' }),
        });
        assert.equal(policy.status, 201);
        const protect = await fetch(`${server.url}/api/v1/vaults/default/items`, {
          method: 'POST',
          headers: auth,
          body: JSON.stringify({ machine: 'vm0', policy: 'gold', targetSite: 'recovery' }),
        });
        const protectBody = await json(protect);
        assert.equal(protect.status, 202, JSON.stringify(protectBody));
        const job = protectBody.job as { id: string };
        assert.equal(protect.headers.get('location'), `/api/v1/jobs/${job.id}`);
        const view = await fetch(`${server.url}/api/v1/vaults/default/items/vm0`, { headers: auth });
        assert.equal(view.status, 200);
        assert.ok(Array.isArray((await json(view)).allowedOperations));
        const polled = await json(
          await fetch(`${server.url}/api/v1/agent/commands?waitMs=10000`, { headers: recovery }),
        );
        assert.ok(
          (polled.commands as unknown[]).length > 0,
          'the enable job sent the recovery agent a command',
        );
        const commit = await fetch(`${server.url}/api/v1/vaults/default/items/vm0/commit`, {
          method: 'POST',
          headers: auth,
          body: '{}',
        });
        assert.equal(commit.status, 409);
        assert.equal(((await json(commit)).error as { code: string }).code, 'OPERATION_NOT_ALLOWED');
      } finally {
        await server.close();
        await rm(dataDir, { recursive: true, force: true });
        await v.cleanup();
      }
    });
  });
}

/** Creates a site and registers an agent for it over HTTP; returns the agent's headers. */
async function registerOver(
  url: string,
  auth: Record<string, string>,
  site: string,
): Promise<Record<string, string>> {
  const created = await fetch(`${url}/api/v1/vaults/default/sites`, {
    method: 'POST',
    headers: auth,
    body: JSON.stringify({ name: site, kind: 'cloud' }),
  });
  assert.equal(created.status, 201);
  const key = await json(
    await fetch(`${url}/api/v1/vaults/default/sites/${site}/keys`, {
      method: 'POST',
      headers: auth,
      body: '{}',
    }),
  );
  const reg = await fetch(`${url}/api/v1/agent/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ key: (key.keyFile as { key: string }).key, friendlyName: site, version: '0.1.0' }),
  });
  assert.equal(reg.status, 201);
  const credential = (await json(reg)).credential as string;
  return { authorization: `Bearer ${credential}`, 'content-type': 'application/json' };
}

async function waitUntil(cond: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
