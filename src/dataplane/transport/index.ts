/**
 * The replication link between sites (DESIGN §2 "Ship"): TLS authenticated by certificate or token, checksummed versioned
 * frames, compressed batches with zero runs, a token-bucket bandwidth limit, and the sender/receiver pair.
 */
export * from './batch.js';
export * from './frame.js';
export * from './receiver.js';
export * from './sender.js';
export type * from './sink.js';
export * from './link-auth.js';
export * from './token-bucket.js';
