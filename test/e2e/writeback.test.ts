/**
 * Write-back under a running guest (issue 13): QEMU (vhost-user-blk, chardev reconnect=1) runs
 * fio over one 16 MiB region again and again, each pass writing every block with its own
 * pattern (`"wbN"` and the block's offset, fio --verify=pattern) and reading the whole region
 * back byte for byte, so a block older than the pass that last wrote it fails verification
 * (a crc32c header would pass another pass's block). Meanwhile, with the volume in write-back
 * over nbdkit with a 5 ms write delay:
 *   - the NBD server stops answering (SIGSTOP) and the guest keeps writing: write-back absorbs
 *     the outage (no guest I/O error, writes served while the server is stopped);
 *   - the NBD server is SIGKILLed (and restarted) with destage writes in flight;
 *   - our daemon is SIGKILLed three times mid-pass and restarted: each start rebuilds the index
 *     from the log's segment headers, dirty blocks included, and INFLIGHT_SHMFD resubmits the
 *     requests the dead daemon never completed.
 * Afterwards the region read through the daemon (our front end) is compared with the backing
 * file once `vhost-blk-cache flush` has destaged everything: the same bytes.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { DaemonStats } from '../../src/control/daemon-api';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { VbcDaemon } from './vm/daemon';
import { NbdkitFixture } from './vm/nbd-fixture';
import { prepareGuestImageBeforeAll, repoRoot, startGuest } from './vm/guest';
import { checkFioVerify, fioVerifyScript, one, report, type FioVerifyJob } from './vm/output';

const MiB = 1 << 20;
const REGION = 16 * MiB;
const PASSES = 10;
const KILLS = 3;
/** Guest writes a daemon run must have served before the next event (kill, outage). */
const WRITES_PER_STEP = 300;

const run = promisify(execFile);

