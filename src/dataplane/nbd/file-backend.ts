import * as fs from 'node:fs';
import { AllocationMap, DEFAULT_GRANULE_SIZE, GranuleState } from './allocation-map.js';
import type { BlockBackend, Extent, WriteOptions, ZeroOptions } from './backend.js';
import { NbdError } from './errors.js';
import { NbdErrno } from './protocol.js';

/** Options of `FileBackend.open`. */
export interface FileBackendOptions {
  /** Open the image read-only (`O_RDONLY`); mutations fail with `EPERM`. Default false. */
  readonly readOnly?: boolean;
  /** Allocation-map granule in bytes (power of two). Default 64 KiB. */
  readonly granuleSize?: number;
  /**
   * Where the allocation map is persisted. Default `<image>.osrmap`; `null` keeps it in memory only (it is then
   * rebuilt by a scan on every open).
   */
  readonly mapPath?: string | null;
  /**
   * Writes up to this many bytes go into the page cache with a synchronous `pwrite` on the event loop; larger
   * ones go through the libuv threadpool. Default: every write is synchronous. Measured (docs/nbd.md): the
   * threadpool hop halves small-write IOPS, and for 1 MiB writes received straight into their buffer the
   * synchronous copy costs about a third less CPU per byte than the same copy made later on a pool thread
   * (the payload is still in this CPU's cache). A smaller value keeps the loop responsive if the kernel
   * throttles writers (dirty-page limits) at the price of that CPU. Reads always use the threadpool because a
   * cold read may block for a disk seek.
   */
  readonly syncWriteMaxBytes?: number;
  /**
   * At most this many threadpool writes run at once (default 2). Measured: many concurrent 1 MiB buffered
   * writes to one file contend inside the kernel and get several times slower, while reads want many threads
   * (one per outstanding cold read).
   */
  readonly maxConcurrentWrites?: number;
}

/** How a `FileBackend` obtained its allocation map. */
export type MapSource = 'loaded' | 'scanned' | 'empty-file';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);
const SCAN_CHUNK = 4 * 1024 * 1024;

/**
 * A raw image file served as a block device, with its own allocation/zero map (see `AllocationMap`).
 *
 * The map is loaded from `<image>.osrmap` when that file is intact and matches the image's size and mtime;
 * otherwise it is rebuilt by scanning for all-zero granules (a file with no allocated blocks is known to be all
 * holes without a scan). A writable backend deletes the persisted map when it opens and writes it again on
 * `close()`: the map on disk is therefore only ever one that was complete at a clean close, so a crash can cost a
 * rescan but never a map that calls written data a hole.
 *
 * `WRITE_ZEROES` and `TRIM` over whole granules write zeros into the file only for granules that may hold data
 * (Node has no hole punching), then mark them as holes; partial granules are zero-filled for `WRITE_ZEROES` and
 * left alone for `TRIM` (advisory). Reads of granules known to be zero skip the file.
 */
