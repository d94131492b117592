/**
 * Guests that try to break the cache (real QEMU/TCG guests, our daemon with a cache), in every
 * cache mode:
 *   - raw device, 512 B logical blocks: 1 MiB of random data is written and read twice (cached),
 *     then overwritten whole-block, partially at odd sectors, across cache blocks, discarded
 *     (blkdiscard) and write-zeroed (fio falloc trim = punch hole on the block device =
 *     WRITE_ZEROES with unmap), each step read back (page cache dropped) and compared with a copy
 *     kept in guest RAM;
 *   - ext4 with 1 KiB blocks made over 32 MiB of cached random data (mkfs discards and zeroes
 *     the inode tables over cached blocks), files partially rewritten at odd byte offsets,
 *     fstrim; read back and compared;
 *   - the daemon is stopped with SIGTERM (cache saved), restarted warm, and a second boot checks
 *     both checksums again (served from the warm cache in the caching modes).
 * And one guest whose daemon is SIGTERMed and restarted while the guest writes (QEMU reconnects
 * and resubmits): every block it wrote verifies afterwards, in that boot and on the image file.
 */
import { strict as assert } from 'node:assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest, startGuest } from './vm/guest';
import { one, report, tagged } from './vm/output';
import { tmpDir } from '../support/tmp';

const MODES = ['writethrough', 'writearound', 'readonly', 'none'];

const ABUSE = `
. /lib/vbc.sh
vbc_wait_dev /dev/vda
D=/dev/vda
R=$((64 * 1024 * 1024)); RS=$((R / 512))
echo "limits wz=$(cat /sys/block/vda/queue/write_zeroes_max_bytes) discard=$(cat /sys/block/vda/queue/discard_max_bytes) lbs=$(cat /sys/block/vda/queue/logical_block_size)"
check() {
  echo 3 > /proc/sys/vm/drop_caches
  dd if=$D of=/tmp/got bs=512 skip=$RS count=2048 2>/dev/null
  if cmp -s /tmp/got /tmp/ref; then echo "ok $1"; else echo "BAD $1"; fi
}
put() { # label, sector offset in the region, sectors
  dd if=/dev/urandom of=/tmp/p bs=512 count=$3 2>/dev/null
  dd if=/tmp/p of=/tmp/ref bs=512 seek=$2 conv=notrunc 2>/dev/null
  dd if=/tmp/p of=$D bs=512 seek=$((RS + $2)) conv=notrunc,fsync 2>/dev/null
  check "$1"; check "$1-again"
}
dd if=/dev/urandom of=/tmp/ref bs=512 count=2048 2>/dev/null
dd if=/tmp/ref of=$D bs=512 seek=$RS conv=notrunc,fsync 2>/dev/null
check fill; check fill-cached
put overwrite 512 128
put partial-odd 7 3
put partial-one 1001 1
put cross-blocks 15 2
blkdiscard -o $((R + 512 * 1024)) -l $((128 * 1024)) $D && dd if=/dev/zero of=/tmp/ref bs=512 seek=1024 count=256 conv=notrunc 2>/dev/null && echo "discarded"
check discard; check discard-again
fio --name=wz --filename=$D --ioengine=falloc --rw=trim --bs=64k --offset=$((R + 768 * 1024)) --size=64k >/dev/null && dd if=/dev/zero of=/tmp/ref bs=512 seek=1536 count=128 conv=notrunc 2>/dev/null && echo "zeroed"
check zeroes; check zeroes-again
put after-zeroes 1540 5
echo "rawsum $(sha256sum /tmp/ref | cut -d' ' -f1)"
dd if=/dev/urandom of=$D bs=64k count=512 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=$D of=/dev/null bs=64k count=512 2>/dev/null
mkfs.ext4 -q -F -b 1024 -E lazy_itable_init=0 $D 32M || echo "BAD mkfs"
mount -t ext4 $D /mnt || echo "BAD mount"
dd if=/dev/urandom of=/mnt/a.bin bs=1k count=777 2>/dev/null
seq 1 20000 > /mnt/seq.txt
cp /mnt/a.bin /tmp/a.bin
sync; echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/urandom of=/tmp/p bs=1 count=3000 2>/dev/null
dd if=/tmp/p of=/mnt/a.bin bs=1 seek=12345 conv=notrunc 2>/dev/null
dd if=/tmp/p of=/tmp/a.bin bs=1 seek=12345 conv=notrunc 2>/dev/null
dd if=/tmp/p of=/mnt/a.bin bs=1 seek=700001 conv=notrunc 2>/dev/null
dd if=/tmp/p of=/tmp/a.bin bs=1 seek=700001 conv=notrunc 2>/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
if cmp -s /mnt/a.bin /tmp/a.bin; then echo "ok fs-partial"; else echo "BAD fs-partial"; fi
rm /mnt/seq.txt; sync
fstrim /mnt || echo "fstrim unsupported"
seq 1 30000 > /mnt/seq2.txt
sync; echo 3 > /proc/sys/vm/drop_caches
if cmp -s /mnt/a.bin /tmp/a.bin; then echo "ok fs-after-trim"; else echo "BAD fs-after-trim"; fi
echo "fssum $(cat /mnt/a.bin /mnt/seq2.txt | sha256sum | cut -d' ' -f1)"
umount /mnt
echo "abuse-done"
`;

const REREAD = `
. /lib/vbc.sh
vbc_wait_dev /dev/vda
RS=$((64 * 1024 * 1024 / 512))
echo "rawsum $(dd if=/dev/vda bs=512 skip=$RS count=2048 2>/dev/null | sha256sum | cut -d' ' -f1)"
mount -t ext4 -o ro /dev/vda /mnt
echo "fssum $(cat /mnt/a.bin /mnt/seq2.txt | sha256sum | cut -d' ' -f1)"
umount /mnt
`;

