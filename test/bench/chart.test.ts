import assert from 'node:assert/strict';
import { escapeXml, niceTicks, renderChart } from '../../src/bench/chart';
import type { PeriodSample } from '../../src/bench/stats';

interface Element {
  name: string;
  attrs: Record<string, string>;
  children: Element[];
  text: string;
}

/** Minimal XML parser: elements, attributes, text; throws on unbalanced or stray tags. */
function parseXml(xml: string): Element {
  const root: Element = { name: '#root', attrs: {}, children: [], text: '' };
  const stack: Element[] = [root];
  const re = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)/gy;
  let m: RegExpExecArray | null;
  let pos = 0;
  while ((m = re.exec(xml)) !== null) {
    pos = re.lastIndex;
    const top = stack[stack.length - 1];
    if (m[5] !== undefined) {
      top.text += m[5];
      continue;
    }
    const [, close, name, attrText, selfClose] = m;
    if (close) {
      assert.equal(top.name, name, `closing </${name}> inside <${top.name}>`);
      stack.pop();
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of attrText.matchAll(/([\w:-]+)="([^"]*)"/g)) {
      assert.ok(!(a[1] in attrs), `duplicate attribute ${a[1]}`);
      attrs[a[1]] = a[2];
    }
    const el: Element = { name, attrs, children: [], text: '' };
    top.children.push(el);
    if (!selfClose) stack.push(el);
  }
  assert.equal(pos, xml.length, `unparsable XML at ${pos}: ${xml.slice(pos, pos + 40)}`);
  assert.equal(stack.length, 1, `unclosed <${stack[stack.length - 1].name}>`);
  assert.equal(root.children.length, 1);
  return root.children[0];
}

function all(el: Element, pred: (e: Element) => boolean, out: Element[] = []): Element[] {
  if (pred(el)) out.push(el);
  for (const c of el.children) all(c, pred, out);
  return out;
}

function textOf(el: Element): string {
  return el.text + el.children.map(textOf).join('');
}

function samples(n: number): PeriodSample[] {
  return Array.from({ length: n }, (_, i) => ({
    t: (i + 1) * 5,
    seconds: 5,
    ops: 1000 + i * 10,
    reads: 700,
    writes: 300 + i * 10,
    iops: (1000 + i * 10) / 5,
    meanLatencyMs: 0.5 + (i % 10) / 10,
    p99LatencyMs: 3,
    readHitRate: i < 10 || i >= 15 ? Math.min(1, i / 50) : null,
  }));
}

describe('bench/chart', () => {
  it('computes 1-2-5 ticks covering the maximum', () => {
    assert.deepEqual(niceTicks(100, 4), [0, 50, 100]);
    assert.deepEqual(niceTicks(100, 5), [0, 20, 40, 60, 80, 100]);
    assert.deepEqual(niceTicks(278, 5), [0, 100, 200, 300]);
    assert.deepEqual(niceTicks(7.3, 4), [0, 2, 4, 6, 8]);
    assert.deepEqual(niceTicks(0.37, 4), [0, 0.1, 0.2, 0.3, 0.4]);
    assert.deepEqual(niceTicks(0, 4), [0, 1]);
    assert.equal(escapeXml('a<b & "c"'), 'a&lt;b &amp; &quot;c&quot;');
  });

  it('renders three well-formed panels with axes, ticks, labels and every data point', () => {
    const data = samples(40);
    const svg = renderChart(data, { title: 'SPC-1 <32 BSU>', width: 800, panelHeight: 150 });
    const root = parseXml(svg);
    assert.equal(root.name, 'svg');
    assert.equal(root.attrs.xmlns, 'http://www.w3.org/2000/svg');
    assert.equal(root.attrs.width, '800');
    assert.ok(textOf(root).includes('SPC-1 &lt;32 BSU&gt;'));
    const panels = all(root, (e) => e.attrs.class === 'panel');
    assert.deepEqual(panels.map((p) => p.attrs['data-panel']), ['iops', 'latency', 'hitrate']);
    const expectTitles = ['IOPS', 'Mean latency (ms)', 'Read hit rate (%)'];
    panels.forEach((p, k) => {
      const title = all(p, (e) => e.attrs.class === 'panel-title')[0];
      assert.equal(textOf(title), expectTitles[k]);
      const xLabels = all(p, (e) => e.name === 'text' && e.attrs['text-anchor'] === 'middle').map(textOf);
      assert.ok(xLabels.includes('time (s)'));
      for (const t of ['0', '50', '100', '150', '200']) assert.ok(xLabels.includes(t), `x tick ${t} in panel ${k}`);
      assert.ok(all(p, (e) => e.name === 'line').length >= 10, 'tick and grid lines');
    });
    // y ticks: IOPS up to 278 -> 0..300 by 100; latency up to 1.4 -> by 0.5; hit rate 0..100 by 20
    const yTicks = (p: Element) => all(p, (e) => e.name === 'text' && e.attrs['text-anchor'] === 'end').map(textOf);
    assert.deepEqual(yTicks(panels[0]), ['0', '100', '200', '300']);
    assert.deepEqual(yTicks(panels[1]), ['0', '0.5', '1', '1.5']);
    assert.deepEqual(yTicks(panels[2]), ['0', '20', '40', '60', '80', '100']);

    // data: one point per sample; the hit-rate line breaks over the 5 unknown periods
    const lines = (p: Element) => all(p, (e) => e.name === 'polyline');
    const points = (e: Element) => e.attrs.points.split(' ').map((xy) => xy.split(',').map(Number));
    const iops = lines(panels[0]);
    assert.equal(iops.length, 1);
    assert.equal(iops[0].attrs['data-points'], '40');
    const pts = points(iops[0]);
    assert.equal(pts.length, 40);
    // x increases with t; rising IOPS means decreasing y; values map linearly onto the axis
    for (let i = 1; i < pts.length; i++) assert.ok(pts[i][0] > pts[i - 1][0] && pts[i][1] < pts[i - 1][1]);
    const frame = all(panels[0], (e) => e.name === 'rect')[0];
    const [fx, fy, fw, fh] = ['x', 'y', 'width', 'height'].map((k) => Number(frame.attrs[k]));
    assert.ok(Math.abs(pts[0][1] - (fy + fh - (200 / 300) * fh)) <= 0.1);
    assert.ok(Math.abs(pts[39][0] - (fx + (200 / 200) * fw)) <= 0.1);
    assert.ok(Math.abs(pts[0][0] - (fx + (5 / 200) * fw)) <= 0.1);
    const hit = lines(panels[2]);
    assert.deepEqual(hit.map((e) => e.attrs['data-points']), ['10', '25']);
    assert.equal(all(panels[2], (e) => e.name === 'circle').length, 35);
    assert.equal(all(panels[1], (e) => e.name === 'circle').length, 40);
  });

  it('leaves out markers for long runs and marks panels without data', () => {
    const data = samples(500).map((s) => ({ ...s, readHitRate: null }));
    const root = parseXml(renderChart(data));
    const panels = all(root, (e) => e.attrs.class === 'panel');
    assert.equal(all(root, (e) => e.name === 'circle').length, 0);
    assert.equal(all(panels[0], (e) => e.name === 'polyline')[0].attrs['data-points'], '500');
    assert.equal(all(panels[2], (e) => e.name === 'polyline').length, 0);
    assert.equal(textOf(all(panels[2], (e) => e.attrs.class === 'no-data')[0]), 'no data');
    // an empty run still renders a valid chart
    assert.equal(all(parseXml(renderChart([])), (e) => e.attrs.class === 'panel').length, 3);
  });
});
