import * as net from 'node:net';
import * as tls from 'node:tls';
import type { BlockBackend } from './backend.js';
import { NbdConnection } from './server-connection.js';

/** One named export served by an `NbdServer`. */
export interface NbdExport {
  /** Export name clients ask for; unique within a server. */
  readonly name: string;
  /** The disk. All connections to this export share it (which is what makes CAN_MULTI_CONN true). */
  readonly backend: BlockBackend;
  /** Free text shown by `nbdinfo --list` and `NBD_INFO_DESCRIPTION`. */
  readonly description?: string;
  /** Serve read-only even if the backend is writable (writes get `EPERM`). */
  readonly readOnly?: boolean;
}

/** TLS settings of an `NbdServer` (used after `NBD_OPT_STARTTLS`). */
export interface NbdServerTlsOptions {
  /** PEM certificate chain. */
  readonly cert: string | Buffer;
  /** PEM private key. */
  readonly key: string | Buffer;
  /** PEM CA bundle; with `requestCert` clients must present a certificate it signed. */
  readonly ca?: string | Buffer;
  /** Ask for and verify client certificates. Default false. */
  readonly requestCert?: boolean;
  /**
   * Refuse plaintext (spec "FORCEDTLS"): before STARTTLS every option but STARTTLS and ABORT is answered with
   * `NBD_REP_ERR_TLS_REQD`, and EXPORT_NAME (which cannot carry an error) closes the connection. Default false.
   */
  readonly required?: boolean;
}

/** Options of `NbdServer`. */
export interface NbdServerOptions {
  /** The exports; the first one is also the default export (empty name). */
  readonly exports: readonly NbdExport[];
  /** Offer STARTTLS with this certificate. Without it STARTTLS gets `NBD_REP_ERR_UNSUP`. */
  readonly tls?: NbdServerTlsOptions;
  /** Requests being processed per connection before the server stops reading from it. Default 64. */
  readonly maxInFlight?: number;
  /**
   * Bytes of payloads, read buffers and unsent replies per connection before the server stops reading from it.
   * Default 64 MiB. Together with the 32 MiB request cap this bounds a connection's memory.
   */
  readonly maxInFlightBytes?: number;
  /** Largest option payload accepted during the handshake; longer ones drop the connection. Default 64 KiB. */
  readonly maxOptionLength?: number;
  /** A client must finish the handshake within this many ms. Default 30 000. */
  readonly handshakeTimeoutMs?: number;
  /** On `close()`, connections still busy after this many ms are cut. Default 10 000. */
  readonly drainTimeoutMs?: number;
  /** Maximum simultaneous connections; further ones are refused by the socket layer. Default unlimited. */
  readonly maxConnections?: number;
  /** Called when a connection is dropped because of an error or protocol violation (for logging). */
  readonly onConnectionError?: (err: Error) => void;
  /**
   * Receive plaintext connections straight into request buffers (Node's socket `onread`) instead of through
   * 'data' events: no per-read allocation and no reassembly copy of large WRITE payloads. TLS connections always
   * use 'data' events. Default true, or the environment's `OSR_NBD_DIRECT_RECEIVE` (`0` turns it off).
   */
  readonly directReceive?: boolean;
}

/** Where to listen: TCP (`port` 0 picks a free one) or a unix socket `path`. */
export type NbdListenOptions = { readonly host?: string; readonly port?: number } | { readonly path: string };

/** Settings a connection needs, resolved once per server. */
export interface ResolvedServerSettings {
  readonly exports: ReadonlyMap<string, NbdExport>;
  readonly exportList: readonly NbdExport[];
  readonly secureContext: tls.SecureContext | undefined;
  readonly tlsOptions: NbdServerTlsOptions | undefined;
  readonly tlsRequired: boolean;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly maxOptionLength: number;
  readonly handshakeTimeoutMs: number;
  readonly onConnectionError: (err: Error) => void;
  readonly directReceive: boolean;
}

/**
 * An NBD server (fixed newstyle, structured replies, `base:allocation`, STARTTLS) serving one or more exports.
 *
 * Promises: any byte sequence from a client only ever affects that client's connection (it gets an NBD error or is
 * disconnected); requests outside an export never reach its backend; per-connection memory is bounded by
 * `maxInFlightBytes` plus one 32 MiB request; `close()` drains in-flight requests before closing. The server does
 * not own the backends: close them after `close()` resolved.
 */
export class NbdServer {
  private readonly settings: ResolvedServerSettings;
  private readonly server: net.Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly drainTimeoutMs: number;
  private closing: Promise<void> | undefined;

  constructor(options: NbdServerOptions) {
    if (options.exports.length === 0) throw new Error('an NBD server needs at least one export');
    const exports = new Map<string, NbdExport>();
    for (const e of options.exports) {
      if (exports.has(e.name)) throw new Error(`duplicate export name "${e.name}"`);
      if (Buffer.byteLength(e.name) > 4096) throw new Error('export names are limited to 4096 bytes');
      exports.set(e.name, e);
    }
    this.settings = {
      exports,
      exportList: [...options.exports],
      secureContext: options.tls
        ? tls.createSecureContext({ cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca })
        : undefined,
      tlsOptions: options.tls,
      tlsRequired: options.tls?.required ?? false,
      maxInFlight: options.maxInFlight ?? 64,
      maxInFlightBytes: options.maxInFlightBytes ?? 64 * 1024 * 1024,
      maxOptionLength: options.maxOptionLength ?? 64 * 1024,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
      onConnectionError: options.onConnectionError ?? (() => undefined),
      directReceive: options.directReceive ?? process.env.OSR_NBD_DIRECT_RECEIVE !== '0',
    };
    this.drainTimeoutMs = options.drainTimeoutMs ?? 10_000;
    this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    if (options.maxConnections !== undefined) this.server.maxConnections = options.maxConnections;
  }

  /** Starts listening; resolves with the bound address (`{address, port}`) or the unix socket path. */
  listen(options: NbdListenOptions = {}): Promise<net.AddressInfo | string> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      const done = (): void => {
        this.server.off('error', onError);
        // Errors after listening (e.g. EMFILE on accept) must not crash the process.
        this.server.on('error', (err) => this.settings.onConnectionError(err));
        const addr = this.server.address();
        if (addr === null) reject(new Error('server is not listening'));
        else resolve(addr);
      };
      if ('path' in options) this.server.listen(options.path, done);
      else this.server.listen(options.port ?? 10809, options.host ?? '127.0.0.1', done);
    });
  }

  /** The bound address, or undefined before `listen()`. */
  address(): net.AddressInfo | string | undefined {
    return this.server.address() ?? undefined;
  }

  /** Number of open client connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Graceful shutdown: stops accepting, lets in-flight requests finish and reply, answers requests that arrive
   * meanwhile with `ESHUTDOWN`, then closes every connection (cutting those still busy after `drainTimeoutMs`).
   * Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      const conns = [...this.connections];
      const timer = setTimeout(() => {
        for (const c of this.connections) c.destroy();
      }, this.drainTimeoutMs);
      try {
        await Promise.all(conns.map((c) => c.shutdown()));
        await stopped;
      } finally {
        clearTimeout(timer);
      }
    })();
    return this.closing;
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const conn = new NbdConnection(socket, this.settings);
    this.connections.add(conn);
    conn.closed.then(
      () => this.connections.delete(conn),
      () => this.connections.delete(conn),
    );
    conn.start();
  }
}
