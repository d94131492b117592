/**
 * A seeded fuzzer for vhost-user-blk back ends, driving one socket with malformed input derived
 * from valid traffic, while a probe checks that the back end is alive and serves another export.
 * Used by test/vhost/fuzz.test.ts (fixed time budget) and bench/fuzz-vhost.ts (long runs).
 *
 * Each iteration draws its randomness from Rng(seed, iteration), so iteration I of seed S is
 * reproduced alone with `node dist/bench/fuzz-vhost.js --seed S --from I --iterations 1`.
 * An iteration is one of two cases:
 *
 *  - messages: the valid set-up sequence of a front end (GET_FEATURES, SET_OWNER,
 *    GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_CONFIG, SET_FEATURES,
 *    SET_MEM_TABLE or ADD_MEM_REG, SET_VRING_NUM/BASE/ADDR/KICK/CALL/ERR/ENABLE, SET_CONFIG,
 *    GET_VRING_BASE, REM_MEM_REG, RESET_DEVICE) with 1..4 mutations: payload bit flips and
 *    interesting values (0, 1, -1, 2^31, sizes +-1), header size/flags/request number changed,
 *    payload truncated or extended, fds dropped, added or replaced by the wrong kind (eventfd,
 *    memfd, /dev/null), messages dropped, duplicated or swapped, raw garbage inserted. Sent on
 *    one connection without waiting for replies, then a GET_QUEUE_NUM; the iteration ends on its
 *    reply, on the connection's end, or after 300 ms.
 *  - chains: a valid session (our front end, 16-entry queue), then 1..6 descriptor chains
 *    derived from valid IN/OUT/FLUSH/GET_ID/DISCARD/WRITE_ZEROES requests with mutations:
 *    addresses (out of RAM, unaligned, huge), lengths (0, odd, huge), flags (random bits,
 *    INDIRECT with and without NEXT), next pointers (loops, out of range), indirect tables
 *    (queue size + 3 entries, nested, empty), header type/sector, random range tables, an
 *    avail entry out of range, and a jump of the avail index. The iteration ends when every
 *    chain was answered or the connection dropped, or after 500 ms.
 *
 * After every iteration the probe runs (the caller's: e.g. the daemon process is alive and a
 * write+read of self-verifying data on another export succeeds within a time limit). A failed
 * probe stops the run with a FuzzFailure naming the seed, the iteration and the case.
 *
 * Not covered: packed rings, guest memory changing under a running queue (memfd shrink: see
 * the guest memory tests), several connections at once, timing races inside one message.
 */
import * as fs from 'node:fs';
import { Rng } from '../bench/rng';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import type { NativeEventFd } from '../native/types';
import { VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX } from '../virtio-blk/spec';
import { GuestMemory } from './guest-memory';
import {
  bit,
  encodeConfig,
  encodeMemRegion,
  encodeMemTable,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
  Feature,
  FLAG_NEED_REPLY,
  FLAG_VERSION,
  ProtocolFeature,
  VhostUserRequest as R,
} from './protocol';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, type RawDesc } from './ring-driver';
import { VhostUserFrontend } from './vhost-user-frontend';
import { writeBlkHeader } from './virtio-blk';

export interface FuzzOptions {
  seed: number;
  /** Socket of the export under attack. */
  socketPath: string;
  /** Checks the back end after each iteration; throws (or rejects) when it is not healthy. */
  probe: () => Promise<void>;
  /** First iteration (default 0). */
  from?: number;
  /** Stop after this many iterations ... */
  iterations?: number;
  /** ... or once this much time has passed (whichever comes first). */
  durationMs?: number;
  /** Called after each iteration (e.g. progress output). */
  onIteration?: (iteration: number, kind: string) => void;
}

export interface FuzzReport {
  seed: number;
  iterations: number;
  messages: number;
  chains: number;
  /** Iterations whose connection the back end dropped. */
  dropped: number;
  /** Iterations that ended by their time limit (no answer, no drop). */
  timedOut: number;
}

