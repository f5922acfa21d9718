/**
 * Recovery-time benchmark (`npm run bench:rto`): a real control plane and two real `osr agent` processes
 * (sites `primary` and `recovery`) in a temp folder, ledger machines on the primary site protected until
 * Protected, then:
 *
 * - baseline: the time to start a machine at the primary site by `machine.powerOn` (agent took the command →
 *   its result; and → the ledger answering `GET /status`), several times;
 * - RTO, 1 machine: unplanned failover (Latest) requested through the API → job Succeeded, and → the machine's
 *   ledger answering at the recovery site; machines failed over one after the other;
 * - RTO, N machines started together (default 10): the same per machine, all requested at once;
 * - failback delta: commit, let the machines write at the recovery site, power the primary machines off,
 *   reprotect to the original location and read the bytes the reverse resync sent, as a fraction of the disk
 *   size; then the planned failback, timed the same way.
 *
 * Every process and the temp folder are removed at the end, also on failure.
 *
 *   node dist/bench/rto/run.js [--single N] [--group N] [--disk-mib N] [--baseline-reps N] [--run-ms N]
 *                              [--shutdown-source 1|0]
 *
 * `--shutdown-source 0` leaves the primary machines running through the failover (they are powered off only
 * before the reprotect), as when the primary site is unreachable.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { writeDemoSite } from '../../src/fabric/local/index.js';
import {
  killAll,
  ledgerStatusOf,
  machineRuntime,
  operate,
  startAgent,
  startWorld,
  waitJob,
  waitUntil,
} from '../../test/agent/harness.js';
import type { JobView, Proc, World } from '../../test/agent/harness.js';
import type { AgentCommand } from '../../src/domain/model.js';
import { waitProtected } from '../../test/agent/replication-support.js';

interface Args {
  single: number;
  group: number;
  diskMib: number;
  baselineReps: number;
  runMs: number;
  /** Unplanned failover with `shutdownSource` (1) or with the source left running (0). */
  shutdownSource: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { single: 3, group: 10, diskMib: 32, baselineReps: 5, runMs: 3000, shutdownSource: 1 };
  const flags: Record<string, keyof Args> = {
    '--single': 'single',
    '--group': 'group',
    '--disk-mib': 'diskMib',
    '--baseline-reps': 'baselineReps',
    '--run-ms': 'runMs',
    '--shutdown-source': 'shutdownSource',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i] ?? '';
    const key = flags[flag];
    const value = Number(argv[i + 1]);
    if (key === undefined) throw new Error(`unknown flag ${flag} (known: ${Object.keys(flags).join(', ')})`);
    if (!Number.isInteger(value) || value < (key === 'runMs' || key === 'shutdownSource' ? 0 : 1)) {
      throw new Error(`${flag} needs a positive whole number, not ${String(argv[i + 1])}`);
    }
    args[key] = value;
  }
  return args;
}

function percentile(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)] ?? NaN;
}

const seconds = (ms: number): string => (ms / 1000).toFixed(2);

/** One protected machine of the run. */
interface Bench {
  name: string;
  itemId: string;
}

/** Times of one start: to the job/command result, and to the ledger answering. */
interface Start {
  doneMs: number;
  runningMs: number;
}

/** The two sites and their agents. */
interface Sites {
  primaryData: string;
  recoveryData: string;
  primary: Proc;
  recovery: Proc;
}

async function startSites(w: World, names: string[], diskBytes: number): Promise<Sites> {
  const primaryDir = await w.siteDir(
    'primary',
    names.map((name, i) => ({
      name,
      host: i % 2 === 0 ? 'host1' : 'host2',
      memoryMb: 128,
      cpus: 1,
      ip: `10.1.1.${20 + i}`,
      diskBytes,
      rate: 20,
    })),
  );
  const recoveryDir = join(w.tmp, 'sites', 'recovery');
  await writeDemoSite(recoveryDir, { kind: 'onprem', octet: 2 });
  const primaryData = join(w.tmp, 'agent-primary');
  const recoveryData = join(w.tmp, 'agent-recovery');
  const extra = ['--point-interval', '1500'];
  const recovery = await startAgent(w, {
    site: 'recovery',
    siteDir: recoveryDir,
    dataDir: recoveryData,
    keyFile: await w.keyFile('recovery'),
    extra,
  });
  const primary = await startAgent(w, {
    site: 'primary',
    siteDir: primaryDir,
    dataDir: primaryData,
    keyFile: await w.keyFile('primary'),
    extra,
  });
  return { primaryData, recoveryData, primary, recovery };
}

