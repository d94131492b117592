/**
 * Issue 10 reproductions through the in-process daemon and our front end, with stamped data
 * (volume, block, generation): the cache never serves what the backing store does not hold.
 *   - files changed while the daemon was down (dd with and without touch -r, cp, rm +
 *     re-create on the same inode, truncate + extend);
 *   - writes made while caching was off for a volume (cacheMode none), within one run and
 *     across restarts;
 *   - NBD exports and block devices (loop device) rewritten while the daemon was down: the
 *     warm-start sample verification drops the blocks, `exclusive` skips it;
 *   - two volumes on one backing store are refused.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CachedStore } from '../../src/cache/cached-store';
import { validateConfig, type DaemonConfig } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import type { VhostError } from '../../src/native/errors';
import { silentLogger } from '../../src/util/logger';
import { startQemuNbd, unixUri, type ServerProcess } from '../backing/nbd-servers';
import { BLOCK, checkBlocks, range, readBlocks, stamp, writeBlocks } from './helpers';
import { tmpDir } from '../support/tmp';

const BLOCKS = range(64);

/** Writes generation `gen` of blocks `blocks` of volume `vol` straight into a file (offline). */
function writeOffline(file: string, vol: string, blocks: number[], gen: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    for (const b of blocks) fs.writeSync(fd, stamp(vol, b, gen), 0, BLOCK, b * BLOCK);
  } finally {
    fs.closeSync(fd);
  }
}

/** Every block read through the front end equals the backing file's current content. */
async function matchesBacking(fe: VhostUserFrontend, file: string, blocks: number[]): Promise<void> {
  const got = await readBlocks(fe, blocks);
  const fd = fs.openSync(file, 'r');
  try {
    got.forEach((b, i) => {
      const want = Buffer.alloc(BLOCK);
      fs.readSync(fd, want, 0, BLOCK, (blocks[i] as number) * BLOCK);
      assert.ok(b.equals(want), `block ${blocks[i]}: the guest read ${JSON.stringify(b.subarray(0, 12).toString('latin1'))}, the backing store holds ${JSON.stringify(want.subarray(0, 12).toString('latin1'))}`);
    });
  } finally {
    fs.closeSync(fd);
  }
}

