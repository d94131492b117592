/**
 * `vhost-blk-cache bench`: drives volumes of a vhost-user-blk daemon with our front end and prints a
 * pblio-style summary.
 *
 * Targets: either running volumes (--asu1 SOCKET [--asu2 SOCKET --asu3 SOCKET], --control CTL for
 * cache statistics), or a daemon this command starts itself from --backing (and --cache ...), which
 * it stops at the end. With neither, that daemon serves an embedded default: a sparse backing image
 * (--size, 1 GiB) and a cache (--cache-size, 256 MiB) created in a temporary folder (or --workdir)
 * and removed at the end; the sizes are printed on stderr. --compare-qsd then runs the same seeded workload against
 * qemu-storage-daemon serving the same backing store and prints both side by side.
 *
 * Workloads: fio-like modes (--mode, --bs, --iodepth, --queues; unpaced, closed loop) or
 * --workload spc1 (paced to BSU x 50 IOPS, open loop; latency counts from each request's scheduled
 * time). SPC-1 ASUs: with three sockets each ASU is a whole device; with one socket the device is
 * split 45/45/10 (asuSizesForTotal). A daemon started here for SPC-1 serves the backing store as
 * three volumes asu1, asu2, asu3 (disjoint windows of the same store, the same block addresses as
 * one device split 45/45/10): asu1 and asu2 with the chosen cache mode, asu3 with cache mode
 * `none` by default. That is how pblio's "ASU3 writes bypass the cache" is modelled, since a guest
 * cannot ask for a bypass per request; --asu3-mode gives ASU3 (the log: sequential writes only)
 * another mode, e.g. writeback for a guest whose whole disk is in write-back.
 *
 * Statistics: the daemon's GET /stats before and after the run (and at every data period); the
 * summary shows the deltas. Latency percentiles come from our front end (submission or scheduled
 * time to completion).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Command, Option } from 'commander';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import { renderChart } from './chart';
import { Device, Engine, type EngineResult, type Route } from './engine';
import { fmtInt, fmtNum, fmtRatio, type Measurement, summaryUs, toMeasurement } from './measure';
import { MODE_NAMES, type ModeName, ModeWorkload } from './modes';
import { Progress } from './progress';
import { asuSizesForTotal, deriveAsuSizes, SPC1_BLOCK_SIZE, Spc1Workload, type AsuSizes } from './spc1';
import type { PeriodSample } from './stats';
import { CACHE_MODES, type CacheMode } from '../config/config';
import {
  benchDir,
  type CacheDelta,
  type CacheSnapshot,
  fetchStats,
  startQsd,
  startVbc,
  statsDelta,
  type Target,
  type VbcVolume,
} from './targets';
import type { Workload } from './workload';

export interface BenchOptions {
  /** Running volumes (socket paths); ignored when `backing` is given. */
  asu1?: string;
  asu2?: string;
  asu3?: string;
  /** Control socket of a running daemon (cache statistics). */
  control?: string;
  /** Start our daemon on this backing store (file or NBD URI). */
  backing?: string;
  /** Size of a backing file to create (bytes). */
  size?: number;
  cache?: string;
  cacheSize?: number;
  /** The cache device opened with O_DIRECT (cache.direct; a file's default is buffered). */
  cacheDirect?: boolean;
  cacheMode?: CacheMode;
  /** SPC-1 on a daemon started here: ASU3's cache mode (default none: its writes bypass the cache). */
  asu3Mode?: CacheMode;
  workload: 'fio' | 'spc1';
  mode: ModeName;
  bs: number;
  iodepth: number;
  queues: number;
  rwmixread?: number;
  bsu: number;
  runtime: number;
  seed: number;
  /** Data period in seconds. */
  period: number;
  /** JSON lines file of the periods. */
  data?: string;
  chart?: string;
  json: boolean;
  compareQsd: boolean;
  progress: boolean;
  /** Directory for sockets and files of daemons started here (default: a temp dir). */
  workdir?: string;
}

