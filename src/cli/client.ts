/**
 * A small typed HTTP client for the osr REST API (`/api/v1`, DESIGN §5) over `fetch`.
 * It sends JSON with the bearer token and turns the API's error bodies
 * (`{"error":{"code","message","details"}}`) into `CliError`s with the same code.
 */
import type { Job, JobState } from '../domain/model.js';
import { CliError } from './errors.js';

/** Query-string values; arrays repeat the key, undefined values are left out. */
export type QueryParams = Record<string, string | number | boolean | readonly string[] | undefined>;

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** A list answer of the API. */
export interface Page<T> {
  items: T[];
  total: number;
}

/** A long operation's answer (202): the job, plus whatever else the route returns. */
export interface JobAccepted {
  job: Job;
  [key: string]: unknown;
}

/** A full response, for callers that need the status or the `Location` header. */
export interface ApiResponse<T> {
  status: number;
  body: T;
  location: string | null;
}

export interface RequestInit {
  query?: QueryParams;
  /** JSON body; POST, PUT and PATCH send `{}` when none is given. */
  body?: unknown;
  /** false for the routes that need no token (health, openapi). Default true. */
  auth?: boolean;
}

export interface ClientOptions {
  /** Server base URL, e.g. `http://127.0.0.1:7480` (without `/api/v1`). */
  server: string;
  /** The bearer token, or a function giving it (called only when a request needs it). */
  token?: string | (() => string);
  /** Replaces the global fetch (tests). */
  fetch?: typeof fetch;
  /** Per-request timeout; default 60 s. */
  timeoutMs?: number;
}

/** Filters of `GET /jobs`. */
export interface JobQuery {
  vault?: string;
  state?: JobState[];
  type?: string;
  target?: string;
  since?: string;
  until?: string;
  limit?: number;
  offset?: number;
}

/** `path` under a vault, with each segment URL-encoded: `vaultPath('v', 'sites', 's')` → `/vaults/v/sites/s`. */
export function vaultPath(vault: string, ...segments: string[]): string {
  return '/' + ['vaults', vault, ...segments].map(encodeURIComponent).join('/');
}

/** `/segment/segment…` with each segment URL-encoded. */
export function apiPath(...segments: string[]): string {
  return '/' + segments.map(encodeURIComponent).join('/');
}

/** Client for one server and token. Methods throw CliError for any refused or failed request. */
export class OsrClient {
  readonly server: string;
  readonly #token: string | (() => string) | undefined;
  readonly #fetch: typeof fetch;
  readonly #timeoutMs: number;

  constructor(options: ClientOptions) {
    this.server = options.server.replace(/\/+$/, '');
    this.#token = options.token;
    this.#fetch = options.fetch ?? fetch;
    this.#timeoutMs = options.timeoutMs ?? 60_000;
  }

  /** The absolute URL of an API path (`/vaults` → `<server>/api/v1/vaults`). */
  url(path: string, query?: QueryParams): string {
    const url = new URL(this.server + '/api/v1' + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value === undefined) continue;
      if (Array.isArray(value)) for (const v of value as readonly string[]) url.searchParams.append(key, v);
      else url.searchParams.append(key, String(value));
    }
    return url.toString();
  }

  /** Sends one request; resolves for 2xx with the parsed body (undefined when empty). */
  async request<T>(method: HttpMethod, path: string, init: RequestInit = {}): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (init.auth !== false) headers['authorization'] = `Bearer ${this.#resolveToken()}`;
    let body: string | undefined;
    if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(init.body ?? {});
    }
    const url = this.url(path, init.query);
    let res: Response;
    try {
      res = await this.#fetch(url, { method, headers, body, signal: AbortSignal.timeout(this.#timeoutMs) });
    } catch (err) {
      throw unreachable(this.server, err);
    }
    const text = await res.text();
    const parsed = parseJson(text);
    if (!res.ok) throw errorFromResponse(res.status, res.statusText, parsed, text);
    if (text !== '' && parsed === undefined) {
      throw new CliError(
        'BAD_RESPONSE',
        `the server answered ${method} ${path} with something that is not JSON`,
        {
          status: res.status,
        },
      );
    }
    return { status: res.status, body: parsed as T, location: res.headers.get('location') };
  }

  get<T>(path: string, query?: QueryParams): Promise<T> {
    return this.request<T>('GET', path, { query }).then((r) => r.body);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, { body }).then((r) => r.body);
  }

  put<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('PUT', path, { body }).then((r) => r.body);
  }

  patch<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('PATCH', path, { body }).then((r) => r.body);
  }

  delete<T = unknown>(path: string): Promise<T> {
    return this.request<T>('DELETE', path).then((r) => r.body);
  }

  /** `GET /health` (no token needed). */
  health(): Promise<{ status: string; version: string }> {
    return this.request<{ status: string; version: string }>('GET', '/health', { auth: false }).then(
      (r) => r.body,
    );
  }

  getJob(id: string): Promise<Job> {
    return this.get<Job>(apiPath('jobs', id));
  }

  listJobs(query: JobQuery = {}): Promise<Page<Job>> {
    return this.get<Page<Job>>('/jobs', { ...query, state: query.state?.join(',') });
  }

  cancelJob(id: string, force = false): Promise<unknown> {
    return this.post(apiPath('jobs', id, 'cancel'), force ? { force: true } : {});
  }

  resumeJob(id: string, comment: string): Promise<unknown> {
    return this.post(apiPath('jobs', id, 'resume'), { comment });
  }

  #resolveToken(): string {
    const t = this.#token;
    if (t === undefined) throw new CliError('NO_TOKEN', 'no token: pass --token or set OSR_TOKEN');
    return typeof t === 'function' ? t() : t;
  }
}

/** Picks the job out of an answer that is a job or carries one (`{job}`). */
export function jobOf(body: unknown): Job {
  if (isObject(body) && isObject(body['job'])) return body['job'] as unknown as Job;
  if (isObject(body) && typeof body['id'] === 'string' && Array.isArray(body['steps']))
    return body as unknown as Job;
  throw new CliError('BAD_RESPONSE', 'the server answered without the job it started');
}

function errorFromResponse(status: number, statusText: string, parsed: unknown, text: string): CliError {
  if (isObject(parsed) && isObject(parsed['error'])) {
    const e = parsed['error'];
    const code = typeof e['code'] === 'string' ? e['code'] : `HTTP_${status}`;
    const message = typeof e['message'] === 'string' ? e['message'] : statusText;
    return new CliError(code, message, { status, details: e['details'] ?? null });
  }
  const snippet = text.trim().split('\n')[0]?.slice(0, 200) ?? '';
  return new CliError(
    `HTTP_${status}`,
    `the server answered ${status} ${statusText}${snippet ? `: ${snippet}` : ''}`,
    {
      status,
    },
  );
}

function unreachable(server: string, err: unknown): CliError {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
    return new CliError('UNREACHABLE', `the server at ${server} did not answer in time`, { cause: err });
  }
  const cause = err instanceof Error ? (err.cause as NodeJS.ErrnoException | undefined) : undefined;
  const why = cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
  return new CliError(
    'UNREACHABLE',
    `cannot reach the server at ${server} (${why}); is it running? (--server, OSR_SERVER)`,
    {
      cause: err,
    },
  );
}

function parseJson(text: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
