/**
 * NBD benchmark: our server (`osr nbd serve`, in its own process) against `nbdkit file` and `qemu-nbd` on the same
 * 2 GiB raw image, with the same client (fio, ioengine=nbd, one connection), dropping the page cache before every
 * run. Prints each figure and its ratio to nbdkit, and each server's CPU time (user + system, all threads) per MiB
 * or per I/O, which moves far less than throughput when other work shares the machine.
 *
 *   npm run build && npm run bench:nbd -- [--runtime 10] [--reps 1] [--dir /var/tmp/osr-nbd-bench]
 *                                         [--servers osr,nbdkit,qemu-nbd] [--tests seq-write,seq-read,rand-write,rand-read]
 *                                         [--nice=-10] [--variant NAME:ENV=VALUE,…] [--json]
 *
 * Needs fio, nbdkit and qemu-nbd on PATH; drop_caches needs root (otherwise a warning is printed and figures swing).
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

/** Niceness for every process the benchmark starts (`--nice`, e.g. -10 as root on a shared machine). */
let niceness = 0;

/** `spawn`, wrapped in `nice -n` when a niceness was chosen, so servers and fio get the same priority. */
function start(cmd: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  if (niceness === 0) return spawn(cmd, args, options);
  return spawn('nice', ['-n', String(niceness), cmd, ...args], options);
}

const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;
const LAUNCHER = fileURLToPath(new URL('./osr-nbd.js', import.meta.url));

interface BenchTest {
  readonly id: string;
  readonly label: string;
  readonly rw: string;
  readonly bs: string;
  readonly iodepth: number;
  /** 'bw' reports MiB/s, 'iops' reports IOPS. */
  readonly unit: 'bw' | 'iops';
  /** Minimum ratio to nbdkit we aim for. */
  readonly target: number;
}

const TESTS: readonly BenchTest[] = [
  { id: 'seq-write', label: 'seq write 1M QD8', rw: 'write', bs: '1m', iodepth: 8, unit: 'bw', target: 0.8 },
  { id: 'seq-read', label: 'seq read 1M QD8', rw: 'read', bs: '1m', iodepth: 8, unit: 'bw', target: 0.8 },
  {
    id: 'rand-write',
    label: 'rand write 4k QD16',
    rw: 'randwrite',
    bs: '4k',
    iodepth: 16,
    unit: 'iops',
    target: 0.5,
  },
  {
    id: 'rand-read',
    label: 'rand read 4k QD16',
    rw: 'randread',
    bs: '4k',
    iodepth: 16,
    unit: 'iops',
    target: 0.5,
  },
];

interface ServerSpec {
  readonly id: string;
  start(image: string, port: number): ChildProcess;
}

const SERVERS: readonly ServerSpec[] = [
  {
    id: 'osr',
    start: (image, port) =>
      start(process.execPath, [LAUNCHER, 'nbd', 'serve', `${image}:bench`, '--port', String(port)]),
  },
  {
    id: 'nbdkit',
    start: (image, port) =>
      start('nbdkit', ['--exit-with-parent', '-f', '-i', '127.0.0.1', '-p', String(port), 'file', image]),
  },
  {
    id: 'qemu-nbd',
    start: (image, port) =>
      start('qemu-nbd', [
        '-f',
        'raw',
        '-b',
        '127.0.0.1',
        '-p',
        String(port),
        '-t',
        '-e',
        '4',
        '--cache=writeback',
        '--aio=threads',
        image,
      ]),
  },
];

/**
 * `--variant NAME:KEY=VALUE,KEY=VALUE` adds our server once more as `osr-NAME` with extra environment (e.g.
 * `UV_THREADPOOL_SIZE=16`; the key `LAUNCHER=path/to/osr-nbd.js` runs another build, e.g. a copy of the previous
 * one as a baseline), measured interleaved with the others so tuning choices are compared fairly on a noisy
 * machine.
 */
