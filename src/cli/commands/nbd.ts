/** `osr nbd serve`: serve raw image files over NBD on their own (no vault or agent needed). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InvalidArgumentError } from 'commander';
import type { Command } from 'commander';
import { FileBackend } from '../../dataplane/nbd/file-backend.js';
import { NbdServer } from '../../dataplane/nbd/server.js';
import type { NbdExport } from '../../dataplane/nbd/server.js';

/** Options of `startNbdServe`, mirroring the command-line flags. */
export interface NbdServeOptions {
  /** `FILE[:NAME]` specs; the name defaults to the file name without its extension. */
  readonly specs: readonly string[];
  readonly host?: string;
  readonly port?: number;
  /** Unix socket path instead of TCP. */
  readonly socketPath?: string;
  readonly readOnly?: boolean;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsRequired?: boolean;
  /** Passed to `FileBackend` (`syncWriteMaxBytes`); default there. */
  readonly syncWriteMaxBytes?: number;
}

/** A running `nbd serve`. */
export interface RunningNbdServe {
  readonly server: NbdServer;
  readonly exports: readonly NbdExport[];
  /** `host:port` or the socket path. */
  readonly where: string;
  /** Drains the server, then closes the images (persisting their allocation maps). */
  stop(): Promise<void>;
}

/** Splits `FILE[:NAME]` at the last colon when what follows looks like a name, not part of a path. */
export function parseExportSpec(spec: string): { file: string; name: string } {
  const i = spec.lastIndexOf(':');
  if (i > 0 && i < spec.length - 1 && !spec.slice(i + 1).includes('/')) {
    return { file: spec.slice(0, i), name: spec.slice(i + 1) };
  }
  const file = spec;
  return { file, name: path.basename(file, path.extname(file)) };
}

/** Opens the images and starts the server; resolves once it listens. */
export async function startNbdServe(options: NbdServeOptions): Promise<RunningNbdServe> {
  if (options.specs.length === 0) throw new Error('nothing to serve: give at least one FILE[:NAME]');
  if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) {
    throw new Error('--tls-cert and --tls-key go together');
  }
  if (options.tlsRequired && options.tlsCert === undefined)
    throw new Error('--tls-required needs --tls-cert/--tls-key');
  const exports: NbdExport[] = [];
  try {
    for (const spec of options.specs) {
      const { file, name } = parseExportSpec(spec);
      if (exports.some((e) => e.name === name)) throw new Error(`export name "${name}" is used twice`);
      const backend = await FileBackend.open(file, {
        readOnly: options.readOnly ?? false,
        syncWriteMaxBytes: options.syncWriteMaxBytes,
      });
      exports.push({ name, backend, description: path.resolve(file) });
    }
    const server = new NbdServer({
      exports,
      tls:
        options.tlsCert !== undefined && options.tlsKey !== undefined
          ? {
              cert: fs.readFileSync(options.tlsCert),
              key: fs.readFileSync(options.tlsKey),
              required: options.tlsRequired ?? false,
            }
          : undefined,
    });
    const addr = await server.listen(
      options.socketPath !== undefined
        ? { path: options.socketPath }
        : { host: options.host ?? '127.0.0.1', port: options.port ?? 10809 },
    );
    const where = typeof addr === 'string' ? addr : `${addr.address}:${addr.port}`;
    let stopping: Promise<void> | undefined;
    return {
      server,
      exports,
      where,
      stop: () =>
        (stopping ??= (async () => {
          await server.close();
          await closeAll(exports);
        })()),
    };
  } catch (err) {
    await closeAll(exports);
    throw err;
  }
}

async function closeAll(exports: readonly NbdExport[]): Promise<void> {
  const results = await Promise.allSettled(exports.map((e) => e.backend.close()));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

function parsePort(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('not a port number');
  return n;
}

/** Registers the `nbd` command group (`osr nbd serve`). */
export function registerNbdCommands(program: Command): void {
  const nbd = program.command('nbd').description('NBD disk server');
  nbd
    .command('serve')
    .description('serve raw image files over NBD until SIGINT/SIGTERM')
    .argument('<FILE[:NAME]...>', 'image files; the export name defaults to the file name without extension')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'TCP port (0 picks a free one)', parsePort, 10809)
    .option('--socket <path>', 'listen on a unix socket instead of TCP')
    .option('--read-only', 'refuse writes (EPERM)', false)
    .option('--tls-cert <file>', 'PEM certificate for STARTTLS')
    .option('--tls-key <file>', 'PEM private key for STARTTLS')
    .option('--tls-required', 'refuse clients that do not upgrade to TLS', false)
    .action(async (specs: string[], opts: ServeFlags) => {
      const syncMax = process.env.OSR_NBD_SYNC_WRITE_MAX;
      const running = await startNbdServe({
        syncWriteMaxBytes: syncMax === undefined ? undefined : Number(syncMax),
        specs,
        host: opts.host,
        port: opts.port,
        socketPath: opts.socket,
        readOnly: opts.readOnly,
        tlsCert: opts.tlsCert,
        tlsKey: opts.tlsKey,
        tlsRequired: opts.tlsRequired,
      });
      const list = running.exports.map((e) => `${e.name} (${e.backend.size} bytes)`).join(', ');
      const mode = [
        opts.readOnly ? 'read-only' : '',
        opts.tlsCert ? (opts.tlsRequired ? 'TLS required' : 'TLS') : '',
      ]
        .filter(Boolean)
        .join(', ');
      process.stdout.write(`nbd: serving ${list} on ${running.where}${mode ? ` (${mode})` : ''}\n`);
      await new Promise<void>((resolve) => {
        const onSignal = (): void => {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          resolve();
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      });
      await running.stop();
      process.stdout.write('nbd: stopped\n');
    });
}

interface ServeFlags {
  host: string;
  port: number;
  socket?: string;
  readOnly: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsRequired: boolean;
}
