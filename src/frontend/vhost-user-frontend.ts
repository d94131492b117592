/**
 * Our own vhost-user FRONT END (the driver / QEMU side) for tests and benchmarks: drives a
 * vhost-user-blk back end (ours, or qemu-storage-daemon) without a VM.
 *
 * Usage:
 *   const fe = await VhostUserFrontend.open('/tmp/vhost.sock', { queues: 2, queueSize: 256 });
 *   fe.config.capacity;                       // parsed virtio_blk_config (bigint sectors)
 *   const q = fe.ring(0);                     // DriverRing, see ring-driver.ts
 *   await q.write(0, data); const r = await q.read(0, 4096);   // r.status, r.data
 *   await fe.stop();                          // GET_VRING_BASE per queue (after draining)
 *   fe.close();
 *
 * Step by step (each step awaits the back end; tests may interpose raw messages):
 *   new VhostUserFrontend(options)
 *   connect(socketPath)   connects the channel
 *   negotiate()           GET_FEATURES, SET_OWNER, GET/SET_PROTOCOL_FEATURES (REPLY_ACK, MQ,
 *                         CONFIG, CONFIGURE_MEM_SLOTS when offered and allowed), GET_QUEUE_NUM
 *                         (MQ), GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS), GET_CONFIG (CONFIG) ->
 *                         `config`, SET_FEATURES (VERSION_1 + allowed ring/blk bits offered)
 *   start()               SET_MEM_TABLE (or ADD_MEM_REG) with the memfd RAM (guest phys 0, user
 *                         address options.userBase), then per queue SET_VRING_NUM, SET_VRING_BASE
 *                         0, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ENABLE 1
 *   stop()                waits for in-flight requests, GET_VRING_BASE per queue -> bases
 *   close()               fails pending requests (ECONNRESET), closes fds and the socket
 *
 * Inflight tracking (INFLIGHT_SHMFD, when negotiated): start() first sends GET_INFLIGHT_FD once
 * per front end (the region's fd is kept, like QEMU) and then SET_INFLIGHT_FD with it. With
 * `survive`, a lost connection leaves guest RAM, rings and their in-flight requests alone;
 * reconnect(socketPath) then connects a new channel, negotiates, hands the region back
 * (SET_INFLIGHT_FD) and sets the rings up again with base = used->idx (QEMU's rule after a back
 * end died), so a recovering back end completes the requests that were in flight.
 *
 * With REPLY_ACK negotiated every message without a reply of its own carries NEED_REPLY and is
 * awaited (a non-zero ack rejects with code ENACK). Replies are matched in order; a reply with a
 * wrong request number or without the REPLY flag is a protocol error (EPROTO, connection closed).
 * A reply not received within replyTimeoutMs rejects with ETIMEDOUT (connection kept).
 *
 * Malformed-input helpers: rawMessage(request, payload, fds, flags, ...) and rawBytes(bytes, fds)
 * send anything; whenDisconnected() resolves when the back end drops the connection.
 */
import * as fs from 'node:fs';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import type { NativeEventFd, NativeFrontendChannel } from '../native/types';
import { GuestMemory } from './guest-memory';
import {
  CONFIG_TYPE_FRONTEND,
  decodeConfig,
  decodeInflight,
  decodeMessage,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemRegion,
  encodeMemTable,
  encodeMessage,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
  Feature,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  FLAG_VERSION,
  FLAG_VERSION_MASK,
  bit,
  hasBit,
  type InflightDescription,
  type MemRegion,
  ProtocolFeature,
  REQUESTS_WITH_REPLY,
  requestName,
  VhostUserRequest as R,
  type VhostUserMessage,
} from './protocol';
import { DriverRing } from './ring-driver';
import { BLK_CONFIG_SIZE, VIRTIO_BLK_F_ALL } from '../virtio-blk/spec';
import { type BlkConfig, parseBlkConfig } from './virtio-blk';

