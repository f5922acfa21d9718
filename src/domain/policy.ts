/**
 * Replication policy rules (R-POL-1…R-POL-7, R-POL-9): validation with defaults, the
 * duration syntax people type (`30s`, `5m`, `15m`, `4h`), and the bandwidth limit in
 * force at a given time. Every refusal is `OsrError('POLICY_INVALID')` whose
 * `details.field` names the offending field (dotted path, e.g. `bandwidth.windows[0].from`).
 */
import { OsrError } from './errors.js';
import { COPY_FREQUENCIES_SECONDS } from './model.js';
import { isIsoTime } from './time.js';
import type {
  BandwidthPolicy,
  BandwidthWindow,
  CopyFrequencySeconds,
  InitialReplication,
  Policy,
  ReplicationAuthentication,
} from './model.js';

/** The settings part of a {@link Policy}: what validation produces. */
export type PolicySettings = Pick<
  Policy,
  | 'copyFrequencySeconds'
  | 'retentionHours'
  | 'appConsistentFrequencyHours'
  | 'compression'
  | 'deleteReplicaOnDisable'
  | 'initialReplication'
  | 'authentication'
  | 'replicationPort'
  | 'bandwidth'
>;

/** A bandwidth window as given by a caller (validated into a {@link BandwidthWindow}). */
export interface BandwidthWindowInput {
  days?: unknown;
  from?: unknown;
  to?: unknown;
  limitMbps?: unknown;
}

/**
 * A policy as given by a caller (API body or CLI flags). Every field is optional and
 * falls back to {@link POLICY_DEFAULTS}. Durations may be numbers or strings:
 * `copyFrequencySeconds` takes seconds (`300`) or `"30s"|"5m"|"15m"`; the hour fields
 * take hours (`24`) or a duration string (`"24h"`, `"1d"`) that is a whole number of hours.
 */
export interface PolicyInput {
  copyFrequencySeconds?: number | string;
  retentionHours?: number | string;
  appConsistentFrequencyHours?: number | string;
  compression?: boolean;
  deleteReplicaOnDisable?: boolean;
  initialReplication?: {
    mode: string;
    startAt?: string;
    exportPath?: string;
    importPath?: string;
  };
  authentication?: string;
  replicationPort?: number;
  bandwidth?: {
    limitMbps?: number | null;
    windows?: BandwidthWindowInput[];
  };
}

/** Options of {@link validatePolicy} and {@link validatePolicyPatch}. */
export interface ValidatePolicyOptions {
  /**
   * The current time. When given, a scheduled initial replication being set now must
   * start after it. Pass it when creating a policy or changing its initial replication.
   */
  now?: Date;
}

/** Longest retention accepted (R-POL-2). */
export const MAX_RETENTION_HOURS = 360;
/** Longest app-consistent snapshot frequency accepted (R-POL-3). */
export const MAX_APP_CONSISTENT_FREQUENCY_HOURS = 12;

/**
 * Defaults of every policy setting: 5-minute copy frequency, 24 h retention,
 * app-consistent points every 4 h, compression on, replica deleted on disable, initial
 * replication now, certificate authentication on port 9443, unlimited bandwidth.
 */
export const POLICY_DEFAULTS: Readonly<PolicySettings> = Object.freeze({
  copyFrequencySeconds: 300,
  retentionHours: 24,
  appConsistentFrequencyHours: 4,
  compression: true,
  deleteReplicaOnDisable: true,
  initialReplication: { mode: 'now' },
  authentication: 'certificate',
  replicationPort: 9443,
  bandwidth: { limitMbps: null, windows: [] },
} satisfies PolicySettings);

const POLICY_FIELDS: readonly string[] = [
  'copyFrequencySeconds',
  'retentionHours',
  'appConsistentFrequencyHours',
  'compression',
  'deleteReplicaOnDisable',
  'initialReplication',
  'authentication',
  'replicationPort',
  'bandwidth',
];

