/**
 * A back-end process for the inflight tests (test/vhost/inflight.test.ts): one native
 * VhostDevice on the socket given as argv[2], an in-memory disk, and every request held until
 * the parent (IPC) says which to complete, so the parent can SIGKILL it with requests in flight
 * and some completed out of order.
 *
 * IPC: -> {kind: 'ready'} once listening; -> {kind: 'requests', reqs: [{slot, sector, type}]}
 * per batch from the device; <- {complete: slot[]} completes those (one complete() call each,
 * in the given order) and answers -> {kind: 'completed', slots}.
 */
import { startDevice } from './helpers';

const socketPath = process.argv[2];
if (socketPath === undefined || process.send === undefined) throw new Error('usage: fork(inflight-peer, [socketPath])');
const send = process.send.bind(process);
const t = startDevice({ socketPath, maxQueues: 1 });
t.held = [];
t.onBatch = (_queue, reqs) => {
  send({ kind: 'requests', reqs: reqs.map((r) => ({ slot: r.tag, sector: r.sector, type: r.type })) });
};
process.on('message', (m: { complete: number[] }) => {
  const held = t.held ?? [];
  for (const slot of m.complete) {
    const i = held.findIndex((h) => h.req.tag === slot);
    if (i < 0) throw new Error(`slot ${slot} is not held`);
    const [h] = held.splice(i, 1);
    t.dev.complete(h.queue, 1, Uint32Array.of(slot, 0));
  }
  send({ kind: 'completed', slots: m.complete });
});
void t.waitEvent((e) => e.type === 'listening').then(() => send({ kind: 'ready' }));
