/**
 * The block-device contract behind every NBD export.
 *
 * The NBD server speaks only to this interface, so anything that can answer these calls can be served: the raw
 * image file (`FileBackend`), an in-memory disk (`MemoryBackend`), the replica store's read-only views at a recovery
 * point and its writable overlays, or a wrapper such as `ObservedBackend` that hands every mutation to the write
 * journal first.
 *
 * Rules every implementation keeps (the server relies on them and does not re-check beyond range validation):
 * - Offsets and lengths passed in are already validated: `0 <= offset`, `offset + length <= size`, and mutating
 *   calls are never made when `readOnly` is true. `length` may be 0.
 * - A call's promise settles only when the operation is complete as seen by later calls: once `write()` resolved,
 *   a `read()` started afterwards returns the new bytes (from any connection sharing the backend).
 * - Durability: after `flush()` resolves, every mutation that resolved before `flush()` was called is on stable
 *   storage. A mutation with `fua: true` resolves only once it is itself on stable storage. Because every
 *   connection to an export shares one backend, this makes flush semantics hold across connections (the server
 *   advertises `NBD_FLAG_CAN_MULTI_CONN` on that basis).
 * - Failures reject with `NbdError` to choose the NBD error value the client sees; any other error is reported as
 *   `EIO` (host `ENOSPC`/`EROFS`… are mapped, see `toNbdErrno`).
 * - Concurrency: calls may overlap. Results of overlapping reads and writes to the same bytes are unspecified
 *   (as in NBD), but the backend must stay internally consistent.
 */
export interface BlockBackend {
  /** Size in bytes; fixed for the backend's lifetime. */
  readonly size: number;
  /** True when the backend refuses mutations; the server then advertises a read-only export. */
  readonly readOnly: boolean;
  /**
   * Optional promise that `write()` never keeps `data` once its promise has settled (it copied the bytes to
   * storage). The server then reuses the buffer for a later request's payload; leave it unset when the bytes
   * are kept (a journal, a cache).
   */
  readonly releasesWriteData?: boolean;

  /**
   * Reads `length` bytes at `offset`. When `into` is given (exactly `length` bytes) the data is written there and
   * `into` is returned, which lets the server read straight into its reply buffer.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;

  /** Writes `data` at `offset`. The backend may keep `data`; the caller never modifies it afterwards. */
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void>;

  /**
   * Makes `length` bytes at `offset` read back as zeros. With `noHole` the range stays (or becomes) allocated;
   * without it the backend may deallocate. With `fastZero` the backend must fail with `ENOTSUP`, changing
   * nothing, when zeroing would not be faster than writing zeros (spec `NBD_CMD_FLAG_FAST_ZERO`).
   */
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;

  /**
   * Advisory discard: the backend may deallocate the range; its contents are unspecified until rewritten
   * (implementations here make it read back as zeros where whole allocation granules are covered).
   */
  trim(offset: number, length: number, options?: WriteOptions): Promise<void>;

  /** Makes every mutation that completed before this call durable. */
  flush(): Promise<void>;

  /**
   * Describes allocation of `[offset, offset + length)` as consecutive extents starting exactly at `offset`.
   * The extents may cover less than `length` (the client asks again for the rest) but never more, and there is
   * at least one extent when `length > 0`. `hole` and `zero` are hints: reporting `{hole:false, zero:false}` is
   * always correct; `zero: true` promises the bytes read back as zeros.
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;

  /** Flushes, persists any metadata and releases resources. No calls are made after `close()`. */
  close(): Promise<void>;
}

/** Options of mutating backend calls. */
export interface WriteOptions {
  /** Force unit access: resolve only once this mutation is on stable storage. */
  readonly fua?: boolean;
}

/** Options of `BlockBackend.writeZeroes`. */
export interface ZeroOptions extends WriteOptions {
  /** Keep the range allocated (`NBD_CMD_FLAG_NO_HOLE`). */
  readonly noHole?: boolean;
  /** Fail with `ENOTSUP` instead of doing slow work (`NBD_CMD_FLAG_FAST_ZERO`). */
  readonly fastZero?: boolean;
}

/** One run of bytes with the same allocation state (the `base:allocation` metadata context). */
export interface Extent {
  /** Length in bytes, > 0. */
  readonly length: number;
  /** Not allocated in the backing store (`NBD_STATE_HOLE`). */
  readonly hole: boolean;
  /** Reads back as zeros (`NBD_STATE_ZERO`). */
  readonly zero: boolean;
}
