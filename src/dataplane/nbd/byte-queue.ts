/**
 * A FIFO of received bytes that hands out contiguous buffers without copying when a request lies inside one
 * received chunk, and copies at most once otherwise. Used by both ends of the NBD connection to parse headers
 * and payloads from a stream of arbitrarily split chunks.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  private offsetInHead = 0;
  private total = 0;

  /** Number of buffered bytes. */
  get length(): number {
    return this.total;
  }

  /** Appends a received chunk; the queue keeps a reference, so the caller must not reuse the buffer. */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * Removes and returns the next `n` bytes (`n <= length`). The result may share memory with a pushed chunk;
   * it stays valid because pushed chunks are never written to.
   */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`ByteQueue.take(${n}) with only ${this.total} bytes buffered`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[this.head]!;
    const avail = first.length - this.offsetInHead;
    if (avail >= n) {
      const out = first.subarray(this.offsetInHead, this.offsetInHead + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[this.head]!;
      const m = Math.min(c.length - this.offsetInHead, n - filled);
      c.copy(out, filled, this.offsetInHead, this.offsetInHead + m);
      filled += m;
      this.advance(m);
    }
    return out;
  }

  /** Removes the next `n` bytes (`n <= length`) by copying them into `target` at `at`. */
  takeInto(target: Buffer, at: number, n: number): void {
    if (n > this.total)
      throw new RangeError(`ByteQueue.takeInto(${n}) with only ${this.total} bytes buffered`);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[this.head]!;
      const m = Math.min(c.length - this.offsetInHead, n - filled);
      c.copy(target, at + filled, this.offsetInHead, this.offsetInHead + m);
      filled += m;
      this.advance(m);
    }
  }

  /** Discards the next `n` bytes (`n <= length`). */
  skip(n: number): void {
    if (n > this.total) throw new RangeError(`ByteQueue.skip(${n}) with only ${this.total} bytes buffered`);
    while (n > 0) {
      const c = this.chunks[this.head]!;
      const m = Math.min(c.length - this.offsetInHead, n);
      this.advance(m);
      n -= m;
    }
  }

  /** Reads a big-endian u32 at `at` bytes from the front without consuming (`at + 4 <= length`). */
  peekUInt32BE(at: number): number {
    let v = 0;
    for (let i = 0; i < 4; i++) v = v * 256 + this.peekByte(at + i);
    return v;
  }

  /** Drops everything buffered. */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.offsetInHead = 0;
    this.total = 0;
  }

  private peekByte(at: number): number {
    let idx = this.head;
    let pos = this.offsetInHead + at;
    for (;;) {
      const c = this.chunks[idx];
      if (c === undefined) throw new RangeError('ByteQueue.peek past the end');
      if (pos < c.length) return c[pos]!;
      pos -= c.length;
      idx++;
    }
  }

  private advance(n: number): void {
    this.offsetInHead += n;
    this.total -= n;
    const c = this.chunks[this.head]!;
    if (this.offsetInHead === c.length) {
      this.head++;
      this.offsetInHead = 0;
      if (this.head > 64 && this.head * 2 > this.chunks.length) {
        this.chunks = this.chunks.slice(this.head);
        this.head = 0;
      } else if (this.head === this.chunks.length) {
        this.chunks.length = 0;
        this.head = 0;
      }
    }
  }
}
