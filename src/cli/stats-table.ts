/** Compact text table of daemon statistics for `vhost-blk-cache stats` (and --watch). */
import type { DaemonStats } from '../control/daemon-api';

function fmt(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

function pct(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

/**
 * One row per volume: requests and, with a previous sample, rates per second over the
 * interval; then the cache totals.
 */
export function renderStatsTable(s: DaemonStats, prev: DaemonStats | null, intervalS: number): string {
  const rows: string[][] = [['volume', 'conn', 'reads', 'writes', 'r/s', 'w/s', 'MB/s r', 'MB/s w', 'errors', 'hit rate', 'cached']];
  for (const v of s.volumes) {
    const p = prev?.volumes.find((x) => x.name === v.name);
    const rate = (now: number, before: number | undefined): string =>
      p === undefined || intervalS <= 0 ? '-' : fmt((now - (before ?? 0)) / intervalS);
    const mb = (now: number, before: number | undefined): string =>
      p === undefined || intervalS <= 0 ? '-' : ((now - (before ?? 0)) / intervalS / 1e6).toFixed(1);
    const c = s.cache?.volumes[v.name];
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
  lines.push(`uptime ${s.uptimeSeconds}s  io engine ${s.ioEngine}`);
  return lines.join('\n');
}
