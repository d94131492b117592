/**
 * Helpers shared by the benchmark scripts (bench/*.ts) and the `bench` command: one fio-like
 * measurement through our front end, repetitions, medians and markdown tables.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { Device, Engine, type EngineResult } from './engine';
import { type ModeName, ModeWorkload } from './modes';
import type { LatencyHistogram, LatencySummary } from '../metrics/latency-histogram';

export interface ModeMeasureOptions {
  /** vhost-user sockets; with several, each gets its own engine running the same mode (seed + i). */
  sockets: readonly string[];
  mode: ModeName;
  bs: number;
  /** Requests in flight per queue. */
  depth: number;
  queues: number;
  /** Seconds. */
  runtime: number;
  /** Stop each device's run after this many requests. */
  count?: number;
  seed: number;
  /** Range length in bytes (default: the whole device). */
  size?: number;
  offset?: number;
  rwmixread?: number;
}

export interface Measurement {
  ops: number;
  errors: number;
  seconds: number;
  iops: number;
  /** MiB/s. */
  mibps: number;
  /** Latencies in µs. */
  lat: LatencySummary;
}

const NS_PER_US = 1000;
/** /proc/PID/stat times are in clock ticks of 10 ms (USER_HZ 100). */
const CLK_TCK_US = 10_000;

/**
 * CPU time (user + system) of a process so far, µs (10 ms resolution: measure runs that cost
 * a second or more of CPU). On a shared machine CPU time per request is steadier than IOPS.
 */
export function processCpuUs(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * CLK_TCK_US;
}

/** A histogram of nanoseconds as a summary in µs. */
export function summaryUs(hist: LatencyHistogram): LatencySummary {
  const h = hist.summary();
  return {
    count: h.count,
    min: h.min / NS_PER_US,
    max: h.max / NS_PER_US,
    mean: h.mean / NS_PER_US,
    p50: h.p50 / NS_PER_US,
    p90: h.p90 / NS_PER_US,
    p99: h.p99 / NS_PER_US,
    p999: h.p999 / NS_PER_US,
  };
}

export function toMeasurement(results: readonly EngineResult[]): Measurement {
  const first = results[0];
  const hist = first.meter.total;
  for (const r of results.slice(1)) hist.merge(r.meter.total);
  const ops = results.reduce((s, r) => s + r.ops, 0);
  const bytes = results.reduce((s, r) => s + r.bytes, 0);
  const seconds = Math.max(...results.map((r) => r.seconds));
  return {
    ops,
    errors: results.reduce((s, r) => s + r.errors, 0),
    seconds,
    iops: ops / seconds,
    mibps: bytes / seconds / (1 << 20),
    lat: summaryUs(hist),
  };
}

/** Opens the devices, runs the mode on each at once, closes them. */
export async function measureMode(o: ModeMeasureOptions): Promise<Measurement> {
  const devices: Device[] = [];
  try {
    for (const s of o.sockets) devices.push(await Device.open({ socketPath: s, queues: o.queues, depth: o.depth, maxLen: o.bs }));
    const engines = devices.map(
      (d, i) =>
        new Engine({
          workload: new ModeWorkload({
            mode: o.mode,
            bs: o.bs,
            size: o.size ?? d.capacity - (o.offset ?? 0),
            offset: o.offset ?? 0,
            seed: o.seed + i,
            ...(o.rwmixread !== undefined ? { rwmixread: o.rwmixread } : {}),
          }),
          routes: [{ device: d, offset: 0 }],
          runtime: o.runtime,
          ...(o.count !== undefined ? { count: o.count } : {}),
        }),
    );
    const results = await Promise.all(engines.map((e) => e.run()));
    return toMeasurement(results);
  } finally {
    for (const d of devices) await d.close().catch(() => undefined);
  }
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median IOPS and median of each latency figure over repetitions. */
export function medianOf(ms: readonly Measurement[]): Measurement {
  const pick = (f: (m: Measurement) => number): number => median(ms.map(f));
  return {
    ops: pick((m) => m.ops),
    errors: ms.reduce((s, m) => s + m.errors, 0),
    seconds: pick((m) => m.seconds),
    iops: pick((m) => m.iops),
    mibps: pick((m) => m.mibps),
    lat: {
      count: pick((m) => m.lat.count),
      min: pick((m) => m.lat.min),
      max: pick((m) => m.lat.max),
      mean: pick((m) => m.lat.mean),
      p50: pick((m) => m.lat.p50),
      p90: pick((m) => m.lat.p90),
      p99: pick((m) => m.lat.p99),
      p999: pick((m) => m.lat.p999),
    },
  };
}

/** A markdown table. */
export function markdownTable(header: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const line = (cells: readonly (string | number)[]): string => `| ${cells.map(String).join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

export function fmtInt(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-';
}

export function fmtNum(n: number | null, digits = 1): string {
  return n === null || !Number.isFinite(n) ? '-' : n.toFixed(digits);
}

export function fmtRatio(a: number, b: number): string {
  return b > 0 ? `${(a / b).toFixed(2)}x` : '-';
}

/** One line describing the machine and its load (benchmarks on a shared machine should say so). */
export function machineNote(): string {
  const cpus = os.cpus();
  const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
  return `${cpus.length} CPUs (${cpus[0]?.model ?? 'unknown'}), ${os.release()}, load average ${load}`;
}
