/**
 * Cost of handing guest memory to JS on the request hot path: our front end drives the native
 * VhostDevice in-process at queue depth 32 with 4 KiB reads; onRequests touches every view and
 * completes at once (no store), so the figure is the native + JS crossing per request, views
 * included. Run before and after a change to the guest memory views and compare.
 * Run: node dist/bench/guest-memory.js [requests] [rounds]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VhostUserFrontend } from '../src/frontend/vhost-user-frontend';
import { native } from '../src/native/binding';
import { REQ_FIRST_SEG, REQ_SEG_COUNT, REQ_TAG, REQ_STRIDE, type NativeVhostDevice } from '../src/native/types';
import { benchPositionals, positiveNumber } from '../src/bench/cli';
import { benchDir } from '../src/bench/targets';
import { VIRTIO_BLK_T_IN } from '../src/virtio-blk/spec';

async function main(): Promise<void> {
  const [countArg, roundsArg] = benchPositionals('Usage: node dist/bench/guest-memory.js [requests (default 200000)] [rounds (default 5)]', ['200000', '5']);
  const count = positiveNumber(countArg, 'requests');
  const rounds = positiveNumber(roundsArg, 'rounds');
  const dir = benchDir(undefined, 'gm-');
  const socketPath = path.join(dir, 'dev.sock');
  const config = new Uint8Array(60);
  new DataView(config.buffer).setBigUint64(0, 1n << 20n, true);
  const pairs = new Uint32Array(2 * 256);
  let touched = 0;
  const dev: NativeVhostDevice = new native.VhostDevice({
    socketPath,
    maxQueues: 1,
    maxQueueSize: 256,
    maxSegments: 126,
    maxSegmentSize: 1 << 20,
    deviceFeatures: 0n,
    config,
    onEvent: () => undefined,
    onRequests: (queue, n, segs) => {
      const t = dev.requests;
      for (let i = 0; i < n; i++) {
        const first = t[i * REQ_STRIDE + REQ_FIRST_SEG] as number;
        const nseg = t[i * REQ_STRIDE + REQ_SEG_COUNT] as number;
        for (let j = first; j < first + nseg; j++) touched += (segs[j] as Uint8Array)[0] as number;
        pairs[2 * i] = t[i * REQ_STRIDE + REQ_TAG] as number;
        pairs[2 * i + 1] = 0;
      }
      dev.complete(queue, n, pairs);
    },
  });
  const fe = await VhostUserFrontend.open(socketPath, { queueSize: 128, memorySize: 64 << 20, indirect: false });
  const q = fe.ring(0);
  for (let r = 0; r < rounds; r++) {
    const cpu0 = process.cpuUsage();
    const res = await q.runQueueDepth({
      depth: 32,
      count,
      maxLen: 4096,
      makeRequest: (seq, req) => {
        req.type = VIRTIO_BLK_T_IN;
        req.sector = (seq % 1024) * 8;
        req.len = 4096;
      },
    });
    const cpu = process.cpuUsage(cpu0);
    const secs = Number(res.elapsedNs) / 1e9;
    console.log(
      `round ${r}: ${Math.round(res.completed / secs)} req/s, ${(((cpu.user + cpu.system) / res.completed) * 1000).toFixed(0)} ns CPU/request, errors ${res.errors}`,
    );
  }
  fe.close();
  dev.close();
  fs.rmSync(dir, { recursive: true, force: true });
  if (touched < 0) console.log(touched);
}

void main();
