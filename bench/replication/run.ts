/**
 * Replication benchmark (issue 4), one run, four figures against their targets:
 *
 * (a) lag under steady churn: fio `ioengine=nbd` through our NBD export (journaled file image), random 64 KiB
 *     writes at `--rate=20m`, crash-consistent points every 3 s; lag = time from a seq being appended to the
 *     journal to its acknowledgement by the recovery site (sampled every 20 ms), and the age of the newest
 *     processed point — target lag p99 <= 2 s on loopback;
 * (b) initial replication of a 2 GiB image (1 GiB random, 1 GiB sparse zero) through journal → TLS → replica
 *     store, until the replica has processed it, against `nbdcopy` of the same image into `nbdkit file` —
 *     target >= 0.7x;
 * (c) resync after a journal overflow: 5 % of a 1 GiB disk rewritten (random 64 KiB blocks) while the link is
 *     down; bytes sent (journal records + resync blocks, raw) vs bytes changed — target <= 1.1x, hashes apart;
 * (d) view read throughput with about an hour of 5-minute points vs the base (`view-read.js`) — target >= 0.5x.
 *
 * `npm run bench:replication` (after `npm run build`). Options: `--churn-s 20`, `--copy-gib 2`, `--reps 3` (runs of
 * each side of (b), interleaved; medians are compared), `--skip a,b,c,d`, `--recovery-process off` (the recovery
 * site of (b) in this process instead of its own),
 * `--compress off` (the initial copy's batches travel uncompressed), `--batch-mib 1` (batch size of the copy),
 * `--stream off` (the copy's bytes go through the journal instead of being read from the disk at send time),
 * `--direct-apply off` (the replica takes the copy through its pending and undo logs), `--profile FILE` (CPU profile of the timed
 * part of (b), for `chrome://inspect` or any `.cpuprofile` viewer).
 * Needs fio, nbdcopy and nbdkit on PATH.
 */
import { execFileSync, fork, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import { join } from 'node:path';
import { Session } from 'node:inspector/promises';
import { fileURLToPath } from 'node:url';
import { runInitialCopy } from '../../src/dataplane/resync/initial-copy.js';
import { runResync } from '../../src/dataplane/resync/resync.js';
import { startPipeline, startSource } from '../../test/dataplane/pipeline-support.js';
import type { Pipeline, PipelineSource } from '../../test/dataplane/pipeline-support.js';
import type { DiskSpec } from '../../src/dataplane/changes.js';
import type { RecoverySiteRequest } from './recovery-site.js';
import { makeIdentity, mulberry32 } from '../../test/dataplane/source-support.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}
const skip = new Set(arg('skip', '').split(','));
const churnSecs = Number(arg('churn-s', '20'));
const copyBytes = Number(arg('copy-gib', '2')) * GiB;
const profileTo = arg('profile', '');

/** With `--profile FILE`, a CPU profile of `body` only (the timed part of a figure) is written to FILE. */
async function profiled<T>(body: () => Promise<T>): Promise<T> {
  if (!profileTo) return body();
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  try {
    return await body();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    fs.writeFileSync(profileTo, JSON.stringify(profile));
    session.disconnect();
  }
}

const root = fs.mkdtempSync(join(os.tmpdir(), 'osr-bench-repl-'));
const identities = { source: makeIdentity(root, 'source'), recovery: makeIdentity(root, 'recovery') };

interface Row {
  readonly figure: string;
  readonly value: string;
  readonly target: string;
  readonly ok: boolean;
}
const rows: Row[] = [];

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function run(cmd: string, args: string[]): Promise<string> {
  return (await runFull(cmd, args)).stdout;
}

function runFull(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve({ stdout: out, stderr: err }) : reject(new Error(`${cmd} exited ${code}: ${err}`)),
    );
  });
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
function cpuOfPid(pid: number): number {
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
}
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function dropCaches(): void {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    // Not root: figures then depend on the page cache; both sides of each ratio see the same state.
  }
}

