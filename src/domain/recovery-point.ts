/**
 * Recovery point rules (R-FO-2, R-RP-3, R-RP-8, R-PLAN-4, R-POL-2): which point a
 * failover uses, how people write the choice, which points retention drops, and the
 * RPO. "Newest" is decided by journal sequence (the order writes happened), then by
 * time, then by id, so the answer never depends on input order.
 */
import { OsrError } from './errors.js';
import type { RecoveryPoint } from './model.js';
import { isIsoTime } from './time.js';

/**
 * Which recovery point to fail over to (R-FO-2):
 * - `latest`: process everything received, then cut a new point (lowest RPO; the default);
 * - `latest-processed`: the newest existing point (lowest RTO);
 * - `latest-app-consistent`: the newest app-consistent point;
 * - `id`: a chosen point;
 * - `time`: the newest point at or before an ISO time.
 */
export type PointChoice =
  | { kind: 'latest' }
  | { kind: 'latest-processed' }
  | { kind: 'latest-app-consistent' }
  | { kind: 'id'; id: string }
  | { kind: 'time'; time: string };

/** What {@link selectRecoveryPoint} decided: cut a new point first, or use an existing one. */
export type PointSelection = { mode: 'cut-new' } | { mode: 'existing'; point: RecoveryPoint };

/** Options of the point selection functions. */
export interface SelectPointOptions {
  /** The selection is for a failback: only latest-processed and latest-app-consistent are allowed (R-RP-3). */
  failback?: boolean;
  /** The current time: when given, a `time` choice in the future is refused. */
  now?: Date;
}

/** The choices a failback accepts (R-RP-3). */
export const FAILBACK_POINT_CHOICES: readonly PointChoice['kind'][] = [
  'latest-processed',
  'latest-app-consistent',
];

