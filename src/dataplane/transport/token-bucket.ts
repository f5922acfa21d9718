import { setTimeout as delay } from 'node:timers/promises';

/** Options of `TokenBucket`. */
export interface TokenBucketOptions {
  /**
   * The limit in force at a moment, in megabits per second (`null` = unlimited). Asked on every `take`, so a
   * time-of-day schedule (R-POL-9, `bandwidthLimitAt` of the domain) takes effect within one batch.
   */
  readonly limitAt: (at: Date) => number | null;
  /** Seconds of traffic that may be sent in a burst after an idle spell. Default 0.25. */
  readonly burstSeconds?: number;
  /** Milliseconds since the epoch. Default `Date.now`. */
  readonly clock?: () => number;
}

/**
 * Bandwidth limiter for the replication link. `take(n)` resolves when `n` bytes may be sent; the bucket may go
 * into debt by one frame so a frame larger than the burst never waits forever.
 */
export class TokenBucket {
  private readonly limitAt: (at: Date) => number | null;
  private readonly burstSeconds: number;
  private readonly clock: () => number;
  private tokens = 0;
  private last: number;

  constructor(options: TokenBucketOptions) {
    this.limitAt = options.limitAt;
    this.burstSeconds = options.burstSeconds ?? 0.25;
    this.clock = options.clock ?? Date.now;
    this.last = this.clock();
  }

  /** The limit in force now in bytes per second, or `null` when unlimited. */
  rateNow(): number | null {
    const mbps = this.limitAt(new Date(this.clock()));
    return mbps === null || !(mbps > 0) ? null : (mbps * 1_000_000) / 8;
  }

  /** Waits until `bytes` may be sent under the limit in force; rejects when `signal` aborts. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const rate = this.rateNow();
    const now = this.clock();
    if (rate === null) {
      this.tokens = 0;
      this.last = now;
      return;
    }
    const capacity = rate * this.burstSeconds;
    this.tokens = Math.min(capacity, this.tokens + ((now - this.last) / 1000) * rate);
    this.last = now;
    this.tokens -= bytes;
    if (this.tokens >= 0) return;
    await delay(Math.ceil((-this.tokens / rate) * 1000), undefined, { signal });
  }
}
