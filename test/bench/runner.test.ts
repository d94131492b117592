import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatReport, runBench, type BenchOptions, type BenchReport } from '../../src/bench/runner';
import { asuSizesForTotal, SPC1_BLOCK_SIZE, Spc1Workload } from '../../src/bench/spc1';
import { VBC_BIN } from '../../src/bench/targets';
import { tmpDir } from '../support/tmp';

function run(argv: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [VBC_BIN, ...argv], { timeout: 60_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

describe('bench runner', function () {
  this.timeout(60_000);
  let dir: string;

  beforeEach(() => {
    dir = tmpDir('bench-test');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('`vhost-blk-cache bench` runs 2 s against a daemon it starts, with JSON, data lines and a chart', async () => {
    const chart = path.join(dir, 'run.svg');
    const data = path.join(dir, 'run.jsonl');
    const { stdout } = await run([
      'bench', '--backing', path.join(dir, 'disk.img'), '--size', '16M', '--cache', path.join(dir, 'cache.img'),
      '--cache-size', '8M', '--mode', 'randrw', '--iodepth', '4', '--runtime', '2', '--period', '0.5',
      '--json', '--chart', chart, '--data', data, '--no-progress', '--seed', '7',
    ]);
    const rep = JSON.parse(stdout) as BenchReport;
    assert.equal(rep.runs.length, 1);
    const r = rep.runs[0];
    assert.equal(r.target, 'vhost-blk-cache');
    assert.ok(r.ops > 0, 'ops > 0');
    assert.equal(r.ops, r.reads + r.writes);
    assert.equal(r.errors, 0);
    assert.ok(r.seconds > 1.5 && r.seconds <= 2.01, `seconds ${r.seconds}`);
    assert.ok(r.iops > 0 && r.latency.p50 > 0 && r.latency.p50 <= r.latency.p99 && r.latency.p99 <= r.latency.p999);
    assert.equal(r.readLatency.count, r.reads);
    assert.equal(r.writeLatency.count, r.writes);
    assert.ok(r.readLatency.p50 > 0 && r.writeLatency.p50 > 0 && r.readLatency.max <= r.latency.max);
    assert.deepEqual(
      r.devices.map((d) => [d.name, d.readLatency.count, d.writeLatency.count]),
      [['vol0', r.reads, r.writes]],
    );
    assert.ok(r.cache !== null, 'cache statistics');
    const c = r.cache;
    assert.ok(c.reads > 0 && c.readHits <= c.reads);
    assert.ok(c.readHitRate !== null && c.readHitRate >= 0 && c.readHitRate <= 1, `hit rate ${c.readHitRate}`);
    assert.ok(c.invalidations > 0, 'writes invalidate');
    assert.ok(r.commands[0].includes('serve') && r.commands[0].includes('--cache'), r.commands[0]);

    const svg = fs.readFileSync(chart, 'utf8');
    assert.match(svg, /^<svg /);
    assert.match(svg, /data-panel="iops"/);
    const lines = fs.readFileSync(data, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { ops: number; t: number });
    assert.ok(lines.length >= 3, `${lines.length} data lines`);
    assert.equal(lines.reduce((s, l) => s + l.ops, 0), r.ops);
  });

  it('runs SPC-1 paced against our daemon and qemu-storage-daemon side by side @host', async () => {
    const opts: BenchOptions = {
      backing: path.join(dir, 'spc1.img'),
      size: 64 << 20,
      cache: path.join(dir, 'cache.img'),
      cacheSize: 16 << 20,
      cacheMode: 'writethrough',
      workload: 'spc1',
      mode: 'randread',
      bs: 4096,
      iodepth: 8,
      queues: 1,
      bsu: 4,
      runtime: 2,
      seed: 3,
      period: 1,
      json: false,
      compareQsd: true,
      progress: false,
      workdir: path.join(dir, 'work'),
    };
    const rep = await runBench(opts);
    assert.deepEqual(rep.runs.map((r) => r.target), ['vhost-blk-cache', 'qemu-storage-daemon']);
    // The seeded request stream both targets ran (the runner's ASU layout for 64 MiB): requests
    // are issued in this order, each no earlier than its arrival time, and none after the end.
    const sizes = asuSizesForTotal(opts.size! / SPC1_BLOCK_SIZE);
    const w = new Spc1Workload({ asu1Blocks: sizes.asu1, asu2Blocks: sizes.asu2, asu3Blocks: sizes.asu3, bsu: opts.bsu, seed: opts.seed });
    const stream = Array.from({ length: 2000 }, () => w.next());
    const due = stream.filter((q) => (q.at ?? Infinity) <= opts.runtime + 0.001).length;
    assert.ok(due > 0 && due < stream.length);
    for (const r of rep.runs) {
      // Per device (asu1, asu2, asu3): every request counted once; ASU3 (the log) is written only.
      assert.deepEqual(r.devices.map((d) => d.name), r.target === 'vhost-blk-cache' ? ['asu1', 'asu2', 'asu3'] : ['qsd']);
      assert.equal(r.devices.reduce((n, d) => n + d.readLatency.count, 0), r.reads);
      assert.equal(r.devices.reduce((n, d) => n + d.writeLatency.count, 0), r.writes);
      assert.equal(r.devices.find((d) => d.name === 'asu3')?.readLatency.count ?? 0, 0);
      assert.equal(r.errors, 0);
      assert.ok(r.ops > 0 && r.ops <= due, `${r.target}: ${r.ops} requests, ${due} due within the run`);
      // A prefix of the stream: its reads and writes exactly.
      const reads = stream.slice(0, r.ops).filter((q) => q.read).length;
      assert.deepEqual([r.reads, r.writes], [reads, r.ops - reads], r.target);
    }
    const ours = rep.runs[0].cache;
    assert.ok(ours !== null && ours.reads > 0 && ours.readHitRate !== null && ours.readHitRate >= 0 && ours.readHitRate <= 1);
    assert.equal(rep.runs[1].cache, null);
    const text = formatReport(rep);
    assert.match(text, /Avg IOPS/);
    assert.match(text, /ratio/);
    assert.match(text, /qemu-storage-daemon --blockdev/);
    assert.match(text, /asu3 writes: mean \/ p50 \/ p99 \(ms\) +\d/);
  });

  it('SPC-1 with --asu3-mode writeback: the log ASU is a write-back volume too, its writes timed apart', async () => {
    const { stdout } = await run([
      'bench', '--backing', path.join(dir, 'spc1.img'), '--size', '64M', '--cache', path.join(dir, 'cache.img'),
      '--cache-size', '16M', '--cache-mode', 'writeback', '--asu3-mode', 'writeback', '--workload', 'spc1',
      '--bsu', '2', '--runtime', '1', '--period', '1', '--json', '--no-progress', '--workdir', path.join(dir, 'work'),
    ]);
    const r = (JSON.parse(stdout) as BenchReport).runs[0];
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'work', 'config.json'), 'utf8')) as { volumes: { name: string; cacheMode: string }[] };
    assert.deepEqual(config.volumes.map((v) => [v.name, v.cacheMode]), [['asu1', 'writeback'], ['asu2', 'writeback'], ['asu3', 'writeback']]);
    const asu3 = r.devices.find((d) => d.name === 'asu3');
    assert.ok(asu3 !== undefined && asu3.writeLatency.count > 0 && asu3.readLatency.count === 0, JSON.stringify(asu3));
    assert.equal(r.errors, 0);
  });
});
