import type { BlockBackend, Extent, WriteOptions, ZeroOptions } from './backend.js';
import { NbdError } from './errors.js';
import { NbdErrno } from './protocol.js';

/** A WRITE handed to a `WriteObserver`. */
export interface WriteEvent {
  readonly offset: number;
  /** The written bytes; never modified afterwards, so the observer may keep the buffer. */
  readonly data: Buffer;
  /** The client asked for force-unit-access: resolve only once the event is durable. */
  readonly fua: boolean;
}

/** A WRITE_ZEROES handed to a `WriteObserver`. */
export interface ZeroEvent {
  readonly offset: number;
  readonly length: number;
  readonly fua: boolean;
  /** The client asked to keep the range allocated. */
  readonly noHole: boolean;
}

/** A TRIM handed to a `WriteObserver`. */
export interface TrimEvent {
  readonly offset: number;
  readonly length: number;
  readonly fua: boolean;
}

/**
 * Receives every mutation of an `ObservedBackend` (the write journal implements this).
 *
 * The `on*` methods are called synchronously, one at a time, in exactly the order the mutations are applied to
 * the inner backend, so the observer can assign sequence numbers on entry. The returned promise means "accepted"
 * (e.g. appended to the journal; durable when `fua` is set); a rejection fails the client's request and the
 * mutation is not applied. The observer must not call back into the backend.
 */
export interface WriteObserver {
  onWrite(event: WriteEvent): Promise<void>;
  onZero(event: ZeroEvent): Promise<void>;
  onTrim(event: TrimEvent): Promise<void>;
  /** A client FLUSH: resolve once every event accepted before this call is durable. */
  onFlush(): Promise<void>;
}

/**
 * Wraps a backend so each mutation is handed to an observer before it is applied (the write hook of DESIGN §2
 * "Capture": journal append first, then apply to the image, then acknowledge).
 *
 * For every write/zero/trim: (1) the observer is called at once, in call order; (2) once it has accepted, the
 * mutation is applied to the inner backend; applications happen strictly one after another in the observed order,
 * so replaying the observer's stream always reproduces the image even for overlapping in-flight writes; (3) the
 * returned promise resolves only after both. FLUSH resolves after the observer's `onFlush()` and the inner
 * `flush()`. Reads and block status go straight to the inner backend.
 */
export class ObservedBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  private readonly inner: BlockBackend;
  private readonly observer: WriteObserver;
  /** Settles when the last queued application has finished (never rejects). */
  private tail: Promise<void> = Promise.resolve();

  constructor(inner: BlockBackend, observer: WriteObserver) {
    this.inner = inner;
    this.observer = observer;
    this.size = inner.size;
    this.readOnly = inner.readOnly;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.inner.read(offset, length, into);
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    const fua = options?.fua ?? false;
    return this.sequence(
      () => this.observer.onWrite({ offset, data, fua }),
      () => this.inner.write(offset, data, options),
    );
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    const fua = options?.fua ?? false;
    const noHole = options?.noHole ?? false;
    return this.sequence(
      () => this.observer.onZero({ offset, length, fua, noHole }),
      // FAST_ZERO is decided by the inner backend after the observer accepted; a refusal then leaves a journal
      // record for a zeroing the image did not get, so it is not forwarded (the client falls back to writes
      // anyway, and the observer cannot be asked first whether the image could do it fast).
      () => this.inner.writeZeroes(offset, length, { ...options, fastZero: false }),
    );
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    const fua = options?.fua ?? false;
    return this.sequence(
      () => this.observer.onTrim({ offset, length, fua }),
      () => this.inner.trim(offset, length, options),
    );
  }

  async flush(): Promise<void> {
    const observed = this.observer.onFlush();
    await Promise.all([observed, this.inner.flush()]);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length);
  }

  /**
   * Reads once every mutation already handed to the observer has been applied, and before any mutation handed
   * to it later is applied: the bytes are exactly the image at the observer's current position in its stream.
   * Initial copy and resync call this in the same tick as they take a sequence number from the journal, so the
   * copied block lands in the stream at exactly the place its bytes belong.
   */
  readInOrder(offset: number, length: number): Promise<Buffer> {
    const read = this.tail.then(() => this.inner.read(offset, length));
    this.tail = read.then(
      () => undefined,
      () => undefined,
    );
    return read;
  }

  /**
   * Reads once every mutation already handed to the observer has been applied; mutations handed to it later may
   * land before or during the read (it does not hold them back). For blocks whose place in the stream is only
   * bounded from below (a streamed initial copy, `WriteJournal.appendStreamed`).
   */
  readApplied(offset: number, length: number): Promise<Buffer> {
    return this.tail.then(() => this.inner.read(offset, length));
  }

  async close(): Promise<void> {
    await this.tail;
    await this.inner.close();
  }

  private sequence(observe: () => Promise<void>, apply: () => Promise<void>): Promise<void> {
    if (this.readOnly) return Promise.reject(new NbdError(NbdErrno.EPERM, 'read-only backend'));
    let accepted: Promise<void>;
    try {
      accepted = observe();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    // Marks the rejection as handled now; it is still delivered to the client through `applied`.
    accepted.catch(() => undefined);
    // Wait for the previous application first, even if this event was refused, so applications never overlap.
    const applied = this.tail.then(() => accepted).then(apply);
    this.tail = applied.then(
      () => undefined,
      () => undefined,
    );
    return applied;
  }
}
