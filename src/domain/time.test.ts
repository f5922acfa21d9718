import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { isIsoTime } from './time.js';

void describe('isIsoTime', () => {
  void it('accepts zoned ISO times and refuses the rest', () => {
    assert.equal(isIsoTime('2030-06-01T12:00:00Z'), true);
    assert.equal(isIsoTime('2030-06-01T12:00Z'), true);
    assert.equal(isIsoTime('2030-06-01T12:00:00.123-05:00'), true);
    assert.equal(isIsoTime('2024-02-29T00:00:00Z'), true);
    assert.equal(isIsoTime('2023-02-29T00:00:00Z'), false);
    assert.equal(isIsoTime('2030-06-01 12:00:00Z'), false);
    assert.equal(isIsoTime('2030-06-01T12:00:00'), false);
    assert.equal(isIsoTime('2030-06-01T24:00:00Z'), false);
    assert.equal(isIsoTime('2030-13-01T00:00:00Z'), false);
    assert.equal(isIsoTime('2030-06-01T12:00:00+25:00'), false);
    assert.equal(isIsoTime(42), false);
  });
});
