/**
 * A hostile front end against the real daemon (bin/vhost-blk-cache serve, a child process with
 * two volumes a and b): it may get an error or lose its connection, but the daemon stays up,
 * does not stall or bloat, and volume b keeps serving while volume a is attacked (checked in
 * parallel with a time limit, so a stalled daemon fails the test instead of hanging it).
 *
 * Cases (issue 9, items 3 and 5): a full, blocking call eventfd; a kick fd at end of file and
 * other non-eventfd kick/call fds; a flood of messages; a header whose size field exceeds its
 * message; a second front end on a busy socket; a peer whose uid is not allowed.
 */
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { encodeMessage, encodeU64, FLAG_NEED_REPLY, FLAG_VERSION, VhostUserRequest as R } from '../../src/frontend/protocol';
import { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { native } from '../../src/native/binding';
import { VbcDaemon } from '../e2e/vm/daemon';
import { RawClient } from './helpers';
import { VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { stamp } from '../support/stamps';
import { tmpDir } from '../support/tmp';

const BLOCK = 4096;

/** CPU time (user + system) and resident set of a process, from /proc. */
function procUsage(pid: number): { cpuMs: number; rssBytes: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = /VmRSS:\s+(\d+) kB/.exec(status);
  return { cpuMs: (ticks * 1000) / 100, rssBytes: Number(rss?.[1] ?? 0) * 1024 };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms (daemon stalled?)`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Polls `cond` every 10 ms until it holds (or fails after timeoutMs). */
async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('vhost: a hostile front end cannot stall, bloat or crash the daemon', function () {
  this.timeout(60_000);
  let dir: string;
  let daemon: VbcDaemon | undefined;
  const frontends: VhostUserFrontend[] = [];
  const raws: (RawClient | net.Socket)[] = [];
  const cleanups: (() => void)[] = [];
  let gen = 0;

  async function startDaemon(volumeExtra: Record<string, unknown> = {}): Promise<VbcDaemon> {
    const cfg = {
      volumes: ['a', 'b'].map((n) => ({
        name: n,
        socketPath: path.join(dir, `${n}.sock`),
        backing: path.join(dir, `${n}.img`),
        size: '16M',
        numQueues: 1,
        ...(n === 'a' ? volumeExtra : {}),
      })),
    };
    const file = path.join(dir, 'config.json');
    fs.writeFileSync(file, JSON.stringify(cfg));
    daemon = await VbcDaemon.start({ args: ['--config', file] });
    return daemon;
  }

  async function open(vol: 'a' | 'b'): Promise<VhostUserFrontend> {
    const fe = await VhostUserFrontend.open(path.join(dir, `${vol}.sock`), { queueSize: 64, memorySize: 8 << 20, replyTimeoutMs: 3000 });
    frontends.push(fe);
    return fe;
  }

  /** Volume b answers a write and a read of fresh self-verifying data within 3 s. */
  async function bServes(fe: VhostUserFrontend): Promise<void> {
    const g = ++gen;
    const blk = g % 64;
    const q = fe.ring(0);
    const w = await withTimeout(q.write(blk * 8, stamp('b', blk, g)), 3000, 'volume b write');
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    const r = await withTimeout(q.read(blk * 8, BLOCK), 3000, 'volume b read');
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.ok(Buffer.from(r.data as Uint8Array).equals(stamp('b', blk, g)), 'volume b returns what was written');
  }

  function assertUp(): void {
    assert.ok(daemon?.running, 'the daemon is still running');
  }

  beforeEach(() => {
    dir = tmpDir('hostile');
  });

  afterEach(async () => {
    for (const fe of frontends.splice(0)) fe.close();
    for (const r of raws.splice(0)) r.destroy();
    for (const c of cleanups.splice(0)) c();
    if (daemon?.running === true) await daemon.stop(this.ctx.currentTest?.state === 'failed' ? 'SIGKILL' : 'SIGTERM');
    daemon = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps serving when the call eventfd is full and blocking (the guest still sees the used ring)', async () => {
    const d = await startDaemon();
    const b = await open('b');
    await bServes(b);
    const a = await open('a');
    const full = new native.EventFd({ blocking: true, full: true });
    cleanups.push(() => full.close());
    const ack = await a.rawMessage(R.SET_VRING_CALL, encodeU64(0), [full.fd], { flags: FLAG_VERSION | FLAG_NEED_REPLY, expectReply: true });
    assert.equal(ack?.payload.readBigUInt64LE(0), 0n, 'an eventfd is accepted as call fd');
    // Our call fd is gone from the daemon: completions are found by polling the used ring.
    const q = a.ring(0);
    let done = 0;
    const writes = Array.from({ length: 8 }, (_, i) => q.write(i * 8, stamp('b', i, 0)).then((r) => {
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      done++;
    }));
    await Promise.all([
      bServes(b),
      until(() => {
        q.poll();
        return done === 8;
      }, 5000, 'volume a completions in the used ring'),
    ]);
    await Promise.all(writes);
    await bServes(b);
    assertUp();
    assert.equal(d.logsWith('device broken').length, 0);
  });

  it('refuses kick and call fds that are not eventfds; a kick fd at end of file does not spin a core', async () => {
    const d = await startDaemon();
    const b = await open('b');
    const a = await open('a');
    const fifo = path.join(dir, 'kick.fifo');
    execFileSync('mkfifo', [fifo]);
    const readEnd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    cleanups.push(() => fs.closeSync(readEnd));
    fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)); // writer gone: EOF
    const devNull = fs.openSync('/dev/null', 'r');
    cleanups.push(() => fs.closeSync(devNull));
    const kick = await a.rawMessage(R.SET_VRING_KICK, encodeU64(0), [readEnd], { flags: FLAG_VERSION | FLAG_NEED_REPLY, expectReply: true });
    assert.notEqual(kick?.payload.readBigUInt64LE(0), 0n, 'a FIFO at end of file is refused as kick fd');
    const call = await a.rawMessage(R.SET_VRING_CALL, encodeU64(0), [devNull], { flags: FLAG_VERSION | FLAG_NEED_REPLY, expectReply: true });
    assert.notEqual(call?.payload.readBigUInt64LE(0), 0n, '/dev/null is refused as call fd');
    // A measurement window of one second with nothing to do: a kick handler spinning on the
    // FIFO's end of file would use all of it.
    const cpuBefore = procUsage(d.pid as number).cpuMs;
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 1000));
    const cpuMs = procUsage(d.pid as number).cpuMs - cpuBefore;
    const wallMs = Date.now() - t0;
    assert.ok(cpuMs < wallMs * 0.3, `daemon used ${cpuMs} ms of CPU in ${wallMs} ms`);
    await bServes(b);
    assert.ok(d.logs.some((l) => /kick fd of queue 0: not an eventfd/.test(l.msg)), 'the refused kick fd is logged');
    assert.ok(d.logs.some((l) => /call fd of queue 0: not an eventfd/.test(l.msg)), 'the refused call fd is logged');
    // Volume a still works with its original eventfds.
    const r = await withTimeout(a.ring(0).write(0, stamp('b', 0, 1)), 3000, 'volume a write');
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assertUp();
  });

  it('bounds memory and keeps other volumes serving under a message flood', async () => {
    const d = await startDaemon();
    const b = await open('b');
    await bServes(b);
    const rssBefore = procUsage(d.pid as number).rssBytes;
    const sock = net.createConnection(path.join(dir, 'a.sock'));
    raws.push(sock);
    sock.on('error', () => undefined);
    await new Promise<void>((resolve) => sock.once('connect', resolve));
    const chunk = Buffer.concat(Array.from({ length: 65536 }, () => encodeMessage(R.SET_OWNER, FLAG_VERSION)));
    let sent = 0;
    let flooding = true;
    const flood = (async () => {
      while (flooding && !sock.destroyed) {
        sent += 65536;
        if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
      }
    })();
    // Volume b keeps serving while the flood runs, until the daemon has taken 200 k messages
    // (counted, however long that takes on this machine).
    let served = 0;
    let peakRss = rssBefore;
    while (sent < 200_000 || served < 10) {
      await bServes(b);
      served++;
      peakRss = Math.max(peakRss, procUsage(d.pid as number).rssBytes);
    }
    flooding = false;
    await flood;
    const growth = peakRss - rssBefore;
    assert.ok(growth < 100 * 2 ** 20, `daemon RSS grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);
    assertUp();
  });

  it('drops a connection whose header announces more payload than its message has, at once', async () => {
    const d = await startDaemon();
    const b = await open('b');
    for (const [request, size] of [[R.SET_OWNER, 100], [R.GET_FEATURES, 8], [R.SET_VRING_NUM, 4000], [R.SET_MEM_TABLE, 4000]] as const) {
      const c = await RawClient.connect(path.join(dir, 'a.sock'));
      raws.push(c);
      c.send(request, new Uint8Array(0), 1, size); // header only: the bytes never come
      await c.whenClosed(2000);
      await bServes(b);
    }
    assert.ok(d.logs.some((l) => /SET_OWNER header announces a payload of 100 bytes/.test(l.msg)), 'the refusal is logged');
    assertUp();
  });

  it('refuses a second front end on a busy socket at once, with a log line; the first keeps working', async () => {
    const d = await startDaemon();
    const a = await open('a');
    const second = await RawClient.connect(path.join(dir, 'a.sock'));
    raws.push(second);
    second.send(R.GET_QUEUE_NUM);
    await second.whenClosed(2000);
    await until(() => d.logsWith('refusing a second front end while one is connected').length === 1, 2000, 'the refusal log line');
    const r = await withTimeout(a.ring(0).write(8, stamp('b', 1, 1)), 3000, 'first front end write');
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    // Once the first leaves, the next one is served.
    a.close();
    const next = await open('a');
    const w = await withTimeout(next.ring(0).read(8, BLOCK), 3000, 'next front end read');
    assert.ok(Buffer.from(w.data as Uint8Array).equals(stamp('b', 1, 1)));
    assertUp();
  });

  it('drops and logs a peer whose uid is not allowed; logs the credentials of allowed ones; chowns the socket (needs root) @host', async () => {
    const uid = process.getuid?.() ?? 0;
    const d = await startDaemon({ allowUids: [uid + 4242], socketOwner: `${uid}:4243` });
    const st = fs.statSync(path.join(dir, 'a.sock'));
    assert.equal(st.mode & 0o777, 0o600);
    assert.deepEqual([st.uid, st.gid], [uid, 4243], 'socketOwner chowned the socket');
    assert.equal(fs.statSync(path.join(dir, 'a.img')).mode & 0o777, 0o600, 'the created image is 0600');
    const c = await RawClient.connect(path.join(dir, 'a.sock'));
    raws.push(c);
    c.send(R.GET_QUEUE_NUM);
    await c.whenClosed(2000);
    await until(() => d.logsWith('refusing a front end: uid not allowed').length === 1, 2000, 'the refusal log line');
    const line = d.logsWith('refusing a front end: uid not allowed')[0];
    assert.equal(line?.peerUid, uid);
    assert.equal(line?.peerPid, process.pid);
    const b = await open('b'); // no allowUids on b: anyone reaching the socket
    await bServes(b);
    assert.ok(d.logsWith('front end credentials').some((l) => l.peerUid === uid && l.volume === 'b'));
    assertUp();
  });
});
