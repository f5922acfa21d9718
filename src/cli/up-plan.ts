/**
 * What `osr up` runs: the control plane in-process plus the child processes it starts
 * after the server and stops before it — one site agent for each of the two local
 * sites, `primary` and `recovery` (DESIGN §1), each with a generated site folder under
 * the data folder. `prepareUp` creates what the agents need through the API (sites,
 * registration keys for agents not yet registered, the default policy) and
 * `finishUp` what needs their inventory (the prod→dr network mapping, the policy's
 * container association) and waits for the demo machines. Every step finds what a
 * previous run made, so a second `osr up` resumes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Container, Machine, Network, SiteKind } from '../domain/model.js';
import { DEMO_MACHINES, defaultOsrCommand, writeDemoSite } from '../fabric/local/index.js';
import type { DemoMachine } from '../fabric/local/index.js';
import { vaultPath } from './client.js';
import type { OsrClient, Page } from './client.js';
import { CliError } from './errors.js';

/** The default port of `osr up` (and of the CLI's default server). */
export const UP_DEFAULT_PORT = 7480;

/** A child process `osr up` runs next to the control plane. */
export interface ChildSpec {
  /** Shown in messages, e.g. `agent primary`. */
  name: string;
  command: string;
  args: string[];
  /** Added to the CLI's own environment. */
  env?: Record<string, string>;
}

/** One local site of `osr up`. */
export interface UpSite {
  name: string;
  kind: SiteKind;
  /** The generated site folder (site.json, machines/, datastores/). */
  siteDir: string;
  /** The agent's data folder (credential, certificate, command log, fabric state). */
  agentDataDir: string;
  /** Where `osr up` writes the registration key file for the agent's first start. */
  keyFile: string;
  /** Second octet of the site's generated address plan. */
  octet: number;
  machines: DemoMachine[];
}

/** Everything `osr up` starts. */
export interface UpPlan {
  dataDir: string;
  host: string;
  port: number;
  sites: UpSite[];
  children: ChildSpec[];
}

export interface UpOptions {
  dataDir: string;
  port?: number;
  host?: string;
  /** The control plane's URL once it listens (default http://host:port); agents dial it. */
  serverUrl?: string;
  /** argv that runs `osr` (default: this node and bin/osr.js). */
  osrCommand?: string[];
}

/**
 * A loopback address of its own for `key` (127.x.y.z, the same for the same key). A policy's replication port is
 * a port on the recovery agent's address: two agents on one machine can both listen on it only at two addresses,
 * and on Linux every address of 127.0.0.0/8 is this machine's.
 */
export function loopbackHostFor(key: string): string {
  const h = createHash('sha256').update(key).digest();
  return `127.${h[0]!}.${h[1]!}.${1 + (h[2]! % 254)}`;
}

/** The plan for `osr up` with these options. */
export function planUp(options: UpOptions): UpPlan {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? UP_DEFAULT_PORT;
  const url = options.serverUrl ?? `http://${host}:${port}`;
  const site = (name: string, octet: number, machines: DemoMachine[]): UpSite => ({
    name,
    kind: 'onprem',
    siteDir: join(options.dataDir, 'sites', name),
    agentDataDir: join(options.dataDir, 'agents', name),
    keyFile: join(options.dataDir, 'agents', `${name}.key.json`),
    octet,
    machines,
  });
  const sites = [site('primary', 1, DEMO_MACHINES), site('recovery', 2, [])];
  const [command, ...pre] = options.osrCommand ?? defaultOsrCommand();
  return {
    dataDir: options.dataDir,
    host,
    port,
    sites,
    children: sites.map((s) => ({
      name: `agent ${s.name}`,
      command: command ?? process.execPath,
      args: [
        ...pre,
        'agent',
        '--site',
        s.name,
        '--server',
        url,
        '--site-dir',
        s.siteDir,
        '--data',
        s.agentDataDir,
        '--key',
        s.keyFile,
        '--name',
        `${s.name}-agent`,
        // Its own address, so both agents can receive on the default policy's replication port.
        '--data-address',
        loopbackHostFor(`${options.dataDir}\n${s.name}`),
        '--log-level',
        'warn',
        '--shutdown-timeout',
        '10000',
        '--exit-with-parent',
        String(process.pid),
      ],
      env: { OSR_LOG_LEVEL: 'warn' },
    })),
  };
}

function isCode(err: unknown, code: string): boolean {
  return err instanceof CliError && err.code === code;
}

/**
 * Before the agents start: the two sites, their folders, a registration key file for
 * each agent that has no credential yet (mode 0600), and the policy `default`.
 */
