import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import {
  POLICY_DEFAULTS,
  bandwidthLimitAt,
  parseDuration,
  validatePolicy,
  validatePolicyPatch,
} from './policy.js';
import type { PolicyInput, PolicySettings } from './policy.js';
import type { BandwidthPolicy } from './model.js';

const NOW = new Date('2030-06-01T12:00:00Z');

/** Asserts `fn` throws POLICY_INVALID naming `field`. */
function refuses(fn: () => unknown, field: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof OsrError, `expected OsrError, got ${String(err)}`);
    assert.equal(err.code, 'POLICY_INVALID');
    assert.equal((err.details as { field: string }).field, field);
    return true;
  });
}

void describe('parseDuration', () => {
  const ok: [string | number, number][] = [
    [30, 30],
    [0, 0],
    ['30', 30],
    ['30s', 30],
    ['5m', 300],
    ['15m', 900],
    ['15 min', 900],
    ['4h', 14400],
    ['1h30m', 5400],
    ['1d', 86400],
    ['  2H ', 7200],
    ['10 seconds', 10],
  ];
  for (const [input, seconds] of ok) {
    void it(`reads ${JSON.stringify(input)} as ${seconds} s`, () =>
      assert.equal(parseDuration(input), seconds));
  }
  const bad: (string | number)[] = [
    '',
    'abc',
    '5x',
    '-5m',
    '1.5h',
    'm5',
    '5m x',
    -1,
    1.5,
    Number.NaN,
    Infinity,
  ];
  for (const input of bad) {
    void it(`refuses ${JSON.stringify(input)}`, () => {
      assert.throws(
        () => parseDuration(input),
        (err: unknown) => err instanceof OsrError && err.code === 'VALIDATION_FAILED',
      );
    });
  }
});

void describe('validatePolicy defaults', () => {
  void it('fills every setting from the defaults', () => {
    assert.deepEqual(validatePolicy({}), {
      copyFrequencySeconds: 300,
      retentionHours: 24,
      appConsistentFrequencyHours: 4,
      compression: true,
      deleteReplicaOnDisable: true,
      initialReplication: { mode: 'now' },
      authentication: 'certificate',
      replicationPort: 9443,
      bandwidth: { limitMbps: null, windows: [] },
    });
    assert.deepEqual(validatePolicy({}), POLICY_DEFAULTS);
  });

  void it('refuses unknown fields and non-objects', () => {
    refuses(() => validatePolicy({ retention: 5 } as unknown as PolicyInput), 'retention');
    refuses(() => validatePolicy(null as unknown as PolicyInput), 'policy');
  });
});

void describe('copy frequency (R-POL-1)', () => {
  const ok: [number | string, number][] = [
    [30, 30],
    [300, 300],
    [900, 900],
    ['30s', 30],
    ['5m', 300],
    ['15m', 900],
    ['900', 900],
  ];
  for (const [value, seconds] of ok) {
    void it(`accepts ${JSON.stringify(value)}`, () =>
      assert.equal(validatePolicy({ copyFrequencySeconds: value }).copyFrequencySeconds, seconds));
  }
  for (const value of [0, 60, 600, 301, '1m', '1h', 'fast', -30, 30.5]) {
    void it(`refuses ${JSON.stringify(value)}`, () =>
      refuses(() => validatePolicy({ copyFrequencySeconds: value }), 'copyFrequencySeconds'));
  }
});

void describe('retention (R-POL-2)', () => {
  for (const [value, hours] of [
    [1, 1],
    [24, 24],
    [360, 360],
    ['72', 72],
    ['48h', 48],
    ['2d', 48],
  ] as const) {
    void it(`accepts ${JSON.stringify(value)}`, () =>
      assert.equal(
        validatePolicy({ retentionHours: value, appConsistentFrequencyHours: 0 }).retentionHours,
        hours,
      ));
  }
  for (const value of [0, 361, 1.5, -1, '90m', 'forever', Number.NaN]) {
    void it(`refuses ${JSON.stringify(value)}`, () =>
      refuses(
        () => validatePolicy({ retentionHours: value, appConsistentFrequencyHours: 0 }),
        'retentionHours',
      ));
  }
  void it('refuses a non-number type', () =>
    refuses(() => validatePolicy({ retentionHours: true } as unknown as PolicyInput), 'retentionHours'));
});

