/**
 * NBD backing store behind the shared cache, with a real QEMU guest on top:
 *  - ext4 files written by one guest survive a restart of both the daemon (SIGTERM, warm cache)
 *    and the NBD server (nbdkit over TCP); a new guest reads them back, mostly from the cache,
 *    and the host finds the same bytes in the server's file;
 *  - the NBD server (nbdkit over a unix socket) is SIGKILLed and restarted while fio writes with
 *    crc32c verification: in-flight commands are resent, the guest sees no error, and the
 *    server's file verifies on the host;
 *  - while the NBD server (qemu-nbd over a unix socket) is stopped, data the cache holds is
 *    still served to the guest, and a read of uncached data waits (instead of failing) until the
 *    server is back;
 *  - that wait is bounded by --backing-timeout: past it the guest gets an I/O error, and the
 *    same read succeeds once the server is back.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  startNbdkit,
  startQemuNbd,
  unixUri,
  type NbdkitSpec,
  type ServerProcess,
} from '../backing/nbd-servers';
import { VbcDaemon } from './vm/daemon';
import { prepareGuestImageBeforeAll, runGuest, startGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, seqText, sha256, type FioVerifyJob } from './vm/output';
import { tmpDir } from '../support/tmp';
import { freePort } from '../support/net';

const MiB = 1 << 20;
const IMAGE_BYTES = 256 * MiB;
const CACHE_BLOCK = 4096;

/** Lines of the guest output that report block-layer or file-system errors. */
function ioErrorLines(text: string): string[] {
  return text.split('\n').filter((l) => /I\/O error|blk_update_request|Buffer I\/O|EXT4-fs error|critical medium/i.test(l));
}

