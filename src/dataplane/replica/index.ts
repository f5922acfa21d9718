/**
 * The recovery side of replication (DESIGN §2.3–2.5): the replica store with its pending log, undo log, recovery
 * points, read-only views and writable overlays.
 */
export * from './errors.js';
export * from './overlay.js';
export * from './replica-store.js';
export type { RecoveryPointInfo } from './undo-log.js';
export * from './view.js';
