/**
 * Adoption after a hard agent kill: the machines a local fabric started keep running when its
 * process is SIGKILLed, and the next fabric on the same state folder takes them over — recognised
 * by pid, start time and start token, never by pid alone — instead of losing them or starting a
 * second copy. A record whose process ended, or whose pid now belongs to another process (even one
 * with the same command line), is a stopped machine, and that process is left alone. A
 * `machine.create` redelivered after the agent died in it finds the machine (or the leftovers) it
 * made by its command id; any other create of that name is refused with 78052.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../../domain/errors.js';
import type { MachineCreateSpec } from '../driver.js';
import { LocalFabric, writeDemoSite } from './index.js';
import { processStartTime } from './runtime-process.js';

/** The machine: runs in its folder until SIGTERM. */
const MACHINE_SCRIPT = `process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000);`;
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

/** The live processes running in m1's folder: the copies of the machine there are. */
function machineProcesses(): number[] {
  const dir = join(siteDir, 'machines', 'm1');
  return readdirSync('/proc')
    .map(Number)
    .filter((pid) => {
      if (!Number.isInteger(pid) || !running(pid)) return false;
      try {
        return readlinkSync(`/proc/${pid}/cwd`) === dir;
      } catch {
        return false;
      }
    })
    .sort((a, b) => a - b);
}

type StateFile = { machines: Record<string, Record<string, unknown>> };

function readState(): StateFile {
  return JSON.parse(readFileSync(join(stateDir, 'fabric-state.json'), 'utf8')) as StateFile;
}

function writeState(state: StateFile): void {
  mkdirSync(stateDir, { recursive: true });
  writeFileSync(join(stateDir, 'fabric-state.json'), JSON.stringify(state, null, 2));
}

async function open(autostart = true): Promise<LocalFabric> {
  const f = await LocalFabric.open({ siteDir, stateDir, shutdownTimeoutMs: 3000, autostart });
  fabrics.push(f);
  return f;
}

/**
 * An agent stand-in in its own process: opens the fabric, runs `body` (with the fabric as `f`), prints
 * what `body` returns as JSON and waits; then it is SIGKILLed, so nothing of the fabric's shutdown runs.
 */
async function inKilledAgent(body: string): Promise<unknown> {
  const index = new URL('./index.js', import.meta.url).href;
  const code = `
    import { LocalFabric } from ${JSON.stringify(index)};
    const f = await LocalFabric.open({ siteDir: ${JSON.stringify(siteDir)}, stateDir: ${JSON.stringify(stateDir)} });
    const result = await (async () => { ${body} })();
    process.stdout.write(JSON.stringify({ result }) + '\\n');
    setInterval(() => {}, 1000);
  `;
  const agent = spawn(process.execPath, ['--input-type=module', '-e', code], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  spawned.push(agent);
  let out = '';
  agent.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  const line = await waitFor('the agent stand-in', () => /^\{.*\}\n/.exec(out)?.[0]);
  const ended = new Promise((r) => agent.once('exit', r));
  agent.kill('SIGKILL');
  await ended;
  return (JSON.parse(line) as { result: unknown }).result;
}

/** Powers m1 on in an agent that is then killed; resolves the machine's pid. */
async function powerOnInDoomedProcess(): Promise<{ pid: number }> {
  const pid = (await inKilledAgent(`await f.powerOn('m1'); return f.runtimeInfo('m1').pid;`)) as number;
  assert.ok(Number.isInteger(pid) && running(pid));
  return { pid };
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
  for (const pid of machineProcesses()) process.kill(pid, 'SIGKILL');
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
  assert.deepEqual(machineProcesses(), [pid], 'no second copy was started');
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
  assert.deepEqual(machineProcesses(), []);
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
  assert.deepEqual(machineProcesses(), [pid], 'no second copy was started');
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
  assert.deepEqual(machineProcesses(), [fresh]);
  assert.ok(running(otherPid));
});