export class FileBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  /** `write()` copies into the image before it settles and keeps no reference to the data. */
  readonly releasesWriteData = true;
  /** The image path. */
  readonly path: string;
  /** How the map was obtained at open. */
  readonly mapSource: MapSource;
  /** The live allocation map (read-only use outside this class). */
  readonly map: AllocationMap;
  private readonly fd: number;
  private readonly mapPath: string | null;
  private readonly syncWriteMax: number;
  private readonly maxConcurrentWrites: number;
  private activeWrites = 0;
  private readonly writeWaiters: Array<() => void> = [];
  private closed = false;

  private constructor(
    path: string,
    fd: number,
    map: AllocationMap,
    source: MapSource,
    options: FileBackendOptions,
  ) {
    this.path = path;
    this.fd = fd;
    this.map = map;
    this.size = map.size;
    this.mapSource = source;
    this.readOnly = options.readOnly ?? false;
    this.mapPath = options.mapPath === undefined ? `${path}.osrmap` : options.mapPath;
    this.syncWriteMax = options.syncWriteMaxBytes ?? Infinity;
    this.maxConcurrentWrites = Math.max(1, options.maxConcurrentWrites ?? 2);
  }

  /** Opens an existing image file; its current size is the export size. */
  static async open(path: string, options: FileBackendOptions = {}): Promise<FileBackend> {
    const readOnly = options.readOnly ?? false;
    const granule = options.granuleSize ?? DEFAULT_GRANULE_SIZE;
    const mapPath = options.mapPath === undefined ? `${path}.osrmap` : options.mapPath;
    // A plain fd (not a FileHandle) so the garbage collector can never close it under us.
    const fd = fs.openSync(path, readOnly ? 'r' : 'r+');
    try {
      const st = fs.fstatSync(fd, { bigint: true });
      if (!st.isFile()) throw new Error(`${path} is not a regular file`);
      const size = Number(st.size);
      let map: AllocationMap | undefined;
      let source: MapSource = 'loaded';
      if (mapPath !== null) {
        let raw: Buffer | undefined;
        try {
          raw = fs.readFileSync(mapPath);
        } catch {
          raw = undefined;
        }
        if (raw) map = AllocationMap.decode(raw, { size, mtimeNs: st.mtimeNs }).map;
        if (map && map.granuleSize !== granule) map = undefined;
      }
      if (!map && st.blocks === 0n) {
        map = new AllocationMap(size, granule, GranuleState.HOLE);
        source = 'empty-file';
      }
      if (!map) {
        map = await scanImage(fd, size, granule);
        source = 'scanned';
      }
      if (!readOnly && mapPath !== null) fs.rmSync(mapPath, { force: true });
      return new FileBackend(path, fd, map, source, options);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into ?? Buffer.allocUnsafe(length);
    if (length === 0) return buf;
    if (this.map.isZero(offset, length)) {
      buf.fill(0, 0, length);
      return buf;
    }
    await preadFully(this.fd, buf, length, offset);
    return buf;
  }

  /**
   * `read` on the calling thread, for callers that read small ranges of recently written (page-cached) images
   * and would pay more for the threadpool hop than for the copy.
   */
  readSync(offset: number, length: number, into: Buffer): Buffer {
    this.assertRange(offset, length);
    if (length === 0) return into;
    if (this.map.isZero(offset, length)) return into.fill(0, 0, length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, into, done, length - done, offset + done);
      if (n === 0) {
        into.fill(0, done, length);
        break;
      }
      done += n;
    }
    return into;
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.assertWritable();
    this.assertRange(offset, data.length);
    // Mark before writing: a concurrent read or block-status must never skip bytes that may already be on disk.
    this.map.markData(offset, data.length);
    if (data.length <= this.syncWriteMax) pwriteFullySync(this.fd, data, offset);
    else await this.threadpoolWrite(data, offset);
    if (options?.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    this.assertWritable();
    this.assertRange(offset, length);
    const noHole = options?.noHole ?? false;
    const fill: Array<[number, number]> = [];
    const updates: Array<[number, GranuleState]> = [];
    const { first, end } = this.map.coveredGranules(offset, length);
    this.planPartial(offset, length, first, end, fill);
    for (let i = first; i < end; i++) {
      const state = this.map.get(i);
      const r = this.map.granuleRange(i);
      if (state === GranuleState.DATA || (noHole && state === GranuleState.HOLE))
        addRange(fill, r.start, r.end);
      updates.push([i, noHole ? GranuleState.ZERO : GranuleState.HOLE]);
    }
    if (options?.fastZero && fill.length > 0) {
      throw new NbdError(NbdErrno.ENOTSUP, 'zeroing this range needs data writes');
    }
    await this.zeroFill(fill);
    for (const [i, s] of updates) this.map.set(i, s);
    if (options?.fua) await this.flush();
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.assertWritable();
    this.assertRange(offset, length);
    const fill: Array<[number, number]> = [];
    const { first, end } = this.map.coveredGranules(offset, length);
    for (let i = first; i < end; i++) {
      if (this.map.get(i) === GranuleState.DATA) {
        const r = this.map.granuleRange(i);
        addRange(fill, r.start, r.end);
      }
    }
    await this.zeroFill(fill);
    for (let i = first; i < end; i++) this.map.set(i, GranuleState.HOLE);
    if (options?.fua) await this.flush();
  }

  flush(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return Promise.resolve(this.map.extents(offset, length));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.readOnly) {
        await this.flush();
        if (this.mapPath !== null) {
          const st = fs.fstatSync(this.fd, { bigint: true });
          const tmp = `${this.mapPath}.tmp`;
          const mfd = fs.openSync(tmp, 'w');
          try {
            fs.writeFileSync(mfd, this.map.encode({ size: this.size, mtimeNs: st.mtimeNs }));
            fs.fsyncSync(mfd);
          } finally {
            fs.closeSync(mfd);
          }
          fs.renameSync(tmp, this.mapPath);
        }
      }
    } finally {
      fs.closeSync(this.fd);
    }
  }

  private async threadpoolWrite(data: Buffer, offset: number): Promise<void> {
    if (this.activeWrites >= this.maxConcurrentWrites) {
      // The finishing write hands its slot over directly, so the limit holds without re-checking.
      await new Promise<void>((resolve) => this.writeWaiters.push(resolve));
    } else {
      this.activeWrites++;
    }
    try {
      await pwriteFully(this.fd, data, offset);
    } finally {
      const next = this.writeWaiters.shift();
      if (next) next();
      else this.activeWrites--;
    }
  }

  private assertWritable(): void {
    if (this.readOnly) throw new NbdError(NbdErrno.EPERM, 'read-only image');
  }

  /** Defence in depth for direct callers: a mutation must never grow or write past the image. */
  private assertRange(offset: number, length: number): void {
    if (!(offset >= 0 && length >= 0 && offset + length <= this.size)) {
      throw new NbdError(NbdErrno.ENOSPC, `range ${offset}+${length} is outside the ${this.size}-byte image`);
    }
  }

  /** Zero-fill the parts of partial granules at the edges of a zeroing range that may hold data. */
  private planPartial(
    offset: number,
    length: number,
    first: number,
    end: number,
    fill: Array<[number, number]>,
  ): void {
    const stop = offset + length;
    const coveredStart = first < end ? first * this.map.granuleSize : stop;
    const coveredEnd = first < end ? Math.min(end * this.map.granuleSize, this.size) : stop;
    const edges: Array<[number, number]> = [
      [offset, Math.min(coveredStart, stop)],
      [Math.max(coveredEnd, offset), stop],
    ];
    for (const [a, b] of edges) {
      if (a >= b) continue;
      for (let pos = a; pos < b;) {
        const g = this.map.granuleOf(pos);
        const gEnd = Math.min(this.map.granuleRange(g).end, b);
        if (this.map.get(g) === GranuleState.DATA) addRange(fill, pos, gEnd);
        pos = gEnd;
      }
    }
    fill.sort((x, y) => x[0] - y[0]);
  }

  private async zeroFill(ranges: Array<[number, number]>): Promise<void> {
    for (const [start, end] of ranges) {
      for (let pos = start; pos < end; pos += ZERO_CHUNK.length) {
        const chunk = ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, end - pos));
        if (chunk.length <= this.syncWriteMax) pwriteFullySync(this.fd, chunk, pos);
        else await this.threadpoolWrite(chunk, pos);
      }
    }
  }
}

