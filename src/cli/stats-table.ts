/** Compact text table of daemon statistics for `vhost-blk-cache stats` (and --watch). */
import type { DaemonStats } from '../control/daemon-api';
import type { LatencyPercentiles } from '../metrics/request-latency';

function fmt(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

function pct(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

/** A latency in µs as ms with 3 significant digits ("0.0412", "12.3"). */
function ms(us: number): string {
  const v = us / 1000;
  return v >= 100 ? v.toFixed(0) : v.toPrecision(3);
}

/**
 * One row per volume: requests, latency percentiles and, with a previous sample, rates per
 * second over the interval; then the cache totals. Latency covers the daemon's lifetime, or
 * with `intervalS` > 0 (--watch) the last full window the daemon reports (10 s).
 */
export function renderStatsTable(s: DaemonStats, prev: DaemonStats | null, intervalS: number): string {
  const rows: string[][] = [
    ['volume', 'conn', 'reads', 'writes', 'r/s', 'w/s', 'MB/s r', 'MB/s w', 'errors', 'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'hit rate', 'cached'],
  ];
  for (const v of s.volumes) {
    const p = prev?.volumes.find((x) => x.name === v.name);
    const rate = (now: number, before: number | undefined): string =>
      p === undefined || intervalS <= 0 ? '-' : fmt((now - (before ?? 0)) / intervalS);
    const mb = (now: number, before: number | undefined): string =>
      p === undefined || intervalS <= 0 ? '-' : ((now - (before ?? 0)) / intervalS / 1e6).toFixed(1);
    const c = s.cache?.volumes[v.name];
    const lat: LatencyPercentiles = intervalS > 0 ? v.latency.recent : v.latency.total;
    const q = (us: number): string => (lat.count === 0 ? '-' : ms(us));
    rows.push([
      v.name,
      v.connected ? 'yes' : 'no',
      fmt(v.requests.reads),
      fmt(v.requests.writes),
      rate(v.requests.reads, p?.requests.reads),
      rate(v.requests.writes, p?.requests.writes),
      mb(v.requests.bytesRead, p?.requests.bytesRead),
      mb(v.requests.bytesWritten, p?.requests.bytesWritten),
      String(v.requests.ioErrors + v.requests.rejected),
      q(lat.p50Us),
      q(lat.p90Us),
      q(lat.p99Us),
      q(lat.p999Us),
      c === undefined ? '-' : pct(c.readHitRate),
      c === undefined ? '-' : fmt(c.blocks),
    ]);
  }
  const widths = (rows[0] as string[]).map((_, i) => Math.max(...rows.map((r) => (r[i] as string).length)));
  const lines = rows.map((r) => r.map((cell, i) => cell.padStart(widths[i] as number)).join('  '));
  if (s.cache !== null) {
    const c = s.cache;
    lines.push(
      '',
      `cache: hit rate ${pct(c.readHitRate)}  reads ${fmt(c.reads)}  hits ${fmt(c.readHits)} (ram ${fmt(c.ramHits)}, ssd ${fmt(c.storageHits)})  ` +
        `insertions ${fmt(c.insertions)}  evictions ${fmt(c.evictions)}  invalidations ${fmt(c.invalidations)}  wraps ${c.wraps}` +
        `${c.disabled ? '  DISABLED (cache device write error)' : ''}`,
    );
  }
  const window = s.volumes[0]?.latency.recent.windowSeconds;
  lines.push(
    `uptime ${s.uptimeSeconds}s  version ${s.version}  io engine ${s.ioEngine}  latency: ${intervalS > 0 && window !== undefined ? `last ${window} s window` : 'since start'}`,
  );
  return lines.join('\n');
}
