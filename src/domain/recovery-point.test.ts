import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import type { RecoveryPoint, RecoveryPointType } from './model.js';
import {
  commonPointForGroup,
  comparePoints,
  formatPointChoice,
  parsePointChoice,
  pointsToPrune,
  rpoSeconds,
  selectPointsForItems,
  selectRecoveryPoint,
} from './recovery-point.js';
import type { PointChoice } from './recovery-point.js';

function point(
  id: string,
  time: string,
  sequence: number,
  type: RecoveryPointType = 'crash-consistent',
  groupPointId: string | null = null,
  itemId = 'item-1',
): RecoveryPoint {
  return { id, itemId, time, type, sequence, groupPointId };
}

// Deliberately out of order.
const points: RecoveryPoint[] = [
  point('p3', '2030-06-01T10:10:00Z', 30),
  point('p1', '2030-06-01T10:00:00Z', 10, 'app-consistent'),
  point('p4', '2030-06-01T10:15:00Z', 40),
  point('p2', '2030-06-01T10:05:00Z', 20, 'app-consistent'),
];

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof OsrError, String(err));
    return err.code;
  }
  return 'no error';
}

function existingId(sel: ReturnType<typeof selectRecoveryPoint>): string {
  assert.equal(sel.mode, 'existing');
  return sel.mode === 'existing' ? sel.point.id : '';
}

void describe('selectRecoveryPoint (R-FO-2)', () => {
  void it('latest cuts a new point, even with no points', () => {
    assert.deepEqual(selectRecoveryPoint(points, { kind: 'latest' }), { mode: 'cut-new' });
    assert.deepEqual(selectRecoveryPoint([], { kind: 'latest' }), { mode: 'cut-new' });
  });
  void it('latest-processed is the newest point', () =>
    assert.equal(existingId(selectRecoveryPoint(points, { kind: 'latest-processed' })), 'p4'));
  void it('latest-app-consistent is the newest app-consistent point', () =>
    assert.equal(existingId(selectRecoveryPoint(points, { kind: 'latest-app-consistent' })), 'p2'));
  void it('id picks that point', () =>
    assert.equal(existingId(selectRecoveryPoint(points, { kind: 'id', id: 'p3' })), 'p3'));

  const times: [string, string][] = [
    ['2030-06-01T10:00:00Z', 'p1'],
    ['2030-06-01T10:07:00Z', 'p2'],
    ['2030-06-01T12:12:00+02:00', 'p3'],
    ['2030-06-01T11:00:00Z', 'p4'],
  ];
  for (const [time, id] of times) {
    void it(`time ${time} picks ${id} (newest at or before)`, () =>
      assert.equal(existingId(selectRecoveryPoint(points, { kind: 'time', time })), id));
  }

  void it('newest is by sequence, not input order or clock', () => {
    const skewed = [point('a', '2030-06-01T10:00:05Z', 1), point('b', '2030-06-01T10:00:00Z', 2)];
    assert.equal(existingId(selectRecoveryPoint(skewed, { kind: 'latest-processed' })), 'b');
    assert.equal(existingId(selectRecoveryPoint([...skewed].reverse(), { kind: 'latest-processed' })), 'b');
  });

  const missing: [string, RecoveryPoint[], PointChoice][] = [
    ['no points at all', [], { kind: 'latest-processed' }],
    [
      'no app-consistent point',
      points.filter((p) => p.type !== 'app-consistent'),
      { kind: 'latest-app-consistent' },
    ],
    ['unknown id', points, { kind: 'id', id: 'gone' }],
    ['time before the oldest point', points, { kind: 'time', time: '2030-06-01T09:59:59Z' }],
  ];
  for (const [label, pts, choice] of missing) {
    void it(`NO_RECOVERY_POINT when ${label}`, () => {
      assert.throws(
        () => selectRecoveryPoint(pts, choice),
        (err: unknown) => {
          assert.ok(err instanceof OsrError);
          assert.equal(err.code, 'NO_RECOVERY_POINT');
          assert.ok(err.message.length > 20);
          return true;
        },
      );
    });
  }

  void it('refuses a malformed or future time', () => {
    assert.equal(
      code(() => selectRecoveryPoint(points, { kind: 'time', time: 'yesterday' })),
      'VALIDATION_FAILED',
    );
    assert.equal(
      code(() =>
        selectRecoveryPoint(
          points,
          { kind: 'time', time: '2030-06-01T12:00:01Z' },
          { now: new Date('2030-06-01T12:00:00Z') },
        ),
      ),
      'VALIDATION_FAILED',
    );
    assert.equal(
      existingId(
        selectRecoveryPoint(
          points,
          { kind: 'time', time: '2030-06-01T12:00:00Z' },
          { now: new Date('2030-06-01T12:00:00Z') },
        ),
      ),
      'p4',
    );
  });

  void it('failback allows only latest-processed and latest-app-consistent (R-RP-3)', () => {
    assert.equal(
      existingId(selectRecoveryPoint(points, { kind: 'latest-processed' }, { failback: true })),
      'p4',
    );
    assert.equal(
      existingId(selectRecoveryPoint(points, { kind: 'latest-app-consistent' }, { failback: true })),
      'p2',
    );
    for (const choice of [
      { kind: 'latest' },
      { kind: 'id', id: 'p1' },
      { kind: 'time', time: '2030-06-01T11:00:00Z' },
    ] satisfies PointChoice[]) {
      assert.equal(
        code(() => selectRecoveryPoint(points, choice, { failback: true })),
        'VALIDATION_FAILED',
        choice.kind,
      );
    }
  });
});

