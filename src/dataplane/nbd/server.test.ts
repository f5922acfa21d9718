import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import type { BlockBackend } from './backend.js';
import { NbdClient } from './client.js';
import type { NbdConnectOptions } from './client.js';
import { NbdError, NbdOptionError } from './errors.js';
import { MemoryBackend } from './memory-backend.js';
import * as P from './protocol.js';
import { NbdServer } from './server.js';
import type { NbdServerOptions } from './server.js';

const MiB = 1024 * 1024;

type TestContext = { after: (fn: () => Promise<void> | void) => void };

async function serve(
  t: TestContext,
  options: Partial<NbdServerOptions> = {},
): Promise<{ server: NbdServer; port: number; disk: MemoryBackend; opts: NbdConnectOptions }> {
  const disk = new MemoryBackend(64 * MiB);
  const server = new NbdServer({ exports: [{ name: 'disk', backend: disk }], ...options });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  assert.ok(typeof addr !== 'string');
  t.after(() => server.close());
  return { server, port: addr.port, disk, opts: { port: addr.port, exportName: 'disk' } };
}

async function connect(t: TestContext, opts: NbdConnectOptions): Promise<NbdClient> {
  const c = await NbdClient.connect(opts);
  t.after(() => c.destroy());
  return c;
}

function isErrno(errno: number) {
  return (e: unknown): boolean => e instanceof NbdError && e.errno === errno;
}

/** A raw socket past the handshake greeting, for requests our client would never send. */
class RawPeer {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiters.splice(0).forEach((w) => w());
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    });
    socket.on('error', () => undefined);
  }
  static async open(port: number): Promise<RawPeer> {
    const s = net.connect({ port, host: '127.0.0.1' });
    await new Promise((r) => s.once('connect', r));
    const p = new RawPeer(s);
    await p.read(18);
    return p;
  }
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error('closed');
      if (Date.now() > deadline) throw new Error('timeout');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('server did not close the connection');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }
  write(b: Buffer): void {
    this.socket.write(b);
  }
  /** Sends client flags and GO for `name`, consumes replies up to the ACK. */
  async go(name: string, structured = false): Promise<void> {
    const f = Buffer.alloc(4);
    f.writeUInt32BE(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES, 0);
    this.write(f);
    if (structured) {
      this.write(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
      await this.optionReply();
    }
    const n = Buffer.from(name);
    const d = Buffer.alloc(6 + n.length);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    this.write(P.encodeOption(P.NBD_OPT_GO, d));
    for (;;) if ((await this.optionReply()).type === P.NBD_REP_ACK) break;
  }
  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    assert.equal(h.readBigUInt64BE(0), P.NBD_OPT_REPLY_MAGIC);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }
  destroy(): void {
    this.socket.destroy();
  }
}

function makeCert(dir: string): { cert: Buffer; key: Buffer } {
  const certPath = path.join(dir, 'cert.pem');
  const keyPath = path.join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-days',
      '2',
      '-keyout',
      keyPath,
      '-out',
      certPath,
    ],
    { stdio: 'ignore' },
  );
  return { cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath) };
}

