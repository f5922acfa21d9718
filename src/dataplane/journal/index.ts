/**
 * Source side of replication: the write journal every disk of a replication group is captured into (DESIGN §2
 * "Capture"), its record format and the dirty bitmaps kept when it overflows.
 */
export * from './dirty-bitmap.js';
export * from './errors.js';
export * from './journal.js';
export * from './record.js';
