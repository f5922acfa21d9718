/**
 * Agent tests: a real control plane in-process (port 0, its own temp folder, optional
 * test clock and short heartbeat timeout), a second store connection to enqueue
 * commands the way workflow steps do, generated site folders, and real `osr agent`
 * processes whose output is collected.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../src/api/server.js';
import type { RunningServer } from '../../src/api/server.js';
import type { Clock } from '../../src/jobs/types.js';
import type { AgentCommand } from '../../src/domain/model.js';
import { createStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/index.js';
import { writeDemoSite } from '../../src/fabric/local/index.js';
import { processCommandLine } from '../../src/fabric/local/runtime-process.js';
import type { DemoMachine } from '../../src/fabric/local/index.js';
import { loopbackHostFor } from '../../src/cli/up-plan.js';

/** The repository root (this file runs from dist/test/agent). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BIN = join(ROOT, 'bin', 'osr.js');

/** Polls `probe` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A clock tests can move forward. */
export class OffsetClock implements Clock {
  offsetMs = 0;
  now(): Date {
    return new Date(Date.now() + this.offsetMs);
  }
}

/** A control plane for agent tests. */
export interface World {
  tmp: string;
  dataDir: string;
  server: RunningServer;
  store: Store;
  clock: OffsetClock;
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  /** Creates a site (if needed) and a key file for it; returns the key file path. */
  keyFile(site: string, kind?: 'onprem' | 'cloud'): Promise<string>;
  /** A site folder with the given machines (ledger workloads with 1 MiB disks). */
  siteDir(name: string, machines?: DemoMachine[], hostMemoryMb?: [number, number]): Promise<string>;
  /** Enqueues a command for the site's newest agent, as a workflow step does. */
  enqueue(site: string, id: string, type: string, payload: unknown): Promise<AgentCommand>;
  /** Waits until the command has a result. */
  result(id: string, timeoutMs?: number): Promise<AgentCommand>;
  agents(): Promise<{ id: string; siteId: string; connection: string; friendlyName: string }[]>;
  close(): Promise<void>;
}

