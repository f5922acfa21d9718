/**
 * `osr up` end to end: the control plane and both site agents start, the demo machines
 * web/app/db run with their disks served over NBD (seen by an independent client),
 * Ctrl-C stops every child and machine, and a second `osr up` resumes with the same
 * agents, sites and ledgers.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { Machine } from '../../src/domain/model.js';
import { alive, killAll, killMachines, killProcessesMentioning, spawnOsr, waitUntil } from './harness.js';
import type { Proc } from './harness.js';

const exec = promisify(execFile);
const tmp = mkdtempSync(join(tmpdir(), 'osr-up-e2e-'));

after(async () => {
  await killAll();
  killMachines(join(tmp, '.osr', 'agents'));
  killProcessesMentioning(tmp);
  rmSync(tmp, { recursive: true, force: true });
});

async function up(): Promise<{ p: Proc; url: string }> {
  const p = spawnOsr(['up', '--port', '0'], tmp);
  const [, url] = await p.waitFor(/osr is up at (http:\/\/127\.0\.0\.1:\d+)\n/, 120_000);
  assert.ok(url);
  return { p, url };
}

async function osrJson<T>(url: string, args: string[]): Promise<T> {
  const bin = join(process.cwd(), 'bin', 'osr.js');
  const { stdout } = await exec(process.execPath, [
    bin,
    '--server',
    url,
    '--data',
    join(tmp, '.osr'),
    ...args,
    '--json',
  ]);
  return JSON.parse(stdout) as T;
}

function machinePids(): number[] {
  const file = join(tmp, '.osr', 'agents', 'primary', 'fabric', 'fabric-state.json');
  const state = JSON.parse(readFileSync(file, 'utf8')) as { machines: Record<string, { pid?: number }> };
  return Object.values(state.machines).flatMap((m) => (m.pid === undefined ? [] : [m.pid]));
}

void test(
  'osr up runs two sites with web/app/db, stops everything on Ctrl-C, and resumes',
  { timeout: 300_000 },
  async () => {
    const first = await up();
    const list = await osrJson<{ items: Machine[] }>(first.url, ['machine', 'list']);
    const demo = list.items.filter((m) => ['web', 'app', 'db'].includes(m.name));
    assert.deepEqual(demo.map((m) => m.name).sort(), ['app', 'db', 'web']);
    for (const m of demo) {
      assert.equal(m.powerState, 'Running', `${m.name} runs`);
      assert.match(m.disks[0]?.nbdUri ?? '', /^nbd:\/\/127\.0\.0\.1:\d+\/\w+-disk0$/);
    }
    const webUri = demo.find((m) => m.name === 'web')?.disks[0]?.nbdUri ?? '';
    const { stdout: info } = await exec('nbdinfo', ['--list', webUri]);
    assert.match(info, /export="web-disk0"/, 'an independent NBD client sees the export');
    assert.match(info, /export-size: 67108864/);

    const agents = await osrJson<{ items: { id: string; connection: string; siteId: string }[] }>(first.url, [
      'agent',
      'list',
    ]);
    assert.equal(agents.items.length, 2);
    assert.ok(agents.items.every((a) => a.connection === 'Connected'));
    const maps = await osrJson<{
      items: { sourceSite: string; sourceNetwork: string; targetSite: string; targetNetwork: string }[];
    }>(first.url, ['network-map', 'list']);
    assert.deepEqual(
      maps.items.map((m) => `${m.sourceSite}/${m.sourceNetwork}->${m.targetSite}/${m.targetNetwork}`),
      ['primary/prod->recovery/dr'],
    );
    // The ledgers are appending.
    await waitUntil('web has ledger records', async () => {
      const { stdout } = await exec(process.execPath, [
        join(process.cwd(), 'bin', 'osr.js'),
        'workload',
        'ledger-check',
        '--disk',
        webUri,
        '--json',
      ]);
      const r = JSON.parse(stdout) as { ok: boolean; records: number };
      assert.equal(r.ok, true);
      return r.records > 0;
    });
    const pids = machinePids();
    assert.equal(pids.length, 3);

    first.p.child.kill('SIGINT');
    const end = await first.p.exited;
    assert.equal(end.code, 0, first.p.err());
    assert.match(first.p.out(), /osr stopped/);
    for (const pid of pids) assert.equal(alive(pid), false, `machine process ${pid} was stopped`);
    assert.equal(
      (await exec('pgrep', ['-f', join(tmp, '.osr', 'agents')]).catch(() => ({ stdout: '' }))).stdout.trim(),
      '',
      'no agent left',
    );

    const second = await up();
    const again = await osrJson<{ items: { id: string }[] }>(second.url, ['agent', 'list']);
    assert.deepEqual(
      again.items.map((a) => a.id).sort(),
      agents.items.map((a) => a.id).sort(),
      'the agents reused their credentials',
    );
    const sites = await osrJson<{ items: { name: string }[] }>(second.url, ['site', 'list']);
    assert.deepEqual(sites.items.map((s) => s.name).sort(), ['primary', 'recovery']);
    const list2 = await osrJson<{ items: Machine[] }>(second.url, ['machine', 'list']);
    assert.equal(list2.items.length, 3, 'no duplicate machines');
    assert.ok(list2.items.every((m) => m.powerState === 'Running'));
    assert.equal(
      list2.items.find((m) => m.name === 'web')?.disks[0]?.nbdUri,
      webUri,
      'disks keep their addresses',
    );
    // Killed hard, `osr up` cannot stop its children; they notice their parent is gone and stop themselves.
    const pids2 = machinePids();
    assert.equal(pids2.length, 3);
    second.p.child.kill('SIGKILL');
    await second.p.exited;
    await waitUntil(
      'the agents and machines of a killed osr up to stop',
      async () => {
        const { stdout } = await exec('pgrep', ['-f', join(tmp, '.osr', 'agents')]).catch(() => ({
          stdout: '',
        }));
        const left = pids2.filter((pid) => alive(pid));
        if (stdout.trim() !== '' || left.length > 0)
          throw new Error(
            `still running: agents ${stdout.trim()} machines ${left.join(',')}; ` +
              `the agents logged: ${second.p.err().slice(-2000)}`,
          );
        return true;
      },
      60_000,
    );
  },
);
