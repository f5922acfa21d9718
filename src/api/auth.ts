/**
 * Authentication of the REST API: one admin bearer token for operators, and one
 * credential per registered agent for `/api/v1/agent/*`. Secrets are 32 random
 * bytes in base64url; only their sha256 is kept (the admin token's hash in memory,
 * agent credentials and registration keys in the store), and comparisons of a
 * presented secret are constant-time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { Agent } from '../domain/model.js';
import { OsrError } from '../domain/errors.js';
import type { Store } from '../store/store.js';

/** A fresh secret: 32 random bytes, base64url (43 characters). */
export function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** The sha256 of a secret, hex: what the store keeps. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Constant-time equality of a presented secret with a stored sha256 hex hash. */
export function secretMatches(presented: string, expectedHash: string): boolean {
  const a = createHash('sha256').update(presented, 'utf8').digest();
  const b = Buffer.from(expectedHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The bearer token of a request, or undefined when the header is absent or not a bearer. */
export function bearerOf(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

function unauthorized(message: string): OsrError {
  return new OsrError('UNAUTHORIZED', message);
}

/** Checks the admin token; throws UNAUTHORIZED when it is missing or wrong. */
export function requireAdmin(request: FastifyRequest, adminTokenHash: string): void {
  const token = bearerOf(request);
  if (token === undefined) throw unauthorized('missing bearer token');
  if (!secretMatches(token, adminTokenHash)) throw unauthorized('invalid bearer token');
}

/**
 * Finds the agent a request's credential belongs to; throws UNAUTHORIZED otherwise.
 * The lookup is by the credential's sha256, so the secret itself is never compared
 * byte by byte against stored data.
 */
export async function requireAgent(request: FastifyRequest, store: Store): Promise<Agent> {
  const token = bearerOf(request);
  if (token === undefined) throw unauthorized('missing agent credential');
  const hash = hashSecret(token);
  const agent = await store.agents.findByCredentialHash(hash);
  if (agent === undefined || !secretMatches(token, agent.credentialHash)) {
    throw unauthorized('invalid agent credential');
  }
  return agent;
}
