/**
 * Issue 15: a boot storm of N clones of one golden RBD image, cold cache, on a single-node Ceph
 * cluster started here (test/support/ceph-cluster.ts). The golden image is an ext4 file system
 * holding the guest's root tree (the e2e initramfs unpacked, ~88 MB in 82 files); each clone is
 * `rbd clone golden@base`.
 *
 * The trace: a real QEMU/TCG guest (test/e2e/vm) on one clone through our daemon, recorded with
 * the volume option traceReads: it mounts the file system read-only and reads every file, as a
 * boot reads its root file system (a boot-like trace: this guest boots from its initramfs, so
 * it is the mount plus reads of every file, not a distribution's init). Kept in
 * bench/traces/boot-read.trace; --record records it again.
 *
 * The storm: every clone replays the trace through one of our front ends (each clone its reads
 * in order, one at a time; all clones at once), every read checked against the golden image.
 * Rows, each on a fresh daemon and a fresh (cold) cache:
 *   - ours, 1 clone;
 *   - ours, N clones, sharing the parent's blocks (default);
 *   - ours, N clones, shareParent=false (each clone caches its own copy);
 *   - qemu-storage-daemon's rbd driver, N clones (one process, N exports).
 * Backing-store reads are the OSD's read operations and bytes (its perf counters op_r,
 * op_r_out_bytes through the admin socket), so read-ahead of any layer is counted.
 * Target: sharing, N = 8, reads <= 1.25x those of one clone.
 *
 * Run: node dist/bench/boot-storm.js [--clones N] [--record] [--trace FILE]
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { fmtInt, fmtNum, fmtRatio, machineNote, markdownTable } from '../src/bench/measure';
import { spawnTarget, startVbc, type Target } from '../src/bench/targets';
import { VhostUserFrontend } from '../src/frontend/vhost-user-frontend';
import { VIRTIO_BLK_S_OK } from '../src/virtio-blk/spec';
import { ensureGuestImage, runGuest } from '../test/e2e/vm/guest';
import { CephCluster } from '../test/support/ceph-cluster';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';

const run = promisify(execFile);
const IMAGE_MIB = 256;
const DEFAULT_TRACE = path.resolve(__dirname, '..', '..', 'bench', 'traces', 'boot-read.trace');

/** [offset, length] of each read, in order. */
type Trace = [number, number][];

function parseTrace(text: string): Trace {
  const out: Trace = [];
  for (const line of text.split('\n')) {
    const m = /^R (\d+) (\d+)$/.exec(line);
    if (m) out.push([Number(m[1]), Number(m[2])]);
  }
  return out;
}

/** The golden image: ext4 with the guest's root tree (the e2e initramfs unpacked). */
async function buildGolden(dir: string): Promise<string> {
  const img = await ensureGuestImage();
  const root = path.join(dir, 'root');
  fs.mkdirSync(root);
  await run('sh', ['-c', `zcat '${img.initramfs}' | (cd '${root}' && cpio -idm --quiet)`]);
  const file = path.join(dir, 'golden.img');
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', root, file, `${IMAGE_MIB}M`]);
  fs.rmSync(root, { recursive: true, force: true });
  return file;
}

async function osdReads(ceph: CephCluster): Promise<{ ops: number; bytes: number }> {
  const { stdout } = await run('ceph', ['--admin-daemon', path.join(ceph.dir, 'run', 'osd.0.asok'), 'perf', 'dump'], { maxBuffer: 64 << 20 });
  const osd = (JSON.parse(stdout) as { osd: { op_r: number; op_r_out_bytes: number } }).osd;
  return { ops: osd.op_r, bytes: osd.op_r_out_bytes };
}

/** Replays the trace on every socket at once (each in order, one read at a time), verified. */
async function storm(sockets: readonly string[], trace: Trace, golden: Buffer): Promise<number> {
  const maxLen = Math.max(...trace.map(([, l]) => l));
  const fes = await Promise.all(
    sockets.map((s) => VhostUserFrontend.open(s, { queues: 1, queueSize: 128, memorySize: Math.max(16 << 20, 4 * maxLen) })),
  );
  const t0 = performance.now();
  try {
    await Promise.all(
      fes.map(async (fe, i) => {
        const q = fe.ring(0);
        for (const [off, len] of trace) {
          const r = await q.read(off / 512, len);
          if (r.status !== VIRTIO_BLK_S_OK) throw new Error(`clone ${i}: read [${off}, +${len}) failed: status ${r.status}`);
          if (Buffer.compare(Buffer.from(r.data as Uint8Array), golden.subarray(off, off + len)) !== 0) {
            throw new Error(`clone ${i}: read [${off}, +${len}) differs from the golden image`);
          }
        }
      }),
    );
    return performance.now() - t0;
  } finally {
    for (const fe of fes) fe.close();
  }
}

