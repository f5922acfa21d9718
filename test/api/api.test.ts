/**
 * The REST API in-process (`app.inject`) over a real store: SQLite always, PostgreSQL
 * when OSR_TEST_PG is set. Covers auth, every resource group's happy path, validation
 * refusals that write nothing, 404s, and the agent protocol.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  at,
  atList,
  atStr,
  harnessVariants,
  HEARTBEAT_TIMEOUT_MS,
  withApi,
  type ApiHarness,
} from './harness.js';
import { seedItem, seedWorld, snapshot } from './seed.js';

const V = '/api/v1/vaults/default';

interface RegisteredAgent {
  agentId: string;
  credential: string;
  siteId: string;
}

async function registerAgent(h: ApiHarness, site: string, kind = 'onprem'): Promise<RegisteredAgent> {
  const s = await h.call('POST', `${V}/sites`, { body: { name: site, kind } });
  assert.equal(s.status, 201, JSON.stringify(at(s, '')));
  const k = await h.call('POST', `${V}/sites/${site}/keys`, { body: {} });
  assert.equal(k.status, 201);
  const r = await h.call('POST', '/api/v1/agent/register', {
    token: null,
    body: {
      key: at(k, 'keyFile.key'),
      friendlyName: `${site}-agent`,
      version: '0.1.0',
      dataAddress: '127.0.0.1:9443',
    },
  });
  assert.equal(r.status, 201, JSON.stringify(at(r, '')));
  return { agentId: atStr(r, 'agentId'), credential: atStr(r, 'credential'), siteId: atStr(r, 'siteId') };
}

for (const variant of harnessVariants()) {
  const api = (fn: (h: ApiHarness) => Promise<void>) => () => withApi(() => variant.open(), fn);

  describe(`REST API (${variant.name})`, () => {
    describe('basics', () => {
      it(
        'serves health and the OpenAPI document without auth',
        api(async (h) => {
          const health = await h.call('GET', '/api/v1/health', { token: null });
          assert.equal(health.status, 200);
          assert.equal(at(health, 'status'), 'ok');
          assert.match(atStr(health, 'version'), /^\d+\.\d+\.\d+/);
          const doc = await h.call('GET', '/api/v1/openapi.json', { token: null });
          assert.equal(doc.status, 200);
          assert.match(atStr(doc, 'openapi'), /^3\./);
          for (const path of [
            '/api/v1/vaults',
            '/api/v1/vaults/{vault}/items/{item}/unplanned-failover',
            '/api/v1/jobs',
            '/api/v1/agent/commands',
            '/api/v1/agent/register',
          ]) {
            assert.ok(at(doc, `paths.${path}`), `path ${path} in OpenAPI`);
          }
          for (const name of [
            'Vault',
            'Site',
            'Agent',
            'Policy',
            'ProtectedItem',
            'Job',
            'RecoveryPlan',
            'Error',
          ]) {
            assert.ok(at(doc, `components.schemas.${name}`), `component ${name}`);
          }
          assert.equal(
            at(
              doc,
              'paths./api/v1/vaults.post.requestBody.content.application/json.schema.additionalProperties',
            ),
            false,
          );
          assert.equal(JSON.stringify(at(doc, '')).includes('def-'), false, 'components are named by $id');
          const refs = [...JSON.stringify(at(doc, '')).matchAll(/"\$ref":"([^"]+)"/g)].map((m) => m[1] ?? '');
          assert.ok(refs.length > 20);
          for (const r of new Set(refs)) {
            assert.match(r, /^#\/components\/schemas\//);
            assert.ok(at(doc, `components.schemas.${r.split('/').at(-1)}`), `${r} resolves`);
          }
        }),
      );

      it(
        'documents in OpenAPI the error body of every route and the 204 that deletes answer',
        api(async (h) => {
          const doc = await h.call('GET', '/api/v1/openapi.json', { token: null });
          const paths = at(doc, 'paths') as Record<
            string,
            Record<string, { responses: Record<string, unknown> }>
          >;
          let deletes = 0;
          for (const [path, ops] of Object.entries(paths)) {
            for (const [method, op] of Object.entries(ops)) {
              const where = `${method.toUpperCase()} ${path}`;
              for (const range of ['4XX', '5XX']) {
                const schema = JSON.stringify(op.responses[range] ?? null);
                assert.match(
                  schema,
                  /"\$ref":"#\/components\/schemas\/Error"/,
                  `${where} documents ${range}`,
                );
              }
              if (method !== 'delete') continue;
              deletes++;
              assert.deepEqual(
                Object.keys(op.responses).filter((c) => c.startsWith('2')),
                ['204'],
                `${where} documents 204 as its only success`,
              );
            }
          }
          assert.ok(deletes >= 8, `${deletes} delete routes`);
          await h.call('POST', '/api/v1/vaults', { body: { name: 'gone' } });
          const del = await h.call('DELETE', '/api/v1/vaults/gone');
          assert.equal(del.status, 204);
          assert.equal(del.body, '');
        }),
      );

      it(
        'refuses missing and wrong tokens with 401 in the error shape',
        api(async (h) => {
          const none = await h.call('GET', '/api/v1/vaults', { token: null });
          assert.equal(none.status, 401);
          assert.equal(at(none, 'error.code'), 'UNAUTHORIZED');
          assert.equal(typeof at(none, 'error.message'), 'string');
          const wrong = await h.call('GET', '/api/v1/vaults', { token: 'nope' });
          assert.equal(wrong.status, 401);
          const basic = await h.call('GET', '/api/v1/vaults', {
            token: null,
            headers: { authorization: 'Basic eDp5' },
          });
          assert.equal(basic.status, 401);
          // The admin token is not an agent credential.
          const agentRoute = await h.call('POST', '/api/v1/agent/heartbeat', { body: {} });
          assert.equal(agentRoute.status, 401);
          // Nor an agent credential an admin token.
          const a = await registerAgent(h, 'p1');
          const asAgent = await h.call('GET', '/api/v1/vaults', { token: a.credential });
          assert.equal(asAgent.status, 401);
        }),
      );

      it(
        'answers unknown routes with 404 NOT_FOUND',
        api(async (h) => {
          const r = await h.call('GET', '/api/v1/nothing-here');
          assert.equal(r.status, 404);
          assert.equal(at(r, 'error.code'), 'NOT_FOUND');
          const missing = await h.call('GET', '/api/v1/vaults/nope');
          assert.equal(missing.status, 404);
          assert.equal(at(missing, 'error.code'), 'NOT_FOUND');
        }),
      );
    });

    describe('validation', () => {
      it(
        'refuses unknown fields, wrong types, bad JSON and bad query values and writes nothing',
        api(async (h) => {
          const before = await h.call('GET', '/api/v1/vaults');
          const unknown = await h.call('POST', '/api/v1/vaults', { body: { name: 'v2', colour: 'red' } });
          assert.equal(unknown.status, 400);
          assert.equal(at(unknown, 'error.code'), 'VALIDATION_FAILED');
          assert.deepEqual(at(unknown, 'error.details.0.path'), 'body.colour');
          const wrongType = await h.call('POST', '/api/v1/vaults', { body: { name: 42 } });
          assert.equal(wrongType.status, 400);
          assert.equal(at(wrongType, 'error.details.0.path'), 'body.name');
          const missing = await h.call('POST', '/api/v1/vaults', { body: {} });
          assert.equal(missing.status, 400);
          assert.equal(at(missing, 'error.details.0.path'), 'body.name');
          const badName = await h.call('POST', '/api/v1/vaults', { body: { name: '-x' } });
          assert.equal(badName.status, 400);
          const badJson = await h.call('POST', '/api/v1/vaults', { payload: '{"name":' });
          assert.equal(badJson.status, 400);
          assert.equal(at(badJson, 'error.code'), 'VALIDATION_FAILED');
          const badSiteKind = await h.call('POST', `${V}/sites`, { body: { name: 's', kind: 'mars' } });
          assert.equal(badSiteKind.status, 400);
          const badLimit = await h.call('GET', '/api/v1/vaults?limit=abc');
          assert.equal(badLimit.status, 400);
          assert.equal(at(badLimit, 'error.details.0.path'), 'querystring.limit');
          const unknownQuery = await h.call('GET', '/api/v1/vaults?colour=red');
          assert.equal(unknownQuery.status, 400);
          const after = await h.call('GET', '/api/v1/vaults');
          assert.deepEqual(at(after, ''), at(before, ''));
          const sites = await h.call('GET', `${V}/sites`);
          assert.equal(at(sites, 'total'), 0);
        }),
      );

      it(
        'refuses bodies over 1 MiB with 413 PAYLOAD_TOO_LARGE and writes nothing',
        api(async (h) => {
          const big = JSON.stringify({ name: 'big', pad: 'x'.repeat(1024 * 1024 + 10) });
          const r = await h.call('POST', '/api/v1/vaults', { payload: big });
          assert.equal(r.status, 413);
          assert.equal(at(r, 'error.code'), 'PAYLOAD_TOO_LARGE');
          const list = await h.call('GET', '/api/v1/vaults');
          assert.equal(at(list, 'total'), 1);
        }),
      );

      it(
        'coerces querystrings to numbers, but not bodies',
        api(async (h) => {
          for (const n of ['a', 'b', 'c'])
            assert.equal((await h.call('POST', '/api/v1/vaults', { body: { name: n } })).status, 201);
          const page = await h.call('GET', '/api/v1/vaults?limit=2&offset=1');
          assert.equal(page.status, 200);
          assert.equal(atList(page, 'items').length, 2);
          assert.equal(at(page, 'total'), 4);
          const s = await h.call('POST', `${V}/sites`, { body: { name: 'p', kind: 'onprem' } });
          assert.equal(s.status, 201);
          const c = await h.call('GET', `${V}/sites/p/containers`);
          assert.equal(at(c, 'total'), 0);
          const pol = await h.call('POST', `${V}/policies`, { body: { name: 'p', compression: 'true' } });
          assert.equal(pol.status, 400);
        }),
      );
    });

    describe('vaults and sites', () => {
      it(
        'creates, reads, lists and deletes vaults; refuses a duplicate and a vault with sites',
        api(async (h) => {
          const c = await h.call('POST', '/api/v1/vaults', { body: { name: 'east' } });
          assert.equal(c.status, 201);
          assert.equal(at(c, 'name'), 'east');
          assert.equal(typeof at(c, 'id'), 'string');
          const dup = await h.call('POST', '/api/v1/vaults', { body: { name: 'east' } });
          assert.equal(dup.status, 409);
          assert.equal(at(dup, 'error.code'), 'ALREADY_EXISTS');
          assert.equal(at(await h.call('GET', '/api/v1/vaults/east'), 'id'), at(c, 'id'));
          assert.equal(at(await h.call('GET', `/api/v1/vaults/${atStr(c, 'id')}`), 'name'), 'east');
          const site = await h.call('POST', '/api/v1/vaults/east/sites', {
            body: { name: 's1', kind: 'cloud' },
          });
          assert.equal(site.status, 201);
          const inUse = await h.call('DELETE', '/api/v1/vaults/east');
          assert.equal(inUse.status, 409);
          assert.equal(at(inUse, 'error.code'), 'IN_USE');
          assert.equal((await h.call('DELETE', '/api/v1/vaults/east/sites/s1')).status, 204);
          assert.equal((await h.call('DELETE', '/api/v1/vaults/east')).status, 204);
          assert.equal((await h.call('GET', '/api/v1/vaults/east')).status, 404);
        }),
      );

      it(
        'creates, reads and lists sites by id or name',
        api(async (h) => {
          const a = await h.call('POST', `${V}/sites`, { body: { name: 'primary', kind: 'onprem' } });
          const b = await h.call('POST', `${V}/sites`, { body: { name: 'recovery', kind: 'cloud' } });
          assert.equal(a.status, 201);
          assert.equal(at(b, 'kind'), 'cloud');
          const list = await h.call('GET', `${V}/sites`);
          assert.equal(at(list, 'total'), 2);
          assert.deepEqual(
            atList(list, 'items')
              .map((s) => s.name)
              .sort(),
            ['primary', 'recovery'],
          );
          assert.equal(at(await h.call('GET', `${V}/sites/${atStr(a, 'id')}`), 'name'), 'primary');
          assert.equal(
            at(await h.call('GET', `/api/v1/vaults/${h.vaultId}/sites/recovery`), 'id'),
            at(b, 'id'),
          );
          assert.equal((await h.call('GET', `${V}/sites/nope`)).status, 404);
          const dup = await h.call('POST', `${V}/sites`, { body: { name: 'primary', kind: 'cloud' } });
          assert.equal(dup.status, 409);
        }),
      );

      it(
        'refuses to delete a site that protected items use',
        api(async (h) => {
          const world = await seedWorld(h.store, h.vaultId, 1, h.clock.now().toISOString());
          await seedItem(h.store, world, world.machines[0]!);
          const r = await h.call('DELETE', `${V}/sites/primary`);
          assert.equal(r.status, 409);
          assert.equal(at(r, 'error.code'), 'IN_USE');
          assert.equal((await h.call('GET', `${V}/sites/primary`)).status, 200);
        }),
      );

      it(
        'refuses to delete a site whose agent is connected, and deletes it once the agent is gone',
        api(async (h) => {
          const a = await registerAgent(h, 'p9');
          const hb = await h.call('POST', '/api/v1/agent/heartbeat', { token: a.credential, body: {} });
          assert.ok(hb.status < 300, JSON.stringify(at(hb, '')));
          const r = await h.call('DELETE', `${V}/sites/p9`);
          assert.equal(r.status, 409);
          assert.equal(at(r, 'error.code'), 'IN_USE');
          assert.match(atStr(r, 'error.message'), /connected agent/);
          assert.equal((await h.call('GET', `${V}/sites/p9`)).status, 200);
          h.clock.advance(HEARTBEAT_TIMEOUT_MS + 1);
          assert.equal((await h.call('DELETE', `${V}/sites/p9`)).status, 204);
          assert.equal((await h.call('GET', `${V}/sites/p9`)).status, 404);
        }),
      );
    });

    describe('registration keys and agents', () => {
      it(
        'issues a key file once, lists keys without secrets, deletes keys',
        api(async (h) => {
          await h.call('POST', `${V}/sites`, { body: { name: 'p', kind: 'onprem' } });
          const k = await h.call('POST', `${V}/sites/p/keys`);
          assert.equal(k.status, 201);
          assert.equal(at(k, 'keyFile.siteName'), 'p');
          assert.equal(at(k, 'keyFile.vaultId'), h.vaultId);
          assert.match(atStr(k, 'keyFile.key'), /^[A-Za-z0-9_-]{43}$/);
          assert.match(atStr(k, 'keyFile.server'), /^http:\/\//);
          assert.equal(Date.parse(atStr(k, 'expiresAt')) - h.clock.now().getTime(), 5 * 24 * 3600 * 1000);
          const list = await h.call('GET', `${V}/sites/p/keys`);
          assert.equal(at(list, 'total'), 1);
          assert.equal(at(list, 'items.0.id'), at(k, 'id'));
          assert.equal(at(list, 'items.0.expired'), false);
          const text = JSON.stringify(at(list, ''));
          assert.equal(text.includes(atStr(k, 'keyFile.key')), false);
          assert.equal(text.includes('secretHash'), false);
          assert.equal((await h.call('DELETE', `${V}/sites/p/keys/${atStr(k, 'id')}`)).status, 204);
          assert.equal((await h.call('DELETE', `${V}/sites/p/keys/${atStr(k, 'id')}`)).status, 404);
          const reg = await h.call('POST', '/api/v1/agent/register', {
            token: null,
            body: { key: at(k, 'keyFile.key'), friendlyName: 'a', version: '1' },
          });
          assert.equal(reg.status, 401);
          assert.equal(at(reg, 'error.code'), 'REGISTRATION_KEY_INVALID');
        }),
      );

      it(
        'registers an agent with a valid key, creates the default container, refuses unknown and expired keys',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          assert.match(a.credential, /^[A-Za-z0-9_-]{43}$/);
          const containers = await h.call('GET', `${V}/sites/p/containers`);
          assert.equal(at(containers, 'total'), 1);
          assert.equal(at(containers, 'items.0.name'), 'default');
          const agent = await h.call('GET', `${V}/agents/${a.agentId}`);
          assert.equal(agent.status, 200);
          assert.equal(at(agent, 'friendlyName'), 'p-agent');
          assert.equal(at(agent, 'connection'), 'Connected');
          assert.equal(at(agent, 'dataAddress'), '127.0.0.1:9443');
          assert.equal(JSON.stringify(at(agent, '')).includes('credential'), false);

          const unknown = await h.call('POST', '/api/v1/agent/register', {
            token: null,
            body: { key: 'A'.repeat(43), friendlyName: 'x', version: '1' },
          });
          assert.equal(unknown.status, 401);
          assert.equal(at(unknown, 'error.code'), 'REGISTRATION_KEY_INVALID');

          const k = await h.call('POST', `${V}/sites/p/keys`);
          h.clock.advance(5 * 24 * 3600 * 1000 - 1);
          const justValid = await h.call('POST', '/api/v1/agent/register', {
            token: null,
            body: { key: at(k, 'keyFile.key'), friendlyName: 'late', version: '1' },
          });
          assert.equal(justValid.status, 201);
          h.clock.advance(1);
          const expired = await h.call('POST', '/api/v1/agent/register', {
            token: null,
            body: { key: at(k, 'keyFile.key'), friendlyName: 'later', version: '1' },
          });
          assert.equal(expired.status, 401);
          assert.equal(at(expired, 'error.code'), 'REGISTRATION_KEY_EXPIRED');
          const keys = await h.call('GET', `${V}/sites/p/keys`);
          assert.equal(atList(keys, 'items').find((x) => x.id === at(k, 'id'))?.expired, true);
          const agents = await h.call('GET', `${V}/agents`);
          assert.equal(at(agents, 'total'), 2);
        }),
      );

      it(
        'shows an agent Disconnected after the heartbeat timeout and Connected again after a heartbeat',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          const hb = await h.call('POST', '/api/v1/agent/heartbeat', { token: a.credential, body: {} });
          assert.equal(hb.status, 200);
          assert.equal(at(hb, 'serverTime'), h.clock.now().toISOString());
          h.clock.advance(HEARTBEAT_TIMEOUT_MS);
          assert.equal(at(await h.call('GET', `${V}/agents/${a.agentId}`), 'connection'), 'Connected');
          h.clock.advance(1);
          const list = await h.call('GET', `${V}/agents`);
          assert.equal(at(list, 'items.0.connection'), 'Disconnected');
          await h.call('GET', `${V}/agents`);
          const events = await h.call('GET', `${V}/events?severity=Warning`);
          assert.equal(at(events, 'total'), 1, 'one Warning for one heartbeat gap');
          assert.equal(at(events, 'items.0.kind'), 'AgentDisconnected');
          const hb2 = await h.call('POST', '/api/v1/agent/heartbeat', {
            token: a.credential,
            body: { dataAddress: '127.0.0.1:9555' },
          });
          assert.equal(hb2.status, 200);
          const again = await h.call('GET', `${V}/agents/${a.agentId}`);
          assert.equal(at(again, 'connection'), 'Connected');
          assert.equal(at(again, 'lastHeartbeatAt'), h.clock.now().toISOString());
          assert.equal(at(again, 'dataAddress'), '127.0.0.1:9555');
          const bad = await h.call('POST', '/api/v1/agent/heartbeat', {
            token: a.credential,
            body: { x: 1 },
          });
          assert.equal(bad.status, 400);
        }),
      );

      it(
        'takes an inventory report and shows it through inventory, containers, networks and machines',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          const snap = snapshot(3);
          snap.containers.push({ name: 'web' });
          const first = snap.machines[0];
          if (first === undefined) throw new Error('no machine');
          first.container = 'web';
          const r = await h.call('PUT', '/api/v1/agent/inventory', { token: a.credential, body: snap });
          assert.equal(r.status, 200, JSON.stringify(at(r, '')));
          const inv = await h.call('GET', `${V}/sites/p/inventory`);
          assert.equal(inv.status, 200);
          assert.deepEqual(
            atList(inv, 'hosts').map((x) => x.name),
            ['h1'],
          );
          assert.equal(at(inv, 'hosts.0.memoryMb'), 65536);
          assert.deepEqual(at(inv, 'datastores.0.hostNames'), ['h1']);
          assert.equal(atList(inv, 'networks.0.subnets').length, 2);
          assert.deepEqual(
            atList(inv, 'containers')
              .map((c) => c.name)
              .sort(),
            ['default', 'web'],
          );
          const nets = await h.call('GET', `${V}/sites/p/networks`);
          assert.equal(at(nets, 'items.0.name'), 'lan');
          const machines = await h.call('GET', `${V}/machines?site=p`);
          assert.equal(at(machines, 'total'), 3);
          const inWeb = await h.call('GET', `${V}/machines?site=p&container=web`);
          assert.deepEqual(
            atList(inWeb, 'items').map((m) => m.name),
            ['vm0'],
          );
          const byPath = await h.call('GET', `${V}/machines?container=p/web`);
          assert.equal(at(byPath, 'total'), 1);
          const m = await h.call('GET', `${V}/machines/vm1`);
          assert.equal(m.status, 200);
          assert.equal(at(m, 'disks.0.id'), 'disk0');
          assert.equal(at(m, 'siteId'), a.siteId);
          assert.equal(at(await h.call('GET', `${V}/machines/${atStr(m, 'id')}`), 'name'), 'vm1');
          assert.equal((await h.call('GET', `${V}/machines/nope`)).status, 404);

          const bad = await h.call('PUT', '/api/v1/agent/inventory', {
            token: a.credential,
            body: { ...snapshot(1), machines: [{ name: 'x' }] },
          });
          assert.equal(bad.status, 400);
          assert.equal(
            at(await h.call('GET', `${V}/machines?site=p`), 'total'),
            3,
            'refused report wrote nothing',
          );

          // A drill's test machine on an isolated network is part of the site's inventory too.
          const drill = snapshot(3);
          drill.machines.push({
            ...first,
            name: 'vm0-test',
            origin: 'test-failover',
            nics: [{ network: null, subnet: null, ip: null, isolated: true }],
          });
          const withDrill = await h.call('PUT', '/api/v1/agent/inventory', {
            token: a.credential,
            body: drill,
          });
          assert.equal(withDrill.status, 200, JSON.stringify(at(withDrill, '')));
          const testMachine = await h.call('GET', `${V}/machines/vm0-test`);
          assert.equal(testMachine.status, 200);
          assert.deepEqual(at(testMachine, 'nics'), [
            { network: null, subnet: null, ip: null, isolated: true },
          ]);

          const web = atList(inv, 'containers').find((c) => c.name === 'web');
          const webId = String(web?.id);
          const patched = await h.call('PATCH', `${V}/containers/${webId}`, { body: { synced: false } });
          assert.equal(patched.status, 200);
          assert.equal(at(patched, 'synced'), false);
          const byName = await h.call('PATCH', `${V}/containers/p%2Fweb`, { body: { synced: true } });
          assert.equal(at(byName, 'synced'), true);
          assert.equal(
            (await h.call('PATCH', `${V}/containers/${webId}`, { body: { synced: 'no' } })).status,
            400,
          );
        }),
      );
    });

    describe('command channel', () => {
      it(
        'returns empty after waitMs, and at once when a command is enqueued during the wait',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          const empty = await h.call('GET', '/api/v1/agent/commands?waitMs=0', { token: a.credential });
          assert.equal(empty.status, 200);
          assert.deepEqual(at(empty, 'commands'), []);
          const t0 = Date.now();
          const timedOut = await h.call('GET', '/api/v1/agent/commands?waitMs=150', { token: a.credential });
          assert.deepEqual(at(timedOut, 'commands'), []);
          assert.ok(Date.now() - t0 >= 140, 'waited about waitMs');

          const started = Date.now();
          const poll = h.call('GET', '/api/v1/agent/commands?waitMs=20000', { token: a.credential });
          // Enqueue once the poll is waiting; it must answer long before its 20 s.
          await new Promise((r) => setTimeout(r, 50));
          const sent = await h.channel.send(a.agentId, 'replica.prepare', { disk: 'disk0' }, 'cmd-1');
          const got = await poll;
          assert.ok(Date.now() - started < 5000, 'woken by the enqueue');
          assert.deepEqual(at(got, 'commands'), [
            { id: 'cmd-1', type: 'replica.prepare', payload: { disk: 'disk0' } },
          ]);
          assert.equal(sent.id, 'cmd-1');
        }),
      );

      it(
        'delivers a command once per session and again to a new session',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          await h.channel.send(a.agentId, 't', { n: 1 }, 'c1');
          const s1 = await h.call('GET', '/api/v1/agent/commands?waitMs=0&session=s1', {
            token: a.credential,
          });
          assert.deepEqual(
            atList(s1, 'commands').map((c) => c.id),
            ['c1'],
          );
          const s1again = await h.call('GET', '/api/v1/agent/commands?waitMs=0&session=s1', {
            token: a.credential,
          });
          assert.deepEqual(at(s1again, 'commands'), []);
          const s2 = await h.call('GET', '/api/v1/agent/commands?waitMs=0&session=s2', {
            token: a.credential,
          });
          assert.deepEqual(
            atList(s2, 'commands').map((c) => c.id),
            ['c1'],
            'redelivered after restart',
          );
          const other = await registerAgent(h, 'q');
          const none = await h.call('GET', '/api/v1/agent/commands?waitMs=0', { token: other.credential });
          assert.deepEqual(at(none, 'commands'), [], 'commands are per agent');
        }),
      );

      it(
        'records a result once (idempotent by id) and hands it to the workflows once',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          await h.channel.send(a.agentId, 't', {}, 'c1');
          await h.call('GET', '/api/v1/agent/commands?waitMs=0', { token: a.credential });
          const r1 = await h.call('POST', '/api/v1/agent/commands/c1/result', {
            token: a.credential,
            body: { state: 'Succeeded', result: { bytes: 10 } },
          });
          assert.equal(r1.status, 200);
          assert.deepEqual(at(r1, ''), { id: 'c1', state: 'Succeeded', duplicate: false });
          const r2 = await h.call('POST', '/api/v1/agent/commands/c1/result', {
            token: a.credential,
            body: { state: 'Failed', error: { code: 'INTERNAL', message: 'late' } },
          });
          assert.equal(r2.status, 200);
          assert.deepEqual(at(r2, ''), { id: 'c1', state: 'Succeeded', duplicate: true });
          const stored = await h.store.commands.find('c1');
          assert.equal(stored?.state, 'Succeeded');
          assert.deepEqual(stored?.result, { bytes: 10 });
          assert.equal(h.workflows.calls.filter((c) => c.method === 'onAgentCommandResult').length, 1);
          const after = await h.call('GET', '/api/v1/agent/commands?waitMs=0', { token: a.credential });
          assert.deepEqual(at(after, 'commands'), [], 'completed commands are not redelivered');

          await h.channel.send(a.agentId, 't', {}, 'c2');
          const failed = await h.call('POST', '/api/v1/agent/commands/c2/result', {
            token: a.credential,
            body: {
              state: 'Failed',
              error: { code: 'TARGET_HOST_OUT_OF_MEMORY', message: 'no memory', seedCode: 8038 },
            },
          });
          assert.equal(failed.status, 200);
          const c2 = await h.store.commands.find('c2');
          assert.equal(c2?.error?.code, 'TARGET_HOST_OUT_OF_MEMORY');
          assert.equal(c2?.error?.seedCode, 8038);

          const other = await registerAgent(h, 'q');
          await h.channel.send(a.agentId, 't', {}, 'c3');
          const foreign = await h.call('POST', '/api/v1/agent/commands/c3/result', {
            token: other.credential,
            body: { state: 'Succeeded' },
          });
          assert.equal(foreign.status, 404);
          assert.equal((await h.store.commands.find('c3'))?.state, 'Pending');
          const badState = await h.call('POST', '/api/v1/agent/commands/c3/result', {
            token: a.credential,
            body: { state: 'Done' },
          });
          assert.equal(badState.status, 400);
        }),
      );

      it(
        'records the points of known items when a status report also names an item the control plane no longer knows',
        api(async (h) => {
          const world = await seedWorld(h.store, h.vaultId, 1, h.clock.now().toISOString());
          const machine = world.machines[0];
          if (machine === undefined) throw new Error('no machine');
          const item = await seedItem(h.store, world, machine);
          const key = await h.call('POST', `${V}/sites/recovery/keys`, { body: {} });
          const agent = await h.call('POST', '/api/v1/agent/register', {
            token: null,
            body: { key: at(key, 'keyFile.key'), friendlyName: 'recovery-agent', version: '0.1.0' },
          });
          const point = { sequence: 7, time: h.clock.now().toISOString(), type: 'crash-consistent' };
          const r = await h.call('POST', '/api/v1/agent/replication-status', {
            token: atStr(agent, 'credential'),
            body: {
              items: [
                { itemId: 'deleted-item', initialReplicationProgress: 100 },
                { itemId: item.id, initialReplicationProgress: 100, points: [point] },
              ],
            },
          });
          assert.equal(r.status, 200, JSON.stringify(at(r, '')));
          assert.deepEqual(
            atList(r, 'rejected').map((x) => [x.itemId, x.code]),
            [['deleted-item', 'NOT_FOUND']],
          );
          const points = await h.store.points.list(item.id, { limit: 10 });
          assert.deepEqual(
            points.items.map((p) => p.sequence),
            [7],
            'the known item’s point is recorded',
          );
        }),
      );

      it(
        'passes replication status reports to the workflows and finds peers',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          const b = await registerAgent(h, 'r', 'cloud');
          const report = {
            items: [
              {
                itemId: 'i1',
                rpoSeconds: 30,
                lagSeconds: 1,
                lagBytes: 10,
                backlogBytes: 0,
                throughputBps: 1000,
                compressionRatio: 2,
                health: 'Normal',
                healthReason: null,
                initialReplicationProgress: 100,
                resyncRequired: false,
                points: [{ sequence: 5, time: '2030-01-01T00:00:00.000Z', type: 'crash-consistent' }],
              },
            ],
          };
          const r = await h.call('POST', '/api/v1/agent/replication-status', {
            token: b.credential,
            body: report,
          });
          assert.equal(r.status, 200);
          const call = h.workflows.calls.find((c) => c.method === 'onReplicationStatus');
          assert.deepEqual(call?.args, [b.agentId, report]);
          const bad = await h.call('POST', '/api/v1/agent/replication-status', {
            token: b.credential,
            body: { items: [{ ...report.items[0], health: 'Great' }] },
          });
          assert.equal(bad.status, 400);
          assert.deepEqual(at(r, 'rejected'), [
            { itemId: 'i1', code: 'NOT_FOUND', message: "protected item 'i1' not found" },
          ]);
          const peer = await h.call('GET', `/api/v1/agent/peers/${b.siteId}`, { token: a.credential });
          assert.equal(peer.status, 200);
          assert.equal(at(peer, 'agentId'), b.agentId);
          assert.equal(at(peer, 'dataAddress'), '127.0.0.1:9443');
          await h.call('POST', `${V}/sites`, { body: { name: 'empty', kind: 'onprem' } });
          const none = await h.call('GET', '/api/v1/agent/peers/empty', { token: a.credential });
          assert.equal(none.status, 503);
          assert.equal(at(none, 'error.code'), 'AGENT_NOT_REGISTERED');
        }),
      );
    });

    describe('policies and networks', () => {
      it(
        'creates policies with defaults, refuses invalid ones with POLICY_INVALID, patches and deletes',
        api(async (h) => {
          const p = await h.call('POST', `${V}/policies`, {
            body: { name: 'gold', copyFrequencySeconds: '30s' },
          });
          assert.equal(p.status, 201, JSON.stringify(at(p, '')));
          assert.equal(at(p, 'copyFrequencySeconds'), 30);
          assert.equal(at(p, 'retentionHours'), 24);
          assert.equal(at(p, 'compression'), true);
          const bad = await h.call('POST', `${V}/policies`, {
            body: { name: 'bad', copyFrequencySeconds: 60 },
          });
          assert.equal(bad.status, 400);
          assert.equal(at(bad, 'error.code'), 'POLICY_INVALID');
          const badApp = await h.call('POST', `${V}/policies`, {
            body: { name: 'bad', retentionHours: 2, appConsistentFrequencyHours: 4 },
          });
          assert.equal(at(badApp, 'error.code'), 'POLICY_INVALID');
          assert.equal(
            at(await h.call('GET', `${V}/policies`), 'total'),
            1,
            'refused policies were not written',
          );
          const patched = await h.call('PATCH', `${V}/policies/gold`, { body: { retentionHours: 48 } });
          assert.equal(patched.status, 200);
          assert.equal(at(patched, 'retentionHours'), 48);
          assert.equal(at(patched, 'copyFrequencySeconds'), 30);
          const badPatch = await h.call('PATCH', `${V}/policies/gold`, {
            body: { appConsistentFrequencyHours: 13 },
          });
          assert.equal(badPatch.status, 400);
          assert.equal(at(await h.call('GET', `${V}/policies/gold`), 'appConsistentFrequencyHours'), 4);
          assert.equal((await h.call('DELETE', `${V}/policies/gold`)).status, 204);
          assert.equal((await h.call('GET', `${V}/policies/gold`)).status, 404);
        }),
      );

      it(
        'associates a policy with containers and refuses to delete a policy in use',
        api(async (h) => {
          await h.call('POST', `${V}/policies`, { body: { name: 'gold' } });
          await registerAgent(h, 'p');
          await registerAgent(h, 'r', 'cloud');
          const a = await h.call('POST', `${V}/policies/gold/associations`, {
            body: { sourceContainer: 'p/default', targetContainer: 'r/default' },
          });
          assert.equal(a.status, 201, JSON.stringify(at(a, '')));
          const dup = await h.call('POST', `${V}/policies/gold/associations`, {
            body: { sourceContainer: 'p/default', targetContainer: 'r/default' },
          });
          assert.equal(dup.status, 409);
          const same = await h.call('POST', `${V}/policies/gold/associations`, {
            body: { sourceContainer: 'p/default', targetContainer: 'p/default' },
          });
          assert.equal(same.status, 400);
          const ambiguous = await h.call('POST', `${V}/policies/gold/associations`, {
            body: { sourceContainer: 'default', targetContainer: 'r/default' },
          });
          assert.equal(ambiguous.status, 400);
          const list = await h.call('GET', `${V}/policies/gold/associations`);
          assert.equal(at(list, 'total'), 1);
          const inUse = await h.call('DELETE', `${V}/policies/gold`);
          assert.equal(inUse.status, 409);
          assert.equal(at(inUse, 'error.code'), 'IN_USE');
          assert.equal(
            (await h.call('DELETE', `${V}/policies/gold/associations/${atStr(a, 'id')}`)).status,
            204,
          );
          assert.equal((await h.call('DELETE', `${V}/policies/gold`)).status, 204);
        }),
      );

      it(
        'maps networks, refuses a second mapping of one source, changes and deletes mappings',
        api(async (h) => {
          const a = await registerAgent(h, 'p');
          const b = await registerAgent(h, 'r', 'cloud');
          await h.call('PUT', '/api/v1/agent/inventory', { token: a.credential, body: snapshot(0) });
          const rs = snapshot(0);
          rs.networks.push({ name: 'dr', subnets: [{ name: 'front', cidr: '10.9.1.0/24' }] });
          await h.call('PUT', '/api/v1/agent/inventory', { token: b.credential, body: rs });
          const body = { sourceSite: 'p', sourceNetwork: 'lan', targetSite: 'r', targetNetwork: 'lan' };
          const m = await h.call('POST', `${V}/network-mappings`, { body });
          assert.equal(m.status, 201, JSON.stringify(at(m, '')));
          assert.equal(at(m, 'sourceNetwork'), 'lan');
          assert.equal(at(m, 'targetSite'), 'r');
          const dup = await h.call('POST', `${V}/network-mappings`, { body });
          assert.equal(dup.status, 409);
          const missing = await h.call('POST', `${V}/network-mappings`, {
            body: { ...body, targetNetwork: 'nope' },
          });
          assert.equal(missing.status, 404);
          const patched = await h.call('PATCH', `${V}/network-mappings/${atStr(m, 'id')}`, {
            body: { targetNetwork: 'dr' },
          });
          assert.equal(patched.status, 200);
          assert.equal(at(patched, 'targetNetwork'), 'dr');
          const list = await h.call('GET', `${V}/network-mappings`);
          assert.equal(at(list, 'total'), 1);
          assert.equal(at(list, 'items.0.targetNetwork'), 'dr');
          assert.equal((await h.call('DELETE', `${V}/network-mappings/${atStr(m, 'id')}`)).status, 204);
          assert.equal((await h.call('GET', `${V}/network-mappings/${atStr(m, 'id')}`)).status, 404);
        }),
      );
    });

    describe('protected items', () => {
      it(
        'enables protection with 202, a job and a Location header',
        api(async (h) => {
          await seedWorld(h.store, h.vaultId, 2, h.clock.now().toISOString());
          const r = await h.call('POST', `${V}/items`, {
            body: { machine: 'vm0', policy: 'gold', targetSite: 'recovery', settings: { cpus: 4 } },
          });
          assert.equal(r.status, 202, JSON.stringify(at(r, '')));
          assert.equal(r.headers.location, `/api/v1/jobs/${atStr(r, 'job.id')}`);
          assert.equal(at(r, 'item.name'), 'vm0');
          assert.equal(at(r, 'item.failoverSettings.cpus'), 4);
          const job = await h.call('GET', `/api/v1/jobs/${atStr(r, 'job.id')}`);
          assert.equal(job.status, 200);
          const bad = await h.call('POST', `${V}/items`, {
            body: { machine: 'vm1', policy: 'gold', targetSite: 'recovery', settings: { cpus: 'four' } },
          });
          assert.equal(bad.status, 400);
          assert.equal(
            h.workflows.calls.filter((c) => c.method === 'protect').length,
            1,
            'refused before workflows',
          );
        }),
      );

      it(
        'lists items with state and health filters and shows one with its view',
        api(async (h) => {
          const world = await seedWorld(h.store, h.vaultId, 3, h.clock.now().toISOString());
          const items = [];
          for (const m of world.machines) items.push(await seedItem(h.store, world, m));
          await h.store.items.update(items[0]!.id, {
            protectionState: 'FailedOver',
            replicationHealth: 'Critical',
          });
          const all = await h.call('GET', `${V}/items?limit=2`);
          assert.equal(at(all, 'total'), 3);
          assert.equal(atList(all, 'items').length, 2);
          const failed = await h.call('GET', `${V}/items?state=FailedOver,Unprotected`);
          assert.deepEqual(
            atList(failed, 'items').map((i) => i.name),
            ['vm0'],
          );
          const repeated = await h.call('GET', `${V}/items?state=Protected&state=FailedOver`);
          assert.equal(at(repeated, 'total'), 3);
          const critical = await h.call('GET', `${V}/items?health=Critical`);
          assert.equal(at(critical, 'total'), 1);
          assert.equal((await h.call('GET', `${V}/items?state=Bogus`)).status, 400);
          const one = await h.call('GET', `${V}/items/vm1`);
          assert.equal(one.status, 200);
          assert.deepEqual(at(one, 'allowedOperations'), ['TestFailover', 'DisableProtection']);
          assert.equal(at(one, 'disks.0.nbdUri'), 'nbd://127.0.0.1:10809/x');
          assert.equal(at(one, 'pointCount'), 0, 'extra view fields pass through');
          const settings = await h.call('PATCH', `${V}/items/vm1/settings`, {
            body: { ip: '10.0.1.5', subnet: 'front' },
          });
          assert.equal(settings.status, 200);
          assert.equal(at(settings, 'failoverSettings.ip'), '10.0.1.5');
          assert.equal(
            (await h.call('PATCH', `${V}/items/vm1/settings`, { body: { colour: 1 } })).status,
            400,
          );

          await h.store.points.add({
            itemId: items[1]!.id,
            time: '2030-01-01T00:00:00.000Z',
            type: 'crash-consistent',
            sequence: 1,
            groupPointId: null,
          });
          await h.store.points.add({
            itemId: items[1]!.id,
            time: '2030-01-01T00:05:00.000Z',
            type: 'app-consistent',
            sequence: 2,
            groupPointId: null,
          });
          const points = await h.call('GET', `${V}/items/vm1/points`);
          assert.equal(at(points, 'total'), 2);
          const app = await h.call('GET', `${V}/items/vm1/points?type=app-consistent`);
          assert.deepEqual(
            atList(app, 'items').map((p) => p.sequence),
            [2],
          );
        }),
      );

      it(
        'starts operations with 202 and refuses disallowed ones with 409 OPERATION_NOT_ALLOWED',
        api(async (h) => {
          const world = await seedWorld(h.store, h.vaultId, 1, h.clock.now().toISOString());
          await seedItem(h.store, world, world.machines[0]!);
          const ops: [string, unknown, string][] = [
            ['test-failover', { point: 'latest', network: 'isolated' }, 'TestFailover'],
            ['test-failover-cleanup', { notes: 'fine' }, 'TestFailoverCleanup'],
            ['planned-failover', {}, 'PlannedFailover'],
            ['unplanned-failover', { point: 'latest-processed', shutdownSource: true }, 'UnplannedFailover'],
            ['change-point', { point: '2030-01-01T00:00:00Z' }, 'ChangePit'],
            ['commit', {}, 'Commit'],
            ['cancel-failover', {}, 'CancelFailover'],
            ['reprotect', { location: 'alternate', host: 'h1', datastore: 'ds1' }, 'ReverseReplicate'],
            ['repair', undefined, 'RepairReplication'],
            ['unprotect', { deleteReplica: true }, 'DisableProtection'],
          ];
          for (const [path, body, op] of ops) {
            const r = await h.call('POST', `${V}/items/vm0/${path}`, body === undefined ? {} : { body });
            assert.equal(r.status, 202, `${path}: ${JSON.stringify(at(r, ''))}`);
            assert.equal(r.headers.location, `/api/v1/jobs/${atStr(r, 'job.id')}`);
            const call = h.workflows.calls.at(-1);
            assert.equal(call?.args[2], op);
            assert.deepEqual(call?.args[3], body ?? {});
          }
          const noPoint = await h.call('POST', `${V}/items/vm0/change-point`, { body: {} });
          assert.equal(noPoint.status, 400);
          const unknownField = await h.call('POST', `${V}/items/vm0/commit`, { body: { force: true } });
          assert.equal(unknownField.status, 400);
          const { OsrError } = await import('../../src/domain/errors.js');
          h.workflows.refuseNext = new OsrError('OPERATION_NOT_ALLOWED', 'not now', {
            details: { allowedOperations: ['TestFailover'] },
          });
          const refused = await h.call('POST', `${V}/items/vm0/commit`, { body: {} });
          assert.equal(refused.status, 409);
          assert.equal(at(refused, 'error.code'), 'OPERATION_NOT_ALLOWED');
          assert.deepEqual(at(refused, 'error.details'), { allowedOperations: ['TestFailover'] });
          const preview = await h.call('POST', `${V}/items/vm0/reprotect`, { body: { preview: true } });
          assert.equal(preview.status, 200);
          assert.equal(at(preview, 'creates.0.label'), 'web (new)');
          assert.equal((await h.call('POST', `${V}/items/nope/commit`, { body: {} })).status, 404);
        }),
      );
    });

    describe('jobs', () => {
      it(
        'lists jobs with filters, shows one, resumes a waiting job and cancels with the right refusals',
        api(async (h) => {
          const submit = (type: string, targetId = 't1') =>
            h.engine.submit({
              type,
              vaultId: h.vaultId,
              targetKind: 'item',
              targetId,
              targetName: targetId,
              input: {},
            });
          const waiting = await submit('test.wait');
          await h.engine.waitFor(waiting.id, (j) => j.state === 'WaitingForAction', 5000);
          const done = await submit('test.noop', 't2');
          await h.engine.waitFor(done.id, undefined, 5000);
          const fixed = await submit('test.fixed', 't3');
          await h.engine.waitFor(fixed.id, (j) => j.state === 'WaitingForAction', 5000);

          const all = await h.call('GET', '/api/v1/jobs');
          assert.equal(at(all, 'total'), 3);
          const byState = await h.call('GET', '/api/v1/jobs?state=WaitingForAction');
          assert.equal(at(byState, 'total'), 2);
          const byStates = await h.call('GET', '/api/v1/jobs?state=Succeeded,WaitingForAction');
          assert.equal(at(byStates, 'total'), 3);
          const repeated = await h.call('GET', '/api/v1/jobs?state=Succeeded&state=Failed');
          assert.equal(at(repeated, 'total'), 1);
          assert.equal(at(await h.call('GET', '/api/v1/jobs?type=test.noop'), 'items.0.id'), done.id);
          assert.equal(at(await h.call('GET', '/api/v1/jobs?target=t3'), 'items.0.id'), fixed.id);
          assert.equal(atList(await h.call('GET', '/api/v1/jobs?vault=default&limit=1'), 'items').length, 1);
          assert.equal(at(await h.call('GET', '/api/v1/jobs?since=2031-01-01T00:00:00Z'), 'total'), 0);
          assert.equal(at(await h.call('GET', '/api/v1/jobs?until=2031-01-01T00:00:00Z'), 'total'), 3);
          assert.equal((await h.call('GET', '/api/v1/jobs?state=Sleeping')).status, 400);
          assert.equal((await h.call('GET', '/api/v1/jobs?since=yesterday')).status, 400);

          const shown = await h.call('GET', `/api/v1/jobs/${waiting.id}`);
          assert.equal(at(shown, 'state'), 'WaitingForAction');
          assert.equal(at(shown, 'steps.0.name'), 'confirm');
          assert.equal(at(shown, 'waiting.name'), 'confirm');
          assert.equal((await h.call('GET', '/api/v1/jobs/nope')).status, 404);

          const notWaiting = await h.call('POST', `/api/v1/jobs/${done.id}/resume`, {
            body: { comment: 'x' },
          });
          assert.equal(notWaiting.status, 409);
          assert.equal(at(notWaiting, 'error.code'), 'JOB_NOT_WAITING');
          assert.equal((await h.call('POST', `/api/v1/jobs/${waiting.id}/resume`, { body: {} })).status, 400);
          const resumed = await h.call('POST', `/api/v1/jobs/${waiting.id}/resume`, {
            body: { comment: 'go' },
          });
          assert.equal(resumed.status, 200);
          const end = await h.engine.waitFor(waiting.id, undefined, 5000);
          assert.equal(end.state, 'Succeeded');
          assert.equal(end.comments[0]?.text, 'go');

          const ended = await h.call('POST', `/api/v1/jobs/${done.id}/cancel`, { body: {} });
          assert.equal(ended.status, 409);
          assert.equal(at(ended, 'error.code'), 'JOB_NOT_CANCELLABLE');
          const notCancellable = await h.call('POST', `/api/v1/jobs/${fixed.id}/cancel`);
          assert.equal(notCancellable.status, 409);
          assert.equal(at(notCancellable, 'error.code'), 'JOB_NOT_CANCELLABLE');
          const forced = await h.call('POST', `/api/v1/jobs/${fixed.id}/cancel`, { body: { force: true } });
          assert.equal(forced.status, 200, JSON.stringify(at(forced, '')));
          assert.equal((await h.engine.waitFor(fixed.id, undefined, 5000)).state, 'Cancelled');
        }),
      );
    });

    describe('plans, groups and events', () => {
      it(
        'creates, changes and deletes recovery plans and replication groups',
        api(async (h) => {
          const world = await seedWorld(h.store, h.vaultId, 3, h.clock.now().toISOString());
          const items = [];
          for (const m of world.machines) items.push(await seedItem(h.store, world, m));
          const plan = await h.call('POST', `${V}/plans`, {
            body: {
              name: 'web-tier',
              groups: [
                {
                  items: ['vm0', items[1]!.id],
                  before: [],
                  after: [{ kind: 'manual', name: 'check', instructions: 'look' }],
                },
                { items: ['vm2'] },
              ],
            },
          });
          assert.equal(plan.status, 201, JSON.stringify(at(plan, '')));
          assert.deepEqual(at(plan, 'groups.0.itemIds'), [items[0]!.id, items[1]!.id]);
          assert.equal(at(plan, 'groups.0.after.0.kind'), 'manual');
          assert.deepEqual(at(plan, 'groups.1.before'), []);
          const dupItem = await h.call('POST', `${V}/plans`, {
            body: { name: 'x', groups: [{ items: ['vm0'] }, { items: ['vm0'] }] },
          });
          assert.equal(dupItem.status, 400);
          const missing = await h.call('POST', `${V}/plans`, {
            body: { name: 'x', groups: [{ items: ['nope'] }] },
          });
          assert.equal(missing.status, 404);
          const badAction = await h.call('POST', `${V}/plans`, {
            body: { name: 'x', groups: [{ items: ['vm0'], before: [{ kind: 'script', name: 's' }] }] },
          });
          assert.equal(badAction.status, 400);
          assert.equal(at(await h.call('GET', `${V}/plans`), 'total'), 1);
          const patched = await h.call('PATCH', `${V}/plans/web-tier`, {
            body: { name: 'web', groups: [{ items: ['vm2'] }] },
          });
          assert.equal(patched.status, 200);
          assert.equal(at(patched, 'name'), 'web');
          assert.deepEqual(at(patched, 'groups.0.itemIds'), [items[2]!.id]);
          assert.equal(at(await h.call('GET', `${V}/plans/${atStr(plan, 'id')}`), 'name'), 'web');
          assert.equal((await h.call('DELETE', `${V}/plans/web`)).status, 204);
          assert.equal((await h.call('GET', `${V}/plans/web`)).status, 404);

          const g = await h.call('POST', `${V}/replication-groups`, { body: { name: 'db' } });
          assert.equal(g.status, 201);
          assert.equal(at(await h.call('GET', `${V}/replication-groups`), 'total'), 1);
          await h.store.items.update(items[0]!.id, { replicationGroupId: atStr(g, 'id') });
          const inGroup = await h.call('GET', `${V}/items?group=db`);
          assert.equal(at(inGroup, 'total'), 1);
          const inUse = await h.call('DELETE', `${V}/replication-groups/${atStr(g, 'id')}`);
          assert.equal(inUse.status, 409);
          await h.store.items.update(items[0]!.id, { replicationGroupId: null });
          assert.equal((await h.call('DELETE', `${V}/replication-groups/${atStr(g, 'id')}`)).status, 204);
        }),
      );

      it(
        'lists events with since and severity filters',
        api(async (h) => {
          const add = (severity: 'Info' | 'Warning', time: string) =>
            h.store.events.add({
              vaultId: h.vaultId,
              severity,
              kind: 'Test',
              targetId: null,
              message: 'm',
              time,
            });
          await add('Info', '2030-01-01T00:00:00.000Z');
          await add('Warning', '2030-01-02T00:00:00.000Z');
          await add('Info', '2030-01-03T00:00:00.000Z');
          assert.equal(at(await h.call('GET', `${V}/events`), 'total'), 3);
          assert.equal(at(await h.call('GET', `${V}/events?severity=Info`), 'total'), 2);
          assert.equal(at(await h.call('GET', `${V}/events?since=2030-01-02T00:00:00.000Z`), 'total'), 2);
          assert.equal((await h.call('GET', `${V}/events?severity=Loud`)).status, 400);
        }),
      );
    });
  });
}
