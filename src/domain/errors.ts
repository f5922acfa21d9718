/**
 * The product's one error type and its catalog (R-JOB-2, R-JOB-3). Every error an
 * operator can see carries a stable string code, a message, possible causes and a
 * recommended action; the seed codes of the Azure Site Recovery guides are kept as
 * `seedCode`. The API maps codes to HTTP status in one place (`httpStatusOf`).
 */

/** How an error code maps onto HTTP. */
export type ErrorKind =
  | 'invalid' // 400: the request is malformed or violates a rule
  | 'unauthorized' // 401
  | 'forbidden' // 403
  | 'not-found' // 404
  | 'conflict' // 409: not allowed in the current state
  | 'too-large' // 413
  | 'unavailable' // 503: a dependency (agent, site) cannot be reached now
  | 'not-implemented' // 501: the operation exists in the model but not in this version
  | 'failed'; // 500: the operation ran and failed

export interface CatalogEntry {
  kind: ErrorKind;
  seedCode?: number;
  possibleCauses: string;
  recommendedAction: string;
}

/** Stable codes with what an operator needs to act on them. */
export const ERROR_CATALOG = {
  VALIDATION_FAILED: {
    kind: 'invalid',
    possibleCauses: 'The request has a missing, unknown or malformed field.',
    recommendedAction: 'Correct the request as the message and details say, then retry.',
  },
  POLICY_INVALID: {
    kind: 'invalid',
    possibleCauses: 'A replication policy setting is outside what is allowed.',
    recommendedAction:
      'Use a copy frequency of 30 s, 5 min or 15 min, a retention of 1–360 hours, and an app-consistent frequency that is off or 1–12 hours and below the retention.',
  },
  UNAUTHORIZED: {
    kind: 'unauthorized',
    possibleCauses: 'No bearer token, or the token is not valid for this server.',
    recommendedAction:
      'Pass the admin token (--token, OSR_TOKEN, or the admin-token file in the data folder).',
  },
  FORBIDDEN: {
    kind: 'forbidden',
    possibleCauses: 'The credential is valid but not for this resource.',
    recommendedAction: 'Use a credential that owns the resource.',
  },
  NOT_FOUND: {
    kind: 'not-found',
    possibleCauses: 'The resource does not exist or was deleted.',
    recommendedAction: 'Check the id or name; list the resources to find it.',
  },
  ALREADY_EXISTS: {
    kind: 'conflict',
    possibleCauses: 'A resource with that name already exists.',
    recommendedAction: 'Choose another name or use the existing resource.',
  },
  AMBIGUOUS_NAME: {
    kind: 'invalid',
    possibleCauses: 'The name matches resources on more than one site.',
    recommendedAction: 'Name it as SITE/NAME or by its id.',
  },
  IN_USE: {
    kind: 'conflict',
    possibleCauses: 'Other resources still refer to this one.',
    recommendedAction: 'Remove or reassign what refers to it first.',
  },
  OPERATION_NOT_ALLOWED: {
    kind: 'conflict',
    possibleCauses:
      'The operation is not allowed in the item’s current state, or another operation is running on it.',
    recommendedAction:
      'Check the item’s allowedOperations and its current job; wait for that job or run an allowed operation first.',
  },
  JOB_NOT_CANCELLABLE: {
    kind: 'conflict',
    possibleCauses: 'The job has ended or its type cannot be cancelled.',
    recommendedAction: 'Wait for the job to end; unplanned failover can only be cancelled with force.',
  },
  JOB_NOT_WAITING: {
    kind: 'conflict',
    possibleCauses: 'The job is not waiting for an operator action.',
    recommendedAction: 'Resume only jobs in state WaitingForAction.',
  },
  FORCE_REQUIRED: {
    kind: 'conflict',
    possibleCauses:
      'Cancelling an unplanned failover in progress stops replication of the item; it will need repair.',
    recommendedAction:
      'Repeat the cancel with force if you accept that the item will no longer replicate until repaired.',
  },
  NO_RECOVERY_POINT: {
    kind: 'conflict',
    possibleCauses:
      'No retained recovery point matches the choice (none yet, none app-consistent, or it has been pruned).',
    recommendedAction:
      'Wait for the first recovery point, choose another point type, or pick a point from the list.',
  },
  REGISTRATION_KEY_INVALID: {
    kind: 'unauthorized',
    possibleCauses: 'The registration key is unknown to this vault, or was deleted.',
    recommendedAction: 'Download a new registration key for the site from the vault and register again.',
  },
  REGISTRATION_KEY_EXPIRED: {
    kind: 'unauthorized',
    possibleCauses: 'The registration key is older than 5 days.',
    recommendedAction: 'Download a new registration key for the site from the vault and register again.',
  },
  AGENT_NOT_REGISTERED: {
    kind: 'unavailable',
    possibleCauses:
      'The site’s agent is not installed or not registered yet (after failback it can take up to 15 minutes to re-register).',
    recommendedAction:
      'Make sure the agent on the site is installed and registered with the vault, then retry.',
  },
  AGENT_DISCONNECTED: {
    kind: 'unavailable',
    possibleCauses: 'The site’s agent has stopped sending heartbeats.',
    recommendedAction: 'Check that the agent service is running and can reach the control plane, then retry.',
  },
  CERTIFICATE_REQUEST_INVALID: {
    kind: 'invalid',
    possibleCauses:
      'The agent’s certificate signing request is malformed, its signature does not verify, its key is too weak or of a type the control plane does not sign, or it asks for names an agent certificate cannot carry.',
    recommendedAction:
      'Let the agent make the request (an EC P-256/P-384 or RSA 2048+ key, signed with SHA-256) naming only itself, then retry.',
  },
  CERTIFICATE_IDENTITY_MISMATCH: {
    kind: 'forbidden',
    possibleCauses:
      'The certificate signing request names another agent or site than the one making it; the control plane signs a certificate only for the requester’s own identity.',
    recommendedAction:
      'Make the request with the agent’s own id (after registration) or its site name (at registration) as the common name.',
  },
  REPLICATION_PORT_IN_USE: {
    kind: 'conflict',
    possibleCauses:
      'Another program, or another recovery agent on the same host and address, already listens on the policy’s replication port.',
    recommendedAction:
      'Free the port, give each recovery agent on the host its own address (osr agent --data-address), or use a policy with another replication port; then run Repair replication.',
  },
  REPLICATION_UNHEALTHY: {
    kind: 'conflict',
    possibleCauses:
      'Replication of the item is not healthy (it needs resync or repair, or is lagging critically).',
    recommendedAction: 'Resolve the replication health issue first, or use an unplanned failover.',
  },
  FAILBACK_NOT_ALLOWED: {
    kind: 'conflict',
    possibleCauses:
      'The failed-over machine was deleted, moved, created by hand, protection was disabled, or the hypervisor types differ.',
    recommendedAction:
      'Failback is only possible for a machine created by failover and still protected; protect the machine anew instead.',
  },
  CANCEL_FAILOVER_NOT_ALLOWED: {
    kind: 'conflict',
    possibleCauses:
      'Cancel failover is only allowed for a planned failover from a cloud site to an on-premises site.',
    recommendedAction: 'Commit the failover, or fail back with a planned failover.',
  },
  TARGET_HOST_OUT_OF_MEMORY: {
    kind: 'failed',
    seedCode: 8038,
    possibleCauses: 'The target host does not have enough free memory to power on the machine.',
    recommendedAction:
      'Add memory to the host, free memory by stopping machines, or move the machine to a host with enough memory, then retry.',
  },
  CONTROL_PLANE_UNREACHABLE: {
    kind: 'unavailable',
    seedCode: 95226,
    possibleCauses:
      'The failed-over machine cannot reach the primary site’s control plane, or its agent service is not running.',
    recommendedAction:
      'Make sure the agent service is running and that the machine can reach the control plane (address, port, proxy), then retry.',
  },
  MACHINE_NAME_CONFLICT: {
    kind: 'conflict',
    seedCode: 78052,
    possibleCauses: 'A machine with the same name already exists where the replica would be created.',
    recommendedAction: 'Rename or remove the existing machine, or choose another target name, then retry.',
  },
  MACHINE_HAS_SNAPSHOTS: {
    kind: 'conflict',
    possibleCauses:
      'The machine that would be protected back has snapshots on its host; replication cannot take over disks that snapshots depend on (R-RP-9).',
    recommendedAction:
      'Delete or consolidate the machine’s snapshots on the target host, then retry the reprotect.',
  },
  MACHINE_NOT_RUNNING: {
    kind: 'conflict',
    seedCode: 78093,
    possibleCauses: 'The machine is not running, not responding or not reachable.',
    recommendedAction: 'Start the machine and make sure it responds, then retry.',
  },
  DATASTORE_NOT_ACCESSIBLE: {
    kind: 'failed',
    seedCode: 8061,
    possibleCauses: 'The datastore is not accessible from the host.',
    recommendedAction: 'Choose a datastore the host can reach, or give the host access to it, then retry.',
  },
  OPERATION_UNAVAILABLE: {
    kind: 'not-implemented',
    possibleCauses: 'This version of the product does not carry out the operation yet.',
    recommendedAction: 'Upgrade to a version that supports the operation.',
  },
  PAYLOAD_TOO_LARGE: {
    kind: 'too-large',
    possibleCauses: 'The request body is larger than the server accepts.',
    recommendedAction: 'Send a smaller request.',
  },
  INTERNAL: {
    kind: 'failed',
    possibleCauses: 'An unexpected error inside the product.',
    recommendedAction: 'Retry; if it persists, collect the server log and report it.',
  },
} as const satisfies Record<string, CatalogEntry>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