/** What `machine.create` of a failover sends for `fo` (one disk copied from `source`). */
function createSpec(source: string): Record<string, unknown> {
  return {
    name: 'fo',
    host: 'host2',
    cpus: 1,
    memoryMb: 64,
    osType: 'linux',
    command: MACHINE_ARGV,
    disks: [{ id: 'disk0', datastore: 'datastore1', sizeBytes: 1048576, sourceFile: source }],
    nics: [],
    origin: 'failover',
  };
}

function expectConflict(err: unknown): boolean {
  assert.ok(err instanceof OsrError, String(err));
  assert.equal(err.code, 'MACHINE_NAME_CONFLICT');
  assert.equal(err.seedCode, 78052);
  return true;
}

void test('machine.create redelivered after the agent died is recognised by its command id; any other create of that name is 78052', async () => {
  const source = join(tmp, 'source.img');
  writeFileSync(source, Buffer.alloc(1048576, 7));
  const spec = createSpec(source);
  const made = (await inKilledAgent(
    `return (await f.createMachine({ ...${JSON.stringify(spec)}, requestId: 'cmd-1' })).name;`,
  )) as string;
  assert.equal(made, 'fo');

  const fabric = await open();
  const again = await fabric.createMachine({ ...spec, requestId: 'cmd-1' } as unknown as MachineCreateSpec);
  assert.equal(again.name, 'fo');
  assert.equal(again.hostName, 'host2');
  const on = await fabric.createMachine({
    ...spec,
    requestId: 'cmd-1',
    powerOn: true,
  } as unknown as MachineCreateSpec);
  assert.equal(on.powerState, 'Running', 'a redelivered create that powers on powers on the machine it made');
  await fabric.powerOff('fo');

  await assert.rejects(
    fabric.createMachine({ ...spec, requestId: 'cmd-2' } as unknown as MachineCreateSpec),
    expectConflict,
    'another command',
  );
  await assert.rejects(
    fabric.createMachine(spec as unknown as MachineCreateSpec),
    expectConflict,
    'no command id',
  );
  const config = JSON.parse(readFileSync(join(siteDir, 'machines', 'fo', 'machine.json'), 'utf8')) as {
    host: string;
  };
  assert.equal(config.host, 'host2', 'the machine is untouched');
});

void test('machine.create redelivered after the agent died before machine.json was written finishes the job; a different create meets the leftovers as 78052', async () => {
  const source = join(tmp, 'source.img');
  writeFileSync(source, Buffer.alloc(1048576, 9));
  const image = join(siteDir, 'datastores', 'datastore1', 'fo', 'disk0.img');
  // The state of an agent killed halfway through copying the disk: the command is recorded, the copy is partial.
  const leftovers = (): void => {
    mkdirSync(join(siteDir, 'datastores', 'datastore1', 'fo'), { recursive: true });
    writeFileSync(image, Buffer.alloc(4096, 9));
    writeState({ machines: { fo: { createdBy: 'cmd-1' } } });
  };
  leftovers();
  let fabric = await open();
  assert.equal(await fabric.findMachine('fo'), undefined);
  await assert.rejects(
    fabric.createMachine({ ...createSpec(source), requestId: 'cmd-2' } as unknown as MachineCreateSpec),
    expectConflict,
    'another command does not take over the partial disk',
  );
  assert.equal(readFileSync(image).length, 4096, 'and leaves it alone');
  await fabric.close();
  fabrics.splice(0);

  leftovers();
  fabric = await open();
  const m = await fabric.createMachine({
    ...createSpec(source),
    requestId: 'cmd-1',
  } as unknown as MachineCreateSpec);
  assert.equal(m.name, 'fo');
  assert.ok(readFileSync(image).equals(readFileSync(source)), 'the disk is copied whole');
  assert.equal(readState().machines['fo']?.['createdBy'], 'cmd-1');
});
