import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { DEFAULT_SERVER, resolveConfig, resolveToken } from './config.js';
import { CliError } from './errors.js';

void test('flags win over the environment, which wins over the defaults', () => {
  const env = { OSR_SERVER: 'http://env:1/', OSR_TOKEN: 'envtok', OSR_VAULT: 'envv', OSR_DATA: 'envdata' };
  const fromEnv = resolveConfig({}, env, '/work');
  assert.equal(fromEnv.server, 'http://env:1');
  assert.equal(fromEnv.token, 'envtok');
  assert.equal(fromEnv.vault, 'envv');
  assert.equal(fromEnv.dataDir, '/work/envdata');
  const fromFlags = resolveConfig(
    { server: 'http://flag:2', token: 'flagtok', vault: 'flagv', data: '/abs', json: true },
    env,
    '/work',
  );
  assert.deepEqual(fromFlags, {
    server: 'http://flag:2',
    token: 'flagtok',
    vault: 'flagv',
    dataDir: '/abs',
    json: true,
  });
  const defaults = resolveConfig({}, {}, '/work');
  assert.deepEqual(defaults, {
    server: DEFAULT_SERVER,
    token: undefined,
    vault: 'default',
    dataDir: '/work/.osr',
    json: false,
  });
});

void test('empty values count as not given', () => {
  const c = resolveConfig({ token: '' }, { OSR_TOKEN: '  ', OSR_VAULT: '' }, '/w');
  assert.equal(c.token, undefined);
  assert.equal(c.vault, 'default');
});

void test('the token is read from <data>/admin-token when none is given', () => {
  const dir = mkdtempSync(join(tmpdir(), 'osr-cli-config-'));
  try {
    const config = resolveConfig({ data: dir }, {}, '/');
    assert.throws(
      () => resolveToken(config),
      (e: unknown) =>
        e instanceof CliError && e.code === 'NO_TOKEN' && e.message.includes(join(dir, 'admin-token')),
    );
    writeFileSync(join(dir, 'admin-token'), 'secret-token\n', { mode: 0o600 });
    assert.equal(resolveToken(config), 'secret-token');
    assert.equal(resolveToken({ ...config, token: 'given' }), 'given');
    writeFileSync(join(dir, 'admin-token'), '\n');
    assert.throws(
      () => resolveToken(config),
      (e: unknown) => e instanceof CliError && e.code === 'NO_TOKEN',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
