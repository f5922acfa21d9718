/**
 * Checks for JSON read from a site folder: every failure is an
 * `OsrError('VALIDATION_FAILED')` whose message names the file and the field
 * (`site.json: hosts[1].memoryMb: must be a positive integer`) and whose details carry
 * both, so an operator can fix the file without guessing.
 */
import { readFile } from 'node:fs/promises';
import { OsrError } from '../../domain/errors.js';

/** Where a value was read from: the file and the field path inside it. */
export interface At {
  file: string;
  path: string;
}

/** The VALIDATION_FAILED error for `at`. */
export function invalid(at: At, reason: string): OsrError {
  const where = at.path === '' ? at.file : `${at.file}: ${at.path}`;
  return new OsrError('VALIDATION_FAILED', `${where}: ${reason}`, {
    details: { file: at.file, field: at.path, reason },
  });
}

/** `at` one level down (`hosts` → `hosts[2]`, `hosts[2]` → `hosts[2].name`). */
export function child(at: At, key: string | number): At {
  const path = typeof key === 'number' ? `${at.path}[${key}]` : at.path === '' ? key : `${at.path}.${key}`;
  return { file: at.file, path };
}

/** Reads and parses a JSON file; a missing file or bad JSON is a VALIDATION_FAILED naming it. */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw invalid({ file, path: '' }, code === 'ENOENT' ? 'file not found' : `cannot read: ${String(err)}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw invalid({ file, path: '' }, `not valid JSON: ${(err as Error).message}`);
  }
}

/** The value as a plain object whose keys are all in `allowed`. */
export function object(v: unknown, at: At, allowed: readonly string[]): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(at, 'must be an object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) {
      throw invalid(child(at, k), `unknown field (allowed: ${allowed.join(', ')})`);
    }
  }
  return o;
}

/** A non-empty string. */
export function string(v: unknown, at: At): string {
  if (typeof v !== 'string' || v.length === 0) throw invalid(at, 'must be a non-empty string');
  return v;
}

/** A string, or null / missing → null. */
export function nullableString(v: unknown, at: At): string | null {
  if (v === undefined || v === null) return null;
  return string(v, at);
}

/** A name usable as a file or export name (letters, digits, `.`, `_`, `-`; 1–64). */
export function name(v: unknown, at: At): string {
  const s = string(v, at);
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(s)) {
    throw invalid(at, 'must be 1–64 letters, digits, ".", "_" or "-", starting with a letter or digit');
  }
  return s;
}

/** An integer ≥ `min`. */
export function integer(v: unknown, at: At, min = 1): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw invalid(at, `must be an integer ≥ ${min}`);
  }
  return v;
}

/** An array (missing → `[]` when `optional`). */
export function array(v: unknown, at: At, optional = false): unknown[] {
  if (v === undefined && optional) return [];
  if (!Array.isArray(v)) throw invalid(at, 'must be an array');
  return v;
}

/** One of `values`. */
export function oneOf<T extends string>(v: unknown, at: At, values: readonly T[]): T {
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    throw invalid(at, `must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}`);
  }
  return v as T;
}

/** Refuses a second entry with the same `key`. */
export function unique<T>(items: T[], key: (t: T) => string, at: At, what: string): void {
  const seen = new Set<string>();
  items.forEach((t, i) => {
    const k = key(t);
    if (seen.has(k)) throw invalid(child(at, i), `duplicate ${what} ${JSON.stringify(k)}`);
    seen.add(k);
  });
}
