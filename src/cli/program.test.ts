import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { CommanderError } from 'commander';
import { CliError } from './errors.js';
import { buildProgram, describeFailure } from './program.js';

void test('every verb of DESIGN §5 is a command, with --json available everywhere', () => {
  const program = buildProgram();
  const names = program.commands.map((c) => c.name());
  for (const verb of [
    'up',
    'server',
    'agent',
    'vault',
    'key',
    'site',
    'container',
    'machine',
    'policy',
    'network-map',
    'protect',
    'item',
    'point',
    'failover',
    'test-cleanup',
    'change-point',
    'commit',
    'cancel-failover',
    'reprotect',
    'unprotect',
    'repair',
    'plan',
    'job',
    'event',
    'nbd',
  ]) {
    assert.ok(names.includes(verb), `missing ${verb}`);
  }
  assert.ok(program.options.some((o) => o.long === '--json'));
  const job = program.commands.find((c) => c.name() === 'job');
  assert.deepEqual(job?.commands.map((c) => c.name()).sort(), ['cancel', 'list', 'resume', 'show', 'watch']);
});

void test('an API error is one line with its code, a validation refusal too (details with OSR_DEBUG); FORCE_REQUIRED adds the warning and the --force hint', () => {
  const plain = describeFailure(
    new CliError('POLICY_INVALID', 'retention\ntoo long', { status: 400 }),
    false,
  );
  assert.deepEqual(plain, { lines: ['osr: retention too long (POLICY_INVALID)'], exitCode: 1 });
  const force = describeFailure(
    new CliError('FORCE_REQUIRED', 'cancelling stops replication', { status: 409 }),
    false,
  );
  assert.equal(force.exitCode, 1);
  assert.equal(force.lines[0], 'osr: cancelling stops replication (FORCE_REQUIRED)');
  assert.match(force.lines.join('\n'), /no longer replicate and will need repair/);
  assert.match(force.lines.join('\n'), /repeat the command with --force/);
  const refusal = new CliError('VALIDATION_FAILED', 'body.name: too long', {
    details: [{ path: 'body.name', message: 'too long' }],
  });
  assert.deepEqual(describeFailure(refusal, false).lines, ['osr: body.name: too long (VALIDATION_FAILED)']);
  assert.match(describeFailure(refusal, true).lines[1] ?? '', /^osr: details: .*body\.name/);
});

void test('other failures: usage exits 2, help exits 0 silently, unknown errors are one line, OSR_DEBUG adds the stack', () => {
  assert.deepEqual(describeFailure(new CliError('USAGE', 'x'), false).exitCode, 2);
  assert.deepEqual(describeFailure(new CliError('UNREACHABLE', 'x'), false).exitCode, 4);
  assert.deepEqual(describeFailure(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)'), false), {
    lines: [],
    exitCode: 0,
  });
  assert.equal(describeFailure(new CommanderError(1, 'commander.unknownOption', 'x'), false).exitCode, 2);
  const plain = describeFailure(new Error('boom'), false);
  assert.deepEqual(plain, { lines: ['osr: boom (ERROR)'], exitCode: 1 });
  const errno = describeFailure(Object.assign(new Error('no such file'), { code: 'ENOENT' }), false);
  assert.deepEqual(errno.lines, ['osr: no such file (ENOENT)']);
  const debug = describeFailure(new Error('boom'), true);
  assert.equal(debug.lines.length, 2);
  assert.match(debug.lines[1] ?? '', /at /);
});
