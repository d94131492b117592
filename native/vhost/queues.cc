// Backend: the queues. Ring states (started/enabled/running), kick handling, popping chains
// into virtio-blk requests for JS, and completions coming back from JS.
#include <unistd.h>

#include <cerrno>

#include "vhost/backend_internal.h"

namespace vbc {
namespace vhost {

// ---------------------------------------------------------------------------------------------
// Rings

Backend::Queue* Backend::QueueFor(uint32_t index, const char* what) {
  if (index >= queues_.size()) {
    Panic(std::string(what) + ": queue index " + std::to_string(index) + " >= " +
          std::to_string(queues_.size()));
    return nullptr;
  }
  return &queues_[index];
}

bool Backend::QueueEnabled(const Queue& q) const {
  if (q.enable >= 0) return q.enable == 1;
  return (conn_.features & Bit(VHOST_USER_F_PROTOCOL_FEATURES)) == 0;
}

void Backend::ApplyFeatures() {
  for (uint32_t i = 0; i < queues_.size(); i++) {
    queues_[i].ring.SetFeatures((conn_.features & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0,
                                (conn_.features & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0);
    UpdateRunning(i);
  }
}

void Backend::UpdateRunning(uint32_t index) {
  Queue& q = queues_[index];
  const bool should = q.num_set && q.ring.resolved() && q.kick_fd >= 0 && QueueEnabled(q) &&
                      !q.stop_pending;
  if (should == q.running) return;
  if (should) {
    q.ring.SetFeatures((conn_.features & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0,
                       (conn_.features & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0);
    if (q.inflight == 0) {
      q.head_requests.assign(q.ring.num(), HeadRequest());
      q.gen = ++gen_counter_;
    }
    q.kick_watch = StartWatch(q.kick_fd, kWatchKick, static_cast<int>(index),
                              UV_READABLE | UV_DISCONNECT);
    q.running = true;
    q.process_pending = true;
    ScheduleCheck();
    DeviceEvent ev;
    ev.kind = DeviceEvent::kQueueStarted;
    ev.queue = static_cast<int>(index);
    ev.size = q.ring.num();
    Emit(std::move(ev));
    Log(LogLevel::kInfo, "queue started",
        {Num("queue", index), Num("size", q.ring.num()), Num("base", q.ring.last_avail_idx()),
         Num("eventIdx", q.ring.event_idx() ? 1 : 0)});
  } else {
    q.running = false;
    q.process_pending = false;
    StopWatch(&q.kick_watch);
    DeviceEvent ev;
    ev.kind = DeviceEvent::kQueueStopped;
    ev.queue = static_cast<int>(index);
    Emit(std::move(ev));
    Log(LogLevel::kInfo, "queue stopped", {Num("queue", index)});
  }
}

void Backend::StopQueue(uint32_t index, bool clear_config) {
  Queue& q = queues_[index];
  CloseFd(&q.kick_fd);
  UpdateRunning(index);  // kick fd gone: stops a running queue
  if (clear_config) {
    CloseFd(&q.call_fd);
    q = Queue();
  }
}

void Backend::StopAllQueues() {
  for (uint32_t i = 0; i < queues_.size(); i++) StopQueue(i, true);
  if (conn_.deferred_queue >= 0) {
    conn_.deferred_queue = -1;
    if (conn_.reading_paused && conn_.watch != nullptr) {
      conn_.reading_paused = false;
      uv_poll_start(&conn_.watch->handle, UV_READABLE | UV_DISCONNECT, OnPoll);
    }
  }
}

void Backend::ClearHeadRequests(Queue& q) {
  q.head_requests.clear();
  q.inflight = 0;
}

bool Backend::ReResolveRings() {
  for (uint32_t i = 0; i < queues_.size(); i++) {
    Queue& q = queues_[i];
    if (!q.ring.has_addr() || !q.num_set) continue;
    std::string err;
    if (!q.ring.Resolve(mem_, false, &err)) {
      if (q.running || q.inflight > 0) {
        Panic("queue " + std::to_string(i) + " after a memory table change: " + err);
        return false;
      }
      q.ring.Unresolve();
    }
    UpdateRunning(i);
  }
  return true;
}

void Backend::OnKick(uint32_t index, int events) {
  if (index >= queues_.size()) return;
  Queue& q = queues_[index];
  if (q.kick_fd < 0) return;
  // The kick fd is a non-blocking eventfd (SetVringFd): one read resets its counter. An end of
  // file or a hang-up would report readiness forever, so it breaks the device.
  uint64_t v;
  const ssize_t n = read(q.kick_fd, &v, sizeof v);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    Panic("kick fd of queue " + std::to_string(index) +
          (n == 0 ? " at end of file" : " read failed: " + ErrnoName(errno)));
    return;
  }
  if (n < 0 && (events & UV_DISCONNECT) != 0) {
    Panic("kick fd of queue " + std::to_string(index) + " hung up");
    return;
  }
  ProcessQueue(index);
}

void Backend::ProcessQueue(uint32_t index) {
  if (index >= queues_.size() || !queues_[index].running) return;
  Queue& q = queues_[index];
  if (inflight_.mapping && !q.tracker.attached() && !RecoverInflight(index)) return;
  const uint64_t serial = conn_serial_;
  std::vector<PendingRequest> reqs;
  std::vector<HostIov> segs;
  Chain chain;
  blk::Request br;
  uint32_t answered = 0;
  for (;;) {
    if (answered == kMaxInlineAnswersPerPass) {
      // The guest keeps the ring busy with requests answered natively: finish on a later turn.
      q.process_pending = true;
      ScheduleCheck();
      break;
    }
    std::string err;
    const DeviceVring::Pop r = NextChain(q, &chain, &err);
    if (r == DeviceVring::Pop::kEmpty) {
      if (q.ring.ArmKick()) continue;
      break;
    }
    if (r == DeviceVring::Pop::kError) {
      Panic("queue " + std::to_string(index) + ": " + err);
      return;
    }
    HeadRequest& hr = q.head_requests[chain.head];
    if (hr.active) {
      Panic("queue " + std::to_string(index) + ": head " + std::to_string(chain.head) +
            " made available while in flight");
      return;
    }
    q.tracker.Begin(chain.head);
    const blk::Carve c = blk::CarveRequest(chain, options_.limits, &br, &err);
    if (c == blk::Carve::kMalformed) {
      Panic("queue " + std::to_string(index) + ": " + err);
      return;
    }
    if (c == blk::Carve::kRejected) {
      __atomic_store_n(br.status, blk::VIRTIO_BLK_S_IOERR, __ATOMIC_RELAXED);
      AddUsed(q, chain.head, 1);
      answered++;
      Log(LogLevel::kWarn, "request answered IOERR: " + err,
          {Num("queue", index), Num("type", br.type)});
      continue;
    }
    hr.active = true;
    hr.type = br.type;
    hr.data_len = br.data_len;
    hr.status = br.status;
    hr.status_mapping = br.status_mapping->shared_from_this();
    q.inflight++;
    reqs.push_back(PendingRequest{MakeTag(q.gen, index, chain.head), br.type, br.sector,
                                  br.data_len, static_cast<uint32_t>(segs.size()),
                                  static_cast<uint32_t>(br.data.size())});
    segs.insert(segs.end(), br.data.begin(), br.data.end());
  }
  if (answered > 0) {
    PublishUsed(q);
    q.notify_pending = true;
    ScheduleCheck();
  }
  if (reqs.empty()) return;
  FlushEvents();
  if (serial != conn_serial_ || closed_) return;
  host_->DeliverRequests(static_cast<int>(index), reqs, segs);
}

// ---------------------------------------------------------------------------------------------
// Used elements and inflight tracking

void Backend::AddUsed(Queue& q, uint16_t head, uint32_t len) {
  q.tracker.Link(head);
  q.ring.AddUsed(head, len);
  q.used_batch.push_back(head);
}

void Backend::PublishUsed(Queue& q) {
  q.ring.PublishUsed();
  q.tracker.Finish(q.used_batch, q.ring.used_idx());
  q.used_batch.clear();
}

bool Backend::RecoverInflight(uint32_t index) {
  Queue& q = queues_[index];
  if (index >= inflight_.num_queues) return true;  // the region does not cover this queue
  if (q.ring.num() > inflight_.queue_size) {
    Panic("queue " + std::to_string(index) + " of " + std::to_string(q.ring.num()) +
          " descriptors is larger than the inflight region's " +
          std::to_string(inflight_.queue_size));
    return false;
  }
  q.tracker.Attach(inflight_.Queue(index), inflight_.queue_size);
  std::string err;
  if (!q.tracker.Recover(q.ring.used_idx(), q.ring.num(), &q.resubmit, &err)) {
    Panic("queue " + std::to_string(index) + ": " + err);
    return false;
  }
  q.resubmit_next = 0;
  // What was popped is either used or still in flight: the next avail entry follows them.
  const uint16_t next = static_cast<uint16_t>(q.ring.used_idx() + q.resubmit.size());
  if (next != q.ring.last_avail_idx() || !q.resubmit.empty()) {
    Log(LogLevel::kInfo, "inflight requests recovered",
        {Num("queue", index), Num("resubmit", static_cast<double>(q.resubmit.size())),
         Num("used", q.ring.used_idx()), Num("base", q.ring.last_avail_idx()), Num("next", next)});
  }
  q.ring.SetBase(next);
  return true;
}

DeviceVring::Pop Backend::NextChain(Queue& q, Chain* chain, std::string* err) {
  if (q.resubmit_next < q.resubmit.size()) {
    const uint16_t head = q.resubmit[q.resubmit_next++];
    if (q.resubmit_next == q.resubmit.size()) {
      q.resubmit.clear();
      q.resubmit_next = 0;
    }
    if (!q.ring.ReadChain(mem_, head, chain, err)) {
      *err = "resubmitted inflight head " + std::to_string(head) + ": " + *err;
      return DeviceVring::Pop::kError;
    }
    return DeviceVring::Pop::kChain;
  }
  return q.ring.PopChain(mem_, chain, err);
}

// ---------------------------------------------------------------------------------------------
// JS entry points

bool Backend::Complete(uint32_t queue, const uint32_t* pairs, size_t count, std::string* err) {
  if (queue >= options_.max_queues) {
    *err = "queue " + std::to_string(queue) + " out of range";
    return false;
  }
  for (size_t i = 0; i < count; i++) {
    if (pairs[2 * i + 1] > 255) {
      *err = "status " + std::to_string(pairs[2 * i + 1]) + " out of range";
      return false;
    }
  }
  if (conn_.fd < 0 || queue >= queues_.size()) return true;
  Queue& q = queues_[queue];
  bool touched = false;
  for (size_t i = 0; i < count; i++) {
    const uint32_t tag = pairs[2 * i];
    const uint8_t status = static_cast<uint8_t>(pairs[2 * i + 1]);
    const uint32_t head = TagHead(tag);
    if (TagQueue(tag) != queue || TagGen(tag) != (q.gen & kTagGenMask) ||
        head >= q.head_requests.size()) {
      continue;
    }
    HeadRequest& hr = q.head_requests[head];
    if (!hr.active) continue;
    __atomic_store_n(hr.status, status, __ATOMIC_RELAXED);
    AddUsed(q, static_cast<uint16_t>(head), blk::UsedLength(hr.type, status, hr.data_len));
    hr.active = false;
    hr.status = nullptr;
    hr.status_mapping.reset();
    q.inflight--;
    touched = true;
  }
  if (touched) {
    PublishUsed(q);
    q.notify_pending = true;
    ScheduleCheck();
  }
  if (q.stop_pending && q.inflight == 0) FinishGetVringBase(queue);
  return true;
}

std::vector<uint32_t> Backend::Inflight() const {
  std::vector<uint32_t> out(options_.max_queues, 0);
  for (size_t i = 0; i < queues_.size() && i < out.size(); i++) out[i] = queues_[i].inflight;
  return out;
}

}  // namespace vhost
}  // namespace vbc
