/**
 * Daemon options that had no test, each run in-process and driven by our front end with
 * self-verifying data (written, read back, read again from the cache, and from the image file):
 * `ioEngine: threadpool` and the io_uring -> threadpool fallback, `direct` (O_DIRECT backing
 * files), the cache's `direct` (O_DIRECT cache device I/O), 4 KiB logical blocks, and cache
 * block sizes other than 4 KiB.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateConfig } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { createIoEngine } from '../../src/io';
import { VhostError } from '../../src/native/errors';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { silentLogger } from '../../src/util/logger';
import { stamped } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BLOCK = 4096;

describe('daemon options (in-process, our front end)', function () {
  this.timeout(60_000);
  let dir: string;
  let daemon: Daemon | undefined;
  let fe: VhostUserFrontend | undefined;

  beforeEach(() => {
    // O_DIRECT needs a real file system (os.tmpdir() here is ext4, not tmpfs).
    dir = tmpDir('options');
  });

  afterEach(async () => {
    fe?.close();
    fe = undefined;
    if (daemon !== undefined) await daemon.shutdown();
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function run(volume: Record<string, unknown>, top: Record<string, unknown> = {}, cache: Record<string, unknown> = {}): Promise<VhostUserFrontend> {
    const config = validateConfig({
      cache: { path: path.join(dir, 'cache.img'), size: '8M', ...cache },
      volumes: [{ name: 'v', socketPath: path.join(dir, 'v.sock'), backing: path.join(dir, 'v.img'), size: '16M', ...volume }],
      ...top,
    });
    daemon = await Daemon.start(config, silentLogger);
    fe = await VhostUserFrontend.open(path.join(dir, 'v.sock'), { queueSize: 64, memorySize: 16 << 20 });
    return fe;
  }

  /** Writes blocks, reads them twice (miss, then hit), and checks the image file. */
  async function roundTrip(f: VhostUserFrontend, blocks: number, gen: number, len = BLOCK): Promise<void> {
    const q = f.ring(0);
    for (let b = 0; b < blocks; b++) assert.equal((await q.write((b * len) / 512, stamped(b * len, len, gen))).status, VIRTIO_BLK_S_OK);
    for (let pass = 0; pass < 2; pass++) {
      for (let b = 0; b < blocks; b++) {
        const r = await q.read((b * len) / 512, len);
        assert.equal(r.status, VIRTIO_BLK_S_OK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(b * len, len, gen)), `block ${b} pass ${pass}`);
      }
    }
    assert.equal((await q.flush()).status, VIRTIO_BLK_S_OK);
    const img = fs.readFileSync(path.join(dir, 'v.img'));
    for (let b = 0; b < blocks; b++) assert.ok(img.subarray(b * len, (b + 1) * len).equals(stamped(b * len, len, gen)), `image block ${b}`);
  }

  it('ioEngine threadpool serves and caches', async () => {
    const f = await run({}, { ioEngine: 'threadpool' });
    assert.equal(daemon!.stats().ioEngine, 'threadpool');
    await roundTrip(f, 16, 1);
    assert.ok((daemon!.stats().cache?.readHits ?? 0) >= 16);
  });

  it('io_uring unavailable: auto falls back to the threadpool, io_uring refuses with the probe errno', () => {
    const unavailable = () => ({ supported: false, code: 'EPERM', reason: 'io_uring disabled by sysctl' });
    const e = createIoEngine('auto', {}, unavailable);
    assert.equal(e.kind, 'threadpool');
    e.close();
    assert.throws(
      () => createIoEngine('io_uring', {}, unavailable),
      (err: unknown) => err instanceof VhostError && err.code === 'EPERM' && /sysctl/.test(err.message),
    );
  });

  it('direct: O_DIRECT backing file through the daemon (unaligned guest buffers bounce)', async () => {
    const f = await run({ direct: true });
    await roundTrip(f, 16, 2);
    // A 512-byte write inside a cached block: read-modify-write on the backing file, the block
    // is invalidated, and reads return the merged data.
    const q = f.ring(0);
    const small = Buffer.alloc(512, 0x77);
    assert.equal((await q.write(3, small)).status, VIRTIO_BLK_S_OK);
    const want = stamped(0, BLOCK, 2);
    small.copy(want, 1536);
    const r = await q.read(0, BLOCK);
    assert.ok(Buffer.from(r.data as Uint8Array).equals(want));
  });

  /** Open-file flags (octal, /proc/self/fdinfo) of every descriptor of this process open on `file`. */
  function openFlags(file: string): number[] {
    const real = fs.realpathSync(file);
    const out: number[] = [];
    for (const fd of fs.readdirSync('/proc/self/fd')) {
      let target: string;
      try {
        target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        continue;
      }
      if (target !== real) continue;
      const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (m !== null) out.push(parseInt(m[1] as string, 8));
    }
    return out;
  }

  it('cache direct: segments read and written with O_DIRECT; device hits, unaligned reads and a warm restart stay exact', async () => {
    const blocks = 2048; // 8 MiB: more than the 8 RAM segment buffers hold, so hits come from the device
    const cache = { size: '32M', direct: true };
    let f = await run({ size: '8M' }, {}, cache);
    const direct = fs.constants.O_DIRECT;
    assert.ok(openFlags(path.join(dir, 'cache.img')).some((fl) => (fl & direct) !== 0), 'the log has an O_DIRECT descriptor');
    let q = f.ring(0);
    for (let b = 0; b < blocks; b += 16) {
      const data = Buffer.concat(Array.from({ length: 16 }, (_, k) => stamped((b + k) * BLOCK, BLOCK, 6)));
      assert.equal((await q.write(b * 8, data)).status, VIRTIO_BLK_S_OK);
    }
    const check = async (): Promise<void> => {
      for (let b = 0; b < blocks; b++) {
        const r = await q.read(b * 8, BLOCK);
        assert.equal(r.status, VIRTIO_BLK_S_OK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(b * BLOCK, BLOCK, 6)), `block ${b}`);
      }
      // 512 bytes at an odd sector of blocks held on the device: an unaligned device read bounces.
      for (const b of [1, 100, 700]) {
        const r = await q.read(b * 8 + 3, 512);
        assert.equal(r.status, VIRTIO_BLK_S_OK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(b * BLOCK + 1536, 512, 6)), `block ${b} sector 3`);
      }
    };
    await check();
    const s1 = daemon!.stats().cache!;
    assert.ok(s1.storageHits >= 1000, `device hits: ${s1.storageHits}`);
    assert.equal(s1.checksumErrors, 0);
    // Warm restart: every block is still a hit, from the device.
    fe?.close();
    fe = undefined;
    await daemon!.shutdown();
    daemon = undefined;
    f = await run({ size: '8M' }, {}, cache);
    q = f.ring(0);
    await check();
    const s2 = daemon!.stats().cache!;
    assert.equal(s2.reads - s2.readHits, 0, 'warm: no misses');
    assert.ok(s2.storageHits >= blocks, `device hits after restart: ${s2.storageHits}`);
  });

  it('4 KiB logical blocks: config says so, 4 KiB I/O works, a 512 B request fails alone', async () => {
    const f = await run({ logicalBlockSize: 4096 });
    assert.equal(f.config?.blkSize, 4096);
    await roundTrip(f, 8, 3);
    const q = f.ring(0);
    assert.equal((await q.write(1, Buffer.alloc(512))).status, VIRTIO_BLK_S_IOERR);
    assert.equal((await q.read(8, 512)).status, VIRTIO_BLK_S_IOERR);
    const r = await q.read(8, BLOCK);
    assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(BLOCK, BLOCK, 3)), 'the failed requests changed nothing');
  });

  for (const blockSize of ['16K', '64K']) {
    it(`cache block size ${blockSize}: 4 KiB guest writes and partial overwrites stay exact`, async () => {
      const f = await run({}, {}, { blockSize, segmentSize: '256K' });
      await roundTrip(f, 32, 4);
      // Overwrite one 4 KiB piece of a cached cache block; neighbours must stay intact.
      const q = f.ring(0);
      assert.equal((await q.write(5 * 8, stamped(5 * BLOCK, BLOCK, 5))).status, VIRTIO_BLK_S_OK);
      for (let b = 0; b < 32; b++) {
        const r = await q.read(b * 8, BLOCK);
        assert.ok(Buffer.from(r.data as Uint8Array).equals(stamped(b * BLOCK, BLOCK, b === 5 ? 5 : 4)), `block ${b}`);
      }
      assert.ok((daemon!.stats().cache?.readHits ?? 0) > 0, 'the cache served hits');
    });
  }
});
