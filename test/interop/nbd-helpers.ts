/**
 * Helpers for the NBD interop and fuzz tests: temporary folders, the `osr nbd serve` process, external tools.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The subset of a node:test context the helpers need. */
export interface Cleanup {
  after(fn: () => void | Promise<void>): void;
}

/** The stand-alone launcher of `osr nbd serve`, compiled next to this file's output. */
export const LAUNCHER = fileURLToPath(new URL('../../bench/nbd/osr-nbd.js', import.meta.url));

/** Creates a temporary folder removed after the test. */
export function tempDir(t: Cleanup, prefix = 'osr-nbd-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Creates a sparse file of `size` bytes. */
export function sparseFile(file: string, size: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

/** Self-signed certificate for 127.0.0.1/localhost in `dir` (`server-cert.pem`, `server-key.pem`, `ca-cert.pem`). */
export function makeCertificates(dir: string): { cert: string; key: string; ca: string; dir: string } {
  fs.mkdirSync(dir, { recursive: true });
  const cert = path.join(dir, 'server-cert.pem');
  const key = path.join(dir, 'server-key.pem');
  const ca = path.join(dir, 'ca-cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-days',
      '2',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  fs.copyFileSync(cert, ca);
  return { cert, key, ca, dir };
}

/** A running `osr nbd serve` process. */
export interface ServeProcess {
  readonly child: ChildProcess;
  readonly port: number;
  /** The line it printed when it started listening. */
  readonly banner: string;
  /** All stdout/stderr so far (for assertion messages). */
  output(): string;
  /** SIGTERM, then waits for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** Starts `osr nbd serve ARGS… --port 0` and waits (bounded) for its "serving … on host:port" line. */
export async function startServe(
  t: Cleanup,
  args: readonly string[],
  timeoutMs = 20_000,
): Promise<ServeProcess> {
  const child = spawn(process.execPath, [LAUNCHER, 'nbd', 'serve', ...args, '--port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const banner = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nbd serve did not start in time:\n${out}`)), timeoutMs);
    const check = (): void => {
      const m = /^nbd: serving .* on .*$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    };
    child.stdout.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`nbd serve exited with ${code}:\n${out}`));
    });
  });
  const port = Number(/:(\d+)(?: \(|$)/.exec(banner)?.[1]);
  return {
    child,
    port,
    banner,
    output: () => out,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Result of `run`. */
export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs an external program without blocking the event loop (an in-process server must keep serving it). Rejects
 * on a non-zero exit unless `allowFailure`; kills it after `timeoutMs`.
 */
export function run(
  cmd: string,
  args: readonly string[],
  options: { timeoutMs?: number; allowFailure?: boolean; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      const r = { code, stdout, stderr };
      if (code !== 0 && !options.allowFailure) {
        reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}\n${stdout}\n${stderr}`));
      } else {
        resolve(r);
      }
    });
  });
}

/** Tiny seeded PRNG (mulberry32): the same seed gives the same sequence, so failures reproduce. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Deterministic pseudo-random bytes. */
export function seededBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 0x100000000), i);
  for (let i = n - (n % 4); i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}