describe('NbdServer with NbdClient', () => {
  test('negotiates, lists and describes exports, and the empty name opens the first export', async (t) => {
    const a = new MemoryBackend(MiB);
    const b = new MemoryBackend(2 * MiB, { readOnly: true });
    const server = new NbdServer({
      exports: [
        { name: 'a', backend: a, description: 'disk A' },
        { name: 'b', backend: b },
      ],
    });
    const addr = await server.listen({ port: 0 });
    assert.ok(typeof addr !== 'string');
    t.after(() => server.close());
    assert.deepEqual(await NbdClient.list({ port: addr.port }), [
      { name: 'a', description: 'disk A' },
      { name: 'b', description: '' },
    ]);
    const info = await NbdClient.info({ port: addr.port, exportName: 'b' });
    assert.equal(info.size, 2 * MiB);
    assert.ok(info.flags & P.NBD_FLAG_READ_ONLY);
    assert.deepEqual(info.blockSize, { minimum: 1, preferred: 4096, maximum: 32 * MiB });
    await assert.rejects(
      NbdClient.info({ port: addr.port, exportName: 'nope' }),
      (e: unknown) => e instanceof NbdOptionError && e.replyType === P.NBD_REP_ERR_UNKNOWN,
    );
    const c = await connect(t, { port: addr.port });
    assert.equal(c.info.name, 'a');
    assert.equal(c.size, MiB);
    assert.ok(c.structured);
    assert.equal(c.metaContexts.get('base:allocation'), 1);
    const f = c.info.flags;
    for (const flag of [
      P.NBD_FLAG_SEND_FLUSH,
      P.NBD_FLAG_SEND_FUA,
      P.NBD_FLAG_SEND_TRIM,
      P.NBD_FLAG_CAN_MULTI_CONN,
    ]) {
      assert.ok(f & flag);
    }
    await c.disconnect();
  });

  test('read, write, flush, trim, zero and block status round-trip with structured and simple replies', async (t) => {
    const { opts } = await serve(t);
    for (const structured of [true, false]) {
      const c = await connect(t, { ...opts, structuredReplies: structured });
      assert.equal(c.structured, structured);
      const data = crypto.randomBytes(3 * MiB + 17);
      await c.write(MiB - 5, data, { fua: true });
      assert.deepEqual(await c.read(MiB - 5, data.length), data);
      await c.flush();
      await c.writeZeroes(MiB, 64 * 1024);
      const back = await c.read(MiB - 5, 70000);
      assert.deepEqual(back.subarray(0, 5), data.subarray(0, 5));
      assert.ok(back.subarray(5, 5 + 65536).every((x) => x === 0));
      await c.trim(0, 64 * MiB);
      assert.ok((await c.read(10 * MiB, 4096)).every((x) => x === 0));
      assert.equal((await c.read(0, 0)).length, 0);
      await c.cache(0, 4096);
      if (structured) {
        await c.write(8 * MiB, Buffer.alloc(4096, 1));
        const ext = await c.blockStatus(0, 16 * MiB);
        assert.deepEqual(
          ext.map((e) => [e.length, e.flags]),
          [
            [8 * MiB, 3],
            [64 * 1024, 0],
            [8 * MiB - 64 * 1024, 3],
          ],
        );
        const one = await c.blockStatus(8 * MiB + 100, 4 * MiB, { reqOne: true });
        assert.deepEqual(one.length, 1);
        assert.equal(one[0]!.flags, 0);
        assert.deepEqual(await c.read(8 * MiB, 10, { df: true }), Buffer.alloc(10, 1));
      }
      await c.disconnect();
    }
  });

  test('range, size and permission errors get the NBD error the spec names; the connection stays usable', async (t) => {
    const disk = new MemoryBackend(MiB);
    const server = new NbdServer({
      exports: [
        { name: 'rw', backend: disk },
        { name: 'ro', backend: disk, readOnly: true },
      ],
    });
    const addr = await server.listen({ port: 0 });
    assert.ok(typeof addr !== 'string');
    t.after(() => server.close());
    const c = await connect(t, { port: addr.port, exportName: 'rw' });
    await assert.rejects(c.read(MiB - 1, 2), isErrno(P.NbdErrno.EINVAL));
    await assert.rejects(c.write(MiB, Buffer.alloc(1)), isErrno(P.NbdErrno.ENOSPC));
    await assert.rejects(c.writeZeroes(MiB - 1, 2), isErrno(P.NbdErrno.ENOSPC));
    await assert.rejects(c.trim(2 ** 52, 1), isErrno(P.NbdErrno.ENOSPC));
    await assert.rejects(c.read(0, 33 * MiB), isErrno(P.NbdErrno.EINVAL));
    await assert.rejects(c.blockStatus(0, 0), isErrno(P.NbdErrno.EINVAL));
    await assert.rejects(c.blockStatus(MiB, 1), isErrno(P.NbdErrno.EINVAL));
    await c.write(0, Buffer.from('still fine'));
    assert.equal((await c.read(0, 10)).toString(), 'still fine');
    const simple = await connect(t, { port: addr.port, exportName: 'rw', structuredReplies: false });
    await assert.rejects(simple.read(MiB - 1, 2), isErrno(P.NbdErrno.EINVAL));
    await assert.rejects(simple.blockStatus(0, 10), /not negotiated/);

    const ro = await connect(t, { port: addr.port, exportName: 'ro' });
    assert.ok(ro.info.flags & P.NBD_FLAG_READ_ONLY);
    await assert.rejects(ro.write(0, Buffer.alloc(1)), isErrno(P.NbdErrno.EPERM));
    await assert.rejects(ro.writeZeroes(0, 1), isErrno(P.NbdErrno.EPERM));
    await assert.rejects(ro.trim(0, 1), isErrno(P.NbdErrno.EPERM));
    assert.equal((await ro.read(0, 10)).toString(), 'still fine');
  });

  test('serves a unix socket too', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-nbd-unix-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const sock = path.join(dir, 'nbd.sock');
    const server = new NbdServer({ exports: [{ name: 'u', backend: new MemoryBackend(MiB) }] });
    assert.equal(await server.listen({ path: sock }), sock);
    t.after(() => server.close());
    const c = await connect(t, { path: sock });
    await c.write(5, Buffer.from('unix'));
    assert.equal((await c.read(5, 4)).toString(), 'unix');
    await c.disconnect();
  });

  test('many clients with many requests in flight each see their own data', async (t) => {
    const { opts } = await serve(t, { maxInFlight: 8 });
    const clients = await Promise.all(Array.from({ length: 6 }, () => connect(t, opts)));
    await Promise.all(
      clients.map(async (c, ci) => {
        const jobs = Array.from({ length: 200 }, async (_, i) => {
          const off = (ci * 200 + i) * 8192;
          const data = Buffer.alloc(8192, (ci * 31 + i) & 0xff);
          await c.write(off, data);
          assert.deepEqual(await c.read(off, 8192), data);
        });
        await Promise.all(jobs);
      }),
    );
    await Promise.all(clients.map((c) => c.disconnect()));
  });

  test('oversize writes, bad magic and unknown commands affect only the offending connection', async (t) => {
    const { opts, port } = await serve(t);
    const good = await connect(t, opts);

    const bigWrite = await RawPeer.open(port);
    await bigWrite.go('disk');
    bigWrite.write(P.encodeRequest(P.NBD_CMD_WRITE, 0, 1n, 0, 33 * MiB));
    await bigWrite.waitClosed();

    const badMagic = await RawPeer.open(port);
    await badMagic.go('disk');
    const req = P.encodeRequest(P.NBD_CMD_READ, 0, 1n, 0, 1);
    req.writeUInt32BE(0xdeadbeef, 0);
    badMagic.write(req);
    await badMagic.waitClosed();

    const unknown = await RawPeer.open(port);
    await unknown.go('disk');
    unknown.write(P.encodeRequest(99, 0, 7n, 0, 0));
    unknown.write(P.encodeRequest(P.NBD_CMD_READ, 1 << 9, 8n, 0, 1));
    unknown.write(P.encodeRequest(P.NBD_CMD_FLUSH, 0, 9n, 1, 0));
    for (const cookie of [7n, 8n, 9n]) {
      const r = await unknown.read(16);
      assert.equal(r.readUInt32BE(0), P.NBD_SIMPLE_REPLY_MAGIC);
      assert.equal(r.readUInt32BE(4), P.NbdErrno.EINVAL);
      assert.equal(r.readBigUInt64BE(8), cookie);
    }
    unknown.destroy();

    await good.write(0, Buffer.from('ok'));
    assert.equal((await good.read(0, 2)).toString(), 'ok');
  });

  test('EXPORT_NAME works for old clients, and unknown options get ERR_UNSUP without ending the handshake', async (t) => {
    const { port, disk } = await serve(t);
    await disk.write(0, Buffer.from('hello'));
    const p = await RawPeer.open(port);
    t.after(() => p.destroy());
    const f = Buffer.alloc(4);
    f.writeUInt32BE(P.NBD_FLAG_C_FIXED_NEWSTYLE, 0);
    p.write(f);
    p.write(P.encodeOption(4242, Buffer.from('whatever')));
    const r = await p.optionReply();
    assert.equal(r.option, 4242);
    assert.equal(r.type, P.NBD_REP_ERR_UNSUP);
    p.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('disk')));
    const reply = await p.read(134);
    assert.equal(P.readU64(reply, 0), 64 * MiB);
    assert.ok(
      reply.subarray(10).every((x) => x === 0),
      'zero padding without NO_ZEROES',
    );
    p.write(P.encodeRequest(P.NBD_CMD_READ, 0, 5n, 0, 5));
    const h = await p.read(16);
    assert.equal(h.readUInt32BE(4), 0);
    assert.equal((await p.read(5)).toString(), 'hello');
  });

  test('a client that stops reading replies makes the server stop reading requests (bounded memory)', async (t) => {
    const { port, server } = await serve(t, { maxInFlightBytes: 4 * MiB });
    const p = await RawPeer.open(port);
    await p.go('disk');
    p.socket.pause();
    // 400 × 1 MiB reads = 400 MiB of replies if the server kept going.
    for (let i = 0; i < 400; i++) p.write(P.encodeRequest(P.NBD_CMD_READ, 0, BigInt(i), 0, MiB));
    const before = process.memoryUsage().arrayBuffers;
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(
      process.memoryUsage().arrayBuffers - before < 64 * MiB,
      'server buffered far more than its cap',
    );
    assert.equal(server.connectionCount, 1);
    p.destroy();
  });

  test('graceful close drains in-flight requests and answers late ones with ESHUTDOWN', async (t) => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const inner = new MemoryBackend(MiB);
    const slow: BlockBackend = Object.assign(Object.create(inner) as MemoryBackend, {
      write: async (o: number, d: Buffer) => {
        await gate;
        return inner.write(o, d);
      },
    });
    const server = new NbdServer({ exports: [{ name: '', backend: slow }] });
    const addr = await server.listen({ port: 0 });
    assert.ok(typeof addr !== 'string');
    const c = await connect(t, { port: addr.port });
    const inFlight = c.write(0, Buffer.from('drained'));
    await new Promise((r) => setTimeout(r, 50));
    const closing = server.close();
    const late = c.read(0, 7);
    await assert.rejects(late, isErrno(P.NbdErrno.ESHUTDOWN));
    release();
    await inFlight;
    await closing;
    assert.equal((await inner.read(0, 7)).toString(), 'drained');
    await assert.rejects(NbdClient.connect({ port: addr.port, timeoutMs: 2000 }));
  });

  test('STARTTLS: encrypted sessions, certificate pinning, and required TLS refuses plaintext', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-nbd-tls-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const { cert, key } = makeCert(dir);
    const { opts } = await serve(t, { tls: { cert, key, required: true } });

    await assert.rejects(
      NbdClient.connect(opts),
      (e: unknown) => e instanceof NbdOptionError && e.replyType === P.NBD_REP_ERR_TLS_REQD,
    );
    const c = await connect(t, { ...opts, tls: { ca: cert, servername: 'localhost' } });
    await c.write(0, Buffer.from('secret'));
    assert.equal((await c.read(0, 6)).toString(), 'secret');
    assert.equal(c.metaContexts.size, 1);
    await c.disconnect();

    const fp = new crypto.X509Certificate(cert).fingerprint256;
    const pinned = await connect(t, { ...opts, tls: { rejectUnauthorized: false, fingerprint256: fp } });
    assert.equal((await pinned.read(0, 6)).toString(), 'secret');
    await pinned.disconnect();
    await assert.rejects(
      NbdClient.connect({ ...opts, tls: { rejectUnauthorized: false, fingerprint256: 'AA:BB' } }),
      /fingerprint/,
    );
    await assert.rejects(NbdClient.connect({ ...opts, tls: true }), /self-signed|certificate/);
    assert.equal((await NbdClient.list({ ...opts, tls: { ca: cert, servername: 'localhost' } })).length, 1);
  });
});

