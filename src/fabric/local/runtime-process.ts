/**
 * The `process` runtime of a local machine: the machine is an OS process started with
 * its disks' NBD addresses and its NIC settings in its environment, shut down
 * gracefully with SIGTERM (SIGKILL after a timeout). Machine processes run in their own
 * process group, so a Ctrl-C meant for the agent's terminal reaches the agent (which
 * shuts its machines down) and not the machines directly; and they outlive an agent
 * killed with SIGKILL, which adopts them again when it restarts.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';

/** How to start one machine. */
export interface RuntimeStartSpec {
  machine: string;
  argv: string[];
  /** Added to the agent's environment (without the agent's own OSR_* variables). */
  env: Record<string, string>;
  /** stdout and stderr are appended here. */
  logFile: string;
  cwd?: string;
}

/** A running machine process (our child, or adopted after an agent restart). */
export class RunningProcess {
  readonly pid: number;
  readonly argv: string[];
  /** Resolves once the process has ended. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  #alive = true;

  constructor(pid: number, argv: string[], exited: Promise<{ code: number | null; signal: string | null }>) {
    this.pid = pid;
    this.argv = argv;
    this.exited = exited.then((r) => {
      this.#alive = false;
      return r;
    });
  }

  /** Whether the process is still running. */
  get alive(): boolean {
    return this.#alive;
  }

  /** Sends a signal; false when the process is already gone. */
  signal(sig: NodeJS.Signals): boolean {
    if (!this.#alive) return false;
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
  const log = openSync(spec.logFile, 'a');
  try {
    const child = spawn(command, args, {
      cwd: spec.cwd,
      env: machineEnv(spec.env),
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
    return new RunningProcess(child.pid, spec.argv, exited);
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

/**
 * Takes over a machine process left running by a previous agent (killed hard): only when
 * `pid` is alive with exactly the recorded command line, so a recycled pid is never
 * mistaken for the machine. Its end is noticed by polling every `pollMs`.
 */
export function adoptProcess(pid: number, argv: string[], pollMs = 250): RunningProcess | undefined {
  const current = processCommandLine(pid);
  if (current === undefined || current.join('\0') !== argv.join('\0')) return undefined;
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    const timer = setInterval(() => {
      try {
        process.kill(pid, 0);
      } catch {
        clearInterval(timer);
        resolve({ code: null, signal: null });
      }
    }, pollMs);
    timer.unref();
  });
  return new RunningProcess(pid, argv, exited);
}
