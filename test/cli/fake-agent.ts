/**
 * Plays a site agent over the agent protocol for the CLI tests (the real agent is
 * another issue): answers every command as Succeeded (a `replica.point` with a point, a
 * `replica.expose` with each disk's NBD address, a `machine.snapshots` with none)
 * and reports, for each item it is the target of, initial replication done and one
 * recovery point — enough for Enable protection and Reprotect jobs to complete.
 */
import type { CliWorld } from './harness.js';

interface Command {
  id: string;
  type: string;
  payload: unknown;
}

/** What a real recovery agent answers to `replica.expose`: each disk with its export's NBD address. */
function exposed(payload: unknown): unknown {
  const p = payload as { itemId: string; purpose: string; disks?: { id: string; sizeBytes: number }[] };
  return {
    purpose: p.purpose,
    disks: (p.disks ?? []).map((d) => ({
      id: d.id,
      sizeBytes: d.sizeBytes,
      exportName: `${p.itemId}-${p.purpose}-${d.id}`,
      nbdUri: `nbd://127.0.0.1:10809/${p.itemId}-${p.purpose}-${d.id}`,
    })),
  };
}

interface ItemRow {
  id: string;
  targetSiteId: string;
  protectionState: string;
}

/** A fake agent; `stop()` ends its loop and rethrows anything that went wrong in it. */
export class FakeAgent {
  /** Whether reports carry a recovery point (off: initial replication completes, no point yet). */
  reportPoints = true;
  #stopped = false;
  #error: Error | undefined = undefined;
  readonly #loop: Promise<void>;

  constructor(
    readonly world: CliWorld,
    readonly credential: string,
    readonly siteId: string,
  ) {
    this.#loop = this.#run().catch((err: unknown) => {
      this.#error = err instanceof Error ? err : new Error(String(err));
    });
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      await this.world.api('POST', '/agent/heartbeat', {}, this.credential);
      const res = await this.world.api<{ commands: Command[] }>(
        'GET',
        '/agent/commands?waitMs=200',
        undefined,
        this.credential,
      );
      for (const c of res.body.commands) {
        const result =
          c.type === 'replica.point'
            ? { sequence: 2, time: new Date().toISOString(), type: 'crash-consistent' }
            : c.type === 'replica.expose'
              ? exposed(c.payload)
              : c.type === 'machine.snapshots'
                ? { machine: (c.payload as { name: string }).name, snapshots: [] }
                : {};
        await this.world.api(
          'POST',
          `/agent/commands/${c.id}/result`,
          { state: 'Succeeded', result },
          this.credential,
        );
      }
      await this.#report();
    }
  }

  async #report(): Promise<void> {
    const items = await this.world.api<{ items: ItemRow[] }>('GET', '/vaults/default/items?limit=1000');
    const mine = items.body.items.filter(
      (i) =>
        i.targetSiteId === this.siteId &&
        (i.protectionState === 'EnablingProtection' ||
          i.protectionState === 'InitialReplication' ||
          i.protectionState === 'ReprotectInProgress'),
    );
    if (mine.length === 0) return;
    const time = new Date().toISOString();
    const res = await this.world.api(
      'POST',
      '/agent/replication-status',
      {
        items: mine.map((i) => ({
          itemId: i.id,
          rpoSeconds: 0,
          lagSeconds: 0,
          lagBytes: 0,
          backlogBytes: 0,
          throughputBps: 0,
          compressionRatio: 1,
          health: 'Normal',
          healthReason: null,
          initialReplicationProgress: 100,
          resyncRequired: false,
          points: this.reportPoints ? [{ sequence: 1, time, type: 'crash-consistent' }] : [],
        })),
      },
      this.credential,
    );
    if (res.status >= 300) throw new Error(`replication status refused: ${JSON.stringify(res.body)}`);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
    if (this.#error !== undefined) throw this.#error;
  }
}
