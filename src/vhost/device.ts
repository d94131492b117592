/**
 * The back-end framework layer in TypeScript: one VhostExport per vhost-user socket. It owns
 * the native VhostDevice (protocol, guest memory, rings) built from options src/config has
 * validated, turns native events into log lines and state, and batches completions.
 *
 * Completion batching: complete() only records (tag, status) per queue; the records are
 * handed to native in one call per queue from a microtask, so every request finished in the
 * same turn of the event loop costs one crossing (and native notifies the guest once).
 */
import { native } from '../native/binding';
import type { NativeVhostDevice, VhostDeviceEvent, VhostDeviceOptions } from '../native/types';
import type { Logger } from '../util/logger';

/** The native device's options (see src/native/types.ts) with JS callbacks instead of its raw ones. */
export interface VhostExportOptions extends Omit<VhostDeviceOptions, 'onRequests' | 'onEvent'> {
  logger: Logger;
  /** Receives each batch; see src/native/types.ts for the request table layout. */
  onRequests: (queue: number, count: number, segs: Uint8Array[], table: Float64Array) => void;
  /** SET_CONFIG from the guest (e.g. the writeback byte). */
  onConfigWrite?: (offset: number, data: Uint8Array) => void;
  onConnectionChange?: (connected: boolean) => void;
}

/** Per-queue completion buffer: pairs [tag, status]. */
class CompletionQueue {
  pairs: Uint32Array = new Uint32Array(256);
  count = 0;

  push(tag: number, status: number): void {
    if ((this.count + 1) * 2 > this.pairs.length) {
      const bigger = new Uint32Array(this.pairs.length * 2);
      bigger.set(this.pairs);
      this.pairs = bigger;
    }
    this.pairs[this.count * 2] = tag;
    this.pairs[this.count * 2 + 1] = status;
    this.count++;
  }
}

export class VhostExport {
  private readonly dev: NativeVhostDevice;
  private readonly queues: CompletionQueue[] = [];
  private flushScheduled = false;
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly opts: VhostExportOptions) {
    this.log = opts.logger;
    for (let q = 0; q < opts.maxQueues; q++) this.queues.push(new CompletionQueue());
    // Callbacks only run from later event-loop turns, after this.dev is assigned.
    this.dev = new native.VhostDevice({
      ...(opts.socketPath !== undefined ? { socketPath: opts.socketPath } : {}),
      ...(opts.socketMode !== undefined ? { socketMode: opts.socketMode } : {}),
      ...(opts.allowUids !== undefined ? { allowUids: opts.allowUids } : {}),
      ...(opts.fd !== undefined ? { fd: opts.fd } : {}),
      maxQueues: opts.maxQueues,
      maxQueueSize: opts.maxQueueSize,
      maxSegments: opts.maxSegments,
      maxSegmentSize: opts.maxSegmentSize,
      deviceFeatures: opts.deviceFeatures,
      config: opts.config,
      onRequests: (queue, count, segs) => {
        opts.onRequests(queue, count, segs, this.dev.requests);
      },
      onEvent: (ev) => this.onEvent(ev),
    });
  }

  get connected(): boolean {
    return this.dev.connected;
  }

  inflight(): number[] {
    return this.dev.inflight();
  }

  setConfig(config: Uint8Array): void {
    this.dev.setConfig(config);
  }

  /** Records a completion; handed to native with the rest of this turn's batch. */
  complete(queue: number, tag: number, status: number): void {
    const q = this.queues[queue];
    if (q === undefined) return;
    q.push(tag, status);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.closed) return;
    for (let i = 0; i < this.queues.length; i++) {
      const q = this.queues[i] as CompletionQueue;
      if (q.count === 0) continue;
      const n = q.count;
      q.count = 0;
      this.dev.complete(i, n, q.pairs);
    }
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.dev.close();
  }

  /** State changes; the native layer already logs each of them (with the message name). */
  private onEvent(ev: VhostDeviceEvent): void {
    switch (ev.type) {
      case 'log':
        this.log[ev.level]({ ...(ev.fields ?? {}) }, ev.msg);
        break;
      case 'connected':
        this.opts.onConnectionChange?.(true);
        break;
      case 'disconnected':
        this.opts.onConnectionChange?.(false);
        break;
      case 'config-write':
        this.opts.onConfigWrite?.(ev.offset, ev.data);
        break;
      default:
        break;
    }
  }
}
