/**
 * The ledger workload (DESIGN §3): a small program that appends numbered, checksummed
 * records to its disk through NBD at a set rate, FLUSHing after each batch, and that
 * refuses to start unless the disk holds an unbroken prefix of records — the demo
 * machine and the tests' proof of crash consistency. Freeze finishes the write in
 * flight and pauses (the app-consistency hook); thaw resumes. Its status is served
 * over HTTP (`GET /status`, `POST /freeze`, `POST /thaw`).
 */
import * as http from 'node:http';
import { open } from 'node:fs/promises';
import { NbdClient } from '../dataplane/nbd/client.js';
import { NbdOptionError, NbdProtocolError } from '../dataplane/nbd/errors.js';
import { RECORD_SIZE, checkLedger, encodeRecord } from './ledger-format.js';
import type { LedgerCheck, LedgerRecord, ReadableDisk } from './ledger-format.js';

export * from './ledger-format.js';

/** An error the ledger stops with; `code` is shown by the CLI. */
export class LedgerError extends Error {
  readonly code: string;
  constructor(code: 'LEDGER_BROKEN' | 'LEDGER_DISK', message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LedgerError';
    this.code = code;
  }
}

/** Where an NBD export is: `nbd://host[:port]/export`. */
export interface NbdAddress {
  host: string;
  port: number;
  exportName: string;
}

/** Parses `nbd://host[:port]/export` (port default 10809). */
export function parseNbdUri(uri: string): NbdAddress {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new LedgerError(
      'LEDGER_DISK',
      `not an NBD URI: ${JSON.stringify(uri)} (expected nbd://host:port/export)`,
    );
  }
  if (u.protocol !== 'nbd:')
    throw new LedgerError('LEDGER_DISK', `not an NBD URI: ${uri} (expected nbd://host:port/export)`);
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port === '' ? 10809 : Number(u.port),
    exportName: decodeURIComponent(u.pathname.replace(/^\//, '')),
  };
}

/** A disk the checker can read: an NBD export (through our client) or an image file. */
export async function openReadableDisk(target: string): Promise<ReadableDisk & { close(): Promise<void> }> {
  if (target.startsWith('nbd://')) {
    const a = parseNbdUri(target);
    const c = await NbdClient.connect({ host: a.host, port: a.port, exportName: a.exportName });
    return {
      size: c.size,
      read: (o, l) => c.read(o, l),
      zeroRanges: c.metaContexts.has('base:allocation')
        ? async (o, l) => {
            let at = o;
            return (await c.blockStatus(o, l)).map((e) => {
              const r = { offset: at, length: e.length, zero: e.zero };
              at += e.length;
              return r;
            });
          }
        : undefined,
      close: () => c.disconnect(),
    };
  }
  const fh = await open(target, 'r');
  const size = (await fh.stat()).size;
  return {
    size,
    read: async (o, l) => {
      const b = Buffer.alloc(l);
      const { bytesRead } = await fh.read(b, 0, l, o);
      return b.subarray(0, bytesRead).length === l
        ? b
        : Buffer.concat([b.subarray(0, bytesRead), Buffer.alloc(l - bytesRead)]);
    },
    close: () => fh.close(),
  };
}

/** Options of `Ledger.start`. */
export interface LedgerOptions {
  /** `nbd://host:port/export` of the disk. */
  disk: string;
  /** Records per second (default 10). */
  rate?: number;
  /** Serve status on this port (0 = any free one); no HTTP when undefined. */
  httpPort?: number;
  httpHost?: string;
  /** On a broken disk, keep the unbroken prefix and zero the rest instead of refusing. */
  repairFromPrefix?: boolean;
  /** Keep trying to reconnect to the disk this long before giving up (default 120 s). */
  reconnectTimeoutMs?: number;
  /** Progress lines for the operator. */
  log?: (line: string) => void;
}

/** What `GET /status` answers. */
export interface LedgerStatus {
  disk: string;
  /** Records on the disk (the prefix found at start plus those appended since). */
  count: number;
  last: LedgerRecord | null;
  lastCheck: {
    at: string;
    ok: boolean;
    records: number;
    last: LedgerRecord | null;
    repaired: boolean;
    problem: string | null;
  };
  frozen: boolean;
  /** The disk has no room for another record. */
  full: boolean;
  rate: number;
}

