/**
 * The benchmarks' shared option parsing (src/bench/cli.ts): numbers checked once, unknown
 * options refused, the effective command line with every default, --help's text, and the
 * micro-benchmarks' positional arguments.
 */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { benchPositionals, benchUsage, parseBenchArgs, positiveNumber } from '../../src/bench/cli';

describe('bench options (parseBenchArgs)', () => {
  const script = path.basename(process.argv[1] ?? 'bench.js');

  it('checks every numeric option and prints the command with the defaults it used', () => {
    const a = parseBenchArgs({ runtime: 5, reps: 3, ws: 256 }, { mode: { type: 'string', default: 'fast' } }, ['--reps', '7', '--mode', 'slow']);
    assert.deepEqual(a.num, { runtime: 5, reps: 7, ws: 256 });
    assert.equal(a.values.mode, 'slow');
    assert.equal(a.dir, undefined);
    assert.equal(a.command, `node dist/bench/${script} --mode slow --runtime 5 --reps 7 --ws 256`);
    assert.match(parseBenchArgs({ runtime: 5, reps: 3 }, {}, ['--dir', '/tmp/x']).command, / --dir \/tmp\/x/);
  });

  it('refuses unknown options and numbers that are not positive', () => {
    assert.throws(() => parseBenchArgs({ runtime: 5, reps: 3 }, {}, ['--bogus']), /Unknown option '--bogus'/);
    for (const bad of ['0', '-1', 'x', '']) {
      assert.throws(() => parseBenchArgs({ runtime: 5, reps: 3 }, {}, [`--runtime=${bad}`]), /--runtime must be a positive number/, bad);
    }
  });

  it('--help lists every option with its default', () => {
    const text = benchUsage('nbd-slow.js', {
      dir: { type: 'string' },
      runtime: { type: 'string', default: '5' },
      verbose: { type: 'boolean' },
    });
    assert.deepEqual(text.split('\n'), [
      'Usage: node dist/bench/nbd-slow.js [options]',
      '',
      'Options (default):',
      '  --dir DIR (a new temporary folder, removed at the end)',
      '  --runtime VALUE (5)',
      '  --verbose',
      '  --help',
    ]);
  });

  it('positional arguments: defaults for the missing ones, options and extra arguments refused; numbers checked', () => {
    const usage = 'Usage: node dist/bench/recovery.js [blocks] [workers|auto] [runs]';
    assert.deepEqual(benchPositionals(usage, ['16', 'auto', '3'], ['100']), ['100', 'auto', '3']);
    assert.deepEqual(benchPositionals(usage, ['16', 'auto', '3'], []), ['16', 'auto', '3']);
    assert.throws(() => benchPositionals(usage, ['16'], ['--bogus']), /unknown option '--bogus'\nUsage: /);
    assert.throws(() => benchPositionals(usage, ['16'], ['1', '2']), /at most 1 arguments/);
    assert.equal(positiveNumber('2.5', 'x'), 2.5);
    for (const bad of ['0', '-3', 'abc', '', ' ', undefined, true]) assert.throws(() => positiveNumber(bad, 'blocks'), /blocks must be a positive number/, String(bad));
  });
});
