/**
 * A receiving process asked to stop (SIGTERM) exits promptly whatever its connections are doing: batches being
 * received and applied, a second connection of the same group taking over, TLS handshakes in progress, TCP
 * connections that never start a handshake, senders reconnecting while it closes. Many rounds, each stopped at a
 * random moment while a sender streams at full speed; a process that does not exit within 10 s fails the test.
 */
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { test } from 'node:test';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import { encodeFrame, FrameType, jsonPayload } from '../../src/dataplane/transport/frame.js';
import { ReplicationSender } from '../../src/dataplane/transport/sender.js';
import {
  DP_DISK,
  dpChange,
  makeIdentity,
  mulberry32,
  startFixture,
  stopFixture,
  tempDir,
} from './source-support.js';
import type { Proc } from './source-support.js';

const ROUNDS = 8;

test('SIGTERM ends the receiving process promptly under load, round after round', async () => {
  const t = tempDir('osr-recv-exit-');
  const src = makeIdentity(t.dir, 'source');
  const dst = makeIdentity(t.dir, 'recovery');
  const env = { OSR_DP_CERTS: t.dir, OSR_DP_REPLICA: join(t.dir, 'replica') };
  const journal = WriteJournal.open(join(t.dir, 'journal'), [DP_DISK], { segmentBytes: 1024 * 1024 });
  const disk = journal.attach(DP_DISK.id, new MemoryBackend(DP_DISK.sizeBytes));
  const rnd = mulberry32(77);
  let stopWriting = false;
  let k = 0;
  // Keeps the journal ahead of the link the whole time.
  const writing = (async () => {
    while (!stopWriting) {
      const c = dpChange(++k);
      await disk.write(c.offset, c.data);
      if (k % 50 === 0) await new Promise((r) => setTimeout(r, 1));
    }
  })();
  const procs: Proc[] = [];
  const extra = new Set<net.Socket>();
  let port = '0';
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const r = startFixture('dp-replica-receiver', { ...env, OSR_DP_PORT: port });
      procs.push(r);
      port = (await r.firstLine).split(' ')[1]!;
      const sender = new ReplicationSender({
        journal,
        groupId: 'crash-group',
        host: '127.0.0.1',
        port: Number(port),
        identity: src,
        trustedCa: dst.ca,
        peerAuth: { mode: 'certificate', identity: 'urn:osr:agent:recovery' },
        batchBytes: 64 * 1024,
        backoff: { initialMs: 5, maxMs: 20 },
      });
      sender.start();
      // Other connections: a pinned peer that says HELLO for the same group (takes the stream over, then is taken
      // over again by the sender's reconnect), handshakes cut half way, and TCP connections that stay silent.
      let churning = true;
      const churn = (async () => {
        while (churning) {
          const what = rnd();
          if (what < 0.4) {
            const s = tls.connect({
              host: '127.0.0.1',
              port: Number(port),
              key: src.key,
              cert: src.cert,
              rejectUnauthorized: false,
            });
            extra.add(s);
            s.on('error', () => undefined);
            s.once('close', () => extra.delete(s));
            s.once('secureConnect', () =>
              s.write(
                encodeFrame(
                  FrameType.HELLO,
                  jsonPayload({ groupId: 'crash-group', firstSeq: 1, lastSeq: journal.lastSeq }),
                ),
              ),
            );
          } else {
            const s = net.connect(Number(port), '127.0.0.1');
            extra.add(s);
            s.on('error', () => undefined);
            s.once('close', () => extra.delete(s));
            if (what < 0.7) s.once('connect', () => s.write(Buffer.from([0x16, 0x03, 0x01])));
          }
          await new Promise((res) => setTimeout(res, 5 + Math.floor(rnd() * 40)));
        }
      })();
      // Stop it at a random moment of the stream: sometimes right away, sometimes deep into it.
      await new Promise((res) => setTimeout(res, 50 + Math.floor(rnd() * 600)));
      const before = sender.status().ackedSeq;
      await stopFixture(r, 'SIGTERM');
      assert.equal(r.child.exitCode, 0, `round ${round}: the receiver exited cleanly (acked ${before})`);
      churning = false;
      await churn;
      for (const s of extra) s.destroy();
      await sender.stop();
    }
  } finally {
    stopWriting = true;
    await writing;
    for (const s of extra) s.destroy();
    for (const p of procs) await stopFixture(p, 'SIGKILL');
    await journal.close();
    t.remove();
  }
});
