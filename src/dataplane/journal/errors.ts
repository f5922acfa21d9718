/**
 * Errors of the source side of replication. Each has a stable `code` the agent maps onto the product's error
 * catalog; tests assert the code, not the message.
 */

/** Bytes that are not a valid journal record / seed file / bitmap (bad magic, version, lengths or checksum). */
export class JournalFormatError extends Error {
  override readonly name = 'JournalFormatError';
  readonly code = 'JOURNAL_FORMAT' as const;
}

/**
 * A journal segment is damaged somewhere other than its tail: valid records follow the bad one, so truncating
 * would drop acknowledged writes. The journal refuses to open; the item needs resync.
 */
export class JournalCorruptError extends Error {
  override readonly name = 'JournalCorruptError';
  readonly code = 'JOURNAL_CORRUPT' as const;
  /** Segment file holding the bad record. */
  readonly path: string;
  /** Byte position of the bad record in that file. */
  readonly position: number;

  constructor(path: string, position: number, reason: string) {
    super(`journal segment ${path} is corrupt at byte ${position} (${reason}) and valid records follow it`);
    this.path = path;
    this.position = position;
  }
}

/**
 * The stream cannot continue from the journal: it overflowed its cap, or the peer's resume position is not in
 * it (released already, or ahead of it after a source crash). The item needs resync.
 */
export class ResyncRequiredError extends Error {
  override readonly name = 'ResyncRequiredError';
  readonly code = 'RESYNC_REQUIRED' as const;
}

/**
 * A recovery point was asked for while an initial copy streams its blocks (`WriteJournal.beginStreamedCopy`):
 * the blocks carry bytes newer than their place in the stream, so no point is consistent until the copy ends.
 */
export class CopyInProgressError extends Error {
  override readonly name = 'CopyInProgressError';
  readonly code = 'COPY_IN_PROGRESS' as const;
}
