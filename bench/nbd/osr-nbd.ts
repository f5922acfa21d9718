/**
 * Stand-alone launcher of `osr nbd serve` (same code path as the `osr` binary's command), used by the benchmark
 * and the interop tests so they exercise the real command in its own process:
 * `node dist/bench/nbd/osr-nbd.js nbd serve disk.raw --port 0`.
 */
import { Command } from 'commander';
import { registerNbdCommands } from '../../src/cli/commands/nbd.js';

const program = new Command('osr');
registerNbdCommands(program);
await program.parseAsync(process.argv);
