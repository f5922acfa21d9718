/**
 * The site-to-site stream between real agents (R-POL-7): the recovery agent receives on the policy's
 * replication port; a peer with a certificate of another CA, or with a wrong token, is refused with a clear error
 * in the item's health and nothing reaches the replica; a port in use fails the job clearly without taking the
 * agent down; and the source follows a recovery agent that comes back at another address, without Repair.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { loopbackHostFor } from '../../src/cli/up-plan.js';
import { startWorld, waitUntil } from './harness.js';
import type { World } from './harness.js';
import {
  endedAfterEachTest,
  protectWeb,
  restartAgent,
  startSites,
  waitProtected,
} from './replication-support.js';
import type { ItemView, Sites } from './replication-support.js';

const { worlds, recorders } = endedAfterEachTest();

async function setUp(): Promise<{ w: World; s: Sites }> {
  const w = await startWorld();
  worlds.push(w);
  const s = await startSites(w, ['--point-interval', '1000']);
  recorders.push(s.recorder);
  return { w, s };
}

/** A port free on `host` now. */
async function freePort(host: string): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, host, r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, host, () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

async function item(w: World, id: string): Promise<ItemView> {
  return (await w.api<ItemView>('GET', `/vaults/default/items/${id}`)).body;
}

/** Every file of the item's replica store with its size and modification time. */
function replicaFiles(s: Sites, itemId: string): string {
  const root = join(s.recoveryData, 'replicas', itemId, 'store');
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else out.push(`${p.slice(root.length)} ${st.size} ${st.mtimeMs}`);
    }
  };
  walk(root);
  return out.join('\n');
}

/** Waits for the item's health to be Critical for `code`; then checks the replica does not change for 3 s. */
async function assertRefused(w: World, s: Sites, itemId: string, code: string): Promise<string> {
  let last: ItemView | undefined;
  const reason = await waitUntil(
    `the item's health to report ${code}`,
    async () => {
      const v = (last = await item(w, itemId));
      return v.replicationHealth === 'Critical' && (v.healthReason ?? '').includes(code)
        ? v.healthReason
        : undefined;
    },
    60_000,
  ).catch((err: unknown) => {
    const logs = `${s.primary.err().slice(-3000)}\n--- recovery ---\n${s.recovery.err().slice(-3000)}`;
    throw new Error(`${(err as Error).message}; the item: ${JSON.stringify(last)}\n${logs}`, { cause: err });
  });
  // The source keeps writing (the ledger) and retrying; the replica must not move.
  const before = replicaFiles(s, itemId);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(replicaFiles(s, itemId), before, 'nothing was written to the replica');
  assert.equal((await item(w, itemId)).replicationHealth, 'Critical');
  return reason ?? '';
}

function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `openssl ${args[0]}: ${r.stderr}`);
}

