/**
 * The REST API (DESIGN §5) as a Fastify application, without a listening socket:
 * tests drive it with `app.inject`, `startServer` (server.ts) listens.
 *
 * Request rules, in one place: bearer auth per route (`config.auth`: admin by
 * default, `agent` for the agent protocol, `none` for health and OpenAPI); bodies
 * validated by the route's TypeBox schema with Ajv (`removeAdditional: false` and
 * `additionalProperties: false` refuse unknown fields; no type coercion of bodies);
 * querystrings coerced to the schema's types before validation; bodies over 1 MiB
 * refused with 413. Every refusal happens before a handler runs, so nothing is
 * written. Errors always answer `{"error":{"code","message","details"}}` with the
 * status of `httpStatusOf(code)`.
 */
import { readFileSync } from 'node:fs';
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifySchema,
} from 'fastify';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { OsrError, httpStatusOf, type ErrorCode } from '../domain/errors.js';
import type { Agent } from '../domain/model.js';
import type { Store } from '../store/store.js';
import { systemClock, type Clock } from '../jobs/types.js';
import { AgentChannel } from './agent-channel.js';
import { hashSecret, requireAdmin, requireAgent } from './auth.js';
import type { ApiContext, ApiInstance, EnginePort, WorkflowsPort } from './context.js';
import { RESOURCE_SCHEMAS, ref } from './schemas.js';
import { vaultRoutes } from './routes/vaults.js';
import { siteRoutes } from './routes/sites.js';
import { keyRoutes } from './routes/keys.js';
import { agentRoutes } from './routes/agents.js';
import { policyRoutes } from './routes/policies.js';
import { networkRoutes } from './routes/networks.js';
import { itemRoutes } from './routes/items.js';
import { jobRoutes } from './routes/jobs.js';
import { planRoutes } from './routes/plans.js';
import { eventRoutes } from './routes/events.js';
import { agentProtocolRoutes } from './routes/agent-protocol.js';
import { loadTrust } from '../workflows/trust.js';

/** Who may call a route. */
export type AuthMode = 'admin' | 'agent' | 'none';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: AuthMode;
  }
  interface FastifyRequest {
    /** The calling agent on `auth: 'agent'` routes (set by the auth hook). */
    agent: Agent | null;
  }
}

/** Largest accepted request body (1 MiB); larger → 413 PAYLOAD_TOO_LARGE. */
export const BODY_LIMIT = 1024 * 1024;
/** Default heartbeat timeout after which an agent shows Disconnected (R-INF-3). */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 60_000;

export interface BuildAppOptions {
  store: Store;
  engine: EnginePort;
  workflows: WorkflowsPort;
  /** The admin bearer token (kept in memory only as its sha256). */
  adminToken: string;
  /** The server's data folder (informational; the app itself writes no files). */
  dataDir?: string;
  /** No heartbeat for this long → Disconnected (default 60 s). */
  heartbeatTimeoutMs?: number;
  clock?: Clock;
  /** A pino logger; default: no logging. */
  logger?: FastifyBaseLogger;
  /** The agents' command channel; default: a new one over `store` (closed with the app). */
  channel?: AgentChannel;
  /** Validity of the agents' stream certificates (default 90 days). */
  agentCertificateLifetimeMs?: number;
}

/** The product version, from package.json. */
export function productVersion(): string {
  const raw = readFileSync(new URL('../../../package.json', import.meta.url), 'utf8');
  return (JSON.parse(raw) as { version: string }).version;
}