void describe('app-consistent frequency (R-POL-3)', () => {
  for (const [value, hours] of [
    [0, 0],
    ['off', 0],
    [1, 1],
    [12, 12],
    ['6h', 6],
  ] as const) {
    void it(`accepts ${JSON.stringify(value)} with 24 h retention`, () =>
      assert.equal(
        validatePolicy({ retentionHours: 24, appConsistentFrequencyHours: value })
          .appConsistentFrequencyHours,
        hours,
      ));
  }
  for (const value of [13, -1, 0.5, '30m', 'sometimes']) {
    void it(`refuses ${JSON.stringify(value)}`, () =>
      refuses(() => validatePolicy({ appConsistentFrequencyHours: value }), 'appConsistentFrequencyHours'));
  }
  void it('must be strictly less than the retention', () => {
    refuses(
      () => validatePolicy({ retentionHours: 4, appConsistentFrequencyHours: 4 }),
      'appConsistentFrequencyHours',
    );
    refuses(
      () => validatePolicy({ retentionHours: 2, appConsistentFrequencyHours: 3 }),
      'appConsistentFrequencyHours',
    );
    assert.equal(
      validatePolicy({ retentionHours: 4, appConsistentFrequencyHours: 3 }).appConsistentFrequencyHours,
      3,
    );
  });
  void it('off is allowed with a 1-hour retention', () => {
    assert.equal(validatePolicy({ retentionHours: 1, appConsistentFrequencyHours: 0 }).retentionHours, 1);
  });
  void it('the default 4 h app-consistent frequency refuses a short retention', () => {
    refuses(() => validatePolicy({ retentionHours: 2 }), 'appConsistentFrequencyHours');
  });
});

void describe('booleans (R-POL-4, R-POL-5)', () => {
  void it('takes compression and deleteReplicaOnDisable', () => {
    const p = validatePolicy({ compression: false, deleteReplicaOnDisable: false });
    assert.equal(p.compression, false);
    assert.equal(p.deleteReplicaOnDisable, false);
  });
  void it('refuses non-booleans', () => {
    refuses(() => validatePolicy({ compression: 'yes' } as unknown as PolicyInput), 'compression');
    refuses(
      () => validatePolicy({ deleteReplicaOnDisable: 1 } as unknown as PolicyInput),
      'deleteReplicaOnDisable',
    );
  });
});

void describe('initial replication (R-POL-6)', () => {
  void it('now', () =>
    assert.deepEqual(validatePolicy({ initialReplication: { mode: 'now' } }).initialReplication, {
      mode: 'now',
    }));

  void it('scheduled in the future, normalised to UTC', () => {
    const p = validatePolicy(
      { initialReplication: { mode: 'scheduled', startAt: '2030-06-01T22:00:00+02:00' } },
      { now: NOW },
    );
    assert.deepEqual(p.initialReplication, { mode: 'scheduled', startAt: '2030-06-01T20:00:00.000Z' });
  });

  void it('scheduled in the past or now is refused when now is given', () => {
    refuses(
      () =>
        validatePolicy(
          { initialReplication: { mode: 'scheduled', startAt: '2030-06-01T11:59:59Z' } },
          { now: NOW },
        ),
      'initialReplication.startAt',
    );
    refuses(
      () =>
        validatePolicy(
          { initialReplication: { mode: 'scheduled', startAt: NOW.toISOString() } },
          { now: NOW },
        ),
      'initialReplication.startAt',
    );
  });

  void it('scheduled in the past passes when no now is given', () => {
    const p = validatePolicy({ initialReplication: { mode: 'scheduled', startAt: '2020-01-01T00:00:00Z' } });
    assert.equal(p.initialReplication.mode, 'scheduled');
  });

  for (const startAt of [
    'tomorrow',
    '2030-06-01',
    '2030-06-01T22:00:00',
    '2030-02-30T10:00:00Z',
    '2030-06-01T25:00:00Z',
    undefined,
  ]) {
    void it(`scheduled refuses startAt ${JSON.stringify(startAt)}`, () =>
      refuses(
        () => validatePolicy({ initialReplication: { mode: 'scheduled', startAt } }, { now: NOW }),
        'initialReplication.startAt',
      ));
  }

  void it('offline with absolute paths', () => {
    const p = validatePolicy({
      initialReplication: { mode: 'offline', exportPath: '/mnt/export', importPath: 'D:\\import' },
    });
    assert.deepEqual(p.initialReplication, {
      mode: 'offline',
      exportPath: '/mnt/export',
      importPath: 'D:\\import',
    });
  });

  for (const [exportPath, importPath, field] of [
    ['', '/in', 'initialReplication.exportPath'],
    ['relative/dir', '/in', 'initialReplication.exportPath'],
    ['/out', undefined, 'initialReplication.importPath'],
    ['/out', '   ', 'initialReplication.importPath'],
  ] as const) {
    void it(`offline refuses ${JSON.stringify([exportPath, importPath])}`, () =>
      refuses(
        () => validatePolicy({ initialReplication: { mode: 'offline', exportPath, importPath } }),
        field,
      ));
  }

  void it('refuses an unknown mode, a missing object and stray fields', () => {
    refuses(() => validatePolicy({ initialReplication: { mode: 'later' } }), 'initialReplication.mode');
    refuses(
      () => validatePolicy({ initialReplication: 'now' } as unknown as PolicyInput),
      'initialReplication',
    );
    refuses(
      () => validatePolicy({ initialReplication: { mode: 'now', startAt: '2030-06-02T00:00:00Z' } }),
      'initialReplication.startAt',
    );
  });
});

