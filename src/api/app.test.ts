import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from '../domain/errors.js';
import { coerceQuery, errorResponse } from './app.js';
import { hashSecret, newSecret, secretMatches } from './auth.js';
import { connectionOf } from './context.js';
import type { Agent } from '../domain/model.js';

describe('errorResponse', () => {
  it('maps OsrError codes through httpStatusOf', () => {
    const r = errorResponse(new OsrError('OPERATION_NOT_ALLOWED', 'no', { details: { a: 1 } }));
    assert.equal(r.status, 409);
    assert.deepEqual(r.body, { error: { code: 'OPERATION_NOT_ALLOWED', message: 'no', details: { a: 1 } } });
    assert.equal(errorResponse(new OsrError('REGISTRATION_KEY_EXPIRED', 'old')).status, 401);
    assert.equal(errorResponse(new OsrError('AGENT_DISCONNECTED', 'gone')).status, 503);
  });

  it('maps schema validation errors to 400 VALIDATION_FAILED with paths', () => {
    const err = Object.assign(new Error('bad'), {
      validationContext: 'body',
      validation: [
        {
          instancePath: '',
          keyword: 'additionalProperties',
          message: 'x',
          params: { additionalProperty: 'colour' },
        },
        {
          instancePath: '/groups/0',
          keyword: 'required',
          message: 'y',
          params: { missingProperty: 'items' },
        },
        { instancePath: '/name', keyword: 'type', message: 'must be string', params: {} },
      ],
    });
    const r = errorResponse(err);
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'VALIDATION_FAILED');
    assert.deepEqual(r.body.error.details, [
      { path: 'body.colour', message: 'unknown field' },
      { path: 'body.groups.0.items', message: 'is required' },
      { path: 'body.name', message: 'must be string' },
    ]);
  });

  it('maps oversized bodies to 413, other client errors to 400 and the rest to 500 INTERNAL', () => {
    const big = Object.assign(new Error('too big'), { code: 'FST_ERR_CTP_BODY_TOO_LARGE', statusCode: 413 });
    assert.equal(errorResponse(big).status, 413);
    assert.equal(errorResponse(big).body.error.code, 'PAYLOAD_TOO_LARGE');
    const media = Object.assign(new Error('media'), {
      code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE',
      statusCode: 415,
    });
    assert.equal(errorResponse(media).status, 400);
    const boom = errorResponse(new TypeError('boom'));
    assert.equal(boom.status, 500);
    assert.equal(boom.body.error.code, 'INTERNAL');
  });
});

describe('coerceQuery', () => {
  const schema = {
    type: 'object',
    properties: {
      limit: { type: 'integer' },
      ratio: { type: 'number' },
      force: { type: 'boolean' },
      state: { type: 'array', items: { type: 'string' } },
      name: { type: 'string' },
    },
  };

  it('converts numbers, booleans and single values of arrays, and leaves the rest for validation', () => {
    const q: Record<string, unknown> = {
      limit: '10',
      ratio: '0.5',
      force: 'true',
      state: 'Failed',
      name: '12',
      other: '1',
    };
    coerceQuery(schema, q);
    assert.deepEqual(q, { limit: 10, ratio: 0.5, force: true, state: ['Failed'], name: '12', other: '1' });
    const bad: Record<string, unknown> = { limit: 'ten', force: 'yes', state: ['a', 'b'] };
    coerceQuery(schema, bad);
    assert.deepEqual(bad, { limit: 'ten', force: 'yes', state: ['a', 'b'] });
  });
});

describe('secrets', () => {
  it('makes 32-byte base64url secrets and compares them against their sha256', () => {
    const s = newSecret();
    assert.match(s, /^[A-Za-z0-9_-]{43}$/);
    assert.notEqual(newSecret(), s);
    const h = hashSecret(s);
    assert.match(h, /^[0-9a-f]{64}$/);
    assert.equal(secretMatches(s, h), true);
    assert.equal(secretMatches(s + 'x', h), false);
    assert.equal(secretMatches(s, 'abcd'), false);
  });
});

describe('connectionOf', () => {
  const agent = (lastHeartbeatAt: string | null): Agent => ({
    id: 'a',
    vaultId: 'v',
    siteId: 's',
    friendlyName: 'f',
    credentialHash: 'h',
    version: '1',
    dataAddress: null,
    certificatePem: null,
    registeredAt: '2030-01-01T00:00:00.000Z',
    lastHeartbeatAt,
  });

  it('is Connected up to the timeout after the last heartbeat and Disconnected after', () => {
    const now = new Date('2030-01-01T00:01:00.000Z');
    assert.equal(connectionOf(agent('2030-01-01T00:00:00.000Z'), now, 60_000), 'Connected');
    assert.equal(connectionOf(agent('2029-12-31T23:59:59.999Z'), now, 60_000), 'Disconnected');
    assert.equal(connectionOf(agent(null), now, 60_000), 'Disconnected');
  });
});