/** Builds the REST API application (routes registered, not listening). */
export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const version = productVersion();
  const heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
  const clock = options.clock ?? systemClock;
  const ownChannel = options.channel === undefined;
  const channel = options.channel ?? new AgentChannel({ store: options.store, clock });
  const ctx: ApiContext = {
    store: options.store,
    engine: options.engine,
    workflows: options.workflows,
    channel,
    clock,
    heartbeatTimeoutMs,
    adminTokenHash: hashSecret(options.adminToken),
    heartbeatIntervalMs: Math.max(1000, Math.min(15_000, Math.floor(heartbeatTimeoutMs / 4))),
    trust: await loadTrust(options.store, {
      now: clock.now(),
      ...(options.agentCertificateLifetimeMs === undefined
        ? {}
        : { agentCertificateLifetimeMs: options.agentCertificateLifetimeMs }),
    }),
  };

  const app = Fastify({
    ...(options.logger ? { loggerInstance: options.logger } : { logger: false }),
    bodyLimit: BODY_LIMIT,
    logController: new LogController({ disableRequestLogging: true }),
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false },
    },
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.decorateRequest('agent', null);

  for (const s of RESOURCE_SCHEMAS) app.addSchema(s);

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Open Site Recovery API',
        version,
        description: 'Control-plane REST API of Open Site Recovery (osr).',
      },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      security: [{ bearer: [] }],
    },
    transform: ({ schema, url, route }) => ({ schema: documentedSchema(schema, route.method), url }),
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) =>
        typeof json.$id === 'string' ? json.$id : `def-${i}`,
    },
  });

  app.addHook('onRequest', async (request) => {
    if (request.is404) return;
    const auth = request.routeOptions.config.auth ?? 'admin';
    if (auth === 'none') return;
    if (auth === 'agent') {
      request.agent = await requireAgent(request, ctx.store);
      return;
    }
    requireAdmin(request, ctx.adminTokenHash);
  });

  app.addHook('preValidation', (request, _reply, done) => {
    const schema = request.routeOptions.schema;
    if (schema?.querystring !== undefined && request.query !== null && typeof request.query === 'object') {
      coerceQuery(schema.querystring as JsonSchemaLike, request.query as Record<string, unknown>);
    }
    // A bodiless POST to an operation is the same as `{}`.
    if (schema?.body !== undefined && (request.body === undefined || request.body === null)) {
      request.body = {};
    }
    done();
  });

  app.setErrorHandler((err: FastifyError, request, reply) => {
    const { status, body } = errorResponse(err);
    if (status >= 500) request.log.error({ err }, 'request failed');
    return reply.code(status).send(body);
  });

  app.setNotFoundHandler((request, reply) => {
    const e = new OsrError('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`);
    return reply.code(404).send(errorBody(e.code, e.message, null));
  });

  // preClose, not onClose: a waiting long-poll must answer before the socket closes,
  // or close() would wait for it.
  app.addHook('preClose', (done) => {
    if (ownChannel) channel.close();
    done();
  });

  app.addHook('onResponse', (request, reply, done) => {
    request.log.debug(
      {
        method: request.method,
        url: request.url,
        status: reply.statusCode,
        ms: Math.round(reply.elapsedTime),
      },
      'request',
    );
    done();
  });

  const openapi = () => (app as unknown as { swagger(): unknown }).swagger();
  await app.register(
    (api, _opts, done) => {
      const a = api as unknown as ApiInstance;
      a.get(
        '/health',
        {
          config: { auth: 'none' },
          schema: {
            tags: ['system'],
            security: [],
            response: {
              200: {
                type: 'object',
                properties: { status: { type: 'string' }, version: { type: 'string' } },
              },
            },
          },
        },
        (_req, reply) => {
          void reply.send({ status: 'ok', version });
        },
      );
      a.get('/openapi.json', { config: { auth: 'none' }, schema: { hide: true } }, (_req, reply) =>
        reply.send(openapi()),
      );
      vaultRoutes(a, ctx);
      siteRoutes(a, ctx);
      keyRoutes(a, ctx);
      agentRoutes(a, ctx);
      policyRoutes(a, ctx);
      networkRoutes(a, ctx);
      itemRoutes(a, ctx);
      jobRoutes(a, ctx);
      planRoutes(a, ctx);
      eventRoutes(a, ctx);
      agentProtocolRoutes(a, ctx);
      done();
    },
    { prefix: '/api/v1' },
  );

  await app.ready();
  return app;
}

/**
 * What the OpenAPI document says a route answers, besides the success schema the route
 * declares: `204` with no body for a delete (the route sends no body), and the error
 * body of the contract for every refusal (`4XX`) and failure (`5XX`). Documentation
 * only: the answers themselves are not serialized through these schemas.
 */
