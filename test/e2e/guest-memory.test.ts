/**
 * Guests with 8 GiB of RAM (issue 9: any guest with RAM above 4 GiB used to kill the daemon on
 * its first disk access). QEMU/TCG with `-m 8192` backed by a sparse memfd (share=on; the host
 * pays only for what the guest touches), on -M pc (RAM split below 3 GiB and above 4 GiB, one
 * memfd at two offsets) and -M q35, through our daemon without and with the cache: ext4 with
 * files checked after a cache drop, and fio crc32c verification with O_DIRECT. The page cache
 * of an 8 GiB guest lives mostly above 4 GiB, so the data moves through the high region.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, seqText, sha256, type FioVerifyJob } from './vm/output';
import { tmpDir } from '../support/tmp';

const MiB = 1 << 20;
const GiB = 1 << 30;

describe('8 GiB guests (RAM above 4 GiB) through the daemon @e2e', function () {
  this.timeout(300_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;

  prepareGuestImageBeforeAll();

  beforeEach(() => {
    dir = tmpDir('e2e-mem');
  });

  afterEach(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const [machine, cache] of [
    ['pc', false],
    ['pc', true],
    ['q35', true],
  ] as const) {
    it(`-M ${machine} -m 8192, ${cache ? 'with' : 'without'} the cache: ext4 + fio verify`, async () => {
      const started = Date.now();
      const socketPath = path.join(dir, 'vhost.sock');
      const control = path.join(dir, 'control.sock');
      daemon = await VbcDaemon.start({
        control,
        args: [
          '--socket-path', socketPath, '--backing', path.join(dir, 'disk.img'), '--size', '256M',
          ...(cache ? ['--cache', path.join(dir, 'cache.img'), '--cache-size', '64M'] : []),
          '--control', control, '--log-level', 'debug',
        ],
      });
      const fio: FioVerifyJob = { label: 'fio-8g', device: '/dev/vda', offset: 160 * MiB, size: 48 * MiB };
      const r = await runGuest({
        disks: [{ socketPath }],
        machine,
        memMiB: 8192,
        timeoutMs: 280_000,
        script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "memtotal-kib $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
mkfs.ext4 -q -F /dev/vda 128M
mount -t ext4 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/big.bin bs=1M count=48 2>/dev/null
seq 1 100000 > /mnt/seq.txt
sync
written=$(sha256sum /mnt/big.bin | cut -d' ' -f1)
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 -o ro /dev/vda /mnt
echo "sums $written $(sha256sum /mnt/big.bin | cut -d' ' -f1)"
echo "seq $(sha256sum /mnt/seq.txt | cut -d' ' -f1)"
umount /mnt
set +e
${fioVerifyScript(fio)}
`,
      });
      report(`8 GiB -M ${machine}${cache ? ' cached' : ''}`, r);
      assert.equal(r.exitCode, 0, r.output);
      assert.ok(Number(one(r.output, 'memtotal-kib')) > 7 * 1024 * 1024, 'the guest has ~8 GiB');
      const [written, readBack] = one(r.output, 'sums').split(' ');
      assert.match(written ?? '', /^[0-9a-f]{64}$/);
      assert.equal(readBack, written, 'big.bin reads back (from the device, after a cache drop) as written');
      assert.equal(one(r.output, 'seq'), sha256(seqText(100_000)));
      checkFioVerify(r.output, fio);

      // The daemon mapped RAM above 4 GiB and served the guest without a fault.
      const regions = daemon.logsWith('memory region').map((l) => ({ gpa: l.gpa as number, size: l.size as number }));
      assert.ok(regions.some((g) => g.gpa >= 4 * GiB && g.size >= 4 * GiB), `regions: ${JSON.stringify(regions)}`);
      assert.deepEqual(daemon.logs.filter((l) => /broken/.test(l.msg)), [], 'no device was dropped');
      const vol = (await daemon.stats()).volumes[0];
      assert.ok(vol !== undefined && vol.requests.reads > 0 && vol.requests.writes > 0, JSON.stringify(vol?.requests));
      assert.equal(vol.requests.ioErrors, 0);
      assert.equal(vol.requests.rejected, 0);
      console.log(`      [e2e] 8 GiB -M ${machine}${cache ? ' cached' : ''}: ${Date.now() - started} ms`);
    });
  }
});