export class FuzzFailure extends VhostError {
  constructor(
    readonly seed: number,
    readonly iteration: number,
    readonly kind: string,
    cause: Error,
  ) {
    super(
      `fuzz seed ${seed} iteration ${iteration} (${kind}): ${cause.message}\n` +
        `  reproduce: node dist/bench/fuzz-vhost.js --seed ${seed} --from ${iteration} --iterations 1`,
      'EFUZZ',
    );
  }
}

const QUEUE_SIZE = 16;
const RAM = 1 << 20;
const USER_BASE = 0x7f00_0000_0000n;
const INTERESTING_U32 = [0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 4095, 4096, 32768, 65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff];

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

type FdKind = 'mem' | 'eventfd' | 'null';
interface Msg {
  request: number;
  flags: number;
  payload: Buffer;
  /** Header size field; undefined: the payload length. */
  size?: number;
  fds: FdKind[];
  /** Raw bytes sent instead of a message. */
  raw?: Buffer;
}

/** The valid set-up of one queue, as the messages a front end sends. */
function validScript(rng: Rng, mem: GuestMemory): Msg[] {
  const m = (request: number, payload: Buffer = Buffer.alloc(0), fds: FdKind[] = []): Msg => ({ request, flags: FLAG_VERSION, payload, fds });
  const region = { guestAddr: 0n, size: BigInt(RAM), userAddr: USER_BASE, mmapOffset: 0n };
  const desc = 4096;
  const avail = desc + 16 * QUEUE_SIZE;
  const used = 8192;
  const features = bit(Feature.VERSION_1) | bit(Feature.RING_INDIRECT_DESC) | bit(Feature.VHOST_USER_PROTOCOL_FEATURES) |
    (rng.chance(0.5) ? bit(Feature.RING_EVENT_IDX) : 0n) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH);
  const protocol = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
    (rng.chance(0.5) ? bit(ProtocolFeature.REPLY_ACK) : 0n);
  mem.bytes.fill(0, 0, 3 * 4096);
  const script = [
    m(R.GET_FEATURES),
    m(R.SET_OWNER),
    m(R.GET_PROTOCOL_FEATURES),
    m(R.SET_PROTOCOL_FEATURES, encodeU64(protocol)),
    m(R.GET_QUEUE_NUM),
    m(R.GET_MAX_MEM_SLOTS),
    m(R.GET_CONFIG, encodeConfig(0, 60, 0)),
    m(R.SET_FEATURES, encodeU64(features)),
    rng.chance(0.5) ? m(R.SET_MEM_TABLE, encodeMemTable([region]), ['mem']) : m(R.ADD_MEM_REG, encodeMemRegion(region), ['mem']),
    m(R.SET_VRING_NUM, encodeVringState(0, QUEUE_SIZE)),
    m(R.SET_VRING_BASE, encodeVringState(0, 0)),
    m(R.SET_VRING_ADDR, encodeVringAddr({ index: 0, flags: 0, desc: USER_BASE + BigInt(desc), used: USER_BASE + BigInt(used), avail: USER_BASE + BigInt(avail), log: 0n })),
    m(R.SET_VRING_KICK, encodeU64(0), ['eventfd']),
    m(R.SET_VRING_CALL, encodeU64(0), ['eventfd']),
    m(R.SET_VRING_ERR, encodeU64(0), ['eventfd']),
    m(R.SET_VRING_ENABLE, encodeVringState(0, 1)),
  ];
  if (rng.chance(0.3)) script.push(m(R.SET_CONFIG, encodeConfig(32, 1, 0, Buffer.from([rng.int(2)]))));
  if (rng.chance(0.3)) script.push(m(R.GET_VRING_BASE, encodeVringState(0, 0)));
  if (rng.chance(0.2)) script.push(m(R.REM_MEM_REG, encodeMemRegion(region)));
  if (rng.chance(0.2)) script.push(m(R.RESET_DEVICE));
  return script;
}

