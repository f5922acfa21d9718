/**
 * What the local driver remembers between agent runs, per machine, in
 * `<stateDir>/fabric-state.json`: the power state the operator asked for (so a
 * restarted agent brings running machines back), the ports of its disks and status,
 * the process it runs and how to recognise it (pid, start time, start token: to adopt it
 * after a hard agent kill), and the command that created it (so a redelivered
 * `machine.create` is recognised).
 */
import { mkdir, readFile, rename, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';

/** The remembered state of one machine. */
export interface MachineRuntimeState {
  /** Unset until an operation decided it (autostart machines then power on). */
  desired?: 'Running' | 'Stopped';
  nbdPort?: number;
  httpPort?: number;
  /** The machine process: pid, command line, start time and start token (see `ProcessIdentity`). */
  pid?: number;
  argv?: string[];
  startTime?: string;
  /** Recorded before the process is spawned, so a process whose pid never got recorded is still found. */
  token?: string;
  /** Id of the `machine.create` command that made the machine; recorded before machine.json is written. */
  createdBy?: string;
}

/** The state file of a local fabric. */
export class FabricState {
  readonly file: string;
  #machines: Record<string, MachineRuntimeState>;
  #writing: Promise<void> = Promise.resolve();

  private constructor(file: string, machines: Record<string, MachineRuntimeState>) {
    this.file = file;
    this.#machines = machines;
  }

  /** Loads the state of `stateDir` (empty when there is none yet). */
  static async load(stateDir: string): Promise<FabricState> {
    await mkdir(stateDir, { recursive: true });
    const file = join(stateDir, 'fabric-state.json');
    let machines: Record<string, MachineRuntimeState> = {};
    try {
      const raw = JSON.parse(await readFile(file, 'utf8')) as {
        machines?: Record<string, MachineRuntimeState>;
      };
      machines = raw.machines ?? {};
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new Error(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
      }
    }
    return new FabricState(file, machines);
  }

  get(machine: string): MachineRuntimeState | undefined {
    return this.#machines[machine];
  }

  /** Merges `patch` into the machine's state and writes the file durably. */
  async update(machine: string, patch: Partial<MachineRuntimeState>): Promise<MachineRuntimeState> {
    const next: MachineRuntimeState = { ...this.#machines[machine], ...patch };
    for (const k of Object.keys(next) as (keyof MachineRuntimeState)[])
      if (next[k] === undefined) delete next[k];
    this.#machines[machine] = next;
    await this.#save();
    return next;
  }

  /** Forgets a machine. */
  async remove(machine: string): Promise<void> {
    delete this.#machines[machine];
    await this.#save();
  }

  #save(): Promise<void> {
    const body = JSON.stringify({ machines: this.#machines }, null, 2) + '\n';
    // Writes are chained so an older snapshot never lands after a newer one.
    const write = async (): Promise<void> => {
      const tmp = this.file + '.tmp';
      await writeFile(tmp, body);
      const fh = await open(tmp, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.file);
    };
    // A failed write was reported to its caller; the next one still runs.
    this.#writing = this.#writing.then(write, write);
    return this.#writing;
  }
}
