/**
 * `osr nbd serve` through the real `osr` binary: banner, several exports, clean stop on SIGTERM/SIGINT.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { NbdClient } from '../../src/dataplane/nbd/client.js';
import { sparseFile, tempDir } from './nbd-helpers.js';

const OSR = fileURLToPath(new URL('../../../bin/osr.js', import.meta.url));
const MiB = 1024 * 1024;

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`osr nbd serve prints where it listens, serves every FILE[:NAME] and stops cleanly on ${signal}`, async (t) => {
    const dir = tempDir(t);
    const a = sparseFile(path.join(dir, 'disk0.raw'), 4 * MiB);
    const b = sparseFile(path.join(dir, 'other.img'), MiB);
    const child = spawn(process.execPath, [OSR, 'nbd', 'serve', a, `${b}:data`, '--port', '0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.after(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const banner = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no banner:\n${out}`)), 20_000);
      child.stdout.on('data', () => {
        const m = /^nbd: serving .*$/m.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[0]);
        }
      });
      void exited.then(() => reject(new Error(`exited early:\n${out}`)));
    });
    const m = /^nbd: serving disk0 \(4194304 bytes\), data \(1048576 bytes\) on 127\.0\.0\.1:(\d+)$/.exec(
      banner,
    );
    assert.ok(m, banner);
    const port = Number(m[1]);

    const c = await NbdClient.connect({ port, exportName: 'data' });
    await c.write(MiB - 4, Buffer.from('tail'));
    assert.equal((await c.read(MiB - 4, 4)).toString(), 'tail');
    // A request racing the signal is either answered or refused (ESHUTDOWN / closed), never left hanging;
    // draining of requests already in flight is covered by the server unit tests.
    const racing = c.read(0, 4).then(
      () => 'answered',
      () => 'refused',
    );
    child.kill(signal);
    assert.match(await racing, /answered|refused/);
    assert.equal(await exited, 0, out);
    assert.match(out, /nbd: stopped/);
    c.destroy();
    const fd = fs.openSync(b, 'r');
    const tail = Buffer.alloc(4);
    fs.readSync(fd, tail, 0, 4, MiB - 4);
    fs.closeSync(fd);
    assert.equal(tail.toString(), 'tail');
    assert.ok(fs.existsSync(`${b}.osrmap`), 'the allocation map is persisted on a clean stop');
  });
}
