/**
 * Restarts under a running guest (issue 13 item 3): QEMU (vhost-user-blk, chardev reconnect=1)
 * runs fio with crc32c verification on our daemon while the daemon is SIGKILLed and restarted
 * three times during the write phase. The backing store is nbdkit with a 20 ms write delay, so
 * each kill finds guest writes in flight (a file backing answers faster than a TCG guest
 * submits, leaving the ring empty most of the time), and a second fio job reads another region
 * meanwhile: reads are not delayed, so they complete out of order, ahead of earlier writes.
 * That is the case QEMU's fallback without INFLIGHT_SHMFD (rolling the avail index back to the
 * used index) gets wrong: it would run completed reads again and never the lost writes. QEMU negotiates INFLIGHT_SHMFD (the daemon logs the region
 * it creates, and each restarted daemon logs the region QEMU hands back), so the requests the
 * dead daemon never completed are resubmitted by the new one: fio must finish without an I/O
 * error and every block must verify.
 */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VbcDaemon } from './vm/daemon';
import { NbdkitFixture } from './vm/nbd-fixture';
import { prepareGuestImageBeforeAll, startGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, type FioVerifyJob } from './vm/output';

const MiB = 1 << 20;
const KILLS = 3;

describe('SIGKILL restarts of the daemon under a running guest (INFLIGHT_SHMFD) @e2e', function () {
  this.timeout(600_000);
  const fx = new NbdkitFixture('e2e-inflight');

  prepareGuestImageBeforeAll();

  it(`fio crc32c verify survives ${KILLS} SIGKILL restarts with requests in flight`, async () => {
    const started = Date.now();
    const socketPath = path.join(fx.dir, 'vhost.sock');
    const control = path.join(fx.dir, 'control.sock');
    const { uri, server } = await fx.serve(128 * MiB, 'wdelay=20ms');
    const daemon = await VbcDaemon.start({
      control,
      args: ['--socket-path', socketPath, '--backing', uri, '--control', control, '--log-level', 'info'],
    });
    fx.daemon = daemon;
    const job: FioVerifyJob = { label: 'fio-crash', device: '/dev/vda', size: 80 * MiB };
    const guest = await startGuest({
      disks: [{ socketPath }],
      reconnect: true,
      timeoutMs: 560_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda || exit 1
fio --name=reader --filename=/dev/vda --rw=randread --bs=4k --offset=${100 * MiB} --size=${16 * MiB} \
    --ioengine=libaio --iodepth=8 --direct=1 --time_based --runtime=500 --eta=never --output=/tmp/reader.json >/dev/null 2>&1 &
reader=$!
echo "fio-started"
${fioVerifyScript(job)}
kill $reader; wait $reader
echo "io-errors $(dmesg | grep -ci 'i/o error')"
`,
    });
    try {
      const created = await daemon.waitForLog('inflight region created', 120_000);
      assert.ok(Number(created.queues) >= 1, JSON.stringify(created));
      await guest.waitForConsole(/^fio-started$/m, 120_000);
      for (let k = 0; k < KILLS; k++) {
        // Wait until this run serves guest writes, then crash it in the middle of them.
        await daemon.waitForLog('front end connected', 60_000);
        const before = await daemon.stats();
        const base = before.volumes[0]?.requests.writes ?? 0;
        const deadline = Date.now() + 120_000;
        for (;;) {
          const s = await daemon.stats();
          if ((s.volumes[0]?.requests.writes ?? 0) >= base + 200) break;
          assert.ok(Date.now() < deadline, 'the guest keeps writing through this run');
          await sleep(100); // polling interval of the condition above
        }
        assert.doesNotMatch(guest.console, /fio-crash-rc/, `fio still running at kill ${k + 1}`);
        assert.equal(await daemon.stop('SIGKILL'), null, 'killed by SIGKILL');
        await daemon.restart();
        const attached = await daemon.waitForLog('inflight region attached', 60_000);
        assert.ok(Number(attached.queues) >= 1, JSON.stringify(attached));
      }
      const r = await guest.result();
      report('inflight restarts', r);
      assert.equal(r.exitCode, 0, r.output);
      checkFioVerify(r.output, job);
      assert.equal(one(r.output, 'io-errors'), '0', 'no I/O error in the guest kernel log');
      const recovered = daemon.runs.flatMap((run) => run.filter((l) => l.msg === 'inflight requests recovered'));
      const resubmitted = recovered.reduce((n, l) => n + Number(l.resubmit), 0);
      console.log(`      [e2e] inflight: ${recovered.length} recoveries, ${resubmitted} requests resubmitted over ${KILLS} kills; nbdkit restarts: ${server.exits.length}`);
      assert.ok(resubmitted > 0, 'at least one kill left requests in flight that the next run resubmitted');
    } finally {
      await guest.kill();
    }
    assert.equal(await daemon.stop('SIGTERM'), 0);
    console.log(`      [e2e] inflight restart test total ${Date.now() - started} ms`);
  });
});
