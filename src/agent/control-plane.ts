/**
 * The agent side of the agent protocol (docs/agent-protocol.md): typed calls for
 * register, heartbeat, inventory, the long-poll command channel, results, replication
 * status and peers. A network failure becomes `CONTROL_PLANE_UNREACHABLE` (95226); an
 * error answer becomes `ControlPlaneError` carrying the API's code.
 */
import { ERROR_CATALOG, OsrError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import type { FabricInventory } from '../fabric/driver.js';
import { HttpClient } from './http.js';
import type { HttpClientOptions } from './http.js';

/** An error answer of the control plane, with its code (e.g. REGISTRATION_KEY_EXPIRED). */
export class ControlPlaneError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: unknown;

  constructor(status: number, code: string, message: string, details: unknown) {
    super(message);
    this.name = 'ControlPlaneError';
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** The same error as an OsrError when the code is in the catalog. */
  toOsrError(): OsrError {
    const code: ErrorCode = Object.hasOwn(ERROR_CATALOG, this.code) ? (this.code as ErrorCode) : 'INTERNAL';
    return new OsrError(code, this.message, { details: this.details, cause: this });
  }
}

/** What registration answers (the agent keeps it with its credential). */
export interface Registration {
  agentId: string;
  credential: string;
  vaultId: string;
  siteId: string;
  siteName: string;
  heartbeatIntervalMs: number;
}

/** A command from the channel. */
export interface ChannelCommand {
  id: string;
  type: string;
  payload: unknown;
}

/** What a command's result report carries. */
export type CommandOutcome =
  | { state: 'Succeeded'; result: unknown }
  | {
      state: 'Failed';
      error: {
        code: string;
        message: string;
        possibleCauses?: string;
        recommendedAction?: string;
        seedCode?: number;
      };
    };

/** Registration request fields besides the key. */
export interface RegisterFields {
  friendlyName: string;
  version: string;
  dataAddress?: string;
  /** A PKCS #10 request for the agent's stream certificate (its key never leaves the agent). */
  certificateRequestPem?: string;
}

/** A certificate the control plane's CA issued to the agent. */
export interface IssuedCertificate {
  certificatePem: string;
  caCertificatePem: string;
  expiresAt: string;
}

/** Options of `ControlPlaneClient`. */
export interface ControlPlaneClientOptions extends HttpClientOptions {
  /** Base URL, e.g. `http://127.0.0.1:7480` (without `/api/v1`). */
  server: string;
  /** Timeout of ordinary requests (default 30 s); long-polls add their wait to it. */
  timeoutMs?: number;
}

/** Calls the control plane's agent routes. */
export class ControlPlaneClient {
  readonly server: string;
  readonly #http: HttpClient;
  readonly #timeoutMs: number;
  credential: string | undefined;

  constructor(options: ControlPlaneClientOptions) {
    this.server = options.server.replace(/\/+$/, '');
    this.#http = new HttpClient(options);
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Registers; with a certificate request the answer carries the issued certificate too. */
  register(
    key: string,
    fields: RegisterFields,
    signal?: AbortSignal,
  ): Promise<Registration & { certificate?: IssuedCertificate }> {
    return this.#call('POST', '/agent/register', { key, ...fields }, { signal, auth: false });
  }

  /** Trades a certificate request for a certificate (an upgrade from a self-signed one, or a renewal). */
  renewCertificate(certificateRequestPem: string, signal?: AbortSignal): Promise<IssuedCertificate> {
    return this.#call('POST', '/agent/certificate', { certificateRequestPem }, { signal });
  }

  async heartbeat(fields: { version?: string; dataAddress?: string }, signal?: AbortSignal): Promise<void> {
    await this.#call('POST', '/agent/heartbeat', fields, { signal });
  }

  async inventory(snapshot: FabricInventory, signal?: AbortSignal): Promise<void> {
    await this.#call('PUT', '/agent/inventory', snapshot, { signal });
  }

  async commands(session: string, waitMs: number, signal?: AbortSignal): Promise<ChannelCommand[]> {
    const q = `?waitMs=${waitMs}&session=${encodeURIComponent(session)}`;
    const r = await this.#call<{ commands: ChannelCommand[] }>('GET', `/agent/commands${q}`, undefined, {
      signal,
      timeoutMs: this.#timeoutMs + waitMs,
    });
    return r.commands;
  }

  async result(id: string, outcome: CommandOutcome, signal?: AbortSignal): Promise<{ duplicate: boolean }> {
    return this.#call('POST', `/agent/commands/${encodeURIComponent(id)}/result`, outcome, { signal });
  }

  /** Reports replication status; answers the items the control plane refused (e.g. NOT_FOUND: no such item). */
  async replicationStatus(
    body: { items: unknown[] },
    signal?: AbortSignal,
  ): Promise<{ rejected: { itemId: string; code: string; message: string }[] }> {
    const r = await this.#call<{ rejected?: unknown }>('POST', '/agent/replication-status', body, { signal });
    const rejected = Array.isArray(r?.rejected)
      ? (r.rejected as { itemId: string; code: string; message: string }[])
      : [];
    return { rejected: rejected.filter((x) => typeof x?.itemId === 'string' && typeof x.code === 'string') };
  }

  peer(
    site: string,
    signal?: AbortSignal,
  ): Promise<{
    agentId: string;
    siteId: string;
    dataAddress: string | null;
    certificatePem: string | null;
    connection: string;
  }> {
    return this.#call('GET', `/agent/peers/${encodeURIComponent(site)}`, undefined, { signal });
  }

  async #call<T>(
    method: string,
    path: string,
    body: unknown,
    opts: { signal?: AbortSignal; auth?: boolean; timeoutMs?: number },
  ): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (opts.auth !== false) {
      if (this.credential === undefined)
        throw new OsrError('UNAUTHORIZED', 'the agent has no credential yet');
      headers['authorization'] = `Bearer ${this.credential}`;
    }
    const url = `${this.server}/api/v1${path}`;
    let res;
    try {
      res = await this.#http.request({
        method,
        url,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        timeoutMs: opts.timeoutMs ?? this.#timeoutMs,
        signal: opts.signal,
      });
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      throw new OsrError(
        'CONTROL_PLANE_UNREACHABLE',
        `cannot reach the control plane at ${this.server}: ${(err as Error).message}`,
        {
          details: { server: this.server, path },
          cause: err,
        },
      );
    }
    let parsed: unknown = undefined;
    if (res.body !== '') {
      try {
        parsed = JSON.parse(res.body);
      } catch {
        parsed = undefined;
      }
    }
    if (res.status >= 200 && res.status < 300) return parsed as T;
    const e = (parsed as { error?: { code?: string; message?: string; details?: unknown } } | undefined)
      ?.error;
    if (e?.code === undefined) {
      // Not the API's error shape: a proxy or something else answered.
      throw new OsrError(
        'CONTROL_PLANE_UNREACHABLE',
        `${method} ${url} answered ${res.status} without an API error: ${res.body.slice(0, 200)}`,
        {
          details: { server: this.server, path, status: res.status },
        },
      );
    }
    throw new ControlPlaneError(res.status, e.code, e.message ?? `HTTP ${res.status}`, e.details ?? null);
  }
}
