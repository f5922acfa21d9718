/**
 * The replication link over real TLS on loopback: pinning, compression, zero blocks, backpressure, resume after a
 * dropped connection, and a corrupted frame refused and recovered.
 */
import * as assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WriteJournal } from '../../src/dataplane/journal/journal.js';
import { MemoryBackend } from '../../src/dataplane/nbd/memory-backend.js';
import type { ObservedBackend } from '../../src/dataplane/nbd/observed-backend.js';
import { FrameType } from '../../src/dataplane/transport/frame.js';
import { ReplicationReceiver } from '../../src/dataplane/transport/receiver.js';
import type { ReceiverEvent } from '../../src/dataplane/transport/receiver.js';
import { ReplicationSender } from '../../src/dataplane/transport/sender.js';
import type { ReplicationSenderOptions } from '../../src/dataplane/transport/sender.js';
import type { PeerAuth } from '../../src/dataplane/transport/link-auth.js';
import {
  agentUri,
  makeIdentity,
  ModelSink,
  mulberry32,
  randomBytes,
  tempDir,
  waitFor,
} from './source-support.js';
import type { TestIdentity } from './source-support.js';

const MiB = 1024 * 1024;
const DISKS = [
  { id: 'os', sizeBytes: 8 * MiB },
  { id: 'data', sizeBytes: 4 * MiB },
];

let certs: { dir: string; remove: () => void };
let src: TestIdentity;
let dst: TestIdentity;
/** Bad certificates, all made with openssl: self-signed, from another CA, and right CA but another agent. */
let selfSigned: TestIdentity;
let otherCa: TestIdentity;
let otherAgent: TestIdentity;

before(() => {
  certs = tempDir('osr-certs-');
  src = makeIdentity(certs.dir, 'source');
  dst = makeIdentity(certs.dir, 'recovery');
  selfSigned = makeIdentity(certs.dir, 'self-signed', { selfSigned: true, uri: agentUri('source') });
  otherCa = makeIdentity(certs.dir, 'other-ca-agent', { ca: 'other-ca', uri: agentUri('source') });
  otherAgent = makeIdentity(certs.dir, 'stranger');
});

const fromSource: PeerAuth = { mode: 'certificate', identity: agentUri('source') };
const toRecovery: PeerAuth = { mode: 'certificate', identity: agentUri('recovery') };
after(() => certs.remove());

interface Rig {
  journal: WriteJournal;
  disks: Map<string, ObservedBackend>;
  source: Map<string, MemoryBackend>;
  sink: ModelSink;
  receiver: ReplicationReceiver;
  events: ReceiverEvent[];
  /** What the receiver asks of g1's sender (change it to test another mode). */
  auth: PeerAuth;
  sender(options?: Partial<ReplicationSenderOptions>): ReplicationSender;
  close(): Promise<void>;
}

async function rig(): Promise<Rig> {
  const t = tempDir();
  const journal = WriteJournal.open(t.dir, DISKS);
  const source = new Map(DISKS.map((d) => [d.id, new MemoryBackend(d.sizeBytes)]));
  const disks = new Map([...source].map(([id, b]) => [id, journal.attach(id, b)]));
  const sink = new ModelSink(DISKS);
  const events: ReceiverEvent[] = [];
  const receiver = await ReplicationReceiver.listen({
    identity: dst,
    trustedCa: dst.ca,
    sinkFor: (g) => (g === 'g1' ? sink : undefined),
    peerAuthFor: (g) => (g === 'g1' ? r.auth : undefined),
    onEvent: (e) => events.push(e),
  });
  const senders: ReplicationSender[] = [];
  const r: Rig = {
    journal,
    disks,
    source,
    sink,
    receiver,
    events,
    auth: fromSource,
    sender: (options = {}) => {
      const s = new ReplicationSender({
        journal,
        groupId: 'g1',
        host: '127.0.0.1',
        port: r.receiver.port,
        identity: src,
        trustedCa: src.ca,
        peerAuth: toRecovery,
        backoff: { initialMs: 20, maxMs: 200 },
        ...options,
      });
      senders.push(s);
      s.start();
      return s;
    },
    close: async () => {
      for (const s of senders) await s.stop();
      await r.receiver.close();
      await journal.close();
      t.remove();
    },
  };
  return r;
}

