import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import type { DiskSpec } from '../changes.js';
import { ReplicaError } from './errors.js';

const MAGIC = Buffer.from('OSRRSTAT', 'latin1');
const VERSION = 1;
const HEADER = 20;

/** Position just past the last undo record known durable, as `[segment number, byte offset]`. */
export type UndoPosition = readonly [segment: number, offset: number];

/** A commit in progress (written before the base is touched, so a crash mid-commit redoes it on open). */
export interface CommitIntent {
  readonly pointId: string;
  readonly pointSeq: number;
  /** The overlays being flattened, one per disk at most. */
  readonly overlays: ReadonlyArray<{ readonly diskId: string; readonly dir: string; readonly name: string }>;
}

/** The store's small durable state: what is applied, what history is kept. */
export interface ReplicaState {
  readonly disks: readonly DiskSpec[];
  /** Every change with seq <= this is in the base image (and its undo record is durable). */
  readonly appliedSeq: number;
  /** Undo records before this position are durable and must be intact. */
  readonly undoEnd: UndoPosition;
  /** Points and undo records with a smaller seq were pruned. */
  readonly floorSeq: number;
  /** Set once a failover was committed: the base is the failed-over disk, no history is kept. */
  readonly committed?: { readonly pointId: string; readonly pointSeq: number; readonly time: number };
  readonly commitIntent?: CommitIntent;
  /**
   * Seq of the resync `begin` processed last while no `end` followed: the base is inside a resync and no point
   * may be cut (see `ResyncChange`). Absent otherwise (and in stores written before resync brackets existed).
   */
  readonly resyncSeq?: number;
}

/**
 * Writes the state atomically: `"OSRRSTAT" | u32 version | u32 length | u32 crc32(JSON) | JSON`, to a temporary
 * file that is fsynced, renamed over the old one, and the folder fsynced — so after a crash the file is either the
 * old state or the new one, never a mix.
 */
export function writeState(file: string, state: ReplicaState): void {
  const out = encodeState(state);
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeFileSync(fd, out);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

/**
 * `writeState` off the event loop (the fsyncs run in the thread pool), with the same guarantees. The caller must
 * not start another state write before it resolves (the store holds its processing lock).
 */
export async function writeStateAsync(file: string, state: ReplicaState): Promise<void> {
  const out = encodeState(state);
  const tmp = `${file}.tmp`;
  const h = await fs.promises.open(tmp, 'w');
  try {
    await h.writeFile(out);
    await h.sync();
  } finally {
    await h.close();
  }
  await fs.promises.rename(tmp, file);
  const d = await fs.promises.open(path.dirname(file), 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

function encodeState(state: ReplicaState): Buffer {
  const body = Buffer.from(JSON.stringify(state), 'utf8');
  const out = Buffer.alloc(HEADER + body.length);
  MAGIC.copy(out, 0);
  out.writeUInt32BE(VERSION, 8);
  out.writeUInt32BE(body.length, 12);
  out.writeUInt32BE(crc32(body), 16);
  body.copy(out, HEADER);
  return out;
}

/** Reads the state file, or `undefined` when there is none; garbage throws `REPLICA_CORRUPT`. */
export function readState(file: string): ReplicaState | undefined {
  let b: Buffer;
  try {
    b = fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const bad = (why: string): ReplicaError => new ReplicaError('REPLICA_CORRUPT', `${file}: ${why}`);
  if (b.length < HEADER || !b.subarray(0, 8).equals(MAGIC)) throw bad('not a replica state file (bad magic)');
  const version = b.readUInt32BE(8);
  if (version !== VERSION) throw bad(`unsupported version ${version}`);
  const len = b.readUInt32BE(12);
  if (b.length !== HEADER + len) throw bad('truncated');
  const body = b.subarray(HEADER);
  if (crc32(body) !== b.readUInt32BE(16)) throw bad('checksum mismatch');
  return JSON.parse(body.toString('utf8')) as ReplicaState;
}

/** Makes a rename or unlink in `dir` durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