describe('NbdServer receive paths', () => {
  for (const directReceive of [true, false]) {
    const name = directReceive ? 'direct (onread)' : "'data' event";
    test(`${name} receive: a request stream cut at arbitrary points, with the connection at its in-flight limit, is applied exactly`, async (t) => {
      const inner = new MemoryBackend(64 * MiB);
      // Slow writes keep the connection at its in-flight limit while more of the stream arrives, so reading
      // pauses and resumes with partial headers and payloads buffered.
      const slow: BlockBackend = Object.assign(Object.create(inner) as MemoryBackend, {
        write: async (o: number, d: Buffer) => {
          await new Promise((r) => setTimeout(r, 2));
          return inner.write(o, d);
        },
      });
      const server = new NbdServer({
        exports: [{ name: 'disk', backend: slow }],
        directReceive,
        maxInFlight: 2,
      });
      const addr = await server.listen({ host: '127.0.0.1', port: 0 });
      assert.ok(typeof addr !== 'string');
      t.after(() => server.close());
      const p = await RawPeer.open(addr.port);
      t.after(() => p.destroy());
      await p.go('disk');
      p.socket.setNoDelay(true);

      let seed = 12345;
      const rand = (n: number): number => {
        seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
        return seed % n;
      };
      const sizes = [1, 4096, 28, 65536 + 5, 300 * 1024, 2 * MiB + 3, 512, MiB, 27, 3 * MiB + 1];
      const parts: Buffer[] = [];
      const writes: Array<{ offset: number; data: Buffer }> = [];
      let offset = 0;
      let cookie = 1n;
      for (const size of sizes) {
        const data = crypto.randomBytes(size);
        writes.push({ offset, data });
        parts.push(P.encodeRequest(P.NBD_CMD_WRITE, 0, cookie++, offset, size), data);
        // A read of a range written earlier in the same stream rides along between writes.
        parts.push(P.encodeRequest(P.NBD_CMD_READ, 0, 1000n + cookie, 0, 1));
        offset += size + 4096;
      }
      const stream = Buffer.concat(parts);
      for (let at = 0; at < stream.length;) {
        const n = Math.min(stream.length - at, rand(4) === 0 ? 1 + rand(40) : 1 + rand(400 * 1024));
        p.write(stream.subarray(at, at + n));
        at += n;
        if (rand(3) === 0) await new Promise((r) => setTimeout(r, 1));
      }
      const expectedReplies = sizes.length * 2;
      const errors = new Map<bigint, number>();
      for (let i = 0; i < expectedReplies; i++) {
        const h = await p.read(16);
        assert.equal(h.readUInt32BE(0), P.NBD_SIMPLE_REPLY_MAGIC);
        const c = h.readBigUInt64BE(8);
        errors.set(c, h.readUInt32BE(4));
        if (c >= 1000n) await p.read(1);
      }
      assert.equal(errors.size, expectedReplies);
      assert.ok([...errors.values()].every((e) => e === 0));
      for (const w of writes) {
        assert.ok((await inner.read(w.offset, w.data.length)).equals(w.data), `write at ${w.offset} differs`);
      }
      // The gaps between the writes were never touched.
      for (const w of writes)
        assert.ok((await inner.read(w.offset + w.data.length, 4096)).every((b) => b === 0));
    });
  }
});

