/**
 * The CLI's error type and exit codes. Every failure the CLI reports is a `CliError`
 * with a stable code: the server's error code for refused requests (e.g.
 * `POLICY_INVALID`), or one of the CLI's own (`USAGE`, `NO_TOKEN`, `UNREACHABLE`,
 * `JOB_FAILED`, `BAD_RESPONSE`).
 */

/** Process exit codes of `osr` (documented in docs/cli.md). */
export const EXIT_CODES = {
  /** Done; for `--wait` and `job watch`: the job Succeeded or waits for an operator. */
  ok: 0,
  /** The server refused or failed the request, or the CLI failed. */
  error: 1,
  /** The command line is wrong (unknown option, missing argument, bad value). */
  usage: 2,
  /** The job that was waited for ended Failed or Cancelled. */
  jobFailed: 3,
  /** The server could not be reached. */
  unreachable: 4,
} as const;

export interface CliErrorOptions {
  /** HTTP status when the error came from the server. */
  status?: number;
  details?: unknown;
  possibleCauses?: string;
  recommendedAction?: string;
  exitCode?: number;
  cause?: unknown;
}

/** An error the CLI reports as `osr: <message> (<code>)`. */
export class CliError extends Error {
  readonly code: string;
  readonly status: number | null;
  readonly details: unknown;
  readonly possibleCauses: string | null;
  readonly recommendedAction: string | null;
  readonly exitCode: number;

  constructor(code: string, message: string, options: CliErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CliError';
    this.code = code;
    this.status = options.status ?? null;
    this.details = options.details ?? null;
    this.possibleCauses = options.possibleCauses ?? null;
    this.recommendedAction = options.recommendedAction ?? null;
    this.exitCode =
      options.exitCode ??
      (code === 'USAGE'
        ? EXIT_CODES.usage
        : code === 'UNREACHABLE'
          ? EXIT_CODES.unreachable
          : EXIT_CODES.error);
  }
}

/** Shorthand for a command-line mistake (exit code 2). */
export function usageError(message: string): CliError {
  return new CliError('USAGE', message);
}
