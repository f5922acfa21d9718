/**
 * Runs the real `osr` binary (`node bin/osr.js …`) as a child process, against a
 * control plane started in-process on port 0 with its own temp data folder.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../src/api/server.js';
import type { RunningServer } from '../../src/api/server.js';

/** The repository root (this file runs from dist/test/cli). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The `osr` entry point as users run it. */
export const BIN = join(ROOT, 'bin', 'osr.js');

/** What one `osr` run did. */
export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment of a child: this process's, without any OSR_* that would leak into the test. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OSR_')) env[k] = v;
  return { ...env, ...extra };
}

/** Runs `osr args…` to completion (bounded by `timeoutMs`). */
export function runOsr(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { env: options.env ?? cleanEnv(), cwd: options.cwd ?? ROOT, timeout: options.timeoutMs ?? 30_000 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          reject(
            new Error(`osr ${args.join(' ')} did not finish: ${err.message}\n${stderr}`, { cause: err }),
          );
          return;
        }
        resolvePromise({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

/** A control plane in a temp data folder, and `osr` pointed at it. */
export interface CliWorld {
  dataDir: string;
  server: RunningServer;
  /** Runs `osr` with `--server` and `--data` of this world (unless `bare`). */
  osr(
    args: string[],
    options?: { bare?: boolean; env?: Record<string, string>; cwd?: string },
  ): Promise<RunResult>;
  /** Runs `osr … --json`, expects exit 0, parses stdout. */
  json<T = unknown>(args: string[]): Promise<T>;
  /** Calls the API directly (fixtures the CLI does not create, e.g. an agent). */
  api<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    token?: string,
  ): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
}

/** Starts a server on port 0 in a fresh temp folder. */
export async function startWorld(): Promise<CliWorld> {
  const dataDir = mkdtempSync(join(tmpdir(), 'osr-cli-'));
  let server: RunningServer;
  try {
    server = await startServer({ dataDir, port: 0, logLevel: 'silent' });
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  const world: CliWorld = {
    dataDir,
    server,
    osr(args, options = {}) {
      const base = options.bare ? [] : ['--server', server.url, '--data', dataDir];
      return runOsr([...base, ...args], { env: cleanEnv(options.env), cwd: options.cwd });
    },
    async json<T>(args: string[]): Promise<T> {
      const r = await world.osr([...args, '--json']);
      if (r.code !== 0) throw new Error(`osr ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    },
    async api<T>(method: string, path: string, body?: unknown, token = server.adminToken) {
      const res = await fetch(`${server.url}/api/v1${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, body: (text === '' ? undefined : JSON.parse(text)) as T };
    },
    async close() {
      try {
        await server.close();
      } finally {
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  };
  return world;
}

/** A long-running `osr` (server/up) whose output is collected as it comes. */
export interface RunningOsr {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first match of `pattern` in stdout, or rejects after `timeoutMs` or when the process ends. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or signal) once the process has ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns `osr args…` and collects its output. */
export function spawnOsr(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): RunningOsr {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: options.env ?? cleanEnv(),
    cwd: options.cwd ?? ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    for (const l of listeners) l();
  });
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolvePromise) =>
    child.once('exit', (code, signal) => {
      for (const l of listeners) l();
      resolvePromise({ code, signal });
    }),
  );
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitFor(pattern, timeoutMs = 30_000) {
      return new Promise((resolvePromise, reject) => {
        const check = (): void => {
          const m = pattern.exec(out);
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
  };
}
