/** `osr job list|show|watch|cancel|resume` (R-JOB-*). */
import { Option } from 'commander';
import type { Command } from 'commander';
import type { Job, JobState } from '../../domain/model.js';
import { contextOf } from '../context.js';
import { usageError } from '../errors.js';
import { followJob, reportSettledJob } from '../job-follow.js';
import { elapsed, formatJobError, formatTime } from '../output.js';
import type { Output } from '../output.js';
import { collect, pagingNote, withPaging } from './common.js';

/** Every job state, for validating `--state`. */
export const JOB_STATES: readonly JobState[] = [
  'NotStarted',
  'InProgress',
  'WaitingForAction',
  'Succeeded',
  'Failed',
  'Cancelled',
];

/** `--state a,b --state c` → validated states (case-insensitive). */
export function parseStates(values: readonly string[]): JobState[] {
  const states: JobState[] = [];
  for (const raw of values.flatMap((v) => v.split(','))) {
    const v = raw.trim();
    if (v === '') continue;
    const state = JOB_STATES.find((s) => s.toLowerCase() === v.toLowerCase());
    if (!state) throw usageError(`unknown job state '${v}' (one of ${JOB_STATES.join(', ')})`);
    if (!states.includes(state)) states.push(state);
  }
  return states;
}

/** Prints a job for people: summary, steps table, why steps were skipped, errors with causes and action, waiting, comments. */
export function printJob(out: Output, job: Job): void {
  out.fields([
    ['job', job.id],
    ['type', `${job.displayName} (${job.type})`],
    ['target', `${job.targetName} (${job.targetKind} ${job.targetId})`],
    [
      'state',
      job.cancelRequested && !['Cancelled', 'Succeeded', 'Failed'].includes(job.state)
        ? `${job.state} (cancel requested)`
        : job.state,
    ],
    ['created', formatTime(job.createdAt)],
    ['started', formatTime(job.startedAt)],
    ['ended', formatTime(job.endedAt)],
    ['duration', elapsed(job.startedAt, job.endedAt)],
    ['cancellable', job.cancellable ? 'yes' : 'no'],
  ]);
  out.line();
  out.table(job.steps, [
    { header: '#', value: (s) => s.index + 1 },
    { header: 'step', value: (s) => s.name },
    { header: 'state', value: (s) => s.state },
    { header: 'started', value: (s) => formatTime(s.startedAt) },
    { header: 'ended', value: (s) => formatTime(s.endedAt) },
    { header: 'duration', value: (s) => elapsed(s.startedAt, s.endedAt) },
    { header: 'progress', value: (s) => (s.progress === null ? null : `${s.progress}%`) },
    { header: 'error', value: (s) => s.error?.code },
  ]);
  const skipped = job.steps.filter((s) => s.state === 'Skipped' && s.skipReason !== null);
  if (skipped.length > 0) {
    out.line();
    for (const s of skipped) out.line(`Step ${s.index + 1} (${s.name}) skipped: ${s.skipReason}`);
  }
  for (const s of job.steps) {
    if (!s.error) continue;
    out.line();
    out.line(`Step ${s.index + 1} (${s.name}) failed:`);
    for (const l of formatJobError(s.error, '  ')) out.line(l);
  }
  const jobError = job.error;
  if (
    jobError &&
    !job.steps.some((s) => s.error?.code === jobError.code && s.error.message === jobError.message)
  ) {
    out.line();
    for (const l of formatJobError(jobError)) out.line(l);
  }
  if (job.state === 'WaitingForAction' && job.waiting) {
    out.line();
    out.line(
      `Waiting since ${formatTime(job.waiting.since)} for: ${job.waiting.name} — ${job.waiting.prompt}`,
    );
    out.line(`Resume it with: osr job resume ${job.id} --comment TEXT`);
  }
  if (job.comments.length > 0) {
    out.line();
    out.line('Comments');
    for (const c of job.comments) out.line(`  ${formatTime(c.at)}  ${c.text}`);
  }
}

/** Registers the `job` command group. */
export function registerJobCommands(program: Command): void {
  const job = program.command('job').description('jobs: every long operation, with its steps');

  withPaging(
    job
      .command('list')
      .description('list jobs of the vault, newest first')
      .option('--state <state>', 'only these states (repeat or comma-separate)', collect)
      .option('--type <type>', 'only this job type')
      .option('--target <id>', 'only jobs on this target id')
      .option('--since <iso>', 'created at or after this time')
      .option('--until <iso>', 'created before this time'),
  ).action(
    async (
      opts: {
        state?: string[];
        type?: string;
        target?: string;
        since?: string;
        until?: string;
        limit?: number;
        offset?: number;
      },
      cmd: Command,
    ) => {
      const state = parseStates(opts.state ?? []);
      const { client, out, vault } = contextOf(cmd);
      const page = await client.listJobs({
        vault,
        state: state.length > 0 ? state : undefined,
        type: opts.type,
        target: opts.target,
        since: opts.since,
        until: opts.until,
        limit: opts.limit,
        offset: opts.offset,
      });
      out.result(page, () => {
        out.table(page.items, [
          { header: 'id', value: (j) => j.id },
          { header: 'job', value: (j) => j.displayName },
          { header: 'target', value: (j) => j.targetName },
          { header: 'state', value: (j) => j.state },
          {
            header: 'steps',
            value: (j) =>
              `${j.steps.filter((s) => s.state === 'Succeeded' || s.state === 'Skipped').length}/${j.steps.length}`,
          },
          { header: 'created', value: (j) => formatTime(j.createdAt) },
          { header: 'duration', value: (j) => elapsed(j.startedAt, j.endedAt) },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );

  job
    .command('show')
    .description('show a job with its steps and errors')
    .argument('<id>', 'job id')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const j = await client.getJob(id);
      out.result(j, () => printJob(out, j));
    });

  job
    .command('watch')
    .description(
      'print step changes until the job ends or waits for an operator (exit 0), non-zero if it fails',
    )
    .argument('<id>', 'job id')
    .addOption(
      new Option('--interval <ms>', 'poll interval')
        .default(500)
        .argParser((v) => Math.max(50, Number(v) || 500)),
    )
    .action(async (id: string, opts: { interval: number }, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const settled = await followJob(client, id, { out, style: 'lines', intervalMs: opts.interval });
      process.exitCode = reportSettledJob(out, settled);
    });

  job
    .command('cancel')
    .description(
      'cancel a job (an unplanned failover needs --force; a cancelled test failover is cleaned up automatically)',
    )
    .argument('<id>', 'job id')
    .option('--force', 'cancel even when the item will then need repair')
    .action(async (id: string, opts: { force?: boolean }, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const body = await client.cancelJob(id, opts.force === true);
      out.result(body, () => {
        const j = body as Partial<Job>;
        out.line(
          j.state === 'Cancelled'
            ? `Job ${id} cancelled`
            : `Cancel requested for job ${id}; it stops at the next step boundary (osr job watch ${id})`,
        );
        if (j.type === 'TestFailover') {
          out.line(
            `A Test failover cleanup job then deletes what the test created (osr job list --target ${j.targetId ?? '?'} --type TestFailoverCleanup)`,
          );
        }
      });
    });

  job
    .command('resume')
    .description('resume a job waiting for an operator action')
    .argument('<id>', 'job id')
    .requiredOption('--comment <text>', 'what was done (kept with the job)')
    .action(async (id: string, opts: { comment: string }, cmd: Command) => {
      const { client, out } = contextOf(cmd);
      const body = await client.resumeJob(id, opts.comment);
      out.result(body, () => out.line(`Resumed job ${id}`));
    });
}
