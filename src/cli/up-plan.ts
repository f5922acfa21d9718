/**
 * What `osr up` runs: the control plane in-process plus a list of child processes it
 * starts after the server and stops before it. The list is empty for now; the issue
 * that adds the two local site agents (`primary`, `recovery`, DESIGN §1) adds them
 * to `planUp` and nothing else changes.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';

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

/** Everything `osr up` starts. */
export interface UpPlan {
  dataDir: string;
  host: string;
  port: number;
  children: ChildSpec[];
}

export interface UpOptions {
  dataDir: string;
  port?: number;
  host?: string;
}

/** The plan for `osr up` with these options. */
export function planUp(options: UpOptions): UpPlan {
  return {
    dataDir: options.dataDir,
    host: options.host ?? '127.0.0.1',
    port: options.port ?? UP_DEFAULT_PORT,
    children: [],
  };
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