describe('NbdServer payload buffer reuse', () => {
  test('a payload buffer is reused only after the backend released it, and every write lands intact', async (t) => {
    const inner = new MemoryBackend(64 * MiB);
    let overwritten = 0;
    let reused = 0;
    const seen = new WeakSet<ArrayBufferLike>();
    // Declares that it keeps no reference, then checks that nobody touched the buffer while the write was
    // still in flight (as a file backend would be copying from it).
    const checking: BlockBackend = Object.assign(Object.create(inner) as MemoryBackend, {
      releasesWriteData: true,
      write: async (o: number, d: Buffer) => {
        if (seen.has(d.buffer)) reused++;
        seen.add(d.buffer);
        const copy = Buffer.from(d);
        await new Promise((r) => setTimeout(r, 1 + (o % 3)));
        if (!d.equals(copy)) overwritten++;
        return inner.write(o, copy);
      },
    });
    const server = new NbdServer({ exports: [{ name: 'disk', backend: checking }] });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    assert.ok(typeof addr !== 'string');
    t.after(() => server.close());
    const c = await connect(t, { port: addr.port, exportName: 'disk' });
    const writes = Array.from({ length: 48 }, (_, i) => ({ offset: i * MiB, data: crypto.randomBytes(MiB) }));
    for (let round = 0; round < 3; round++) {
      await Promise.all(writes.slice(round * 16, round * 16 + 16).map((w) => c.write(w.offset, w.data)));
    }
    assert.equal(overwritten, 0, 'a payload buffer was rewritten while its write was in flight');
    assert.ok(reused > 0, 'payload buffers were never reused');
    for (const w of writes) assert.ok((await c.read(w.offset, MiB)).equals(w.data), `data at ${w.offset}`);
  });

  test('a backend that keeps write data (no releasesWriteData) always gets buffers of its own', async (t) => {
    const inner = new MemoryBackend(64 * MiB);
    const kept: Array<{ d: Buffer; copy: Buffer }> = [];
    const keeping: BlockBackend = Object.assign(Object.create(inner) as MemoryBackend, {
      write: async (o: number, d: Buffer) => {
        kept.push({ d, copy: Buffer.from(d) });
        return inner.write(o, d);
      },
    });
    const server = new NbdServer({ exports: [{ name: 'disk', backend: keeping }] });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    assert.ok(typeof addr !== 'string');
    t.after(() => server.close());
    const c = await connect(t, { port: addr.port, exportName: 'disk' });
    for (let i = 0; i < 32; i++) await c.write(i * MiB, crypto.randomBytes(MiB));
    assert.equal(kept.length, 32);
    assert.ok(
      kept.every((k) => k.d.equals(k.copy)),
      'a kept write buffer was reused',
    );
  });
});

