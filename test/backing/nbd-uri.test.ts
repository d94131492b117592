import * as assert from 'node:assert/strict';
import { VhostError } from '../../src/native/errors';
import * as fs from 'node:fs';
import { describeNbdAddress, parseNbdUri } from '../../src/backing/nbd/uri';
import { isNbdUri, openBackingStore } from '../../src/backing/open';
import { validateVolume } from '../../src/config/config';
import { createIoEngine } from '../../src/io/index';
import { silentLogger } from '../../src/util/logger';
import { tmpDir } from '../support/tmp';

function rejects(uri: string, pattern: RegExp): void {
  assert.throws(
    () => parseNbdUri(uri),
    (e: unknown) => e instanceof VhostError && e.code === 'EINVAL' && pattern.test(e.message),
  );
}

describe('NBD URI parsing', () => {
  it('parses nbd://HOST:PORT/EXPORT', () => {
    assert.deepEqual(parseNbdUri('nbd://example.com:10900/disk0'), {
      transport: 'tcp',
      host: 'example.com',
      port: 10900,
      exportName: 'disk0',
    });
  });

  it('defaults the port to 10809 and the export to the empty name', () => {
    assert.deepEqual(parseNbdUri('nbd://127.0.0.1'), { transport: 'tcp', host: '127.0.0.1', port: 10809, exportName: '' });
    assert.deepEqual(parseNbdUri('nbd://127.0.0.1/'), { transport: 'tcp', host: '127.0.0.1', port: 10809, exportName: '' });
  });

  it('accepts bracketed IPv6 hosts, with and without a port', () => {
    assert.deepEqual(parseNbdUri('nbd://[::1]:1234/x'), { transport: 'tcp', host: '::1', port: 1234, exportName: 'x' });
    assert.deepEqual(parseNbdUri('nbd://[fe80::1]/'), { transport: 'tcp', host: 'fe80::1', port: 10809, exportName: '' });
  });

  it('percent-decodes the export name and strips only the first slash', () => {
    assert.equal(parseNbdUri('nbd://h/pool%2Fimage%20one').exportName, 'pool/image one');
    assert.equal(parseNbdUri('nbd://h//abs').exportName, '/abs');
    assert.equal(parseNbdUri('NBD://h/a/b').exportName, 'a/b');
  });

  it('parses nbd+unix:///EXPORT?socket=PATH', () => {
    assert.deepEqual(parseNbdUri('nbd+unix:///vol?socket=/run/nbd.sock'), {
      transport: 'unix',
      socketPath: '/run/nbd.sock',
      exportName: 'vol',
    });
    assert.deepEqual(parseNbdUri('nbd+unix://?socket=/tmp/a%20b.sock'), {
      transport: 'unix',
      socketPath: '/tmp/a b.sock',
      exportName: '',
    });
  });

  it('rejects malformed URIs with a message naming the problem', () => {
    rejects('/tmp/x.sock', /expected nbd:\/\//);
    rejects('http://h/x', /unsupported scheme 'http'/);
    rejects('nbds://h/x', /TLS/);
    rejects('nbd:///x', /host is missing/);
    rejects('nbd://h:0/x', /port 0 is out of range/);
    rejects('nbd://h:70000/x', /port 70000 is out of range/);
    rejects('nbd://h:abc/x', /port 'abc' is not a number/);
    rejects('nbd://[::1/x', /unterminated '\['/);
    rejects('nbd://user@h/x', /user names/);
    rejects('nbd://h/x?socket=/s', /only valid with nbd\+unix/);
    rejects('nbd://h/x?tls=on', /unsupported query parameter 'tls'/);
    rejects('nbd+unix:///x', /needs the socket path/);
    rejects('nbd+unix://host/x?socket=/s', /takes no host/);
    rejects('nbd+unix:///x?socket=/s&socket=/t', /given twice/);
    rejects('nbd://h/%zz', /malformed percent-escape/);
    rejects(`nbd://h/${'a'.repeat(4097)}`, /longer than 4096 bytes/);
  });

  it('describes addresses for logs', () => {
    assert.equal(describeNbdAddress(parseNbdUri('nbd://[::1]:5/e')), "[::1]:5 'e'");
    assert.equal(describeNbdAddress(parseNbdUri('nbd+unix:///?socket=/s')), 'unix:/s (default export)');
  });

  it('sends every nbd* scheme to the parser: nbds:// is rejected, never taken as a file path', async () => {
    for (const uri of ['nbds://h/x', 'nbds+unix:///x?socket=/s', 'NBDS://h/x', 'nbd+vsock://2/x', 'NBD://h/x']) {
      assert.ok(isNbdUri(uri), uri);
    }
    assert.ok(!isNbdUri('/var/lib/images/nbd.img') && !isNbdUri('nbd.img'));
    const dir = tmpDir('nbds');
    const cwd = process.cwd();
    const engine = createIoEngine('threadpool');
    try {
      // A relative "nbds://h/x" file would be created under the working directory.
      process.chdir(dir);
      for (const [uri, why] of [
        ['nbds://h/x', /scheme 'nbds' needs TLS/],
        ['nbds+unix:///x?socket=/s', /scheme 'nbds\+unix' needs TLS/],
        ['nbd+vsock://2/x', /unsupported scheme 'nbd\+vsock'/],
      ] as const) {
        const cfg = validateVolume({ name: 'v', socketPath: '/tmp/v.sock', backing: uri, size: '1M' }, 'volume');
        await assert.rejects(openBackingStore(cfg, { engine, backingTimeoutMs: 1000, logger: silentLogger }), (e: unknown) => {
          assert.ok(e instanceof VhostError && e.code === 'EINVAL' && why.test(e.message), String(e));
          return true;
        });
      }
      assert.deepEqual(fs.readdirSync(dir), [], 'no file created');
    } finally {
      process.chdir(cwd);
      engine.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