function interesting(rng: Rng): number {
  const v = INTERESTING_U32[rng.int(INTERESTING_U32.length)] as number;
  return rng.chance(0.3) ? (v + rng.range(-2, 3)) >>> 0 : v;
}

/** Applies one random mutation to the script, in place; returns its name. */
function mutateScript(rng: Rng, s: Msg[]): string {
  const i = rng.int(s.length);
  const msg = s[i] as Msg;
  switch (rng.int(12)) {
    case 0: {
      if (msg.payload.length === 0) return 'none';
      const at = rng.int(msg.payload.length);
      msg.payload = Buffer.from(msg.payload);
      msg.payload[at] = (msg.payload[at] as number) ^ (1 << rng.int(8));
      return `bitflip ${i}@${at}`;
    }
    case 1: {
      if (msg.payload.length < 4) return 'none';
      const at = rng.int(msg.payload.length >> 2) * 4;
      msg.payload = Buffer.from(msg.payload);
      msg.payload.writeUInt32LE(interesting(rng), at);
      return `u32 ${i}@${at}`;
    }
    case 2:
      msg.size = rng.chance(0.5) ? interesting(rng) : Math.max(0, msg.payload.length + rng.range(-8, 9));
      return `size ${i}=${msg.size}`;
    case 3:
      msg.flags = rng.chance(0.5) ? rng.u32() : FLAG_VERSION | (rng.chance(0.5) ? FLAG_NEED_REPLY : 0) | (rng.int(4) << 2);
      return `flags ${i}=${msg.flags}`;
    case 4:
      msg.request = rng.chance(0.7) ? rng.int(48) : rng.u32();
      return `request ${i}=${msg.request}`;
    case 5:
      msg.payload = msg.payload.subarray(0, rng.int(msg.payload.length + 1));
      return `truncate ${i}`;
    case 6: {
      const extra = Buffer.alloc(rng.int(rng.chance(0.1) ? 5000 : 64));
      for (let k = 0; k < extra.length; k++) extra[k] = rng.int(256);
      msg.payload = Buffer.concat([msg.payload, extra]);
      return `extend ${i}+${extra.length}`;
    }
    case 7: {
      const kinds: FdKind[] = ['mem', 'eventfd', 'null'];
      const r = rng.int(3);
      if (r === 0) msg.fds = [];
      else if (r === 1) msg.fds = [...msg.fds, kinds[rng.int(3)] as FdKind];
      else msg.fds = msg.fds.map(() => kinds[rng.int(3)] as FdKind);
      if (rng.chance(0.05)) msg.fds = Array.from({ length: 8 }, () => 'eventfd');
      msg.fds = msg.fds.slice(0, 8); // SCM_RIGHTS with one message: our channel sends at most 8
      return `fds ${i}=${msg.fds.join(',')}`;
    }
    case 8:
      s.splice(i, 1);
      return `drop ${i}`;
    case 9:
      s.splice(i, 0, { ...msg });
      return `dup ${i}`;
    case 10: {
      if (i + 1 >= s.length) return 'none';
      s[i] = s[i + 1] as Msg;
      s[i + 1] = msg;
      return `swap ${i}`;
    }
    default: {
      const raw = Buffer.alloc(rng.range(1, 40));
      for (let k = 0; k < raw.length; k++) raw[k] = rng.int(256);
      s.splice(i, 0, { request: 0, flags: 0, payload: Buffer.alloc(0), fds: [], raw });
      return `garbage ${i}+${raw.length}`;
    }
  }
}

