/**
 * Helpers for the source-side and transport tests: a seeded PRNG, temp folders, a model disk that replays a change
 * stream, and an in-memory `ChangeSink` that checks the stream arrives in order with no gap and no duplicate.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import type { Change, DiskSpec } from '../../src/dataplane/changes.js';
import type { BlockBackend } from '../../src/dataplane/nbd/backend.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';

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
  if (c.kind === 'marker') return;
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
