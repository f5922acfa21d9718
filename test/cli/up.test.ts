/**
 * `osr up` and `osr server` as processes: they start, answer, stop cleanly on
 * SIGINT/SIGTERM with exit code 0, and a second `osr up` on the same data folder keeps
 * the same admin token and data.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { cleanEnv, runOsr, spawnOsr } from './harness.js';
import type { RunningOsr } from './harness.js';

let tmp: string;
const started: RunningOsr[] = [];

before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'osr-cli-up-'));
});

after(async () => {
  for (const p of started) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill('SIGKILL');
      await p.exited;
    }
  }
  rmSync(tmp, { recursive: true, force: true });
});

function start(args: string[], cwd: string): RunningOsr {
  const p = spawnOsr(args, { cwd, env: cleanEnv() });
  started.push(p);
  return p;
}

/** Starts `osr up --port 0` in `cwd`; resolves with its URL and the token it printed. */
async function up(cwd: string): Promise<{ p: RunningOsr; url: string; token: string }> {
  const p = start(['up', '--port', '0'], cwd);
  const [, url] = await p.waitFor(/osr is up at (http:\/\/127\.0\.0\.1:\d+)\n/);
  const [, token] = await p.waitFor(/Admin token:\s+(\S+)\s/);
  assert.ok(url && token);
  return { p, url, token };
}

async function stop(p: RunningOsr, signal: NodeJS.Signals): Promise<void> {
  p.child.kill(signal);
  const { code, signal: killedBy } = await p.exited;
  assert.equal(killedBy, null, `ended by ${killedBy}; stderr: ${p.stderr()}`);
  assert.equal(code, 0, `exit ${code}; stderr: ${p.stderr()}`);
}

void test('osr up starts the control plane with the default vault, answers, and stops cleanly on SIGINT', async () => {
  const cwd = mkdtempSync(join(tmp, 'up-'));
  const first = await up(cwd);
  const health = await fetch(`${first.url}/api/v1/health`);
  assert.equal(health.status, 200);
  assert.equal(((await health.json()) as { status: string }).status, 'ok');
  const tokenFile = join(cwd, '.osr', 'admin-token');
  assert.equal(readFileSync(tokenFile, 'utf8').trim(), first.token);
  assert.equal(statSync(tokenFile).mode & 0o777, 0o600);
  assert.match(first.p.stdout(), /osr .*vault list/);

  // The CLI run from the same folder finds the token in ./.osr by itself.
  const vaults = await runOsr(['--server', first.url, 'vault', 'list', '--json'], { cwd, env: cleanEnv() });
  assert.equal(vaults.code, 0, vaults.stderr);
  const names = (JSON.parse(vaults.stdout) as { items: { name: string }[] }).items.map((v) => v.name);
  assert.deepEqual(names, ['default']);
  const site = await runOsr(['--server', first.url, 'site', 'create', 'kept', '--kind', 'onprem'], {
    cwd,
    env: cleanEnv(),
  });
  assert.equal(site.code, 0, site.stderr);

  await stop(first.p, 'SIGINT');
  assert.match(first.p.stdout(), /osr stopped/);

  const second = await up(cwd);
  assert.equal(second.token, first.token, 'a second osr up on the same data keeps the token');
  const sites = await runOsr(['--server', second.url, 'site', 'list', '--json'], { cwd, env: cleanEnv() });
  assert.equal(sites.code, 0, sites.stderr);
  assert.deepEqual(
    (JSON.parse(sites.stdout) as { items: { name: string }[] }).items.map((s) => s.name).sort(),
    ['kept', 'primary', 'recovery'],
    'and its data (next to the two local sites osr up makes)',
  );
  await stop(second.p, 'SIGTERM');
});

void test('osr server --data prints its URL and token file, serves, and exits 0 on SIGTERM', async () => {
  const data = join(tmp, 'server-data');
  const p = start(['server', '--data', data, '--port', '0', '--log-level', 'silent'], tmp);
  const [, url] = await p.waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)\n/);
  const [, tokenFile] = await p.waitFor(/Admin token: (\S+)\n/);
  assert.ok(url);
  assert.equal(tokenFile, join(data, 'admin-token'));
  const r = await runOsr(['--server', url, '--data', data, 'vault', 'show', 'default', '--json'], {
    env: cleanEnv(),
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as { name: string }).name, 'default');
  await stop(p, 'SIGTERM');
});
