import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseSize, validateConfig } from '../../src/config/config';
import { configFromFlags, CAPABILITIES } from '../../src/cli/main';
import { native } from '../../src/native/binding';

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
    assert.equal(c.flushOnStop, false);
  });

  it('accepts cacheMode writeback and flushOnStop', () => {
    const c = validateConfig({ volumes: [{ ...vol, cacheMode: 'writeback' }], flushOnStop: true });
    assert.equal(c.volumes[0]?.cacheMode, 'writeback');
    assert.equal(c.flushOnStop, true);
  });

  it('--discard-dirty names volumes of the command line only: an unknown name is refused, a config file cannot carry it', () => {
    const c = configFromFlags({ socketPath: '/tmp/s', backing: '/tmp/f', name: 'vm1', discardDirty: ['vm1'], logLevel: 'info', cache: '/tmp/c', cacheSize: '64M' });
    assert.deepEqual(c.discardDirty, ['vm1']);
    assert.equal(configFromFlags({ socketPath: '/tmp/s', backing: '/tmp/f', logLevel: 'info' }).discardDirty, undefined);
    assert.throws(() => configFromFlags({ socketPath: '/tmp/s', backing: '/tmp/f', name: 'vm1', discardDirty: ['vm2'], logLevel: 'info' }), /--discard-dirty: no volume named "vm2"/);
    assert.throws(() => validateConfig({ volumes: [vol], discardDirty: ['a'] }), /config\.discardDirty: unknown field/);
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
    rejects({ volumes: [{ ...vol, sequentialCutoff: '4X' }] }, /volumes\[0\]\.sequentialCutoff: must be a size/);
  });

  it('refuses what the cache cannot key: more than 256 volumes, a volume over 2^32 cache blocks', () => {
    const vols = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `v${i}`, socketPath: `/tmp/v${i}.sock`, backing: `/tmp/v${i}.img` }));
    const cache = { path: '/c' };
    assert.equal(validateConfig({ volumes: vols(256), cache }).volumes.length, 256);
    // Without a cache nothing is keyed.
    assert.equal(validateConfig({ volumes: vols(257) }).volumes.length, 257);
    rejects({ volumes: vols(257), cache }, /^config\.volumes: 257 volumes with a cache: a cache keys at most 256 volumes/);
    const tib16 = 2 ** 32 * 4096;
    assert.equal(validateConfig({ volumes: [{ ...vol, size: tib16 }], cache }).volumes[0]?.size, tib16);
    rejects({ volumes: [{ ...vol, size: tib16 + 4096 }], cache }, /^config\.volumes\[0\]\.size: 17592186048512 bytes exceed the 16 TiB a cache of 4096-byte blocks keys per volume/);
    rejects({ volumes: [vol, { ...vol, name: 'b', socketPath: '/b', backingLength: '17T' }], cache }, /^config\.volumes\[1\]\.backingLength: .* 16 TiB/);
    // A larger cache block keys a larger volume.
    assert.equal(validateConfig({ volumes: [{ ...vol, size: '17T' }], cache: { ...cache, blockSize: '8k' } }).cache?.blockSize, 8192);
  });

  it('sequential cut-off: off by default, a size per volume', () => {
    const c = validateConfig({ volumes: [{ name: 'a', socketPath: '/a', backing: '/x' }, { name: 'b', socketPath: '/b', backing: '/y', sequentialCutoff: '4M' }] });
    assert.deepEqual(c.volumes.map((v) => v.sequentialCutoff), [0, 4 * 2 ** 20]);
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

  it('validates who may connect: socketOwner (names or ids) and allowUids, from the config and from flags', () => {
    const root = validateConfig({ volumes: [{ ...vol, socketOwner: 'root:root', allowUids: [0, 107, 107] }] }).volumes[0];
    assert.deepEqual(root?.socketOwner, { spec: 'root:root', uid: 0, gid: 0 });
    assert.deepEqual(root?.allowUids, [0, 107]);
    assert.deepEqual(validateConfig({ volumes: [{ ...vol, socketOwner: '107' }] }).volumes[0]?.socketOwner, { spec: '107', uid: 107, gid: -1 });
    rejects({ volumes: [{ ...vol, socketOwner: 'no-such-user-vbc' }] }, /volumes\[0\]\.socketOwner: no user named "no-such-user-vbc"/);
    rejects({ volumes: [{ ...vol, socketOwner: 'root:no-such-group-vbc' }] }, /socketOwner: no group named/);
    rejects({ volumes: [{ ...vol, socketOwner: 'a:b:c' }] }, /socketOwner: must be USER or USER:GROUP/);
    rejects({ volumes: [{ name: 'a', fd: 3, backing: '/x', socketOwner: 'root' }] }, /socketOwner: needs socketPath/);
    rejects({ volumes: [{ ...vol, allowUids: [] }] }, /allowUids: must be a non-empty array/);
    rejects({ volumes: [{ ...vol, allowUids: [-1] }] }, /allowUids: must be a non-empty array/);
    rejects({ volumes: [{ ...vol, allowUids: ['107'] }] }, /allowUids: must be a non-empty array/);
    const f = configFromFlags({ socketPath: '/tmp/s', backing: '/tmp/f', logLevel: 'info', socketOwner: '0:0', allowUid: ['107,108', '0'] }).volumes[0];
    assert.deepEqual(f?.allowUids, [107, 108, 0]);
    assert.deepEqual(f?.socketOwner, { spec: '0:0', uid: 0, gid: 0 });
    assert.throws(() => configFromFlags({ socketPath: '/tmp/s', backing: '/tmp/f', logLevel: 'info', allowUid: ['qemu'] }), /--allow-uid: expected a whole number/);
  });

  it('bounds queues with the limits the native back end exports', () => {
    rejects({ volumes: [{ ...vol, numQueues: native.limits.maxQueues + 1 }] }, new RegExp(`numQueues: must be an integer in 1\\.\\.${native.limits.maxQueues}`));
    rejects({ volumes: [{ ...vol, queueSize: native.limits.maxQueueSize * 2 }] }, /queueSize: must be an integer in 2\.\.32768/);
    rejects({ volumes: [{ ...vol, queueSize: 1 }] }, /queueSize: must be an integer in 2\.\./);
  });

  it('prints the capabilities the vhost-user spec defines for block back ends', () => {
    assert.deepEqual(CAPABILITIES, { type: 'block', features: ['read-only', 'blk-file'] });
  });
});
