/**
 * Bringing a replica level with its source outside the normal stream: initial replication (online, scheduled or
 * by offline seed file), resync after a journal overflow, and the failback delta — all by putting blocks into the
 * journal's stream at the right place.
 */
export * from './block-hash.js';
export * from './initial-copy.js';
export * from './offline-seed.js';
export * from './resync.js';