export async function prepareUp(client: OsrClient, plan: UpPlan, vault = 'default'): Promise<void> {
  for (const s of plan.sites) {
    try {
      await client.get(vaultPath(vault, 'sites', s.name));
    } catch (err) {
      if (!isCode(err, 'NOT_FOUND')) throw err;
      await client.post(vaultPath(vault, 'sites'), { name: s.name, kind: s.kind });
    }
    await writeDemoSite(s.siteDir, { kind: s.kind, octet: s.octet, machines: s.machines });
    await mkdir(s.agentDataDir, { recursive: true, mode: 0o700 });
    if (!existsSync(join(s.agentDataDir, 'credential.json'))) {
      const key = await client.post<{ keyFile: unknown }>(vaultPath(vault, 'sites', s.name, 'keys'), {});
      await writeFile(s.keyFile, JSON.stringify(key.keyFile, null, 2) + '\n', { mode: 0o600 });
      await chmod(s.keyFile, 0o600);
    }
  }
  try {
    await client.get(vaultPath(vault, 'policies', 'default'));
  } catch (err) {
    if (!isCode(err, 'NOT_FOUND')) throw err;
    await client.post(vaultPath(vault, 'policies'), { name: 'default' });
  }
}

async function waitUntil<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline)
      throw new CliError('UP_TIMEOUT', `osr up: ${what} did not happen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** What `finishUp` found. */
export interface UpReady {
  machines: Machine[];
}

/**
 * After the agents start: waits for both sites' networks and containers (their first
 * inventory), maps primary/prod → recovery/dr and associates the default policy with
 * the sites' default containers (once), then waits until the demo machines run.
 */
export async function finishUp(
  client: OsrClient,
  plan: UpPlan,
  timeoutMs = 60_000,
  vault = 'default',
): Promise<UpReady> {
  const [primary, recovery] = plan.sites;
  if (primary === undefined || recovery === undefined) return { machines: [] };
  const networksOf = (site: string) =>
    client.get<Network[] | Page<Network>>(vaultPath(vault, 'sites', site, 'networks'));
  const names = (r: Network[] | Page<Network>): string[] =>
    (Array.isArray(r) ? r : r.items).map((n) => n.name);
  for (const s of plan.sites) {
    await waitUntil(`the first inventory of site ${s.name}`, timeoutMs, async () =>
      names(await networksOf(s.name)).includes('prod') ? true : undefined,
    );
  }
  try {
    await client.post(vaultPath(vault, 'network-mappings'), {
      sourceSite: primary.name,
      sourceNetwork: 'prod',
      targetSite: recovery.name,
      targetNetwork: 'dr',
    });
  } catch (err) {
    if (!isCode(err, 'ALREADY_EXISTS')) throw err;
  }
  const containersOf = async (site: string): Promise<Container[]> => {
    const r = await client.get<Container[] | Page<Container>>(vaultPath(vault, 'sites', site, 'containers'));
    return Array.isArray(r) ? r : r.items;
  };
  const [source] = await containersOf(primary.name);
  const [target] = await containersOf(recovery.name);
  if (source !== undefined && target !== undefined) {
    try {
      await client.post(vaultPath(vault, 'policies', 'default', 'associations'), {
        sourceContainer: source.id,
        targetContainer: target.id,
      });
    } catch (err) {
      if (!isCode(err, 'ALREADY_EXISTS')) throw err;
    }
  }
  const wanted = plan.sites.flatMap((s) => s.machines.map((m) => m.name));
  const machines = await waitUntil(
    `the demo machines (${wanted.join(', ')}) running`,
    timeoutMs,
    async () => {
      const page = await client.get<Page<Machine>>(vaultPath(vault, 'machines'), { limit: 1000 });
      const running = page.items.filter((m) => wanted.includes(m.name) && m.powerState === 'Running');
      return running.length === wanted.length ? page.items : undefined;
    },
  );
  return { machines };
}

/** Child processes started together and stopped together (SIGTERM, then SIGKILL after a grace period). */
export class ChildGroup {
  readonly #running = new Map<string, ChildProcess>();
  readonly #onExit: (name: string, code: number | null, signal: NodeJS.Signals | null) => void;
  #stopping = false;

  /** `onExit` hears of a child that ends while the group is not stopping. */
  constructor(
    onExit: (name: string, code: number | null, signal: NodeJS.Signals | null) => void = () => undefined,
  ) {
    this.#onExit = onExit;
  }

  /** Names of the children still running. */
  get running(): string[] {
    return [...this.#running.keys()];
  }

  /** Starts each child; resolves once every one has spawned (rejects if one cannot be spawned). */
  async start(specs: readonly ChildSpec[]): Promise<void> {
    for (const spec of specs) {
      const child = spawn(spec.command, spec.args, {
        stdio: ['ignore', 'inherit', 'inherit'],
        env: { ...process.env, ...spec.env },
      });
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', () => resolve());
        child.once('error', (err) =>
          reject(new Error(`cannot start ${spec.name}: ${err.message}`, { cause: err })),
        );
      });
      this.#running.set(spec.name, child);
      child.once('exit', (code, signal) => {
        this.#running.delete(spec.name);
        if (!this.#stopping) this.#onExit(spec.name, code, signal);
      });
    }
  }

  /** Stops every child, newest first: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    this.#stopping = true;
    for (const [, child] of [...this.#running].reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    this.#running.clear();
  }
}