/** Starts a control plane in a fresh temp folder. */
export async function startWorld(
  options: { heartbeatTimeoutMs?: number; agentCertificateLifetimeMs?: number } = {},
): Promise<World> {
  const tmp = mkdtempSync(join(tmpdir(), 'osr-agent-'));
  const dataDir = join(tmp, 'cp');
  const clock = new OffsetClock();
  const server = await startServer({
    dataDir,
    port: 0,
    logLevel: 'silent',
    clock,
    ...(options.heartbeatTimeoutMs === undefined ? {} : { heartbeatTimeoutMs: options.heartbeatTimeoutMs }),
    ...(options.agentCertificateLifetimeMs === undefined
      ? {}
      : { agentCertificateLifetimeMs: options.agentCertificateLifetimeMs }),
  });
  const store = await createStore({ dialect: 'sqlite', file: join(dataDir, 'osr.db') }, { migrate: false });
  const api = async <T>(method: string, path: string, body?: unknown) => {
    const res = await fetch(`${server.url}/api/v1${path}`, {
      method,
      headers: {
        authorization: `Bearer ${server.adminToken}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: (text === '' ? undefined : JSON.parse(text)) as T };
  };
  const world: World = {
    tmp,
    dataDir,
    server,
    store,
    clock,
    api,
    async keyFile(site, kind = 'onprem') {
      const existing = await api('GET', `/vaults/default/sites/${site}`);
      if (existing.status === 404) await api('POST', '/vaults/default/sites', { name: site, kind });
      const r = await api<{ keyFile: unknown }>('POST', `/vaults/default/sites/${site}/keys`, {});
      if (r.status !== 201) throw new Error(`key for ${site}: ${r.status} ${JSON.stringify(r.body)}`);
      const file = join(tmp, `${site}-${Date.now()}-${Math.random().toString(36).slice(2)}.key.json`);
      writeFileSync(file, JSON.stringify(r.body.keyFile));
      return file;
    },
    async siteDir(name, machines = [], hostMemoryMb) {
      const dir = join(tmp, 'sites', name);
      await writeDemoSite(dir, {
        kind: 'onprem',
        octet: 1,
        machines: machines.map((m) => ({ diskBytes: 1024 * 1024, rate: 20, ...m })),
        ...(hostMemoryMb === undefined ? {} : { hostMemoryMb }),
      });
      return dir;
    },
    async enqueue(site, id, type, payload) {
      const s = await store.sites.get((await store.vaults.get('default')).id, site);
      const agent = await store.agents.findBySite(s.id);
      if (agent === undefined) throw new Error(`no agent for ${site}`);
      return store.commands.enqueue({ id, agentId: agent.id, type, payload }, new Date().toISOString());
    },
    result(id, timeoutMs = 30_000) {
      return waitUntil(
        `the result of command ${id}`,
        async () => {
          const c = await store.commands.find(id);
          return c !== undefined && (c.state === 'Succeeded' || c.state === 'Failed') ? c : undefined;
        },
        timeoutMs,
      );
    },
    async agents() {
      const r = await api<{
        items: { id: string; siteId: string; connection: string; friendlyName: string }[];
      }>('GET', '/vaults/default/agents?limit=1000');
      return r.body.items;
    },
    async close() {
      try {
        await store.close();
        await server.close();
      } finally {
        killMachines(tmp);
        killProcessesMentioning(tmp);
        rmSync(tmp, { recursive: true, force: true });
      }
    },
  };
  return world;
}

/**
 * SIGKILLs machine processes that agents under `dir` recorded (`<agent data>/fabric/fabric-state.json`),
 * so a failed test that killed an agent hard leaves no workload behind.
 */
export function killMachines(dir: string): void {
  if (!existsSync(dir)) return;
  for (const agentDir of readdirSync(dir)) {
    const file = join(dir, agentDir, 'fabric', 'fabric-state.json');
    if (!existsSync(file)) continue;
    const state = JSON.parse(readFileSync(file, 'utf8')) as { machines: Record<string, { pid?: number }> };
    for (const m of Object.values(state.machines)) {
      if (m.pid === undefined || !(processCommandLine(m.pid) ?? []).includes('workload')) continue;
      try {
        process.kill(m.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

/**
 * Whether process `pid` still runs. A zombie (ended, not yet reaped by whoever adopted it)
 * does not count: it holds no resources and does nothing.
 */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // /proc/PID/stat: "pid (comm) S …"; the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * SIGKILLs every process whose command line mentions `path` (agents and machines a test
 * started under its temp folder, whoever their parent is now), so none outlives the test
 * and holds its output pipes open.
 */
export function killProcessesMentioning(path: string): void {
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    if (!(processCommandLine(pid) ?? []).some((arg) => arg.includes(path))) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** A running `osr` process (agent) with its output. */
export interface Proc {
  child: ChildProcess;
  out(): string;
  err(): string;
  /** Resolves with the first match of `pattern` in stdout+stderr. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (or `signal`) and wait for the end. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<Proc>();

/** Kills what a test left running. */
export async function killAll(): Promise<void> {
  for (const p of running) {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await p.exited;
    // A grandchild that inherited the pipes must not keep this test process waiting on them.
    p.child.stdout?.destroy();
    p.child.stderr?.destroy();
  }
  running.clear();
}

/** The environment of a child: this one's without OSR_*. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OSR_')) env[k] = v;
  return { ...env, ...extra };
}

/** Spawns `osr args…`. */
export function spawnOsr(args: string[], cwd = ROOT): Proc {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd,
    env: cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    for (const l of listeners) l();
  });
  child.stderr.on('data', (c: Buffer) => {
    err += c.toString();
    for (const l of listeners) l();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => {
      for (const l of listeners) l();
      r({ code, signal });
    }),
  );
  const p: Proc = {
    child,
    out: () => out,
    err: () => err,
    exited,
    waitFor(pattern, timeoutMs = 30_000) {
      return new Promise((resolvePromise, reject) => {
        const check = (): void => {
          const m = pattern.exec(out + err);
          if (m) {
            done();
            resolvePromise(m);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            done();
            reject(new Error(`osr ended before printing ${String(pattern)}:\n${out}\n${err}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`osr did not print ${String(pattern)} within ${timeoutMs} ms:\n${out}\n${err}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  running.add(p);
  return p;
}

/** Spawns an agent for `site` and waits until it runs; extra args are appended. */
export async function startAgent(
  w: World,
  o: { site: string; siteDir: string; dataDir: string; keyFile?: string; server?: string; extra?: string[] },
): Promise<Proc> {
  const p = spawnOsr([
    'agent',
    '--site',
    o.site,
    '--server',
    o.server ?? w.server.url,
    '--site-dir',
    o.siteDir,
    '--data',
    o.dataDir,
    ...(o.keyFile === undefined ? [] : ['--key', o.keyFile]),
    '--poll-wait',
    '2000',
    '--inventory-poll',
    '100',
    '--backoff-max',
    '400',
    '--shutdown-timeout',
    '5000',
    // Each agent its own loopback address: receivers of concurrent tests (and of both agents of a test) share
    // the policies' replication ports.
    ...((o.extra ?? []).includes('--data-address') ? [] : ['--data-address', loopbackHostFor(o.dataDir)]),
    ...(o.extra ?? []),
  ]);
  await p.waitFor(/osr agent \S+ running for site/);
  return p;
}

/** A job as the API shows it (the fields the lifecycle tests read). */
export interface JobView {
  id: string;
  state: string;
  displayName?: string;
  steps: {
    name: string;
    state: string;
    output?: unknown;
    error?: { code: string; message: string } | null;
  }[];
  waiting?: { name: string } | null;
  error?: { code: string; message: string } | null;
}

/** Polls the job until its state is one of `states`; fails at once when it ends otherwise. */
export async function waitJob(
  w: World,
  jobId: string,
  states: string[],
  timeoutMs = 120_000,
): Promise<JobView> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const j = (await w.api<JobView>('GET', `/jobs/${jobId}`)).body;
    if (states.includes(j.state)) return j;
    const ended = ['Succeeded', 'Failed', 'Cancelled'].includes(j.state);
    if (ended || Date.now() > deadline) {
      throw new Error(
        `job ${j.displayName ?? jobId} is ${j.state}, not ${states.join('|')}: ${JSON.stringify(j.error)}\n` +
          JSON.stringify(j.steps.map((st) => ({ name: st.name, state: st.state, error: st.error ?? null }))),
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts an item operation through the API (`test-failover`, `unplanned-failover`, …); resolves the job id. */
export async function operate(w: World, itemId: string, op: string, body: unknown = {}): Promise<string> {
  const r = await w.api<{ job: { id: string } }>('POST', `/vaults/default/items/${itemId}/${op}`, body);
  if (r.status !== 202) throw new Error(`${op}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.job.id;
}

/** Copies an NBD export into a raw image file with qemu-img (a client independent of this product). */
export async function qemuCopy(uri: string, file: string): Promise<void> {
  const { execFile } = await import('node:child_process');
  await new Promise<void>((resolvePromise, reject) =>
    execFile(
      'qemu-img',
      ['convert', '-f', 'raw', '-O', 'raw', uri, file],
      { timeout: 60_000 },
      (err, _o, e) =>
        err ? reject(new Error(`qemu-img convert ${uri}: ${err.message}\n${e}`)) : resolvePromise(),
    ),
  );
}

/** The status port and pid of a machine an agent runs (its fabric state in the agent's data folder). */
export function machineRuntime(agentData: string, machine: string): { pid?: number; httpPort?: number } {
  const file = join(agentData, 'fabric', 'fabric-state.json');
  if (!existsSync(file)) return {};
  const state = JSON.parse(readFileSync(file, 'utf8')) as {
    machines: Record<string, { pid?: number; httpPort?: number }>;
  };
  return state.machines[machine] ?? {};
}

/** The ledger workload's `GET /status` of a machine an agent runs. */
export async function ledgerStatusOf(
  agentData: string,
  machine: string,
): Promise<{ count: number; lastCheck: { ok: boolean; records: number } }> {
  const port = machineRuntime(agentData, machine).httpPort;
  if (port === undefined) throw new Error(`${machine} has no status port`);
  const r = await fetch(`http://127.0.0.1:${port}/status`);
  return (await r.json()) as { count: number; lastCheck: { ok: boolean; records: number } };
}

/** Runs `fn`; a failure carries the end of each named process's output (agents' logs). */
export async function withOutput(procs: Record<string, Proc>, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    const tails = Object.entries(procs)
      .map(([name, p]) => `--- ${name} ---\n${(p.out() + p.err()).slice(-5000)}`)
      .join('\n');
    throw new Error(`${(err as Error).message}\n${tails}`, { cause: err });
  }
}

/** A recovery point as the API lists it. */
export interface PointView {
  id: string;
  sequence: number;
  time: string;
  type: string;
}

/** The item's recovery points, oldest first. */
export async function pointsOf(w: World, itemId: string): Promise<PointView[]> {
  const r = await w.api<{ items: PointView[] }>('GET', `/vaults/default/items/${itemId}/points?limit=1000`);
  return [...r.body.items].sort((a, b) => a.sequence - b.sequence);
}

/** The fields of `GET /items/:id` the lifecycle tests read. */
export interface ItemDetail {
  protectionState: string;
  testFailoverState: string;
  disks: { id: string; nbdUri?: string | null }[];
  testFailover?: {
    jobId: string;
    machine: { name: string; disks: { id: string; nbdUri: string }[] } | null;
  } | null;
}

export async function itemOf(w: World, itemId: string): Promise<ItemDetail> {
  return (await w.api<ItemDetail>('GET', `/vaults/default/items/${itemId}`)).body;
}

/** Freezes or thaws the ledger of a machine of the agent with data folder `agentData`. */
export async function quiesceLedger(
  agentData: string,
  machine: string,
  op: 'freeze' | 'thaw',
): Promise<void> {
  const port = machineRuntime(agentData, machine).httpPort;
  if (port === undefined) throw new Error(`${machine} has no status port`);
  const r = await fetch(`http://127.0.0.1:${port}/${op}`, { method: 'POST' });
  if (!r.ok) throw new Error(`${op} of ${machine}'s ledger answered ${r.status}`);
}

/**
 * The ledger a disk holds: copied with qemu-img into a file of the world's temp folder and checked there.
 * The writer (`writer`: the machine's agent data folder and name) is frozen during the copy: qemu-img
 * reads ranges concurrently and at different moments, so a copy of a disk being appended to is not a
 * point-in-time image and may show a later record without an earlier one. Throws on a broken ledger.
 */
export async function ledgerOnDisk(
  w: World,
  uri: string,
  name: string,
  writer: { agentData: string; machine: string },
): Promise<{ records: number; file: string }> {
  const { checkLedger, openReadableDisk } = await import('../../src/workload/ledger.js');
  const file = join(w.tmp, `${name}-${Date.now()}.img`);
  await quiesceLedger(writer.agentData, writer.machine, 'freeze');
  try {
    await qemuCopy(uri, file);
  } finally {
    await quiesceLedger(writer.agentData, writer.machine, 'thaw');
  }
  const disk = await openReadableDisk(file);
  try {
    const check = await checkLedger(disk);
    if (!check.ok) throw new Error(`${uri} holds a broken ledger: ${JSON.stringify(check.problem)}`);
    return { records: check.records, file };
  } finally {
    await disk.close();
  }
}
