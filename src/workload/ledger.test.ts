import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, ftruncateSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { FileBackend } from '../dataplane/nbd/file-backend.js';
import { NbdServer } from '../dataplane/nbd/server.js';
import {
  Ledger,
  LedgerError,
  RECORD_SIZE,
  checkLedger,
  decodeBlock,
  encodeRecord,
  openReadableDisk,
} from './ledger.js';
import type { ReadableDisk } from './ledger.js';

const BIN = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'osr.js');
let tmp: string;

before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'osr-ledger-'));
});
after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

function memDisk(buf: Buffer): ReadableDisk {
  return { size: buf.length, read: (o, l) => Promise.resolve(Buffer.from(buf.subarray(o, o + l))) };
}

function ledgerImage(records: number, size = 64 * 1024): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 1; i <= records; i++) encodeRecord(i, 1_700_000_000_000 + i, b, (i - 1) * RECORD_SIZE);
  return b;
}

async function serve(file: string, name: string): Promise<{ uri: string; close(): Promise<void> }> {
  const backend = await FileBackend.open(file);
  const server = new NbdServer({ exports: [{ name, backend }] });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  if (typeof addr === 'string') throw new Error('unexpected socket');
  return {
    uri: `nbd://127.0.0.1:${addr.port}/${name}`,
    async close() {
      await server.close();
      await backend.close();
    },
  };
}

async function checkTarget(target: string): Promise<Awaited<ReturnType<typeof checkLedger>>> {
  const d = await openReadableDisk(target);
  try {
    return await checkLedger(d);
  } finally {
    await d.close();
  }
}