void describe('authentication and port (R-POL-7)', () => {
  void it('accepts token and a port', () => {
    const p = validatePolicy({ authentication: 'token', replicationPort: 1 });
    assert.equal(p.authentication, 'token');
    assert.equal(p.replicationPort, 1);
    assert.equal(validatePolicy({ replicationPort: 65535 }).replicationPort, 65535);
  });
  void it('refuses other methods', () =>
    refuses(() => validatePolicy({ authentication: 'kerberos' }), 'authentication'));
  for (const port of [0, 65536, 80.5, -1]) {
    void it(`refuses port ${port}`, () =>
      refuses(() => validatePolicy({ replicationPort: port }), 'replicationPort'));
  }
  void it('refuses a port string', () =>
    refuses(() => validatePolicy({ replicationPort: '9443' } as unknown as PolicyInput), 'replicationPort'));
});

void describe('bandwidth (R-POL-9)', () => {
  void it('accepts a limit and windows, deduplicating and sorting days', () => {
    const p = validatePolicy({
      bandwidth: {
        limitMbps: 100,
        windows: [
          { days: [5, 1, 1], from: '08:00', to: '18:00', limitMbps: 10 },
          { days: [6], from: '00:00', to: '24:00', limitMbps: 50.5 },
        ],
      },
    });
    assert.deepEqual(p.bandwidth, {
      limitMbps: 100,
      windows: [
        { days: [1, 5], from: '08:00', to: '18:00', limitMbps: 10 },
        { days: [6], from: '00:00', to: '24:00', limitMbps: 50.5 },
      ],
    });
  });
  void it('null limit = unlimited; windows default to none', () =>
    assert.deepEqual(validatePolicy({ bandwidth: { limitMbps: null } }).bandwidth, {
      limitMbps: null,
      windows: [],
    }));

  const w = { days: [1], from: '08:00', to: '18:00', limitMbps: 10 };
  const cases: [unknown, string][] = [
    [{ limitMbps: 0 }, 'bandwidth.limitMbps'],
    [{ limitMbps: -5 }, 'bandwidth.limitMbps'],
    [{ limitMbps: 'fast' }, 'bandwidth.limitMbps'],
    [{ windows: 'x' }, 'bandwidth.windows'],
    [{ windows: [{ ...w, days: [] }] }, 'bandwidth.windows[0].days'],
    [{ windows: [{ ...w, days: [7] }] }, 'bandwidth.windows[0].days'],
    [{ windows: [{ ...w, days: [1.5] }] }, 'bandwidth.windows[0].days'],
    [{ windows: [w, { ...w, from: '8:00' }] }, 'bandwidth.windows[1].from'],
    [{ windows: [{ ...w, from: '24:00' }] }, 'bandwidth.windows[0].from'],
    [{ windows: [{ ...w, to: '18:60' }] }, 'bandwidth.windows[0].to'],
    [{ windows: [{ ...w, to: '08:00' }] }, 'bandwidth.windows[0].to'],
    [{ windows: [{ ...w, limitMbps: 0 }] }, 'bandwidth.windows[0].limitMbps'],
    [{ windows: [{ ...w, extra: 1 }] }, 'bandwidth.windows[0].extra'],
    [{ windows: [null] }, 'bandwidth.windows[0]'],
    [{ cap: 1 }, 'bandwidth.cap'],
    ['slow', 'bandwidth'],
  ];
  for (const [value, field] of cases) {
    void it(`refuses ${JSON.stringify(value)} naming ${field}`, () =>
      refuses(() => validatePolicy({ bandwidth: value } as unknown as PolicyInput), field));
  }
});

