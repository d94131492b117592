/**
 * Hand-written SVG chart of a run: three stacked panels sharing the time axis (seconds):
 * IOPS, mean latency (ms) and read hit rate (%). Each panel has a frame, y grid lines with 1-2-5
 * ticks, x ticks, labels, and the series as polylines (one per run of known values: a period with an
 * unknown hit rate breaks the line); with at most MARKER_LIMIT samples every point also gets a circle.
 * Structure (stable for tools and tests): <g class="panel" data-panel="iops|latency|hitrate"> holding
 * <polyline class="series" data-points="n" points="x,y ..."/>.
 */
import type { PeriodSample } from './stats';

export interface ChartOptions {
  title?: string;
  /** Total width in px (default 960). */
  width?: number;
  /** Height of one panel's plot area in px (default 180). */
  panelHeight?: number;
}

const MARKER_LIMIT = 200;

interface PanelSpec {
  key: 'iops' | 'latency' | 'hitrate';
  title: string;
  unit: string;
  color: string;
  values: (number | null)[];
  /** Fixed y maximum (hit rate); otherwise a nice bound above the data. */
  fixedMax?: number;
}

const MARGIN_LEFT = 80;
const MARGIN_RIGHT = 24;
const TITLE_HEIGHT = 36;
const PANEL_TOP = 26; // panel title band
const PANEL_BOTTOM = 40; // x tick labels and axis label

/** Escapes text for XML content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);
}

/** A 1-2-5 step giving about `target` intervals over [0, max]. */
function niceStep(max: number, target = 5): number {
  if (!(max > 0) || !Number.isFinite(max)) return 1;
  const raw = max / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const f = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10;
  return f * mag;
}

/** Tick values 0, step, ... up to the first multiple of step >= max. */
export function niceTicks(max: number, target = 5): number[] {
  const step = niceStep(max, target);
  const top = Math.max(step, Math.ceil(max / step - 1e-9) * step);
  const ticks: number[] = [];
  for (let i = 0; i * step <= top + step * 1e-9; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

function fmtTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(4))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(4))}k`;
  return String(Number(v.toPrecision(4)));
}

function num(v: number): string {
  return String(Math.round(v * 10) / 10);
}

/** Renders the chart; `samples` in time order. */
export function renderChart(samples: readonly PeriodSample[], opts: ChartOptions = {}): string {
  const width = opts.width ?? 960;
  const plotH = opts.panelHeight ?? 180;
  const plotW = width - MARGIN_LEFT - MARGIN_RIGHT;
  const panelH = PANEL_TOP + plotH + PANEL_BOTTOM;
  const height = TITLE_HEIGHT + 3 * panelH;
  const title = opts.title ?? 'vhost-blk-cache benchmark';

  let tEnd = 0;
  let tStart = 0;
  for (const s of samples) {
    tEnd = Math.max(tEnd, s.t);
    tStart = Math.min(tStart, s.t - s.seconds);
  }
  const xTicks = niceTicks(tEnd - tStart, 8).map((v) => v + tStart);
  const xMax = Math.max(xTicks[xTicks.length - 1], tStart + 1);
  const xOf = (t: number): number => MARGIN_LEFT + ((t - tStart) / (xMax - tStart)) * plotW;

  const panels: PanelSpec[] = [
    { key: 'iops', title: 'IOPS', unit: 'IOPS', color: '#1f77b4', values: samples.map((s) => s.iops) },
    { key: 'latency', title: 'Mean latency', unit: 'ms', color: '#d62728', values: samples.map((s) => s.meanLatencyMs) },
    {
      key: 'hitrate',
      title: 'Read hit rate',
      unit: '%',
      color: '#2ca02c',
      values: samples.map((s) => (s.readHitRate === null ? null : s.readHitRate * 100)),
      fixedMax: 100,
    },
  ];

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text class="chart-title" x="${width / 2}" y="24" text-anchor="middle" font-size="16">${escapeXml(title)}</text>`);

  panels.forEach((p, idx) => {
    const top = TITLE_HEIGHT + idx * panelH;
    const plotTop = top + PANEL_TOP;
    const plotBottom = plotTop + plotH;
    const known = p.values.filter((v): v is number => v !== null && Number.isFinite(v));
    const dataMax = known.reduce((m, v) => Math.max(m, v), 0);
    const yTicks = niceTicks(p.fixedMax ?? dataMax, 5);
    const yMax = yTicks[yTicks.length - 1];
    const yOf = (v: number): number => plotBottom - (Math.min(Math.max(v, 0), yMax) / yMax) * plotH;

    out.push(`<g class="panel" data-panel="${p.key}">`);
    out.push(
      `<text class="panel-title" x="${MARGIN_LEFT}" y="${plotTop - 8}" font-weight="bold">` +
        `${escapeXml(p.unit === p.title ? p.title : `${p.title} (${p.unit})`)}</text>`,
    );
    // y grid, ticks and labels
    out.push('<g class="y-axis">');
    for (const v of yTicks) {
      const y = num(yOf(v));
      out.push(`<line x1="${MARGIN_LEFT}" y1="${y}" x2="${MARGIN_LEFT + plotW}" y2="${y}" stroke="#e0e0e0"/>`);
      out.push(`<line x1="${MARGIN_LEFT - 5}" y1="${y}" x2="${MARGIN_LEFT}" y2="${y}" stroke="#000000"/>`);
      out.push(`<text x="${MARGIN_LEFT - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${fmtTick(v)}</text>`);
    }
    const midY = num((plotTop + plotBottom) / 2);
    out.push(
      `<text x="16" y="${midY}" text-anchor="middle" transform="rotate(-90 16 ${midY})">${escapeXml(p.unit)}</text>`,
    );
    out.push('</g>');
    // x ticks and labels
    out.push('<g class="x-axis">');
    for (const t of xTicks) {
      const x = num(xOf(t));
      out.push(`<line x1="${x}" y1="${plotBottom}" x2="${x}" y2="${plotBottom + 5}" stroke="#000000"/>`);
      out.push(`<text x="${x}" y="${plotBottom + 18}" text-anchor="middle">${fmtTick(t)}</text>`);
    }
    out.push(`<text x="${MARGIN_LEFT + plotW / 2}" y="${plotBottom + 34}" text-anchor="middle">time (s)</text>`);
    out.push('</g>');
    // frame
    out.push(`<rect x="${MARGIN_LEFT}" y="${plotTop}" width="${plotW}" height="${plotH}" fill="none" stroke="#000000"/>`);
    // series: one polyline per run of known values
    let run: string[] = [];
    const flush = (): void => {
      if (run.length > 0) {
        out.push(
          `<polyline class="series" data-points="${run.length}" points="${run.join(' ')}" fill="none" ` +
            `stroke="${p.color}" stroke-width="1.5"/>`,
        );
      }
      run = [];
    };
    const markers: string[] = [];
    p.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        flush();
        return;
      }
      const x = num(xOf(samples[i].t));
      const y = num(yOf(v));
      run.push(`${x},${y}`);
      if (samples.length <= MARKER_LIMIT) markers.push(`<circle cx="${x}" cy="${y}" r="2" fill="${p.color}"/>`);
    });
    flush();
    out.push(...markers);
    if (known.length === 0) {
      out.push(
        `<text class="no-data" x="${MARGIN_LEFT + plotW / 2}" y="${midY}" text-anchor="middle" fill="#808080">no data</text>`,
      );
    }
    out.push('</g>');
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
