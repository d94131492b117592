import { strict as assert } from 'node:assert';
import { native } from '../../src/native/binding';
import { normalizeErrorCode, VhostError } from '../../src/native/errors';

describe('native: one error class, normalized codes', () => {
  it('names errno 95 EOPNOTSUPP and errno 11 EAGAIN whoever produced the error', () => {
    assert.equal(new VhostError('x', 'ENOTSUP').code, 'EOPNOTSUPP');
    assert.equal(new VhostError('x', 'EWOULDBLOCK').code, 'EAGAIN');
    assert.equal(normalizeErrorCode('EINVAL'), 'EINVAL');
    assert.equal(new VhostError('x').code, 'EVHOST');
  });

  it('builds the addon errors with the same class', () => {
    assert.throws(
      () => native.sendUnixDatagram('', Buffer.from('READY=1')),
      (e: unknown) => e instanceof VhostError && e.code === 'EINVAL',
    );
    assert.throws(
      () => native.sendUnixDatagram('/nonexistent/notify.sock', Buffer.from('READY=1')),
      (e: unknown) => e instanceof VhostError && e.code === 'ENOENT' && /sendto \/nonexistent\/notify\.sock/.test(e.message),
    );
  });
});