/** A valid request's descriptors (header, data, status), or a mutation of them. */
function chainFor(rng: Rng, fe: VhostUserFrontend): { descs: RawDesc[]; availEntry?: number; what: string } {
  const mem = fe.memory;
  const types = [0, 1, 4, 8, 11, 13, rng.u32()];
  const type = types[rng.int(types.length)] as number;
  const hdr = mem.alloc(16, 16);
  writeBlkHeader(mem.view, hdr.addr, type, rng.chance(0.9) ? rng.int(32768) : Number.MAX_SAFE_INTEGER);
  const dataLen = [0, 512, 4096, 16, 8192][rng.int(5)] as number;
  const data = dataLen > 0 ? mem.alloc(dataLen, 512) : undefined;
  if (data !== undefined) for (let k = 0; k < Math.min(dataLen, 64); k++) mem.bytes[data.addr + k] = rng.int(256);
  const status = mem.alloc(1, 1);
  const devWrites = type === 0 || type === 8;
  let descs: RawDesc[] = [{ addr: hdr.addr, len: 16 }];
  if (data !== undefined) descs.push({ addr: data.addr, len: dataLen, write: devWrites });
  descs.push({ addr: status.addr, len: 1, write: true });
  const muts: string[] = [];
  let availEntry: number | undefined;
  const n = rng.int(4);
  for (let k = 0; k < n; k++) {
    const d = descs[rng.int(descs.length)] as RawDesc;
    switch (rng.int(9)) {
      case 0:
        d.addr = [RAM - 1, RAM, RAM + 4096, 2 ** 32 - 1, 2 ** 48, Number.MAX_SAFE_INTEGER, (d.addr ?? 0) + 1][rng.int(7)];
        muts.push(`addr=${d.addr}`);
        break;
      case 1:
        d.len = interesting(rng);
        muts.push(`len=${d.len}`);
        break;
      case 2:
        d.flags = rng.int(8) | (rng.chance(0.1) ? rng.int(65536) : 0);
        muts.push(`flags=${d.flags}`);
        break;
      case 3:
        d.nextRaw = rng.chance(0.5) ? rng.int(QUEUE_SIZE) : interesting(rng) & 0xffff;
        muts.push(`next=${d.nextRaw}`);
        break;
      case 4: {
        const count = [0, 1, QUEUE_SIZE + 3, 300, 4097][rng.int(5)] as number;
        const inner = count > 0 ? Array.from({ length: count }, (_x, j) => ({ ...(descs[j % descs.length] as RawDesc) })) : [];
        descs = [{ indirect: inner, ...(count === 0 ? { len: 0 } : {}) }];
        muts.push(`indirect ${count}`);
        break;
      }
      case 5:
        descs = [{ indirect: [{ indirect: descs }] }];
        muts.push('nested indirect');
        break;
      case 6:
        d.flags = VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | (rng.chance(0.5) ? VIRTQ_DESC_F_WRITE : 0);
        muts.push('indirect|next');
        break;
      case 7:
        availEntry = rng.chance(0.5) ? QUEUE_SIZE + rng.int(100) : rng.int(65536);
        muts.push(`avail=${availEntry}`);
        break;
      default:
        if (descs.length > 1) descs.splice(rng.int(descs.length), 1);
        muts.push('drop desc');
    }
  }
  return { descs, ...(availEntry !== undefined ? { availEntry } : {}), what: `type ${type} ${muts.join(' ') || 'valid'}` };
}

export class Fuzzer {
  private readonly nullFd = fs.openSync('/dev/null', 'r');
  private readonly mem = new GuestMemory(RAM, { userBase: USER_BASE });
  private readonly report: FuzzReport;

  constructor(private readonly o: FuzzOptions) {
    this.report = { seed: o.seed, iterations: 0, messages: 0, chains: 0, dropped: 0, timedOut: 0 };
  }