export interface FrontendOptions {
  /** Guest RAM bytes (multiple of 4096; default 64 MiB). */
  memorySize?: number;
  /** Pre-fault guest RAM (MAP_POPULATE). */
  populate?: boolean;
  /** Queues to set up (default 1). */
  queues?: number;
  /** Descriptors per queue (power of two, default 128). */
  queueSize?: number;
  /** Accept VIRTIO_RING_F_EVENT_IDX when offered (default true). */
  eventIdx?: boolean;
  /** Accept VIRTIO_RING_F_INDIRECT_DESC when offered and use it for every request (default true). */
  indirect?: boolean;
  /** Entries per indirect table (default 64). */
  maxIndirect?: number;
  /**
   * Device feature bits (besides VERSION_1, EVENT_IDX, INDIRECT_DESC and
   * VHOST_USER_F_PROTOCOL_FEATURES) to accept when offered. Default: every virtio-blk bit
   * defined in src/virtio-blk/spec (VIRTIO_BLK_F_ALL).
   */
  blkFeatures?: bigint;
  /** Protocol features to accept when offered (default REPLY_ACK | MQ | CONFIG | CONFIGURE_MEM_SLOTS). */
  protocolFeatures?: bigint;
  /** How to send guest RAM: one SET_MEM_TABLE (default) or ADD_MEM_REG (needs CONFIGURE_MEM_SLOTS). */
  memoryMessage?: 'set-mem-table' | 'add-mem-reg';
  /** Ring index every queue starts at (SET_VRING_BASE; default 0). */
  vringBase?: number;
  /** Front-end user address of guest RAM (default 0x7f0000000000). */
  userBase?: bigint;
  /** Bytes of virtio_blk_config asked by GET_CONFIG (default 60). */
  configSize?: number;
  /** Per-reply timeout (default 5000 ms). */
  replyTimeoutMs?: number;
  /** Keep RAM, rings and in-flight requests when the connection ends, for reconnect() (default false). */
  survive?: boolean;
  /** Called once when the connection ends (null: closed by us or a clean end by the peer). */
  onDisconnect?: (err: Error | null) => void;
}

const DEFAULT_BLK_FEATURES: bigint = VIRTIO_BLK_F_ALL.reduce((m, b) => m | bit(b), 0n);
export const DEFAULT_PROTOCOL_FEATURES: bigint =
  bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ) | bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS);

interface ReplyWaiter {
  request: number;
  resolve: (msg: VhostUserMessage) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export interface RawMessageOptions {
  /** Header flags (default: version 1, plus NEED_REPLY if needReply). */
  flags?: number;
  /** Header size field (default: payload length). */
  size?: number;
  /** Wait for a reply with this request number (default: true for requests that have one). */
  expectReply?: boolean;
}

export class VhostUserFrontend {
  readonly options: Required<Omit<FrontendOptions, 'onDisconnect'>>;
  /** The inflight region's fd (kept from GET_INFLIGHT_FD; -1 before) and description. */
  inflightFd = -1;
  inflight: InflightDescription | undefined;
  /** Connections made so far (reconnect() adds one). */
  connections = 0;
  /** Set by negotiate(). */
  deviceFeatures = 0n;
  ackedFeatures = 0n;
  protocolFeaturesOffered = 0n;
  protocolFeatures = 0n;
  /** GET_QUEUE_NUM answer (0 if MQ was not negotiated). */
  queueNum = 0;
  /** GET_MAX_MEM_SLOTS answer (0 if not negotiated). */
  maxMemSlots = 0;
  /** Raw GET_CONFIG bytes and their parse (undefined without CONFIG). */
  configBytes: Buffer | undefined;
  config: BlkConfig | undefined;
  /** Allocated by the constructor; rings live in it after start(). */
  readonly memory: GuestMemory;
  /** GET_VRING_BASE answers from stop(). */
  vringBases: number[] = [];

  private channel: NativeFrontendChannel | null = null;
  private readonly replies: ReplyWaiter[] = [];
  private readonly rings: DriverRing[] = [];
  private readonly eventFds: NativeEventFd[] = [];
  private disconnectErr: Error | null | undefined;
  /** release() ran: requests failed, RAM and fds closed (for good, even with survive). */
  private closed = false;
  private readonly disconnectWaiters: ((err: Error | null) => void)[] = [];
  private readonly onDisconnect: ((err: Error | null) => void) | undefined;

  constructor(options: FrontendOptions = {}) {
    this.options = {
      memorySize: options.memorySize ?? 64 << 20,
      populate: options.populate ?? false,
      queues: options.queues ?? 1,
      queueSize: options.queueSize ?? 128,
      eventIdx: options.eventIdx ?? true,
      indirect: options.indirect ?? true,
      maxIndirect: options.maxIndirect ?? 64,
      blkFeatures: options.blkFeatures ?? DEFAULT_BLK_FEATURES,
      protocolFeatures: options.protocolFeatures ?? DEFAULT_PROTOCOL_FEATURES,
      memoryMessage: options.memoryMessage ?? 'set-mem-table',
      vringBase: options.vringBase ?? 0,
      userBase: options.userBase ?? 0x7f00_0000_0000n,
      configSize: options.configSize ?? BLK_CONFIG_SIZE,
      replyTimeoutMs: options.replyTimeoutMs ?? 5000,
      survive: options.survive ?? false,
    };
    this.onDisconnect = options.onDisconnect;
    const o = this.options;
    if (!Number.isInteger(o.queues) || o.queues < 1 || o.queues > 256) {
      throw new VhostError(`queues ${o.queues} out of range 1..256`, 'EINVAL');
    }
    this.memory = new GuestMemory(o.memorySize, { userBase: o.userBase, populate: o.populate });
  }

