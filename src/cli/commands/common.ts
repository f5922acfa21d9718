/**
 * Small helpers the command modules share: option parsers that fail as usage errors,
 * and the `--wait` flag.
 */
import { InvalidArgumentError } from 'commander';
import type { Command } from 'commander';

/** Parses a whole number ≥ min (commander reports the failure as a usage error). */
export function intArg(min = 0): (value: string) => number {
  return (value) => {
    if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError('expected a whole number.');
    const n = Number(value);
    if (n < min) throw new InvalidArgumentError(`expected a number of at least ${min}.`);
    return n;
  };
}

/** Parses a positive number (fractions allowed). */
export function positiveNumberArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0)
    throw new InvalidArgumentError('expected a positive number.');
  return n;
}

/** Parses `on|off` (also `true|false`, `yes|no`). */
export function onOffArg(value: string): boolean {
  const v = value.trim().toLowerCase();
  if (['on', 'true', 'yes'].includes(v)) return true;
  if (['off', 'false', 'no'].includes(v)) return false;
  throw new InvalidArgumentError("expected 'on' or 'off'.");
}

/** Collects a repeatable option into a list. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Adds `--wait` to a command that starts a job. */
export function withWait(cmd: Command): Command {
  return cmd.option(
    '--wait',
    'follow the job until it ends or waits for an operator (exit 0), non-zero if it fails',
  );
}

/** Adds `--limit`/`--offset` paging to a list command. */
export function withPaging(cmd: Command): Command {
  return cmd
    .option('--limit <n>', 'at most this many (server default 100)', intArg(1))
    .option('--offset <n>', 'skip this many', intArg(0));
}

/** Prints the "n of total" footer when a list was cut by paging. */
export function pagingNote(shown: number, total: number): string | undefined {
  return total > shown ? `(${shown} of ${total}; use --limit/--offset for more)` : undefined;
}

/** The rows of a list answer, whether the route answers `{items,total}` or a bare array. */
export function itemsOf<T>(body: T[] | { items: T[] }): T[] {
  return Array.isArray(body) ? body : body.items;
}

/** Parses any finite number (the server checks the range). */
export function numberArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number.');
  return n;
}
