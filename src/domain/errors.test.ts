import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { ERROR_CATALOG, OsrError, httpStatusOf, notFound, toOsrError } from './errors.js';
import type { ErrorCode } from './errors.js';

const codes = Object.keys(ERROR_CATALOG) as ErrorCode[];

void describe('error catalog', () => {
  void it('has entries', () => {
    assert.ok(codes.length > 10);
  });

  for (const code of codes) {
    void it(`${code} carries what an operator needs`, () => {
      const entry = ERROR_CATALOG[code];
      assert.match(code, /^[A-Z][A-Z0-9_]*$/);
      assert.equal(typeof entry.possibleCauses, 'string');
      assert.ok(entry.possibleCauses.trim().length > 10, 'possibleCauses is filled in');
      assert.equal(typeof entry.recommendedAction, 'string');
      assert.ok(entry.recommendedAction.trim().length > 10, 'recommendedAction is filled in');
      const err = new OsrError(code, `message for ${code}`);
      assert.equal(err.code, code);
      assert.equal(err.message, `message for ${code}`);
      assert.equal(err.possibleCauses, entry.possibleCauses);
      assert.equal(err.recommendedAction, entry.recommendedAction);
    });

    void it(`${code} has an HTTP status`, () => {
      const status = httpStatusOf(code);
      assert.ok(Number.isInteger(status) && status >= 400 && status <= 599, `${code} → ${status}`);
    });
  }

  void it('maps each kind to its status', () => {
    assert.equal(httpStatusOf('VALIDATION_FAILED'), 400);
    assert.equal(httpStatusOf('POLICY_INVALID'), 400);
    assert.equal(httpStatusOf('UNAUTHORIZED'), 401);
    assert.equal(httpStatusOf('FORBIDDEN'), 403);
    assert.equal(httpStatusOf('NOT_FOUND'), 404);
    assert.equal(httpStatusOf('OPERATION_NOT_ALLOWED'), 409);
    assert.equal(httpStatusOf('MACHINE_HAS_SNAPSHOTS'), 409);
    assert.equal(httpStatusOf('PAYLOAD_TOO_LARGE'), 413);
    assert.equal(httpStatusOf('AGENT_DISCONNECTED'), 503);
    assert.equal(httpStatusOf('INTERNAL'), 500);
  });

  const seeds: [number, ErrorCode][] = [
    [8038, 'TARGET_HOST_OUT_OF_MEMORY'],
    [95226, 'CONTROL_PLANE_UNREACHABLE'],
    [78052, 'MACHINE_NAME_CONFLICT'],
    [78093, 'MACHINE_NOT_RUNNING'],
    [8061, 'DATASTORE_NOT_ACCESSIBLE'],
  ];
  for (const [seed, code] of seeds) {
    void it(`seed code ${seed} maps to ${code} and only to it`, () => {
      const withSeed = codes.filter((c) => (ERROR_CATALOG[c] as { seedCode?: number }).seedCode === seed);
      assert.deepEqual(withSeed, [code]);
      const err = new OsrError(code, 'x');
      assert.equal(err.seedCode, seed);
      assert.equal(err.toJobError().seedCode, seed);
    });
  }

  void it('has no seed codes beyond the five of R-JOB-3', () => {
    const all = codes
      .map((c) => (ERROR_CATALOG[c] as { seedCode?: number }).seedCode)
      .filter((s): s is number => s !== undefined)
      .sort((a, b) => a - b);
    assert.deepEqual(all, [8038, 8061, 78052, 78093, 95226]);
  });

  void it('gives codes without a seed a null seedCode', () => {
    assert.equal(new OsrError('NOT_FOUND', 'x').seedCode, null);
  });
});

void describe('OsrError', () => {
  void it('lets the thrower override causes and action and keeps details and cause', () => {
    const cause = new Error('root');
    const err = new OsrError('MACHINE_NOT_RUNNING', 'web is stopped', {
      details: { machine: 'web' },
      possibleCauses: 'custom causes',
      recommendedAction: 'custom action',
      cause,
    });
    assert.equal(err.name, 'OsrError');
    assert.ok(err instanceof Error);
    assert.deepEqual(err.details, { machine: 'web' });
    assert.equal(err.cause, cause);
    assert.deepEqual(err.toJobError(), {
      code: 'MACHINE_NOT_RUNNING',
      message: 'web is stopped',
      possibleCauses: 'custom causes',
      recommendedAction: 'custom action',
      seedCode: 78093,
    });
  });

  void it('defaults details to null', () => {
    assert.equal(new OsrError('INTERNAL', 'x').details, null);
  });
});

void describe('toOsrError', () => {
  void it('returns an OsrError unchanged', () => {
    const err = new OsrError('NOT_FOUND', 'x');
    assert.equal(toOsrError(err), err);
  });

  void it('wraps an Error as INTERNAL with it as the cause', () => {
    const original = new TypeError('boom');
    const err = toOsrError(original);
    assert.equal(err.code, 'INTERNAL');
    assert.equal(err.message, 'boom');
    assert.equal(err.cause, original);
    assert.equal(httpStatusOf(err.code), 500);
  });

  void it('wraps a thrown non-Error value', () => {
    const err = toOsrError('just a string');
    assert.equal(err.code, 'INTERNAL');
    assert.equal(err.message, 'just a string');
    assert.equal(err.cause, 'just a string');
    assert.equal(toOsrError(undefined).code, 'INTERNAL');
  });
});

void describe('notFound', () => {
  void it('names the kind and key', () => {
    const err = notFound('site', 'recovery');
    assert.equal(err.code, 'NOT_FOUND');
    assert.deepEqual(err.details, { kind: 'site', key: 'recovery' });
    assert.match(err.message, /site/);
    assert.match(err.message, /recovery/);
  });
});
