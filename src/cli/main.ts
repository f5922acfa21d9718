/**
 * Entry point of the `osr` command (`bin/osr.js` imports it): runs the program on
 * `process.argv` and sets the exit code. Everything else is in `program.ts`.
 */
import { run } from './program.js';

process.exitCode = await run();