async function main(): Promise<void> {
  exitOnHelp('Usage: node dist/bench/boot-storm.js [--clones 8] [--record] [--trace FILE] (needs Ceph: see the head of bench/boot-storm.ts)');
  const { values } = parseArgs({
    options: {
      clones: { type: 'string', default: '8' },
      record: { type: 'boolean', default: false },
      trace: { type: 'string', default: DEFAULT_TRACE },
    },
  });
  const n = positiveNumber(values.clones, '--clones');
  const traceFile = values.trace;
  const loadBefore = machineNote();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-bench-storm-'));
  const ceph = await CephCluster.start();
  const targets: Target[] = [];
  const stopAll = async (): Promise<void> => {
    for (const t of targets.splice(0)) await t.stop();
  };
  try {
    const goldenFile = await buildGolden(dir);
    const golden = fs.readFileSync(goldenFile);
    const pool = ceph.pool;
    await ceph.rbd('import', goldenFile, `${pool}/golden`);
    await ceph.rbd('snap', 'create', `${pool}/golden@base`);
    await ceph.rbd('snap', 'protect', `${pool}/golden@base`);
    const names = ['rec', ...Array.from({ length: n }, (_, i) => `c${i}`)];
    for (const c of names) await ceph.rbd('clone', `${pool}/golden@base`, `${pool}/${c}`);
    const backing = (c: string): string => `rbd:${pool}/${c}:conf=${ceph.conf}`;
    const cache = (tag: string) => ({ path: path.join(dir, `cache-${tag}.img`), size: 2 * IMAGE_MIB * 2 ** 20 });

    if (values.record || !fs.existsSync(traceFile)) {
      const recorded = path.join(dir, 'boot-read.trace');
      const socketPath = path.join(dir, 'rec.sock');
      targets.push(await startVbc({ volumes: [{ name: 'rec', socketPath, backing: backing('rec'), traceReads: recorded }], cache: cache('rec') }));
      const g = await runGuest({
        disks: [{ socketPath }],
        timeoutMs: 600_000,
        script: `
set -e
. /lib/vbc.sh
vbc_wait_dev /dev/vda
mkdir -p /boot-root
mount -o ro -t ext4 /dev/vda /boot-root
ls -lR /boot-root > /dev/null
find /boot-root -type f | while read f; do cat "$f" > /dev/null; done
umount /boot-root
echo BOOT-READ-DONE
`,
      });
      if (g.exitCode !== 0 || !g.output.includes("BOOT-READ-DONE")) throw new Error(`the recording guest failed:\n${g.console.slice(-4000)}`);
      await stopAll();
      fs.mkdirSync(path.dirname(traceFile), { recursive: true });
      fs.copyFileSync(recorded, traceFile);
      process.stderr.write(`trace recorded: ${traceFile}\n`);
    }
    const trace = parseTrace(fs.readFileSync(traceFile, 'utf8'));
    const traceBytes = trace.reduce((a, [, l]) => a + l, 0);
    process.stderr.write(`trace: ${trace.length} reads, ${fmtNum(traceBytes / 2 ** 20)} MiB\n`);

    interface Row {
      label: string;
      clones: number;
      ops: number;
      bytes: number;
      ms: number;
    }
    const rows: Row[] = [];
    const measure = async (label: string, clones: string[], start: () => Promise<Target>, sockets: string[]): Promise<void> => {
      targets.push(await start());
      const before = await osdReads(ceph);
      const ms = await storm(sockets, trace, golden);
      const after = await osdReads(ceph);
      await stopAll();
      const row = { label, clones: clones.length, ops: after.ops - before.ops, bytes: after.bytes - before.bytes, ms };
      rows.push(row);
      process.stderr.write(`${label}: ${row.ops} OSD reads, ${fmtNum(row.bytes / 2 ** 20)} MiB, ${fmtNum(ms / 1000, 2)} s\n`);
    };
    const ours = (tag: string, clones: string[], shareParent: boolean) => () =>
      startVbc({
        volumes: clones.map((c) => ({ name: c, socketPath: path.join(dir, `${tag}-${c}.sock`), backing: backing(c), shareParent })),
        cache: cache(tag),
        configPath: path.join(dir, `${tag}.json`),
      });
    const socks = (tag: string, clones: string[]): string[] => clones.map((c) => path.join(dir, `${tag}-${c}.sock`));
    const all = names.slice(1);
    await measure('ours, 1 clone', ['c0'], ours('one', ['c0'], true), socks('one', ['c0']));
    await measure(`ours, ${n} clones, sharing`, all, ours('shared', all, true), socks('shared', all));
    await measure(`ours, ${n} clones, no sharing`, all, ours('unshared', all, false), socks('unshared', all));
    const qsdArgv = ['qemu-storage-daemon'];
    for (const [i, c] of all.entries()) {
      qsdArgv.push('--blockdev', `driver=rbd,node-name=f${i},pool=${pool},image=${c},conf=${ceph.conf}`);
      qsdArgv.push('--export', `type=vhost-user-blk,id=e${i},node-name=f${i},addr.type=unix,addr.path=${path.join(dir, `qsd-${c}.sock`)},writable=off`);
    }
    await measure(`qemu-storage-daemon (rbd), ${n} clones`, all, () => spawnTarget('qemu-storage-daemon', qsdArgv, { sockets: socks('qsd', all) }), socks('qsd', all));

    const one = rows[0];
    const table = markdownTable(
      ['run', 'clones', 'OSD reads', 'OSD MiB read', 'x one clone (bytes)', 'storm time s'],
      rows.map((r) => [r.label, r.clones, fmtInt(r.ops), fmtNum(r.bytes / 2 ** 20), fmtRatio(r.bytes, one.bytes), fmtNum(r.ms / 1000, 2)]),
    );
    const shared = rows[1];
    const verdict = `sharing, ${n} clones: ${fmtRatio(shared.bytes, one.bytes)} the backing bytes of one clone (target <= 1.25x): ${shared.bytes <= 1.25 * one.bytes ? 'met' : 'NOT met'}`;
    process.stdout.write(
      [
        `Boot storm: ${n} clones of one RBD image, cold cache; trace ${path.basename(traceFile)} (${trace.length} reads, ${fmtNum(traceBytes / 2 ** 20)} MiB per clone)`,
        '',
        table,
        '',
        verdict,
        '',
        `machine: ${loadBefore}`,
        `after: ${machineNote()}`,
        '',
      ].join('\n'),
    );
  } finally {
    await stopAll();
    await ceph.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