/** The recovery site in a child process (`recovery-site.js`), driven over its IPC channel. */
class RecoverySite {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    /** The child's CPU seconds when it was ready. */
    readonly cpuSecs: number,
  ) {}

  static async start(dir: string, disks: readonly DiskSpec[], directApply: boolean): Promise<RecoverySite> {
    const child = fork(fileURLToPath(new URL('./recovery-site.js', import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const { recovery, source } = identities;
    const reply = (await ask(child, {
      cmd: 'start',
      dir,
      disks,
      identity: { key: recovery.key, cert: recovery.cert },
      trustedCa: source.ca,
      directApply,
    })) as { port: number; cpuSecs: number };
    return new RecoverySite(child, reply.port, reply.cpuSecs);
  }

  /** Processes everything received, flushes the bases; resolves with the child's CPU seconds so far. */
  async finish(): Promise<number> {
    return ((await ask(this.child, { cmd: 'finish' })) as { cpuSecs: number }).cpuSecs;
  }

  async close(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.send({ cmd: 'close' } satisfies RecoverySiteRequest);
    await exited;
  }
}

function ask(child: ChildProcess, request: RecoverySiteRequest): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`the recovery site exited (${code})`));
    child.once('exit', onExit);
    child.once('message', (m) => {
      child.off('exit', onExit);
      resolve(m);
    });
    child.send(request);
  });
}

/** (a) lag and newest-point age under fio churn. */
async function lagUnderChurn(): Promise<void> {
  const dir = join(root, 'churn');
  const p = await startPipeline({
    dir,
    disks: [{ id: 'os', sizeBytes: 1 * GiB }],
    ...identities,
    journal: { segmentBytes: 16 * MiB },
    store: { processorIdleMs: 20 },
  });
  const samples: Array<{ seq: number; at: number }> = [];
  const lags: number[] = [];
  const ages: number[] = [];
  let points = 0;
  const sampler = setInterval(() => {
    const now = Date.now();
    samples.push({ seq: p.journal.lastSeq, at: now });
    while (samples.length > 0 && samples[0]!.seq <= p.sender.ackedSeq) lags.push(now - samples.shift()!.at);
    const newest = p.store.latestProcessed();
    if (newest && points > 0) ages.push(now - newest.time);
  }, 20);
  const marker = setInterval(() => {
    p.journal
      .addMarker('crash-consistent', `c${++points}`)
      .catch((e: unknown) => console.error(`marker failed: ${String(e)}`));
  }, 3000);
  try {
    await run('fio', [
      '--name=churn',
      '--ioengine=nbd',
      `--uri=nbd://127.0.0.1:${p.nbdPort}/os`,
      '--rw=randwrite',
      '--bs=64k',
      '--rate=20m',
      '--iodepth=4',
      '--size=1g',
      `--runtime=${churnSecs}`,
      '--time_based',
      '--output-format=json',
    ]);
  } finally {
    clearInterval(marker);
  }
  await p.sender.waitForAck(p.journal.lastSeq);
  clearInterval(sampler);
  const st = p.sender.status();
  await p.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const p50 = percentile(lags, 50) / 1000;
  const p99 = percentile(lags, 99) / 1000;
  rows.push({ figure: '(a) lag p50 (s)', value: p50.toFixed(3), target: '', ok: true });
  rows.push({ figure: '(a) lag p99 (s)', value: p99.toFixed(3), target: '<= 2', ok: p99 <= 2 });
  rows.push({
    figure: '(a) newest-point age p50 / max (s)',
    value: `${(percentile(ages, 50) / 1000).toFixed(2)} / ${(Math.max(...ages) / 1000).toFixed(2)}`,
    target: 'point every 3 s',
    ok: true,
  });
  rows.push({
    figure: '(a) compression ratio under churn',
    value: st.compressionRatio.toFixed(2),
    target: '',
    ok: true,
  });
}

/** One copy of the image: seconds until processed (and until acknowledged), CPU seconds of both ends. */
interface CopyRun {
  readonly secs: number;
  readonly ackSecs: number;
  readonly cpuSecs: number;
}

/**
 * A folder of certificates as nbdkit `--tls-certificates` and libnbd's `tls-certificates` want them: a CA, and a
 * server certificate for `localhost` that it issued (EC P-256, as our agents' certificates).
 */
