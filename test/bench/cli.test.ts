/**
 * The benchmarks' shared option parsing (src/bench/cli.ts): numbers checked once, unknown
 * options refused, the effective command line with every default, and --help's text.
 */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { benchUsage, parseBenchArgs } from '../../src/bench/cli';

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
});
