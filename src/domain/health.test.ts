import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { replicationHealth } from './health.js';
import type { HealthInput } from './health.js';

const now = new Date('2030-06-01T12:00:00Z');
const secondsAgo = (s: number): string => new Date(now.getTime() - s * 1000).toISOString();

function judge(over: Partial<HealthInput>) {
  return replicationHealth({
    rpoSeconds: 100,
    copyFrequencySeconds: 300,
    resyncRequired: false,
    lastStatusAt: secondsAgo(10),
    now,
    agentConnected: true,
    ...over,
  });
}

void describe('replicationHealth', () => {
  void it('is Normal when everything is fresh', () =>
    assert.deepEqual(judge({}), { health: 'Normal', reason: null }));
  void it('is Normal for a new item with no point and no status yet', () =>
    assert.deepEqual(judge({ rpoSeconds: null, lastStatusAt: null }), { health: 'Normal', reason: null }));

  const rpo: [number, number, string][] = [
    [300, 600, 'Normal'],
    [300, 601, 'Warning'],
    [300, 1800, 'Warning'],
    [300, 1801, 'Critical'],
    [30, 61, 'Warning'],
    [30, 181, 'Critical'],
    [900, 5400, 'Warning'],
    [900, 5401, 'Critical'],
  ];
  for (const [freq, rpoSeconds, health] of rpo) {
    void it(`RPO ${rpoSeconds} s with copy frequency ${freq} s → ${health}`, () => {
      const v = judge({ copyFrequencySeconds: freq, rpoSeconds });
      assert.equal(v.health, health);
      if (health !== 'Normal') assert.match(v.reason ?? '', /RPO/);
    });
  }

  void it('resync required is Critical', () =>
    assert.deepEqual(judge({ resyncRequired: true }), { health: 'Critical', reason: 'resync required' }));

  const silence: [number, number, string][] = [
    [30, 300, 'Normal'],
    [30, 301, 'Warning'],
    [30, 1800, 'Warning'],
    [30, 1801, 'Critical'],
    [900, 1801, 'Warning'],
    [900, 5401, 'Critical'],
  ];
  for (const [freq, silent, health] of silence) {
    void it(`no status for ${silent} s with copy frequency ${freq} s → ${health}`, () => {
      const v = judge({ copyFrequencySeconds: freq, rpoSeconds: 0, lastStatusAt: secondsAgo(silent) });
      assert.equal(v.health, health);
      if (health !== 'Normal') assert.match(v.reason ?? '', /no replication status/);
    });
  }
  void it('takes a Date for the last status', () =>
    assert.equal(judge({ lastStatusAt: new Date(now.getTime() - 3600_000) }).health, 'Critical'));

  void it('a disconnected agent is a Warning', () =>
    assert.deepEqual(judge({ agentConnected: false }), { health: 'Warning', reason: 'agent disconnected' }));

  void it('the worst finding wins and equal findings are all named', () => {
    const v = judge({ agentConnected: false, rpoSeconds: 700 });
    assert.equal(v.health, 'Warning');
    assert.match(v.reason ?? '', /RPO 12 min exceeds 2× the copy frequency of 5 min/);
    assert.match(v.reason ?? '', /agent disconnected/);
    const c = judge({ agentConnected: false, resyncRequired: true, rpoSeconds: 4 * 3600 });
    assert.equal(c.health, 'Critical');
    assert.equal(c.reason, 'resync required; RPO 4 h exceeds 6× the copy frequency of 5 min');
  });

  void it('what the agents reported counts when it is worse and names a reason', () => {
    const refused = {
      health: 'Critical' as const,
      reason: 'the replication link is refused (TOKEN_REJECTED)',
    };
    assert.deepEqual(judge({ reported: refused }), refused);
    assert.deepEqual(judge({ reported: { health: 'Critical', reason: null } }), {
      health: 'Normal',
      reason: null,
    });
    assert.deepEqual(judge({ reported: { health: 'Normal', reason: null } }), {
      health: 'Normal',
      reason: null,
    });
    const both = judge({ reported: { health: 'Warning', reason: 'link down' }, agentConnected: false });
    assert.deepEqual(both, { health: 'Warning', reason: 'agent disconnected; link down' });
  });
});