/** Everything measured in one run against one target. */
export interface RunSummary {
  target: string;
  /** Command lines of the processes started for this run. */
  commands: string[];
  workload: string;
  ops: number;
  reads: number;
  writes: number;
  errors: number;
  seconds: number;
  iops: number;
  mibps: number;
  /** Requests due but not issued when the run ended (paced runs that fell behind). */
  unissued: number;
  /** µs: every request, reads only, writes (and other requests) only. */
  latency: Measurement['lat'];
  readLatency: Measurement['lat'];
  writeLatency: Measurement['lat'];
  /** The same per device (SPC-1 on three volumes: asu1, asu2, asu3), named after its socket. */
  devices: { name: string; readLatency: Measurement['lat']; writeLatency: Measurement['lat'] }[];
  cache: CacheDelta | null;
  periods: (PeriodSample & { cache?: CacheDelta | null })[];
}

export interface BenchReport {
  runs: RunSummary[];
}

interface Layout {
  /** Sockets of the devices to open. */
  sockets: string[];
  /** For each ASU: index into sockets and byte offset. */
  asus: { device: number; offset: number }[];
}

/** A target: where its volumes are and how to read its cache statistics. */
interface Prepared {
  name: string;
  layout: Layout;
  control?: string;
  /** Cache volumes counted in the statistics (undefined: the whole cache). */
  volumes?: string[];
  targets: Target[];
  /** Printed with the command lines (e.g. the config file given to our daemon). */
  notes?: string[];
}

function spc1Layout(total: number): { sizes: AsuSizes; offsets: number[] } {
  const sizes = asuSizesForTotal(Math.floor(total / SPC1_BLOCK_SIZE));
  const b = SPC1_BLOCK_SIZE;
  return { sizes, offsets: [0, sizes.asu1 * b, (sizes.asu1 + sizes.asu2) * b] };
}