describe('NBD backing store behind the cache in a real-QEMU guest @e2e', function () {
  this.timeout(240_000);
  let dir: string;
  let image: string;
  let socketPath: string;
  let control: string;
  let cacheFile: string;
  let daemon: VbcDaemon | undefined;
  let server: ServerProcess | undefined;

  prepareGuestImageBeforeAll();

  beforeEach(() => {
    dir = tmpDir('e2e-nbd');
    image = path.join(dir, 'disk.img');
    socketPath = path.join(dir, 'vhost.sock');
    control = path.join(dir, 'control.sock');
    cacheFile = path.join(dir, 'cache.bin');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, IMAGE_BYTES);
  });

  afterEach(async () => {
    if (daemon?.running) await daemon.stop('SIGKILL');
    daemon = undefined;
    await server?.stop('SIGKILL');
    server = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function startDaemon(backing: string, backingTimeoutSeconds: number): Promise<VbcDaemon> {
    return VbcDaemon.start({
      control,
      args: [
        '--socket-path', socketPath, '--backing', backing, '--cache', cacheFile, '--cache-size', '64M',
        '--backing-timeout', String(backingTimeoutSeconds), '--control', control, '--log-level', 'info',
      ],
    });
  }

  it('ext4 files survive a restart of both the daemon (warm cache) and the NBD server', async () => {
    const started = Date.now();
    const spec: NbdkitSpec = { port: await freePort(), plugin: 'file', args: [`file=${image}`] };
    server = await startNbdkit(spec);
    const backing = `nbd://127.0.0.1:${spec.port}/`;
    daemon = await startDaemon(backing, 60);
    assert.equal(daemon.logsWith('cache started cold').length, 1);

    const write = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 180_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "size $(cat /sys/block/vda/size)"
mkfs.ext4 -q -F /dev/vda
mount -t ext4 /dev/vda /mnt
mkdir /mnt/data
dd if=/dev/urandom of=/mnt/data/random.bin bs=1M count=16 2>/dev/null
seq 1 100000 > /mnt/data/seq.txt
for i in $(seq 1 20); do echo "file $i" > /mnt/data/f$i; done
sync
cd /mnt/data && echo "sums $(sha256sum random.bin seq.txt | cut -d' ' -f1 | tr '\\n' ' ')" && cd /
# Read back from the disk: blocks whose insertion the cache dropped under the write burst
# (it sheds insertions when too many are queued) are inserted by these read misses.
echo 3 > /proc/sys/vm/drop_caches
echo "reread $(sha256sum /mnt/data/random.bin | cut -d' ' -f1)"
umount /mnt
`,
    });
    report('nbd ext4 write boot', write);
    assert.equal(write.exitCode, 0, write.output);
    assert.equal(one(write.output, 'size'), String(IMAGE_BYTES / 512), 'the guest sees the NBD export size');
    const [randomSum, seqSum] = one(write.output, 'sums').split(' ');
    assert.match(randomSum ?? '', /^[0-9a-f]{64}$/);
    assert.equal(seqSum, sha256(seqText(100_000)), 'seq.txt content written by the guest');
    assert.equal(one(write.output, 'reread'), randomSum, 'random.bin read back from the disk');

    const firstRun = await daemon.stats();
    const vol = firstRun.volumes[0];
    assert.ok(vol && firstRun.cache, JSON.stringify(firstRun));
    assert.equal(vol.backing, backing);
    assert.ok(vol.requests.bytesWritten >= 16 * MiB, JSON.stringify(vol.requests));
    assert.equal(vol.requests.ioErrors, 0);
    assert.ok(firstRun.cache.blocks >= (16 * MiB) / CACHE_BLOCK, `blocks in the cache: ${JSON.stringify(firstRun.cache)}`);

    // Restart both: the daemon saves its cache on SIGTERM, the NBD server goes away meanwhile.
    assert.equal(await daemon.stop('SIGTERM'), 0, 'SIGTERM: clean exit');
    assert.equal(daemon.logsWith('cache saved for a warm restart').length, 1);
    assert.deepEqual(daemon.logsWith('final flush failed'), []);
    await server.stop('SIGTERM');

    // Write-through: the bytes are in the NBD server's file, not only in the cache.
    const dumped = path.join(dir, 'random.dump');
    execFileSync('debugfs', ['-R', `dump /data/random.bin ${dumped}`, image], { stdio: 'ignore' });
    assert.equal(sha256(fs.readFileSync(dumped)), randomSum, 'random.bin in the NBD server file');

    server = await startNbdkit(spec);
    await daemon.restart();
    assert.equal(daemon.logsWith('cache loaded warm').length, 1, 'the cache survived the restart');

    const read = await runGuest({
      disks: [{ socketPath }],
      timeoutMs: 180_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
mount -t ext4 /dev/vda /mnt
cd /mnt/data && echo "sums $(sha256sum random.bin seq.txt | cut -d' ' -f1 | tr '\\n' ' ')" && cd /
echo "f7 $(cat /mnt/data/f7)"
echo "count $(ls /mnt/data | wc -l)"
umount /mnt
`,
    });
    report('nbd ext4 read boot', read);
    assert.equal(read.exitCode, 0, read.output);
    assert.equal(one(read.output, 'sums'), `${randomSum} ${seqSum}`, 'files read back after the restarts');
    assert.equal(one(read.output, 'f7'), 'file 7');
    assert.equal(one(read.output, 'count'), '22');

    const secondRun = await daemon.stats();
    assert.ok(secondRun.cache, 'cache statistics');
    const hits = secondRun.cache.readHits;
    // random.bin alone is 4096 cache blocks; the warm cache serves it without the NBD server.
    assert.ok(hits >= (16 * MiB) / CACHE_BLOCK, `cache hits after the warm restart: ${JSON.stringify(secondRun.cache)}`);
    assert.equal(secondRun.volumes[0]?.requests.ioErrors, 0);
    console.log(
      `      [e2e] warm restart: ${hits} hits of ${secondRun.cache.reads} cache reads ` +
        `(rate ${secondRun.cache.readHitRate.toFixed(3)}); total ${Date.now() - started} ms`,
    );
  });

  it('fio verify sees no error while the NBD server is SIGKILLed and restarted mid-run', async () => {
    const started = Date.now();
    const nbdSock = path.join(dir, 'nbd.sock');
    // Every write stays 20 ms in the server, so the kill finds commands in flight.
    const spec: NbdkitSpec = { socket: nbdSock, plugin: 'file', filters: ['delay'], args: [`file=${image}`, 'delay-write=20ms'] };
    server = await startNbdkit(spec);
    daemon = await startDaemon(unixUri(nbdSock), 60);
    // After the run the guest flushes the disk: the first flush after the lost connection must
    // succeed too (nbd-store.ts, Durability).
    const job: FioVerifyJob = { label: 'fio', device: '/dev/vda', size: 32 * MiB };
    const guest = await startGuest({
      disks: [{ socketPath }],
      timeoutMs: 200_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda || exit 1
echo "fio-start"
${fioVerifyScript(job)}
blockdev --flushbufs /dev/vda; echo "flush-rc=$?"
dmesg | grep -i -E "I/O error|blk_update_request|Buffer I/O" | sed 's/^/dmesg-error /'
`,
    });
    let killedAfterWrites: number;
    let outageMs: number;
    try {
      await guest.waitForConsole(/^fio-start$/m, 120_000);
      // Kill the server once fio is well into its write phase, with guest writes in flight.
      const until = Date.now() + 60_000;
      for (;;) {
        const vol = (await daemon.stats()).volumes[0];
        const writes = vol?.requests.writes ?? 0;
        if (writes >= 1000 && (vol?.inflight ?? 0) >= 4) {
          killedAfterWrites = writes;
          break;
        }
        assert.ok(Date.now() < until, `fio did not write within 60 s (${writes} writes)`);
        await sleep(50);
      }
      const killedAt = Date.now();
      await server.stop('SIGKILL');
      await sleep(2000);
      assert.doesNotMatch(guest.console, /^fio-rc /m, 'fio finished before the server came back');
      server = await startNbdkit(spec);
      outageMs = Date.now() - killedAt;

      const r = await guest.result();
      report('nbd fio kill boot', r);
      assert.equal(r.exitCode, 0, r.output);
      checkFioVerify(r.output, job);
      assert.match(r.output, /^flush-rc=0$/m, 'the flush after the outage succeeds');
      assert.deepEqual(ioErrorLines(r.console), [], 'the guest logged I/O errors');
    } finally {
      await guest.kill();
    }

    // Each lost connection hands its unanswered commands back to the queue; the first connection
    // re-established after the outage resends them (its log line counts them).
    const logs = daemon.logs;
    const firstLost = logs.findIndex((l) => l.msg === 'NBD connection lost');
    assert.ok(firstLost >= 0, 'the daemon saw the server go away');
    const lost = logs.filter((l) => l.msg === 'NBD connection lost').length;
    const reconnected = logs.slice(firstLost).filter((l) => l.msg === 'NBD connection established');
    assert.ok(reconnected.length >= 1, 'the NBD client reconnected');
    const resent = Math.max(...reconnected.map((l) => Number(l.queued ?? 0)));
    assert.ok(resent > 0, 'commands in flight when the server died were resent after the reconnect');
    const st = await daemon.stats();
    const req = st.volumes[0]?.requests;
    assert.ok(req, 'one volume in /stats');
    assert.equal(req.ioErrors, 0, JSON.stringify(req));
    assert.ok(req.bytesWritten >= job.size, JSON.stringify(req));
    assert.equal(await daemon.stop('SIGTERM'), 0);

    // The server's file holds what fio wrote, resent writes included: verify it on the host.
    const hostJob = path.join(dir, 'host-verify.json');
    execFileSync('fio', [
      '--name=host', `--filename=${image}`, '--rw=randwrite', '--bs=4k', '--offset=0', `--size=${job.size}`,
      '--ioengine=psync', '--verify=crc32c', '--verify_only', '--verify_fatal=1', '--randrepeat=1',
      '--output-format=json', `--output=${hostJob}`,
    ]);
    const host = (JSON.parse(fs.readFileSync(hostJob, 'utf8')) as { jobs: { error: number; read: { io_bytes: number } }[] }).jobs[0];
    assert.ok(host, 'host fio report');
    assert.equal(host.error, 0);
    assert.equal(host.read.io_bytes, job.size, 'host verified the whole region in the NBD server file');
    console.log(
      `      [e2e] NBD server killed after ${killedAfterWrites} guest writes and ${outageMs} ms outage: ${lost} connection(s) ` +
        `lost, ${resent} commands resent; total ${Date.now() - started} ms`,
    );
  });

  it('serves cached data while the NBD server is stopped; uncached reads wait for it', async () => {
    const started = Date.now();
    // Known content on the server: 16 MiB at 0 (to be cached), 4 MiB at 64 MiB (never cached).
    const warm = randomBytes(16 * MiB);
    const cold = randomBytes(4 * MiB);
    const fd = fs.openSync(image, 'r+');
    fs.writeSync(fd, warm, 0, warm.length, 0);
    fs.writeSync(fd, cold, 0, cold.length, 64 * MiB);
    fs.closeSync(fd);
    const nbdSock = path.join(dir, 'nbd.sock');
    server = await startQemuNbd(image, nbdSock, 'disk0');
    daemon = await startDaemon(unixUri(nbdSock, 'disk0'), 30);

    const guest = await startGuest({
      disks: [{ socketPath }],
      timeoutMs: 200_000,
      script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
echo "first $(dd if=/dev/vda bs=1M count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
vbc_pause server-down
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/warm.bin bs=1M count=16 iflag=direct 2>/tmp/warm.err || echo "warm-dd-failed $(cat /tmp/warm.err)"
echo "cached $(sha256sum /tmp/warm.bin | cut -d' ' -f1)"
rm /tmp/warm.bin
echo "cold-start"
dd if=/dev/vda of=/tmp/cold.bin bs=1M skip=64 count=4 iflag=direct 2>/tmp/cold.err || echo "cold-dd-failed $(cat /tmp/cold.err)"
echo "cold $(sha256sum /tmp/cold.bin | cut -d' ' -f1)"
`,
    });
    let warmReadMs: number;
    let coldWaitMs: number;
    try {
      await guest.waitForPause('server-down', 120_000);
      const before = await daemon.stats();
      assert.ok(before.cache, 'cache statistics');
      await server.stop('SIGTERM');
      server = undefined;
      const downAt = Date.now();
      guest.resume('server-down');
      await guest.waitForConsole(/^cached [0-9a-f]{64}$/m, 60_000);
      warmReadMs = Date.now() - downAt;
      const during = await daemon.stats();
      assert.ok(during.cache, 'cache statistics');
      assert.ok(
        during.cache.readHits - before.cache.readHits >= (16 * MiB) / CACHE_BLOCK,
        `cache hits while the server was away: ${during.cache.readHits - before.cache.readHits}`,
      );

      // Not cached: the read waits for the server instead of failing.
      await guest.waitForConsole(/^cold-start$/m, 30_000);
      await sleep(3000);
      assert.doesNotMatch(guest.console, /^cold /m, 'an uncached read completed without the NBD server');
      server = await startQemuNbd(image, nbdSock, 'disk0');
      coldWaitMs = Date.now() - downAt;

      const r = await guest.result();
      report('nbd outage boot', r);
      assert.equal(r.exitCode, 0, r.output);
      assert.equal(one(r.output, 'first'), sha256(warm), 'first read through the NBD server');
      assert.equal(one(r.output, 'cached'), sha256(warm), 'cached data while the server was stopped');
      assert.equal(one(r.output, 'cold'), sha256(cold), 'uncached data once the server was back');
      assert.doesNotMatch(r.output, /dd-failed/);
      assert.deepEqual(ioErrorLines(r.console), [], 'the guest logged I/O errors');
    } finally {
      await guest.kill();
    }
    const st = await daemon.stats();
    assert.equal(st.volumes[0]?.requests.ioErrors, 0);
    assert.ok(daemon.logsWith('NBD connection lost').length >= 1, 'the daemon saw the server go away');
    console.log(
      `      [e2e] 16 MiB from the cache with the server down in ${warmReadMs} ms; ` +
        `uncached read waited ${coldWaitMs} ms for the server; total ${Date.now() - started} ms`,
    );
  });

  it('a request waits at most --backing-timeout for the server, fails with EIO, and I/O resumes', async () => {
    const started = Date.now();
    const block = randomBytes(64 * 1024);
    const fd = fs.openSync(image, 'r+');
    fs.writeSync(fd, block, 0, block.length, 100 * block.length);
    fs.closeSync(fd);
    const nbdSock = path.join(dir, 'nbd.sock');
    server = await startQemuNbd(image, nbdSock, 'disk0');
    daemon = await startDaemon(unixUri(nbdSock, 'disk0'), 3);
    const guest = await startGuest({
      disks: [{ socketPath }],
      timeoutMs: 200_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda || exit 1
vbc_pause down
dd if=/dev/vda of=/dev/null bs=64k count=1 skip=100 iflag=direct 2>/dev/null
echo "down-read-rc $?"
vbc_pause up
echo "up-read $(dd if=/dev/vda bs=64k count=1 skip=100 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
`,
    });
    let failedAfterMs: number;
    try {
      await guest.waitForPause('down', 120_000);
      await server.stop('SIGKILL');
      server = undefined;
      const downAt = Date.now();
      guest.resume('down');
      await guest.waitForConsole(/^down-read-rc \d+$/m, 60_000);
      failedAfterMs = Date.now() - downAt;
      assert.ok(failedAfterMs >= 2900, `the read failed after ${failedAfterMs} ms, before the 3 s backing timeout`);
      assert.ok(failedAfterMs < 20_000, `the read failed only after ${failedAfterMs} ms`);
      server = await startQemuNbd(image, nbdSock, 'disk0');
      guest.resume('up');
      const r = await guest.result();
      report('nbd timeout boot', r);
      assert.equal(r.exitCode, 0, r.output);
      assert.equal(one(r.output, 'down-read-rc'), '1', 'the guest got an error once the backing timeout passed');
      assert.equal(one(r.output, 'up-read'), sha256(block), 'the same read succeeds with the server back');
      const errors = ioErrorLines(r.console);
      assert.equal(errors.length, 1, errors.join('\n'));
      assert.match(errors[0] ?? '', /I\/O error, dev vda, sector 12800 op 0x0:\(READ\)/);
    } finally {
      await guest.kill();
    }
    const req = (await daemon.stats()).volumes[0]?.requests;
    assert.equal(req?.ioErrors, 1, JSON.stringify(req));
    assert.equal(daemon.logsWith('NBD request timed out').length, 1);
    console.log(`      [e2e] uncached read failed ${failedAfterMs} ms after the server died; total ${Date.now() - started} ms`);
  });
});