/** Runs an agent command as a workflow step does and waits for its result; fails when the command failed. */
async function command(w: World, site: string, type: string, payload: unknown): Promise<AgentCommand> {
  const id = randomUUID();
  await w.enqueue(site, id, type, payload);
  const c = await w.result(id, 60_000);
  if (c.state !== 'Succeeded') throw new Error(`${type} on ${site}: ${c.state} ${JSON.stringify(c)}`);
  return c;
}

/**
 * Baseline: power a primary machine off, then start it by `machine.powerOn`. Timed from the moment the agent
 * took the command (`deliveredAt`) to its result (`completedAt`) and to the ledger answering: a command put in
 * the store by this process does not wake the agent's long poll, so the wait for delivery is left out.
 */
async function baseline(w: World, s: Sites, name: string, reps: number): Promise<Start[]> {
  const out: Start[] = [];
  for (let i = 0; i < reps; i++) {
    await command(w, 'primary', 'machine.powerOff', { name });
    await waitUntil(`${name} to stop`, async () => {
      try {
        await ledgerStatusOf(s.primaryData, name);
        return false;
      } catch {
        return true;
      }
    });
    const [c, answeredAt] = await Promise.all([
      command(w, 'primary', 'machine.powerOn', { name }),
      waitUntil(`${name} to answer`, () => ledgerStatusOf(s.primaryData, name), 60_000).then(() =>
        Date.now(),
      ),
    ]);
    const delivered = Date.parse(c.deliveredAt ?? '');
    const completed = Date.parse(c.completedAt ?? '');
    if (!Number.isFinite(delivered) || !Number.isFinite(completed)) {
      throw new Error(`machine.powerOn has no delivery or completion time: ${JSON.stringify(c)}`);
    }
    out.push({ doneMs: completed - delivered, runningMs: answeredAt - delivered });
  }
  return out;
}

/** Creates a policy and protects every machine to `recovery`; resolves when all are Protected with a point. */
async function protectAll(w: World, names: string[]): Promise<Bench[]> {
  const p = await w.api<{ id: string }>('POST', '/vaults/default/policies', { name: 'rto' });
  if (p.status !== 201) throw new Error(`policy: ${p.status} ${JSON.stringify(p.body)}`);
  const machines = await waitUntil(
    'every machine running in the inventory',
    async () => {
      const r = await w.api<{ items: { id: string; name: string; powerState: string }[] }>(
        'GET',
        '/vaults/default/machines?limit=1000',
      );
      const found = names.map((n) => r.body.items.find((m) => m.name === n && m.powerState === 'Running'));
      return found.every((m) => m !== undefined) ? found : undefined;
    },
    60_000,
  );
  const benches: Bench[] = [];
  for (const m of machines) {
    const r = await w.api<{ item: { id: string } }>('POST', '/vaults/default/items', {
      machine: m.id,
      policy: p.body.id,
      targetSite: 'recovery',
    });
    if (r.status !== 202) throw new Error(`protect ${m.name}: ${r.status} ${JSON.stringify(r.body)}`);
    benches.push({ name: m.name, itemId: r.body.item.id });
  }
  await Promise.all(benches.map((b) => waitProtected(w, b.itemId, 240_000)));
  await Promise.all(
    benches.map((b) =>
      waitUntil(
        `a recovery point of ${b.name}`,
        async () => {
          const r = await w.api<{ items: unknown[] }>(
            'GET',
            `/vaults/default/items/${b.itemId}/points?limit=1`,
          );
          return r.body.items.length > 0;
        },
        60_000,
      ),
    ),
  );
  return benches;
}

/** Starts `op` on the item and times request → job Succeeded, and request → the ledger answering at `agentData`. */
async function timedStart(
  w: World,
  b: Bench,
  op: string,
  body: unknown,
  agentData: string,
  runningTimeoutMs = 60_000,
): Promise<Start & { job: JobView }> {
  const t0 = performance.now();
  const jobId = await operate(w, b.itemId, op, body);
  const [job, doneMs, runningMs] = await (async () => {
    let doneAt = 0;
    const [j, r] = await Promise.all([
      waitJob(w, jobId, ['Succeeded'], 300_000).then((j) => {
        doneAt = performance.now() - t0;
        return j;
      }),
      waitUntil(`${b.name} to answer`, () => ledgerStatusOf(agentData, b.name), runningTimeoutMs).then(
        () => performance.now() - t0,
        async (err: Error) => {
          const j = (await w.api<JobView>('GET', `/jobs/${jobId}`)).body;
          const steps = j.steps.map((st) => `${st.name}: ${st.state}`).join('; ');
          const log = join(agentData, 'fabric', 'machines', `${b.name}.log`);
          const tail = existsSync(log) ? readFileSync(log, 'utf8').slice(-1500) : '(no log)';
          throw new Error(
            `${err.message} (job ${j.state}: ${steps})\n${b.name}: ${JSON.stringify(machineRuntime(agentData, b.name))}\n${tail}`,
            { cause: err },
          );
        },
      ),
    ]);
    return [j, doneAt, r] as const;
  })();
  return { job, doneMs, runningMs };
}

