import { strict as assert } from 'node:assert';
import { parseListenAddress, validateConfig } from '../../src/config/config';
import { VhostError } from '../../src/native/errors';

describe('config: metricsListen (HOST:PORT)', () => {
  it('parses IPv4, names and bracketed IPv6', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:9100', 'f'), { host: '127.0.0.1', port: 9100 });
    assert.deepEqual(parseListenAddress('localhost:0', 'f'), { host: 'localhost', port: 0 });
    assert.deepEqual(parseListenAddress('[::1]:9100', 'f'), { host: '::1', port: 9100 });
  });

  it('rejects anything else, naming the field', () => {
    for (const bad of ['9100', '127.0.0.1', '::1:9100', '127.0.0.1:65536', 'host:port', 9100]) {
      assert.throws(
        () => validateConfig({ metricsListen: bad, volumes: [{ name: 'v', socketPath: '/s', backing: '/b' }] }),
        (e: unknown) => e instanceof VhostError && e.code === 'ECONFIG' && /^config\.metricsListen: /.test(e.message),
        String(bad),
      );
    }
  });
});