function addRange(ranges: Array<[number, number]>, start: number, end: number): void {
  const last = ranges[ranges.length - 1];
  if (last && last[1] === start) last[1] = end;
  else ranges.push([start, end]);
}

/** Builds a map by reading the whole image and marking all-zero granules as holes. */
async function scanImage(fd: number, size: number, granule: number): Promise<AllocationMap> {
  const map = new AllocationMap(size, granule, GranuleState.HOLE);
  const chunk = Math.max(granule, SCAN_CHUNK - (SCAN_CHUNK % granule));
  const buf = Buffer.allocUnsafe(chunk);
  const zeros = Buffer.alloc(granule);
  for (let pos = 0; pos < size; pos += chunk) {
    const n = Math.min(chunk, size - pos);
    await preadFully(fd, buf, n, pos);
    for (let off = 0; off < n; off += granule) {
      const m = Math.min(granule, n - off);
      if (!buf.subarray(off, off + m).equals(zeros.subarray(0, m)))
        map.set((pos + off) / granule, GranuleState.DATA);
    }
  }
  return map;
}

/** Reads exactly `length` bytes; bytes past the end of a file shrunk behind our back read as zeros. */
function preadFully(fd: number, buf: Buffer, length: number, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.read(fd, buf, done, length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) {
          buf.fill(0, done, length);
          return resolve();
        }
        done += n;
        if (done >= length) resolve();
        else step();
      });
    };
    step();
  });
}

function pwriteFullySync(fd: number, data: Buffer, position: number): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, position + done);
}

function pwriteFully(fd: number, data: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.write(fd, data, done, data.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (done >= data.length) resolve();
        else step();
      });
    };
    step();
  });
}