  /** Runs until the iteration count or the duration is reached; throws FuzzFailure on a failed probe. */
  async run(): Promise<FuzzReport> {
    const from = this.o.from ?? 0;
    const end = this.o.iterations !== undefined ? from + this.o.iterations : Infinity;
    const deadline = this.o.durationMs !== undefined ? Date.now() + this.o.durationMs : Infinity;
    try {
      for (let it = from; it < end && Date.now() < deadline; it++) {
        const rng = new Rng(this.o.seed, it);
        const kind = rng.chance(0.5) ? 'messages' : 'chains';
        let what = kind;
        try {
          what = kind === 'messages' ? await this.messages(rng) : await this.chains(rng);
          await this.o.probe();
        } catch (err) {
          throw new FuzzFailure(this.o.seed, it, what, err as Error);
        }
        this.report.iterations++;
        this.o.onIteration?.(it, kind);
      }
    } finally {
      fs.closeSync(this.nullFd);
      this.mem.close();
    }
    return this.report;
  }

  private async messages(rng: Rng): Promise<string> {
    const script = validScript(rng, this.mem);
    const muts: string[] = [];
    const n = rng.range(1, 5);
    for (let k = 0; k < n; k++) muts.push(mutateScript(rng, script));
    const eventfds: NativeEventFd[] = [];
    let closed = false;
    let answered = false;
    let onEnd: () => void = () => undefined;
    const ended = new Promise<void>((resolve) => {
      onEnd = resolve;
    });
    const channel = new native.FrontendChannel({
      path: this.o.socketPath,
      onMessage: (msg, fds) => {
        for (const fd of fds) fs.closeSync(fd);
        if (msg.readUInt32LE(0) === R.GET_QUEUE_NUM && (msg.readUInt32LE(4) & 0x4) !== 0) {
          answered = true;
          onEnd();
        }
      },
      onClose: () => {
        closed = true;
        onEnd();
      },
    });
    try {
      for (const msg of script) {
        const fds = msg.fds.map((k) => {
          if (k === 'mem') return this.mem.fd;
          if (k === 'null') return this.nullFd;
          const e = new native.EventFd();
          eventfds.push(e);
          return e.fd;
        });
        const bytes = msg.raw ?? encodeMessage(msg.request, msg.flags, msg.payload, msg.size);
        if (closed) break;
        channel.send(bytes, fds);
        this.report.messages++;
      }
      if (!closed) channel.send(encodeMessage(R.GET_QUEUE_NUM, FLAG_VERSION));
      const r = await withTimeout(ended, 300);
      if (closed) this.report.dropped++;
      else if (r === 'timeout' && !answered) this.report.timedOut++;
    } catch (err) {
      // The back end dropped us while we were sending.
      const code = (err as VhostError).code;
      if (!closed && code !== 'EPIPE' && code !== 'ECONNRESET') throw err;
      this.report.dropped++;
    } finally {
      channel.close();
      for (const e of eventfds) e.close();
    }
    return `messages: ${muts.join('; ')}`;
  }

  private async chains(rng: Rng): Promise<string> {
    const fe = await VhostUserFrontend.open(this.o.socketPath, { queueSize: QUEUE_SIZE, memorySize: 2 << 20, replyTimeoutMs: 3000, eventIdx: rng.chance(0.5) });
    const whats: string[] = [];
    try {
      const ring = fe.ring(0);
      const count = rng.range(1, 7);
      const pending: Promise<unknown>[] = [];
      for (let k = 0; k < count; k++) {
        const c = chainFor(rng, fe);
        whats.push(c.what);
        pending.push(ring.submitRaw({ descs: c.descs, ...(c.availEntry !== undefined ? { availEntry: c.availEntry } : {}) }).catch(() => undefined));
        this.report.chains++;
      }
      if (rng.chance(0.1)) {
        // The driver publishes an avail index far ahead of what it wrote.
        fe.memory.view.setUint16(ring.availAddr + 2, rng.int(65536), true);
        whats.push('avail idx jump');
      }
      ring.kick();
      const r = await withTimeout(Promise.race([Promise.all(pending), fe.whenDisconnected()]), 500);
      if (!fe.connected) this.report.dropped++;
      else if (r === 'timeout') this.report.timedOut++;
    } finally {
      fe.close();
    }
    return `chains: ${whats.join('; ')}`;
  }
}
