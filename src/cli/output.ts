/**
 * What the CLI prints: the API's JSON as it came (`--json`), aligned tables and short
 * lines for people, job errors with what an operator needs (R-JOB-2), and a one-line
 * progress bar for long waits on a terminal.
 */
import type { Job, JobError, JobStep } from '../domain/model.js';

/** Where output goes; `process.stdout`/`process.stderr` satisfy it. */
export interface OutputStream {
  write(text: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

/** A column of a table: its header and how to get the cell from a row. */
export interface Column<T> {
  header: string;
  /** The cell; arrays are joined with commas, null/undefined print as `-`. */
  value(row: T): unknown;
}

/** Prints for one invocation: JSON for scripts, text for people. */
export class Output {
  constructor(
    readonly json: boolean,
    readonly stdout: OutputStream = process.stdout,
    readonly stderr: OutputStream = process.stderr,
  ) {}

  /** Prints the API's JSON as it came (pretty-printed; parses to the same value). */
  printJson(value: unknown): void {
    this.stdout.write(JSON.stringify(value ?? null, null, 2) + '\n');
  }

  /** Prints a line on stdout. */
  line(text = ''): void {
    this.stdout.write(text + '\n');
  }

  /** Prints a line on stderr (warnings, progress, hints that are not the answer). */
  note(text: string): void {
    this.stderr.write(text + '\n');
  }

  /** Prints rows as an aligned table (or `(none)` when empty). */
  table<T>(rows: readonly T[], columns: readonly Column<T>[]): void {
    if (rows.length === 0) {
      this.line('(none)');
      return;
    }
    this.stdout.write(formatTable(rows, columns));
  }

  /** Prints `key: value` lines, aligned; null/undefined values print as `-`. */
  fields(pairs: readonly [string, unknown][]): void {
    this.stdout.write(formatFields(pairs));
  }

  /** For `--json` prints `body`; otherwise calls `human`. */
  result(body: unknown, human: () => void): void {
    if (this.json) this.printJson(body);
    else human();
  }
}

/** Formats rows as a table with a header line; columns are separated by two spaces. */
export function formatTable<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const cells = rows.map((r) => columns.map((c) => cell(c.value(r))));
  const widths = columns.map((c, i) =>
    Math.max(c.header.length, ...cells.map((row) => (row[i] ?? '').length)),
  );
  const render = (values: string[]): string =>
    values
      .map((v, i) => (i === values.length - 1 ? v : v.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd() + '\n';
  return render(columns.map((c) => c.header.toUpperCase())) + cells.map(render).join('');
}

/** Formats `key: value` lines with the values aligned. */
export function formatFields(pairs: readonly [string, unknown][]): string {
  const width = Math.max(0, ...pairs.map(([k]) => k.length + 1));
  return pairs.map(([k, v]) => `${(k + ':').padEnd(width)}  ${cell(v)}`).join('\n') + '\n';
}

/** A cell's text: `-` for null/undefined/empty, JSON for objects, else the value as text. */
export function cell(v: unknown): string {
  if (v === null || v === undefined || v === '') return '-';
  if (typeof v === 'string') return v.replace(/\s*\n\s*/g, ' ');
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return v.length === 0 ? '-' : v.map(cell).join(', ');
  return JSON.stringify(v);
}

/** `2024-05-01T10:00:00.000Z` → `2024-05-01 10:00:00Z`; null → `-`. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '-';
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso);
  return m ? `${m[1]} ${m[2]}Z` : iso;
}

/** A duration for people: `850ms`, `12.3s`, `4m05s`, `2h10m`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** How long a step or job took (or has been running, given now). */
export function elapsed(startedAt: string | null, endedAt: string | null, now: Date = new Date()): string {
  if (!startedAt) return '-';
  const end = endedAt ? Date.parse(endedAt) : now.getTime();
  return formatDuration(end - Date.parse(startedAt));
}

/** The lines that tell an operator what failed and what to do (R-JOB-2). */
export function formatJobError(error: JobError, indent = ''): string[] {
  const seed = error.seedCode === null || error.seedCode === undefined ? '' : ` [${error.seedCode}]`;
  return [
    `${indent}Error: ${error.message} (${error.code}${seed})`,
    `${indent}Possible causes: ${error.possibleCauses}`,
    `${indent}Recommended action: ${error.recommendedAction}`,
  ];
}

/** `[2/5] Create replica disks` for a step of a job. */
export function stepLabel(job: Job, step: JobStep): string {
  return `[${step.index + 1}/${job.steps.length}] ${step.name}`;
}

/** Overall progress 0–100 of a job: finished steps plus the running step's progress. */
export function jobPercent(job: Job): number {
  if (job.state === 'Succeeded') return 100;
  const total = job.steps.length;
  if (total === 0) return 0;
  let done = 0;
  for (const s of job.steps) {
    if (s.state === 'Succeeded' || s.state === 'Skipped') done += 1;
    else if (s.state === 'InProgress') done += (s.progress ?? 0) / 100;
  }
  return Math.min(100, Math.floor((done / total) * 100));
}

/** The step a job is on: the running one, else the first not started, else the last. */
export function currentStep(job: Job): JobStep | undefined {
  return (
    job.steps.find((s) => s.state === 'InProgress' || s.state === 'Failed') ??
    job.steps.find((s) => s.state === 'NotStarted') ??
    job.steps[job.steps.length - 1]
  );
}

/**
 * A one-line progress bar (`[#####-----]  40%  step 2/5 Create replica disks`) redrawn
 * in place on a terminal. On anything else it draws nothing: callers print step
 * changes as lines instead.
 */
export class ProgressBar {
  #drawn = false;

  constructor(
    readonly stream: OutputStream,
    readonly width = 24,
  ) {}

  /** Whether the stream is a terminal (the bar is drawn only there). */
  get active(): boolean {
    return this.stream.isTTY === true;
  }

  /** Redraws the bar for the job's current state. */
  update(job: Job): void {
    if (!this.active) return;
    this.stream.write('\r\x1b[2K' + renderProgress(job, this.width, this.stream.columns));
    this.#drawn = true;
  }

  /** Ends the bar's line so later output starts on a fresh line. */
  finish(): void {
    if (this.#drawn) this.stream.write('\n');
    this.#drawn = false;
  }
}

/** The text of the progress bar for a job, cut to `columns` characters. */
export function renderProgress(job: Job, width = 24, columns?: number): string {
  const percent = jobPercent(job);
  const filled = Math.round((percent / 100) * width);
  const step = currentStep(job);
  const where = step ? `step ${step.index + 1}/${job.steps.length} ${step.name}` : job.state;
  const text = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(percent).padStart(3)}%  ${where}`;
  return columns !== undefined && columns > 10 && text.length >= columns ? text.slice(0, columns - 1) : text;
}