const UNIT_SECONDS: Readonly<Record<string, number>> = {
  s: 1,
  sec: 1,
  secs: 1,
  second: 1,
  seconds: 1,
  m: 60,
  min: 60,
  mins: 60,
  minute: 60,
  minutes: 60,
  h: 3600,
  hr: 3600,
  hrs: 3600,
  hour: 3600,
  hours: 3600,
  d: 86400,
  day: 86400,
  days: 86400,
};

/**
 * Parses a duration into whole seconds: a non-negative integer (seconds), or a string
 * of one or more `<integer><unit>` parts with units s, m, h, d (and their long forms),
 * e.g. `"30s"`, `"5m"`, `"15 min"`, `"1h30m"`; a bare integer string is seconds.
 * Throws `OsrError('VALIDATION_FAILED')` with `details: { field: 'duration', value }`.
 */
export function parseDuration(value: string | number): number {
  const seconds = durationSeconds(value);
  if (seconds === undefined) {
    throw new OsrError(
      'VALIDATION_FAILED',
      `Invalid duration ${JSON.stringify(value)}: use whole seconds or a value like "30s", "5m", "15m", "4h".`,
      { details: { field: 'duration', value } },
    );
  }
  return seconds;
}

/** {@link parseDuration} without the throw: undefined when `value` is not a duration. */
function durationSeconds(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const text = value.trim().toLowerCase();
  if (/^\d+$/.test(text)) return Number(text);
  const part = /(\d+)\s*([a-z]+)\s*/y;
  let total = 0;
  let matched = 0;
  while (part.lastIndex < text.length) {
    const m = part.exec(text);
    if (m === null) return undefined;
    const unit = UNIT_SECONDS[m[2] ?? ''];
    if (unit === undefined) return undefined;
    total += Number(m[1]) * unit;
    matched++;
  }
  return matched > 0 && Number.isSafeInteger(total) ? total : undefined;
}

function invalid(field: string, message: string, extra: Record<string, unknown> = {}): OsrError {
  return new OsrError('POLICY_INVALID', `Invalid policy: ${field} ${message}.`, {
    details: { field, ...extra },
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function rejectUnknownKeys(value: Record<string, unknown>, allowed: readonly string[], prefix: string): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw invalid(`${prefix}${key}`, 'is not a policy setting', { allowed });
    }
  }
}

function copyFrequency(value: unknown): CopyFrequencySeconds {
  const seconds = durationSeconds(value);
  const allowed: readonly number[] = COPY_FREQUENCIES_SECONDS;
  if (seconds === undefined || !allowed.includes(seconds)) {
    throw invalid('copyFrequencySeconds', `must be 30 s, 5 min or 15 min (got ${JSON.stringify(value)})`, {
      value,
      allowed: COPY_FREQUENCIES_SECONDS,
    });
  }
  return seconds as CopyFrequencySeconds;
}

/** Hours from a number of hours or a duration string that is a whole number of hours. */
function hours(value: unknown, field: string, min: number, max: number, offAllowed: boolean): number {
  const range = offAllowed ? `0 (off) or ${min}–${max} whole hours` : `${min}–${max} whole hours`;
  let h: number | undefined;
  if (typeof value === 'number') {
    h = value;
  } else if (typeof value === 'string') {
    const text = value.trim().toLowerCase();
    if (offAllowed && text === 'off') h = 0;
    else if (/^\d+$/.test(text)) h = Number(text);
    else {
      const seconds = durationSeconds(text);
      if (seconds !== undefined && seconds % 3600 === 0) h = seconds / 3600;
    }
  }
  if (
    h === undefined ||
    !Number.isInteger(h) ||
    (h === 0 && !offAllowed) ||
    (h !== 0 && (h < min || h > max))
  ) {
    throw invalid(field, `must be ${range} (got ${JSON.stringify(value)})`, { value, min, max });
  }
  return h;
}

