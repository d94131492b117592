import { strict as assert } from 'node:assert';
import { validateConfig } from '../../src/config/config';
import { applyActivatedSockets, takeActivatedSockets } from '../../src/daemon/systemd';

describe('systemd socket activation (LISTEN_FDS)', () => {
  it('maps fds from 3 on to LISTEN_FDNAMES and removes the variables', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: '42', LISTEN_FDS: '3', LISTEN_FDNAMES: 'vm1:vm2:', OTHER: 'x' };
    assert.deepEqual([...takeActivatedSockets(env, 42)], [['vm1', 3], ['vm2', 4], ['unknown', 5]]);
    assert.deepEqual(env, { OTHER: 'x' });
  });

  it('ignores sockets meant for another process (LISTEN_PID) and malformed counts', () => {
    assert.equal(takeActivatedSockets({ LISTEN_PID: '41', LISTEN_FDS: '1', LISTEN_FDNAMES: 'vm1' }, 42).size, 0);
    assert.equal(takeActivatedSockets({ LISTEN_PID: '42', LISTEN_FDS: 'x' }, 42).size, 0);
    assert.equal(takeActivatedSockets({ LISTEN_FDS: '1' }, 42).size, 0);
  });

  it('gives a volume the socket named after it in place of its socket path', () => {
    const config = validateConfig({
      volumes: [
        { name: 'vm1', socketPath: '/run/vm1.sock', backing: '/img/1' },
        { name: 'vm2', socketPath: '/run/vm2.sock', backing: '/img/2' },
      ],
    });
    applyActivatedSockets(config, new Map([['vm2', 3], ['other', 4]]));
    assert.deepEqual(config.volumes.map((v) => [v.name, v.socketPath, v.fd]), [
      ['vm1', '/run/vm1.sock', undefined],
      ['vm2', undefined, 3],
    ]);
    assert.ok(!('socketPath' in (config.volumes[1] as object)));
  });
});