/** Orders points oldest first: by sequence, then time, then id. */
export function comparePoints(a: RecoveryPoint, b: RecoveryPoint): number {
  return (
    a.sequence - b.sequence ||
    Date.parse(a.time) - Date.parse(b.time) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

function newest(points: readonly RecoveryPoint[]): RecoveryPoint | undefined {
  let best: RecoveryPoint | undefined;
  for (const p of points) if (best === undefined || comparePoints(p, best) > 0) best = p;
  return best;
}

/** Short text of a choice, as {@link parsePointChoice} reads it back. */
export function formatPointChoice(choice: PointChoice): string {
  switch (choice.kind) {
    case 'id':
      return choice.id;
    case 'time':
      return choice.time;
    default:
      return choice.kind;
  }
}

function noPoint(message: string, details: Record<string, unknown>): OsrError {
  return new OsrError('NO_RECOVERY_POINT', message, { details });
}

function checkChoice(choice: PointChoice, options: SelectPointOptions): void {
  if (options.failback === true && !FAILBACK_POINT_CHOICES.includes(choice.kind)) {
    throw new OsrError(
      'VALIDATION_FAILED',
      `A failback uses the latest processed or the latest app-consistent point, not '${formatPointChoice(choice)}'.`,
      { details: { field: 'point', value: formatPointChoice(choice), allowed: FAILBACK_POINT_CHOICES } },
    );
  }
  if (choice.kind === 'time') {
    if (!isIsoTime(choice.time)) {
      throw new OsrError(
        'VALIDATION_FAILED',
        `'${formatPointChoice(choice)}' is not an ISO-8601 time with a zone.`,
        {
          details: { field: 'point', value: formatPointChoice(choice) },
        },
      );
    }
    if (options.now !== undefined && Date.parse(choice.time) > options.now.getTime()) {
      throw new OsrError('VALIDATION_FAILED', `Recovery point time ${choice.time} is in the future.`, {
        details: { field: 'point', value: choice.time, now: options.now.toISOString() },
      });
    }
  }
}

function pick(
  points: readonly RecoveryPoint[],
  choice: Exclude<PointChoice, { kind: 'latest' }>,
): RecoveryPoint | undefined {
  switch (choice.kind) {
    case 'latest-processed':
      return newest(points);
    case 'latest-app-consistent':
      return newest(points.filter((p) => p.type === 'app-consistent'));
    case 'id':
      return points.find((p) => p.id === choice.id);
    case 'time': {
      const t = Date.parse(choice.time);
      return newest(points.filter((p) => Date.parse(p.time) <= t));
    }
  }
}

function missingMessage(
  choice: Exclude<PointChoice, { kind: 'latest' }>,
  count: number,
  subject: string,
): string {
  if (count === 0) return `${subject} has no recovery point yet; wait for the first one.`;
  switch (choice.kind) {
    case 'latest-processed':
      return `${subject} has no recovery point.`;
    case 'latest-app-consistent':
      return `${subject} has no app-consistent recovery point (of ${count} retained); choose latest-processed or enable app-consistent points in the policy.`;
    case 'id':
      return `Recovery point '${choice.id}' is not among the ${count} retained points of ${subject}; it may have been pruned.`;
    case 'time':
      return `${subject} has no recovery point at or before ${choice.time} (of ${count} retained; older ones may have been pruned).`;
  }
}

/**
 * Decides the recovery point of a failover of one item. `latest` returns
 * `{ mode: 'cut-new' }` (process everything pending, then cut a new point); the other
 * choices return `{ mode: 'existing', point }` or throw NO_RECOVERY_POINT with a
 * message saying what is missing. With `options.failback`, choices other than
 * latest-processed and latest-app-consistent throw VALIDATION_FAILED (R-RP-3).
 */
export function selectRecoveryPoint(
  points: readonly RecoveryPoint[],
  choice: PointChoice,
  options: SelectPointOptions = {},
): PointSelection {
  checkChoice(choice, options);
  if (choice.kind === 'latest') return { mode: 'cut-new' };
  const point = pick(points, choice);
  if (point === undefined) {
    throw noPoint(missingMessage(choice, points.length, 'The item'), {
      choice: formatPointChoice(choice),
      retainedPoints: points.length,
    });
  }
  return { mode: 'existing', point };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ID_TOKEN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/**
 * Reads a point choice as people write it (CLI `--point`, API `point`):
 * `latest` | `latest-processed` | `latest-app-consistent` (any case) | an ISO-8601 time
 * with a zone | a point id (a UUID, or any id token of letters, digits, `.`, `_`, `:`,
 * `-`). Text that starts like a date but is not a valid zoned time, and empty or
 * malformed text, throw VALIDATION_FAILED with `details.field` = `point`.
 */
export function parsePointChoice(text: string): PointChoice {
  const value = text.trim();
  const lower = value.toLowerCase();
  if (lower === 'latest' || lower === 'latest-processed' || lower === 'latest-app-consistent')
    return { kind: lower };
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) {
    if (isIsoTime(value)) return { kind: 'time', time: value };
    throw new OsrError(
      'VALIDATION_FAILED',
      `'${text}' is not a valid recovery point time: use ISO-8601 with a zone, e.g. 2030-06-01T12:00:00Z.`,
      { details: { field: 'point', value: text } },
    );
  }
  if (UUID.test(value) || ID_TOKEN.test(value)) return { kind: 'id', id: value };
  throw new OsrError(
    'VALIDATION_FAILED',
    `'${text}' is not a recovery point choice: use latest, latest-processed, latest-app-consistent, a point id or an ISO time.`,
    { details: { field: 'point', value: text } },
  );
}

/**
 * The points retention drops (R-POL-2): those older than `retentionHours` before
 * `now`, oldest first — but never the newest point, so an item that stopped
 * replicating keeps something to recover to.
 */
export function pointsToPrune(
  points: readonly RecoveryPoint[],
  retentionHours: number,
  now: Date,
): RecoveryPoint[] {
  const keep = newest(points);
  const cutoff = now.getTime() - retentionHours * 3_600_000;
  return points.filter((p) => p !== keep && Date.parse(p.time) < cutoff).sort(comparePoints);
}

/**
 * Seconds from the newest point's time to `now` (whole seconds, never negative when
 * clocks disagree), or null when there is no point yet (R-REP-6).
 */
export function rpoSeconds(points: readonly RecoveryPoint[], now: Date): number | null {
  let latest: number | undefined;
  for (const p of points) {
    const t = Date.parse(p.time);
    if (latest === undefined || t > latest) latest = t;
  }
  if (latest === undefined) return null;
  return Math.max(0, Math.floor((now.getTime() - latest) / 1000));
}

/** Points of several items keyed by item id. */
export type PointsByItem =
  ReadonlyMap<string, readonly RecoveryPoint[]> | Readonly<Record<string, readonly RecoveryPoint[]>>;

function entriesOf(pointsByItem: PointsByItem): [string, readonly RecoveryPoint[]][] {
  return pointsByItem instanceof Map
    ? [...(pointsByItem as ReadonlyMap<string, readonly RecoveryPoint[]>).entries()]
    : Object.entries(pointsByItem as Readonly<Record<string, readonly RecoveryPoint[]>>);
}

function requirePointsForEvery(entries: [string, readonly RecoveryPoint[]][]): void {
  if (entries.length === 0) {
    throw new OsrError('VALIDATION_FAILED', 'No items were given to select recovery points for.', {
      details: { field: 'items' },
    });
  }
  const without = entries.filter(([, pts]) => pts.length === 0).map(([id]) => id);
  if (without.length > 0) {
    throw noPoint(
      `Every item needs at least one recovery point; ${without.length} of ${entries.length} have none: ${without.join(', ')}.`,
      { itemsWithoutPoints: without },
    );
  }
}

/**
 * Selects a point for each of several independent items (a recovery plan, R-RP-8):
 * every item needs at least one recovery point, else NO_RECOVERY_POINT naming them in
 * `details.itemsWithoutPoints`; then each item gets {@link selectRecoveryPoint}.
 */
export function selectPointsForItems(
  pointsByItem: PointsByItem,
  choice: PointChoice,
  options: SelectPointOptions = {},
): Record<string, PointSelection> {
  const entries = entriesOf(pointsByItem);
  checkChoice(choice, options);
  requirePointsForEvery(entries);
  const result: Record<string, PointSelection> = {};
  for (const [itemId, points] of entries) {
    try {
      result[itemId] = selectRecoveryPoint(points, choice, options);
    } catch (err) {
      if (err instanceof OsrError && err.code === 'NO_RECOVERY_POINT') {
        throw noPoint(`Item ${itemId}: ${err.message}`, {
          itemId,
          ...(err.details as Record<string, unknown>),
        });
      }
      throw err;
    }
  }
  return result;
}

/** What {@link commonPointForGroup} decided. */
export type GroupPointSelection =
  { mode: 'cut-new' } | { mode: 'existing'; groupPointId: string; points: Record<string, RecoveryPoint> };

/**
 * Selects the multi-machine consistent point of a replication group (R-PLAN-4,
 * R-RP-8): a `groupPointId` that every item of the group has a point for. Needs at
 * least one point per item (else NO_RECOVERY_POINT with `details.itemsWithoutPoints`).
 * `latest` → cut a new group point; `latest-processed` → the newest common point;
 * `latest-app-consistent` → the newest common point that is app-consistent on every
 * item; `id` → the common point with that group point id, or containing a point with
 * that id; `time` → the newest common point whose members are all at or before it.
 * No qualifying common point → NO_RECOVERY_POINT.
 */
export function commonPointForGroup(
  pointsByItem: PointsByItem,
  choice: PointChoice,
  options: SelectPointOptions = {},
): GroupPointSelection {
  const entries = entriesOf(pointsByItem);
  checkChoice(choice, options);
  requirePointsForEvery(entries);
  if (choice.kind === 'latest') return { mode: 'cut-new' };

  const byGroup = new Map<string, Record<string, RecoveryPoint>>();
  for (const [itemId, points] of entries) {
    for (const p of points) {
      if (p.groupPointId === null) continue;
      const members = byGroup.get(p.groupPointId) ?? {};
      members[itemId] = p;
      byGroup.set(p.groupPointId, members);
    }
  }
  const common = [...byGroup.entries()]
    .map(([groupPointId, members]) => ({ groupPointId, members: entries.map(([id]) => members[id]) }))
    .filter((g): g is { groupPointId: string; members: RecoveryPoint[] } =>
      g.members.every((m) => m !== undefined),
    );

  const qualifies = (members: RecoveryPoint[], groupPointId: string): boolean => {
    switch (choice.kind) {
      case 'latest-processed':
        return true;
      case 'latest-app-consistent':
        return members.every((m) => m.type === 'app-consistent');
      case 'id':
        return groupPointId === choice.id || members.some((m) => m.id === choice.id);
      case 'time': {
        const t = Date.parse(choice.time);
        return members.every((m) => Date.parse(m.time) <= t);
      }
    }
  };
  const newestTime = (members: RecoveryPoint[]): number =>
    Math.max(...members.map((m) => Date.parse(m.time)));
  let best: { groupPointId: string; members: RecoveryPoint[] } | undefined;
  for (const g of common) {
    if (!qualifies(g.members, g.groupPointId)) continue;
    if (
      best === undefined ||
      newestTime(g.members) > newestTime(best.members) ||
      (newestTime(g.members) === newestTime(best.members) && g.groupPointId > best.groupPointId)
    ) {
      best = g;
    }
  }
  if (best === undefined) {
    const message =
      common.length === 0
        ? `The ${entries.length} items have no common multi-machine recovery point yet; wait for the next group point.`
        : missingMessage(choice, common.length, `The group of ${entries.length} items (common points)`);
    throw noPoint(message, {
      choice: formatPointChoice(choice),
      commonPoints: common.length,
      items: entries.map(([id]) => id),
    });
  }
  const chosen = best;
  const points: Record<string, RecoveryPoint> = {};
  entries.forEach(([id], i) => {
    const member = chosen.members[i];
    if (member !== undefined) points[id] = member;
  });
  return { mode: 'existing', groupPointId: chosen.groupPointId, points };
}