/** Random writes, zeroes and markers on both disks; returns the seq of the last change. */
async function churn(r: Rig, seed: number, n: number, compressible = true): Promise<number> {
  const rnd = mulberry32(seed);
  const ops: Promise<unknown>[] = [];
  for (let i = 0; i < n; i++) {
    const id = rnd() < 0.6 ? 'os' : 'data';
    const d = r.disks.get(id)!;
    const len = 512 * (1 + Math.floor(rnd() * 128));
    const off = 512 * Math.floor(rnd() * ((d.size - len) / 512));
    const k = rnd();
    if (k < 0.7) ops.push(d.write(off, randomBytes(rnd, len, compressible)));
    else if (k < 0.85) ops.push(d.write(off, Buffer.alloc(len)));
    else ops.push(d.writeZeroes(off, len));
    if (i % 40 === 39) ops.push(r.journal.addMarker('crash-consistent', `p${i}`));
  }
  await Promise.all(ops);
  return r.journal.lastSeq;
}

async function assertLevel(r: Rig): Promise<void> {
  for (const [id, b] of r.source) {
    assert.ok((await r.sink.bytes(id)).equals(await b.read(0, b.size)), `replica of ${id} equals the source`);
  }
}

test('a stream arrives in order, compressed, with zero blocks as runs, and frees the journal', async () => {
  const r = await rig();
  try {
    const s = r.sender();
    const last = await churn(r, 1, 600);
    await s.waitForAck(last);
    await assertLevel(r);
    const st = s.status();
    assert.equal(st.ackedSeq, last);
    assert.equal(st.lagSeq, 0);
    assert.equal(st.lagSeconds, 0);
    assert.ok(st.compressionRatio > 2, `compression ratio ${st.compressionRatio}`);
    assert.ok(st.bytesZero > 0, 'zero blocks were found');
    assert.equal(r.receiver.status('g1')?.lastReceivedSeq, last);
    assert.equal(r.sink.received.filter((c) => c.kind === 'marker').length, 15);
  } finally {
    await r.close();
  }
});

/** Waits until `s` is refused with `code`; checks it never streamed. */
async function refused(s: ReplicationSender, code: string, what: string): Promise<string> {
  await waitFor(() => s.status().lastErrorCode === code, what);
  await s.stop();
  assert.equal(s.status().connects, 0, `${what}: it never streamed`);
  return s.status().lastError ?? '';
}

