/**
 * `osr up` replicates: `osr protect web` of the embedded two-site setup reaches Protected
 * with recovery points, and the replica at the recovery agent holds an unbroken ledger.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { BIN, killAll, killMachines, killProcessesMentioning, spawnOsr, waitUntil } from './harness.js';

const exec = promisify(execFile);
const tmp = mkdtempSync(join(tmpdir(), 'osr-up-repl-'));

after(async () => {
  await killAll();
  killMachines(join(tmp, '.osr', 'agents'));
  killProcessesMentioning(tmp);
  rmSync(tmp, { recursive: true, force: true });
});

async function osr(url: string, args: string[], json = true): Promise<string> {
  const { stdout } = await exec(
    process.execPath,
    [BIN, '--server', url, '--data', join(tmp, '.osr'), ...args, ...(json ? ['--json'] : [])],
    { cwd: tmp },
  );
  return stdout;
}

void test(
  'osr up: osr protect web reaches Protected with recovery points',
  { timeout: 240_000 },
  async () => {
    const p = spawnOsr(['up', '--port', '0'], tmp);
    const [, url] = await p.waitFor(/osr is up at (http:\/\/127\.0\.0\.1:\d+)\n/, 120_000);
    assert.ok(url);
    try {
      await osr(url, ['protect', 'web', '--policy', 'default', '--target-site', 'recovery', '--wait'], false);
      const item = await waitUntil(
        'web to be Protected',
        async () => {
          const items = JSON.parse(await osr(url, ['item', 'list'])) as {
            items: {
              id: string;
              name: string;
              protectionState: string;
              initialReplicationProgress: number;
            }[];
          };
          const web = items.items.find((i) => i.name === 'web');
          return web?.protectionState === 'Protected' ? web : undefined;
        },
        60_000,
      );
      assert.equal(item.initialReplicationProgress, 100);
      const pts = JSON.parse(await osr(url, ['point', 'list', 'web'])) as { items: { type: string }[] };
      assert.ok(pts.items.length > 0, 'recovery points are listed');
      const replica = join(
        tmp,
        '.osr',
        'agents',
        'recovery',
        'replicas',
        item.id,
        'store',
        'disks',
        'disk0.img',
      );
      const check = JSON.parse(
        (await exec(process.execPath, [BIN, 'workload', 'ledger-check', '--disk', replica, '--json'])).stdout,
      ) as { ok: boolean; records: number };
      assert.equal(check.ok, true, 'the replica holds an unbroken ledger');
      assert.ok(check.records > 0);
    } finally {
      p.child.kill('SIGINT');
      const end = await p.exited;
      assert.equal(end.code, 0, p.err());
    }
  },
);