function bool(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean')
    throw invalid(field, `must be true or false (got ${JSON.stringify(value)})`, { value });
  return value;
}

function isAbsolutePath(path: string): boolean {
  return path.startsWith('/') || /^[A-Za-z]:[\\/]/.test(path) || path.startsWith('\\\\');
}

function initialReplication(value: unknown, now: Date | undefined): InitialReplication {
  const field = 'initialReplication';
  if (!isRecord(value)) throw invalid(field, 'must be an object with a mode', { value });
  const mode = value.mode;
  if (mode === 'now') {
    rejectUnknownKeys(value, ['mode'], `${field}.`);
    return { mode: 'now' };
  }
  if (mode === 'scheduled') {
    rejectUnknownKeys(value, ['mode', 'startAt'], `${field}.`);
    const startAt = value.startAt;
    if (!isIsoTime(startAt)) {
      throw invalid(`${field}.startAt`, 'must be an ISO-8601 time with a zone, e.g. 2030-01-31T22:00:00Z', {
        value: startAt,
      });
    }
    if (now !== undefined && Date.parse(startAt) <= now.getTime()) {
      throw invalid(`${field}.startAt`, `must be in the future (now is ${now.toISOString()})`, {
        value: startAt,
        now: now.toISOString(),
      });
    }
    return { mode: 'scheduled', startAt: new Date(Date.parse(startAt)).toISOString() };
  }
  if (mode === 'offline') {
    rejectUnknownKeys(value, ['mode', 'exportPath', 'importPath'], `${field}.`);
    const paths: Record<'exportPath' | 'importPath', string> = { exportPath: '', importPath: '' };
    for (const key of ['exportPath', 'importPath'] as const) {
      const path = value[key];
      if (typeof path !== 'string' || path.trim() === '' || !isAbsolutePath(path)) {
        throw invalid(`${field}.${key}`, 'must be a non-empty absolute path', { value: path });
      }
      paths[key] = path;
    }
    return { mode: 'offline', exportPath: paths.exportPath, importPath: paths.importPath };
  }
  throw invalid(`${field}.mode`, `must be 'now', 'scheduled' or 'offline' (got ${JSON.stringify(mode)})`, {
    value: mode,
    allowed: ['now', 'scheduled', 'offline'],
  });
}

function authentication(value: unknown): ReplicationAuthentication {
  if (value === 'certificate' || value === 'token') return value;
  throw invalid('authentication', `must be 'certificate' or 'token' (got ${JSON.stringify(value)})`, {
    value,
    allowed: ['certificate', 'token'],
  });
}

function port(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw invalid('replicationPort', `must be an integer 1–65535 (got ${JSON.stringify(value)})`, { value });
  }
  return value;
}

function positiveMbps(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw invalid(field, `must be a number of Mbit/s above 0 (got ${JSON.stringify(value)})`, { value });
  }
  return value;
}

const HH_MM = /^([01]\d|2[0-3]):([0-5]\d)$/;

/** Minutes after midnight of an `HH:MM` time; `24:00` is accepted as the end of a day where allowed. */
function minutesOf(text: string): number {
  if (text === '24:00') return 1440;
  const m = HH_MM.exec(text);
  if (m === null) return NaN;
  return Number(m[1]) * 60 + Number(m[2]);
}

