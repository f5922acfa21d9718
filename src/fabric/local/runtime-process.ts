/**
 * The `process` runtime of a local machine: the machine is an OS process started with
 * its disks' NBD addresses and its NIC settings in its environment, shut down
 * gracefully with SIGTERM (SIGKILL after a timeout). Machine processes run in their own
 * process group, so a Ctrl-C meant for the agent's terminal reaches the agent (which
 * shuts its machines down) and not the machines directly; and they outlive an agent
 * killed with SIGKILL, which adopts them again when it restarts.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs';

/**
 * The environment variable that carries a machine process's start token: a random id
 * made for each power-on, recorded in the fabric state, and read back from
 * `/proc/PID/environ` to recognise the process after an agent restart.
 */
export const MACHINE_TOKEN_ENV = 'OSR_MACHINE_TOKEN';

/** How to start one machine. */
export interface RuntimeStartSpec {
  machine: string;
  argv: string[];
  /** Added to the agent's environment (without the agent's own OSR_* variables). */
  env: Record<string, string>;
  /** stdout and stderr are appended here. */
  logFile: string;
  cwd?: string;
  /** The start token put into the environment as OSR_MACHINE_TOKEN (default: a new random one). */
  token?: string;
}

/**
 * What identifies one run of a machine process across agent restarts: its pid, its start
 * time (`boot id:start ticks` from /proc, unique per boot for a pid) and the start token in
 * its environment. A pid alone is not enough: the kernel recycles pids.
 */
export interface ProcessIdentity {
  pid: number;
  argv: string[];
  startTime?: string;
  token?: string;
}

/** A running machine process (our child, or adopted after an agent restart). */
export class RunningProcess {
  readonly pid: number;
  readonly argv: string[];
  /** The start token in its environment. */
  readonly token: string | undefined;
  /** `boot id:start ticks` of the process (undefined when /proc could not tell). */
  readonly startTime: string | undefined;
  /** Resolves once the process has ended. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  readonly #isSame: () => boolean;
  #alive = true;

  constructor(
    identity: ProcessIdentity,
    exited: Promise<{ code: number | null; signal: string | null }>,
    isSame: () => boolean = () => true,
  ) {
    this.pid = identity.pid;
    this.argv = identity.argv;
    this.token = identity.token;
    this.startTime = identity.startTime;
    this.#isSame = isSame;
    this.exited = exited.then((r) => {
      this.#alive = false;
      return r;
    });
  }

  /** The identity to record in the fabric state. */
  get identity(): ProcessIdentity {
    return {
      pid: this.pid,
      argv: this.argv,
      ...(this.startTime === undefined ? {} : { startTime: this.startTime }),
      ...(this.token === undefined ? {} : { token: this.token }),
    };
  }

  /** Whether the process is still running. */
  get alive(): boolean {
    return this.#alive;
  }

  /** Sends a signal; false when the process is already gone (or its pid now belongs to another process). */
  signal(sig: NodeJS.Signals): boolean {
    if (!this.#alive || !this.#isSame()) return false;
    try {
      process.kill(this.pid, sig);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
      throw err;
    }
  }

  /**
   * Asks with `request` (default SIGTERM), waits up to `timeoutMs`, then SIGKILLs;
   * resolves once the process has ended. Returns whether it ended gracefully.
   */
  async stop(
    timeoutMs: number,
    request: () => Promise<void> | void = () => void this.signal('SIGTERM'),
  ): Promise<boolean> {
    if (!this.#alive) return true;
    await request();
    let forced = false;
    const timer = setTimeout(() => {
      forced = true;
      this.signal('SIGKILL');
    }, timeoutMs);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
    return !forced;
  }
}

/** The environment of a machine process: the agent's, without its OSR_* settings, plus `env`. */
export function machineEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OSR_')) out[k] = v;
  return { ...out, ...env };
}

/** Spawns the machine process (own process group, output to its log); resolves once it has spawned. */
export async function startProcess(spec: RuntimeStartSpec): Promise<RunningProcess> {
  const [command, ...args] = spec.argv;
  if (command === undefined) throw new Error(`machine ${spec.machine}: empty command`);
  const token = spec.token ?? randomUUID();
  const log = openSync(spec.logFile, 'a');
  try {
    const child = spawn(command, args, {
      cwd: spec.cwd,
      env: machineEnv({ ...spec.env, [MACHINE_TOKEN_ENV]: token }),
      stdio: ['ignore', log, log],
      detached: true,
    });
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (err) =>
        reject(new Error(`machine ${spec.machine}: cannot start ${command}: ${err.message}`, { cause: err })),
      );
    });
    if (child.pid === undefined) throw new Error(`machine ${spec.machine}: no pid`);
    const startTime = processStartTime(child.pid);
    return new RunningProcess(
      { pid: child.pid, argv: spec.argv, token, ...(startTime === undefined ? {} : { startTime }) },
      exited,
    );
  } finally {
    closeSync(log);
  }
}

