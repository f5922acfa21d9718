/** One saved range of old bytes: what `[offset, offset + length)` held just before change `seq` was applied. */
export interface UndoEntry {
  readonly seq: number;
  readonly offset: number;
  readonly length: number;
  /** File descriptor of the undo segment holding the bytes, or -1 when the old bytes were all zeros. */
  readonly fd: number;
  /** Position of the entry's first data byte in that segment. */
  readonly pos: number;
}

/** A piece of a read answered by an undo entry. */
export interface UndoFill {
  readonly entry: UndoEntry;
  readonly start: number;
  readonly end: number;
}

/** How a range at a point resolves: pieces from undo entries, and holes answered by the base image. */
export interface Resolution {
  readonly fills: UndoFill[];
  readonly holes: Array<[number, number]>;
}

/** Index granule: entries are filed under every 64 KiB granule they touch. */
export const INDEX_GRANULE = 64 * 1024;

/**
 * The in-memory index of one disk's undo entries: granule → entries in ascending seq order (they are added in
 * apply order). Answers, for every byte of a range, "the first entry after point seq p that covers it" with
 * byte precision.
 */
export class DiskUndoIndex {
  private readonly granules = new Map<number, UndoEntry[]>();
  /** Bumped on every `add`, so a reader can tell whether entries appeared while it read the base. */
  version = 0;
  /** Number of live entries (an entry spanning several granules counts once). */
  count = 0;

  /** Files an entry; entries must come in non-decreasing seq order. */
  add(e: UndoEntry): void {
    if (e.length <= 0) return;
    const last = Math.floor((e.offset + e.length - 1) / INDEX_GRANULE);
    for (let g = Math.floor(e.offset / INDEX_GRANULE); g <= last; g++) {
      let arr = this.granules.get(g);
      if (!arr) this.granules.set(g, (arr = []));
      arr.push(e);
    }
    this.count++;
    this.version++;
  }

  /**
   * Resolves `[offset, offset + length)` at the point with seq `afterSeq`: every byte covered by an entry with
   * seq > `afterSeq` is taken from the first (lowest seq) such entry; the rest are holes, in ascending order and
   * merged. Synchronous, so it sees one consistent state of the index.
   */
  resolve(afterSeq: number, offset: number, length: number): Resolution {
    const fills: UndoFill[] = [];
    const holes: Array<[number, number]> = [];
    const stop = offset + length;
    const addHole = (a: number, b: number): void => {
      const h = holes[holes.length - 1];
      if (h && h[1] === a) h[1] = b;
      else holes.push([a, b]);
    };
    for (let pos = offset; pos < stop;) {
      const g = Math.floor(pos / INDEX_GRANULE);
      const pieceEnd = Math.min(stop, (g + 1) * INDEX_GRANULE);
      const arr = this.granules.get(g);
      if (!arr) {
        addHole(pos, pieceEnd);
        pos = pieceEnd;
        continue;
      }
      let uncovered: Array<[number, number]> = [[pos, pieceEnd]];
      for (let i = firstAfter(arr, afterSeq); i < arr.length && uncovered.length > 0; i++) {
        const e = arr[i]!;
        const es = e.offset;
        const ee = e.offset + e.length;
        const next: Array<[number, number]> = [];
        for (const [u0, u1] of uncovered) {
          if (ee <= u0 || es >= u1) {
            next.push([u0, u1]);
            continue;
          }
          const s = Math.max(u0, es);
          const t = Math.min(u1, ee);
          fills.push({ entry: e, start: s, end: t });
          if (u0 < s) next.push([u0, s]);
          if (t < u1) next.push([t, u1]);
        }
        uncovered = next;
      }
      uncovered.sort((x, y) => x[0] - y[0]);
      for (const [a, b] of uncovered) addHole(a, b);
      pos = pieceEnd;
    }
    return { fills, holes };
  }

  /** Ranges (merged, ascending) covered by entries with seq > `afterSeq`: where the point differs from the base. */
  rangesAfter(afterSeq: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    const keys = [...this.granules.keys()].sort((a, b) => a - b);
    for (const g of keys) {
      const arr = this.granules.get(g)!;
      const lo = g * INDEX_GRANULE;
      const hi = lo + INDEX_GRANULE;
      const pieces: Array<[number, number]> = [];
      for (let i = firstAfter(arr, afterSeq); i < arr.length; i++) {
        const e = arr[i]!;
        pieces.push([Math.max(lo, e.offset), Math.min(hi, e.offset + e.length)]);
      }
      pieces.sort((x, y) => x[0] - y[0]);
      for (const [a, b] of pieces) {
        const last = out[out.length - 1];
        if (last && last[1] >= a) last[1] = Math.max(last[1], b);
        else out.push([a, b]);
      }
    }
    return out;
  }

  /** Drops entries with seq < `floorSeq` (no retained point needs them). */
  prune(floorSeq: number): void {
    const dropped = new Set<UndoEntry>();
    for (const [g, arr] of this.granules) {
      const i = firstAfter(arr, floorSeq - 1);
      if (i === 0) continue;
      for (let k = 0; k < i; k++) dropped.add(arr[k]!);
      // A new array, not an in-place splice: nothing holds on to the old one across an await, but stay safe.
      if (i >= arr.length) this.granules.delete(g);
      else this.granules.set(g, arr.slice(i));
    }
    this.count -= dropped.size;
    this.version++;
  }

  /** Drops everything. */
  clear(): void {
    this.granules.clear();
    this.count = 0;
    this.version++;
  }
}

/** Index of the first entry with seq > `seq` (entries sorted by seq). */
function firstAfter(arr: readonly UndoEntry[], seq: number): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid]!.seq > seq) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
