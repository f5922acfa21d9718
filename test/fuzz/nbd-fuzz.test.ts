/**
 * Seeded, bounded fuzz test of the NBD server: malformed handshakes and request streams from many connections
 * against `osr nbd serve` in its own process, while a well-behaved client keeps working on another export.
 *
 * Reproduce a failure with `OSR_FUZZ_SEED=<seed> OSR_FUZZ_SESSIONS=<n> node --test dist/test/fuzz/nbd-fuzz.test.js`.
 */
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import { NbdClient } from '../../src/dataplane/nbd/client.js';
import * as P from '../../src/dataplane/nbd/protocol.js';
import {
  makeCertificates,
  mulberry32,
  seededBytes,
  sparseFile,
  startServe,
  tempDir,
} from '../interop/nbd-helpers.js';

const MiB = 1024 * 1024;
const SEED = Number(process.env.OSR_FUZZ_SEED ?? 20240917);
const SESSIONS = Number(process.env.OSR_FUZZ_SESSIONS ?? 600);
const PARALLEL = 8;
const VICTIM_SIZE = 8 * MiB + 333;

type Rnd = () => number;

class Gen {
  constructor(readonly rnd: Rnd) {}
  int(max: number): number {
    return Math.floor(this.rnd() * max);
  }
  chance(p: number): boolean {
    return this.rnd() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    return seededBytes(this.rnd, n);
  }
  u32(): number {
    return this.int(0x100000000);
  }
  /** Lengths and offsets that hit the interesting edges. */
  edgy(limit: number): number {
    return this.pick([
      0,
      1,
      511,
      512,
      4096,
      limit - 1,
      limit,
      limit + 1,
      32 * MiB,
      32 * MiB + 1,
      0xffffffff,
      this.int(limit + 2),
    ]);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff, 0);
  return b;
}

function str32(s: string): Buffer {
  return Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
}

/** A syntactically plausible (but possibly wrong) option payload for `option`. */
function optionData(g: Gen, option: number, exportName: string): Buffer {
  switch (option) {
    case P.NBD_OPT_GO:
    case P.NBD_OPT_INFO: {
      const n = g.int(4);
      const reqs = Buffer.concat(Array.from({ length: n }, () => u16(g.int(6))));
      const body = Buffer.concat([str32(exportName), u16(g.chance(0.8) ? n : g.int(0x10000)), reqs]);
      return g.chance(0.8) ? body : body.subarray(0, g.int(body.length));
    }
    case P.NBD_OPT_SET_META_CONTEXT:
    case P.NBD_OPT_LIST_META_CONTEXT: {
      const qs = Array.from({ length: g.int(4) }, () =>
        g.pick(['base:allocation', 'base:', 'qemu:dirty-bitmap:x', '', 'x'.repeat(g.int(300))]),
      );
      const body = Buffer.concat([
        str32(exportName),
        u32(g.chance(0.8) ? qs.length : g.u32()),
        ...qs.map((q) => (g.chance(0.9) ? str32(q) : Buffer.concat([u32(g.u32()), Buffer.from(q)]))),
      ]);
      return g.chance(0.85) ? body : body.subarray(0, g.int(body.length));
    }
    case P.NBD_OPT_EXPORT_NAME:
      return Buffer.from(exportName);
    default:
      return g.chance(0.5) ? Buffer.alloc(0) : g.bytes(g.int(512));
  }
}