describe('write-back under a running guest: NBD outage, NBD restart, daemon SIGKILLs @e2e', function () {
  this.timeout(600_000);
  const fx = new NbdkitFixture('e2e-writeback');
  let fe: VhostUserFrontend | undefined;

  prepareGuestImageBeforeAll();

  afterEach(() => {
    fe?.close();
    fe = undefined;
  });

  it(`every pass verifies through ${KILLS} daemon SIGKILLs and NBD outages; the flushed backing file equals what the guest reads`, async () => {
    const started = Date.now();
    const socketPath = path.join(fx.dir, 'vhost.sock');
    const control = path.join(fx.dir, 'control.sock');
    const { image, uri, server } = await fx.serve(64 * MiB, 'wdelay=5ms');
    const daemon = await VbcDaemon.start({
      control,
      args: [
        '--socket-path', socketPath, '--backing', uri, '--control', control, '--log-level', 'info',
        '--cache', path.join(fx.dir, 'cache.img'), '--cache-size', String(128 * MiB), '--cache-mode', 'writeback', '--backing-timeout', '60',
      ],
    });
    fx.daemon = daemon;
    const jobs: FioVerifyJob[] = Array.from({ length: PASSES }, (_, i) => ({ label: `wb${i + 1}`, device: '/dev/vda', size: REGION, pattern: `"wb${i + 1}"%o` }));
    const guest = await startGuest({
      disks: [{ socketPath }],
      reconnect: true,
      timeoutMs: 560_000,
      script: `
. /lib/vbc.sh
vbc_wait_dev /dev/vda || exit 1
echo "fio-started"
${jobs.map(fioVerifyScript).join('\n')}
echo "io-errors $(dmesg | grep -ci 'i/o error')"
`,
    });
    const vol = (s: DaemonStats): { writes: number; dirty: number } => ({
      writes: s.volumes[0]?.requests.writes ?? 0,
      dirty: s.cache?.volumes.vol0?.dirtyBlocks ?? 0,
    });
    /** Waits until the current daemon run served `n` more guest writes than `from`. */
    const writesServed = async (from: number, n: number, what: string): Promise<number> => {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const w = vol(await daemon.stats()).writes;
        if (w >= from + n) return w;
        assert.ok(Date.now() < deadline, `the guest keeps writing: ${what} (${w - from} of ${n})`);
        await sleep(100); // polling interval of the condition above
      }
    };
    const recoveredDirty: number[] = [];
    let outageWrites = 0;
    try {
      await guest.waitForConsole(/^fio-started$/m, 120_000);
      for (let k = 0; k < KILLS; k++) {
        await daemon.waitForLog('front end connected', 60_000);
        let w = await writesServed(vol(await daemon.stats()).writes, WRITES_PER_STEP, `run ${k + 1}`);
        if (k === 0) {
          // An outage of the backing store: the guest's writes keep being acknowledged.
          server.signal('SIGSTOP');
          try {
            const after = await writesServed(w, WRITES_PER_STEP, 'while the NBD server is stopped');
            outageWrites = after - w;
            w = after;
          } finally {
            server.signal('SIGCONT');
          }
        }
        if (k === 1) {
          // The NBD server dies with destage writes in flight (a new one serves the same file).
          const exits = server.exits.length;
          server.signal('SIGKILL');
          while (server.exits.length === exits) await sleep(20); // the exit handler starts a new server
          w = await writesServed(w, WRITES_PER_STEP, 'after the NBD server restart');
        }
        assert.doesNotMatch(guest.console, new RegExp(`${jobs[PASSES - 1]!.label}-rc`), `fio still running at kill ${k + 1}`);
        assert.equal(await daemon.stop('SIGKILL'), null, 'killed by SIGKILL');
        await daemon.restart();
        const recovered = await daemon.waitForLog('cache recovered from the segment headers', 60_000);
        assert.ok(Number(recovered.blocks) > 0, JSON.stringify(recovered));
        recoveredDirty.push(vol(await daemon.stats()).dirty);
        await daemon.waitForLog('inflight region attached', 60_000);
      }
      const r = await guest.result();
      report('write-back restarts', r);
      assert.equal(r.exitCode, 0, r.output);
      for (const job of jobs) checkFioVerify(r.output, job);
      assert.equal(one(r.output, 'io-errors'), '0', 'no I/O error in the guest kernel log');
    } finally {
      await guest.kill();
    }
    console.log(
      `      [e2e] write-back: ${outageWrites} writes acknowledged during the NBD outage; dirty blocks after each restart: ${recoveredDirty.join(', ')}; nbdkit restarts: ${server.exits.length}`,
    );
    assert.ok(recoveredDirty.some((d) => d > 0), 'a restart after a SIGKILL found dirty blocks in the log (acknowledged writes not yet on the backing store)');

    // What the guest reads now, through the daemon...
    fe = await VhostUserFrontend.open(socketPath, { queues: 1, queueSize: 128, memorySize: 16 * MiB });
    const q = fe.ring(0);
    const seen = Buffer.alloc(REGION);
    const chunk = 64 * 1024;
    for (let at = 0; at < REGION; at += 16 * chunk) {
      const rs = await Promise.all(Array.from({ length: 16 }, (_, i) => q.read((at + i * chunk) / 512, chunk)));
      rs.forEach((res, i) => {
        assert.equal(res.status, VIRTIO_BLK_S_OK);
        seen.set(res.data as Uint8Array, at + i * chunk);
      });
    }
    fe.close();
    fe = undefined;
    // ...is what the backing file holds once everything is destaged.
    const bin = path.join(repoRoot(), 'bin', 'vhost-blk-cache');
    const flushed = JSON.parse((await run(process.execPath, [bin, 'flush', 'vol0', '--control', control])).stdout) as { destaged: number };
    assert.equal(vol(await daemon.stats()).dirty, 0, `flush left no dirty block (destaged ${flushed.destaged})`);
    assert.equal(await daemon.stop('SIGTERM'), 0);
    await server.stop();
    const backing = fs.readFileSync(image).subarray(0, REGION);
    assert.ok(backing.equals(seen), 'the backing file holds what the guest reads');
    assert.ok(seen.includes(Buffer.from(`wb${PASSES}`)), 'the last pass is what is there');
    console.log(`      [e2e] write-back restart test total ${Date.now() - started} ms`);
  });
});
