/**
 * The operator's surface, each through the real command (bin/vhost-blk-cache) in a child
 * process: --print-capabilities, serve with stats / stats --json / stats --watch / volumes /
 * add-volume / remove-volume, set-cache-mode, flush of a write-back volume over a paused NBD store, Prometheus metrics scraped over TCP, demo, SIGHUP log reopen,
 * --log-format, --fd, --exit-with-parent, --check, --version, systemd socket activation and sd_notify, and bench with no arguments.
 *
 * Inherited sockets and the sd_notify receiver use python3 (node-gyp's own requirement, so present
 * wherever the addon builds): Node can neither hand a listening socket to a child as fd 3 without
 * also accepting on it, nor bind a unix datagram socket.
 */
import { strict as assert } from 'node:assert';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { CAPABILITIES } from '../../src/cli/main';
import type { DaemonConfig } from '../../src/config/config';
import type { DaemonStats } from '../../src/control/daemon-api';
import { PARENT_POLL_MS } from '../../src/daemon/daemon';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags';
import { VERSION } from '../../src/util/version';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { LATENCY_BUCKETS_S } from '../../src/metrics/request-latency';
import { VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { startNbdkit, unixUri } from '../backing/nbd-servers';
import { tmpDir } from '../support/tmp';
import { stamp } from '../support/stamps';

const REPO = path.resolve(__dirname, '../../..');
const BIN = path.join(REPO, 'bin', 'vhost-blk-cache');
const BLOCK = 4096;

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the command to completion. */
function cli(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Collects a child's output and waits for text in it. */
class Output {
  text = '';
  private waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  constructor(stream: Readable | null) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      this.text += chunk;
      this.waiters = this.waiters.filter((w) => {
        const m = this.text.match(w.re);
        if (m !== null) w.resolve(m);
        return m === null;
      });
    });
  }

  /** Resolves with the first match of `re` in everything written so far. */
  waitFor(re: RegExp, what: string, exited?: Promise<number | null>): Promise<RegExpMatchArray> {
    const m = this.text.match(re);
    if (m !== null) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      this.waiters.push({ re, resolve });
      void exited?.then((code) => reject(new Error(`exited (${code}) before ${what}:\n${this.text}`)));
    });
  }
}

/** A long-running child (daemon, stats --watch, a python helper). */
class Child {
  readonly out: Output;
  readonly err: Output;
  readonly exited: Promise<number | null>;

  constructor(readonly proc: ChildProcess) {
    this.out = new Output(proc.stdout);
    this.err = new Output(proc.stderr);
    this.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
  }

