/**
 * The NBD front of a local machine's disks: each disk image is opened as a
 * `FileBackend`, wrapped in an `ObservedBackend` whose observer can be switched at run
 * time (the replication service hooks its journal there), and exported as
 * `<machine>-<disk id>`. Every write a machine makes goes through this front, so
 * capture can start at any moment without reattaching the machine.
 *
 * One NBD server per machine: `NbdServer`'s export list is fixed when it is built, and
 * a machine created or deleted (failover, cleanup) must not cut the connections of the
 * other machines' disks. Its port is remembered so a disk's address survives an agent
 * restart (a machine reconnects to the same URI).
 */
import { mkdir, open, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { FileBackend } from '../../dataplane/nbd/file-backend.js';
import type { BlockBackend } from '../../dataplane/nbd/backend.js';
import { ObservedBackend } from '../../dataplane/nbd/observed-backend.js';
import type { WriteObserver } from '../../dataplane/nbd/observed-backend.js';
import { NbdServer } from '../../dataplane/nbd/server.js';
import type { NbdExport } from '../../dataplane/nbd/server.js';

/** A `WriteObserver` that forwards to whatever observer is set now, or accepts at once when none is. */
export class SwitchableObserver implements WriteObserver {
  #target: WriteObserver | null = null;

  /** The observer mutations go to from now on (null: none). */
  set(target: WriteObserver | null): void {
    this.#target = target;
  }

  get target(): WriteObserver | null {
    return this.#target;
  }

  onWrite(event: Parameters<WriteObserver['onWrite']>[0]): Promise<void> {
    return this.#target?.onWrite(event) ?? Promise.resolve();
  }
  onZero(event: Parameters<WriteObserver['onZero']>[0]): Promise<void> {
    return this.#target?.onZero(event) ?? Promise.resolve();
  }
  onTrim(event: Parameters<WriteObserver['onTrim']>[0]): Promise<void> {
    return this.#target?.onTrim(event) ?? Promise.resolve();
  }
  onFlush(): Promise<void> {
    return this.#target?.onFlush() ?? Promise.resolve();
  }
}

/** A disk image to serve. */
export interface DiskImage {
  id: string;
  file: string;
  sizeBytes: number;
  /**
   * Serve this backend instead of opening `file` (a replica exposure). The server never closes it: its owner
   * does.
   */
  backend?: BlockBackend;
}

/** `inner` without its `close` (the server must not close a backend it does not own). */
function borrowed(inner: BlockBackend): BlockBackend {
  return {
    get size() {
      return inner.size;
    },
    get readOnly() {
      return inner.readOnly;
    },
    read: (offset, length, into) => inner.read(offset, length, into),
    write: (offset, data, options) => inner.write(offset, data, options),
    writeZeroes: (offset, length, options) => inner.writeZeroes(offset, length, options),
    trim: (offset, length, options) => inner.trim(offset, length, options),
    flush: () => inner.flush(),
    blockStatus: (offset, length) => inner.blockStatus(offset, length),
    close: () => inner.flush(),
  };
}

/** One served disk. */
export interface ServedDisk {
  id: string;
  exportName: string;
  file: string;
  backend: ObservedBackend;
  observer: SwitchableObserver;
}

/** Creates `file` as a sparse image of `sizeBytes` when it does not exist; refuses a size mismatch. */
export async function ensureImage(file: string, sizeBytes: number): Promise<'created' | 'existing'> {
  try {
    const s = await stat(file);
    if (s.size !== sizeBytes) {
      throw new Error(`disk image ${file} is ${s.size} bytes, machine.json says ${sizeBytes}`);
    }
    return 'existing';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dirname(file), { recursive: true });
  const fh = await open(file, 'wx');
  try {
    await fh.truncate(sizeBytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return 'created';
}

/** The served disks of one machine. */
export class MachineDiskServer {
  readonly disks: ServedDisk[];
  readonly host: string;
  readonly port: number;
  readonly #server: NbdServer;

  private constructor(disks: ServedDisk[], server: NbdServer, host: string, port: number) {
    this.disks = disks;
    this.#server = server;
    this.host = host;
    this.port = port;
  }

  /**
   * Opens the images and serves them on `host`, on `preferredPort` when it is free,
   * else on a free port. A machine without disks gets no server (`undefined`).
   */
  static async open(
    machine: string,
    images: DiskImage[],
    host: string,
    preferredPort: number | undefined,
  ): Promise<MachineDiskServer | undefined> {
    if (images.length === 0) return undefined;
    const disks: ServedDisk[] = [];
    try {
      for (const img of images) {
        const observer = new SwitchableObserver();
        const inner = img.backend === undefined ? await FileBackend.open(img.file) : borrowed(img.backend);
        const backend = new ObservedBackend(inner, observer);
        disks.push({ id: img.id, exportName: `${machine}-${img.id}`, file: img.file, backend, observer });
      }
      const exports: NbdExport[] = disks.map((d) => ({
        name: d.exportName,
        backend: d.backend,
        description: `${machine} ${d.id}`,
      }));
      let server = new NbdServer({ exports });
      let addr;
      try {
        addr = await server.listen({ host, port: preferredPort ?? 0 });
      } catch (err) {
        if (preferredPort === undefined || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
        server = new NbdServer({ exports });
        addr = await server.listen({ host, port: 0 });
      }
      if (typeof addr === 'string') throw new Error('NBD server listens on a socket path');
      return new MachineDiskServer(disks, server, host, addr.port);
    } catch (err) {
      await Promise.all(disks.map((d) => d.backend.close()));
      throw err;
    }
  }

  /** `nbd://host:port/<export>` of a disk. */
  uri(diskId: string, advertiseHost = this.host): string | null {
    const d = this.disks.find((x) => x.id === diskId);
    return d === undefined ? null : `nbd://${advertiseHost}:${this.port}/${d.exportName}`;
  }

  /** The disk, or undefined. */
  disk(diskId: string): ServedDisk | undefined {
    return this.disks.find((x) => x.id === diskId);
  }

  /** Drains the server, then closes the images. */
  async close(): Promise<void> {
    await this.#server.close();
    await Promise.all(this.disks.map((d) => d.backend.close()));
  }
}