void describe('parsePointChoice', () => {
  const ok: [string, PointChoice][] = [
    ['latest', { kind: 'latest' }],
    [' LATEST ', { kind: 'latest' }],
    ['latest-processed', { kind: 'latest-processed' }],
    ['Latest-App-Consistent', { kind: 'latest-app-consistent' }],
    ['2b1c3a4e-5f60-4a7b-8c9d-0e1f2a3b4c5d', { kind: 'id', id: '2b1c3a4e-5f60-4a7b-8c9d-0e1f2a3b4c5d' }],
    ['rp_0001', { kind: 'id', id: 'rp_0001' }],
    ['2030-06-01T10:07:00Z', { kind: 'time', time: '2030-06-01T10:07:00Z' }],
    ['2030-06-01T12:07:00.5+02:00', { kind: 'time', time: '2030-06-01T12:07:00.5+02:00' }],
  ];
  for (const [text, choice] of ok) {
    void it(`reads ${JSON.stringify(text)}`, () => assert.deepEqual(parsePointChoice(text), choice));
  }
  for (const text of [
    '',
    '   ',
    '2030-06-01',
    '2030-06-01T10:07:00',
    '2030-02-30T00:00:00Z',
    'has space',
    '-dash',
    'x'.repeat(129),
  ]) {
    void it(`refuses ${JSON.stringify(text)}`, () =>
      assert.equal(
        code(() => parsePointChoice(text)),
        'VALIDATION_FAILED',
      ));
  }
  void it('formats back what it reads', () => {
    for (const [, choice] of ok) assert.deepEqual(parsePointChoice(formatPointChoice(choice)), choice);
  });
});

void describe('pointsToPrune (R-POL-2)', () => {
  const now = new Date('2030-06-01T12:00:00Z');
  void it('drops points older than the retention, oldest first', () => {
    const pruned = pointsToPrune(points, 1.9, now).map((p) => p.id);
    // Cutoff 10:06: p1 (10:00) and p2 (10:05) go.
    assert.deepEqual(pruned, ['p1', 'p2']);
  });
  void it('keeps points exactly at the cutoff', () =>
    assert.deepEqual(
      pointsToPrune(points, 2, new Date('2030-06-01T12:10:00Z')).map((p) => p.id),
      ['p1', 'p2'],
    ));
  void it('always keeps the newest point', () => {
    assert.deepEqual(
      pointsToPrune(points, 1, now).map((p) => p.id),
      ['p1', 'p2', 'p3'],
    );
    assert.deepEqual(pointsToPrune([point('only', '2020-01-01T00:00:00Z', 1)], 1, now), []);
  });
  void it('drops nothing within the retention', () => assert.deepEqual(pointsToPrune(points, 24, now), []));
  void it('handles no points', () => assert.deepEqual(pointsToPrune([], 24, now), []));
});