void describe('bandwidthLimitAt', () => {
  const policy: BandwidthPolicy = {
    limitMbps: 100,
    windows: [
      // Weekdays business hours.
      { days: [1, 2, 3, 4, 5], from: '08:00', to: '18:00', limitMbps: 10 },
      // Friday night into Saturday morning.
      { days: [5], from: '22:00', to: '06:00', limitMbps: 500 },
      // Overlaps the business window on Wednesday lunchtime; the lower limit wins.
      { days: [3], from: '12:00', to: '13:00', limitMbps: 5 },
    ],
  };
  // 2030-06-03 is a Monday.
  const cases: [string, number, number | null][] = [
    ['2030-06-03T07:59:00Z', 0, 100],
    ['2030-06-03T08:00:00Z', 0, 10],
    ['2030-06-03T17:59:59Z', 0, 10],
    ['2030-06-03T18:00:00Z', 0, 100],
    ['2030-06-05T12:30:00Z', 0, 5],
    ['2030-06-07T21:59:00Z', 0, 100],
    ['2030-06-07T22:00:00Z', 0, 500],
    ['2030-06-07T23:59:00Z', 0, 500],
    ['2030-06-08T03:00:00Z', 0, 500],
    ['2030-06-08T06:00:00Z', 0, 100],
    // Thursday 23:00 is not in the Friday-night window; Friday 03:00 is not either (Thursday is not a day of it).
    ['2030-06-06T23:00:00Z', 0, 100],
    ['2030-06-07T03:00:00Z', 0, 100],
    // Local time: 06:30 UTC is 08:30 at UTC+2 (business hours) and 01:30 at UTC-5.
    ['2030-06-03T06:30:00Z', 120, 10],
    ['2030-06-03T06:30:00Z', -300, 100],
    // Saturday 02:00 at UTC+2 is Friday 24:00 UTC; the offset moves the day too.
    ['2030-06-08T00:30:00Z', 120, 500],
  ];
  for (const [at, offset, limit] of cases) {
    void it(`${at} at UTC${offset >= 0 ? '+' : ''}${offset / 60} → ${String(limit)}`, () =>
      assert.equal(bandwidthLimitAt(policy, new Date(at), { utcOffsetMinutes: offset }), limit));
  }

  void it('is unlimited without a default limit or windows', () =>
    assert.equal(bandwidthLimitAt({ limitMbps: null, windows: [] }, NOW, { utcOffsetMinutes: 0 }), null));

  void it('a window ending at midnight ends at midnight', () => {
    const p: BandwidthPolicy = {
      limitMbps: null,
      windows: [{ days: [1], from: '20:00', to: '00:00', limitMbps: 1 }],
    };
    assert.equal(bandwidthLimitAt(p, new Date('2030-06-03T23:59:00Z'), { utcOffsetMinutes: 0 }), 1);
    assert.equal(bandwidthLimitAt(p, new Date('2030-06-04T00:00:00Z'), { utcOffsetMinutes: 0 }), null);
  });

  void it('uses the local offset by default', () => {
    const at = new Date('2030-06-03T10:00:00Z');
    assert.equal(
      bandwidthLimitAt(policy, at),
      bandwidthLimitAt(policy, at, { utcOffsetMinutes: -at.getTimezoneOffset() }),
    );
  });
});

void describe('validatePolicyPatch', () => {
  const existing: PolicySettings = validatePolicy({
    retentionHours: 24,
    appConsistentFrequencyHours: 4,
    bandwidth: { limitMbps: 50, windows: [{ days: [1], from: '08:00', to: '18:00', limitMbps: 5 }] },
    initialReplication: { mode: 'scheduled', startAt: '2030-06-01T20:00:00Z' },
  });

  void it('keeps what the patch leaves out', () => {
    const p = validatePolicyPatch(
      existing,
      { copyFrequencySeconds: '30s' },
      { now: new Date('2031-01-01T00:00:00Z') },
    );
    assert.deepEqual(p, { ...existing, copyFrequencySeconds: 30 });
  });

  void it('checks rules on the merged result', () => {
    refuses(() => validatePolicyPatch(existing, { retentionHours: 4 }), 'appConsistentFrequencyHours');
    assert.equal(
      validatePolicyPatch(existing, { retentionHours: 4, appConsistentFrequencyHours: 0 }).retentionHours,
      4,
    );
    refuses(() => validatePolicyPatch(existing, { replicationPort: 0 }), 'replicationPort');
  });

  void it('merges bandwidth limit and windows separately', () => {
    assert.deepEqual(validatePolicyPatch(existing, { bandwidth: { limitMbps: null } }).bandwidth, {
      limitMbps: null,
      windows: existing.bandwidth.windows,
    });
    assert.deepEqual(validatePolicyPatch(existing, { bandwidth: { windows: [] } }).bandwidth, {
      limitMbps: 50,
      windows: [],
    });
    refuses(
      () => validatePolicyPatch(existing, { bandwidth: { unknown: 1 } } as unknown as PolicyInput),
      'bandwidth.unknown',
    );
  });

  void it('checks the future start only when the patch sets the initial replication', () => {
    const later = new Date('2031-01-01T00:00:00Z');
    assert.equal(validatePolicyPatch(existing, { compression: false }, { now: later }).compression, false);
    refuses(
      () =>
        validatePolicyPatch(
          existing,
          { initialReplication: { mode: 'scheduled', startAt: '2030-12-31T00:00:00Z' } },
          { now: later },
        ),
      'initialReplication.startAt',
    );
  });

  void it('refuses unknown fields', () =>
    refuses(() => validatePolicyPatch(existing, { name: 'x' } as unknown as PolicyInput), 'name'));
});
