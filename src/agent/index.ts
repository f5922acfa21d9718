/**
 * The site agent: `SiteAgent` (registration, heartbeat, inventory, command channel),
 * its HTTP/proxy client, the command handlers and the replication seam.
 */
export * from './agent.js';
export * from './commands.js';
export * from './control-plane.js';
export * from './data-dir.js';
export * from './http.js';
export * from './replication.js';
export * from './replication-dataplane.js';