  /** connect + negotiate + start. */
  static async open(socketPath: string, options: FrontendOptions = {}): Promise<VhostUserFrontend> {
    const fe = new VhostUserFrontend(options);
    try {
      fe.connect(socketPath);
      await fe.negotiate();
      await fe.start();
    } catch (err) {
      fe.close();
      throw err;
    }
    return fe;
  }

  get connected(): boolean {
    return this.channel?.connected ?? false;
  }

  /** Number of started queues. */
  get queueCount(): number {
    return this.rings.length;
  }

  /** The driver of queue `i` (after start()). */
  ring(i: number): DriverRing {
    const r = this.rings[i];
    if (r === undefined) throw new VhostError(`queue ${i} is not started`, 'EINVAL');
    return r;
  }

  /** Connects to a listening back end (throws ENOENT / ECONNREFUSED / ...). */
  connect(socketPath: string): void {
    if (this.channel !== null || this.disconnectErr !== undefined) {
      throw new VhostError('front end already connected (use a new instance to reconnect)', 'EISCONN');
    }
    this.openChannel(socketPath);
  }

  private openChannel(socketPath: string): void {
    this.channel = new native.FrontendChannel({
      path: socketPath,
      onMessage: (msg, fds) => this.onMessage(msg, fds),
      onClose: (err) => this.disconnected(err),
    });
    this.connections++;
  }

  /**
   * With `survive`, after the connection was lost: connects to the (new) back end at socketPath
   * and continues: negotiate(), then start() with the existing rings and in-flight requests.
   */
  async reconnect(socketPath: string): Promise<void> {
    if (!this.options.survive) throw new VhostError('reconnect() needs the survive option', 'EINVAL');
    if (this.disconnectErr === undefined) throw new VhostError('front end still connected', 'EISCONN');
    if (this.closed) throw new VhostError('front end closed', 'EBADF');
    this.disconnectErr = undefined;
    this.openChannel(socketPath);
    await this.negotiate();
    await this.start();
  }

  /** Resolves with the reason when the connection ends (null: clean end or close()). */
  whenDisconnected(): Promise<Error | null> {
    if (this.disconnectErr !== undefined) return Promise.resolve(this.disconnectErr);
    return new Promise((resolve) => this.disconnectWaiters.push(resolve));
  }

  // ------------------------------------------------------------------ messaging

  private onMessage(raw: Buffer, fds: number[]): void {
    const msg = decodeMessage(raw);
    const w = this.replies[0];
    if (w?.request === R.GET_INFLIGHT_FD && msg.request === R.GET_INFLIGHT_FD) {
      msg.fds = fds;
    } else {
      for (const fd of fds) fs.closeSync(fd);
    }
    if (w === undefined) {
      this.protocolError(`unexpected message ${requestName(msg.request)} from the back end`);
      return;
    }
    if ((msg.flags & FLAG_REPLY) === 0 || (msg.flags & FLAG_VERSION_MASK) !== FLAG_VERSION || msg.request !== w.request) {
      this.protocolError(
        `bad reply to ${requestName(w.request)}: request ${requestName(msg.request)}, flags 0x${msg.flags.toString(16)}`,
      );
      return;
    }
    this.replies.shift();
    clearTimeout(w.timer);
    w.resolve(msg);
  }

  private protocolError(message: string): void {
    this.teardown(new VhostError(message, 'EPROTO'));
  }

  private disconnected(err: Error | null): void {
    this.teardown(err);
  }

  /**
   * Ends the connection once: rejects replies, notifies. Unless it survives (the survive option,
   * not closed by close()), also fails requests and closes fds and guest RAM.
   */
  private teardown(err: Error | null, final = !this.options.survive): void {
    if (final) this.release(err);
    if (this.disconnectErr !== undefined) return;
    this.disconnectErr = err;
    this.channel?.close();
    for (const w of this.replies.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.failure(err));
    }
    for (const f of this.disconnectWaiters.splice(0)) f(err);
    this.onDisconnect?.(err);
  }