export function documentedSchema(
  schema: FastifySchema | undefined,
  method: string | string[],
): FastifySchema {
  const base: FastifySchema = schema ?? {};
  if ((base as { hide?: boolean }).hide === true) return base;
  const response: Record<string, unknown> = { ...(base.response as Record<string, unknown> | undefined) };
  const methods = Array.isArray(method) ? method : [method];
  if (methods.includes('DELETE') && Object.keys(response).length === 0) {
    response['204'] = { type: 'null', description: 'Done; no body' };
  }
  response['4XX'] = { ...ref('Error'), description: 'Refused: {"error":{"code","message","details"}}' };
  response['5XX'] = { ...ref('Error'), description: 'Failed: {"error":{"code","message","details"}}' };
  return { ...base, response };
}

/** The error body of the contract. */
export function errorBody(code: string, message: string, details: unknown) {
  return { error: { code, message, details: details ?? null } };
}

interface AjvErrorLike {
  instancePath?: string;
  message?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}

/** Maps anything thrown in a request to the contract's status and body. */
export function errorResponse(err: unknown): { status: number; body: ReturnType<typeof errorBody> } {
  if (err instanceof OsrError) {
    return { status: httpStatusOf(err.code), body: errorBody(err.code, err.message, err.details) };
  }
  const fe = err as Partial<FastifyError> & { validation?: AjvErrorLike[]; validationContext?: string };
  if (Array.isArray(fe.validation)) {
    const details = fe.validation.map((v) => validationDetail(fe.validationContext ?? 'body', v));
    const first = details[0];
    const message = first ? `${first.path}: ${first.message}` : 'request validation failed';
    return fail('VALIDATION_FAILED', message, details);
  }
  if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || fe.statusCode === 413) {
    return fail('PAYLOAD_TOO_LARGE', `request body is larger than ${BODY_LIMIT} bytes`, {
      limit: BODY_LIMIT,
    });
  }
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    // Malformed JSON, unsupported content type and the like.
    return fail('VALIDATION_FAILED', fe.message ?? 'bad request', { fastifyCode: fe.code ?? null });
  }
  const message = err instanceof Error ? err.message : String(err);
  return { status: 500, body: errorBody('INTERNAL', message, null) };
}

function fail(code: ErrorCode, message: string, details: unknown) {
  return { status: httpStatusOf(code), body: errorBody(code, message, details) };
}

function validationDetail(context: string, v: AjvErrorLike): { path: string; message: string } {
  let path = context + (v.instancePath ?? '').replace(/\//g, '.');
  let message = v.message ?? 'is invalid';
  const extra = v.params?.additionalProperty;
  const missing = v.params?.missingProperty;
  if (v.keyword === 'additionalProperties' && typeof extra === 'string') {
    path = `${path}.${extra}`;
    message = 'unknown field';
  } else if (v.keyword === 'required' && typeof missing === 'string') {
    path = `${path}.${missing}`;
    message = 'is required';
  }
  return { path, message };
}

interface JsonSchemaLike {
  type?: string | string[];
  properties?: Record<string, JsonSchemaLike>;
  items?: JsonSchemaLike;
  anyOf?: JsonSchemaLike[];
}

/**
 * Coerces querystring values to their schema types (integer, number, boolean,
 * arrays of those); values that do not convert are left for Ajv to refuse.
 */
export function coerceQuery(schema: JsonSchemaLike, query: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(query)) {
    const prop = schema.properties?.[key];
    if (prop === undefined) continue;
    query[key] = coerceValue(prop, value);
  }
}

function coerceValue(schema: JsonSchemaLike, value: unknown): unknown {
  const type = schema.type;
  if (type === 'array') {
    const arr = Array.isArray(value) ? value : [value];
    return schema.items ? arr.map((v) => coerceValue(schema.items as JsonSchemaLike, v)) : arr;
  }
  if (typeof value !== 'string') return value;
  if ((type === 'integer' || type === 'number') && /^-?\d+(\.\d+)?$/.test(value)) return Number(value);
  if (type === 'boolean' && (value === 'true' || value === 'false')) return value === 'true';
  return value;
}