describe('guests that try to break the cache @e2e', function () {
  this.timeout(600_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;

  prepareGuestImageBeforeAll();

  beforeEach(() => {
    dir = tmpDir('e2e-abuse');
  });

  afterEach(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function startDaemon(mode: string): Promise<{ socketPath: string; image: string }> {
    const socketPath = path.join(dir, 'vhost.sock');
    const control = path.join(dir, 'control.sock');
    const image = path.join(dir, 'disk.img');
    daemon = await VbcDaemon.start({
      control,
      args: [
        '--socket-path', socketPath, '--backing', image, '--size', '128M', '--cache', path.join(dir, 'cache.img'),
        '--cache-size', '64M', '--cache-mode', mode, '--control', control,
      ],
    });
    return { socketPath, image };
  }

  for (const mode of MODES) {
    it(`${mode}: overwrite, partial writes, discard, write-zeroes of cached data; ext4 1 KiB; warm restart`, async () => {
      const { socketPath } = await startDaemon(mode);
      const r = await runGuest({ disks: [{ socketPath }], timeoutMs: 400_000, script: ABUSE });
      report(`abuse ${mode}`, r);
      assert.equal(r.exitCode, 0, r.output);
      assert.match(r.output, /^abuse-done$/m, r.output);
      assert.deepEqual(tagged(r.output, 'BAD'), [], r.output);
      assert.match(r.output, /^discarded$/m, 'the guest discarded');
      assert.match(r.output, /^zeroed$/m, 'the guest wrote zeroes');
      assert.equal(tagged(r.output, 'ok').length, 18, r.output);
      const stats = await daemon!.stats();
      const c = stats.cache;
      assert.ok(c, 'the daemon has a cache');
      const req = stats.volumes[0]?.requests;
      assert.ok(req && req.ioErrors === 0, JSON.stringify(req));
      if (mode === 'none') assert.equal(c.readHits, 0);
      else assert.ok(c.readHits > 0 && c.invalidateHits > 0, `cached data was hit and invalidated: ${JSON.stringify(c)}`);

      assert.equal(await daemon!.stop('SIGTERM'), 0);
      await daemon!.restart();
      const again = await runGuest({ disks: [{ socketPath }], timeoutMs: 300_000, script: REREAD });
      report(`abuse ${mode} after warm restart`, again);
      assert.equal(again.exitCode, 0, again.output);
      assert.equal(one(again.output, 'rawsum'), one(r.output, 'rawsum'), 'raw region after the warm restart');
      assert.equal(one(again.output, 'fssum'), one(r.output, 'fssum'), 'ext4 files after the warm restart');
      if (mode !== 'none') assert.ok(((await daemon!.stats()).cache?.readHits ?? 0) > 0, 'the warm cache served reads');
      assert.equal(await daemon!.stop('SIGTERM'), 0);
    });
  }

  it('daemon SIGTERMed and restarted with guest writes in flight: every block verifies', async () => {
    const { socketPath, image } = await startDaemon('writethrough');
    const seed = crypto.randomBytes(4).toString('hex');
    // 4 writers of 512 KiB chunks with fsync: writes are in flight most of the time.
    const guest = await startGuest({
      disks: [{ socketPath }],
      reconnect: true,
      timeoutMs: 400_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda
gen() { i=0; while [ $i -lt 2048 ]; do echo "${seed} chunk $1 line $i"; i=$((i + 1)); done | dd bs=512k count=1 iflag=fullblock conv=sync 2>/dev/null; }
writer() { n=0; while [ $n -lt 12 ]; do gen "$1-$n" | dd of=/dev/vda bs=512k seek=$(( $1 * 12 + n )) conv=notrunc,fsync 2>/dev/null || echo "BAD write $1-$n"; n=$((n + 1)); [ $n -eq 2 ] && [ $1 -eq 0 ] && echo "writing"; done; }
writer 0 & writer 1 & writer 2 & writer 3 &
wait
echo 3 > /proc/sys/vm/drop_caches
bad=0
for w in 0 1 2 3; do for n in $(seq 0 11); do
  gen "$w-$n" > /tmp/want
  dd if=/dev/vda bs=512k skip=$(( w * 12 + n )) count=1 2>/dev/null | cmp -s - /tmp/want || { echo "BAD chunk $w-$n"; bad=1; }
done; done
echo "verified $bad"
`,
    });
    await guest.waitForConsole(/^writing$/m, 300_000);
    const before = await daemon!.stats();
    assert.equal(await daemon!.stop('SIGTERM'), 0, 'SIGTERM with I/O in flight: clean exit');
    await daemon!.restart();
    const r = await guest.result();
    report('SIGTERM under guest writes', r);
    assert.equal(r.exitCode, 0, r.output);
    assert.deepEqual(tagged(r.output, 'BAD'), [], r.output);
    assert.equal(one(r.output, 'verified'), '0');
    const writesBefore = before.volumes[0]?.requests.writes ?? 0;
    const after = await daemon!.stats();
    assert.ok(writesBefore > 0 && (after.volumes[0]?.requests.writes ?? 0) > 0, 'writes went to both daemon processes');
    assert.equal(await daemon!.stop('SIGTERM'), 0);
    // The image file itself holds every chunk.
    const img = fs.readFileSync(image);
    for (let w = 0; w < 4; w++) {
      for (let n = 0; n < 12; n++) {
        const chunk = img.subarray((w * 12 + n) * 512 * 1024, (w * 12 + n + 1) * 512 * 1024);
        assert.ok(chunk.toString('latin1', 0, 64).startsWith(`${seed} chunk ${w}-${n} line 0\n`), `image chunk ${w}-${n}`);
      }
    }
  });
});
