/**
 * Our NbdClient against servers we did not write (qemu-nbd, nbdkit), over unix sockets: structured replies with
 * holes (qemu-nbd sends OFFSET_HOLE chunks for sparse reads), block status, writes, zeroes, trim, flush, list.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { NbdClient } from '../../src/dataplane/nbd/client.js';
import { NbdError } from '../../src/dataplane/nbd/errors.js';
import { NbdErrno } from '../../src/dataplane/nbd/protocol.js';
import { sparseFile, tempDir } from './nbd-helpers.js';
import type { Cleanup } from './nbd-helpers.js';

const MiB = 1024 * 1024;

/** Starts a server process that listens on `sock` and waits (bounded) until the socket accepts connections. */
async function startOn(t: Cleanup, sock: string, cmd: string, args: string[]): Promise<void> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  );
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited: ${err}`);
    if (fs.existsSync(sock)) {
      try {
        await NbdClient.list({ path: sock, timeoutMs: 2000 });
        return;
      } catch {
        // not ready yet
      }
    }
    if (Date.now() > deadline) throw new Error(`${cmd} did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('NbdClient against qemu-nbd: sparse reads (OFFSET_HOLE), block status, write/zero/trim/flush', async (t) => {
  const dir = tempDir(t);
  const image = sparseFile(path.join(dir, 'disk.raw'), 32 * MiB);
  const fd = fs.openSync(image, 'r+');
  fs.writeSync(fd, Buffer.alloc(MiB, 0x3c), 0, MiB, 4 * MiB);
  fs.closeSync(fd);
  const sock = path.join(dir, 'qemu.sock');
  await startOn(t, sock, 'qemu-nbd', ['-f', 'raw', '-k', sock, '-x', 'vm', '-t', '--cache=writeback', image]);

  assert.deepEqual(
    (await NbdClient.list({ path: sock })).map((e) => e.name),
    ['vm'],
  );
  const c = await NbdClient.connect({ path: sock, exportName: 'vm' });
  t.after(() => c.destroy());
  assert.ok(c.structured);
  assert.equal(c.size, 32 * MiB);

  // A read spanning hole, data, hole: qemu-nbd answers with OFFSET_HOLE and OFFSET_DATA chunks.
  const r = await c.read(3 * MiB, 3 * MiB);
  assert.ok(r.subarray(0, MiB).every((x) => x === 0));
  assert.ok(r.subarray(MiB, 2 * MiB).every((x) => x === 0x3c));
  assert.ok(r.subarray(2 * MiB).every((x) => x === 0));

  const ext = await c.blockStatus(0, 32 * MiB);
  const data = ext.reduce<Array<[number, number]>>((acc, e) => {
    const start = acc.length === 0 ? 0 : acc[acc.length - 1]![1];
    acc.push([start, start + e.length]);
    return acc;
  }, []);
  const dataRanges = data.filter((_, i) => !ext[i]!.hole);
  assert.deepEqual(dataRanges, [[4 * MiB, 5 * MiB]]);

  await c.write(10 * MiB + 3, Buffer.from('from our client'), { fua: true });
  await c.writeZeroes(4 * MiB, 4096);
  await c.trim(20 * MiB, MiB);
  await c.flush();
  assert.equal((await c.read(10 * MiB + 3, 15)).toString(), 'from our client');
  assert.ok((await c.read(4 * MiB, 4096)).every((x) => x === 0));
  await assert.rejects(
    c.read(32 * MiB - 1, 2),
    (e: unknown) => e instanceof NbdError && e.errno === NbdErrno.EINVAL,
  );
  await c.disconnect();
});

test('NbdClient against nbdkit memory: pipelined requests and simple replies', async (t) => {
  const dir = tempDir(t);
  const sock = path.join(dir, 'nbdkit.sock');
  await startOn(t, sock, 'nbdkit', ['--exit-with-parent', '-f', '-U', sock, 'memory', '64M']);
  for (const structured of [true, false]) {
    const c = await NbdClient.connect({ path: sock, structuredReplies: structured });
    t.after(() => c.destroy());
    assert.equal(c.structured, structured);
    const jobs = Array.from({ length: 64 }, async (_, i) => {
      const buf = Buffer.alloc(64 * 1024, i + (structured ? 1 : 100));
      await c.write(i * 64 * 1024, buf);
      assert.deepEqual(await c.read(i * 64 * 1024, buf.length), buf);
    });
    await Promise.all(jobs);
    await c.disconnect();
  }
});
