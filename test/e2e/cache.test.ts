/**
 * The persistent cache under a real QEMU guest: a guest writes 32 MiB of random data and small
 * files through our daemon (--cache, writethrough) and powers off; the daemon stops with
 * SIGTERM (cache metadata saved) and starts warm; a second guest boot reads everything back
 * with matching checksums, served from the cache device (read hits). Writethrough means the
 * backing file alone holds the same data: the files are extracted from the image on the host
 * (debugfs, no cache involved) and checked too, and e2fsck finds the file system clean.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest } from './vm/guest';
import { one, report, seqText, sha256, tagged } from './vm/output';
import { tmpDir } from '../support/tmp';

const MiB = 1 << 20;
const FILES = ['big.bin', 'seq.txt', 'small/f7'];

/** The file `name` of the ext4 image `image`, read on the host by debugfs. */
function extract(image: string, name: string, into: string): Buffer {
  const out = path.join(into, name.replace(/\//g, '_'));
  execFileSync('debugfs', ['-R', `dump /${name} ${out}`, image], { stdio: ['ignore', 'ignore', 'pipe'] });
  return fs.readFileSync(out);
}

describe('persistent cache with a real-QEMU guest @e2e', function () {
  this.timeout(240_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;

  prepareGuestImageBeforeAll();

  beforeEach(() => {
    dir = tmpDir('e2e-cache');
  });

  afterEach(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('data written by one boot is read back warm from the cache by the next, and the backing file matches', async () => {
    const started = Date.now();
    const socketPath = path.join(dir, 'vhost.sock');
    const control = path.join(dir, 'control.sock');
    const image = path.join(dir, 'disk.img');
    const cacheFile = path.join(dir, 'cache.img');
    daemon = await VbcDaemon.start({
      control,
      args: [
        '--socket-path', socketPath, '--backing', image, '--size', '256M',
        '--cache', cacheFile, '--cache-size', '64M', '--cache-mode', 'writethrough', '--control', control,
      ],
    });
    assert.equal(daemon.logsWith('cache started cold').length, 1, 'a new cache starts cold');

    const write = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 180_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
# 4 KiB file system blocks, as on any disk over 512 MiB (mke2fs picks 1 KiB for this small
# one): 1 KiB-aligned writes share cache blocks with their neighbours, and the cache inserts
# nothing of two concurrent writes overlapping in one cache block.
mkfs.ext4 -q -F -b 4096 /dev/vda 128M
mount -t ext4 /dev/vda /mnt
# 4 MiB at a time, each synced: the daemon inserts written blocks asynchronously and drops
# insertions while 16 segments (8 MiB) are queued; smaller bursts keep every block.
for i in $(seq 0 7); do
  dd if=/dev/urandom of=/mnt/big.bin bs=1M count=4 seek=$((i * 4)) conv=notrunc 2>/dev/null
  sync
done
seq 1 100000 > /mnt/seq.txt
mkdir /mnt/small
for i in $(seq 1 20); do echo "small file $i" > /mnt/small/f$i; done
sync
cd /mnt
for f in ${FILES.join(' ')}; do echo "sum $f $(sha256sum $f | cut -d' ' -f1)"; done
cd /
umount /mnt
`,
    });
    report('cache write boot', write);
    assert.equal(write.exitCode, 0, write.output);
    const sums = new Map(tagged(write.output, 'sum').map((l) => l.split(' ') as [string, string]));
    assert.deepEqual([...sums.keys()], FILES);
    assert.equal(sums.get('seq.txt'), sha256(seqText(100_000)));
    assert.equal(sums.get('small/f7'), sha256('small file 7\n'));

    const cold = await daemon.stats();
    assert.ok(cold.cache, 'the daemon has a cache');
    // Every block written was inserted or dropped by the insertion back-pressure (which depends
    // on how fast the cache device keeps up: counted, not guessed). The guest's I/O is over, so
    // no block is dropped after this.
    const dropped = cold.cache.insertsDropped;
    assert.ok(cold.cache.insertions > 0, JSON.stringify(cold.cache));
    assert.ok((cold.cache.insertions + dropped) * 4096 >= 32 * MiB, `writethrough inserted the written blocks: ${JSON.stringify(cold.cache)}`);
    assert.equal(cold.cache.writeErrors, 0);

    assert.equal(await daemon.stop('SIGTERM'), 0, 'SIGTERM: clean exit');
    assert.equal(daemon.logsWith('cache saved for a warm restart').length, 1, JSON.stringify(daemon.logs));
    await daemon.restart();
    assert.equal(daemon.logsWith('cache loaded warm').length, 1, 'the restarted daemon loads the cache warm');
    const warmStart = await daemon.stats();
    assert.ok(warmStart.cache);
    assert.ok((warmStart.cache.blocks + dropped) * 4096 >= 32 * MiB, `the warm cache holds the data: ${warmStart.cache.blocks} blocks`);
    assert.equal(warmStart.cache.reads, 0, 'counters start at zero in the new process');

    const read = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 180_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
mount -t ext4 -o ro /dev/vda /mnt
cd /mnt
for f in ${FILES.join(' ')}; do echo "sum $f $(sha256sum $f | cut -d' ' -f1)"; done
cd /
umount /mnt
`,
    });
    report('cache warm read boot', read);
    assert.equal(read.exitCode, 0, read.output);
    for (const f of FILES) assert.equal(one(read.output, `sum ${f}`), sums.get(f), `${f} read back through the warm cache`);

    const warm = await daemon.stats();
    const c = warm.cache;
    assert.ok(c);
    const vol = c.volumes.vol0;
    assert.ok(vol, `per-volume cache statistics: ${JSON.stringify(c.volumes)}`);
    // Every block of big.bin was cached before the restart and RAM starts empty: the hits come
    // from the cache device.
    assert.ok((c.readHits + dropped) * 4096 >= 32 * MiB, `read hits cover big.bin: ${JSON.stringify(c)}`);
    assert.ok(c.storageHits > 0, `hits from the cache device: ${JSON.stringify(c)}`);
    assert.equal(c.readHits, c.ramHits + c.storageHits);
    assert.equal(vol.readHits, c.readHits, 'the only volume has all the hits');
    assert.equal(c.readErrors, 0);
    const req = warm.volumes[0]?.requests;
    assert.ok(req && req.reads > 0 && req.ioErrors === 0, JSON.stringify(req));
    assert.equal(await daemon.stop('SIGTERM'), 0);

    // Writethrough: the backing file alone has every byte the guest wrote.
    execFileSync('e2fsck', ['-f', '-n', image], { stdio: 'pipe' });
    for (const f of FILES) assert.equal(sha256(extract(image, f, dir)), sums.get(f), `${f} in the backing file`);
    console.log(
      `      [e2e] cache: ${c.readHits}/${c.reads} block reads hit (${c.storageHits} cache device, ${c.ramHits} RAM); ` +
        `test total ${Date.now() - started} ms`,
    );
  });
});
