import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { AllocationMap, GranuleState } from '../nbd/allocation-map.js';
import type { BlockBackend, Extent, WriteOptions, ZeroOptions } from '../nbd/backend.js';
import { NbdError } from '../nbd/errors.js';
import { NbdErrno } from '../nbd/protocol.js';
import { ReplicaError } from './errors.js';
import { fdatasync, Mutex, preadExact, pwriteAll } from './fs-util.js';
import { fsyncDir } from './state-file.js';
import type { ReplicaView } from './view.js';

/** Where an overlay lives: `<dir>/<name>.overlay` (sparse data) and `<dir>/<name>.overlay-map`. */
export interface OverlayOptions {
  readonly dir: string;
  readonly name: string;
}

/** What an overlay needs from its store. */
export interface OverlayHost {
  /** Opens a view of `diskId` at `pointId` (the store counts it as in use until it is closed). */
  openView(diskId: string, pointId: string): Promise<ReplicaView>;
}

/** Overlay granule: the unit of copy-on-write from the view. */
export const OVERLAY_GRANULE = 64 * 1024;

const MAP_MAGIC = Buffer.from('OSROVMAP', 'latin1');
const MAP_VERSION = 1;
const MAP_HEADER = 20;

interface MapMeta {
  readonly diskId: string;
  readonly pointId: string;
  readonly size: number;
  readonly snapshots: string[];
}

/**
 * A writable sparse disk on top of a recovery-point view (test failover, uncommitted failover). Writes land in the
 * overlay's own data file, granule by granule (a partial write to a granule not yet in the overlay first copies
 * that granule from the view, so bytes stay exact); they never reach the replica's base or undo log. The
 * allocation map (`HOLE` = read the view, `ZERO`, `DATA` = read the data file) is persisted by `flush()` and
 * `close()`, so the overlay survives a restart with everything flushed.
 *
 * `swapView` (change recovery point) discards the overlay's writes and its snapshots: the machine comes up at the
 * other point, as in ASR. `snapshot`/`revert` save and restore the overlay's own state (cancel planned failover).
 */
export class Overlay implements BlockBackend {
  readonly size: number;
  readonly readOnly = false;
  /** The disk this overlay belongs to. */
  readonly diskId: string;
  /** The overlay's files. */
  readonly options: OverlayOptions;
  private readonly host: OverlayHost;
  private view: ReplicaView;
  private map: AllocationMap;
  private readonly fd: number;
  private snapshots: string[];
  private readonly lock = new Mutex();
  private closed = false;
  /** Granules written or zeroed since `trackChanges()` (commit copies them again before it switches). */
  private changed: Set<number> | undefined;

  private constructor(
    host: OverlayHost,
    diskId: string,
    options: OverlayOptions,
    view: ReplicaView,
    map: AllocationMap,
    fd: number,
    snapshots: string[],
  ) {
    this.host = host;
    this.diskId = diskId;
    this.options = options;
    this.view = view;
    this.size = view.size;
    this.map = map;
    this.fd = fd;
    this.snapshots = snapshots;
  }

  /**
   * Opens the overlay in `options`, creating it on the view at `pointId` when it does not exist. An existing
   * overlay keeps its own point (after a `swapView` that is the new one); it must belong to `diskId`, and when
   * `pointId` is given it must match (`OVERLAY_MISMATCH` otherwise).
   */
  static async open(
    host: OverlayHost,
    diskId: string,
    pointId: string | undefined,
    options: OverlayOptions,
  ): Promise<Overlay> {
    const files = overlayFiles(options);
    const existing = readMap(files.map);
    if (!existing && pointId === undefined) {
      throw new ReplicaError('OVERLAY_MISMATCH', `no overlay ${files.map} to reopen`);
    }
    if (
      existing &&
      (existing.meta.diskId !== diskId || (pointId !== undefined && existing.meta.pointId !== pointId))
    ) {
      throw new ReplicaError(
        'OVERLAY_MISMATCH',
        `overlay ${files.map} is for disk ${existing.meta.diskId} at point ${existing.meta.pointId}`,
      );
    }
    const view = await host.openView(diskId, existing?.meta.pointId ?? pointId!);
    try {
      fs.mkdirSync(options.dir, { recursive: true });
      const fd = fs.openSync(files.data, existing ? 'r+' : 'w+');
      try {
        if (!existing) fs.ftruncateSync(fd, view.size);
        const map = existing?.map ?? new AllocationMap(view.size, OVERLAY_GRANULE);
        if (map.size !== view.size) throw new ReplicaError('OVERLAY_MISMATCH', `${files.map}: size mismatch`);
        const overlay = new Overlay(host, diskId, options, view, map, fd, existing?.meta.snapshots ?? []);
        if (!existing) overlay.persistMap();
        return overlay;
      } catch (err) {
        fs.closeSync(fd);
        throw err;
      }
    } catch (err) {
      await view.close();
      throw err;
    }
  }