test('certificate mode: each end refuses a peer whose certificate is self-signed, from another CA or for another agent', async () => {
  const r = await rig();
  try {
    await churn(r, 2, 10);
    // The receiver refuses bad senders; the sender hears why in the receiver's ERROR frame.
    let why = await refused(
      r.sender({ identity: selfSigned }),
      'PEER_CERTIFICATE_UNTRUSTED',
      'a self-signed sender',
    );
    assert.match(why, /self-signed/);
    why = await refused(
      r.sender({ identity: otherCa }),
      'PEER_CERTIFICATE_UNTRUSTED',
      'a sender of another CA',
    );
    assert.match(why, /another CA/);
    why = await refused(
      r.sender({ identity: otherAgent }),
      'PEER_IDENTITY_MISMATCH',
      'another agent as sender',
    );
    assert.match(why, /urn:osr:agent:stranger, not urn:osr:agent:source/);
    assert.ok(r.events.filter((e) => e.type === 'refused').length >= 3, 'the receiver logged the refusals');
    // The sender refuses a receiver that is not the agent the control plane named, before it sends anything.
    why = await refused(
      r.sender({ peerAuth: fromSource }),
      'PEER_IDENTITY_MISMATCH',
      'another agent as receiver',
    );
    assert.match(why, /receiver's certificate names urn:osr:agent:recovery/);
    r.receiver.setIdentity(selfSigned, dst.ca);
    why = await refused(r.sender(), 'PEER_CERTIFICATE_UNTRUSTED', 'a self-signed receiver');
    assert.match(why, /receiver's certificate is self-signed/);
    r.receiver.setIdentity(otherCa, dst.ca);
    await refused(r.sender(), 'PEER_CERTIFICATE_UNTRUSTED', 'a receiver of another CA');
    assert.equal(r.sink.last, 0, 'nothing reached the replica');
    assert.equal(r.sink.received.length, 0);
    // The right pair streams.
    r.receiver.setIdentity(dst, dst.ca);
    const s = r.sender();
    await s.waitForAck(r.journal.lastSeq);
    await assertLevel(r);
  } finally {
    await r.close();
  }
});

test('token mode: the right shared secret streams whatever the certificates, a wrong one is refused either way', async () => {
  const r = await rig();
  try {
    const last = await churn(r, 7, 20);
    r.auth = { mode: 'token', token: 'the-item-token-0123456789' };
    // A wrong token, however good the certificate: the receiver refuses.
    const wrong = r.sender({ peerAuth: { mode: 'token', token: 'another-token-0123456789' } });
    assert.match(await refused(wrong, 'TOKEN_REJECTED', 'a wrong token'), /token .* is wrong/);
    // A receiver that does not prove the token (it asks for a certificate instead): the sender refuses it.
    r.auth = fromSource;
    const unproven = r.sender({ peerAuth: { mode: 'token', token: 'the-item-token-0123456789' } });
    assert.match(await refused(unproven, 'TOKEN_REJECTED', 'an unproven receiver'), /did not prove/);
    assert.equal(r.sink.received.length, 0, 'nothing reached the replica');
    // Certificates are not what token mode trusts: a self-signed sender with the right token streams.
    r.auth = { mode: 'token', token: 'the-item-token-0123456789' };
    const s = r.sender({ identity: selfSigned, peerAuth: r.auth });
    await s.waitForAck(last);
    await assertLevel(r);
  } finally {
    await r.close();
  }
});

test('backpressure: a slow sink bounds the unacknowledged bytes', async () => {
  const r = await rig();
  try {
    let open = false;
    const waiting: Array<() => void> = [];
    r.sink.gate = () => (open ? Promise.resolve() : new Promise<void>((res) => waiting.push(res)));
    const max = 256 * 1024;
    const s = r.sender({ maxInFlightBytes: max, batchBytes: 64 * 1024, compress: false });
    const last = await churn(r, 3, 400, false);
    await waitFor(() => waiting.length > 0, 'the first batch to reach the sink');
    await waitFor(() => s.status().inFlightBytes >= max, 'the window to fill');
    assert.ok(s.status().inFlightBytes < max + 64 * 1024 + 70_000, `in flight ${s.status().inFlightBytes}`);
    assert.ok(s.status().sentSeq < last, 'the sender stopped short of the end');
    open = true;
    for (const w of waiting.splice(0)) w();
    await s.waitForAck(last);
    await assertLevel(r);
  } finally {
    await r.close();
  }
});

test('after the receiver goes away the sender resumes from the last ack: nothing lost, nothing twice', async () => {
  const r = await rig();
  try {
    const s = r.sender({ batchBytes: 32 * 1024 });
    const first = await churn(r, 4, 200);
    await s.waitForAck(first);
    const port = r.receiver.port;
    await r.receiver.close();
    const last = await churn(r, 5, 300);
    assert.ok(s.status().lagSeq > 0);
    await waitFor(
      () => s.status().state === 'backoff' || s.status().state === 'connecting',
      'the link to drop',
    );
    r.receiver = await ReplicationReceiver.listen({
      port,
      identity: dst,
      trustedCa: dst.ca,
      sinkFor: () => r.sink,
      peerAuthFor: () => fromSource,
    });
    await s.waitForAck(last);
    await assertLevel(r);
    assert.ok(s.status().connects >= 2);
  } finally {
    await r.close();
  }
});

test('a flipped bit in a frame is refused by the receiver and the batch is resent', async () => {
  const r = await rig();
  try {
    let batches = 0;
    let flipped = false;
    const s = r.sender({
      batchBytes: 16 * 1024,
      frameTap: (type, frame) => {
        if (type !== FrameType.BATCH || ++batches !== 3) return;
        frame[frame.length - 10]! ^= 0x20;
        flipped = true;
      },
    });
    const last = await churn(r, 6, 300);
    await s.waitForAck(last);
    assert.ok(flipped);
    assert.ok(
      r.events.some((e) => e.type === 'refused' && e.reason.includes('checksum')),
      'the receiver saw the bad checksum',
    );
    assert.ok(s.status().connects >= 2, 'the sender reconnected');
    await assertLevel(r);
  } finally {
    await r.close();
  }
});

test('the bandwidth limit in force slows the link', async () => {
  const r = await rig();
  try {
    // 16 Mbit/s = 2 MB/s; ~1.2 MB of incompressible data needs about half a second.
    const s = r.sender({ compress: false, bandwidthLimitAt: () => 16 });
    const rnd = mulberry32(7);
    const d = r.disks.get('os')!;
    // Timed from the first write: the sender ships while the writes go on, so a slow writer (a loaded machine)
    // must not make the link look fast.
    const t0 = Date.now();
    for (let i = 0; i < 20; i++) await d.write(i * 65536, randomBytes(rnd, 65536));
    await s.waitForAck(r.journal.lastSeq);
    const took = Date.now() - t0;
    assert.ok(took >= 350, `1.3 MB at 2 MB/s took ${took} ms`);
    await assertLevel(r);
  } finally {
    await r.close();
  }
});