function bandwidthWindow(value: unknown, field: string): BandwidthWindow {
  if (!isRecord(value))
    throw invalid(field, 'must be an object with days, from, to and limitMbps', { value });
  rejectUnknownKeys(value, ['days', 'from', 'to', 'limitMbps'], `${field}.`);
  const days = value.days;
  if (!Array.isArray(days) || days.length === 0) {
    throw invalid(`${field}.days`, 'must be a non-empty list of weekdays 0 (Sunday)–6 (Saturday)', {
      value: days,
    });
  }
  for (const day of days) {
    if (typeof day !== 'number' || !Number.isInteger(day) || day < 0 || day > 6) {
      throw invalid(
        `${field}.days`,
        `must hold weekdays 0 (Sunday)–6 (Saturday) (got ${JSON.stringify(day)})`,
        {
          value: days,
        },
      );
    }
  }
  const from = value.from;
  if (typeof from !== 'string' || !HH_MM.test(from)) {
    throw invalid(`${field}.from`, 'must be a time HH:MM from 00:00 to 23:59', { value: from });
  }
  const to = value.to;
  if (typeof to !== 'string' || (to !== '24:00' && !HH_MM.test(to))) {
    throw invalid(`${field}.to`, 'must be a time HH:MM from 00:00 to 24:00', { value: to });
  }
  if (minutesOf(from) === minutesOf(to)) {
    throw invalid(`${field}.to`, 'must differ from "from" (a window cannot be empty)', { from, to });
  }
  const uniqueDays = [...new Set(days as number[])].sort((a, b) => a - b);
  return { days: uniqueDays, from, to, limitMbps: positiveMbps(value.limitMbps, `${field}.limitMbps`) };
}

function bandwidth(value: unknown): BandwidthPolicy {
  const field = 'bandwidth';
  if (!isRecord(value)) throw invalid(field, 'must be an object with limitMbps and windows', { value });
  rejectUnknownKeys(value, ['limitMbps', 'windows'], `${field}.`);
  const limit =
    value.limitMbps === undefined || value.limitMbps === null
      ? null
      : positiveMbps(value.limitMbps, `${field}.limitMbps`);
  const windows = value.windows ?? [];
  if (!Array.isArray(windows)) throw invalid(`${field}.windows`, 'must be a list', { value: windows });
  return { limitMbps: limit, windows: windows.map((w, i) => bandwidthWindow(w, `${field}.windows[${i}]`)) };
}

function settingsFrom(
  raw: Record<string, unknown>,
  now: Date | undefined,
  checkStartAt: boolean,
): PolicySettings {
  const d = POLICY_DEFAULTS;
  const retentionHours = hours(
    raw.retentionHours ?? d.retentionHours,
    'retentionHours',
    1,
    MAX_RETENTION_HOURS,
    false,
  );
  const appConsistentFrequencyHours = hours(
    raw.appConsistentFrequencyHours ?? d.appConsistentFrequencyHours,
    'appConsistentFrequencyHours',
    1,
    MAX_APP_CONSISTENT_FREQUENCY_HOURS,
    true,
  );
  if (appConsistentFrequencyHours !== 0 && appConsistentFrequencyHours >= retentionHours) {
    throw invalid(
      'appConsistentFrequencyHours',
      `must be less than the retention of ${retentionHours} h (got ${appConsistentFrequencyHours} h)`,
      { value: appConsistentFrequencyHours, retentionHours },
    );
  }
  return {
    copyFrequencySeconds: copyFrequency(raw.copyFrequencySeconds ?? d.copyFrequencySeconds),
    retentionHours,
    appConsistentFrequencyHours,
    compression: bool(raw.compression ?? d.compression, 'compression'),
    deleteReplicaOnDisable: bool(
      raw.deleteReplicaOnDisable ?? d.deleteReplicaOnDisable,
      'deleteReplicaOnDisable',
    ),
    initialReplication: initialReplication(
      raw.initialReplication ?? d.initialReplication,
      checkStartAt ? now : undefined,
    ),
    authentication: authentication(raw.authentication ?? d.authentication),
    replicationPort: port(raw.replicationPort ?? d.replicationPort),
    bandwidth: bandwidth(raw.bandwidth ?? d.bandwidth),
  };
}

function inputRecord(input: unknown): Record<string, unknown> {
  if (!isRecord(input)) throw invalid('policy', 'must be an object', { value: input });
  rejectUnknownKeys(input, POLICY_FIELDS, '');
  return input;
}

