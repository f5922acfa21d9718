/**
 * The `osr` binary against a real control plane: every resource command with `--json`
 * (parsed) and without (tables), token resolution, and one-line errors with non-zero
 * exit codes. Agents are played over the agent protocol with fetch, since the agent
 * itself is another issue.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Container, Job, Policy, Site, Vault } from '../../src/domain/model.js';
import type { InventorySnapshot } from '../../src/store/store.js';
import { FakeAgent } from './fake-agent.js';
import { cleanEnv, spawnOsr, startWorld } from './harness.js';
import type { CliWorld, RunResult } from './harness.js';

interface Page<T> {
  items: T[];
  total: number;
}

let world: CliWorld;
let tmp: string;
/** Agent credentials and site ids by site name, once registered. */
const agents = new Map<string, { credential: string; siteId: string }>();
let webJobId = '';

before(async () => {
  world = await startWorld();
  tmp = mkdtempSync(join(tmpdir(), 'osr-cli-out-'));
});

after(async () => {
  rmSync(tmp, { recursive: true, force: true });
  await world.close();
});

/** Exit 0 with nothing on stderr. */
function ok(r: RunResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

/** Non-zero exit with exactly one line `osr: … (CODE)` on stderr. */
function failsWith(r: RunResult, code: string, exitCode = 1): void {
  assert.equal(r.code, exitCode, `expected exit ${exitCode}, got ${r.code}; stderr: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line expected: ${r.stderr}`);
  assert.match(lines[0] ?? '', new RegExp(`^osr: .+ \\(${code}\\)$`));
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

function inventory(networks: string[], machines: string[], nbdPort: number): InventorySnapshot {
  return {
    hosts: [{ name: 'h1', memoryMb: 16384, freeMemoryMb: 8192, cpus: 8 }],
    datastores: [{ name: 'ds1', hostNames: ['h1'], type: 'file' }],
    networks: networks.map((name) => ({ name, subnets: [{ name: 'front', cidr: '10.0.1.0/24' }] })),
    containers: [{ name: 'default' }],
    machines: machines.map((name) => ({
      name,
      hostName: 'h1',
      cpus: 2,
      memoryMb: 1024,
      osType: 'linux' as const,
      hypervisor: 'process' as const,
      powerState: 'Running' as const,
      guestTools: 'Installed' as const,
      origin: 'inventory' as const,
      disks: [
        {
          id: 'disk0',
          sizeBytes: 1 << 20,
          datastore: 'ds1',
          path: `${name}/disk0.img`,
          nbdUri: `nbd://127.0.0.1:${nbdPort}/${name}-disk0`,
        },
      ],
      nics: [{ network: networks[0] ?? null, subnet: 'front', ip: null }],
      container: 'default',
    })),
  };
}

/** Creates a registration key with the CLI and registers an "agent" with it, reporting inventory. */
async function agentFor(site: string, snapshot: InventorySnapshot): Promise<string> {
  const file = join(tmp, `${site}.osrkey`);
  ok(await world.osr(['key', 'create', '--site', site, '--out', file]));
  const keyFile = JSON.parse(readFileSync(file, 'utf8')) as { key: string };
  const reg = await world.api<{ credential: string; siteId: string }>('POST', '/agent/register', {
    key: keyFile.key,
    friendlyName: `${site}-agent`,
    version: '0.1.0',
  });
  assert.equal(reg.status, 201);
  const inv = await world.api('PUT', '/agent/inventory', snapshot, reg.body.credential);
  assert.ok(inv.status < 300, `inventory refused: ${JSON.stringify(inv.body)}`);
  agents.set(site, { credential: reg.body.credential, siteId: reg.body.siteId });
  return reg.body.credential;
}

void test('the token comes from --data, --token or OSR_TOKEN; none or a wrong one is a one-line error', async () => {
  const vaults = await world.json<Page<Vault>>(['vault', 'list']);
  assert.ok(vaults.items.some((v) => v.name === 'default'));

  const empty = mkdtempSync(join(tmp, 'empty-'));
  failsWith(
    await world.osr(['--server', world.server.url, 'vault', 'list'], { bare: true, cwd: empty }),
    'NO_TOKEN',
  );
  failsWith(
    await world.osr(['--server', world.server.url, '--token', 'wrong', 'vault', 'list'], { bare: true }),
    'UNAUTHORIZED',
  );
  const viaEnv = await world.osr(['vault', 'list', '--json'], {
    bare: true,
    env: { OSR_SERVER: world.server.url, OSR_TOKEN: world.server.adminToken },
  });
  assert.ok((JSON.parse(ok(viaEnv)) as Page<Vault>).total >= 1);
  const viaDataEnv = await world.osr(['vault', 'list', '--json'], {
    bare: true,
    env: { OSR_SERVER: world.server.url, OSR_DATA: world.dataDir },
  });
  ok(viaDataEnv);
});

void test('an unreachable server and a bad command line fail with their own codes', async () => {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const closedPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const down = await world.osr(['--server', `http://127.0.0.1:${closedPort}`, 'vault', 'list']);
  failsWith(down, 'UNREACHABLE', 4);
  assert.match(down.stderr, /ECONNREFUSED/);
  failsWith(await world.osr(['vault', 'frobnicate']), 'USAGE', 2);
  failsWith(await world.osr(['site', 'create', 'x', '--kind', 'moon']), 'USAGE', 2);
  failsWith(await world.osr(['job', 'list', '--state', 'Sleeping']), 'USAGE', 2);
  const help = await world.osr(['--help']);
  assert.match(ok(help), /Usage: osr/);
  assert.match(ok(await world.osr(['--version'])), /^\d+\.\d+\.\d+/);
});

void test('vault create, show, list (table) and delete; a duplicate and a missing vault are refused', async () => {
  const created = await world.json<Vault>(['vault', 'create', 'prod']);
  assert.equal(created.name, 'prod');
  const shown = await world.json<Vault>(['vault', 'show', 'prod']);
  assert.equal(shown.id, created.id);
  const table = ok(await world.osr(['vault', 'list']));
  const lines = table.trimEnd().split('\n');
  assert.match(lines[0] ?? '', /^NAME\s+ID\s+CREATED$/);
  assert.ok(lines.some((l) => l.startsWith('prod ') && l.includes(created.id)));
  failsWith(await world.osr(['vault', 'create', 'prod']), 'ALREADY_EXISTS');
  ok(await world.osr(['vault', 'delete', 'prod']));
  failsWith(await world.osr(['vault', 'show', 'prod']), 'NOT_FOUND');
});

void test('sites, registration keys (file mode 0600), agents, containers, inventory and machines', async () => {
  const primary = await world.json<Site>(['site', 'create', 'primary', '--kind', 'onprem']);
  assert.equal(primary.kind, 'onprem');
  ok(await world.osr(['site', 'create', 'recovery', '--kind', 'cloud']));
  const sites = await world.json<Page<Site>>(['site', 'list']);
  assert.deepEqual(sites.items.map((s) => s.name).sort(), ['primary', 'recovery']);
  assert.equal((await world.json<Site>(['site', 'show', 'recovery'])).kind, 'cloud');

  const keyPath = join(tmp, 'key.json');
  const created = ok(await world.osr(['key', 'create', '--site', 'primary', '--out', keyPath]));
  assert.ok(created.includes(keyPath));
  assert.match(created, /expires \d{4}-\d{2}-\d{2}/);
  assert.equal(statSync(keyPath).mode & 0o777, 0o600);
  const keyFile = JSON.parse(readFileSync(keyPath, 'utf8')) as Record<string, string>;
  assert.equal(keyFile['siteName'], 'primary');
  assert.equal(keyFile['siteId'], primary.id);
  assert.ok((keyFile['key'] ?? '').length > 20);
  const keys = await world.json<Page<Record<string, unknown>>>(['key', 'list', '--site', 'primary']);
  assert.equal(keys.total, 1);
  assert.ok(!JSON.stringify(keys).includes(keyFile['key'] ?? '?'), 'the secret is never listed');
  assert.match(ok(await world.osr(['key', 'list', '--site', 'primary'])), /Valid/);

  await agentFor('primary', inventory(['lan'], ['web', 'db', 'app'], 10809));
  await agentFor('recovery', inventory(['dr-lan', 'dr-test'], [], 10810));

  const agents = ok(await world.osr(['agent', 'list']));
  assert.match(agents, /primary-agent\s+primary\s+Connected/);
  const agentList = await world.json<Page<{ id: string; connection: string }>>(['agent', 'list']);
  assert.equal(agentList.total, 2);
  const first = agentList.items[0];
  assert.ok(first);
  assert.equal(
    (await world.json<{ connection: string }>(['agent', 'show', first.id])).connection,
    'Connected',
  );

  const containers = await world.json<Page<Container>>(['container', 'list', '--site', 'primary']);
  const container = containers.items[0];
  assert.ok(container);
  const off = await world.json<Container>(['container', 'sync', container.id, '--off']);
  assert.equal(off.synced, false);
  failsWith(await world.osr(['container', 'sync', container.id]), 'USAGE', 2);
  ok(await world.osr(['container', 'sync', container.id, '--on']));

  const inv = ok(await world.osr(['site', 'inventory', 'primary']));
  assert.match(inv, /Hosts\nNAME\s+CPUS/);
  assert.match(inv, /lan\s+front 10\.0\.1\.0\/24/);
  assert.match(ok(await world.osr(['network', 'list', '--site', 'recovery'])), /dr-test/);

  const machines = ok(await world.osr(['machine', 'list', '--site', 'primary']));
  assert.match(machines, /^NAME\s+SITE\s+HOST\s+POWER\s+DISKS$/m);
  assert.match(machines, /^web\s+primary\s+h1\s+Running\s+disk0=nbd:\/\/127\.0\.0\.1:10809\/web-disk0$/m);
  const web = await world.json<{ name: string; disks: { nbdUri: string }[] }>(['machine', 'show', 'web']);
  assert.equal(web.disks[0]?.nbdUri, 'nbd://127.0.0.1:10809/web-disk0');
});

void test('network mappings: create, list, update and delete', async () => {
  const m = await world.json<{ id: string; targetNetwork: string }>([
    'network-map',
    'create',
    '--source-site',
    'primary',
    '--source-network',
    'lan',
    '--target-site',
    'recovery',
    '--target-network',
    'dr-lan',
  ]);
  assert.equal(m.targetNetwork, 'dr-lan');
  assert.match(ok(await world.osr(['network-map', 'list'])), /primary\/lan\s+recovery\/dr-lan/);
  const updated = await world.json<{ targetNetwork: string }>([
    'network-map',
    'update',
    m.id,
    '--target-network',
    'dr-test',
  ]);
  assert.equal(updated.targetNetwork, 'dr-test');
  ok(await world.osr(['network-map', 'delete', m.id]));
  assert.equal((await world.json<Page<unknown>>(['network-map', 'list'])).total, 0);
});

void test('policies: create with flags, refuse invalid settings with POLICY_INVALID, update, show, associate, delete', async () => {
  const p = await world.json<Policy>([
    'policy',
    'create',
    'gold',
    '--copy-frequency',
    '5m',
    '--retention',
    '24',
    '--app-consistent',
    'off',
    '--compression',
    'off',
    '--bandwidth',
    '100',
  ]);
  assert.equal(p.copyFrequencySeconds, 300);
  assert.equal(p.retentionHours, 24);
  assert.equal(p.appConsistentFrequencyHours, 0);
  assert.equal(p.compression, false);
  assert.equal(p.bandwidth.limitMbps, 100);

  failsWith(await world.osr(['policy', 'create', 'bad', '--retention', '1000']), 'POLICY_INVALID');
  failsWith(await world.osr(['policy', 'create', 'bad', '--copy-frequency', '7m']), 'POLICY_INVALID');
  failsWith(await world.osr(['policy', 'create', 'bad', '--initial', 'scheduled']), 'USAGE', 2);
  assert.equal((await world.json<Page<Policy>>(['policy', 'list'])).total, 1, 'nothing written on refusal');

  const updated = await world.json<Policy>(['policy', 'update', 'gold', '--retention', '48']);
  assert.equal(updated.retentionHours, 48);
  assert.equal(updated.copyFrequencySeconds, 300);
  assert.match(ok(await world.osr(['policy', 'show', 'gold'])), /retention:\s+48h/);
  assert.match(ok(await world.osr(['policy', 'list'])), /^gold\s+300s\s+48h\s+off\s+off/m);

  const source = (await world.json<Page<Container>>(['container', 'list', '--site', 'primary'])).items[0];
  const target = (await world.json<Page<Container>>(['container', 'list', '--site', 'recovery'])).items[0];
  assert.ok(source && target);
  const assoc = await world.json<{ id: string; sourceContainerId: string }>([
    'policy',
    'associate',
    'gold',
    '--source-container',
    source.id,
    '--target-container',
    target.id,
  ]);
  assert.equal(assoc.sourceContainerId, source.id);
  assert.equal((await world.json<Page<unknown>>(['policy', 'associations', 'gold'])).total, 1);

  ok(await world.osr(['policy', 'create', 'spare']));
  ok(await world.osr(['policy', 'delete', 'spare']));
  failsWith(await world.osr(['policy', 'show', 'spare']), 'NOT_FOUND');
});

/** A heartbeat of every agent: the tests before took long on a busy machine, and an agent without one shows Disconnected. */
async function heartbeats(): Promise<void> {
  for (const a of agents.values()) {
    assert.equal((await world.api('POST', '/agent/heartbeat', {}, a.credential)).status, 200);
  }
}

void test('protect starts a job that job list, show and cancel see; item commands show it', async () => {
  await heartbeats();
  const accepted = await world.json<{ job: Job; item: { id: string; name: string } }>([
    'protect',
    'web',
    '--policy',
    'gold',
    '--target-site',
    'recovery',
  ]);
  assert.equal(accepted.item.name, 'web');
  const jobId = accepted.job.id;
  webJobId = jobId;

  const jobs = await world.json<Page<Job>>(['job', 'list']);
  assert.ok(jobs.items.some((j) => j.id === jobId));
  const byTarget = await world.json<Page<Job>>(['job', 'list', '--target', accepted.item.id]);
  assert.deepEqual(
    byTarget.items.map((j) => j.id),
    [jobId],
  );
  const none = await world.json<Page<Job>>([
    'job',
    'list',
    '--state',
    'Succeeded,Cancelled',
    '--type',
    'no-such',
  ]);
  assert.equal(none.total, 0);

  const shown = await world.json<Job>(['job', 'show', jobId]);
  assert.equal(shown.id, jobId);
  assert.ok(shown.steps.length > 0);
  const text = ok(await world.osr(['job', 'show', jobId]));
  assert.match(text, /^job:\s+/m);
  assert.match(text, /^#\s+STEP\s+STATE/m);
  assert.ok(text.includes(shown.steps[0]?.name ?? '?'));

  const items = ok(await world.osr(['item', 'list']));
  assert.match(items, /^web\s+/m);
  const view = await world.json<{ name: string; allowedOperations: string[] }>(['item', 'show', 'web']);
  assert.equal(view.name, 'web');
  assert.ok(Array.isArray(view.allowedOperations));
  assert.match(ok(await world.osr(['item', 'show', 'web'])), /^allowed operations:/m);
  assert.equal((await world.json<Page<unknown>>(['point', 'list', 'web'])).total, 0);

  // An operation outside allowedOperations is refused before anything changes.
  if (!view.allowedOperations.includes('Commit')) {
    failsWith(await world.osr(['commit', 'web']), 'OPERATION_NOT_ALLOWED');
  }
  failsWith(await world.osr(['job', 'resume', jobId, '--comment', 'x']), 'JOB_NOT_WAITING');
  failsWith(await world.osr(['job', 'show', 'no-such-job']), 'NOT_FOUND');
});

void test('job cancel stops a running job; job watch then reports Cancelled with a non-zero exit', async () => {
  // Nobody answers the agent commands yet, so the web job waits in a step until cancelled.
  await heartbeats();
  const before = await world.json<Job>(['job', 'show', webJobId]);
  assert.equal(before.state, 'InProgress');
  assert.match(ok(await world.osr(['job', 'cancel', webJobId])), new RegExp(webJobId));
  const watched = await world.osr(['job', 'watch', webJobId, '--interval', '100']);
  assert.equal(watched.code, 3, watched.stdout + watched.stderr);
  assert.match(watched.stdout, new RegExp(`Job ${webJobId} \\(Enable protection\\) Cancelled`));
  const after = await world.json<Job>(['job', 'show', webJobId]);
  assert.equal(after.state, 'Cancelled');
  failsWith(await world.osr(['job', 'cancel', webJobId]), 'JOB_NOT_CANCELLABLE');
  const cancelled = await world.json<Page<Job>>(['job', 'list', '--state', 'cancelled']);
  assert.ok(cancelled.items.some((j) => j.id === webJobId));
});

void test('protect --wait follows the job to Succeeded while the agents answer; job watch follows the next job', async () => {
  const fakes = [...agents.values()].map((a) => new FakeAgent(world, a.credential, a.siteId));
  try {
    const r = await world.osr(['protect', 'db', '--policy', 'gold', '--target-site', 'recovery', '--wait']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^Started job \S+: Enable protection$/m);
    assert.match(r.stdout, /\(Enable protection\) Succeeded after/);
    // Not a terminal: step changes come as lines, no progress bar.
    assert.match(r.stdout, /\[1\/\d\] Prerequisites check: Succeeded/);
    assert.doesNotMatch(r.stdout + r.stderr, /\[#/);

    const finalize = await world.json<Page<Job>>(['job', 'list', '--type', 'FinalizeProtection']);
    const next = finalize.items[0];
    assert.ok(next, 'the enable job hands over to a finalize job');
    const watched = await world.osr(['job', 'watch', next.id, '--interval', '100']);
    assert.equal(watched.code, 0, watched.stdout + watched.stderr);
    assert.match(watched.stdout, /Succeeded after/);
    const item = await world.json<{ protectionState: string; latestPoints: { latest: unknown } }>([
      'item',
      'show',
      'db',
    ]);
    assert.equal(item.protectionState, 'Protected');
    assert.ok(item.latestPoints.latest !== null);
    assert.match(ok(await world.osr(['point', 'list', 'db'])), /crash-consistent\s+1\s/);

    const json = await world.osr([
      'protect',
      'app',
      '--policy',
      'gold',
      '--target-site',
      'recovery',
      '--wait',
      '--json',
    ]);
    assert.equal(json.code, 0, json.stderr);
    const job = JSON.parse(json.stdout) as Job;
    assert.equal(job.state, 'Succeeded', 'with --json --wait prints the final job');
  } finally {
    for (const f of fakes) await f.stop();
  }
});

void test('the failover lifecycle from the CLI: drill, failover, change point, commit, reprotect, failback', async () => {
  const fakes = [...agents.values()].map((a) => new FakeAgent(world, a.credential, a.siteId));
  try {
    const waited = (args: string[]): Promise<string> =>
      world.osr([...args, '--wait']).then((r) => {
        assert.equal(r.code, 0, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
        return r.stdout;
      });
    type View = {
      protectionState: string;
      activeLocation: string;
      testFailoverState: string;
      allowedOperations: string[];
      reversed: boolean;
      replicationHealth: string;
      rpoSeconds: number | null;
      latestPoints: { latest: unknown };
      disks: { nbdUri: string | null }[];
      testFailover: {
        jobId: string;
        machine: { name: string; disks: { id: string; nbdUri: string }[] } | null;
      } | null;
    };
    const show = () => world.json<View>(['item', 'show', 'db']);

    assert.equal((await world.osr(['failover', 'db', '--type', 'planned', '--network', 'none'])).code, 2);
    const badNet = await world.osr(['failover', 'db', '--type', 'test', '--network', 'nowhere']);
    failsWith(badNet, 'VALIDATION_FAILED');
    assert.match(badNet.stderr, /^osr: network 'nowhere' does not exist /);
    const drill = await waited(['failover', 'db', '--type', 'test', '--network', 'none']);
    assert.match(drill, /Waiting for: complete-test/);
    assert.match(drill, /^Complete the test with: osr test-cleanup db --notes TEXT$/m);
    const testing = await show();
    assert.equal(testing.testFailoverState, 'WaitingForCleanup');
    assert.equal(testing.testFailover?.machine?.name, 'db-test');
    assert.deepEqual(testing.allowedOperations, ['TestFailoverCleanup']);
    // The test machine's disks with the NBD addresses of the test copy, for qemu-img and the like.
    const testDisks = testing.testFailover?.machine?.disks ?? [];
    assert.deepEqual(
      testDisks.map((d) => d.id),
      ['disk0'],
    );
    assert.match(testDisks[0]?.nbdUri ?? '', /^nbd:\/\/127\.0\.0\.1:10809\/[^/]+-test-disk0$/);
    const shownText = ok(await world.osr(['item', 'show', 'db']));
    assert.match(shownText, /^test machine:\s+db-test/m);
    assert.ok(shownText.includes(`disk0 ${testDisks[0]?.nbdUri ?? '?'}`), shownText);
    await waited(['test-cleanup', 'db', '--notes', 'prefix intact']);
    assert.equal((await show()).testFailoverState, 'None');

    // A drill cancelled with `job cancel` ends Cancelled and a cleanup job deletes what it created (R-TF-2).
    const second = await world.json<Job>(['failover', 'db', '--type', 'test', '--network', 'none', '--wait']);
    assert.equal(second.state, 'WaitingForAction');
    const cancelText = ok(await world.osr(['job', 'cancel', second.id]));
    assert.match(cancelText, new RegExp(`^Job ${second.id} cancelled$`, 'm'));
    assert.match(cancelText, /Test failover cleanup job then deletes what the test created/);
    for (let i = 0; ; i++) {
      const v = await show();
      if (v.testFailoverState === 'None' && v.allowedOperations.includes('TestFailover')) break;
      assert.ok(i < 200, `the cancelled drill was not cleaned up: ${JSON.stringify(v)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await world.json<Job>(['job', 'show', second.id])).state, 'Cancelled');
    const cleanups = await world.json<Page<Job>>(['job', 'list', '--type', 'TestFailoverCleanup']);
    assert.equal(cleanups.items[0]?.state, 'Succeeded');

    await waited([
      'failover',
      'db',
      '--type',
      'unplanned',
      '--point',
      'latest-processed',
      '--shutdown-source',
    ]);
    const failedOver = await show();
    assert.equal(failedOver.protectionState, 'FailedOver');
    assert.equal(failedOver.activeLocation, 'recovery');
    for (const k of ['replicationHealth', 'rpoSeconds', 'latestPoints', 'disks'] as const)
      assert.ok(k in failedOver, k);
    await waited(['change-point', 'db', '--point', 'latest-processed']);
    failsWith(await world.osr(['cancel-failover', 'db']), 'CANCEL_FAILOVER_NOT_ALLOWED');
    const committed = await waited(['commit', 'db']);
    assert.equal((await show()).protectionState, 'FailoverCommitted');
    // A step with nothing to do is Skipped with its reason: in the followed lines, job show and its JSON.
    assert.match(committed, /Delete the machine at the recovery site: Skipped \([^)]*\) — not a failback/);
    const commitJob = (await world.json<Page<Job>>(['job', 'list', '--type', 'CommitFailover'])).items[0];
    assert.ok(commitJob);
    const skippedStep = commitJob.steps.find((st) => st.state === 'Skipped');
    assert.equal(skippedStep?.name, 'Delete the machine at the recovery site');
    assert.match(skippedStep?.skipReason ?? '', /^not a failback/);
    assert.match(
      ok(await world.osr(['job', 'show', commitJob.id])),
      /^Step 3 \(Delete the machine at the recovery site\) skipped: not a failback/m,
    );

    const preview = ok(await world.osr(['reprotect', 'db', '--preview']));
    assert.match(preview, /recovery → primary/);
    assert.match(preview, /\(new\)/);
    assert.equal((await world.osr(['reprotect', 'db', '--location', 'alternate', '--host', 'h1'])).code, 2);
    await waited(['reprotect', 'db']);
    const reversed = await show();
    assert.equal(reversed.protectionState, 'Protected');
    assert.equal(reversed.reversed, true);

    await waited(['failover', 'db', '--type', 'planned']);
    const back = await show();
    assert.equal(back.protectionState, 'FailedOver');
    assert.equal(back.activeLocation, 'primary');
    await waited(['commit', 'db']);
    const done = await show();
    assert.equal(done.protectionState, 'Unprotected');
    assert.deepEqual(done.allowedOperations, []);
    await waited(['protect', 'db', '--policy', 'gold', '--target-site', 'recovery']);
  } finally {
    for (const f of fakes) await f.stop();
  }
});

void test('protect --wait returns once the item is Protected: it follows the Finalize protection job too', async () => {
  const primary = agents.get('primary');
  assert.ok(primary);
  const inv = await world.api(
    'PUT',
    '/agent/inventory',
    inventory(['lan'], ['web', 'db', 'app', 'api'], 10809),
    primary.credential,
  );
  assert.equal(inv.status, 200);
  const fakes = [...agents.values()].map((a) => new FakeAgent(world, a.credential, a.siteId));
  // Initial replication completes but no recovery point comes yet, so Finalize protection waits.
  for (const f of fakes) f.reportPoints = false;
  const run = spawnOsr(
    [
      ...['--server', world.server.url, '--data', world.dataDir],
      ...['protect', 'api', '--policy', 'gold', '--target-site', 'recovery', '--wait'],
    ],
    { env: cleanEnv() },
  );
  try {
    await run.waitFor(/\(Enable protection\) Succeeded after/);
    await run.waitFor(/^Then job \S+: Finalize protection$/m);
    const before = await world.json<{ protectionState: string }>(['item', 'show', 'api']);
    assert.equal(before.protectionState, 'InitialReplication');
    for (const f of fakes) f.reportPoints = true;
    const exit = await run.exited;
    assert.equal(exit.code, 0, run.stdout() + run.stderr());
    assert.match(run.stdout(), /\(Finalize protection\) Succeeded after/);
    const after = await world.json<{ protectionState: string }>(['item', 'show', 'api']);
    assert.equal(after.protectionState, 'Protected');
  } finally {
    run.child.kill();
    await run.exited;
    for (const f of fakes) await f.stop();
  }
});

void test('events list what happened in the vault', async () => {
  const events = await world.json<Page<{ kind: string }>>(['event', 'list']);
  assert.ok(events.items.some((e) => e.kind === 'AgentRegistered'));
  assert.match(ok(await world.osr(['event', 'list', '--severity', 'Info'])), /AgentRegistered/);
});

void test('plans: create with ordered groups, show, list, delete', async () => {
  const plan = await world.json<{ id: string; groups: { itemIds: string[] }[] }>([
    'plan',
    'create',
    'all',
    '--group',
    'web',
  ]);
  assert.equal(plan.groups.length, 1);
  assert.equal(plan.groups[0]?.itemIds.length, 1);
  assert.match(ok(await world.osr(['plan', 'show', 'all'])), /^Group 1: /m);
  assert.equal((await world.json<Page<unknown>>(['plan', 'list'])).total, 1);
  ok(await world.osr(['plan', 'delete', 'all']));
  failsWith(await world.osr(['plan', 'show', 'all']), 'NOT_FOUND');
});
