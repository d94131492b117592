import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseSize, validateConfig } from '../../src/config/config';
import { configFromFlags, CAPABILITIES } from '../../src/cli/main';

function rejects(raw: unknown, pattern: RegExp): void {
  assert.throws(() => validateConfig(raw), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ECONFIG');
    assert.match(err.message, pattern);
    return true;
  });
}

const vol = { name: 'vm1', socketPath: '/tmp/vm1.sock', backing: '/tmp/vm1.img' };

describe('config validation', () => {
  it('fills defaults for a minimal config', () => {
    const c = validateConfig({ volumes: [vol] });
    assert.equal(c.cache, null);
    assert.equal(c.volumes[0]?.cacheMode, 'writethrough');
    assert.equal(c.volumes[0]?.socketMode, 0o600);
    assert.equal(c.volumes[0]?.serial, 'vm1');
    assert.equal(c.volumes[0]?.exclusive, false);
    assert.equal(c.backingTimeoutMs, 60000);
  });

  it('names the bad field', () => {
    rejects({ volumes: [vol, { ...vol, name: 'vm2', logicalBlockSize: 1000 }] }, /^config\.volumes\[1\]\.logicalBlockSize: must be/);
    rejects({ volumes: [{ ...vol, cacheMode: 'fast' }] }, /volumes\[0\]\.cacheMode: must be one of/);
    rejects({ volumes: [{ ...vol, colour: 'red' }] }, /volumes\[0\]\.colour: unknown field/);
    rejects({ volumes: [vol, { ...vol, name: 'other' }] }, /volumes\[1\]: socket "\/tmp\/vm1.sock" already used/);
    rejects({ volumes: [vol, vol] }, /name "vm1" already used/);
    rejects({ volumes: [] }, /config\.volumes: must be a non-empty array/);
    rejects({ volumes: [vol], cache: { path: '/c', blockSize: 3000 } }, /config\.cache\.blockSize: must be a power of two/);
    rejects({ volumes: [{ ...vol, serial: 'x'.repeat(21) }] }, /serial: at most 20 bytes/);
    rejects({ volumes: [{ name: 'a', backing: '/x' }] }, /give exactly one of socketPath and fd/);
    rejects({ volumes: [{ ...vol, exclusive: 'yes' }] }, /volumes\[0\]\.exclusive: must be true or false/);
  });

  it('accepts the example config of examples/', () => {
    const file = path.join(__dirname, '..', '..', '..', 'examples', 'config.json');
    const c = validateConfig(JSON.parse(fs.readFileSync(file, 'utf8')));
    assert.deepEqual(c.volumes.map((v) => v.name), ['vm1-root', 'vm2-data', 'base-ro']);
    assert.equal(c.volumes[1]?.cacheMaxBytes, 2 * 2 ** 30);
    assert.equal(c.cache?.size, 8 * 2 ** 30);
  });

  it('parses sizes with binary suffixes', () => {
    assert.equal(parseSize('64M', 'f'), 64 * 2 ** 20);
    assert.equal(parseSize('10GiB', 'f'), 10 * 2 ** 30);
    assert.equal(parseSize(4096, 'f'), 4096);
    assert.throws(() => parseSize('ten', 'x.size'), /x\.size: must be a size/);
  });

  it('builds the same config from single-volume flags', () => {
    const c = configFromFlags({ socketPath: '/tmp/s', blkFile: '/tmp/f', readOnly: true, logLevel: 'info', cache: '/tmp/c', cacheSize: '64M' });
    assert.equal(c.volumes[0]?.backing, '/tmp/f');
    assert.equal(c.volumes[0]?.readOnly, true);
    assert.equal(c.cache?.size, 64 * 2 ** 20);
    assert.equal(c.cache?.blockSize, 4096);
    assert.equal(c.volumes[0]?.exclusive, false);
    const x = configFromFlags({ socketPath: '/tmp/s', backing: 'nbd://h/e', exclusive: true, logLevel: 'info' });
    assert.equal(x.volumes[0]?.exclusive, true);
  });

  it('prints the capabilities the vhost-user spec defines for block back ends', () => {
    assert.deepEqual(CAPABILITIES, { type: 'block', features: ['read-only', 'blk-file'] });
  });
});