function backingSize(o: BenchOptions): number {
  const b = o.backing as string;
  if (/^nbd(\+unix)?:/.test(b)) return o.size ?? 0;
  if (fs.existsSync(b)) {
    const st = fs.statSync(b);
    if (st.isFile()) return st.size;
    if (st.isBlockDevice()) {
      const fd = fs.openSync(b, 'r');
      try {
        return native.blockDeviceSize(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  return o.size ?? 0;
}

async function prepareOurs(o: BenchOptions, dir: string): Promise<Prepared> {
  const vol = (name: string, cacheMode?: VbcVolume['cacheMode']): VbcVolume => ({
    name,
    socketPath: path.join(dir, `${name}.sock`),
    backing: o.backing as string,
    ...(o.size !== undefined ? { size: o.size } : {}),
    numQueues: Math.max(o.queues, 1),
    ...(cacheMode !== undefined ? { cacheMode } : {}),
  });
  const control = path.join(dir, 'control.sock');
  const cache = o.cache !== undefined ? { path: o.cache, size: o.cacheSize ?? 256 << 20, ...(o.cacheDirect === true ? { direct: true } : {}) } : undefined;
  if (o.workload === 'spc1') {
    // One window of the backing store per ASU: the same block addresses as one device split
    // 45/45/10, as disjoint volumes the daemon accepts on one store.
    const total = backingSize(o);
    if (total <= 0) throw new VhostError('SPC-1 on a backing store of unknown size: give --size', 'EINVAL');
    const { sizes, offsets } = spc1Layout(total);
    const lengths = [sizes.asu1, sizes.asu2, sizes.asu3].map((blocks) => blocks * SPC1_BLOCK_SIZE);
    const window = (v: VbcVolume, i: number): VbcVolume => ({ ...v, backingOffset: offsets[i] as number, backingLength: lengths[i] as number });
    const volumes = [vol('asu1', o.cacheMode), vol('asu2', o.cacheMode), vol('asu3', o.asu3Mode ?? 'none')].map(window);
    const t = await startVbc({ volumes, control, ...(cache !== undefined ? { cache } : {}), configPath: path.join(dir, 'config.json') });
    return {
      name: 'vhost-blk-cache',
      layout: { sockets: volumes.map((v) => v.socketPath), asus: volumes.map((_, i) => ({ device: i, offset: 0 })) },
      control,
      volumes: ['asu1', 'asu2', 'asu3'],
      targets: [t],
      notes: [`config ${path.join(dir, 'config.json')}: ${JSON.stringify(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')))}`],
    };
  }
  const v = vol('vol0', o.cacheMode);
  const t = await startVbc({ volumes: [v], control, ...(cache !== undefined ? { cache } : {}) });
  return { name: 'vhost-blk-cache', layout: { sockets: [v.socketPath], asus: [{ device: 0, offset: 0 }] }, control, volumes: ['vol0'], targets: [t] };
}

async function prepareQsd(o: BenchOptions, dir: string): Promise<Prepared> {
  const socketPath = path.join(dir, 'qsd.sock');
  const b = o.backing as string;
  let t: Target;
  if (/^nbd\+unix:/.test(b)) {
    const u = new URL(b);
    const socket = u.searchParams.get('socket');
    if (socket === null) throw new VhostError(`${b}: nbd+unix URI without ?socket=`, 'EINVAL');
    const exp = decodeURIComponent(u.pathname.replace(/^\//, ''));
    t = await startQsd({ socketPath, nbd: { socket, ...(exp !== '' ? { export: exp } : {}) }, numQueues: o.queues });
  } else if (/^nbd:/.test(b)) {
    throw new VhostError('--compare-qsd supports file and nbd+unix:// backing stores', 'EOPNOTSUPP');
  } else {
    t = await startQsd({ socketPath, image: b, numQueues: o.queues });
  }
  const asus =
    o.workload === 'spc1'
      ? spc1Layout(backingSize(o) > 0 ? backingSize(o) : await deviceCapacity(socketPath, o.queues)).offsets.map((offset) => ({ device: 0, offset }))
      : [{ device: 0, offset: 0 }];
  return { name: 'qemu-storage-daemon', layout: { sockets: [socketPath], asus }, targets: [t] };
}

async function deviceCapacity(socket: string, queues: number): Promise<number> {
  const d = await Device.open({ socketPath: socket, queues, depth: 1, maxLen: 4096 });
  try {
    return d.capacity;
  } finally {
    await d.close();
  }
}

function prepareGiven(o: BenchOptions): Prepared {
  if (o.asu1 === undefined) throw new VhostError('give --asu1 SOCKET (a running volume) or --backing FILE|URI', 'EINVAL');
  const sockets = [o.asu1];
  if (o.workload !== 'spc1' || (o.asu2 === undefined && o.asu3 === undefined)) {
    return {
      name: 'volumes',
      layout: { sockets, asus: [{ device: 0, offset: 0 }] },
      ...(o.control !== undefined ? { control: o.control } : {}),
      targets: [],
    };
  }
  if (o.asu2 === undefined || o.asu3 === undefined) throw new VhostError('SPC-1 on separate volumes needs --asu1, --asu2 and --asu3', 'EINVAL');
  return {
    name: 'volumes',
    layout: { sockets: [o.asu1, o.asu2, o.asu3], asus: [0, 1, 2].map((device) => ({ device, offset: 0 })) },
    ...(o.control !== undefined ? { control: o.control } : {}),
    targets: [],
  };
}

function makeWorkload(o: BenchOptions, devices: Device[], layout: Layout): Workload {
  if (o.workload === 'spc1') {
    let sizes: AsuSizes;
    if (layout.sockets.length === 3 && layout.asus.every((a) => a.offset === 0)) {
      sizes = deriveAsuSizes(...(devices.map((d) => Math.floor(d.capacity / SPC1_BLOCK_SIZE)) as [number, number, number]));
    } else {
      sizes = spc1Layout(devices[0].capacity).sizes;
    }
    return new Spc1Workload({ asu1Blocks: sizes.asu1, asu2Blocks: sizes.asu2, asu3Blocks: sizes.asu3, bsu: o.bsu, seed: o.seed });
  }
  return new ModeWorkload({
    mode: o.mode,
    bs: o.bs,
    size: devices[0].capacity,
    seed: o.seed,
    ...(o.rwmixread !== undefined ? { rwmixread: o.rwmixread } : {}),
  });
}

function workloadName(o: BenchOptions): string {
  return o.workload === 'spc1'
    ? `spc1 bsu=${o.bsu} (${o.bsu * 50} IOPS) seed=${o.seed}`
    : `${o.mode} bs=${o.bs} iodepth=${o.iodepth} queues=${o.queues} seed=${o.seed}`;
}

async function readCache(p: Prepared): Promise<CacheSnapshot | null> {
  if (p.control === undefined) return null;
  return (await fetchStats(p.control)).cache;
}

/** Runs the workload once against a prepared target. */
async function runOn(o: BenchOptions, p: Prepared, progress: Progress | null, dataOut: fs.WriteStream | null): Promise<RunSummary> {
  const devices: Device[] = [];
  try {
    const maxLen = o.workload === 'spc1' ? 16 * SPC1_BLOCK_SIZE : o.bs;
    for (const s of p.layout.sockets) devices.push(await Device.open({ socketPath: s, queues: o.queues, depth: o.iodepth, maxLen }));
    const routes: Route[] = p.layout.asus.map((a) => ({ device: devices[a.device], offset: a.offset }));
    while (routes.length < 3) routes.push(routes[0]);
    const workload = makeWorkload(o, devices, p.layout);
    const before = await readCache(p);
    let last = before;
    const periods: RunSummary['periods'] = [];
    let lastSample: PeriodSample | null = null;
    let lastOps = 0;
    let lastTick = 0;
    // Period statistics are read in order; the summary waits for them.
    let pendingPeriods: Promise<void> = Promise.resolve();
    const engine = new Engine({
      workload,
      routes,
      runtime: o.runtime,
      period: o.period,
      onPeriod: (s) => {
        lastSample = s;
        pendingPeriods = pendingPeriods
          .then(() => readCache(p).catch(() => null))
          .then((now) => {
            // A failed statistics read leaves this period without cache figures.
            const cache = last !== null && now !== null ? statsDelta(last, now, p.volumes) : null;
            if (now !== null) last = now;
            const sample = { ...s, readHitRate: cache?.readHitRate ?? null, cache };
            periods.push(sample);
            dataOut?.write(`${JSON.stringify({ target: p.name, ...sample })}\n`);
          });
      },
      onTick: (elapsed, ops) => {
        const iops = elapsed > lastTick ? (ops - lastOps) / (elapsed - lastTick) : 0;
        lastOps = ops;
        lastTick = elapsed;
        const ls = lastSample as PeriodSample | null;
        progress?.update({
          elapsed,
          total: o.runtime,
          ops,
          iops,
          meanLatencyMs: ls?.meanLatencyMs ?? 0,
          ...(ls !== null ? { p99LatencyMs: ls.p99LatencyMs } : {}),
          readHitRate: periods.length > 0 ? periods[periods.length - 1].readHitRate : null,
        });
      },
    });
    const r: EngineResult = await engine.run();
    await pendingPeriods;
    const after = await readCache(p);
    const cache = before !== null && after !== null ? statsDelta(before, after, p.volumes) : null;
    // The final (partial) period is the engine's last sample.
    const tail = r.periods[r.periods.length - 1];
    const lastCache = last !== null && after !== null ? statsDelta(last, after, p.volumes) : null;
    if (tail.seconds > 0 || tail.ops > 0) {
      const sample = { ...tail, readHitRate: lastCache?.readHitRate ?? null, cache: lastCache };
      periods.push(sample);
      dataOut?.write(`${JSON.stringify({ target: p.name, ...sample })}\n`);
    }
    const m = toMeasurement([r]);
    progress?.done({
      elapsed: r.seconds,
      total: o.runtime,
      ops: r.ops,
      iops: m.iops,
      meanLatencyMs: m.lat.mean / 1000,
      p99LatencyMs: m.lat.p99 / 1000,
      readHitRate: cache?.readHitRate ?? null,
    });
    return {
      target: p.name,
      commands: [...p.targets.map((t) => t.command), ...(p.notes ?? [])],
      workload: workloadName(o),
      ops: r.ops,
      reads: r.reads,
      writes: r.writes,
      errors: r.errors,
      seconds: r.seconds,
      iops: m.iops,
      mibps: m.mibps,
      unissued: r.unissued,
      latency: m.lat,
      readLatency: summaryUs(r.meter.readTotal),
      writeLatency: summaryUs(r.meter.writeTotal),
      devices: devices.map((d) => ({ name: path.basename(d.socketPath, '.sock'), readLatency: summaryUs(d.readLatency), writeLatency: summaryUs(d.writeLatency) })),
      cache,
      periods,
    };
  } finally {
    for (const d of devices) await d.close().catch(() => undefined);
  }
}

/** Size of the backing image of the embedded default (no --asu1, no --backing). */
const EMBEDDED_BACKING_SIZE = 1 << 30;
const EMBEDDED_CACHE_SIZE = 256 << 20;

/** Runs the benchmark described by `o` (see the module comment). */
export async function runBench(given: BenchOptions): Promise<BenchReport> {
  const embedded = given.backing === undefined && given.asu1 === undefined;
  const ownDir = (given.backing !== undefined || embedded) && given.workdir === undefined;
  const dir = given.workdir !== undefined || ownDir ? benchDir(given.workdir) : '';
  let o = given;
  if (embedded) {
    o = {
      ...given,
      backing: path.join(dir, 'backing.img'),
      size: given.size ?? EMBEDDED_BACKING_SIZE,
      cache: given.cache ?? path.join(dir, 'cache.img'),
      cacheSize: given.cacheSize ?? EMBEDDED_CACHE_SIZE,
    };
    const mib = (n: number): string => `${(n / 2 ** 20).toFixed(0)} MiB`;
    process.stderr.write(
      `bench: no --asu1 or --backing given: serving a sparse ${mib(o.size as number)} backing image ${o.backing} ` +
        `through a ${mib(o.cacheSize as number)} cache ${o.cache}${ownDir ? ' (temporary, removed at the end)' : ''}\n`,
    );
  }
  const progress = o.progress ? new Progress() : null;
  const dataOut = o.data !== undefined ? fs.createWriteStream(o.data) : null;
  const runs: RunSummary[] = [];
  try {
    const preparers: (() => Promise<Prepared>)[] = [];
    if (o.backing !== undefined) {
      preparers.push(() => prepareOurs(o, dir));
      if (o.compareQsd) preparers.push(() => prepareQsd(o, dir));
    } else {
      if (o.compareQsd) throw new VhostError('--compare-qsd needs --backing (the store both daemons serve)', 'EINVAL');
      preparers.push(() => Promise.resolve(prepareGiven(o)));
    }
    for (const prep of preparers) {
      const p = await prep();
      try {
        runs.push(await runOn(o, p, progress, dataOut));
      } finally {
        for (const t of p.targets) await t.stop();
      }
    }
  } finally {
    if (dataOut !== null) await new Promise((r) => dataOut.end(r));
    if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
  }
  if (o.chart !== undefined && runs.length > 0) {
    fs.writeFileSync(o.chart, renderChart(runs[0].periods, { title: `${runs[0].target}: ${runs[0].workload}` }));
  }
  return { runs };
}

// ------------------------------------------------------------------ report

type Row = [string, (r: RunSummary) => string, ((r: RunSummary) => number | null)?];

const pct = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(4));
const cacheRows: Row[] = [
  ['Read hit rate', (r) => pct(r.cache?.readHitRate)],
  ['Invalidate hit rate', (r) => pct(r.cache?.invalidateHitRate)],
  ['Reads', (r) => (r.cache ? fmtInt(r.cache.reads) : '-')],
  ['Insertions', (r) => (r.cache ? fmtInt(r.cache.insertions) : '-')],
  ['Evictions', (r) => (r.cache ? fmtInt(r.cache.evictions) : '-')],
  ['Invalidations', (r) => (r.cache ? fmtInt(r.cache.invalidations) : '-')],
  ['RAM hits', (r) => (r.cache ? fmtInt(r.cache.ramHits) : '-')],
  ['Storage hits', (r) => (r.cache ? fmtInt(r.cache.storageHits) : '-')],
  ['Wraps', (r) => (r.cache ? fmtInt(r.cache.wraps) : '-')],
  ['Segments skipped', (r) => (r.cache ? fmtInt(r.cache.segmentsSkipped) : '-')],
  ['Mean cache read latency (µs, daemon lifetime)', (r) => (r.cache ? fmtNum(r.cache.readLatencyUs) : '-')],
  ['Mean segment read latency (µs)', (r) => fmtNum(r.cache?.segmentReadLatencyUs ?? null)],
  ['Mean segment write latency (µs)', (r) => fmtNum(r.cache?.segmentWriteLatencyUs ?? null)],
  ['Segment writes / header rewrites / rewrite batches', (r) => (r.cache ? [r.cache.device.segmentWrites, r.cache.device.headerRewrites, r.cache.device.rewriteBatches].map(fmtInt).join(' / ') : '-')],
  ['Kills marked / fdatasyncs', (r) => (r.cache ? [r.cache.device.killsMarked, r.cache.device.fdatasyncs].map(fmtInt).join(' / ') : '-')],
];
/** "mean / p50 / p99" in ms of a summary in µs. */
function latencyCell(l: Measurement['lat']): string {
  return l.count === 0 ? '-' : [l.mean, l.p50, l.p99].map((v) => (v / 1000).toFixed(3)).join(' / ');
}

/** Where the per-device rows go (only with several devices, e.g. SPC-1's three volumes). */
const DEVICE_ROWS = 'devices' as const;

/** The reads and writes rows of each device the runs opened (by the first run's device names). */
function deviceRows(runs: readonly RunSummary[]): Row[] {
  const names = runs[0].devices.length > 1 ? runs[0].devices.map((d) => d.name) : [];
  const cell = (name: string, kind: 'readLatency' | 'writeLatency') => (r: RunSummary): string => {
    const d = r.devices.find((x) => x.name === name);
    return d ? latencyCell(d[kind]) : '-';
  };
  return names.flatMap((name): Row[] => [
    [`  ${name} reads: mean / p50 / p99 (ms)`, cell(name, 'readLatency')],
    [`  ${name} writes: mean / p50 / p99 (ms)`, cell(name, 'writeLatency')],
  ]);
}

const rows: (Row | typeof DEVICE_ROWS)[] = [
  ['Avg IOPS', (r) => fmtNum(r.iops), (r) => r.iops],
  ['Avg latency (ms)', (r) => (r.latency.mean / 1000).toFixed(3), (r) => r.latency.mean],
  ['p50 latency (ms)', (r) => (r.latency.p50 / 1000).toFixed(3), (r) => r.latency.p50],
  ['p99 latency (ms)', (r) => (r.latency.p99 / 1000).toFixed(3), (r) => r.latency.p99],
  ['p99.9 latency (ms)', (r) => (r.latency.p999 / 1000).toFixed(3), (r) => r.latency.p999],
  ['Reads: mean / p50 / p99 (ms)', (r) => latencyCell(r.readLatency)],
  ['Writes: mean / p50 / p99 (ms)', (r) => latencyCell(r.writeLatency)],
  DEVICE_ROWS,
  ['MiB/s', (r) => fmtNum(r.mibps), (r) => r.mibps],
  ['Requests (reads / writes)', (r) => `${fmtInt(r.ops)} (${fmtInt(r.reads)} / ${fmtInt(r.writes)})`],
  ['Errors', (r) => fmtInt(r.errors)],
  ['Due but not issued', (r) => fmtInt(r.unissued)],
  ...cacheRows,
];

/** The pblio-style text summary; with two runs, side by side with ratios (first / second). */
export function formatReport(rep: BenchReport): string {
  const out: string[] = [];
  const runs = rep.runs;
  if (runs.length === 0) return '';
  out.push(`Workload: ${runs[0].workload}, ${runs[0].seconds.toFixed(1)} s`);
  const width = 48;
  const col = 21;
  const head = ['', ...runs.map((r) => r.target)];
  if (runs.length === 2) head.push('ratio');
  out.push(head.map((h, i) => (i === 0 ? h.padEnd(width) : h.padStart(col))).join(''));
  for (const [label, f, v] of rows.flatMap((row) => (row === DEVICE_ROWS ? deviceRows(runs) : [row]))) {
    const cells = [label.padEnd(width), ...runs.map((r) => f(r).padStart(col))];
    if (runs.length === 2) {
      const a = v?.(runs[0]) ?? null;
      const b = v?.(runs[1]) ?? null;
      cells.push((a !== null && b !== null ? fmtRatio(a, b) : '').padStart(col));
    }
    out.push(cells.join(''));
  }
  out.push('');
  out.push('Commands:');
  for (const r of runs) for (const c of r.commands) out.push(`  ${c}`);
  return out.join('\n') + '\n';
}

// ------------------------------------------------------------------ CLI

interface BenchFlags {
  asu1?: string;
  asu2?: string;
  asu3?: string;
  control?: string;
  backing?: string;
  size?: string;
  cache?: string;
  cacheSize?: string;
  cacheDirect?: boolean;
  cacheMode: BenchOptions['cacheMode'];
  asu3Mode: CacheMode;
  workload: 'fio' | 'spc1';
  mode: ModeName;
  bs: string;
  iodepth: string;
  queues: string;
  rwmixread?: string;
  bsu: string;
  runtime: string;
  seed: string;
  period: string;
  data?: string;
  chart?: string;
  json?: boolean;
  compareQsd?: boolean;
  progress: boolean;
  workdir?: string;
}

function positive(v: string, flag: string, integer = true): number {
  const n = Number(v);
  if (!(n > 0) || (integer && !Number.isInteger(n))) throw new VhostError(`${flag}: expected a positive ${integer ? 'integer' : 'number'}, got ${v}`, 'EINVAL');
  return n;
}

function benchOptionsFromFlags(f: BenchFlags, parseSize: (v: string, flag: string) => number): BenchOptions {
  return {
    ...(f.asu1 !== undefined ? { asu1: f.asu1 } : {}),
    ...(f.asu2 !== undefined ? { asu2: f.asu2 } : {}),
    ...(f.asu3 !== undefined ? { asu3: f.asu3 } : {}),
    ...(f.control !== undefined ? { control: f.control } : {}),
    ...(f.backing !== undefined ? { backing: f.backing } : {}),
    ...(f.size !== undefined ? { size: parseSize(f.size, '--size') } : {}),
    ...(f.cache !== undefined ? { cache: f.cache } : {}),
    ...(f.cacheSize !== undefined ? { cacheSize: parseSize(f.cacheSize, '--cache-size') } : {}),
    ...(f.cacheDirect === true ? { cacheDirect: true } : {}),
    cacheMode: f.cacheMode,
    asu3Mode: f.asu3Mode,
    workload: f.workload,
    mode: f.mode,
    bs: parseSize(f.bs, '--bs'),
    iodepth: positive(f.iodepth, '--iodepth'),
    queues: positive(f.queues, '--queues'),
    ...(f.rwmixread !== undefined ? { rwmixread: Number(f.rwmixread) } : {}),
    bsu: positive(f.bsu, '--bsu'),
    runtime: positive(f.runtime, '--runtime', false),
    seed: Number(f.seed),
    period: positive(f.period, '--period', false),
    ...(f.data !== undefined ? { data: f.data } : {}),
    ...(f.chart !== undefined ? { chart: f.chart } : {}),
    json: f.json === true,
    compareQsd: f.compareQsd === true,
    progress: f.progress,
    ...(f.workdir !== undefined ? { workdir: f.workdir } : {}),
  };
}

/** Adds `bench` to the CLI; `parseSize` parses sizes like 4K / 1G. */
export function addBenchCommand(program: Command, parseSize: (v: string, flag: string) => number): Command {
  return program
    .command('bench')
    .description('benchmark volumes through our vhost-user front end (fio-like modes or SPC-1-like)')
    .option('--asu1 <socket>', 'running volume to drive (SPC-1: ASU1; one socket is split 45/45/10)')
    .option('--asu2 <socket>', 'SPC-1 ASU2 volume')
    .option('--asu3 <socket>', 'SPC-1 ASU3 volume (give it cache mode none: its writes bypass the cache)')
    .option('--control <path>', 'control socket of the running daemon (cache statistics)')
    .option('--backing <file|uri>', 'start our daemon on this backing store instead')
    .option('--size <bytes>', 'size of the backing file to create')
    .option('--cache <path>', 'cache file of the daemon started here')
    .option('--cache-size <bytes>', 'its size', '256M')
    .option('--cache-direct', 'open the cache file with O_DIRECT (as a block device is by default)')
    .addOption(new Option('--cache-mode <mode>', 'cache mode of the volumes').choices([...CACHE_MODES]).default('writethrough'))
    .addOption(new Option('--asu3-mode <mode>', 'SPC-1: cache mode of ASU3 (none: its writes bypass the cache, as pblio)').choices([...CACHE_MODES]).default('none'))
    .addOption(new Option('--workload <name>', 'workload').choices(['fio', 'spc1']).default('fio'))
    .addOption(new Option('--mode <mode>', 'fio-like mode').choices([...MODE_NAMES]).default('randread'))
    .option('--bs <bytes>', 'transfer size', '4K')
    .option('--iodepth <n>', 'requests in flight per queue', '32')
    .option('--queues <n>', 'virtqueues per volume', '1')
    .option('--rwmixread <pct>', 'read percentage of randrw / zipf')
    .option('--bsu <n>', 'SPC-1 business scaling units (50 IOPS each)', '10')
    .option('--runtime <seconds>', 'run time', '30')
    .option('--seed <n>', 'random seed', '1')
    .option('--period <seconds>', 'data period', '5')
    .option('--data <file>', 'write JSON lines of every data period')
    .option('--json', 'print the summary as JSON')
    .option('--chart <file.svg>', 'write an SVG chart of the periods')
    .option('--compare-qsd', 'run the same workload against qemu-storage-daemon on the same backing')
    .option('--no-progress', 'no live progress line')
    .option('--workdir <dir>', 'folder for sockets of daemons started here')
    .action(async (f: BenchFlags) => {
      const rep = await runBench(benchOptionsFromFlags(f, parseSize));
      process.stdout.write(f.json === true ? `${JSON.stringify(rep, null, 2)}\n` : formatReport(rep));
    });
}
