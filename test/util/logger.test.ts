import { strict as assert } from 'node:assert';
import { formatPretty, wantsPretty } from '../../src/util/logger';

describe('logger: human-readable lines', () => {
  const line = JSON.stringify({
    level: 40,
    time: new Date(2026, 0, 2, 3, 4, 5, 67).getTime(),
    pid: 1,
    hostname: 'h',
    volume: 'vm1',
    msg: 'request rejected',
    queue: 2,
    why: 'outside capacity',
    range: { sector: 8 },
  });

  it('shows local time, level, [volume], message and the other fields as key=value', () => {
    assert.equal(formatPretty(line, false), '03:04:05.067 WARN  [vm1] request rejected queue=2 why="outside capacity" range={"sector":8}\n');
  });

  it('colours the level only when asked (a terminal)', () => {
    assert.ok(formatPretty(line, true).startsWith('03:04:05.067 \u001b[33mWARN \u001b[0m [vm1] '), formatPretty(line, true));
  });

  it('passes a line that is not JSON through', () => {
    assert.equal(formatPretty('plain text', false), 'plain text\n');
  });

  it('is pretty on a terminal only in auto mode, and never for a log file unless forced', () => {
    assert.equal(wantsPretty('json', undefined), false);
    assert.equal(wantsPretty('pretty', '/var/log/x.log'), true);
    assert.equal(wantsPretty('auto', '/var/log/x.log'), false);
    assert.equal(wantsPretty('auto', undefined), process.stderr.isTTY === true);
  });
});
