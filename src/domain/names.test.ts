import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { OsrError } from './errors.js';
import { isValidName, validateName } from './names.js';

void describe('validateName', () => {
  const valid = ['a', 'Z', '0', 'web-01', 'db_primary', 'site.recovery', '9lives', 'a'.repeat(64)];
  for (const name of valid) {
    void it(`accepts ${JSON.stringify(name)}`, () => {
      assert.equal(validateName('site', name), name);
      assert.equal(isValidName(name), true);
    });
  }

  const invalid: unknown[] = [
    '',
    'a'.repeat(65),
    '-web',
    '.hidden',
    '_x',
    'has space',
    'slash/name',
    'ünï',
    'a\n',
    42,
    null,
    undefined,
  ];
  for (const name of invalid) {
    void it(`refuses ${JSON.stringify(name)}`, () => {
      assert.equal(isValidName(name), false);
      assert.throws(
        () => validateName('policy', name),
        (err: unknown) => {
          assert.ok(err instanceof OsrError);
          assert.equal(err.code, 'VALIDATION_FAILED');
          const details = err.details as { field: string; kind: string };
          assert.equal(details.field, 'name');
          assert.equal(details.kind, 'policy');
          return true;
        },
      );
    });
  }
});
