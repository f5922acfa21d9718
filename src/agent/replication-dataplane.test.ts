import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { OsrError } from '../domain/errors.js';
import { LocalFabric, writeDemoSite } from '../fabric/local/index.js';
import { loadTlsIdentity } from './tls-identity.js';
import { DataPlaneReplicationService, parseHostPort } from './replication-dataplane.js';

function code(err: unknown): string {
  return err instanceof OsrError ? err.code : String(err);
}

void test('parseHostPort reads host:port and [v6]:port and refuses anything else', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:9443'), { host: '127.0.0.1', port: 9443 });
  assert.deepEqual(parseHostPort('[::1]:80'), { host: '::1', port: 80 });
  for (const bad of ['', 'host', 'host:', 'host:0', 'host:70000', ':80']) {
    assert.throws(
      () => parseHostPort(bad),
      (e) => code(e) === 'VALIDATION_FAILED',
      bad,
    );
  }
});

void test('replication commands refuse bad payloads with catalog codes and leave nothing behind', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-dp-svc-'));
  const siteDir = join(dir, 'site');
  await writeDemoSite(siteDir, { kind: 'onprem', octet: 3 });
  const fabric = await LocalFabric.open({ siteDir, stateDir: join(dir, 'data', 'fabric'), autostart: false });
  const identity = await loadTlsIdentity(join(dir, 'data'), 'osr-agent-test');
  const svc = new DataPlaneReplicationService({
    dataDir: join(dir, 'data'),
    identity,
    dataAddress: '127.0.0.1:1',
    fabric,
  });
  try {
    await svc.resume();
    const machine = { id: 'm', name: 'web' };
    const disks = [{ id: 'disk0', sizeBytes: 1024 * 1024 }];
    const peer = { agentId: 'a', siteId: 's', dataAddress: '127.0.0.1:2', certificatePem: identity.certPem };
    await assert.rejects(
      svc.prepareReplica({ itemId: '../x', machine, disks }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.prepareReplica({ itemId: 'i1', machine, disks: [] }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.prepareReplica({ itemId: 'i1', machine, disks: [{ id: 'disk0', sizeBytes: -1 }] }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.startReplication({ itemId: 'i1', machine, disks }),
      (e) => code(e) === 'AGENT_NOT_REGISTERED',
    );
    await assert.rejects(
      svc.startReplication({ itemId: 'i1', machine, disks, peer: { ...peer, dataAddress: 'nowhere' } }),
      (e) => code(e) === 'VALIDATION_FAILED',
    );
    await assert.rejects(
      svc.startReplication({ itemId: 'i1', machine, disks, peer }),
      (e) => code(e) === 'NOT_FOUND',
    );
    assert.equal(svc.journal('i1'), undefined);
    assert.deepEqual(svc.report().items, []);
    // Stop and delete of what does not exist succeed (idempotent commands).
    assert.deepEqual(await svc.stopReplication({ itemId: 'i1' }), { itemId: 'i1', stopped: false });
    assert.equal(((await svc.deleteReplica({ itemId: 'i1' })) as { deleted: boolean }).deleted, false);
  } finally {
    await svc.close();
    await fabric.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
