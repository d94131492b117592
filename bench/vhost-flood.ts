/**
 * A message flood against the daemon (issue 9): one connection sends SET_OWNER messages as fast
 * as the socket takes them for a few seconds while another export is served; prints the
 * messages sent, the daemon's RSS before and at its peak, and the other export's write+read
 * pairs during the flood with their median, p99 and slowest time.
 *
 *   node dist/bench/vhost-flood.js [seconds]
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeMessage, FLAG_VERSION, VhostUserRequest as R } from '../src/frontend/protocol';
import { VhostUserFrontend } from '../src/frontend/vhost-user-frontend';
import { startVbc } from '../src/bench/targets';
import { benchMain, benchPositionals, positiveNumber } from '../src/bench/cli';

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) / 1024;
}

async function main(): Promise<void> {
  const [arg] = benchPositionals('Usage: node dist/bench/vhost-flood.js [seconds (default 3)]', ['3']);
  const seconds = positiveNumber(arg, 'seconds');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-flood-'));
  const vol = (name: string) => ({ name, socketPath: path.join(dir, `${name}.sock`), backing: path.join(dir, `${name}.img`), size: 16 << 20 });
  const t = await startVbc({ volumes: [vol('a'), vol('b')], logLevel: 'info', configPath: path.join(dir, 'config.json') });
  const b = await VhostUserFrontend.open(path.join(dir, 'b.sock'), { memorySize: 1 << 20, queueSize: 16 });
  try {
    const before = rssMiB(t.pid);
    const sock = net.createConnection(path.join(dir, 'a.sock'));
    sock.on('error', () => undefined);
    await new Promise<void>((resolve) => sock.once('connect', resolve));
    const chunk = Buffer.concat(Array.from({ length: 65536 }, () => encodeMessage(R.SET_OWNER, FLAG_VERSION)));
    let sent = 0;
    let peak = before;
    const t0 = Date.now();
    const flood = (async () => {
      while (Date.now() - t0 < seconds * 1000 && !sock.destroyed) {
        sent += 65536;
        if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
      }
    })();
    const lat: number[] = [];
    const data = Buffer.alloc(4096, 7);
    while (Date.now() - t0 < seconds * 1000) {
      const s = Date.now();
      await b.ring(0).write(0, data);
      await b.ring(0).read(0, 4096);
      lat.push(Date.now() - s);
      peak = Math.max(peak, rssMiB(t.pid));
    }
    await flood;
    lat.sort((x, y) => x - y);
    const pct = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? 0;
    sock.destroy();
    console.log(
      `flood: ${sent} SET_OWNER messages in ${Date.now() - t0} ms; daemon RSS ${before.toFixed(0)} MiB -> peak ${peak.toFixed(0)} MiB; ` +
        `other export: ${lat.length} write+read pairs, median ${pct(0.5)} ms, p99 ${pct(0.99)} ms, slowest ${pct(1)} ms; daemon running: ${t.running}`,
    );
  } finally {
    b.close();
    await t.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

benchMain(main);
