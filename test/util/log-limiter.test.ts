import { strict as assert } from 'node:assert';
import pino from 'pino';
import { LogLimiter } from '../../src/util/log-limiter';

describe('LogLimiter', () => {
  it('passes perInterval lines per interval and reports how many it dropped on the next one', () => {
    const lines: { msg: string; suppressed?: number }[] = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => lines.push(JSON.parse(l) as { msg: string }) });
    let now = 0;
    const lim = new LogLimiter(log, 3, 1000, () => now);
    for (let i = 0; i < 10; i++) lim.warn({ i }, 'bad request');
    assert.equal(lines.length, 3);
    now = 1000;
    lim.error({}, 'bad request');
    assert.equal(lines.length, 4);
    assert.equal(lines[3]?.suppressed, 7, 'the 7 dropped lines are counted on the next line');
    lim.warn({}, 'bad request');
    assert.equal(lines[4]?.suppressed, undefined);
  });
});
