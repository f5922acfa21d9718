/**
 * The `qemu` runtime of a local machine: a QEMU virtual machine whose drives are the
 * agent's NBD exports (reconnecting after an agent restart, DESIGN §2), shut down over
 * QMP (`system_powerdown`, then `quit`/SIGKILL after the timeout). Available only where
 * `qemu-system-x86_64` is installed.
 */
import { execFileSync } from 'node:child_process';
import * as net from 'node:net';
import type { MachineConfig } from './machines.js';
import type { RunningProcess } from './runtime-process.js';
import { startProcess } from './runtime-process.js';

/** The QEMU binary this runtime uses. */
export const QEMU_BINARY = 'qemu-system-x86_64';

/** Whether QEMU can be started on this machine. */
export function qemuAvailable(binary = QEMU_BINARY): boolean {
  try {
    execFileSync(binary, ['--version'], { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/** A disk as QEMU sees it: an NBD export of the agent. */
export interface QemuDisk {
  id: string;
  host: string;
  port: number;
  exportName: string;
}

/** The QEMU command line of a machine (no graphics, QMP on a unix socket, NBD drives). */
export function qemuArgv(
  m: MachineConfig,
  disks: QemuDisk[],
  qmpSocket: string,
  binary = QEMU_BINARY,
): string[] {
  const argv = [
    binary,
    '-name',
    m.name,
    '-m',
    String(m.memoryMb),
    '-smp',
    String(m.cpus),
    '-display',
    'none',
    '-serial',
    'null',
    '-qmp',
    `unix:${qmpSocket},server=on,wait=off`,
    '-nic',
    'none',
  ];
  disks.forEach((d, i) => {
    argv.push(
      '-blockdev',
      `driver=nbd,node-name=disk${i},server.type=inet,server.host=${d.host},server.port=${d.port},export=${d.exportName},reconnect-delay=5`,
      '-device',
      `virtio-blk-pci,drive=disk${i},id=${d.id}`,
    );
  });
  return argv;
}

/** Sends QMP commands (after `qmp_capabilities`) and resolves once each has answered. */
export async function qmp(socketPath: string, commands: string[], timeoutMs = 5000): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const sock = net.createConnection(socketPath);
    const pending = ['qmp_capabilities', ...commands];
    let buf = '';
    let greeted = false;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`QMP ${socketPath}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const sendNext = (): void => {
      const next = pending.shift();
      if (next === undefined) {
        clearTimeout(timer);
        sock.end();
        resolve();
        return;
      }
      sock.write(JSON.stringify({ execute: next }) + '\n');
    };
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line === '') continue;
        const msg = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc?: string } };
        if (msg.QMP !== undefined && !greeted) {
          greeted = true;
          sendNext();
        } else if (msg.error !== undefined) {
          clearTimeout(timer);
          sock.destroy();
          reject(new Error(`QMP error: ${msg.error.desc ?? 'unknown'}`));
        } else if (msg.return !== undefined) {
          sendNext();
        }
      }
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Starts the VM (with start token `token` in its environment); its stdout/stderr go to `logFile`. */
export function startQemu(
  m: MachineConfig,
  disks: QemuDisk[],
  qmpSocket: string,
  logFile: string,
  token?: string,
): Promise<RunningProcess> {
  return startProcess({
    machine: m.name,
    argv: qemuArgv(m, disks, qmpSocket),
    env: {},
    logFile,
    ...(token === undefined ? {} : { token }),
  });
}

/** Graceful shutdown over QMP (ACPI power button), forced with SIGKILL after `timeoutMs`. */
export function stopQemu(p: RunningProcess, qmpSocket: string, timeoutMs: number): Promise<boolean> {
  return p.stop(timeoutMs, async () => {
    try {
      await qmp(qmpSocket, ['system_powerdown']);
    } catch (err) {
      // The monitor is gone or stuck: the timeout's SIGKILL still ends the VM.
      p.signal('SIGTERM');
      if (!(err instanceof Error)) throw err;
    }
  });
}