/** Builds the byte stream of one hostile session. */
function session(g: Gen): { bytes: Buffer; kind: string } {
  const parts: Buffer[] = [];
  const kind = g.pick([
    'garbage',
    'bad-flags',
    'truncated-option',
    'huge-option',
    'options',
    'requests',
    'requests',
  ]);
  if (kind === 'garbage') return { kind, bytes: g.bytes(g.int(300)) };
  parts.push(u32(kind === 'bad-flags' ? g.u32() | 4 : P.NBD_FLAG_C_FIXED_NEWSTYLE | (g.chance(0.7) ? 2 : 0)));
  if (kind === 'bad-flags') return { kind, bytes: Buffer.concat([...parts, g.bytes(g.int(64))]) };
  if (kind === 'truncated-option') {
    const opt = P.encodeOption(g.int(12), g.bytes(16));
    return { kind, bytes: Buffer.concat([...parts, opt.subarray(0, 1 + g.int(opt.length - 1))]) };
  }
  if (kind === 'huge-option') {
    const h = P.encodeOption(g.pick([P.NBD_OPT_GO, P.NBD_OPT_LIST, 77]));
    h.writeUInt32BE(64 * 1024 + 1 + g.int(0xfffeffff), 12);
    return { kind, bytes: Buffer.concat([...parts, h, g.bytes(g.int(1000))]) };
  }
  const names = ['victim', 'ro', '', 'nope', 'x'.repeat(5000)];
  const nOpts = 1 + g.int(6);
  for (let i = 0; i < nOpts; i++) {
    const option = g.pick([1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 0, 4, 12, 0x7fffffff, 0xffffffff]);
    // The good export is never named: its client must be unaffected by anything happening here.
    const data = optionData(g, option, g.pick(names));
    const opt = P.encodeOption(option, data);
    if (g.chance(0.05)) opt.writeUInt32BE(g.u32(), 0);
    parts.push(opt);
  }
  if (kind === 'options') return { kind, bytes: Buffer.concat(parts) };

  // Enter transmission properly, then send a hostile request stream.
  const structured = g.chance(0.6);
  if (structured) parts.push(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
  if (structured && g.chance(0.5)) {
    parts.push(
      P.encodeOption(
        P.NBD_OPT_SET_META_CONTEXT,
        Buffer.concat([str32('victim'), u32(1), str32('base:allocation')]),
      ),
    );
  }
  parts.push(
    P.encodeOption(P.NBD_OPT_GO, Buffer.concat([str32(g.pick(['victim', 'ro', 'victim'])), u16(0)])),
  );
  const nReq = 1 + g.int(40);
  for (let i = 0; i < nReq; i++) {
    const type = g.chance(0.85) ? g.int(9) : g.int(0x10000);
    const flags = g.chance(0.7) ? g.int(32) : g.int(0x10000);
    const offset = g.chance(0.5) ? g.int(VICTIM_SIZE) : g.edgy(VICTIM_SIZE);
    let length = g.chance(0.6) ? g.int(70000) : g.edgy(VICTIM_SIZE);
    if (type === P.NBD_CMD_DISC && g.chance(0.5)) length = 0;
    const req = P.encodeRequest(type, flags, BigInt(g.u32()), offset, length >>> 0);
    if (g.chance(0.03)) req.writeUInt32BE(g.u32(), 0);
    parts.push(req);
    if (type === P.NBD_CMD_WRITE && length <= 4 * MiB) {
      // Sometimes cut the payload short: the stream then ends mid-request.
      parts.push(g.bytes(g.chance(0.9) ? length : g.int(length + 1)));
    }
  }
  if (g.chance(0.3)) parts.push(g.bytes(g.int(100)));
  return { kind, bytes: Buffer.concat(parts) };
}

/** Sends `bytes` in random pieces, reads and discards replies, then closes; bounded in time. */
async function play(port: number, g: Gen, bytes: Buffer): Promise<void> {
  const sock = net.connect({ port, host: '127.0.0.1' });
  sock.on('error', () => undefined);
  sock.on('data', () => undefined);
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  await new Promise<void>((resolve) => {
    sock.once('connect', () => resolve());
    sock.once('close', () => resolve());
  });
  let at = 0;
  while (at < bytes.length && !sock.destroyed) {
    const n = 1 + g.int(g.chance(0.5) ? 64 : 64 * 1024);
    sock.write(bytes.subarray(at, at + n));
    at += n;
    if (g.chance(0.2)) await new Promise((r) => setImmediate(r));
  }
  if (g.chance(0.5)) sock.destroy();
  else sock.end();
  const timer = setTimeout(() => sock.destroy(), 3000);
  await closed;
  clearTimeout(timer);
}

test(`NBD fuzz: ${SESSIONS} hostile sessions (seed ${SEED}) never hurt the server or other clients`, async (t) => {
  const dir = tempDir(t, 'osr-nbd-fuzz-');
  const victim = sparseFile(path.join(dir, 'victim.raw'), VICTIM_SIZE);
  const good = sparseFile(path.join(dir, 'good.raw'), 16 * MiB);
  const ro = path.join(dir, 'ro.raw');
  fs.writeFileSync(ro, crypto.randomBytes(MiB));
  const roHash = crypto.createHash('sha256').update(fs.readFileSync(ro)).digest('hex');
  const pki = makeCertificates(path.join(dir, 'pki'));
  const srv = await startServe(t, [
    `${victim}:victim`,
    `${good}:good`,
    '--tls-cert',
    pki.cert,
    '--tls-key',
    pki.key,
  ]);
  const roSrv = await startServe(t, [`${ro}:ro`, '--read-only']);
  const client = await NbdClient.connect({ port: srv.port, exportName: 'good' });
  t.after(() => client.destroy());

  const rnd = mulberry32(SEED);
  const g = new Gen(rnd);
  const model = Buffer.alloc(16 * MiB);
  const kinds = new Map<string, number>();
  let done = 0;
  while (done < SESSIONS) {
    const batch = Array.from({ length: Math.min(PARALLEL, SESSIONS - done) }, () => {
      const s = session(g);
      kinds.set(s.kind, (kinds.get(s.kind) ?? 0) + 1);
      return play(g.chance(0.75) ? srv.port : roSrv.port, new Gen(mulberry32(g.u32())), s.bytes);
    });
    // The well-behaved client works while the batch is running.
    const off = g.int(16 * MiB - 70000);
    const data = g.bytes(1 + g.int(70000));
    const own = (async () => {
      await client.write(off, data);
      data.copy(model, off);
      assert.deepEqual(await client.read(off, data.length), data, `seed ${SEED}, after ${done} sessions`);
    })();
    await Promise.all([...batch, own]);
    done += batch.length;
    assert.equal(srv.child.exitCode, null, `server died (seed ${SEED}):\n${srv.output()}`);
    assert.equal(roSrv.child.exitCode, null, `read-only server died (seed ${SEED}):\n${roSrv.output()}`);
  }
  assert.ok((kinds.get('requests') ?? 0) > SESSIONS / 5, 'the generator reaches the transmission phase');

  await client.flush();
  assert.ok(
    (await client.read(0, 16 * MiB)).equals(model),
    'the good export holds exactly what its client wrote',
  );
  const fresh = await NbdClient.connect({ port: srv.port, exportName: 'victim' });
  assert.equal(fresh.size, VICTIM_SIZE);
  await fresh.write(0, Buffer.from('still alive'));
  assert.equal((await fresh.read(0, 11)).toString(), 'still alive');
  await fresh.disconnect();
  await client.disconnect();

  assert.equal(await srv.stop(), 0, srv.output());
  assert.equal(fs.statSync(victim).size, VICTIM_SIZE, 'no byte written past the export');
  assert.equal(fs.statSync(good).size, 16 * MiB);
  assert.ok(fs.readFileSync(good).equals(model));
  assert.equal(await roSrv.stop(), 0, roSrv.output());
  assert.equal(
    crypto.createHash('sha256').update(fs.readFileSync(ro)).digest('hex'),
    roHash,
    'read-only export unchanged',
  );
});