  private failure(err: Error | null): VhostError {
    const reason = err ?? new VhostError('vhost-user connection closed', 'ECONNRESET');
    return reason instanceof VhostError && reason.code === 'ECONNRESET'
      ? reason
      : new VhostError(`vhost-user connection lost: ${reason.message}`, 'ECONNRESET');
  }

  /** Fails in-flight requests, closes eventfds, the inflight fd and guest RAM (once). */
  private release(err: Error | null): void {
    if (this.closed) return;
    this.closed = true;
    const failure = this.failure(err);
    for (const r of this.rings) r.fail(failure);
    for (const e of this.eventFds) e.close();
    if (this.inflightFd >= 0) fs.closeSync(this.inflightFd);
    this.inflightFd = -1;
    this.memory.close();
  }

  private send(bytes: Uint8Array, fds?: number[]): void {
    if (this.channel === null || this.disconnectErr !== undefined) {
      throw new VhostError('vhost-user front end is not connected', 'ENOTCONN');
    }
    this.channel.send(bytes, fds);
  }

  private awaitReply(request: number): Promise<VhostUserMessage> {
    return new Promise<VhostUserMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.replies.findIndex((w) => w.timer === timer);
        if (i >= 0) this.replies.splice(i, 1);
        reject(new VhostError(`no reply to ${requestName(request)} within ${this.options.replyTimeoutMs} ms`, 'ETIMEDOUT'));
      }, this.options.replyTimeoutMs);
      this.replies.push({ request, resolve, reject, timer });
    });
  }

  /**
   * Sends a well-formed request. Returns the reply for requests that have one; with REPLY_ACK,
   * other requests are acknowledged (non-zero ack -> ENACK) and resolve undefined.
   */
  async request(request: number, payload?: Uint8Array, fds?: number[]): Promise<VhostUserMessage | undefined> {
    const hasReply = REQUESTS_WITH_REPLY.has(request);
    const ack = !hasReply && hasBit(this.protocolFeatures, ProtocolFeature.REPLY_ACK);
    const flags = FLAG_VERSION | (ack ? FLAG_NEED_REPLY : 0);
    const reply = hasReply || ack ? this.awaitReply(request) : undefined;
    try {
      this.send(encodeMessage(request, flags, payload), fds);
    } catch (err) {
      if (reply !== undefined) {
        const w = this.replies.pop();
        if (w !== undefined) clearTimeout(w.timer);
      }
      throw err;
    }
    if (reply === undefined) return undefined;
    const msg = await reply;
    if (ack) {
      const v = decodeU64(msg.payload);
      if (v !== 0n) throw new VhostError(`back end refused ${requestName(request)} (ack ${v})`, 'ENACK');
      return undefined;
    }
    return msg;
  }

  private async requestU64(request: number): Promise<bigint> {
    const msg = await this.request(request);
    if (msg === undefined) throw new VhostError(`no reply to ${requestName(request)}`, 'EPROTO');
    try {
      return decodeU64(msg.payload);
    } catch (err) {
      this.protocolError((err as Error).message);
      throw err;
    }
  }

  /**
   * Sends any message: `payload` verbatim, header flags/size as given. Resolves with the reply
   * (matched by request number) when expectReply, else undefined once sent.
   */
  async rawMessage(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], opts: RawMessageOptions = {}): Promise<VhostUserMessage | undefined> {
    const expect = opts.expectReply ?? REQUESTS_WITH_REPLY.has(request);
    const flags = opts.flags ?? FLAG_VERSION;
    const reply = expect ? this.awaitReply(request) : undefined;
    this.send(encodeMessage(request, flags, payload, opts.size), fds);
    return reply;
  }

  /** Sends raw bytes (no framing) with optional fds. */
  rawBytes(bytes: Uint8Array, fds: number[] = []): void {
    this.send(bytes, fds);
  }

  // ------------------------------------------------------------------ negotiation

  async negotiate(): Promise<void> {
    const o = this.options;
    this.protocolFeatures = 0n; // a reconnect negotiates from scratch
    this.deviceFeatures = await this.requestU64(R.GET_FEATURES);
    await this.request(R.SET_OWNER);
    if (!hasBit(this.deviceFeatures, Feature.VERSION_1)) {
      throw new VhostError('back end does not offer VIRTIO_F_VERSION_1', 'EOPNOTSUPP');
    }
    if (hasBit(this.deviceFeatures, Feature.VHOST_USER_PROTOCOL_FEATURES)) {
      this.protocolFeaturesOffered = await this.requestU64(R.GET_PROTOCOL_FEATURES);
      const accept = this.protocolFeaturesOffered & o.protocolFeatures;
      await this.request(R.SET_PROTOCOL_FEATURES, encodeU64(accept));
      this.protocolFeatures = accept;
    }
    if (hasBit(this.protocolFeatures, ProtocolFeature.MQ)) {
      this.queueNum = Number(await this.requestU64(R.GET_QUEUE_NUM));
      if (o.queues > this.queueNum) {
        throw new VhostError(`back end supports ${this.queueNum} queues, ${o.queues} wanted`, 'EINVAL');
      }
    } else if (o.queues > 1) {
      throw new VhostError('back end does not negotiate MQ; only 1 queue possible', 'EOPNOTSUPP');
    }
    if (hasBit(this.protocolFeatures, ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      this.maxMemSlots = Number(await this.requestU64(R.GET_MAX_MEM_SLOTS));
    }
    if (hasBit(this.protocolFeatures, ProtocolFeature.CONFIG)) {
      await this.readConfig();
    }
    let want = bit(Feature.VERSION_1) | bit(Feature.VHOST_USER_PROTOCOL_FEATURES) | o.blkFeatures;
    if (o.eventIdx) want |= bit(Feature.RING_EVENT_IDX);
    if (o.indirect) want |= bit(Feature.RING_INDIRECT_DESC);
    this.ackedFeatures = this.deviceFeatures & want;
    await this.request(R.SET_FEATURES, encodeU64(this.ackedFeatures));
  }

  /** GET_CONFIG of options.configSize bytes at offset 0; updates `config`. */
  async readConfig(): Promise<BlkConfig> {
    const size = this.options.configSize;
    const msg = await this.request(R.GET_CONFIG, encodeConfig(0, size, CONFIG_TYPE_FRONTEND));
    if (msg === undefined || msg.size === 0) {
      throw new VhostError('back end failed GET_CONFIG (empty reply)', 'EIO');
    }
    const c = decodeConfig(msg.payload);
    this.configBytes = Buffer.from(c.data);
    this.config = parseBlkConfig(c.data);
    return this.config;
  }

  // ------------------------------------------------------------------ start / stop

  /** The memory region describing guest RAM. */
  memRegion(): MemRegion {
    return {
      guestAddr: 0n,
      size: BigInt(this.memory.size),
      userAddr: this.memory.userBase,
      mmapOffset: 0n,
    };
  }

  /** GET_INFLIGHT_FD once (the fd is kept), then SET_INFLIGHT_FD with it. */
  async setInflight(): Promise<void> {
    const o = this.options;
    if (this.inflightFd < 0) {
      const msg = await this.request(
        R.GET_INFLIGHT_FD,
        encodeInflight({ mmapSize: 0n, mmapOffset: 0n, numQueues: o.queues, queueSize: o.queueSize }),
      );
      const fds = msg?.fds ?? [];
      if (msg === undefined || fds.length !== 1) {
        for (const fd of fds) fs.closeSync(fd);
        this.protocolError(`GET_INFLIGHT_FD reply with ${fds.length} fds`);
        throw new VhostError('GET_INFLIGHT_FD reply without exactly one fd', 'EPROTO');
      }
      this.inflightFd = fds[0] as number;
      this.inflight = decodeInflight(msg.payload);
    }
    if (this.inflight === undefined) throw new VhostError('no inflight region', 'EPROTO');
    await this.request(R.SET_INFLIGHT_FD, encodeInflight(this.inflight), [this.inflightFd]);
  }

  /**
   * Memory table and queues. On the first connection the rings are created (base 0); after
   * reconnect() the existing rings are set up again with base = used->idx.
   */
  async start(): Promise<void> {
    const o = this.options;
    const again = this.connections > 1 && this.rings.length > 0;
    if (this.rings.length > 0 && !again) throw new VhostError('queues already started', 'EBUSY');
    if (hasBit(this.protocolFeatures, ProtocolFeature.INFLIGHT_SHMFD)) await this.setInflight();
    if (o.memoryMessage === 'add-mem-reg') {
      if (!hasBit(this.protocolFeatures, ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
        throw new VhostError('ADD_MEM_REG needs CONFIGURE_MEM_SLOTS', 'EOPNOTSUPP');
      }
      await this.request(R.ADD_MEM_REG, encodeMemRegion(this.memRegion()), [this.memory.fd]);
    } else {
      await this.request(R.SET_MEM_TABLE, encodeMemTable([this.memRegion()]), [this.memory.fd]);
    }
    const eventIdx = hasBit(this.ackedFeatures, Feature.RING_EVENT_IDX);
    const indirect = hasBit(this.ackedFeatures, Feature.RING_INDIRECT_DESC);
    const protocol = hasBit(this.ackedFeatures, Feature.VHOST_USER_PROTOCOL_FEATURES);
    for (let q = 0; q < o.queues; q++) {
      if (!again) {
        const kick = new native.EventFd();
        const call = new native.EventFd();
        this.eventFds.push(kick, call);
        const ring = new DriverRing(this.memory, {
          index: q,
          size: o.queueSize,
          eventIdx,
          indirect,
          maxIndirect: o.maxIndirect,
          kick,
          base: o.vringBase,
        });
        ring.onDeviceError((err) => this.teardown(err, true));
        this.rings.push(ring);
        call.watch(() => ring.poll());
      }
      const ring = this.ring(q);
      const kick = this.eventFds[2 * q] as NativeEventFd;
      const call = this.eventFds[2 * q + 1] as NativeEventFd;
      await this.setUpRing(ring, kick, call, again ? ring.usedIndex : o.vringBase, protocol);
    }
  }

  /** SET_VRING_NUM, BASE, ADDR, KICK, CALL (and ENABLE 1 with protocol features) for one ring. */
  private async setUpRing(ring: DriverRing, kick: NativeEventFd, call: NativeEventFd, base: number, enable: boolean): Promise<void> {
    const q = ring.index;
    await this.request(R.SET_VRING_NUM, encodeVringState(q, ring.size));
    await this.request(R.SET_VRING_BASE, encodeVringState(q, base));
    await this.request(
      R.SET_VRING_ADDR,
      encodeVringAddr({
        index: q,
        flags: 0,
        desc: this.memory.userAddr(ring.descAddr),
        used: this.memory.userAddr(ring.usedAddr),
        avail: this.memory.userAddr(ring.availAddr),
        log: 0n,
      }),
    );
    await this.request(R.SET_VRING_KICK, encodeU64(q), [kick.fd]);
    await this.request(R.SET_VRING_CALL, encodeU64(q), [call.fd]);
    if (enable) await this.request(R.SET_VRING_ENABLE, encodeVringState(q, 1));
  }

  /**
   * Starts every queue again after stop() (or after RESET_DEVICE, REM_MEM_REG + ADD_MEM_REG):
   * same rings and eventfds, resumed at the index the driver reached (what GET_VRING_BASE
   * reported after draining).
   */
  async resume(): Promise<void> {
    const protocol = hasBit(this.ackedFeatures, Feature.VHOST_USER_PROTOCOL_FEATURES);
    for (const ring of this.rings) {
      const kick = this.eventFds[2 * ring.index];
      const call = this.eventFds[2 * ring.index + 1];
      await this.setUpRing(ring, kick, call, ring.availIndex, protocol);
    }
  }

  /** SET_VRING_ENABLE for one queue (needs VHOST_USER_F_PROTOCOL_FEATURES). */
  async setVringEnable(queue: number, enable: boolean): Promise<void> {
    await this.request(R.SET_VRING_ENABLE, encodeVringState(queue, enable ? 1 : 0));
  }

  /**
   * Waits until no request is in flight (unless drain is false), then stops every queue with
   * GET_VRING_BASE; returns (and stores in vringBases) the bases the back end reports.
   */
  async stop(drain = true): Promise<number[]> {
    if (drain) await Promise.all(this.rings.map((r) => r.idle()));
    const bases: number[] = [];
    for (const r of this.rings) {
      const msg = await this.request(R.GET_VRING_BASE, encodeVringState(r.index, 0));
      if (msg === undefined) throw new VhostError('no GET_VRING_BASE reply', 'EPROTO');
      const st = decodeVringState(msg.payload);
      if (st.index !== r.index) {
        this.protocolError(`GET_VRING_BASE reply for queue ${st.index}, asked ${r.index}`);
        throw new VhostError('GET_VRING_BASE reply for the wrong queue', 'EPROTO');
      }
      bases.push(st.num);
    }
    this.vringBases = bases;
    return bases;
  }

  /** Closes the connection and every fd; pending requests reject with ECONNRESET. Idempotent. */
  close(): void {
    this.teardown(null, true);
  }
}
