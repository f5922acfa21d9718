/**
 * Control-plane benchmark (`npm run bench:api`): seeds 1,000 protected items and
 * 10,000 jobs, then measures p50/p99 latency over a real socket of paging the item
 * list and the job list (and two filtered job lists), and the jobs engine's
 * throughput for trivial one-step jobs at concurrency 4. Runs on SQLite, and on
 * PostgreSQL when `--pg URL` or OSR_TEST_PG is given (in a throwaway schema).
 *
 *   node dist/bench/api/run.js [--pg URL] [--items N] [--jobs N] [--engine-jobs N]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { startServer } from '../../src/api/server.js';
import { createStore } from '../../src/store/index.js';
import type { Store, StoreConfig } from '../../src/store/store.js';
import { JobEngine } from '../../src/jobs/engine.js';
import { seedItem, seedWorld } from '../../test/api/seed.js';

interface Args {
  pg: string | undefined;
  items: number;
  jobs: number;
  engineJobs: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    pg: process.env.OSR_TEST_PG || undefined,
    items: 1000,
    jobs: 10_000,
    engineJobs: 1000,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value for ${flag}`);
    if (flag === '--pg') args.pg = value;
    else if (flag === '--items') args.items = Number(value);
    else if (flag === '--jobs') args.jobs = Number(value);
    else if (flag === '--engine-jobs') args.engineJobs = Number(value);
    else throw new Error(`unknown flag ${flag}`);
    i++;
  }
  return args;
}

interface Row {
  dialect: string;
  measure: string;
  n: number;
  p50: string;
  p99: string;
}

function percentile(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)] ?? NaN;
}

async function measure(
  dialect: string,
  name: string,
  urls: string[],
  rounds: number,
  token: string,
): Promise<Row> {
  const headers = { authorization: `Bearer ${token}` };
  // Warm-up: connections, statement caches, JIT.
  for (const url of urls.slice(0, 3)) await (await fetch(url, { headers })).arrayBuffer();
  const samples: number[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const url of urls) {
      const t0 = process.hrtime.bigint();
      const res = await fetch(url, { headers });
      const body = (await res.json()) as { items?: unknown[] };
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (res.status !== 200 || !Array.isArray(body.items)) throw new Error(`${url}: HTTP ${res.status}`);
      samples.push(ms);
    }
  }
  samples.sort((a, b) => a - b);
  return {
    dialect,
    measure: name,
    n: samples.length,
    p50: percentile(samples, 50).toFixed(1),
    p99: percentile(samples, 99).toFixed(1),
  };
}

async function seed(store: Store, items: number, jobs: number): Promise<void> {
  const vault = await store.vaults.create({ name: 'default' });
  const now = new Date().toISOString();
  const world = await seedWorld(store, vault.id, items, now);
  await inBatches(world.machines, 20, (m) => seedItem(store, world, m));
  const indexes = Array.from({ length: jobs }, (_, i) => i);
  await inBatches(indexes, 20, async (i) => {
    const item = world.machines[i % world.machines.length];
    // Types no engine registers, so the server's engine leaves them alone.
    await store.jobs.create(
      {
        vaultId: vault.id,
        type: i % 10 === 0 ? 'bench.rare' : 'bench.common',
        displayName: 'Bench job',
        targetKind: 'item',
        targetId: item?.id ?? 'none',
        targetName: item?.name ?? 'none',
        input: { i },
        stepNames: ['one', 'two', 'three'],
        cancellable: true,
      },
      new Date(Date.parse(now) - (jobs - i) * 1000).toISOString(),
    );
  });
}

async function inBatches<T>(all: T[], size: number, fn: (t: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < all.length; i += size) await Promise.all(all.slice(i, i + size).map(fn));
}

async function engineThroughput(config: StoreConfig, n: number): Promise<number> {
  const store = await createStore(config);
  const engine = new JobEngine({ store, concurrency: 4, pollMs: 50 });
  try {
    engine.register({
      type: 'bench.noop',
      displayName: 'No-op',
      cancellable: false,
      steps: [{ name: 'noop', run: () => Promise.resolve(null) }],
    });
    const vault = await store.vaults.create({ name: `engine-${randomUUID().slice(0, 8)}` });
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const job = await engine.submit({
        type: 'bench.noop',
        vaultId: vault.id,
        targetKind: 'bench',
        targetId: String(i),
        targetName: String(i),
        input: {},
      });
      ids.push(job.id);
    }
    // One listener counting ends, not a waiter per job: n pollers would load the store themselves.
    const pending = new Set(ids);
    let failed = 0;
    const allDone = new Promise<void>((resolve) => {
      const off = engine.events.on('job', (e) => {
        if (e.kind !== 'ended' || !pending.delete(e.job.id)) return;
        if (e.job.state !== 'Succeeded') failed++;
        if (pending.size === 0) {
          off();
          resolve();
        }
      });
    });
    const t0 = process.hrtime.bigint();
    engine.start();
    await allDone;
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (failed > 0) throw new Error(`${failed} benchmark jobs did not succeed`);
    return n / seconds;
  } finally {
    await engine.stop();
    await store.close();
  }
}

async function runDialect(
  dialect: 'sqlite' | 'postgres',
  args: Args,
): Promise<{ rows: Row[]; jobsPerSecond: number }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'osr-bench-api-'));
  const schema = `osr_bench_${randomUUID().replaceAll('-', '')}`;
  const engineSchema = `${schema}_engine`;
  const config: StoreConfig =
    dialect === 'sqlite'
      ? { dialect, file: join(dataDir, 'osr.db') }
      : { dialect, url: args.pg ?? '', schema };
  try {
    const store = await createStore(config);
    const t0 = Date.now();
    await seed(store, args.items, args.jobs);
    if (store.analyze) await store.analyze();
    await store.close();
    process.stderr.write(
      `${dialect}: seeded ${args.items} items and ${args.jobs} jobs in ${Date.now() - t0} ms\n`,
    );

    const server = await startServer({
      dataDir,
      port: 0,
      logLevel: 'silent',
      ...(dialect === 'postgres' ? { database: args.pg ?? '', databaseSchema: schema } : {}),
    });
    const rows: Row[] = [];
    try {
      const base = `${server.url}/api/v1`;
      const itemPages = Array.from(
        { length: Math.ceil(args.items / 100) },
        (_, k) => `${base}/vaults/default/items?limit=100&offset=${k * 100}`,
      );
      rows.push(
        await measure(
          dialect,
          `GET items?limit=100 (${args.items} items, every page)`,
          itemPages,
          20,
          server.adminToken,
        ),
      );
      const jobPages = Array.from({ length: 100 }, (_, k) => `${base}/jobs?limit=100&offset=${k * 100}`);
      rows.push(
        await measure(
          dialect,
          `GET jobs?limit=100 (${args.jobs} jobs, 100 pages)`,
          jobPages,
          2,
          server.adminToken,
        ),
      );
      const firstPages = Array.from({ length: 50 }, () => `${base}/jobs?limit=100`);
      rows.push(await measure(dialect, 'GET jobs?limit=100 (first page)', firstPages, 4, server.adminToken));
      const filtered = Array.from(
        { length: 10 },
        (_, k) => `${base}/jobs?type=bench.rare&limit=100&offset=${k * 100}`,
      );
      rows.push(
        await measure(dialect, 'GET jobs?type=…&limit=100 (10% match)', filtered, 20, server.adminToken),
      );
      const byState = Array.from(
        { length: 10 },
        (_, k) => `${base}/jobs?vault=default&state=NotStarted,WaitingForAction&limit=100&offset=${k * 100}`,
      );
      rows.push(
        await measure(dialect, 'GET jobs?vault=&state=a,b&limit=100', byState, 20, server.adminToken),
      );
    } finally {
      await server.close();
    }

    const engineConfig: StoreConfig =
      dialect === 'sqlite'
        ? { dialect, file: join(dataDir, 'engine.db') }
        : { dialect, url: args.pg ?? '', schema: engineSchema };
    const jobsPerSecond = await engineThroughput(engineConfig, args.engineJobs);
    return { rows, jobsPerSecond };
  } finally {
    await rm(dataDir, { recursive: true, force: true });
    if (dialect === 'postgres') {
      const c = new pg.Client({ connectionString: args.pg });
      await c.connect();
      try {
        await c.query(`drop schema if exists "${schema}" cascade`);
        await c.query(`drop schema if exists "${engineSchema}" cascade`);
      } finally {
        await c.end();
      }
    }
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  const line = (r: string[]) => '| ' + r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ') + ' |';
  const [head, ...body] = rows;
  return [
    line(head ?? []),
    '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|',
    ...body.map(line),
  ].join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dialects: ('sqlite' | 'postgres')[] = args.pg ? ['sqlite', 'postgres'] : ['sqlite'];
  const rows: string[][] = [['store', 'request', 'n', 'p50 ms', 'p99 ms']];
  const throughput: string[][] = [['store', 'engine', 'jobs', 'jobs/s']];
  for (const d of dialects) {
    const r = await runDialect(d, args);
    for (const row of r.rows) rows.push([row.dialect, row.measure, String(row.n), row.p50, row.p99]);
    throughput.push([d, '1-step jobs, concurrency 4', String(args.engineJobs), r.jobsPerSecond.toFixed(0)]);
  }
  process.stdout.write(`\nControl plane — API latency over a real socket\n\n${table(rows)}\n`);
  process.stdout.write(`\nJobs engine throughput\n\n${table(throughput)}\n`);
}

await main();
