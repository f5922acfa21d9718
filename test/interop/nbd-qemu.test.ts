/**
 * Interop with QEMU's NBD client (qemu-io, qemu-img) against `osr nbd serve` running in its own process.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import {
  makeCertificates,
  mulberry32,
  run,
  seededBytes,
  sparseFile,
  startServe,
  tempDir,
} from './nbd-helpers.js';

const MiB = 1024 * 1024;

async function qemuIo(uri: string, cmds: string[], readOnly = false): Promise<string> {
  const args = ['-f', 'raw', ...(readOnly ? ['-r'] : []), uri, ...cmds.flatMap((c) => ['-c', c])];
  const r = await run('qemu-io', args, { allowFailure: true });
  const out = r.stdout + r.stderr;
  assert.equal(r.code, 0, `qemu-io ${cmds.join(' ; ')} failed:\n${out}`);
  assert.doesNotMatch(out, /fail|error/i, out);
  return out;
}

test('qemu-io writes patterns (also from concurrent processes) and reads them back', async (t) => {
  const dir = tempDir(t);
  const image = sparseFile(path.join(dir, 'disk.raw'), 256 * MiB);
  const srv = await startServe(t, [`${image}:disk0`]);
  assert.match(srv.banner, /disk0 \(268435456 bytes\)/);
  const uri = `nbd://127.0.0.1:${srv.port}/disk0`;

  await qemuIo(uri, [
    'write -P 0xab 0 1M',
    'write -P 0xcd 1048575 4097',
    'write -P 0x11 255M 1M',
    'write -z 10M 2M',
    'read -P 0xab 0 1048575',
    'read -P 0xcd 1048575 4097',
    'read -P 0x11 255M 1M',
    'read -P 0 10M 2M',
    'read -P 0 100M 1M',
    'flush',
  ]);
  // Pattern verification must be able to fail.
  const bad = await run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x99 0 4k'], { allowFailure: true });
  assert.match(bad.stdout + bad.stderr, /Pattern verification failed/);

  // Eight processes at once, each its own connection and region, many requests in flight (aio).
  await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      qemuIo(uri, [
        ...Array.from(
          { length: 16 },
          (_, k) => `aio_write -P ${0x20 + i} ${(20 + i * 8) * MiB + k * 512 * 1024} 512k`,
        ),
        'aio_flush',
      ]),
    ),
  );
  await Promise.all(
    Array.from({ length: 8 }, (_, i) => qemuIo(uri, [`read -P ${0x20 + i} ${(20 + i * 8) * MiB} 8M`], true)),
  );

  assert.equal(await srv.stop(), 0);
  assert.match(srv.output(), /nbd: stopped/);
  assert.equal(fs.statSync(image).size, 256 * MiB, 'the image never grows');
  const fd = fs.openSync(image, 'r');
  const b = Buffer.alloc(MiB);
  fs.readSync(fd, b, 0, MiB, 255 * MiB);
  fs.closeSync(fd);
  assert.ok(b.every((x) => x === 0x11));
});

test('qemu-img convert into and out of the server, and qemu-img compare agrees with the local copy', async (t) => {
  const dir = tempDir(t);
  const size = 64 * MiB;
  const src = sparseFile(path.join(dir, 'src.raw'), size);
  const rnd = mulberry32(7);
  const fd = fs.openSync(src, 'r+');
  for (let i = 0; i < 20; i++) {
    const len = 4096 * (1 + Math.floor(rnd() * 64));
    fs.writeSync(fd, seededBytes(rnd, len), 0, len, Math.floor((rnd() * (size - len)) / 512) * 512);
  }
  fs.closeSync(fd);
  const target = sparseFile(path.join(dir, 'target.raw'), size);
  const srv = await startServe(t, [`${target}:t`]);
  const uri = `nbd://127.0.0.1:${srv.port}/t`;

  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri]);
  const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri], { allowFailure: true });
  assert.equal(same.code, 0, same.stdout + same.stderr);
  assert.match(same.stdout, /Images are identical/);

  const back = path.join(dir, 'back.raw');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, back]);
  assert.ok(fs.readFileSync(back).equals(fs.readFileSync(src)));

  await qemuIo(uri, ['write -P 0x42 1M 4k']);
  const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri], {
    allowFailure: true,
  });
  assert.equal(differ.code, 1, 'compare must notice a difference');

  assert.equal(await srv.stop(), 0);
  assert.equal(fs.statSync(target).size, size);
});

test('read-only serving refuses qemu-io writes; TLS-required serving works with qemu TLS and refuses plaintext', async (t) => {
  const dir = tempDir(t);
  const image = sparseFile(path.join(dir, 'disk.raw'), 16 * MiB);
  fs.writeFileSync(path.join(dir, 'marker'), '');
  const ro = await startServe(t, [image, '--read-only']);
  assert.match(ro.banner, /read-only/);
  const w = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${ro.port}/disk`, '-c', 'write -P 1 0 4k'], {
    allowFailure: true,
  });
  assert.notEqual(w.code, 0);
  assert.match(w.stdout + w.stderr, /read-only|Permission denied|Operation not permitted/i);
  await qemuIo(`nbd://127.0.0.1:${ro.port}/disk`, ['read -P 0 0 1M'], true);
  assert.equal(await ro.stop(), 0);

  const pki = makeCertificates(path.join(dir, 'pki'));
  const secure = await startServe(t, [image, '--tls-cert', pki.cert, '--tls-key', pki.key, '--tls-required']);
  const opts = [
    '--object',
    `tls-creds-x509,id=tls0,dir=${pki.dir},endpoint=client`,
    '--image-opts',
    `driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port=${secure.port},file.export=disk,file.tls-creds=tls0,file.tls-hostname=localhost`,
  ];
  const r = await run('qemu-io', [...opts, '-c', 'write -P 0x5e 0 64k', '-c', 'read -P 0x5e 0 64k']);
  assert.doesNotMatch(r.stdout + r.stderr, /fail/i);
  const plain = await run(
    'qemu-io',
    ['-f', 'raw', `nbd://127.0.0.1:${secure.port}/disk`, '-c', 'read 0 4k'],
    {
      allowFailure: true,
    },
  );
  assert.notEqual(plain.code, 0, 'plaintext must be refused');
  assert.equal(await secure.stop(), 0);
});
