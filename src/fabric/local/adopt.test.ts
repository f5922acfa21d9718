/**
 * Adoption after a hard agent kill: the machines a local fabric started keep running when its
 * process is SIGKILLed, and the next fabric on the same state folder takes them over — recognised
 * by pid, start time and start token, never by pid alone — instead of losing them or starting a
 * second copy. A record whose process ended, or whose pid now belongs to another process (even one
 * with the same command line), is a stopped machine, and that process is left alone.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LocalFabric, writeDemoSite } from './index.js';
import { processStartTime } from './runtime-process.js';

/** The machine: notes each start in starts.log (its folder), ends on SIGTERM. */
const MACHINE_SCRIPT = `require('fs').appendFileSync('starts.log', process.pid + '\\n'); process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000);`;
const MACHINE_ARGV = [process.execPath, '-e', MACHINE_SCRIPT];

let tmp: string;
let siteDir: string;
let stateDir: string;
const fabrics: LocalFabric[] = [];
const spawned: ChildProcess[] = [];

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function starts(): number[] {
  try {
    return readFileSync(join(siteDir, 'machines', 'm1', 'starts.log'), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  } catch {
    return [];
  }
}

type StateFile = { machines: Record<string, Record<string, unknown>> };

function readState(): StateFile {
  return JSON.parse(readFileSync(join(stateDir, 'fabric-state.json'), 'utf8')) as StateFile;
}

function writeState(state: StateFile): void {
  writeFileSync(join(stateDir, 'fabric-state.json'), JSON.stringify(state, null, 2));
}

async function open(autostart = true): Promise<LocalFabric> {
  const f = await LocalFabric.open({ siteDir, stateDir, shutdownTimeoutMs: 3000, autostart });
  fabrics.push(f);
  return f;
}

/**
 * An agent stand-in in its own process: opens the fabric, powers m1 on, prints the machine's pid and
 * waits; the caller SIGKILLs it, so nothing of the fabric's shutdown runs.
 */
async function powerOnInDoomedProcess(): Promise<{ pid: number; agent: ChildProcess }> {
  const index = new URL('./index.js', import.meta.url).href;
  const code = `
    import { LocalFabric } from ${JSON.stringify(index)};
    const f = await LocalFabric.open({ siteDir: ${JSON.stringify(siteDir)}, stateDir: ${JSON.stringify(stateDir)} });
    await f.powerOn('m1');
    process.stdout.write(JSON.stringify({ pid: f.runtimeInfo('m1').pid }) + '\\n');
    setInterval(() => {}, 1000);
  `;
  const agent = spawn(process.execPath, ['--input-type=module', '-e', code], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  spawned.push(agent);
  let out = '';
  agent.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  const line = await waitFor('the agent stand-in to power m1 on', () => /^\{.*\}\n/.exec(out)?.[0]);
  const { pid } = JSON.parse(line) as { pid: number };
  assert.ok(Number.isInteger(pid) && running(pid));
  const ended = new Promise((r) => agent.once('exit', r));
  agent.kill('SIGKILL');
  await ended;
  return { pid, agent };
}

/** A process that is not the machine: same command line, started outside the fabric. */
function impostor(): ChildProcess {
  const dir = join(tmp, 'impostor');
  mkdirSync(dir, { recursive: true });
  const [cmd, ...args] = MACHINE_ARGV;
  const p = spawn(cmd!, args, { cwd: dir, stdio: 'ignore' });
  spawned.push(p);
  return p;
}

beforeEach(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'osr-adopt-'));
  siteDir = join(tmp, 'site');
  stateDir = join(tmp, 'state');
  await writeDemoSite(siteDir, { kind: 'onprem', octet: 3, hostMemoryMb: [1024, 512] });
  mkdirSync(join(siteDir, 'machines', 'm1'), { recursive: true });
  writeFileSync(
    join(siteDir, 'machines', 'm1', 'machine.json'),
    JSON.stringify({
      name: 'm1',
      host: 'host1',
      cpus: 1,
      memoryMb: 600,
      command: MACHINE_ARGV,
      disks: [{ id: 'disk0', datastore: 'datastore1', path: 'm1/disk0.img', sizeBytes: 1048576 }],
      nics: [],
    }),
  );
});