/** The command line of a live process (Linux /proc), or undefined when it is gone or unreadable. */
export function processCommandLine(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((s, i, a) => !(i === a.length - 1 && s === ''));
  } catch {
    return undefined;
  }
}

let bootId: string | undefined;

/** This boot's id: start ticks repeat across reboots, a boot id does not. */
function currentBootId(): string {
  if (bootId === undefined) {
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      bootId = 'unknown-boot';
    }
  }
  return bootId;
}

/** `/proc/PID/stat` split after the command name (which may hold spaces and parentheses): [state, ppid, …]. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat
      .slice(stat.lastIndexOf(')') + 2)
      .trim()
      .split(' ');
  } catch {
    return undefined;
  }
}

/**
 * When process `pid` started, as `boot id:clock ticks since boot` (field 22 of /proc/PID/stat):
 * the same pid with another start time is another process. Undefined when it is gone.
 */
export function processStartTime(pid: number): string | undefined {
  const ticks = statFields(pid)?.[19];
  return ticks === undefined ? undefined : `${currentBootId()}:${ticks}`;
}

/** Whether `pid` runs (a zombie, ended but not reaped, does not). */
function running(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/**
 * The start token in process `pid`'s environment: the value, `undefined` when it has none,
 * `null` when the environment cannot be read (gone, or another user's process).
 */
export function processToken(pid: number): string | undefined | null {
  let raw: string;
  try {
    raw = readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    return null;
  }
  const prefix = `${MACHINE_TOKEN_ENV}=`;
  const entry = raw.split('\0').find((e) => e.startsWith(prefix));
  return entry === undefined ? undefined : entry.slice(prefix.length);
}

/**
 * Whether `pid` is still the process `recorded` describes: it runs, it started at the
 * recorded time, and its environment holds the recorded start token (where the environment
 * is readable; otherwise its command line must be the recorded one). A record without start
 * time and token (written by an older agent) is matched by command line alone.
 */
export function isSameProcess(recorded: ProcessIdentity): boolean {
  const { pid } = recorded;
  if (!running(pid)) return false;
  if (recorded.startTime !== undefined && processStartTime(pid) !== recorded.startTime) return false;
  const token = recorded.token === undefined ? null : processToken(pid);
  if (token !== null) return token === recorded.token;
  const argv = processCommandLine(pid);
  return argv !== undefined && argv.join('\0') === recorded.argv.join('\0');
}

/**
 * The machine process carrying start token `token` (a scan of /proc): for a machine whose
 * agent died between starting it and recording its pid. Of a process tree that inherited the
 * token, the topmost process is the machine.
 */
export function findProcessByToken(token: string): ProcessIdentity | undefined {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return undefined;
  }
  const found = new Map<number, number>();
  for (const e of entries) {
    const pid = Number(e);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    if (processToken(pid) !== token || !running(pid)) continue;
    found.set(pid, Number(statFields(pid)?.[1] ?? 0));
  }
  const top = [...found.entries()].find(([, ppid]) => !found.has(ppid));
  if (top === undefined) return undefined;
  const pid = top[0];
  const startTime = processStartTime(pid);
  const argv = processCommandLine(pid);
  if (startTime === undefined || argv === undefined) return undefined;
  return { pid, argv, startTime, token };
}

/**
 * Takes over a machine process left running by a previous agent (killed hard): only when
 * it is still the recorded process (`isSameProcess`), so a recycled pid is never mistaken
 * for the machine. Its end is noticed by polling every `pollMs`.
 */
export function adoptProcess(recorded: ProcessIdentity, pollMs = 250): RunningProcess | undefined {
  if (!isSameProcess(recorded)) return undefined;
  const identity: ProcessIdentity = {
    ...recorded,
    argv: recorded.argv.length > 0 ? recorded.argv : (processCommandLine(recorded.pid) ?? []),
    ...(recorded.startTime === undefined ? pickStartTime(recorded.pid) : {}),
  };
  const same = (): boolean => isSameProcess(identity);
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    const timer = setInterval(() => {
      if (same()) return;
      clearInterval(timer);
      resolve({ code: null, signal: null });
    }, pollMs);
    timer.unref();
  });
  return new RunningProcess(identity, exited, same);
}

function pickStartTime(pid: number): { startTime?: string } {
  const startTime = processStartTime(pid);
  return startTime === undefined ? {} : { startTime };
}
