/**
 * NBD data plane: the server every disk is attached through, our client, and the block-backend contract that
 * the image file, the replica store's views/overlays and the write journal plug into.
 */
export * from './allocation-map.js';
export type * from './backend.js';
export * from './client.js';
export * from './errors.js';
export * from './file-backend.js';
export * from './memory-backend.js';
export * from './observed-backend.js';
export * from './server.js';
export * as nbdProtocol from './protocol.js';
