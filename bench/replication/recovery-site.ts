/**
 * The recovery site of the initial-replication figure in its own process, as a recovery agent runs in
 * production: a `ReplicaStore` with its processor as the sink of a `ReplicationReceiver` for group `g`. Forked by
 * `run.js` with an IPC channel; it answers three messages:
 *
 * - `{ cmd: 'start', dir, disks, identity, trustedCa, directApply }` → `{ port, cpuSecs }` once it accepts connections;
 * - `{ cmd: 'finish' }` → `{ cpuSecs }` once every received change is processed and the bases are flushed
 *   (`cpuSecs`: this process's CPU time so far);
 * - `{ cmd: 'close' }` closes receiver and store and exits.
 */
import type { DiskSpec } from '../../src/dataplane/changes.js';
import { ReplicaStore } from '../../src/dataplane/replica/replica-store.js';
import { ReplicationReceiver } from '../../src/dataplane/transport/receiver.js';
import type { TlsIdentity } from '../../src/dataplane/transport/link-auth.js';

export type RecoverySiteRequest =
  | {
      readonly cmd: 'start';
      readonly dir: string;
      readonly disks: readonly DiskSpec[];
      readonly identity: TlsIdentity;
      readonly trustedCa: string;
      readonly directApply: boolean;
    }
  | { readonly cmd: 'finish' }
  | { readonly cmd: 'close' };

let site: { store: ReplicaStore; receiver: ReplicationReceiver; disks: readonly DiskSpec[] } | undefined;

function cpuSecs(): number {
  const cpu = process.cpuUsage();
  return (cpu.user + cpu.system) / 1e6;
}

async function handle(m: RecoverySiteRequest): Promise<unknown> {
  if (m.cmd === 'start') {
    const store = await ReplicaStore.open(m.dir, {
      disks: m.disks,
      processorIdleMs: 20,
      directApply: m.directApply,
    });
    store.startProcessor();
    const receiver = await ReplicationReceiver.listen({
      identity: m.identity,
      trustedCa: m.trustedCa,
      peerAuthFor: () => ({ mode: 'certificate', identity: 'urn:osr:agent:source' }),
      sinkFor: (g) => (g === 'g' ? store : undefined),
    });
    site = { store, receiver, disks: m.disks };
    return { port: receiver.port, cpuSecs: cpuSecs() };
  }
  if (!site) throw new Error('the recovery site is not started');
  if (m.cmd === 'finish') {
    await site.store.process();
    for (const d of site.disks) await site.store.openBase(d.id).flush();
    return { cpuSecs: cpuSecs() };
  }
  await site.receiver.close();
  await site.store.close();
  process.disconnect();
  return undefined;
}

process.on('message', (m: RecoverySiteRequest) => {
  handle(m).then(
    (reply) => {
      if (reply !== undefined) process.send!(reply);
    },
    (err: unknown) => {
      process.stderr.write(`recovery site: ${String(err)}\n`);
      process.exit(1);
    },
  );
});
