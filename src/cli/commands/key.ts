/** `osr key create|list|delete`: registration keys for a site's agent (R-INF-2). */
import { chmodSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { vaultPath } from '../client.js';
import { contextOf } from '../context.js';
import { formatTime } from '../output.js';
import { itemsOf } from './common.js';

/** What `POST …/keys` answers; the secret appears only here. */
export interface CreatedKey {
  id: string;
  expiresAt: string;
  keyFile: { vaultId: string; siteId: string; siteName: string; server: string; key: string };
}

/** A key as listed (no secret). */
export interface KeyInfo {
  id: string;
  siteId: string;
  createdAt: string;
  expiresAt: string;
  /** Set by the server (its clock); the CLI falls back to comparing with its own. */
  expired?: boolean;
}

/** Writes a key file readable by its owner only (mode 0600, also when it existed before). */
export function writeKeyFile(path: string, keyFile: CreatedKey['keyFile']): void {
  writeFileSync(path, JSON.stringify(keyFile, null, 2) + '\n', { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** Registers the `key` command group. */
export function registerKeyCommands(program: Command): void {
  const key = program.command('key').description("registration keys for a site's agent (valid 5 days)");

  key
    .command('create')
    .description('create a registration key and write its key file (mode 0600)')
    .requiredOption('--site <site>', 'site id or name')
    .option('--out <file>', 'where to write the key file (default: ./<site>.osrkey)')
    .action(async (opts: { site: string; out?: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const created = await client.post<CreatedKey>(vaultPath(vault, 'sites', opts.site, 'keys'));
      const path = resolve(opts.out ?? `${created.keyFile.siteName}.osrkey`);
      writeKeyFile(path, created.keyFile);
      out.result(created, () => {
        out.line(`Wrote the registration key for site ${created.keyFile.siteName} to ${path}`);
        out.line(
          `Key ${created.id} expires ${formatTime(created.expiresAt)}; register the site's agent with it before then.`,
        );
      });
    });

  key
    .command('list')
    .description("list a site's registration keys (without secrets)")
    .requiredOption('--site <site>', 'site id or name')
    .action(async (opts: { site: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.get<KeyInfo[] | { items: KeyInfo[] }>(
        vaultPath(vault, 'sites', opts.site, 'keys'),
      );
      out.result(body, () => {
        const now = Date.now();
        out.table(itemsOf(body), [
          { header: 'id', value: (k) => k.id },
          { header: 'created', value: (k) => formatTime(k.createdAt) },
          { header: 'expires', value: (k) => formatTime(k.expiresAt) },
          {
            header: 'status',
            value: (k) => ((k.expired ?? Date.parse(k.expiresAt) <= now) ? 'Expired' : 'Valid'),
          },
        ]);
      });
    });

  key
    .command('delete')
    .description('delete a registration key')
    .argument('<id>', 'key id')
    .requiredOption('--site <site>', 'site id or name')
    .action(async (id: string, opts: { site: string }, cmd: Command) => {
      const { client, out, vault } = contextOf(cmd);
      const body = await client.delete(vaultPath(vault, 'sites', opts.site, 'keys', id));
      out.result(body ?? {}, () => out.line(`Deleted key ${id}`));
    });
}
