/**
 * `osr workload ledger` (the bundled demo workload, run as a local machine's process)
 * and `osr workload ledger-check` (verify a disk or image holds an unbroken prefix of
 * ledger records, for tests and operators).
 */
import type { Command } from 'commander';
import type { GlobalFlags } from '../config.js';
import { Output } from '../output.js';
import { Ledger, LedgerError, checkLedger, openReadableDisk } from '../../workload/ledger.js';
import { intArg, positiveNumberArg } from './common.js';

/** The first disk address in the environment a local machine gets (`OSR_DISK_<ID>`). */
function diskFromEnv(): string | undefined {
  const first = (process.env['OSR_DISKS'] ?? '').split(',')[0];
  if (first) {
    const v = process.env[`OSR_DISK_${first.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`];
    if (v) return v;
  }
  return process.env['OSR_DISK_DISK0'];
}

/** Registers the `workload` command group. */
export function registerWorkloadCommands(program: Command): void {
  const workload = program.command('workload').description('bundled workloads for demo and test machines');

  workload
    .command('ledger')
    .description('append numbered, checksummed records to a disk over NBD; refuse a broken ledger')
    .option('--disk <nbd-uri>', 'the disk (default: OSR_DISK_<first disk> from the machine environment)')
    .option('--rate <n>', 'records per second', positiveNumberArg, 10)
    .option(
      '--http-port <port>',
      'serve GET /status, POST /freeze, POST /thaw (default OSR_HTTP_PORT)',
      intArg(0),
    )
    .option('--http-host <host>', 'address for the status server (default OSR_HTTP_HOST or 127.0.0.1)')
    .option('--repair-from-prefix', 'keep the unbroken prefix of a broken ledger and clear the rest')
    .action(
      async (
        opts: {
          disk?: string;
          rate: number;
          httpPort?: number;
          httpHost?: string;
          repairFromPrefix?: boolean;
        },
        cmd: Command,
      ) => {
        const out = new Output(cmd.optsWithGlobals<GlobalFlags>().json === true);
        const disk = opts.disk ?? diskFromEnv();
        if (disk === undefined)
          throw new LedgerError('LEDGER_DISK', 'no disk: pass --disk nbd://host:port/export');
        const envPort = process.env['OSR_HTTP_PORT'];
        const httpPort = opts.httpPort ?? (envPort ? Number(envPort) : undefined);
        const ledger = await Ledger.start({
          disk,
          rate: opts.rate,
          ...(httpPort === undefined ? {} : { httpPort }),
          httpHost: opts.httpHost ?? process.env['OSR_HTTP_HOST'] ?? '127.0.0.1',
          repairFromPrefix: opts.repairFromPrefix === true,
          log: (l) => out.note(l),
        });
        const a = ledger.httpAddress;
        out.note(`ledger: running${a ? `; status at http://${a.host}:${a.port}/status` : ''}`);
        const onFreeze = (): void => {
          ledger.freeze().then(
            () => out.note('ledger: frozen'),
            (err: unknown) => out.note(`ledger: freeze failed: ${String(err)}`),
          );
        };
        const onThaw = (): void => {
          ledger.thaw();
          out.note('ledger: thawed');
        };
        process.on('SIGUSR1', onFreeze);
        process.on('SIGUSR2', onThaw);
        let stopSignal: (() => void) | undefined;
        const stopped = new Promise<void>((resolve) => {
          stopSignal = resolve;
          process.once('SIGTERM', resolve);
          process.once('SIGINT', resolve);
        });
        try {
          await Promise.race([stopped, ledger.failed]);
        } finally {
          if (stopSignal) {
            process.off('SIGTERM', stopSignal);
            process.off('SIGINT', stopSignal);
          }
          process.off('SIGUSR1', onFreeze);
          process.off('SIGUSR2', onThaw);
          await ledger.stop();
        }
        const s = ledger.status();
        out.note(`ledger: stopped at ${s.count} records`);
      },
    );

  workload
    .command('ledger-check')
    .description('check that a disk (nbd://… or an image file) holds an unbroken prefix of ledger records')
    .requiredOption('--disk <nbd-uri|file>', 'the disk or image to check')
    .action(async (opts: { disk: string }, cmd: Command) => {
      const out = new Output(cmd.optsWithGlobals<GlobalFlags>().json === true);
      const disk = await openReadableDisk(opts.disk);
      let check;
      try {
        check = await checkLedger(disk);
      } finally {
        await disk.close();
      }
      out.result(check, () => {
        const last = check.last ? `#${check.last.seq} at ${new Date(check.last.time).toISOString()}` : 'none';
        out.line(`${check.ok ? 'ok' : 'BROKEN'}: ${check.records} records; last ${last}`);
        if (check.problem) out.line(`problem: ${check.problem.reason}`);
      });
      if (!check.ok) process.exitCode = 1;
    });
}
