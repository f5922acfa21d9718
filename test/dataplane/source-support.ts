/**
 * Helpers for the source-side and transport tests: a seeded PRNG, temp folders, a model disk that replays a change
 * stream, and an in-memory `ChangeSink` that checks the stream arrives in order with no gap and no duplicate.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import type { Change, DiskSpec } from '../../src/dataplane/changes.js';
import { encodeRecord, probeRecord } from '../../src/dataplane/journal/record.js';
import type { StoredEntry } from '../../src/dataplane/journal/record.js';
import type { BlockBackend } from '../../src/dataplane/nbd/backend.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import { hashBlocks } from '../../src/dataplane/resync/block-hash.js';

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

/** `n` bytes from the PRNG; with `compressible` most bytes repeat so brotli has something to do. */
export function randomBytes(rnd: () => number, n: number, compressible = false): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++)
    b[i] = compressible ? (i % 64 < 8 ? Math.floor(rnd() * 256) : 0x61 + (i % 7)) : Math.floor(rnd() * 256);
  return b;
}

/** A fresh temp folder and its remover. */
export function tempDir(prefix = 'osr-src-'): { dir: string; remove: () => void } {
  const dir = fs.mkdtempSync(join(os.tmpdir(), prefix));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Applies one change to a disk (markers change nothing). */
export async function applyChange(disks: ReadonlyMap<string, BlockBackend>, c: Change): Promise<void> {
  if (c.kind === 'marker' || c.kind === 'resync') return;
  const d = disks.get(c.diskId);
  if (!d) throw new Error(`change for unknown disk ${c.diskId}`);
  if (c.kind === 'write') {
    if (c.data.length > 0) await d.write(c.offset, c.data);
  } else await d.writeZeroes(c.offset, c.length);
}

/**
 * The recovery side in miniature: applies what it receives to in-memory disks and insists on `seq` being exactly
 * the last one + 1. Receiving can be slowed or failed to test backpressure and retries.
 */
export class ModelSink {
  readonly disks: Map<string, MemoryBackend>;
  readonly received: Change[] = [];
  last = 0;
  /** Awaited before each `receive` resolves. */
  gate: (() => Promise<void>) | null = null;
  receiveCalls = 0;

  constructor(disks: readonly DiskSpec[]) {
    this.disks = new Map(disks.map((d) => [d.id, new MemoryBackend(d.sizeBytes)]));
  }

  lastReceivedSeq(): number {
    return this.last;
  }

  async receive(changes: Change[]): Promise<void> {
    this.receiveCalls++;
    for (const c of changes) {
      if (c.seq !== this.last + 1) throw new Error(`sink got seq ${c.seq} after ${this.last}`);
      await applyChange(this.disks, c);
      this.received.push(c);
      this.last = c.seq;
    }
    if (this.gate) await this.gate();
  }

  /** SHA-256 per block of the model replica (answers the receiver's hash requests). */
  blockHashes(diskId: string, blockSize: number, offsets: readonly number[]): Promise<Buffer[]> {
    return hashBlocks(this.disks.get(diskId)!, blockSize, offsets);
  }

  /** Bytes of a disk. */
  async bytes(diskId: string): Promise<Buffer> {
    const d = this.disks.get(diskId)!;
    return d.read(0, d.size);
  }
}

/** Polls `cond` every 5 ms until it holds, failing after `timeoutMs` with `what`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
}

function newKeyArgs(keyFile: string): string[] {
  return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile];
}

/** A certificate authority made with openssl in `dir` (kept there as `<name>.ca.pem` / `<name>.ca.key`). */
export function makeCa(dir: string, name = 'test-ca'): { cert: string; certFile: string; keyFile: string } {
  const certFile = join(dir, `${name}.ca.pem`);
  const keyFile = join(dir, `${name}.ca.key`);
  if (!fs.existsSync(certFile)) {
    openssl(['req', '-x509', ...newKeyArgs(keyFile), '-out', certFile, '-days', '2', '-subj', `/CN=${name}`]);
  }
  return { cert: fs.readFileSync(certFile, 'utf8'), certFile, keyFile };
}

/** The URI an agent certificate of `name` carries (as the product names agents). */
export function agentUri(name: string): string {
  return `urn:osr:agent:${name}`;
}

/** What a link end needs: its key and certificate, and the CA it trusts. */
export interface TestIdentity {
  key: string;
  cert: string;
  ca: string;
}

/**
 * A key and certificate for agent `name` made with openssl in `dir` (EC P-256, so it is quick): issued by the
 * CA `ca` (default: the dir's `test-ca`) with the agent URI, or self-signed with `selfSigned`.
 */
export function makeIdentity(
  dir: string,
  name: string,
  options: { ca?: string; selfSigned?: boolean; uri?: string } = {},
): TestIdentity {
  const ca = makeCa(dir, options.ca);
  const key = join(dir, `${name}.key.pem`);
  const cert = join(dir, `${name}.cert.pem`);
  const ext = join(dir, `${name}.ext`);
  fs.writeFileSync(
    ext,
    `subjectAltName=URI:${options.uri ?? agentUri(name)}\nextendedKeyUsage=serverAuth,clientAuth\n`,
  );
  if (options.selfSigned === true) {
    openssl([
      'req',
      '-x509',
      ...newKeyArgs(key),
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      `subjectAltName=URI:${options.uri ?? agentUri(name)}`,
    ]);
  } else {
    const csr = join(dir, `${name}.csr`);
    openssl(['req', '-new', ...newKeyArgs(key), '-out', csr, '-subj', `/CN=${name}`]);
    openssl([
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.certFile,
      '-CAkey',
      ca.keyFile,
      '-set_serial',
      `0x${Date.now().toString(16)}${Math.floor(Math.random() * 1e6).toString(16)}`,
      '-days',
      '2',
      '-out',
      cert,
      '-extfile',
      ext,
    ]);
  }
  return { key: fs.readFileSync(key, 'utf8'), cert: fs.readFileSync(cert, 'utf8'), ca: ca.cert };
}

/**
 * A durable `ChangeSink` in one append-only file of journal records (fdatasync per `receive`), for tests that
 * kill the receiving process: after a restart it resumes from the last complete record.
 */
export class FileSink {
  private readonly fd: number;
  private last: number;
  private size: number;

  constructor(path: string) {
    this.fd = fs.openSync(path, fs.existsSync(path) ? 'r+' : 'w+');
    const { entries, size } = FileSink.readAll(path);
    this.last = entries[entries.length - 1]?.seq ?? 0;
    this.size = size;
    fs.ftruncateSync(this.fd, size);
  }

  /** Every complete record of a sink file, and where the complete part ends. */
  static readAll(path: string): { entries: StoredEntry[]; size: number } {
    const buf = fs.existsSync(path) ? fs.readFileSync(path) : Buffer.alloc(0);
    const entries: StoredEntry[] = [];
    let at = 0;
    for (;;) {
      const p = probeRecord(buf, at);
      if (p.status !== 'ok') break;
      entries.push(p.entry);
      at += p.size;
    }
    return { entries, size: at };
  }

  lastReceivedSeq(): number {
    return this.last;
  }

  receive(changes: Change[]): Promise<void> {
    for (const c of changes) {
      if (c.seq !== this.last + 1)
        return Promise.reject(new Error(`sink got seq ${c.seq} after ${this.last}`));
      const rec = encodeRecord(c);
      fs.writeSync(this.fd, rec, 0, rec.length, this.size);
      this.size += rec.length;
      this.last = c.seq;
    }
    fs.fdatasyncSync(this.fd);
    return Promise.resolve();
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** The disk the kill -9 fixtures write to. */
export const DP_DISK = { id: 'crash-disk', sizeBytes: 16 * 1024 * 1024 };

/** The k-th change the sender fixture writes: the same bytes for the same k in every process. */
export function dpChange(k: number): { offset: number; data: Buffer } {
  const rnd = mulberry32(k);
  const len = 512 * (1 + Math.floor(rnd() * 32));
  const offset = 512 * Math.floor(rnd() * ((DP_DISK.sizeBytes - len) / 512));
  return { offset, data: randomBytes(rnd, len, true) };
}

const fixturePath = (name: string): string =>
  fileURLToPath(new URL(`../fixtures/${name}.js`, import.meta.url));

/** A fixture process under test/fixtures, and the first line it printed (its readiness line). */
export interface Proc {
  child: ChildProcess;
  firstLine: Promise<string>;
}

/** Starts `test/fixtures/<name>.js` with extra environment. */
export function startFixture(name: string, env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ['--enable-source-maps', fixturePath(name)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const firstLine = new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(buf.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready`)));
  });
  return { child, firstLine };
}

/** Signals the process and waits for it to exit; one that ignores SIGTERM for 10 s fails the test and is killed. */
export async function stopFixture(p: Proc, signal: NodeJS.Signals): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise<boolean>((r) => p.child.once('exit', () => r(true)));
  p.child.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 10_000)));
  const ok = await Promise.race([exited, late]);
  clearTimeout(timer);
  if (!ok) {
    p.child.kill('SIGKILL');
    await exited;
    throw new Error(`process ${p.child.pid} did not exit on ${signal} within 10 s`);
  }
}