  /** The recovery point the overlay sits on. */
  get pointId(): string {
    return this.view.pointId;
  }

  /** The seq of that point. */
  get pointSeq(): number {
    return this.view.pointSeq;
  }

  /** Ids of the snapshots taken (oldest first). */
  snapshotIds(): readonly string[] {
    return this.snapshots;
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.assertOpen();
    const buf = into ?? Buffer.allocUnsafe(length);
    const jobs: Array<Promise<unknown>> = [];
    for (const { start, end, state } of this.runs(offset, length)) {
      const at = start - offset;
      if (state === GranuleState.ZERO) buf.fill(0, at, at + end - start);
      else if (state === GranuleState.DATA) jobs.push(preadExact(this.fd, buf, at, end - start, start));
      else jobs.push(this.view.read(start, end - start, buf.subarray(at, at + end - start)));
    }
    await Promise.all(jobs);
    return buf;
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.mutate(async () => {
      await this.writeLocked(offset, data);
      if (options?.fua) await this.flushLocked();
    });
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.mutate(async () => {
      const g = OVERLAY_GRANULE;
      const stop = offset + length;
      const { first, end } = this.map.coveredGranules(offset, length);
      const coveredStart = first < end ? first * g : stop;
      const coveredEnd = first < end ? Math.min(end * g, this.size) : stop;
      if (offset < Math.min(coveredStart, stop)) {
        const e = Math.min(coveredStart, stop);
        await this.writeLocked(offset, Buffer.alloc(e - offset));
      }
      if (coveredEnd < stop && coveredEnd >= offset) {
        await this.writeLocked(
          Math.max(coveredEnd, offset),
          Buffer.alloc(stop - Math.max(coveredEnd, offset)),
        );
      }
      for (let i = first; i < end; i++) {
        this.map.set(i, GranuleState.ZERO);
        this.changed?.add(i);
      }
      if (options?.fua) await this.flushLocked();
    });
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    // Advisory; zeroing keeps "reads back as zeros where whole granules are covered" exact and simple.
    return this.writeZeroes(offset, length, options);
  }

  flush(): Promise<void> {
    return this.mutate(() => this.flushLocked());
  }

  blockStatus(_offset: number, length: number): Promise<Extent[]> {
    return Promise.resolve(length > 0 ? [{ length, hole: false, zero: false }] : []);
  }

  /**
   * Moves the overlay onto the view at `pointId` (change recovery point, R-FO-7). The overlay's writes and
   * snapshots are discarded: the disk then reads exactly as the new point.
   */
  swapView(pointId: string): Promise<void> {
    return this.mutate(async () => {
      const next = await this.host.openView(this.diskId, pointId);
      const old = this.view;
      this.view = next;
      this.map = new AllocationMap(this.size, OVERLAY_GRANULE);
      for (const id of this.snapshots) removeSnapshotFiles(this.options, id);
      this.snapshots = [];
      // Free the discarded data (Node cannot punch holes).
      fs.ftruncateSync(this.fd, 0);
      fs.ftruncateSync(this.fd, this.size);
      await fdatasync(this.fd);
      this.persistMap();
      await old.close();
    });
  }

  /** Saves the overlay's current state (after a flush) and returns its id for `revert`. */
  snapshot(): Promise<string> {
    return this.mutate(async () => {
      await this.flushLocked();
      const id = randomUUID();
      const files = snapshotFiles(this.options, id);
      const sfd = fs.openSync(files.data, 'w+');
      try {
        fs.ftruncateSync(sfd, this.size);
        await copyDataGranules(this.map, this.fd, sfd);
        await fdatasync(sfd);
      } finally {
        fs.closeSync(sfd);
      }
      writeMap(files.map, this.meta(), this.map);
      this.snapshots.push(id);
      this.persistMap();
      return id;
    });
  }

