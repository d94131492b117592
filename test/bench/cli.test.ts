/**
 * The benchmarks' shared option parsing (src/bench/cli.ts): numbers checked once, unknown
 * options refused, the effective command line with every default, --help's text, and the
 * micro-benchmarks' positional arguments; and every script of bench/ run with --help and -h (it prints
 * its usage and starts nothing) and with an unknown option (refused).
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
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

describe('every benchmark script (dist/bench/*.js)', function () {
  this.timeout(60_000);
  const dir = path.resolve(__dirname, '../../bench');
  const scripts = fs.readdirSync(dir).filter((f) => f.endsWith('.js'));
  const run = (script: string, arg: string): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, [path.join(dir, script), arg], { timeout: 30_000 }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
      });
    });

  it('answers --help (and -h) with its usage and exits 0 without starting work; refuses an unknown option', async () => {
    assert.ok(scripts.length >= 20, `bench scripts found: ${scripts.join(', ')}`);
    await Promise.all(
      scripts.map(async (script) => {
        const help = await run(script, '--help');
        assert.equal(help.code, 0, `${script} --help: ${help.stderr}`);
        assert.match(help.stdout, /^usage: /i, `${script} --help printed its usage`);
        const h = await run(script, '-h');
        assert.equal(h.stdout, help.stdout, `${script} -h prints what --help prints`);
        assert.equal(help.stdout.split('\n').length < 40, true, `${script} --help printed only its usage`);
        const bad = await run(script, '--no-such-option');
        assert.notEqual(bad.code, 0, `${script} --no-such-option was refused`);
        assert.match(bad.stderr, /unknown option '--no-such-option'/i, script);
      }),
    );
  });
});
