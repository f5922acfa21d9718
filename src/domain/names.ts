/**
 * Resource names (vaults, sites, policies, plans…): what a name may look like. Names
 * end up in file paths, CLI arguments and URLs, so the alphabet is kept small.
 */
import { OsrError } from './errors.js';

/** Longest name accepted. */
export const NAME_MAX_LENGTH = 64;

/** 1–64 characters of letters, digits, `-`, `_` and `.`, starting with a letter or digit. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Whether `name` is a valid resource name (see {@link NAME_PATTERN}). */
export function isValidName(name: unknown): name is string {
  return typeof name === 'string' && NAME_PATTERN.test(name);
}

/**
 * Returns `name` when it is a valid resource name; otherwise throws
 * `OsrError('VALIDATION_FAILED')` with `details: { field: 'name', kind, name, reason }`.
 * `kind` (e.g. `'policy'`) only appears in the message and details.
 */
export function validateName(kind: string, name: unknown): string {
  if (isValidName(name)) return name;
  const reason =
    typeof name !== 'string'
      ? 'must be a string'
      : name.length === 0
        ? 'must not be empty'
        : name.length > NAME_MAX_LENGTH
          ? `must be at most ${NAME_MAX_LENGTH} characters`
          : !/^[A-Za-z0-9]/.test(name)
            ? 'must start with a letter or digit'
            : 'may contain only letters, digits, "-", "_" and "."';
  throw new OsrError('VALIDATION_FAILED', `Invalid ${kind} name ${JSON.stringify(name)}: ${reason}.`, {
    details: { field: 'name', kind, name: typeof name === 'string' ? name : null, reason },
  });
}