function variant(spec: string): ServerSpec {
  const [name, envList = ''] = spec.split(':', 2) as [string, string?];
  const env = { ...process.env };
  let launcher = LAUNCHER;
  for (const kv of envList.split(',').filter(Boolean)) {
    const i = kv.indexOf('=');
    if (kv.slice(0, i) === 'LAUNCHER') launcher = kv.slice(i + 1);
    else env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return {
    id: `osr-${name}`,
    start: (image, port) =>
      start(process.execPath, [launcher, 'nbd', 'serve', `${image}:bench`, '--port', String(port)], { env }),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`server on port ${port} did not come up`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function makeImage(file: string, size: number): void {
  if (fs.existsSync(file) && fs.statSync(file).size === size) return;
  process.stdout.write(`creating ${file} (${size / GiB} GiB of non-zero data)…\n`);
  const chunk = Buffer.allocUnsafe(8 * MiB);
  for (let i = 0; i < chunk.length; i += 4)
    chunk.writeUInt32LE((Math.imul(i, 2654435761) ^ 0x9e3779b9) >>> 0, i);
  const fd = fs.openSync(file, 'w');
  try {
    for (let pos = 0; pos < size; pos += chunk.length) {
      chunk.writeUInt32LE(pos / chunk.length, 0);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - pos), pos);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

/** CPU seconds (user + system, all threads) a process has used so far, from /proc; NaN where unavailable. */
function cpuSeconds(pid: number | undefined): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at state (field 3); utime/stime are 14/15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

interface FioJob {
  read: { bw_bytes: number; iops: number };
  write: { bw_bytes: number; iops: number };
  error: number;
}

function fio(port: number, t: BenchTest, runtime: number): Promise<number> {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=nbd://127.0.0.1:${port}/`,
    `--rw=${t.rw}`,
    `--bs=${t.bs}`,
    `--iodepth=${t.iodepth}`,
    `--runtime=${runtime}`,
    '--time_based',
    '--ramp_time=1',
    '--output-format=json',
  ];
  return new Promise((resolve, reject) => {
    const child = start('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0) return reject(new Error(`fio exited with ${code}: ${err}${out}`));
      // fio's nbd engine prints "fio: connected to NBD server" before the JSON.
      const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] };
      const job = json.jobs[0];
      if (!job || job.error !== 0) return reject(new Error(`fio job failed: ${out}`));
      const side = t.rw.includes('write') ? job.write : job.read;
      resolve(t.unit === 'bw' ? side.bw_bytes / MiB : side.iops);
    });
  });
}

function fmt(v: number | undefined, unit: 'bw' | 'iops'): string {
  if (v === undefined) return '-';
  return unit === 'bw' ? `${v.toFixed(0)} MiB/s` : `${(v / 1000).toFixed(1)}k IOPS`;
}