void test(
  'the recovery agent receives on the policy port; a recovery agent whose certificate is of another CA is refused',
  { timeout: 240_000 },
  async () => {
    const { w, s } = await setUp();
    const host = loopbackHostFor(s.recoveryData);
    const port = await freePort(host);
    const itemId = await protectWeb(w, { replicationPort: port });
    await waitProtected(w, itemId);
    assert.ok(await canConnect(host, port), `the recovery agent listens on ${host}:${port}`);

    // The recovery agent comes back with a certificate for its own id and key, made by another CA it trusts.
    await s.recovery.stop();
    const tls = join(s.recoveryData, 'tls');
    const agentId = (
      JSON.parse(readFileSync(join(s.recoveryData, 'credential.json'), 'utf8')) as { agentId: string }
    ).agentId;
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    openssl([
      'req',
      '-x509',
      ...ec,
      '-keyout',
      join(w.tmp, 'rogue.key'),
      '-out',
      join(tls, 'ca.pem'),
      '-days',
      '2',
      '-subj',
      '/CN=rogue CA',
    ]);
    openssl([
      'req',
      '-new',
      '-key',
      join(tls, 'key.pem'),
      '-out',
      join(w.tmp, 'r.csr'),
      '-subj',
      `/CN=${agentId}`,
    ]);
    writeFileSync(
      join(w.tmp, 'r.ext'),
      `subjectAltName=URI:urn:osr:agent:${agentId}\nextendedKeyUsage=serverAuth,clientAuth\n`,
    );
    openssl([
      'x509',
      '-req',
      '-in',
      join(w.tmp, 'r.csr'),
      '-CA',
      join(tls, 'ca.pem'),
      '-CAkey',
      join(w.tmp, 'rogue.key'),
      '-set_serial',
      '7',
      '-days',
      '2',
      '-out',
      join(tls, 'cert.pem'),
      '-extfile',
      join(w.tmp, 'r.ext'),
    ]);
    s.recovery = await restartAgent(w, s, 'recovery');
    const reason = await assertRefused(w, s, itemId, 'PEER_CERTIFICATE_UNTRUSTED');
    assert.match(reason, /receiver's certificate is issued by another CA/);
  },
);

void test(
  'token authentication: the shared secret protects the item; a wrong secret is refused',
  { timeout: 240_000 },
  async () => {
    const { w, s } = await setUp();
    const port = await freePort(loopbackHostFor(s.recoveryData));
    const itemId = await protectWeb(w, { authentication: 'token', replicationPort: port });
    await waitProtected(w, itemId);
    const file = join(s.recoveryData, 'replicas', itemId, 'replica.json');
    const replica = JSON.parse(readFileSync(file, 'utf8')) as { auth: { mode: string; token: string } };
    assert.equal(replica.auth.mode, 'token');
    assert.match(replica.auth.token, /^[A-Za-z0-9_-]{43}$/);
    const commands = readFileSync(join(s.recoveryData, 'commands.jsonl'), 'utf8');
    assert.equal(commands.includes(replica.auth.token), false, 'the token is not in the agent’s command log');

    await s.recovery.stop();
    writeFileSync(file, JSON.stringify({ ...replica, auth: { mode: 'token', token: 'W'.repeat(43) } }));
    s.recovery = await restartAgent(w, s, 'recovery');
    const reason = await assertRefused(w, s, itemId, 'TOKEN_REJECTED');
    assert.match(reason, /replication token/);
  },
);

void test(
  'a replication port in use fails protection clearly and the agent keeps running; Repair works once it is free; the source follows a moved recovery agent',
  { timeout: 300_000 },
  async () => {
    const { w, s } = await setUp();
    const host = loopbackHostFor(s.recoveryData);
    const port = await freePort(host);
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(port, host, r));
    const itemId = await protectWeb(w, { replicationPort: port });
    const failed = await waitUntil(
      'the item to need repair',
      async () => {
        const v = await item(w, itemId);
        return v.protectionState === 'NeedsRepair' ? v : undefined;
      },
      90_000,
    );
    assert.match(failed.healthReason ?? '', new RegExp(`${host}:${port} is already in use`));
    const jobs = await w.api<{ items: { type: string; state: string; error: { code: string } | null }[] }>(
      'GET',
      `/jobs?target=${itemId}`,
    );
    assert.ok(
      jobs.body.items.some((j) => j.state === 'Failed' && j.error?.code === 'REPLICATION_PORT_IN_USE'),
      JSON.stringify(jobs.body),
    );
    assert.equal(s.recovery.child.exitCode, null, 'the recovery agent still runs');
    assert.ok((await w.agents()).every((a) => a.connection === 'Connected'));

    await new Promise<void>((r) => blocker.close(() => r()));
    const repair = await w.api('POST', `/vaults/default/items/${itemId}/repair`, {});
    assert.ok(repair.status < 300, JSON.stringify(repair.body));
    await waitProtected(w, itemId);

    // The recovery agent comes back at another address: the source learns it from the control plane.
    await s.recovery.stop();
    const moved = loopbackHostFor(`${s.recoveryData}-moved`);
    s.recovery = await restartAgent(w, s, 'recovery', ['--data-address', moved]);
    const pointsBefore = (await w.api<{ total: number }>('GET', `/vaults/default/items/${itemId}/points`))
      .body.total;
    await s.primary.waitFor(/the recovery site agent moved/, 60_000);
    await waitUntil(
      'new recovery points through the new address',
      async () =>
        (await w.api<{ total: number }>('GET', `/vaults/default/items/${itemId}/points`)).body.total >
        pointsBefore + 1,
      60_000,
    );
    assert.ok(await canConnect(moved, port), `the receiver listens on ${moved}:${port}`);
    const repairs = await w.api<{ items: { type: string }[] }>('GET', `/jobs?target=${itemId}`);
    assert.equal(
      repairs.body.items.filter((j) => j.type === 'RepairReplication').length,
      1,
      'no second Repair',
    );
  },
);