describe('cache trust: no stale data after changes made behind the cache (issue 10)', function () {
  this.timeout(60_000);
  let dir: string;
  let daemon: Daemon | undefined;
  const open: VhostUserFrontend[] = [];
  const servers: ServerProcess[] = [];

  function volumeConfig(name: string, backing: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { name, socketPath: path.join(dir, `${name}.sock`), backing, numQueues: 1, ...extra };
  }

  function daemonConfig(volumes: Record<string, unknown>[], cache = true): DaemonConfig {
    return validateConfig({
      ...(cache ? { cache: { path: path.join(dir, 'cache.img'), size: '8M' } } : {}),
      control: path.join(dir, 'control.sock'),
      volumes,
    });
  }

  async function connect(name: string): Promise<VhostUserFrontend> {
    const fe = await VhostUserFrontend.open(path.join(dir, `${name}.sock`), { queues: 1, queueSize: 128, memorySize: 16 << 20 });
    open.push(fe);
    return fe;
  }

  async function stop(): Promise<void> {
    for (const fe of open.splice(0)) fe.close();
    if (daemon !== undefined) await daemon.shutdown();
    daemon = undefined;
  }

  /** One daemon run: writes generation `gen` of BLOCKS, reads them twice (cached), shuts down. */
  async function cachedRun(config: DaemonConfig, vol: string, gen: number): Promise<void> {
    daemon = await Daemon.start(config, silentLogger);
    const fe = await connect(vol);
    await writeBlocks(fe, vol, BLOCKS, gen);
    await checkBlocks(fe, vol, BLOCKS, gen);
    await checkBlocks(fe, vol, BLOCKS, gen);
    assert.ok((daemon.stats().cache?.volumes[vol]?.blocks ?? 0) >= BLOCKS.length, 'the blocks are cached');
    await stop();
  }

  beforeEach(() => {
    dir = tmpDir('trust');
  });

  afterEach(async () => {
    await stop();
    for (const s of servers.splice(0)) await s.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('a file changed while the daemon was down', () => {
    const changes: [string, (img: string) => void][] = [
      ['dd conv=notrunc over cached blocks', (img) => ddOver(img)],
      [
        'dd conv=notrunc, then touch -r restoring the mtime',
        (img) => {
          const ref = `${img}.ref`;
          execFileSync('touch', ['-r', img, ref]);
          ddOver(img);
          execFileSync('touch', ['-r', ref, img]);
        },
      ],
      ['cp backup.img vm.img', (img) => execFileSync('cp', [`${img}.backup`, img])],
      [
        'rm vm.img, then a new image of the same size (same inode on ext4)',
        (img) => {
          const ino = fs.statSync(img).ino;
          fs.rmSync(img);
          // ext4 hands out the lowest free inode of the group: other suites running in parallel
          // may have freed lower ones, so create files until one gets ours back.
          const fillers: string[] = [];
          for (let k = 0; k < 256; k++) {
            const f = `${img}.new${k}`;
            fs.writeFileSync(f, '');
            if (fs.statSync(f).ino === ino) {
              fs.renameSync(f, img);
              break;
            }
            fillers.push(f);
          }
          for (const f of fillers) fs.rmSync(f);
          if (!fs.existsSync(img)) fs.writeFileSync(img, '');
          fs.truncateSync(img, 16 << 20);
          assert.equal(fs.statSync(img).ino, ino, 'the file system reused the inode (the case this test is about)');
        },
      ],
      [
        'truncate to 0 and extend to the same size',
        (img) => {
          fs.truncateSync(img, 0);
          fs.truncateSync(img, 16 << 20);
        },
      ],
    ];

    /** Writes generation 7 of blocks 8..39 with dd (one dd, so one change of the timestamps). */
    function ddOver(img: string): void {
      const src = `${img}.dd`;
      fs.writeFileSync(src, Buffer.concat(range(32, 8).map((b) => stamp('a', b, 7))));
      execFileSync('dd', [`if=${src}`, `of=${img}`, `bs=${BLOCK}`, 'seek=8', 'conv=notrunc', 'status=none']);
    }

    for (const [what, change] of changes) {
      it(`${what}: the warm start serves the new content`, async () => {
        const img = path.join(dir, 'a.img');
        const config = daemonConfig([volumeConfig('a', img, { size: '16M' })]);
        await cachedRun(config, 'a', 1);
        // The backup holds generation 0 (written offline, before the cached run's data).
        const backup = `${img}.backup`;
        fs.copyFileSync(img, backup);
        writeOffline(backup, 'a', BLOCKS, 0);
        change(img);
        daemon = await Daemon.start(config, silentLogger);
        assert.equal(daemon.cache?.warm, true, 'the cache loaded warm');
        await matchesBacking(await connect('a'), img, BLOCKS);
      });
    }

    it('no change: the warm start keeps and serves the cached blocks', async () => {
      const img = path.join(dir, 'a.img');
      const config = daemonConfig([volumeConfig('a', img, { size: '16M' })]);
      await cachedRun(config, 'a', 1);
      daemon = await Daemon.start(config, silentLogger);
      const fe = await connect('a');
      await checkBlocks(fe, 'a', BLOCKS, 1);
      assert.equal(daemon.stats().cache?.volumes.a?.readHits, BLOCKS.length, 'every block was a hit');
    });
  });

  describe('writes made while caching was off for the volume (cacheMode none)', () => {
    // An NBD export declared exclusive: its identity does not change with writes and no sample
    // is verified, so only the invalidation by mode-none writes keeps the cache right.
    async function exportOf(name: string): Promise<string> {
      const file = path.join(dir, `${name}.img`);
      fs.writeFileSync(file, Buffer.alloc(16 << 20));
      const sock = path.join(dir, `${name}.nbd`);
      servers.push(await startQemuNbd(file, sock, name));
      return unixUri(sock, name);
    }

    it('within one run: remove-volume, add-volume in mode none, write, back to writethrough @host', async () => {
      const uri = await exportOf('n');
      const cached = volumeConfig('n', uri, { exclusive: true });
      daemon = await Daemon.start(daemonConfig([volumeConfig('other', path.join(dir, 'other.img'), { size: '1M' })]), silentLogger);
      const d = daemon;
      const add = (v: Record<string, unknown>): Promise<unknown> => d.addVolume(validateConfig({ volumes: [v] }).volumes[0] as never);
      await add(cached);
      let fe = await connect('n');
      await writeBlocks(fe, 'n', BLOCKS, 1);
      await checkBlocks(fe, 'n', BLOCKS, 1);
      fe.close();
      await d.removeVolume('n', true);
      await add({ ...cached, cacheMode: 'none' });
      fe = await connect('n');
      await writeBlocks(fe, 'n', BLOCKS, 2);
      fe.close();
      await d.removeVolume('n', true);
      await add(cached);
      await checkBlocks(await connect('n'), 'n', BLOCKS, 2);
    });

    it('across restarts: a run in mode none between two cached runs @host', async () => {
      const uri = await exportOf('n');
      const cached = volumeConfig('n', uri, { exclusive: true });
      await cachedRun(daemonConfig([cached]), 'n', 1);
      daemon = await Daemon.start(daemonConfig([{ ...cached, cacheMode: 'none' }]), silentLogger);
      await writeBlocks(await connect('n'), 'n', BLOCKS, 2);
      await stop();
      daemon = await Daemon.start(daemonConfig([cached]), silentLogger);
      assert.equal(daemon.cache?.warm, true);
      await checkBlocks(await connect('n'), 'n', BLOCKS, 2);
    });

    it('across restarts: a run without --cache on a file', async () => {
      const img = path.join(dir, 'a.img');
      const vol = volumeConfig('a', img, { size: '16M' });
      await cachedRun(daemonConfig([vol]), 'a', 1);
      daemon = await Daemon.start(daemonConfig([vol], false), silentLogger);
      await writeBlocks(await connect('a'), 'a', BLOCKS, 2);
      await stop();
      daemon = await Daemon.start(daemonConfig([vol]), silentLogger);
      assert.equal(daemon.cache?.warm, true);
      await checkBlocks(await connect('a'), 'a', BLOCKS, 2);
    });
  });

  describe('stores whose changes are invisible: sample verification at a warm start @host', () => {
    it('an NBD export rewritten while the daemon was down', async () => {
      const file = path.join(dir, 'n.img');
      fs.writeFileSync(file, Buffer.alloc(16 << 20));
      const sock = path.join(dir, 'n.nbd');
      servers.push(await startQemuNbd(file, sock, 'n'));
      const vol = volumeConfig('n', unixUri(sock, 'n'));
      await cachedRun(daemonConfig([vol]), 'n', 1);
      // Untouched: the sample matches and the blocks are served from the cache.
      daemon = await Daemon.start(daemonConfig([vol]), silentLogger);
      const v0 = (daemon.getVolume('n')?.store as CachedStore).verification;
      await stop();
      // The server's file rewritten (a few blocks) while we were down.
      writeOffline(file, 'n', [3, 40], 9);
      daemon = await Daemon.start(daemonConfig([vol]), silentLogger);
      await matchesBacking(await connect('n'), file, BLOCKS);
      const v = (daemon.getVolume('n')?.store as CachedStore).verification;
      // At least the blocks written and read (read-ahead may have cached the blocks after them).
      assert.ok(v0 !== null && v0.checked >= BLOCKS.length && v0.mismatched === 0, JSON.stringify(v0));
      assert.ok(v !== null && v.mismatched > 0 && v.dropped >= BLOCKS.length, JSON.stringify(v));
    });

    it('exclusive: true skips the verification (the operator guarantees no other writer)', async () => {
      const file = path.join(dir, 'n.img');
      fs.writeFileSync(file, Buffer.alloc(16 << 20));
      const sock = path.join(dir, 'n.nbd');
      servers.push(await startQemuNbd(file, sock, 'n'));
      const vol = volumeConfig('n', unixUri(sock, 'n'), { exclusive: true });
      await cachedRun(daemonConfig([vol]), 'n', 1);
      daemon = await Daemon.start(daemonConfig([vol]), silentLogger);
      assert.equal((daemon.getVolume('n')?.store as CachedStore).verification, null);
      await checkBlocks(await connect('n'), 'n', BLOCKS, 1);
      assert.equal(daemon.stats().cache?.volumes.n?.readHits, BLOCKS.length);
    });

    it('a block device (loop device) rewritten while the daemon was down', async function () {
      const image = path.join(dir, 'loop.img');
      fs.writeFileSync(image, Buffer.alloc(16 << 20));
      const dev = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
      try {
        const vol = volumeConfig('b', dev);
        await cachedRun(daemonConfig([vol]), 'b', 1);
        const fd = fs.openSync(dev, 'r+');
        fs.writeSync(fd, stamp('b', 17, 5), 0, BLOCK, 17 * BLOCK);
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        daemon = await Daemon.start(daemonConfig([vol]), silentLogger);
        await matchesBacking(await connect('b'), dev, BLOCKS);
        const v = (daemon.getVolume('b')?.store as CachedStore).verification;
        assert.ok(v !== null && v.mismatched > 0, JSON.stringify(v));
        await stop();
      } finally {
        execFileSync('losetup', ['--detach', dev]);
      }
    });
  });

  describe('two volumes on one backing store', () => {
    it('are refused, naming both volumes, unless both are read-only', async () => {
      const img = path.join(dir, 'a.img');
      fs.writeFileSync(img, Buffer.alloc(1 << 20));
      fs.linkSync(img, path.join(dir, 'hardlink.img'));
      fs.symlinkSync(img, path.join(dir, 'symlink.img'));
      for (const other of ['a.img', 'hardlink.img', 'symlink.img']) {
        for (const readOnly of [[false, false], [true, false], [false, true]]) {
          const config = daemonConfig([
            volumeConfig('first', img, { readOnly: readOnly[0] }),
            volumeConfig('second', path.join(dir, other), { readOnly: readOnly[1] }),
          ]);
          await assert.rejects(Daemon.start(config, silentLogger), (e: VhostError) => {
            assert.equal(e.code, 'EBUSY');
            assert.match(e.message, /volumes first and second would share one backing store/);
            return true;
          });
        }
      }
      daemon = await Daemon.start(
        daemonConfig([volumeConfig('first', img, { readOnly: true }), volumeConfig('second', path.join(dir, 'symlink.img'), { readOnly: true })]),
        silentLogger,
      );
      // At runtime too; a removed volume's store is free again.
      const third = validateConfig({ volumes: [volumeConfig('third', path.join(dir, 'hardlink.img'))] }).volumes[0];
      await assert.rejects(daemon.addVolume(third as never), /volumes first and third would share/);
      await daemon.removeVolume('first');
      await assert.rejects(daemon.addVolume(third as never), /volumes second and third would share/);
      await daemon.removeVolume('second');
      await daemon.addVolume(third as never);
    });

    it('are accepted as disjoint windows of the store, each serving its own bytes; overlapping windows are refused', async () => {
      const img = path.join(dir, 'w.img');
      fs.writeFileSync(img, Buffer.alloc(1 << 20));
      const half = 512 << 10;
      const overlapping = daemonConfig([
        volumeConfig('lo', img, { backingLength: half + BLOCK }),
        volumeConfig('hi', img, { backingOffset: half }),
      ]);
      await assert.rejects(Daemon.start(overlapping, silentLogger), /volumes lo and hi would share one backing store .*bytes 524288\.\.528384/);
      daemon = await Daemon.start(
        daemonConfig([volumeConfig('lo', img, { backingLength: half }), volumeConfig('hi', img, { backingOffset: half })]),
        silentLogger,
      );
      const lo = await connect('lo');
      const hi = await connect('hi');
      const blocks = range(half / BLOCK);
      await writeBlocks(lo, 'lo', blocks, 1);
      await writeBlocks(hi, 'hi', blocks, 2);
      // Read twice: the second pass comes from the cache, each window's blocks its own.
      for (let pass = 0; pass < 2; pass++) {
        await checkBlocks(lo, 'lo', blocks, 1);
        await checkBlocks(hi, 'hi', blocks, 2);
      }
      const onDisk = fs.readFileSync(img);
      assert.ok(onDisk.subarray(0, BLOCK).equals(stamp('lo', 0, 1)), 'lo block 0 is at byte 0 of the store');
      assert.ok(onDisk.subarray(half, half + BLOCK).equals(stamp('hi', 0, 2)), 'hi block 0 is at the window offset');
      const stats = daemon.stats();
      assert.deepEqual(stats.volumes.map((v) => v.sizeBytes), [half, half], 'each volume is the size of its window');
      assert.ok((stats.cache?.readHits ?? 0) >= 2 * blocks.length, `the second pass is served from the cache: ${stats.cache?.readHits} hits`);
    });

    it('the same NBD export under two spellings of its URI @host', async () => {
      const file = path.join(dir, 'n.img');
      fs.writeFileSync(file, Buffer.alloc(1 << 20));
      const sock = path.join(dir, 'n.nbd');
      servers.push(await startQemuNbd(file, sock, 'n'));
      const relative = path.relative(process.cwd(), sock);
      const config = daemonConfig([volumeConfig('x', unixUri(sock, 'n')), volumeConfig('y', `nbd+unix:///n?socket=${relative}`)]);
      await assert.rejects(Daemon.start(config, silentLogger), /volumes x and y would share one backing store/);
    });
  });
});