/**
 * Validates a new policy's settings and fills in {@link POLICY_DEFAULTS} for what is
 * missing. Refuses unknown fields. With `options.now`, a scheduled initial replication
 * must start in the future. Throws `OsrError('POLICY_INVALID')` naming `details.field`.
 */
export function validatePolicy(input: PolicyInput, options: ValidatePolicyOptions = {}): PolicySettings {
  return settingsFrom(inputRecord(input), options.now, true);
}

/**
 * Validates an update: `patch` is merged over `existing` (fields absent from the patch
 * keep their value; `bandwidth.limitMbps` and `bandwidth.windows` merge one by one; the
 * initial replication is replaced as a whole) and the merged settings must pass every
 * rule of {@link validatePolicy}. The future-start check applies only when the patch
 * sets `initialReplication`. Returns the merged settings.
 */
export function validatePolicyPatch(
  existing: PolicySettings,
  patch: PolicyInput,
  options: ValidatePolicyOptions = {},
): PolicySettings {
  const raw = inputRecord(patch);
  const merged: Record<string, unknown> = { ...pickSettings(existing) };
  for (const [key, value] of Object.entries(raw)) {
    if (value !== undefined) merged[key] = value;
  }
  if (isRecord(raw.bandwidth)) {
    merged.bandwidth = {
      limitMbps: 'limitMbps' in raw.bandwidth ? raw.bandwidth.limitMbps : existing.bandwidth.limitMbps,
      windows: raw.bandwidth.windows ?? existing.bandwidth.windows,
      ...Object.fromEntries(
        Object.entries(raw.bandwidth).filter(([k]) => k !== 'limitMbps' && k !== 'windows'),
      ),
    };
  }
  return settingsFrom(merged, options.now, raw.initialReplication !== undefined);
}

function pickSettings(policy: PolicySettings): PolicySettings {
  return {
    copyFrequencySeconds: policy.copyFrequencySeconds,
    retentionHours: policy.retentionHours,
    appConsistentFrequencyHours: policy.appConsistentFrequencyHours,
    compression: policy.compression,
    deleteReplicaOnDisable: policy.deleteReplicaOnDisable,
    initialReplication: policy.initialReplication,
    authentication: policy.authentication,
    replicationPort: policy.replicationPort,
    bandwidth: policy.bandwidth,
  };
}

/** Options of {@link bandwidthLimitAt}. */
export interface BandwidthLimitOptions {
  /**
   * Offset of the source site's local time from UTC in minutes (e.g. +120 for UTC+2).
   * Default: this process's own local offset at `at` — right when the caller runs on
   * the source site, as the agent does.
   */
  utcOffsetMinutes?: number;
}

/**
 * The bandwidth limit (Mbit/s, or null for unlimited) in force at `at` (R-POL-9). A
 * window applies on its days from `from` (inclusive) to `to` (exclusive) local time;
 * a window whose `to` is not after `from` crosses midnight and continues into the
 * next day (a Friday 22:00–06:00 window covers Saturday 03:00). When several windows
 * apply, the lowest limit wins; when none does, the default `limitMbps` applies.
 */
export function bandwidthLimitAt(
  policy: BandwidthPolicy,
  at: Date,
  options: BandwidthLimitOptions = {},
): number | null {
  const offset = options.utcOffsetMinutes ?? -at.getTimezoneOffset();
  const local = new Date(at.getTime() + offset * 60_000);
  const day = local.getUTCDay();
  const minute = local.getUTCHours() * 60 + local.getUTCMinutes();
  const previousDay = (day + 6) % 7;
  let limit: number | undefined;
  for (const w of policy.windows) {
    const from = minutesOf(w.from);
    const to = minutesOf(w.to);
    const applies =
      to > from
        ? w.days.includes(day) && minute >= from && minute < to
        : (w.days.includes(day) && minute >= from) || (w.days.includes(previousDay) && minute < to);
    if (applies && (limit === undefined || w.limitMbps < limit)) limit = w.limitMbps;
  }
  return limit ?? policy.limitMbps;
}