void describe('rpoSeconds', () => {
  void it('is the age of the newest point', () =>
    assert.equal(rpoSeconds(points, new Date('2030-06-01T10:16:30.900Z')), 90));
  void it('is null with no points', () => assert.equal(rpoSeconds([], new Date()), null));
  void it('is never negative', () => assert.equal(rpoSeconds(points, new Date('2030-06-01T10:14:00Z')), 0));
});

void describe('comparePoints', () => {
  void it('orders by sequence, then time, then id', () => {
    const sorted = [
      point('b', '2030-06-01T10:00:00Z', 5),
      point('a', '2030-06-01T10:00:00Z', 5),
      point('c', '2030-06-01T09:00:00Z', 5),
      point('d', '2030-06-01T11:00:00Z', 4),
    ]
      .sort(comparePoints)
      .map((p) => p.id);
    assert.deepEqual(sorted, ['d', 'c', 'a', 'b']);
  });
});

void describe('selectPointsForItems (R-RP-8)', () => {
  void it('selects per item', () => {
    const sel = selectPointsForItems(
      { web: points, db: [point('d1', '2030-06-01T10:00:00Z', 5, 'crash-consistent', null, 'db')] },
      { kind: 'latest-processed' },
    );
    assert.deepEqual(Object.keys(sel).sort(), ['db', 'web']);
    assert.equal(sel.web?.mode === 'existing' ? sel.web.point.id : '', 'p4');
    assert.equal(sel.db?.mode === 'existing' ? sel.db.point.id : '', 'd1');
  });
  void it('needs at least one point for every item, even for latest', () => {
    for (const choice of [{ kind: 'latest' }, { kind: 'latest-processed' }] satisfies PointChoice[]) {
      assert.throws(
        () =>
          selectPointsForItems(
            new Map([
              ['web', points],
              ['db', []],
            ]),
            choice,
          ),
        (err: unknown) =>
          err instanceof OsrError &&
          err.code === 'NO_RECOVERY_POINT' &&
          JSON.stringify((err.details as { itemsWithoutPoints: string[] }).itemsWithoutPoints) === '["db"]',
      );
    }
  });
  void it('names the item that lacks the chosen kind of point', () => {
    assert.throws(
      () =>
        selectPointsForItems(
          { web: points, db: [point('d1', '2030-06-01T10:00:00Z', 5)] },
          { kind: 'latest-app-consistent' },
        ),
      (err: unknown) =>
        err instanceof OsrError &&
        err.code === 'NO_RECOVERY_POINT' &&
        (err.details as { itemId: string }).itemId === 'db',
    );
  });
  void it('refuses an empty set of items and failback-forbidden choices', () => {
    assert.equal(
      code(() => selectPointsForItems({}, { kind: 'latest-processed' })),
      'VALIDATION_FAILED',
    );
    assert.equal(
      code(() => selectPointsForItems({ web: points }, { kind: 'latest' }, { failback: true })),
      'VALIDATION_FAILED',
    );
  });
});