/** The step durations of a job, in seconds, "name s; …". */
function stepTimes(job: JobView): string {
  const steps = job.steps as (JobView['steps'][number] & {
    startedAt?: string | null;
    endedAt?: string | null;
  })[];
  return steps
    .filter((st) => st.startedAt && st.endedAt)
    .map((st) => `${st.name} ${seconds(Date.parse(st.endedAt!) - Date.parse(st.startedAt!))}`)
    .join('; ');
}

interface Row {
  figure: string;
  n: number;
  median: string;
  p95: string;
  max: string;
  ratio: string;
}

function row(figure: string, xs: number[], baselineMedian?: number): Row {
  const median = percentile(xs, 50);
  return {
    figure,
    n: xs.length,
    median: seconds(median),
    p95: seconds(percentile(xs, 95)),
    max: seconds(Math.max(...xs)),
    ratio: baselineMedian === undefined ? '' : `${(median / baselineMedian).toFixed(1)}×`,
  };
}

function printTable(rows: Row[]): void {
  const w = Math.max(...rows.map((r) => r.figure.length), 6);
  console.log(
    `\n${'figure'.padEnd(w)}  ${'n'.padStart(3)}  ${'median s'.padStart(8)}  ${'p95 s'.padStart(6)}  ${'max s'.padStart(6)}  × baseline`,
  );
  for (const r of rows) {
    console.log(
      `${r.figure.padEnd(w)}  ${String(r.n).padStart(3)}  ${r.median.padStart(8)}  ${r.p95.padStart(6)}  ${r.max.padStart(6)}  ${r.ratio}`,
    );
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const diskBytes = args.diskMib * 1024 * 1024;
  const names = Array.from({ length: args.single + args.group }, (_, i) => `m${String(i).padStart(2, '0')}`);
  const started = performance.now();
  const load0 = loadavg()[0] ?? 0;
  console.log(
    `bench:rto — ${args.single} machine(s) one at a time, ${args.group} together; ledger disk ${args.diskMib} MiB each; ` +
      `source ${args.shutdownSource === 1 ? 'shut down' : 'left running'} at failover; load ${load0.toFixed(1)}`,
  );
  const w = await startWorld();
  const cleanup = async (): Promise<void> => {
    await killAll();
    await w.close();
  };
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const s = await startSites(w, names, diskBytes);
    const progress = (what: string): void =>
      console.log(`  [${seconds(performance.now() - started)} s] ${what}`);

    progress('agents running; baseline: machine.powerOn at the primary site');
    const base = await baseline(w, s, names[0]!, args.baselineReps);

    progress(`protecting ${names.length} machines`);
    const benches = await protectAll(w, names);
    progress('all Protected with a recovery point');

    const failoverBody = { shutdownSource: args.shutdownSource === 1 };
    const singles = benches.slice(0, args.single);
    const group = benches.slice(args.single);
    const one: Start[] = [];
    let oneJob: JobView | undefined;
    for (const b of singles) {
      const r = await timedStart(w, b, 'unplanned-failover', failoverBody, s.recoveryData);
      one.push(r);
      oneJob ??= r.job;
    }
    progress(`1-machine failovers done (${one.map((r) => seconds(r.runningMs)).join(', ')} s)`);

    const t0 = performance.now();
    const together = await Promise.all(
      group.map((b) => timedStart(w, b, 'unplanned-failover', failoverBody, s.recoveryData)),
    );
    const allRunningMs = performance.now() - t0;
    progress(`${args.group}-machine failover done in ${seconds(allRunningMs)} s`);

    // ── commit, let the machines write at the recovery site, primary machines off (the site comes back) ──
    await Promise.all(
      benches.map(async (b) => waitJob(w, await operate(w, b.itemId, 'commit', {}), ['Succeeded'], 300_000)),
    );
    await new Promise((r) => setTimeout(r, args.runMs));
    for (const b of benches) await command(w, 'primary', 'machine.powerOff', { name: b.name });
    progress('committed; primary machines off; reprotect (original location)');

    const tRp = performance.now();
    await Promise.all(
      benches.map(async (b) =>
        waitJob(w, await operate(w, b.itemId, 'reprotect', { location: 'original' }), ['Succeeded'], 300_000),
      ),
    );
    await Promise.all(benches.map((b) => waitProtected(w, b.itemId, 300_000)));
    // Failback needs a recovery point of the reverse direction; the delta resync cuts one when it ends.
    await Promise.all(
      benches.map((b) =>
        waitUntil(
          `${b.name} to allow failback`,
          async () => {
            const r = await w.api<{ allowedOperations?: string[] }>(
              'GET',
              `/vaults/default/items/${b.itemId}`,
            );
            return r.body.allowedOperations?.includes('PlannedFailover') === true ? true : undefined;
          },
          300_000,
        ),
      ),
    );
    const reprotectMs = performance.now() - tRp;
    const deltas = benches.map((b) => {
      const file = join(s.recoveryData, 'replication', b.itemId, 'source.json');
      if (!existsSync(file)) throw new Error(`no reverse replication state for ${b.name}`);
      const state = JSON.parse(readFileSync(file, 'utf8')) as {
        lastResync?: { bytesCompared: number; bytesSent: number };
      };
      if (state.lastResync === undefined)
        throw new Error(`${b.name}: the reverse direction made a full copy`);
      return state.lastResync;
    });
    progress(`reprotected in ${seconds(reprotectMs)} s; failback (planned failover of the reversed items)`);

    // A failback whose machine does not come up (e.g. a broken ledger on the primary disk) is reported, not fatal.
    const settled = await Promise.allSettled(
      benches.map((b) => timedStart(w, b, 'planned-failover', {}, s.primaryData, 90_000)),
    );
    const back = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = settled.flatMap((r, i) =>
      r.status === 'rejected' ? [`${benches[i]!.name}: ${(r.reason as Error).message}`] : [],
    );
    await Promise.allSettled(
      benches.map(async (b) => waitJob(w, await operate(w, b.itemId, 'commit', {}), ['Succeeded'], 300_000)),
    );
    progress('failed back and committed');

    const baseMedian = percentile(
      base.map((b) => b.runningMs),
      50,
    );
    const rows = [
      row(
        'baseline: machine.powerOn taken → command done',
        base.map((b) => b.doneMs),
      ),
      row(
        'baseline: machine.powerOn taken → ledger answers',
        base.map((b) => b.runningMs),
      ),
      row(
        'RTO 1 machine: request → job Succeeded',
        one.map((r) => r.doneMs),
        baseMedian,
      ),
      row(
        'RTO 1 machine: request → ledger answers',
        one.map((r) => r.runningMs),
        baseMedian,
      ),
      row(
        `RTO ${args.group} together: request → job Succeeded`,
        together.map((r) => r.doneMs),
        baseMedian,
      ),
      row(
        `RTO ${args.group} together: request → ledger answers`,
        together.map((r) => r.runningMs),
        baseMedian,
      ),
      ...(back.length === 0
        ? []
        : [
            row(
              `failback ${benches.length} together (planned): → ledger answers`,
              back.map((r) => r.runningMs),
              baseMedian,
            ),
          ]),
    ];
    printTable(rows);
    console.log(`\nall ${args.group} machines running at the recovery site after ${seconds(allRunningMs)} s`);
    console.log(
      `reprotect (original location) of ${benches.length} items together: ${seconds(reprotectMs)} s`,
    );
    const fractions = deltas.map((d) => d.bytesSent / d.bytesCompared);
    const sent = deltas.map((d) => d.bytesSent);
    console.log(
      `failback delta (bytes the reverse resync sent / disk size ${args.diskMib} MiB), ${deltas.length} items: ` +
        `median ${(percentile(fractions, 50) * 100).toFixed(2)} %, max ${(Math.max(...fractions) * 100).toFixed(2)} % ` +
        `(median ${Math.round(percentile(sent, 50) / 1024)} KiB sent, ${args.runMs} ms of ledger writes at the recovery site)`,
    );
    const queued = together.map((r) => {
      const j = r.job as JobView & { createdAt?: string; startedAt?: string | null };
      return Date.parse(j.startedAt ?? '') - Date.parse(j.createdAt ?? '');
    });
    if (queued.every(Number.isFinite)) {
      console.log(
        `${args.group} together: wait in the jobs engine (created → started) median ${seconds(percentile(queued, 50))} s, ` +
          `max ${seconds(Math.max(...queued))} s`,
      );
    }
    if (oneJob !== undefined) console.log(`1-machine failover steps (s): ${stepTimes(oneJob)}`);
    if (failed.length > 0) {
      console.log(
        `\nFAILBACK: ${failed.length} of ${benches.length} machines did not run at the primary site:`,
      );
      for (const f of failed) console.log(`  ${f.split('\n').join('\n    ')}`);
    }
    const load1 = loadavg()[0] ?? 0;
    console.log(
      `load average ${load0.toFixed(1)} at start, ${load1.toFixed(1)} at end; total ${seconds(performance.now() - started)} s`,
    );
  } finally {
    await cleanup();
  }
}

await main();