  static node(args: string[], env: NodeJS.ProcessEnv = process.env): Child {
    return new Child(spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  /** The daemon logged that every volume listens (JSON or pretty lines). */
  ready(): Promise<RegExpMatchArray> {
    return this.err.waitFor(/ready to accept connections/, 'the daemon was ready', this.exited);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    return this.exited;
  }
}

/**
 * python3 binds unix stream sockets at `paths`, places them at fds 3, 4, ... and execs the command;
 * with `names`, as systemd does: LISTEN_PID (the same pid after exec), LISTEN_FDS, LISTEN_FDNAMES.
 */
function withInheritedSockets(paths: string[], names: string[] | null, args: string[], env: NodeJS.ProcessEnv = process.env): Child {
  const script = [
    'import os, socket, sys',
    'paths, names, argv = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]',
    'high = []',
    'for i, p in enumerate(paths):',
    '    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(p); s.listen(16)',
    '    high.append(os.dup2(s.fileno(), 50 + i)); s.close()',
    'for i, fd in enumerate(high):',
    '    os.dup2(fd, 3 + i, inheritable=True); os.close(fd)',
    'if names != "-":',
    '    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(paths)), LISTEN_FDNAMES=names)',
    'os.execv(argv[0], argv)',
  ].join('\n');
  return new Child(
    spawn('python3', ['-c', script, paths.join(','), names === null ? '-' : names.join(':'), process.execPath, BIN, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
}

async function capacityOf(socketPath: string): Promise<number> {
  const fe = await VhostUserFrontend.open(socketPath, { queues: 1, queueSize: 64, memorySize: 4 << 20 });
  try {
    return Number(fe.config?.capacity ?? 0n) * 512;
  } finally {
    await fe.stop();
    fe.close();
  }
}

/** Writes then reads back `n` stamped blocks (so the daemon has latencies to report). */
async function exercise(socketPath: string, n: number): Promise<void> {
  const fe = await VhostUserFrontend.open(socketPath, { queues: 1, queueSize: 64, memorySize: 8 << 20 });
  try {
    const q = fe.ring(0);
    for (let blk = 0; blk < n; blk++) {
      const data = stamp('b', blk, 1);
      assert.equal((await q.write(blk * 8, data)).status, VIRTIO_BLK_S_OK);
      const r = await q.read(blk * 8, BLOCK);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.ok(Buffer.from(r.data as Uint8Array).equals(data), `block ${blk} reads back`);
    }
    await fe.stop();
  } finally {
    fe.close();
  }
}

/** Polls `cond` every 20 ms until it holds (files have no change notification we can rely on). */
async function until(cond: () => boolean, what: string, exited: Promise<number | null>): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  while (!cond()) {
    if (gone) throw new Error(`exited before ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function httpGet(url: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
      })
      .on('error', reject);
  });
}

/** Prometheus text format: sample lines as {name, labels, value}. */
function parsePrometheus(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m !== null, `not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = l[2] as string;
    out.push({ name: m[1] as string, labels, value: m[3] === '+Inf' ? Infinity : Number(m[3]) });
  }
  return out;
}

describe('CLI: the real command (bin/vhost-blk-cache)', function () {
  this.timeout(60_000);
  let dir: string;
  const children: Child[] = [];

  function track(c: Child): Child {
    children.push(c);
    return c;
  }

  beforeEach(() => {
    dir = tmpDir('cli');
  });
  afterEach(async () => {
    for (const c of children.splice(0)) await c.stop('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a daemon killed with SIGKILL restarts warm: the same reads hit at least 0.9x as often, every block checked', async () => {
    // 1200 stamped blocks; the first 1024 are the working set, the rest push its last segment out.
    const n = 1200;
    const img = path.join(dir, 'warm.img');
    fs.writeFileSync(img, Buffer.concat(Array.from({ length: n }, (_, b) => stamp('w', b, 1))));
    const ctl = path.join(dir, 'ctl.sock');
    const sock = path.join(dir, 'warm.sock');
    const args = ['serve', '--name', 'warm', '--socket-path', sock, '--backing', img, '--cache', path.join(dir, 'cache.img'), '--cache-size', '32M', '--control', ctl];
    const stats = async (): Promise<{ reads: number; readHits: number; segmentWrites: number }> => {
      const r = await cli(['stats', '--json', '--control', ctl]);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as DaemonStats).cache as unknown as { reads: number; readHits: number; segmentWrites: number };
    };
    const readAll = async (count: number): Promise<void> => {
      const fe = await VhostUserFrontend.open(sock, { queues: 1, queueSize: 64, memorySize: 8 << 20 });
      try {
        const q = fe.ring(0);
        for (let b = 0; b < count; b += 32) {
          const rs = await Promise.all(Array.from({ length: Math.min(32, count - b) }, (_, i) => q.read((b + i) * 8, BLOCK)));
          rs.forEach((r, i) => {
            assert.equal(r.status, VIRTIO_BLK_S_OK);
            assert.ok(Buffer.from(r.data as Uint8Array).equals(stamp('w', b + i, 1)), `block ${b + i}`);
          });
        }
        await fe.stop();
      } finally {
        fe.close();
      }
    };
    let daemon = track(Child.node(args));
    await daemon.ready();
    await readAll(n);
    // The working set's segments are written (the hand left them) before the kill.
    for (let st = await stats(); st.segmentWrites < 8; st = await stats()) await new Promise((r) => setTimeout(r, 20));
    const s0 = await stats();
    await readAll(1024);
    const s1 = await stats();
    const before = (s1.readHits - s0.readHits) / (s1.reads - s0.reads);
    assert.equal(await daemon.stop('SIGKILL'), null);
    daemon = track(Child.node(args));
    await daemon.ready();
    const a0 = await stats();
    await readAll(1024);
    const a1 = await stats();
    const after = (a1.readHits - a0.readHits) / (a1.reads - a0.reads);
    if (process.env.VBC_MODEL_STATS) console.log(JSON.stringify({ before, after }));
    assert.ok(after >= 0.9 * before, `hit rate ${after.toFixed(3)} after the SIGKILL, ${before.toFixed(3)} before`);
  });

  it('flush destages a write-back volume (its blocks acknowledged while the NBD backing store hangs); remove-volume refuses dirty data and says how much', async () => {
    // nbdkit's file plugin behind the pause filter: 'p' holds every request until 'r'.
    const img = path.join(dir, 'wb.img');
    fs.writeFileSync(img, Buffer.alloc(4 << 20));
    const nbdSock = path.join(dir, 'nbd.sock');
    const pauseSock = path.join(dir, 'pause.sock');
    const nbd = await startNbdkit({ socket: nbdSock, filters: ['pause'], plugin: 'file', args: [img, `pause-control=${pauseSock}`] });
    const pause = async (c: 'p' | 'r'): Promise<void> => {
      const s = net.connect(pauseSock);
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.once('data', (d) => (d.toString() === c.toUpperCase() ? resolve() : reject(new Error(`pause filter answered ${d.toString()}`))));
        s.write(c);
      });
      s.destroy();
    };
    try {
      const ctl = path.join(dir, 'ctl.sock');
      const sock = path.join(dir, 'wb.sock');
      const daemon = track(
        Child.node(['serve', '--name', 'wb', '--socket-path', sock, '--backing', unixUri(nbdSock), '--cache-mode', 'writeback', '--cache', path.join(dir, 'cache.img'), '--cache-size', '8M', '--control', ctl, '--log-level', 'debug']),
      );
      await daemon.ready();
      await pause('p');
      const n = 16;
      const fe = await VhostUserFrontend.open(sock, { queues: 1, queueSize: 64, memorySize: 8 << 20 });
      try {
        const q = fe.ring(0);
        const w = await Promise.all(Array.from({ length: n }, (_, b) => q.write(b * 8, stamp('wb', b, 1))));
        for (const r of w) assert.equal(r.status, VIRTIO_BLK_S_OK);
        for (let b = 0; b < n; b++) {
          const r = await q.read(b * 8, BLOCK);
          assert.ok(Buffer.from(r.data as Uint8Array).equals(stamp('wb', b, 1)), `block ${b} reads back from the cache`);
        }
        await fe.stop();
      } finally {
        fe.close();
      }
      const dirty = async (): Promise<number> => {
        const r = await cli(['stats', '--json', '--control', ctl]);
        assert.equal(r.code, 0, r.stderr);
        return (JSON.parse(r.stdout) as { cache: { volumes: Record<string, { dirtyBlocks: number }> } }).cache.volumes.wb.dirtyBlocks;
      };
      assert.equal(await dirty(), n);
      const refused = await cli(['remove-volume', 'wb', '--control', ctl]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, new RegExp(`wb holds ${n} write-back blocks \\(${n * BLOCK} bytes\\) not written back`));
      const flushing = cli(['flush', 'wb', '--control', ctl]);
      const onBacking = (b: number): Buffer => fs.readFileSync(img).subarray(b * BLOCK, (b + 1) * BLOCK);
      for (let b = 0; b < n; b++) assert.ok(onBacking(b).equals(Buffer.alloc(BLOCK)), `block ${b} not on the backing store yet`);
      // The flush is in progress before the backing store comes back: it writes the blocks back.
      await daemon.err.waitFor(/"route":"POST \/volumes\/wb\/flush"/, 'the flush request', daemon.exited);
      await pause('r');
      const flushed = await flushing;
      assert.equal(flushed.code, 0, flushed.stderr);
      const res = JSON.parse(flushed.stdout) as { flushed: string; destaged: number };
      assert.deepEqual(res, { flushed: 'wb', destaged: n });
      assert.equal(await dirty(), 0);
      for (let b = 0; b < n; b++) assert.ok(onBacking(b).equals(stamp('wb', b, 1)), `block ${b} on the backing store`);
      const removed = await cli(['remove-volume', 'wb', '--control', ctl]);
      assert.equal(removed.code, 0, removed.stderr);
    } finally {
      await nbd.stop();
    }
  });

  it('--print-capabilities prints the vhost-user back-end capabilities', async () => {
    const r = await cli(['--print-capabilities']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), CAPABILITIES);
    assert.deepEqual(CAPABILITIES, { type: 'block', features: ['read-only', 'blk-file'] });
  });

  it('--check prints the configuration as the daemon would run it and opens nothing; a bad one exits 1 with the reason', async () => {
    const img = path.join(dir, 'd.img');
    const cacheImg = path.join(dir, 'c.img');
    const r = await cli(['serve', '--socket-path', path.join(dir, 's.sock'), '--backing', img, '--cache', cacheImg, '--cache-size', '64M', '--cache-mode', 'writeback', '--check']);
    assert.equal(r.code, 0, r.stderr);
    const c = JSON.parse(r.stdout) as DaemonConfig;
    assert.deepEqual(c.cache, { path: cacheImg, size: 64 << 20, blockSize: 4096, segmentSize: 512 << 10 });
    assert.equal(c.volumes[0]?.cacheMode, 'writeback');
    assert.equal(c.volumes[0]?.numQueues, 64);
    assert.deepEqual(fs.readdirSync(dir), [], 'no socket, image or cache file created');
    const config = path.join(dir, 'bad.json');
    fs.writeFileSync(config, JSON.stringify({ volumes: [{ name: 'a', backing: img }] }));
    const bad = await cli(['--config', config, '--check']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /config\.volumes\[0\]: give exactly one of socketPath and fd/);
    assert.equal(bad.stdout, '');
  });

  it('--check of a volume given by flags whose socket comes from systemd (no --socket-path, no --fd) checks it as activated and names the socket', async () => {
    // ExecStartPre gets no LISTEN_FDS: the check must not ask for a socket the daemon will inherit.
    const img = path.join(dir, 'd.img');
    const r = await cli(['serve', '--name', 'vm1', '--backing', img, '--size', '1G', '--check']);
    assert.equal(r.code, 0, r.stderr);
    const c = JSON.parse(r.stdout) as { volumes: Record<string, unknown>[] };
    assert.equal(c.volumes.length, 1);
    assert.equal(c.volumes[0]?.name, 'vm1');
    assert.equal(c.volumes[0]?.systemdSocket, 'vm1');
    assert.equal(c.volumes[0]?.fd, undefined);
    assert.equal(c.volumes[0]?.socketPath, undefined);
    assert.deepEqual(fs.readdirSync(dir), [], 'nothing created');
    // Still a check: a wrong flag fails it.
    const bad = await cli(['serve', '--name', 'vm1', '--backing', img, '--num-queues', 'x', '--check']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--num-queues: expected a whole number/);
  });

  it("--version and -V print package.json's version", async () => {
    const { version } = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    assert.match(version, /^\d+\.\d+\.\d+/);
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `${version}\n`);
    }
  });

  it("runs as an executable whose shebang passes the daemon's node flags (DAEMON_NODE_FLAGS) to node", async () => {
    const first = fs.readFileSync(BIN, 'utf8').split('\n')[0];
    assert.equal(first, `#!/usr/bin/env -S node ${DAEMON_NODE_FLAGS.join(' ')}`);
    // The flags reach the node the shebang starts: a preloaded script reports its execArgv.
    const probe = path.join(dir, 'exec-argv.js');
    fs.writeFileSync(probe, "process.stderr.write('execArgv=' + JSON.stringify(process.execArgv) + '\\n');\n");
    const r = await new Promise<CliResult>((resolve) => {
      execFile(BIN, ['--print-capabilities'], { env: { ...process.env, NODE_OPTIONS: `--require=${probe}` } }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr });
      });
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), CAPABILITIES);
    const line = r.stderr.split('\n').find((l) => l.startsWith('execArgv='));
    assert.ok(line !== undefined, r.stderr);
    for (const f of DAEMON_NODE_FLAGS) assert.ok((JSON.parse(line.slice('execArgv='.length)) as string[]).includes(f), line);
  });

  describe('against a running daemon', () => {
    let daemon: Child;
    let ctl: string;

    beforeEach(async () => {
      ctl = path.join(dir, 'ctl.sock');
      daemon = track(
        Child.node([
          'serve', '--name', 'vol0', '--socket-path', path.join(dir, 'vol0.sock'), '--backing', path.join(dir, 'vol0.img'), '--size', '16M',
          '--cache', path.join(dir, 'cache.img'), '--cache-size', '8M', '--control', ctl, '--metrics-listen', '127.0.0.1:0',
        ]),
      );
      await daemon.ready();
      await exercise(path.join(dir, 'vol0.sock'), 32);
    });

    it('volumes lists the volumes as JSON', async () => {
      const r = await cli(['volumes', '--control', ctl]);
      assert.equal(r.code, 0, r.stderr);
      const vols = JSON.parse(r.stdout) as { name: string; socketPath: string }[];
      assert.deepEqual(vols.map((v) => [v.name, v.socketPath]), [['vol0', path.join(dir, 'vol0.sock')]]);
    });

    it('stats prints a table with request counts and latency percentiles; --json the raw statistics', async () => {
      const r = await cli(['stats', '--control', ctl]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split('\n');
      // Two-word headings ("p50 ms", "hit rate", "MB/s r") joined for splitting.
      const header = (lines[0] as string).trim().replace(/ (ms|rate|r|w)\b/g, '_$1').split(/\s+/);
      const row = (lines.find((l) => l.trim().startsWith('vol0')) as string).trim().split(/\s+/);
      const col = (name: string): string => row[header.indexOf(name)] as string;
      assert.equal(header.length, row.length, r.stdout);
      assert.equal(col('reads'), '32');
      assert.equal(col('writes'), '32');
      for (const p of ['p50_ms', 'p90_ms', 'p99_ms', 'p99.9_ms']) assert.ok(Number(col(p)) > 0, `${p} ${col(p)} ms in\n${r.stdout}`);
      assert.match(r.stdout, /latency: since start/);
      assert.match(r.stdout, new RegExp(`^uptime \\d+s  version ${VERSION.replace(/\./g, '\\.')}  io engine `, 'm'));

      const j = await cli(['stats', '--control', ctl, '--json']);
      const s = JSON.parse(j.stdout) as DaemonStats;
      assert.equal(s.version, VERSION);
      const lat = (s.volumes[0] as DaemonStats['volumes'][number]).latency.total;
      assert.equal(lat.count, 64);
      assert.ok(lat.p50Us > 0 && lat.p50Us <= lat.p90Us && lat.p90Us <= lat.p99Us && lat.p99Us <= lat.p999Us, JSON.stringify(lat));
    });

    it('stats --watch prints a frame every interval until stopped', async () => {
      const watch = track(Child.node(['stats', '--control', ctl, '--watch', '0.1']));
      await watch.out.waitFor(/(^uptime .*\n[^]*){3}/m, 'three frames', watch.exited);
      assert.equal(await watch.stop('SIGINT'), null);
      const frames = watch.out.text.split(/^uptime .*$/m).filter((f) => f.includes('vol0'));
      assert.ok(frames.length >= 3, watch.out.text);
      assert.match(watch.out.text, /latency: last 10 s window/);
      // From the second frame on, rates over the interval are shown ('-' in the first).
      assert.match(frames[1] as string, /vol0\s+yes|vol0\s+no/);
    });

    it('add-volume adds a volume at run time; remove-volume refuses a connected one unless --force', async () => {
      const add = await cli([
        'add-volume', '--control', ctl, '--name', 'vm2', '--socket-path', path.join(dir, 'vm2.sock'), '--backing', path.join(dir, 'vm2.img'), '--size', '8M',
      ]);
      assert.equal(add.code, 0, add.stderr);
      assert.equal((JSON.parse(add.stdout) as { name: string }).name, 'vm2');
      const vols = JSON.parse((await cli(['volumes', '--control', ctl])).stdout) as { name: string }[];
      assert.deepEqual(vols.map((v) => v.name), ['vol0', 'vm2']);
      assert.equal(await capacityOf(path.join(dir, 'vm2.sock')), 8 << 20);

      const fe = await VhostUserFrontend.open(path.join(dir, 'vm2.sock'), { queues: 1, queueSize: 64, memorySize: 4 << 20 });
      try {
        const refused = await cli(['remove-volume', 'vm2', '--control', ctl]);
        assert.equal(refused.code, 1);
        assert.match(refused.stderr, /vm2 has a connected front end/);
        const forced = await cli(['remove-volume', 'vm2', '--control', ctl, '--force']);
        assert.equal(forced.code, 0, forced.stderr);
        assert.deepEqual(JSON.parse(forced.stdout), { removed: 'vm2' });
      } finally {
        fe.close();
      }
      const after = JSON.parse((await cli(['volumes', '--control', ctl])).stdout) as { name: string }[];
      assert.deepEqual(after.map((v) => v.name), ['vol0']);
      const missing = await cli(['remove-volume', 'vm2', '--control', ctl]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /no volume named vm2/);
    });

    it('set-cache-mode switches a volume into writeback at once and out of it once its blocks are written back; /stats and volumes show the mode', async () => {
      const sw = async (mode: string): Promise<CliResult> => cli(['set-cache-mode', 'vol0', mode, '--control', ctl]);
      const into = await sw('writeback');
      assert.equal(into.code, 0, into.stderr);
      assert.deepEqual(JSON.parse(into.stdout), { volume: 'vol0', mode: 'writeback', from: 'writethrough', destaged: 0 });
      const n = 8;
      const fe = await VhostUserFrontend.open(path.join(dir, 'vol0.sock'), { queues: 1, queueSize: 64, memorySize: 8 << 20 });
      try {
        const q = fe.ring(0);
        const w = await Promise.all(Array.from({ length: n }, (_, k) => q.write((100 + k) * 8, stamp('sw', 100 + k, 1))));
        for (const r of w) assert.equal(r.status, VIRTIO_BLK_S_OK);
        await fe.stop();
      } finally {
        fe.close();
      }
      const out = await sw('writethrough');
      assert.equal(out.code, 0, out.stderr);
      const res = JSON.parse(out.stdout) as { volume: string; mode: string; from: string; destaged: number };
      assert.deepEqual({ ...res, destaged: 0 }, { volume: 'vol0', mode: 'writethrough', from: 'writeback', destaged: 0 });
      // Those the background destaging had not written back yet, the switch did.
      assert.ok(res.destaged <= n, `${res.destaged} destaged`);
      const img = fs.readFileSync(path.join(dir, 'vol0.img'));
      for (let k = 0; k < n; k++) assert.ok(img.subarray((100 + k) * BLOCK, (101 + k) * BLOCK).equals(stamp('sw', 100 + k, 1)), `block ${100 + k} on the backing file`);
      const stats = JSON.parse((await cli(['stats', '--json', '--control', ctl])).stdout) as DaemonStats;
      assert.equal(stats.cache?.volumes.vol0?.dirtyBlocks, 0);
      assert.equal(stats.volumes.find((v) => v.name === 'vol0')?.cacheMode, 'writethrough');
      const vols = JSON.parse((await cli(['volumes', '--control', ctl])).stdout) as { name: string; cacheMode: string }[];
      assert.equal(vols.find((v) => v.name === 'vol0')?.cacheMode, 'writethrough');
      const bad = await sw('fast');
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /mode: must be one of writethrough, writearound, readonly, none, writeback, got "fast"/);
      const missing = await cli(['set-cache-mode', 'vm9', 'none', '--control', ctl]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /no volume named vm9/);
    });

    it('--metrics-listen serves Prometheus text over TCP with per-volume, per-type latency histograms', async () => {
      const m = await daemon.err.waitFor(/"metrics":"127\.0\.0\.1:(\d+)"/, 'the metrics address', daemon.exited);
      const res = await httpGet(`http://127.0.0.1:${m[1]}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.type, /^text\/plain/);
      const samples = parsePrometheus(res.body);
      const value = (name: string, labels: Record<string, string>): number => {
        const s = samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
        assert.equal(s.length, 1, `one sample ${name} ${JSON.stringify(labels)}`);
        return (s[0] as { value: number }).value;
      };
      assert.equal(value('vbc_read_requests_total', { volume: 'vol0' }), 32);
      assert.equal(value('vbc_build_info', { version: VERSION }), 1);
      assert.match(res.body, /# TYPE vbc_request_latency_seconds histogram/);
      for (const type of ['read', 'write']) {
        const buckets = LATENCY_BUCKETS_S.map((le) => value('vbc_request_latency_seconds_bucket', { volume: 'vol0', type, le: String(le) }));
        const inf = value('vbc_request_latency_seconds_bucket', { volume: 'vol0', type, le: '+Inf' });
        buckets.forEach((b, i) => assert.ok(i === 0 || b >= (buckets[i - 1] as number), `cumulative buckets ${buckets.join(',')}`));
        assert.equal(inf, 32);
        assert.equal(value('vbc_request_latency_seconds_count', { volume: 'vol0', type }), 32);
        const sum = value('vbc_request_latency_seconds_sum', { volume: 'vol0', type });
        assert.ok(sum > 0 && sum < 32 * 10, `sum ${sum}`);
      }
      assert.equal(value('vbc_request_latency_seconds_count', { volume: 'vol0', type: 'discard' }), 0);
      // The process and Node.js series: CPU spent (the 32 reads took some), the event-loop delay.
      assert.ok(value('process_cpu_seconds_total', {}) > 0);
      const lag = value('nodejs_eventloop_lag_p99_seconds', {});
      assert.ok(lag > 0 && lag < 60, `event-loop delay p99 ${lag} s`);
      assert.equal((await httpGet(`http://127.0.0.1:${m[1]}/stats`)).status, 404, 'only /metrics over TCP');
    });
  });

  it('demo serves a sparse 1 GiB disk through a cache and stops cleanly on SIGTERM', async () => {
    const demo = track(Child.node(['demo', '--data', dir]));
    await demo.ready();
    assert.match(demo.out.text, /qemu-system-x86_64 .*memory-backend-memfd.*share=on/);
    assert.match(demo.out.text, new RegExp(`path=${path.join(dir, 'demo.sock')}`));
    assert.equal(await capacityOf(path.join(dir, 'demo.sock')), 1 << 30);
    assert.equal(fs.statSync(path.join(dir, 'demo.img')).size, 1 << 30);
    assert.equal(fs.statSync(path.join(dir, 'cache.img')).size, 256 << 20);
    assert.equal(await demo.stop('SIGTERM'), 0);
    assert.match(demo.err.text, /cache saved for a warm restart/);
  });

  it('SIGHUP reopens the log file (logrotate)', async () => {
    const log = path.join(dir, 'daemon.log');
    const d = track(Child.node(['serve', '--socket-path', path.join(dir, 's.sock'), '--backing', path.join(dir, 'd.img'), '--size', '1M', '--log-file', log]));
    const rotated = `${log}.1`;
    // Ready is logged to the file: wait for it there.
    await until(() => fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes('ready to accept connections'), 'ready in the log', d.exited);
    fs.renameSync(log, rotated);
    d.proc.kill('SIGHUP');
    await until(() => fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes('SIGHUP: log reopened'), 'a new log file', d.exited);
    assert.equal(await d.stop('SIGTERM'), 0);
    const before = fs.readFileSync(rotated, 'utf8');
    const after = fs.readFileSync(log, 'utf8');
    assert.match(before, /ready to accept connections/);
    assert.doesNotMatch(before, /SIGHUP: log reopened/);
    assert.match(after, /"msg":"stopped"/);
    for (const line of after.trim().split('\n')) JSON.parse(line);
    assert.equal(d.err.text, '', 'nothing on stderr with --log-file');
  });

  it('logs JSON when stderr is not a terminal, human-readable lines with --log-format pretty', async () => {
    const args = ['serve', '--socket-path', path.join(dir, 's.sock'), '--backing', path.join(dir, 'd.img'), '--size', '1M'];
    const json = track(Child.node(args));
    await json.ready();
    assert.equal(await json.stop(), 0);
    for (const line of json.err.text.trim().split('\n')) assert.equal(typeof (JSON.parse(line) as { msg: string }).msg, 'string');

    const pretty = track(Child.node([...args, '--log-format', 'pretty']));
    await pretty.ready();
    assert.equal(await pretty.stop(), 0);
    const lines = pretty.err.text.trim().split('\n');
    for (const line of lines) assert.match(line, /^\d\d:\d\d:\d\d\.\d{3} (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) /);
    assert.ok(lines.some((l) => /^\S+ INFO {2}\[vol0\] volume ready .*sizeBytes=1048576/.test(l)), pretty.err.text);
  });

  it('--exit-with-parent: the daemon stops cleanly once the process that started it is killed; without it the daemon outlives it', async () => {
    // python3 starts the daemon as its child, prints its pid and sleeps until killed.
    const script = ['import subprocess, sys, time', 'p = subprocess.Popen(sys.argv[1:])', 'print(p.pid, flush=True)', 'time.sleep(600)'].join('\n');
    const viaParent = (name: string, extra: string[]): Child =>
      track(
        new Child(
          spawn(
            'python3',
            ['-c', script, process.execPath, BIN, 'serve', '--socket-path', path.join(dir, `${name}.sock`), '--backing', path.join(dir, `${name}.img`), '--size', '1M',
              '--cache', path.join(dir, `${name}-cache.img`), '--cache-size', '8M', ...extra],
            { stdio: ['ignore', 'pipe', 'pipe'] },
          ),
        ),
      );
    /** Whether pid has exited (gone, or a zombie nobody reaped yet). */
    const gone = (pid: number): boolean => {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
      } catch {
        return true;
      }
    };
    const pids: number[] = [];
    try {
      const watched = viaParent('watched', ['--exit-with-parent']);
      const plain = viaParent('plain', []);
      for (const c of [watched, plain]) {
        pids.push(Number((await c.out.waitFor(/^(\d+)$/m, 'the daemon pid', c.exited))[1]));
        await c.ready();
      }
      const [watchedPid, plainPid] = pids as [number, number];
      await watched.stop('SIGKILL');
      await plain.stop('SIGKILL');
      const deadline = Date.now() + 20 * PARENT_POLL_MS + 10_000;
      while (!gone(watchedPid)) {
        assert.ok(Date.now() < deadline, `the daemon with --exit-with-parent still runs:\n${watched.err.text}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(watched.err.text, /parent process exited \(--exit-with-parent\): stopping/);
      assert.match(watched.err.text, /cache saved for a warm restart/, 'stopped cleanly, as on SIGTERM');
      // The other one, told nothing, still serves after the same time.
      await new Promise((r) => setTimeout(r, 3 * PARENT_POLL_MS));
      assert.ok(!gone(plainPid), 'a daemon without --exit-with-parent outlives its parent');
      assert.equal(await capacityOf(path.join(dir, 'plain.sock')), 1 << 20);
      assert.doesNotMatch(plain.err.text, /parent process exited/);
    } finally {
      for (const pid of pids) if (!gone(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('--fd serves an inherited listening socket', async () => {
    const sock = path.join(dir, 'inherited.sock');
    const d = track(withInheritedSockets([sock], null, ['--fd', '3', '--backing', path.join(dir, 'd.img'), '--size', '2M']));
    await d.ready();
    assert.equal(await capacityOf(sock), 2 << 20);
    await exercise(sock, 4);
    assert.equal(await d.stop(), 0);
  });

  it('systemd socket activation: LISTEN_FDNAMES give each volume its socket by name', async () => {
    const config = {
      volumes: [
        // socketPath is used when not activated; under activation the inherited socket replaces it.
        { name: 'vmA', socketPath: path.join(dir, 'unused-a.sock'), backing: path.join(dir, 'a.img'), size: '1M' },
        { name: 'vmB', socketPath: path.join(dir, 'unused-b.sock'), backing: path.join(dir, 'b.img'), size: '3M' },
      ],
    };
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    const first = path.join(dir, 'first.sock');
    const second = path.join(dir, 'second.sock');
    // The order of the fds differs from the order of the volumes: only the names map them.
    const d = track(withInheritedSockets([first, second], ['vmB', 'vmA'], ['serve', '--config', path.join(dir, 'config.json')]));
    await d.ready();
    assert.equal(await capacityOf(first), 3 << 20, 'fd 3 (vmB)');
    assert.equal(await capacityOf(second), 1 << 20, 'fd 4 (vmA)');
    assert.ok(!fs.existsSync(path.join(dir, 'unused-a.sock')) && !fs.existsSync(path.join(dir, 'unused-b.sock')));
    assert.equal(await d.stop(), 0);
  });

  it('sd_notify: READY=1 once serving and STOPPING=1 on SIGTERM to NOTIFY_SOCKET', async () => {
    const notify = path.join(dir, 'notify.sock');
    const receiver = track(
      new Child(
        spawn(
          'python3',
          ['-u', '-c', 'import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("bound")\nwhile True: print(s.recv(4096).decode())', notify],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        ),
      ),
    );
    await receiver.out.waitFor(/^bound$/m, 'the receiver bound', receiver.exited);
    const d = track(
      Child.node(['serve', '--socket-path', path.join(dir, 's.sock'), '--backing', path.join(dir, 'd.img'), '--size', '1M'], { ...process.env, NOTIFY_SOCKET: notify }),
    );
    await receiver.out.waitFor(/^READY=1$/m, 'READY=1', d.exited);
    // Ready means serving: the socket answers at once.
    assert.equal(await capacityOf(path.join(dir, 's.sock')), 1 << 20);
    assert.doesNotMatch(receiver.out.text, /STOPPING=1/);
    d.proc.kill('SIGTERM');
    await receiver.out.waitFor(/^STOPPING=1$/m, 'STOPPING=1', receiver.exited);
    assert.equal(await d.exited, 0);
    assert.deepEqual(receiver.out.text.trim().split('\n'), ['bound', 'READY=1', 'STOPPING=1']);
  });

  it('bench with no arguments runs on an embedded default and removes it', async () => {
    const r = await cli(['bench', '--runtime', '1', '--period', '0.5', '--no-progress', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const m = /serving a sparse 1024 MiB backing image (\S+) through a 256 MiB cache (\S+) \(temporary, removed at the end\)/.exec(r.stderr);
    assert.ok(m !== null, r.stderr);
    assert.ok(!fs.existsSync(path.dirname(m[1] as string)), 'the temporary folder is removed');
    const rep = JSON.parse(r.stdout) as { runs: { ops: number; errors: number; cache: unknown }[] };
    assert.equal(rep.runs.length, 1);
    assert.ok((rep.runs[0] as { ops: number }).ops > 0);
    assert.equal((rep.runs[0] as { errors: number }).errors, 0);
    assert.notEqual((rep.runs[0] as { cache: unknown }).cache, null, 'the default has a cache');
  });
});
