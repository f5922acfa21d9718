/** `osr event list`: alerts and events of the vault (R-MON-1). */
import { Option } from 'commander';
import type { Command } from 'commander';
import type { OsrEvent } from '../../domain/model.js';
import { vaultPath } from '../client.js';
import type { Page } from '../client.js';
import { contextOf } from '../context.js';
import { formatTime } from '../output.js';
import { pagingNote, withPaging } from './common.js';

/** Registers the `event` command group. */
export function registerEventCommands(program: Command): void {
  withPaging(
    program
      .command('event')
      .description('alerts and events of the vault')
      .command('list')
      .description('list events, newest first')
      .option('--since <iso>', 'only events at or after this time')
      .addOption(new Option('--severity <s>', 'only this severity').choices(['Info', 'Warning', 'Critical'])),
  ).action(
    async (opts: { since?: string; severity?: string; limit?: number; offset?: number }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const page = await client.get<Page<OsrEvent>>(vaultPath(vault, 'events'), opts);
      out.result(page, () => {
        out.table(page.items, [
          { header: 'time', value: (e) => formatTime(e.time) },
          { header: 'severity', value: (e) => e.severity },
          { header: 'kind', value: (e) => e.kind },
          { header: 'message', value: (e) => e.message },
        ]);
        const more = pagingNote(page.items.length, page.total);
        if (more) out.line(more);
      });
    },
  );
}