/** A running ledger. */
export class Ledger {
  readonly #o: LedgerOptions;
  readonly #addr: NbdAddress;
  #client: NbdClient;
  #count: number;
  #last: LedgerRecord | null;
  readonly #check: LedgerStatus['lastCheck'];
  #frozen = false;
  #full = false;
  #stopped = false;
  #inflight: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #credit = 0;
  #lastTick = Date.now();
  #http: http.Server | undefined;
  #failed: ((err: Error) => void) | undefined;
  /** Rejects when the ledger gives up (disk gone for longer than the reconnect timeout). */
  readonly failed: Promise<never>;

  private constructor(
    o: LedgerOptions,
    addr: NbdAddress,
    client: NbdClient,
    check: LedgerCheck,
    repaired: boolean,
  ) {
    this.#o = o;
    this.#addr = addr;
    this.#client = client;
    this.#count = check.records;
    this.#last = check.last;
    this.#check = {
      at: new Date().toISOString(),
      ok: check.ok,
      records: check.records,
      last: check.last,
      repaired,
      problem: check.problem?.reason ?? null,
    };
    this.failed = new Promise<never>((_resolve, reject) => (this.#failed = reject));
    this.failed.catch(() => undefined);
  }

  /**
   * Connects, checks the disk (refusing a broken ledger with LEDGER_BROKEN unless
   * `repairFromPrefix`), starts serving status and appending.
   */
  static async start(o: LedgerOptions): Promise<Ledger> {
    const addr = parseNbdUri(o.disk);
    const { client, check } = await Ledger.#connectAndCheck(o, addr);
    try {
      let repaired = false;
      if (!check.ok) {
        const where = check.problem?.reason ?? 'unknown problem';
        if (o.repairFromPrefix !== true) {
          throw new LedgerError(
            'LEDGER_BROKEN',
            `the disk ${o.disk} does not hold an unbroken prefix of ledger records: ${where}; ${check.records} good records before it (last #${check.last?.seq ?? 0}). Refusing to start; --repair-from-prefix keeps those and clears the rest.`,
          );
        }
        const from = check.records * RECORD_SIZE;
        await client.writeZeroes(from, client.size - from);
        await client.flush();
        repaired = true;
        o.log?.(`ledger: repaired: kept ${check.records} records, cleared the rest (${where})`);
      }
      const ledger = new Ledger(o, addr, client, check, repaired);
      await ledger.#listen();
      ledger.#schedule();
      o.log?.(
        `ledger: ${o.disk} holds ${check.records} records${check.last ? ` (last #${check.last.seq} at ${new Date(check.last.time).toISOString()})` : ''}; appending ${o.rate ?? 10}/s`,
      );
      return ledger;
    } catch (err) {
      client.destroy();
      throw err;
    }
  }

  /**
   * Connects and checks the disk, retrying (with backoff, up to the reconnect timeout) while the disk cannot be
   * reached or the connection drops during the check (a refused export fails at once): a machine that boots while its agent restarts waits for its disk, as it
   * would after it started.
   */
  static async #connectAndCheck(
    o: LedgerOptions,
    addr: NbdAddress,
  ): Promise<{ client: NbdClient; check: LedgerCheck }> {
    const deadline = Date.now() + (o.reconnectTimeoutMs ?? 120_000);
    let delay = 100;
    for (;;) {
      let client: NbdClient | undefined;
      try {
        client = await NbdClient.connect({
          host: addr.host,
          port: addr.port,
          exportName: addr.exportName,
          timeoutMs: 5000,
        });
        const c = client;
        const check = await checkLedger({ size: c.size, read: (off, len) => c.read(off, len) });
        return { client, check };
      } catch (err) {
        client?.destroy();
        // A server that refuses the export or does not speak NBD will not change its mind.
        if (err instanceof NbdOptionError || err instanceof NbdProtocolError) throw err;
        if (Date.now() > deadline) {
          throw new LedgerError('LEDGER_DISK', `cannot reach the disk ${o.disk}: ${(err as Error).message}`, {
            cause: err,
          });
        }
        o.log?.(`ledger: the disk cannot be read (${(err as Error).message}); retrying`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 2000);
    }
  }

  /** The bound status address, when serving HTTP. */
  get httpAddress(): { host: string; port: number } | undefined {
    const a = this.#http?.address();
    return typeof a === 'object' && a !== null ? { host: a.address, port: a.port } : undefined;
  }

  status(): LedgerStatus {
    return {
      disk: this.#o.disk,
      count: this.#count,
      last: this.#last,
      lastCheck: { ...this.#check },
      frozen: this.#frozen,
      full: this.#full,
      rate: this.#o.rate ?? 10,
    };
  }

  /** Finishes the batch in flight (written and flushed), then pauses appending. */
  async freeze(): Promise<LedgerStatus> {
    this.#frozen = true;
    await this.#inflight;
    return this.status();
  }

  /** Resumes appending (without a burst for the time spent frozen). */
  thaw(): LedgerStatus {
    this.#frozen = false;
    this.#lastTick = Date.now();
    this.#credit = 0;
    return this.status();
  }

  /** Finishes the batch in flight, stops, disconnects cleanly. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    await this.#inflight;
    await new Promise<void>((resolve) => (this.#http ? this.#http.close(() => resolve()) : resolve()));
    await this.#client.disconnect();
  }

  async #listen(): Promise<void> {
    if (this.#o.httpPort === undefined) return;
    const server = http.createServer((req, res) => {
      const reply = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body) + '\n');
      };
      const route = `${req.method ?? ''} ${(req.url ?? '').split('?')[0] ?? ''}`;
      if (route === 'GET /status') return reply(200, this.status());
      if (route === 'POST /freeze') {
        this.freeze().then(
          (s) => reply(200, s),
          (err: unknown) => reply(500, { error: String(err) }),
        );
        return;
      }
      if (route === 'POST /thaw') return reply(200, this.thaw());
      reply(404, { error: `no route ${route}` });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#o.httpPort, this.#o.httpHost ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#http = server;
  }

  #schedule(): void {
    if (this.#stopped) return;
    const rate = this.#o.rate ?? 10;
    const interval = Math.max(20, Math.min(200, 1000 / rate));
    this.#timer = setTimeout(() => {
      this.#inflight = this.#tick(rate).finally(() => (this.#inflight = undefined));
      this.#inflight.then(
        () => this.#schedule(),
        (err: unknown) => this.#failed?.(err instanceof Error ? err : new Error(String(err))),
      );
    }, interval);
  }

  async #tick(rate: number): Promise<void> {
    const now = Date.now();
    this.#credit = Math.min(this.#credit + ((now - this.#lastTick) / 1000) * rate, Math.max(1, rate));
    this.#lastTick = now;
    if (this.#frozen || this.#full || this.#stopped) return;
    const room = Math.floor(this.#client.size / RECORD_SIZE) - this.#count;
    const n = Math.min(Math.floor(this.#credit), room, 256);
    if (room <= 0) {
      this.#full = true;
      this.#o.log?.(`ledger: the disk is full after ${this.#count} records; no more appends`);
      return;
    }
    if (n <= 0) return;
    this.#credit -= n;
    const buf = Buffer.alloc(n * RECORD_SIZE);
    const first = this.#count + 1;
    for (let i = 0; i < n; i++) encodeRecord(first + i, now, buf, i * RECORD_SIZE);
    await this.#durably(async (c) => {
      // One write per batch, then FLUSH: after a crash the disk holds a prefix of the batch at worst.
      await c.write((first - 1) * RECORD_SIZE, buf);
      await c.flush();
    });
    this.#count += n;
    this.#last = { seq: first + n - 1, time: now };
  }

  /** Runs `io`, reconnecting (the agent may restart under us) and retrying until the timeout. */
  async #durably(io: (c: NbdClient) => Promise<void>): Promise<void> {
    const deadline = Date.now() + (this.#o.reconnectTimeoutMs ?? 120_000);
    let delay = 100;
    for (;;) {
      try {
        await io(this.#client);
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          throw new LedgerError(
            'LEDGER_DISK',
            `the disk ${this.#o.disk} is gone: ${(err as Error).message}`,
            { cause: err },
          );
        }
        this.#o.log?.(`ledger: disk write failed (${(err as Error).message}); reconnecting`);
      }
      this.#client.destroy();
      for (;;) {
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2000);
        try {
          this.#client = await NbdClient.connect({
            host: this.#addr.host,
            port: this.#addr.port,
            exportName: this.#addr.exportName,
            timeoutMs: 5000,
          });
          break;
        } catch (err) {
          if (Date.now() > deadline) {
            throw new LedgerError(
              'LEDGER_DISK',
              `cannot reconnect to ${this.#o.disk}: ${(err as Error).message}`,
              { cause: err },
            );
          }
        }
      }
    }
  }
}