  /** Restores the state saved by `snapshot(id)`; the snapshot is kept (revert again later if needed). */
  revert(snapshotId: string): Promise<void> {
    return this.mutate(async () => {
      if (!this.snapshots.includes(snapshotId)) {
        throw new ReplicaError(
          'POINT_NOT_FOUND',
          `overlay ${this.options.name} has no snapshot ${snapshotId}`,
        );
      }
      const files = snapshotFiles(this.options, snapshotId);
      const saved = readMap(files.map);
      if (!saved) throw new ReplicaError('REPLICA_CORRUPT', `snapshot map ${files.map} is missing`);
      const sfd = fs.openSync(files.data, 'r');
      try {
        await copyDataGranules(saved.map, sfd, this.fd);
      } finally {
        fs.closeSync(sfd);
      }
      this.map = saved.map;
      await this.flushLocked();
    });
  }

  /**
   * Runs of `[offset, offset + length)` by state: `DATA` (in the overlay file), `ZERO`, or `HOLE` (the view's bytes).
   * Used by commit to flatten the overlay into the base.
   */
  runs(offset: number, length: number): Array<{ start: number; end: number; state: GranuleState }> {
    const out: Array<{ start: number; end: number; state: GranuleState }> = [];
    let pos = offset;
    for (const e of this.map.extents(offset, length)) {
      const state = !e.zero ? GranuleState.DATA : e.hole ? GranuleState.HOLE : GranuleState.ZERO;
      out.push({ start: pos, end: pos + e.length, state });
      pos += e.length;
    }
    return out;
  }

  /**
   * From now on, remembers every granule a write, zero or trim touches, until `takeChanges()` hands them over.
   * Commit flattens the overlay while the machine keeps writing to it; this is how it finds what to copy again.
   */
  trackChanges(): void {
    this.changed ??= new Set();
  }

  /**
   * The byte ranges of the granules touched since tracking began or since the last call, merged and in order;
   * the set starts empty again.
   */
  takeChanges(): Array<[number, number]> {
    const indexes = [...(this.changed ?? [])].sort((a, b) => a - b);
    this.changed?.clear();
    const out: Array<[number, number]> = [];
    for (const i of indexes) {
      const { start, end } = this.map.granuleRange(i);
      const last = out.at(-1);
      if (last && last[1] === start) last[1] = end;
      else out.push([start, end]);
    }
    return out;
  }

  /** Reads the overlay's own data file (only meaningful for `DATA` runs). */
  async readData(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await preadExact(this.fd, buf, 0, length, offset);
    return buf;
  }

  /** Flushes, persists the map and releases the view. */
  close(): Promise<void> {
    return this.mutate(async () => {
      await this.flushLocked();
      this.closed = true;
      fs.closeSync(this.fd);
      await this.view.close();
    });
  }

  /** Closes the overlay and deletes its files and snapshots (test failover cleanup, or after commit). */
  async destroy(): Promise<void> {
    if (!this.closed) await this.close();
    for (const id of this.snapshots) removeSnapshotFiles(this.options, id);
    const files = overlayFiles(this.options);
    fs.rmSync(files.map, { force: true });
    fs.rmSync(files.data, { force: true });
    fsyncDir(this.options.dir);
  }

  private async writeLocked(offset: number, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const g = OVERLAY_GRANULE;
    const stop = offset + data.length;
    if (this.changed) {
      for (let i = Math.floor(offset / g); i <= Math.floor((stop - 1) / g); i++) this.changed.add(i);
    }
    const edges: Array<{ start: number; buf: Buffer; index: number }> = [];
    for (const index of new Set([Math.floor(offset / g), Math.floor((stop - 1) / g)])) {
      const { start, end } = this.map.granuleRange(index);
      const state = this.map.get(index);
      const whole = offset <= start && stop >= end;
      if (state === GranuleState.DATA || whole) continue;
      // Copy-on-write of a partial granule: the bytes around the write come from the view (or are zeros).
      const buf =
        state === GranuleState.ZERO ? Buffer.alloc(end - start) : await this.view.read(start, end - start);
      const a = Math.max(offset, start);
      const b = Math.min(stop, end);
      data.copy(buf, a - start, a - offset, b - offset);
      edges.push({ start, buf, index });
    }
    await pwriteAll(this.fd, data, offset);
    for (const e of edges) await pwriteAll(this.fd, e.buf, e.start);
    // Marked only after the bytes are in the file: a concurrent read sees the view until then.
    this.map.markData(offset, data.length);
  }

