import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { ChildGroup, UP_DEFAULT_PORT, planUp } from './up-plan.js';

void test('the up plan defaults to 127.0.0.1:7480 and runs an agent for each of the sites primary and recovery', () => {
  const plan = planUp({ dataDir: '/d', osrCommand: ['node', 'osr.js'] });
  assert.equal(plan.host, '127.0.0.1');
  assert.equal(plan.port, UP_DEFAULT_PORT);
  assert.deepEqual(
    plan.sites.map((s) => [s.name, s.kind, s.siteDir, s.agentDataDir, s.machines.map((m) => m.name)]),
    [
      ['primary', 'onprem', '/d/sites/primary', '/d/agents/primary', ['web', 'app', 'db']],
      ['recovery', 'onprem', '/d/sites/recovery', '/d/agents/recovery', []],
    ],
  );
  assert.deepEqual(
    plan.children.map((c) => c.name),
    ['agent primary', 'agent recovery'],
  );
  const primary = plan.children[0];
  assert.equal(primary?.command, 'node');
  assert.deepEqual(primary?.args.slice(0, 6), [
    'osr.js',
    'agent',
    '--site',
    'primary',
    '--server',
    'http://127.0.0.1:7480',
  ]);
  assert.ok(primary?.args.includes('/d/agents/primary.key.json'));
  assert.equal(planUp({ dataDir: '/d', port: 0 }).port, 0);
  const later = planUp({ dataDir: '/d', port: 0, serverUrl: 'http://127.0.0.1:5555' });
  assert.ok(
    later.children.every((c) => c.args.includes('http://127.0.0.1:5555')),
    'agents dial the URL the server got',
  );
});

void test('a child group starts children and stops them with SIGTERM', async () => {
  const exits: string[] = [];
  const group = new ChildGroup((name) => exits.push(name));
  await group.start([
    { name: 'sleeper', command: process.execPath, args: ['-e', 'setInterval(() => {}, 1000)'] },
  ]);
  assert.deepEqual(group.running, ['sleeper']);
  await group.stop(5000);
  assert.deepEqual(group.running, []);
  assert.deepEqual(exits, [], 'a child stopped by the group is not reported as unexpected');
});

void test('a child that ignores SIGTERM is killed after the grace period', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-up-plan-'));
  const ready = join(dir, 'ready');
  try {
    const group = new ChildGroup();
    const script = `process.on('SIGTERM', () => {}); require('fs').writeFileSync(${JSON.stringify(ready)}, ''); setInterval(() => {}, 1000)`;
    await group.start([{ name: 'stubborn', command: process.execPath, args: ['-e', script] }]);
    const deadline = Date.now() + 10_000;
    while (!existsSync(ready)) {
      assert.ok(Date.now() < deadline, 'the child never got ready');
      await delay(10);
    }
    const t0 = Date.now();
    await group.stop(200);
    assert.ok(Date.now() - t0 >= 150, 'SIGTERM was ignored, so only SIGKILL after the grace period ends it');
    assert.deepEqual(group.running, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('a child ending on its own is reported; one that cannot spawn rejects start', async () => {
  let report: (s: string) => void = () => undefined;
  const ended = new Promise<string>((resolve) => (report = resolve));
  const quick = new ChildGroup((name, code) => report(`${name}:${code}`));
  await quick.start([{ name: 'quick', command: process.execPath, args: ['-e', 'process.exit(3)'] }]);
  assert.equal(await ended, 'quick:3');
  const group = new ChildGroup();
  await assert.rejects(
    group.start([{ name: 'missing', command: '/nonexistent/osr-no-such-binary', args: [] }]),
    /cannot start missing/,
  );
});