afterEach(async () => {
  for (const f of fabrics.splice(0)) await f.close();
  for (const p of spawned.splice(0)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  for (const pid of starts()) if (running(pid)) process.kill(pid, 'SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
});

void test('a machine whose agent was killed with SIGKILL is adopted: running, not started twice, stoppable', async () => {
  const { pid } = await powerOnInDoomedProcess();
  assert.ok(running(pid), 'the machine outlives its agent');
  const recorded = readState().machines['m1'];
  assert.equal(recorded?.['pid'], pid);
  assert.equal(recorded?.['startTime'], processStartTime(pid), 'the start time is recorded');
  assert.match(String(recorded?.['token']), /^[0-9a-f-]{36}$/, 'and the start token');

  const fabric = await open();
  const m = await fabric.findMachine('m1');
  assert.equal(m?.powerState, 'Running');
  assert.equal(fabric.runtimeInfo('m1').pid, pid, 'the same process');
  assert.deepEqual(starts(), [pid], 'no second copy was started');
  const host1 = (await fabric.inventory()).hosts.find((h) => h.name === 'host1');
  assert.equal(host1?.freeMemoryMb, 1024 - 600, 'its memory counts on the host');
  assert.equal((await fabric.ensureRunning('m1')).powerState, 'Running');

  assert.equal((await fabric.shutdown('m1')).powerState, 'Stopped');
  await waitFor('the adopted machine to end', () => !running(pid));
  assert.equal(readState().machines['m1']?.['pid'], undefined, 'the process is forgotten');
  await fabric.close();
  fabrics.splice(0);

  const again = await open();
  assert.equal((await again.findMachine('m1'))?.powerState, 'Stopped', 'shut down stays down');
  assert.deepEqual(starts(), [pid]);
});

void test('a machine whose pid was never recorded is found by its start token', async () => {
  const { pid } = await powerOnInDoomedProcess();
  // As if the agent died between spawning the process and recording its pid: only the token is on disk.
  const state = readState();
  const m1 = state.machines['m1'] ?? {};
  delete m1['pid'];
  delete m1['argv'];
  delete m1['startTime'];
  writeState(state);

  const fabric = await open();
  assert.equal((await fabric.findMachine('m1'))?.powerState, 'Running');
  assert.equal(fabric.runtimeInfo('m1').pid, pid);
  assert.deepEqual(starts(), [pid], 'no second copy was started');
  assert.equal(readState().machines['m1']?.['pid'], pid, 'its pid is recorded now');
  await fabric.powerOff('m1');
  await waitFor('the adopted machine to end', () => !running(pid));
});

void test('a record whose process ended, or whose pid is another process, is a stopped machine; that process is left alone', async () => {
  const { pid } = await powerOnInDoomedProcess();
  const recorded = readState().machines['m1'] ?? {};
  process.kill(pid, 'SIGKILL');
  await waitFor('the machine to end', () => !running(pid));

  // Dead pid.
  let fabric = await open(false);
  assert.equal((await fabric.findMachine('m1'))?.powerState, 'Stopped');
  assert.equal(fabric.runtimeInfo('m1').pid, undefined);
  assert.equal(readState().machines['m1']?.['pid'], undefined, 'the stale record is cleared');
  await fabric.close();
  fabrics.splice(0);

  // The pid now belongs to another process with the very same command line: a recycled pid.
  const other = impostor();
  const otherPid = other.pid!;
  await waitFor('the impostor to run', () => processStartTime(otherPid) !== undefined);
  const cases: [string, Record<string, unknown>][] = [
    ['another start time', { ...recorded, pid: otherPid }],
    [
      'the same start time but no start token',
      { ...recorded, pid: otherPid, startTime: processStartTime(otherPid) },
    ],
    ['a record of an older agent with another command line', { pid: otherPid, argv: ['/bin/sleep', '1000'] }],
  ];
  for (const [what, record] of cases) {
    const state = readState();
    state.machines['m1'] = { ...state.machines['m1'], ...record, desired: 'Running' };
    writeState(state);
    fabric = await open(false);
    assert.equal((await fabric.findMachine('m1'))?.powerState, 'Stopped', what);
    assert.equal(fabric.runtimeInfo('m1').pid, undefined, what);
    assert.equal((await fabric.powerOff('m1')).powerState, 'Stopped');
    await fabric.close();
    fabrics.splice(0);
    assert.ok(running(otherPid), `${what}: the other process is left alone`);
  }

  // With autostart, a machine that should run and is not found is started once, as a new process.
  const state = readState();
  state.machines['m1'] = { ...state.machines['m1'], ...recorded, pid: otherPid, desired: 'Running' };
  writeState(state);
  fabric = await open(true);
  const fresh = fabric.runtimeInfo('m1').pid;
  assert.ok(fresh !== undefined && fresh !== otherPid && fresh !== pid);
  assert.deepEqual(starts(), [pid, fresh]);
  assert.ok(running(otherPid));
});
