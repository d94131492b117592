/**
 * A back-end process for the inflight tests (test/vhost/inflight.test.ts): one native
 * VhostDevice on the socket given as argv[2], an in-memory disk, and every request held until
 * the parent (IPC) says which to complete, so the parent can SIGKILL it with requests in flight
 * and some completed out of order.
 *
 * IPC: -> {kind: 'ready'} once listening; -> {kind: 'requests', reqs: [{tag, sector, type}]}
 * per batch from the device; <- {complete: tag[]} completes those (one complete() call each,
 * in the given order) and answers -> {kind: 'completed', tags}.
 */
import { startDevice } from './helpers';

const socketPath = process.argv[2];
if (socketPath === undefined || process.send === undefined) throw new Error('usage: fork(inflight-peer, [socketPath])');
const send = process.send.bind(process);
const t = startDevice({ socketPath, maxQueues: 1 });
t.held = [];
t.onBatch = (_queue, reqs) => {
  send({ kind: 'requests', reqs: reqs.map((r) => ({ tag: r.tag, sector: r.sector, type: r.type })) });
};
process.on('message', (m: { complete: number[] }) => {
  const held = t.held ?? [];
  for (const tag of m.complete) {
    const i = held.findIndex((h) => h.req.tag === tag);
    if (i < 0) throw new Error(`tag ${tag} is not held`);
    const [h] = held.splice(i, 1);
    t.dev.complete(h.queue, 1, Uint32Array.of(tag, 0));
  }
  send({ kind: 'completed', tags: m.complete });
});
void t.waitEvent((e) => e.type === 'listening').then(() => send({ kind: 'ready' }));