describe('NbdServer large READ replies', () => {
  test('large READ replies queued behind a client that is not reading are never overwritten by later reads', async (t) => {
    const { port, disk } = await serve(t, { maxInFlight: 4 });
    const size = MiB + 512;
    const blocks = Array.from({ length: 40 }, () => crypto.randomBytes(size));
    for (const [i, b] of blocks.entries()) await disk.write(i * size, b);
    const p = await RawPeer.open(port);
    t.after(() => p.destroy());
    await p.go('disk');
    p.socket.pause();
    for (let i = 0; i < blocks.length; i++)
      p.write(P.encodeRequest(P.NBD_CMD_READ, 0, BigInt(i), i * size, size));
    await new Promise((r) => setTimeout(r, 300));
    p.socket.resume();
    const seen = new Set<number>();
    for (let n = 0; n < blocks.length; n++) {
      const h = await p.read(16);
      assert.equal(h.readUInt32BE(4), 0);
      const i = Number(h.readBigUInt64BE(8));
      assert.ok(!seen.has(i), `reply ${i} arrived twice (its buffer was rewritten while queued)`);
      seen.add(i);
      assert.ok((await p.read(size)).equals(blocks[i]!), `reply ${i} was overwritten`);
    }
  });

  test('a large READ reply buffer is reused once the socket has written it, and later replies stay intact', async (t) => {
    const inner = new MemoryBackend(64 * MiB);
    const seen = new WeakSet<ArrayBufferLike>();
    let reused = 0;
    const recording: BlockBackend = Object.assign(Object.create(inner) as MemoryBackend, {
      read: async (o: number, n: number, into?: Buffer) => {
        if (into && n >= MiB) {
          if (seen.has(into.buffer)) reused++;
          seen.add(into.buffer);
        }
        return inner.read(o, n, into);
      },
    });
    const server = new NbdServer({ exports: [{ name: 'disk', backend: recording }] });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    assert.ok(typeof addr !== 'string');
    t.after(() => server.close());
    const blocks = Array.from({ length: 16 }, () => crypto.randomBytes(MiB));
    for (const [i, b] of blocks.entries()) await inner.write(i * MiB, b);
    const c = await connect(t, { port: addr.port, exportName: 'disk' });
    for (let round = 0; round < 3; round++) {
      const got = await Promise.all(blocks.map((_, i) => c.read(i * MiB, MiB)));
      got.forEach((g, i) => assert.ok(g.equals(blocks[i]!), `round ${round} block ${i}`));
    }
    assert.ok(reused > 0, 'READ reply buffers were never reused');
  });

  for (const structured of [true, false]) {
    test(`pipelined large READ replies (${structured ? 'structured' : 'simple'}) carry exactly the bytes asked for`, async (t) => {
      const { opts, disk } = await serve(t);
      const blocks = Array.from({ length: 24 }, () => crypto.randomBytes(MiB + 512));
      for (const [i, b] of blocks.entries()) await disk.write(i * 2 * MiB, b);
      const c = await connect(t, { ...opts, structuredReplies: structured });
      for (let round = 0; round < 4; round++) {
        const got = await Promise.all(blocks.map((_, i) => c.read(i * 2 * MiB, MiB + 512)));
        got.forEach((g, i) => assert.ok(g.equals(blocks[i]!), `round ${round} block ${i}`));
      }
    });
  }
});