export interface OsrErrorOptions {
  details?: unknown;
  possibleCauses?: string;
  recommendedAction?: string;
  cause?: unknown;
}

/** The one error type of the product. Tests assert `code`, not the message. */
export class OsrError extends Error {
  readonly code: ErrorCode;
  readonly details: unknown;
  readonly possibleCauses: string;
  readonly recommendedAction: string;
  readonly seedCode: number | null;

  constructor(code: ErrorCode, message: string, options: OsrErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OsrError';
    const entry: CatalogEntry = ERROR_CATALOG[code];
    this.code = code;
    this.details = options.details ?? null;
    this.possibleCauses = options.possibleCauses ?? entry.possibleCauses;
    this.recommendedAction = options.recommendedAction ?? entry.recommendedAction;
    this.seedCode = entry.seedCode ?? null;
  }

  /** The job-error shape (R-JOB-2). */
  toJobError(): {
    code: string;
    message: string;
    possibleCauses: string;
    recommendedAction: string;
    seedCode: number | null;
  } {
    return {
      code: this.code,
      message: this.message,
      possibleCauses: this.possibleCauses,
      recommendedAction: this.recommendedAction,
      seedCode: this.seedCode,
    };
  }
}

/** HTTP status for an error code: the one place codes meet HTTP. */
export function httpStatusOf(code: ErrorCode): number {
  const kind: ErrorKind = ERROR_CATALOG[code].kind;
  switch (kind) {
    case 'invalid':
      return 400;
    case 'unauthorized':
      return 401;
    case 'forbidden':
      return 403;
    case 'not-found':
      return 404;
    case 'conflict':
      return 409;
    case 'too-large':
      return 413;
    case 'unavailable':
      return 503;
    case 'failed':
      return 500;
    case 'not-implemented':
      return 501;
  }
}

/** Wraps anything thrown into an OsrError (unknown errors become INTERNAL with the original as cause). */
export function toOsrError(err: unknown): OsrError {
  if (err instanceof OsrError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new OsrError('INTERNAL', message, { cause: err });
}

/** Shorthand for a NOT_FOUND error naming the resource kind and key. */
export function notFound(kind: string, key: string): OsrError {
  return new OsrError('NOT_FOUND', `${kind} '${key}' not found`, { details: { kind, key } });
}