function nbdTlsFolder(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const ssl = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const key = (file: string): string[] => [
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    file,
  ];
  ssl(['req', '-x509', ...key('ca-key.pem'), '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=bench-ca']);
  ssl(['req', '-new', ...key('server-key.pem'), '-out', 'server.csr', '-subj', '/CN=localhost']);
  fs.writeFileSync(join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  ssl([
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca-cert.pem',
    '-CAkey',
    'ca-key.pem',
    '-CAcreateserial',
    '-out',
    'server-cert.pem',
    '-days',
    '2',
    '-extfile',
    'server.ext',
  ]);
  return dir;
}

/**
 * Baseline: `nbdcopy --flush` of the image into `nbdkit file` (a fresh sparse target), after a cache drop; with
 * `tlsDir`, over TLS (`nbds://`, `nbdkit --tls=require`), as our link always is.
 */
async function nbdcopyOnce(img: string, target: string, tlsDir?: string): Promise<CopyRun> {
  fs.closeSync(fs.openSync(target, 'w'));
  fs.truncateSync(target, copyBytes);
  const port = await freePort();
  const tlsArgs = tlsDir === undefined ? [] : ['--tls=require', `--tls-certificates=${tlsDir}`];
  const uri =
    tlsDir === undefined ? `nbd://127.0.0.1:${port}` : `nbds://localhost:${port}?tls-certificates=${tlsDir}`;
  const nbdkit = spawn(
    'nbdkit',
    ['-f', '--exit-with-parent', '-p', String(port), '-i', '127.0.0.1', ...tlsArgs, 'file', target],
    { stdio: 'ignore' },
  );
  try {
    for (let i = 0; ; i++) {
      try {
        await run('nbdinfo', ['--size', uri]);
        break;
      } catch (err) {
        if (i > 100) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    dropCaches();
    const t0 = performance.now();
    const kit0 = cpuOfPid(nbdkit.pid!);
    const out = await runFull('/usr/bin/time', ['-f', 'CPU %U %S', 'nbdcopy', '--flush', img, uri]);
    const secs = (performance.now() - t0) / 1000;
    const m = /CPU ([\d.]+) ([\d.]+)/.exec(out.stderr);
    const cpuSecs = (m ? Number(m[1]) + Number(m[2]) : NaN) + (cpuOfPid(nbdkit.pid!) - kit0);
    return { secs, ackSecs: secs, cpuSecs };
  } finally {
    nbdkit.kill('SIGTERM');
    await new Promise((r) => (nbdkit.exitCode === null ? nbdkit.once('exit', r) : r(undefined)));
    fs.rmSync(target, { force: true });
  }
}

/** Ours: `runInitialCopy` of the image through journal → TLS → replica store until processed and flushed. */
async function replicateOnce(img: string, dir: string): Promise<CopyRun> {
  fs.mkdirSync(join(dir, 'source'), { recursive: true });
  fs.linkSync(img, join(dir, 'source', 'os.img'));
  const disks = [{ id: 'os', sizeBytes: copyBytes }];
  const directApply = arg('direct-apply', 'on') !== 'off';
  const sourceOptions = {
    dir,
    disks,
    ...identities,
    journal: { segmentBytes: 64 * MiB, capBytes: 2 * GiB },
    // The sender's defaults (as agents use them) but for the batch size and compression options.
    sender: {
      batchBytes: Number(arg('batch-mib', '1')) * MiB,
      compress: arg('compress', 'on') !== 'off',
    },
  };
  // The recovery site runs in its own process, as the recovery agent does (`--recovery-process off`: in this one).
  const site =
    arg('recovery-process', 'on') !== 'off'
      ? await RecoverySite.start(join(dir, 'replica'), disks, directApply)
      : undefined;
  let local: Pipeline | undefined;
  let p: PipelineSource;
  if (site) p = await startSource(sourceOptions, site.port);
  else p = local = await startPipeline({ ...sourceOptions, store: { directApply } });
  try {
    dropCaches();
    const t1 = performance.now();
    let ackSecs = 0;
    const cpu0 = process.cpuUsage();
    let siteCpuSecs = 0;
    await profiled(async () => {
      const result = await runInitialCopy({
        journal: p.journal,
        disks: [{ id: 'os', backend: p.disks.get('os')! }],
        ...(arg('stream', 'on') !== 'off' ? { waitForAck: (seq: number) => p.sender.waitForAck(seq) } : {}),
      });
      await p.sender.waitForAck(result.lastSeq);
      ackSecs = (performance.now() - t1) / 1000;
      if (site) {
        siteCpuSecs = (await site.finish()) - site.cpuSecs;
      } else if (local) {
        await local.store.process();
        await local.store.openBase('os').flush();
      }
    });
    const secs = (performance.now() - t1) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { secs, ackSecs, cpuSecs: (cpu.user + cpu.system) / 1e6 + siteCpuSecs };
  } finally {
    await p.close();
    await site?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * (b) initial replication vs nbdcopy into nbdkit file: `--reps` (default 3) runs of each, interleaved, medians
 * compared — a single `nbdcopy` run here swings 2–3× with the page cache and the virtual disk.
 */
async function initialCopy(): Promise<void> {
  const dir = join(root, 'copy');
  fs.mkdirSync(dir, { recursive: true });
  const img = join(dir, 'os.img');
  const fd = fs.openSync(img, 'w');
  const chunk = Buffer.allocUnsafe(4 * MiB);
  for (let pos = 0; pos < copyBytes / 2; pos += chunk.length)
    fs.writeSync(fd, randomFillSync(chunk), 0, chunk.length, pos);
  fs.ftruncateSync(fd, copyBytes);
  fs.closeSync(fd);
  const reps = Math.max(1, Number(arg('reps', '3')));
  const tlsDir = nbdTlsFolder(join(dir, 'nbd-tls'));
  const theirs: CopyRun[] = [];
  const theirsTls: CopyRun[] = [];
  const ours: CopyRun[] = [];
  for (let i = 0; i < reps; i++) {
    theirs.push(await nbdcopyOnce(img, join(dir, 'target.raw')));
    ours.push(await replicateOnce(img, join(dir, `rep${i}`)));
    theirsTls.push(await nbdcopyOnce(img, join(dir, 'target.raw'), tlsDir));
  }
  fs.rmSync(dir, { recursive: true, force: true });
  const mib = copyBytes / MiB;
  const dataGiB = copyBytes / 2 / GiB;
  const rates = (runs: CopyRun[], key: 'secs' | 'ackSecs'): string =>
    runs.map((r) => (mib / r[key]).toFixed(0)).join(', ');
  const cpuPerGiB = (runs: CopyRun[]): number => median(runs.map((r) => r.cpuSecs)) / dataGiB;
  rows.push({
    figure: '(b) nbdcopy → nbdkit file (MiB/s per run)',
    value: rates(theirs, 'secs'),
    target: '',
    ok: true,
  });
  rows.push({
    figure: '(b) nbdcopy → nbdkit file over TLS (MiB/s per run)',
    value: rates(theirsTls, 'secs'),
    target: '',
    ok: true,
  });
  rows.push({
    figure: '(b) initial replication, received (MiB/s per run)',
    value: rates(ours, 'ackSecs'),
    target: '',
    ok: true,
  });
  rows.push({
    figure: '(b) initial replication, processed (MiB/s per run)',
    value: rates(ours, 'secs'),
    target: '',
    ok: true,
  });
  rows.push({
    figure: '(b) CPU s per GiB of data (median): ours, both sites / nbdcopy+nbdkit / the same over TLS',
    value: `${cpuPerGiB(ours).toFixed(2)} / ${cpuPerGiB(theirs).toFixed(2)} / ${cpuPerGiB(theirsTls).toFixed(2)}`,
    target: '',
    ok: true,
  });
  const theirSecs = median(theirs.map((r) => r.secs));
  const ourSecs = median(ours.map((r) => r.secs));
  const ratio = theirSecs / ourSecs;
  rows.push({
    figure: `(b) median of ${reps}: processed / nbdcopy (MiB/s), ratio`,
    value: `${(mib / ourSecs).toFixed(0)} / ${(mib / theirSecs).toFixed(0)} = ${ratio.toFixed(2)}x`,
    target: '>= 0.7x',
    ok: ratio >= 0.7,
  });
  const tlsSecs = median(theirsTls.map((r) => r.secs));
  rows.push({
    figure: `(b) median of ${reps}: processed / nbdcopy over TLS (MiB/s), ratio`,
    value: `${(mib / ourSecs).toFixed(0)} / ${(mib / tlsSecs).toFixed(0)} = ${(tlsSecs / ourSecs).toFixed(2)}x`,
    target: '',
    ok: true,
  });
}

/** (c) resync after overflow: 5 % of 1 GiB changed while the link is down. */
async function resyncBytes(): Promise<void> {
  const dir = join(root, 'resync');
  const size = 1 * GiB;
  const block = 64 * KiB;
  const p = await startPipeline({
    dir,
    disks: [{ id: 'os', sizeBytes: size }],
    ...identities,
    journal: { segmentBytes: 4 * MiB, capBytes: 16 * MiB, dirtyGranuleBytes: block },
    startSender: false,
  });
  const rnd = mulberry32(5);
  const blocks = new Set<number>();
  const want = Math.round((size * 0.05) / block);
  const data = Buffer.allocUnsafe(block);
  while (blocks.size < want) {
    const b = Math.floor(rnd() * (size / block));
    if (blocks.has(b)) continue;
    blocks.add(b);
    await p.disks.get('os')!.write(b * block, Buffer.from(randomFillSync(data)));
  }
  const changed = blocks.size * block;
  p.sender.start();
  const t0 = performance.now();
  const r = await runResync({
    journal: p.journal,
    disks: p.disks,
    remoteHashes: (id, bs, offs) => p.sender.requestHashes(id, bs, offs),
    waitForAck: (seq) => p.sender.waitForAck(seq),
    blockSize: block,
  });
  await p.sender.waitForAck(r.lastSeq);
  const secs = (performance.now() - t0) / 1000;
  const st = p.sender.status();
  await p.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const ratio = st.bytesRaw / changed;
  rows.push({
    figure: '(c) resync: changed / sent raw (MiB)',
    value: `${(changed / MiB).toFixed(1)} / ${(st.bytesRaw / MiB).toFixed(1)} (resync blocks ${(r.bytesSent / MiB).toFixed(1)})`,
    target: '',
    ok: true,
  });
  rows.push({
    figure: '(c) resync bytes sent / changed',
    value: `${ratio.toFixed(3)}x`,
    target: '<= 1.1x',
    ok: ratio <= 1.1,
  });
  rows.push({
    figure: '(c) resync hash traffic (KiB) / time (s)',
    value: `${(r.hashBytes / KiB).toFixed(0)} / ${secs.toFixed(1)}`,
    target: 'apart',
    ok: true,
  });
}

/** (d) view read vs base, by the view-read benchmark. */
async function viewRead(): Promise<void> {
  const script = fileURLToPath(new URL('./view-read.js', import.meta.url));
  const out = await run(process.execPath, [
    script,
    '--disk-mib',
    '512',
    '--writes',
    '8000',
    '--points',
    '12',
  ]);
  const r = JSON.parse(out) as {
    baseReadMiBs: number;
    oldestViewReadMiBs: number;
    ratio: number;
    baseCpuSecsPerGiB?: number;
    viewCpuSecsPerGiB?: number;
  };
  rows.push({
    figure: '(d) view read / base read (MiB/s), 1 MiB reads',
    value: `${r.oldestViewReadMiBs} / ${r.baseReadMiBs} = ${r.ratio.toFixed(2)}x`,
    target: '>= 0.5x',
    ok: r.ratio >= 0.5,
  });
  rows.push({
    figure: '(d) CPU s per GiB read: view / base',
    value: `${r.viewCpuSecsPerGiB ?? NaN} / ${r.baseCpuSecsPerGiB ?? NaN}`,
    target: '',
    ok: true,
  });
}

try {
  if (!skip.has('a')) await lagUnderChurn();
  if (!skip.has('b')) await initialCopy();
  if (!skip.has('c')) await resyncBytes();
  if (!skip.has('d')) await viewRead();
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
const w = Math.max(...rows.map((r) => r.figure.length));
const v = Math.max(...rows.map((r) => r.value.length));
console.log(`\n${'figure'.padEnd(w)}  ${'value'.padEnd(v)}  target`);
for (const r of rows)
  console.log(
    `${r.figure.padEnd(w)}  ${r.value.padEnd(v)}  ${r.target}${r.target && !r.ok ? '  MISSED' : ''}`,
  );
console.log(
  `\n${os.cpus().length} CPUs, Node ${process.version}, loopback; (b) with the recovery site in ${
    arg('recovery-process', 'on') !== 'off' ? 'its own process' : 'this process'
  }, (a) and (c) in this one.`,
);
