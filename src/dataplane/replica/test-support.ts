/**
 * Helpers shared by the replica store's tests (unit tests here and `test/dataplane/replica-*`): a seeded PRNG, a
 * random change-stream generator, and a byte model of the disks at every marker.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Change, DiskSpec, MarkerType } from '../changes.js';

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

/** A fresh temporary folder; remove it with `fs.rmSync(dir, { recursive: true, force: true })`. */
export function tempDir(prefix = 'osr-replica-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** The disks' bytes after every prefix of a stream, kept at every marker. */
export class DiskModel {
  readonly disks: Map<string, Buffer>;
  /** Bytes of every disk at each marker's point id. */
  readonly atPoint = new Map<string, Map<string, Buffer>>();
  /** Marker seq of each point id. */
  readonly pointSeq = new Map<string, number>();

  constructor(specs: readonly DiskSpec[]) {
    this.disks = new Map(specs.map((d) => [d.id, Buffer.alloc(d.sizeBytes)]));
  }

  /** Applies one change (markers snapshot the disks). */
  apply(c: Change): void {
    if (c.kind === 'resync') return;
    if (c.kind === 'marker') {
      this.atPoint.set(c.pointId, new Map([...this.disks].map(([id, b]) => [id, Buffer.from(b)])));
      this.pointSeq.set(c.pointId, c.seq);
      return;
    }
    const disk = this.disks.get(c.diskId)!;
    if (c.kind === 'write') c.data.copy(disk, c.offset);
    else disk.fill(0, c.offset, c.offset + c.length);
  }

  /** Records the current bytes as point `id` (for points cut by the store, e.g. "Latest"). */
  snapshotAs(id: string, seq: number): void {
    this.apply({ kind: 'marker', seq, time: 0, pointId: id, markerType: 'crash-consistent' });
  }
}

/** Options of `ChangeGenerator`. */
export interface ChangeGeneratorOptions {
  readonly disks: readonly DiskSpec[];
  readonly seed: number;
  /** Probability that a change is a marker. Default 0.08. */
  readonly markerRate?: number;
  /** Probability that a change is a zero range. Default 0.15. */
  readonly zeroRate?: number;
  /** Largest write or zero length. Default 200 KiB. */
  readonly maxLength?: number;
}

/**
 * Random writes (random offsets and lengths, unaligned and overlapping, often near a few hot spots), zero ranges
 * and crash/app markers, with consecutive seqs from 1 and increasing times.
 */
export class ChangeGenerator {
  private readonly rnd: () => number;
  private readonly o: Required<ChangeGeneratorOptions>;
  private seq = 0;
  private time = 1_700_000_000_000;
  private points = 0;

  constructor(options: ChangeGeneratorOptions) {
    this.rnd = mulberry32(options.seed);
    this.o = { markerRate: 0.08, zeroRate: 0.15, maxLength: 200 * 1024, ...options };
  }

  /** The next `n` changes. */
  next(n: number): Change[] {
    const out: Change[] = [];
    for (let i = 0; i < n; i++) out.push(this.one());
    return out;
  }

  /** A marker as the next change. */
  marker(type: MarkerType = 'crash-consistent'): Change {
    this.seq++;
    this.time += 1000;
    return { kind: 'marker', seq: this.seq, time: this.time, markerType: type, pointId: `p${++this.points}` };
  }

  private one(): Change {
    const r = this.rnd();
    if (r < this.o.markerRate) return this.marker(this.rnd() < 0.3 ? 'app-consistent' : 'crash-consistent');
    this.seq++;
    this.time += 1 + Math.floor(this.rnd() * 1000);
    const disk = this.o.disks[Math.floor(this.rnd() * this.o.disks.length)]!;
    const hot = this.rnd() < 0.4;
    const maxLen = Math.min(this.o.maxLength, disk.sizeBytes);
    const length = Math.max(1, Math.floor(this.rnd() ** 2 * maxLen));
    const offset = hot
      ? Math.min(disk.sizeBytes - length, Math.floor(this.rnd() * 3) * 65536 + Math.floor(this.rnd() * 700))
      : Math.floor(this.rnd() * (disk.sizeBytes - length + 1));
    if (r < this.o.markerRate + this.o.zeroRate) {
      return { kind: 'zero', seq: this.seq, time: this.time, diskId: disk.id, offset, length };
    }
    const data = Buffer.allocUnsafe(length);
    for (let i = 0; i + 4 <= length; i += 4) data.writeUInt32LE((this.rnd() * 0x100000000) >>> 0, i);
    for (let i = length - (length % 4); i < length; i++) data[i] = Math.floor(this.rnd() * 256);
    return { kind: 'write', seq: this.seq, time: this.time, diskId: disk.id, offset, data };
  }
}