/** Server CPU per MiB (bandwidth tests) or per I/O (IOPS tests). */
function fmtCpu(v: number | undefined, unit: 'bw' | 'iops'): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  return unit === 'bw' ? `${(v * 1e6).toFixed(0)} µs CPU/MiB` : `${(v * 1e6).toFixed(1)} µs CPU/IO`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: path.join(os.tmpdir(), 'osr-nbd-bench') },
      runtime: { type: 'string', default: '10' },
      reps: { type: 'string', default: '1' },
      servers: { type: 'string', default: SERVERS.map((s) => s.id).join(',') },
      tests: { type: 'string', default: TESTS.map((t) => t.id).join(',') },
      json: { type: 'boolean', default: false },
      variant: { type: 'string', multiple: true, default: [] },
      nice: { type: 'string', default: '0' },
    },
  });
  const runtime = Number(values.runtime);
  niceness = Number(values.nice);
  const reps = Number(values.reps);
  const servers = [
    ...SERVERS.filter((s) => values.servers.split(',').includes(s.id)),
    ...values.variant.map(variant),
  ];
  const tests = TESTS.filter((t) => values.tests.split(',').includes(t.id));
  fs.mkdirSync(values.dir, { recursive: true });
  const image = path.join(values.dir, 'bench.raw');
  makeImage(image, 2 * GiB);

  const running: Array<{ spec: ServerSpec; child: ChildProcess; port: number }> = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(
      running.map(
        ({ child }) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGTERM');
          }),
      ),
    );
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));

  const results = new Map<string, Map<string, number[]>>();
  const cpuCost = new Map<string, Map<string, number[]>>();
  let cachesDropped = true;
  try {
    for (const spec of servers) {
      const port = await freePort();
      const child = spec.start(image, port);
      child.stdout?.resume();
      child.stderr?.resume();
      running.push({ spec, child, port });
      await waitForPort(port, child, 120_000);
    }
    for (let rep = 0; rep < reps; rep++) {
      for (const t of tests) {
        // Rotate the order every repetition: the first run after a cache drop is often slower on a busy host.
        const order = running.map((_, i) => running[(i + rep) % running.length]!);
        for (const { spec, port, child } of order) {
          cachesDropped = dropCaches() && cachesDropped;
          const cpu0 = cpuSeconds(child.pid);
          const v = await fio(port, t, runtime);
          // Server CPU per unit of work (ramp included on both sides): steadier than throughput on a busy host.
          const cpu = (cpuSeconds(child.pid) - cpu0) / (v * (runtime + 1));
          const perServer = results.get(t.id) ?? new Map<string, number[]>();
          results.set(t.id, perServer);
          perServer.set(spec.id, [...(perServer.get(spec.id) ?? []), v]);
          const perCpu = cpuCost.get(t.id) ?? new Map<string, number[]>();
          cpuCost.set(t.id, perCpu);
          perCpu.set(spec.id, [...(perCpu.get(spec.id) ?? []), cpu]);
          process.stdout.write(
            `  ${t.label.padEnd(20)} ${spec.id.padEnd(9)} ${fmt(v, t.unit).padEnd(12)} ${fmtCpu(cpu, t.unit)}\n`,
          );
        }
      }
    }
  } finally {
    await stopAll();
  }

  const cols = servers.map((s) => s.id);
  const header = [
    'test',
    ...cols,
    ...cols.filter((c) => c !== 'nbdkit').map((c) => `${c}/nbdkit`),
    'osr/qemu-nbd',
  ];
  const rows: string[][] = [];
  const summary: Record<string, Record<string, number>> = {};
  for (const t of tests) {
    const per = results.get(t.id);
    const med = (id: string): number | undefined => {
      const xs = per?.get(id);
      return xs && xs.length > 0 ? median(xs) : undefined;
    };
    const base = med('nbdkit');
    summary[t.id] = Object.fromEntries(cols.map((c) => [c, med(c) ?? NaN]));
    const ratio = (a: number | undefined, b: number | undefined): string =>
      a !== undefined && b !== undefined && b > 0 ? `${(a / b).toFixed(2)}×` : '-';
    const osr = med('osr');
    const toNbdkit = osr !== undefined && base !== undefined ? osr / base : undefined;
    const verdict = toNbdkit === undefined ? '' : toNbdkit >= t.target ? ' ok' : ` (target ${t.target}×)`;
    rows.push([
      t.label,
      ...cols.map((c) => fmt(med(c), t.unit)),
      ...cols.filter((c) => c !== 'nbdkit').map((c) => ratio(med(c), base) + (c === 'osr' ? verdict : '')),
      ratio(osr, med('qemu-nbd')),
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  process.stdout.write(
    `\nfio ioengine=nbd, 1 connection, ${runtime} s per run, median of ${reps}, nice ${niceness}, ` +
      `${new Date().toISOString()}\n`,
  );
  process.stdout.write(`${line(header)}\n|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|\n`);
  for (const r of rows) process.stdout.write(`${line(r)}\n`);
  process.stdout.write(`\nserver CPU (user+system, all threads) per MiB or per I/O, median\n`);
  const cpuRows = tests.map((t) => [
    t.label,
    ...cols.map((c) => {
      const xs = cpuCost.get(t.id)?.get(c);
      return xs && xs.length > 0 ? fmtCpu(median(xs), t.unit) : '-';
    }),
  ]);
  const cpuHeader = ['test', ...cols];
  const cw = cpuHeader.map((h, i) => Math.max(h.length, ...cpuRows.map((r) => r[i]!.length)));
  const cline = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(cw[i]!)).join(' | ')} |`;
  process.stdout.write(`${cline(cpuHeader)}\n|${cw.map((w) => '-'.repeat(w + 2)).join('|')}|\n`);
  for (const r of cpuRows) process.stdout.write(`${cline(r)}\n`);
  process.stdout.write(
    `load average at the end: ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}\n`,
  );
  if (!cachesDropped)
    process.stdout.write('\nwarning: could not drop the page cache (not root?); figures swing\n');
  if (values.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
}

await main();
