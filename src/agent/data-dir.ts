/**
 * What an agent keeps in its data folder: its credential (mode 0600; reused on restart
 * so a restarted agent does not register again), its settings, and the log of the
 * commands it ran (so a command redelivered after a crash is answered from the log
 * instead of run twice). Its TLS key and certificates are `tls-identity.ts`'s.
 */
import { chmod, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { CommandOutcome, Registration } from './control-plane.js';

/** The credential file of a registered agent. */
export interface StoredCredential extends Registration {
  server: string;
  registeredAt: string;
}

const CREDENTIAL_FILE = 'credential.json';

/** Writes `file` atomically with mode 0600. */
async function writePrivate(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await chmod(tmp, 0o600);
  const fh = await open(tmp, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

/** The stored credential, or undefined before the first registration. */
export async function loadCredential(dataDir: string): Promise<StoredCredential | undefined> {
  const file = join(dataDir, CREDENTIAL_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const c = JSON.parse(text) as Partial<StoredCredential>;
  if (typeof c.credential !== 'string' || typeof c.agentId !== 'string' || typeof c.siteName !== 'string') {
    throw new Error(`${file} is not an agent credential file; remove it to register again`);
  }
  await chmod(file, 0o600);
  return c as StoredCredential;
}

/** Stores the credential (mode 0600). */
export async function saveCredential(dataDir: string, c: StoredCredential): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await writePrivate(join(dataDir, CREDENTIAL_FILE), JSON.stringify(c, null, 2) + '\n');
}

/** Forgets the credential (after the control plane refused it). */
export async function removeCredential(dataDir: string): Promise<void> {
  await rm(join(dataDir, CREDENTIAL_FILE), { force: true });
}

/** Small settings the agent picks once and keeps (e.g. the data port it advertises). */
export async function loadOrInitSettings<T extends object>(
  dataDir: string,
  init: () => Promise<T>,
): Promise<T> {
  const file = join(dataDir, 'agent.json');
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const value = await init();
  await writePrivate(file, JSON.stringify(value, null, 2) + '\n');
  return value;
}

/** One line of the command log. */
export type CommandLogEntry =
  | { id: string; event: 'started'; type: string; at: string }
  | { id: string; event: 'done'; type: string; at: string; outcome: CommandOutcome };

/**
 * Append-only log of the commands the agent ran (`commands.jsonl`, fsynced per line):
 * `started` before a handler runs, `done` with the outcome after. A torn last line
 * (crash mid-append) is ignored on load.
 */
export class CommandLog {
  readonly file: string;
  readonly #done = new Map<string, CommandOutcome>();
  readonly #starts = new Map<string, number>();
  #fh: FileHandle;
  #tail: Promise<void> = Promise.resolve();

  private constructor(file: string, fh: FileHandle) {
    this.file = file;
    this.#fh = fh;
  }

  /** Opens (and reads) the log of `dataDir`. */
  static async open(dataDir: string): Promise<CommandLog> {
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const file = join(dataDir, 'commands.jsonl');
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const fh = await open(file, 'a', 0o600);
    const log = new CommandLog(file, fh);
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      let e: CommandLogEntry;
      try {
        e = JSON.parse(line) as CommandLogEntry;
      } catch {
        continue; // a torn last line from a crash mid-append
      }
      if (e.event === 'done') log.#done.set(e.id, e.outcome);
      else log.#starts.set(e.id, (log.#starts.get(e.id) ?? 0) + 1);
    }
    return log;
  }

  /** The stored outcome of a finished command, or undefined. */
  outcome(id: string): CommandOutcome | undefined {
    return this.#done.get(id);
  }

  /** How many times a handler was started for this id (over every run of the agent). */
  starts(id: string): number {
    return this.#starts.get(id) ?? 0;
  }

  /** Records that the handler starts (durable before it acts). */
  started(id: string, type: string): Promise<void> {
    this.#starts.set(id, this.starts(id) + 1);
    return this.#append({ id, event: 'started', type, at: new Date().toISOString() });
  }

  /** Records the outcome (durable before it is reported). */
  done(id: string, type: string, outcome: CommandOutcome): Promise<void> {
    this.#done.set(id, outcome);
    return this.#append({ id, event: 'done', type, at: new Date().toISOString(), outcome });
  }

  #append(e: CommandLogEntry): Promise<void> {
    const line = JSON.stringify(e) + '\n';
    const write = async (): Promise<void> => {
      await this.#fh.write(line);
      await this.#fh.datasync();
    };
    this.#tail = this.#tail.then(write, write);
    return this.#tail;
  }

  async close(): Promise<void> {
    await this.#tail.catch(() => undefined);
    await this.#fh.close();
  }
}