void describe('commonPointForGroup (R-PLAN-4, R-RP-8)', () => {
  // Group points g1 (app), g2 (crash), g3 (app, web only: db's part is missing), g4 (crash, newest, web only).
  const web = [
    point('w1', '2030-06-01T10:00:00Z', 100, 'app-consistent', 'g1', 'web'),
    point('w2', '2030-06-01T10:05:00Z', 200, 'crash-consistent', 'g2', 'web'),
    point('w3', '2030-06-01T10:10:00Z', 300, 'app-consistent', 'g3', 'web'),
    point('w4', '2030-06-01T10:15:00Z', 400, 'crash-consistent', 'g4', 'web'),
    point('w-solo', '2030-06-01T10:16:00Z', 401, 'crash-consistent', null, 'web'),
  ];
  const db = [
    point('d1', '2030-06-01T10:00:00Z', 100, 'app-consistent', 'g1', 'db'),
    point('d2', '2030-06-01T10:05:01Z', 200, 'crash-consistent', 'g2', 'db'),
    point('d3', '2030-06-01T10:10:00Z', 300, 'crash-consistent', 'g3', 'db'),
  ];
  const group = { web, db };

  function chosen(choice: PointChoice): [string, Record<string, string>] {
    const sel = commonPointForGroup(group, choice);
    assert.equal(sel.mode, 'existing');
    if (sel.mode !== 'existing') return ['', {}];
    return [sel.groupPointId, Object.fromEntries(Object.entries(sel.points).map(([k, p]) => [k, p.id]))];
  }

  void it('latest cuts a new group point', () =>
    assert.deepEqual(commonPointForGroup(group, { kind: 'latest' }), { mode: 'cut-new' }));
  void it('latest-processed: the newest point every item has', () =>
    assert.deepEqual(chosen({ kind: 'latest-processed' }), ['g3', { web: 'w3', db: 'd3' }]));
  void it('latest-app-consistent: the newest common point app-consistent on every item', () =>
    assert.deepEqual(chosen({ kind: 'latest-app-consistent' }), ['g1', { web: 'w1', db: 'd1' }]));
  void it('id: a group point id or a member point id', () => {
    assert.deepEqual(chosen({ kind: 'id', id: 'g2' }), ['g2', { web: 'w2', db: 'd2' }]);
    assert.deepEqual(chosen({ kind: 'id', id: 'd2' }), ['g2', { web: 'w2', db: 'd2' }]);
  });
  void it('time: newest common point whose members are all at or before it', () => {
    assert.deepEqual(chosen({ kind: 'time', time: '2030-06-01T10:05:00Z' }), ['g1', { web: 'w1', db: 'd1' }]);
    assert.deepEqual(chosen({ kind: 'time', time: '2030-06-01T10:05:01Z' }), ['g2', { web: 'w2', db: 'd2' }]);
  });
  void it('accepts a Map', () => {
    const sel = commonPointForGroup(new Map(Object.entries(group)), { kind: 'latest-processed' });
    assert.equal(sel.mode === 'existing' ? sel.groupPointId : '', 'g3');
  });

  void it('NO_RECOVERY_POINT when no common point qualifies', () => {
    assert.equal(
      code(() => commonPointForGroup(group, { kind: 'id', id: 'g4' })),
      'NO_RECOVERY_POINT',
    );
    assert.equal(
      code(() => commonPointForGroup(group, { kind: 'time', time: '2030-06-01T09:00:00Z' })),
      'NO_RECOVERY_POINT',
    );
    assert.equal(
      code(() => commonPointForGroup({ web: [web[4] as RecoveryPoint], db }, { kind: 'latest-processed' })),
      'NO_RECOVERY_POINT',
    );
  });
  void it('needs at least one point per item', () => {
    assert.throws(
      () => commonPointForGroup({ web, db: [] }, { kind: 'latest' }),
      (err: unknown) => err instanceof OsrError && err.code === 'NO_RECOVERY_POINT',
    );
  });
  void it('failback restricts the choice', () => {
    assert.equal(
      code(() => commonPointForGroup(group, { kind: 'latest' }, { failback: true })),
      'VALIDATION_FAILED',
    );
    assert.equal(
      commonPointForGroup(group, { kind: 'latest-app-consistent' }, { failback: true }).mode,
      'existing',
    );
  });
});