  private async flushLocked(): Promise<void> {
    await fdatasync(this.fd);
    this.persistMap();
  }

  private meta(): MapMeta {
    return { diskId: this.diskId, pointId: this.view.pointId, size: this.size, snapshots: this.snapshots };
  }

  private persistMap(): void {
    writeMap(overlayFiles(this.options).map, this.meta(), this.map);
  }

  private mutate<T>(task: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      this.assertOpen();
      return task();
    });
  }

  private assertOpen(): void {
    if (this.closed) throw new NbdError(NbdErrno.EIO, `overlay ${this.options.name} is closed`);
  }
}

function overlayFiles(o: OverlayOptions): { data: string; map: string } {
  return { data: path.join(o.dir, `${o.name}.overlay`), map: path.join(o.dir, `${o.name}.overlay-map`) };
}

function snapshotFiles(o: OverlayOptions, id: string): { data: string; map: string } {
  return overlayFiles({ dir: o.dir, name: `${o.name}.snap-${id}` });
}

function removeSnapshotFiles(o: OverlayOptions, id: string): void {
  const f = snapshotFiles(o, id);
  fs.rmSync(f.data, { force: true });
  fs.rmSync(f.map, { force: true });
}

/** Copies every `DATA` granule of `map` from one sparse file to another at the same offsets. */
async function copyDataGranules(map: AllocationMap, fromFd: number, toFd: number): Promise<void> {
  let pos = 0;
  for (const e of map.extents(0, map.size)) {
    if (!e.zero) {
      for (let at = pos; at < pos + e.length; at += 4 * 1024 * 1024) {
        const n = Math.min(4 * 1024 * 1024, pos + e.length - at);
        const buf = Buffer.allocUnsafe(n);
        await preadExact(fromFd, buf, 0, n, at);
        await pwriteAll(toFd, buf, at);
      }
    }
    pos += e.length;
  }
  await fdatasync(toFd);
}

/**
 * Map file: `"OSROVMAP" | u32 version | u32 meta length | u32 crc32(meta, then map) | meta JSON | AllocationMap`,
 * written to a temporary file, fsynced and renamed so a crash leaves the old or the new map.
 */
function writeMap(file: string, meta: MapMeta, map: AllocationMap): void {
  const m = Buffer.from(JSON.stringify(meta), 'utf8');
  const body = map.encode({ size: meta.size, mtimeNs: 0n });
  const out = Buffer.alloc(MAP_HEADER + m.length + body.length);
  MAP_MAGIC.copy(out, 0);
  out.writeUInt32BE(MAP_VERSION, 8);
  out.writeUInt32BE(m.length, 12);
  out.writeUInt32BE(crc32(body, crc32(m)), 16);
  m.copy(out, MAP_HEADER);
  body.copy(out, MAP_HEADER + m.length);
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeFileSync(fd, out);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

function readMap(file: string): { meta: MapMeta; map: AllocationMap } | undefined {
  let b: Buffer;
  try {
    b = fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const bad = (why: string): ReplicaError => new ReplicaError('REPLICA_CORRUPT', `${file}: ${why}`);
  if (b.length < MAP_HEADER || !b.subarray(0, 8).equals(MAP_MAGIC))
    throw bad('not an overlay map (bad magic)');
  if (b.readUInt32BE(8) !== MAP_VERSION) throw bad(`unsupported version ${b.readUInt32BE(8)}`);
  const mLen = b.readUInt32BE(12);
  if (b.length < MAP_HEADER + mLen) throw bad('truncated');
  const m = b.subarray(MAP_HEADER, MAP_HEADER + mLen);
  const body = b.subarray(MAP_HEADER + mLen);
  if (crc32(body, crc32(m)) !== b.readUInt32BE(16)) throw bad('checksum mismatch');
  const meta = JSON.parse(m.toString('utf8')) as MapMeta;
  const decoded = AllocationMap.decode(body, { size: meta.size, mtimeNs: 0n });
  if (!decoded.map) throw bad(decoded.reason);
  return { meta, map: decoded.map };
}