function image(name: string, size = 1024 * 1024): string {
  const file = join(tmp, name);
  const fd = openSync(file, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return file;
}

void test('records round-trip and the checker finds an unbroken prefix, a corrupt record, a wrong sequence and a gap', async () => {
  const r = decodeBlock(encodeRecord(42, 1234));
  assert.deepEqual(r, { kind: 'record', record: { seq: 42, time: 1234 } });
  assert.deepEqual(decodeBlock(Buffer.alloc(RECORD_SIZE)), { kind: 'zero' });

  const ok = await checkLedger(memDisk(ledgerImage(10)));
  assert.deepEqual([ok.ok, ok.records, ok.last?.seq, ok.end], [true, 10, 10, 10 * RECORD_SIZE]);
  assert.equal((await checkLedger(memDisk(Buffer.alloc(4096)))).records, 0);
  const full = await checkLedger(memDisk(ledgerImage(8, 8 * RECORD_SIZE)));
  assert.deepEqual([full.ok, full.records], [true, 8]);

  const corrupt = ledgerImage(10);
  corrupt.writeUInt8(corrupt.readUInt8(5 * RECORD_SIZE + 100) ^ 0xff, 5 * RECORD_SIZE + 100);
  const c = await checkLedger(memDisk(corrupt));
  assert.deepEqual([c.ok, c.records, c.problem?.offset], [false, 5, 5 * RECORD_SIZE]);
  assert.match(c.problem?.reason ?? '', /checksum mismatch/);

  const swapped = ledgerImage(10);
  encodeRecord(9, 1, swapped, 3 * RECORD_SIZE);
  assert.match(
    (await checkLedger(memDisk(swapped))).problem?.reason ?? '',
    /should be record 4 but is record 9/,
  );

  const gap = ledgerImage(10);
  gap.fill(0, 4 * RECORD_SIZE, 5 * RECORD_SIZE);
  const g = await checkLedger(memDisk(gap));
  assert.deepEqual([g.ok, g.records], [false, 4]);
  assert.match(g.problem?.reason ?? '', /a gap/);
});

void test('the ledger appends over NBD, serves its status, freezes (finishing the batch in flight) and thaws', async () => {
  const file = image('live.img');
  const nbd = await serve(file, 'live');
  const ledger = await Ledger.start({ disk: nbd.uri, rate: 200, httpPort: 0 });
  try {
    const url = `http://127.0.0.1:${ledger.httpAddress?.port}`;
    const deadline = Date.now() + 10_000;
    while (ledger.status().count < 20) {
      assert.ok(Date.now() < deadline, 'the ledger never appended');
      await new Promise((r) => setTimeout(r, 20));
    }
    const frozen = (await (await fetch(`${url}/freeze`, { method: 'POST' })).json()) as {
      frozen: boolean;
      count: number;
    };
    assert.equal(frozen.frozen, true);
    const check = await checkTarget(nbd.uri);
    assert.equal(check.ok, true);
    assert.equal(check.records, frozen.count, 'frozen: everything counted is on the disk and nothing more');
    await new Promise((r) => setTimeout(r, 200));
    const still = (await (await fetch(`${url}/status`)).json()) as {
      count: number;
      lastCheck: { ok: boolean };
    };
    assert.equal(still.count, frozen.count, 'no appends while frozen');
    assert.equal(still.lastCheck.ok, true);
    await fetch(`${url}/thaw`, { method: 'POST' });
    const resumed = Date.now() + 10_000;
    while (ledger.status().count <= frozen.count) {
      assert.ok(Date.now() < resumed, 'the ledger did not resume');
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await ledger.stop();
    await nbd.close();
  }
  const final = await checkTarget(file);
  assert.equal(final.ok, true);
});

void test('a ledger started while its disk is not served yet (its agent restarting) waits for it; an unknown export fails at once', async () => {
  const file = image('late.img');
  const first = await serve(file, 'late');
  const port = Number(new URL(first.uri).port);
  await first.close();
  const starting = Ledger.start({ disk: first.uri, rate: 100 });
  await new Promise((r) => setTimeout(r, 400));
  const backend = await FileBackend.open(file);
  const server = new NbdServer({ exports: [{ name: 'late', backend }] });
  await server.listen({ host: '127.0.0.1', port });
  try {
    const ledger = await starting;
    try {
      const deadline = Date.now() + 10_000;
      while (ledger.status().count < 5) {
        assert.ok(Date.now() < deadline, 'the ledger never appended');
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      await ledger.stop();
    }
    const began = Date.now();
    await assert.rejects(Ledger.start({ disk: `nbd://127.0.0.1:${port}/nothing` }));
    assert.ok(Date.now() - began < 2000, 'no retries for an export the server refuses');
  } finally {
    await server.close();
    await backend.close();
  }
});

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolvePromise({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

void test('kill -9 leaves an unbroken prefix; a corrupt record is refused until --repair-from-prefix', async () => {
  const file = image('crash.img');
  const nbd = await serve(file, 'crash');
  try {
    const child = spawn(process.execPath, [BIN, 'workload', 'ledger', '--disk', nbd.uri, '--rate', '500'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const deadline = Date.now() + 20_000;
    for (;;) {
      const c = await checkTarget(file);
      if (c.records >= 50) break;
      assert.ok(Date.now() < deadline, `no records appeared: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    await exited;

    const checked = await run(['workload', 'ledger-check', '--disk', nbd.uri, '--json']);
    assert.equal(checked.code, 0, checked.stderr);
    const result = JSON.parse(checked.stdout) as { ok: boolean; records: number };
    assert.equal(result.ok, true);
    assert.ok(result.records >= 50);

    // Corrupt record 10 in the image, behind the server's back.
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.from('garbage'), 0, 7, 9 * RECORD_SIZE + 30);
    closeSync(fd);
    const bad = await run(['workload', 'ledger-check', '--disk', file]);
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /BROKEN: 9 records/);
    const refused = await run(['workload', 'ledger', '--disk', nbd.uri]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /\(LEDGER_BROKEN\)/);
    await assert.rejects(
      Ledger.start({ disk: nbd.uri }),
      (e) => e instanceof LedgerError && e.code === 'LEDGER_BROKEN',
    );

    const repaired = await Ledger.start({ disk: nbd.uri, repairFromPrefix: true, rate: 100 });
    assert.equal(repaired.status().lastCheck.repaired, true);
    assert.equal(repaired.status().count, 9);
    await repaired.stop();
    const after = await checkTarget(file);
    assert.equal(after.ok, true);
    assert.ok(after.records >= 9);
  } finally {
    await nbd.close();
  }
});
