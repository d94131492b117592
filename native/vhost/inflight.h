// Inflight I/O tracking for split rings (vhost-user.rst, "Inflight I/O tracking";
// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): a shared region, created by the back end on
// GET_INFLIGHT_FD and kept by the front end, records which descriptor heads the back end has
// popped but not yet returned, so that a new back end process (after a crash or an upgrade)
// resubmits exactly those, in the order they were popped, and none twice.
//
// Region layout (one QueueRegion per queue, each InflightQueueBytes() apart):
//   u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//   desc_num x { u8 inflight; u8 padding[5]; u16 next; u64 counter; }
//
// Protocol (what InflightQueue does, in this order):
//   Begin(head)       on pop, before the request leaves the ring code: counter = counter++,
//                     then inflight = 1.
//   Link(head)        before the used element is added: next = last_batch_head, then
//                     last_batch_head = head.
//   Finish(batch, i)  after used->idx was published: inflight = 0 for every head of the batch,
//                     then used_idx = the published used index.
//   Recover(...)      on the first start after SET_INFLIGHT_FD: if used_idx differs from the
//                     ring's used->idx the last batch was published but not cleared, so the
//                     (used->idx - used_idx) entries of the list from last_batch_head are
//                     cleared; then every entry still marked is to be resubmitted, ordered by
//                     counter, and the ring's next avail index is used->idx + their number.
// Every store that must be ordered before a later one is a release store, so whatever prefix of
// this sequence a SIGKILL leaves behind is one the recovery above handles.
//
// The region is untrusted (the front end holds it, may hand back any file): sizes are checked
// before mapping, the mapping goes through Mapping::Create (regular file, long enough, SIGBUS
// contained), and Recover validates every field it follows (version, desc_num, heads, flags,
// batch length) and reports garbage as an error instead of trusting it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vhost/guest_memory.h"

namespace vbc {
namespace vhost {

constexpr uint16_t kInflightVersion = 1;
// Each queue's part of the region starts on this boundary (as libvhost-user lays it out).
constexpr uint64_t kInflightQueueAlign = 64;

// Bytes of one queue's part / of the whole region for queues of queue_size descriptors.
uint64_t InflightQueueBytes(uint32_t queue_size);
uint64_t InflightRegionBytes(uint32_t num_queues, uint32_t queue_size);

// The shared region as mapped here, with the geometry it was created or validated with.
struct InflightRegion {
  std::shared_ptr<Mapping> mapping;
  uint32_t num_queues = 0;
  uint32_t queue_size = 0;
  uint8_t* Queue(uint32_t i) const { return mapping->data() + InflightQueueBytes(queue_size) * i; }
};

// GET_INFLIGHT_FD: a new zeroed memfd of InflightRegionBytes (sealed against shrinking, so the
// front end cannot make our accesses fault). Returns the fd (caller sends and closes it) or -1.
int CreateInflightRegion(uint32_t num_queues, uint32_t queue_size, InflightRegion* out,
                         std::string* err);
// SET_INFLIGHT_FD: maps [offset, offset + size) of fd after checking size against the geometry.
bool MapInflightRegion(int fd, uint64_t size, uint64_t offset, uint32_t num_queues,
                       uint32_t queue_size, InflightRegion* out, std::string* err);

// One queue's part of the region, as the back end drives it.
class InflightQueue {
 public:
  // Attaches to a queue part of desc_num entries (nullptr: tracking off).
  void Attach(uint8_t* part, uint32_t desc_num);
  void Detach() { part_ = nullptr; }
  bool attached() const { return part_ != nullptr; }

  void Begin(uint16_t head);
  void Link(uint16_t head);
  void Finish(const std::vector<uint16_t>& batch, uint16_t used_idx);

  // First start after SET_INFLIGHT_FD with the ring's used->idx and size. A fresh region
  // (version 0) is initialised and yields nothing. Otherwise fills `resubmit` (heads by
  // counter) and returns true, or false with *err for a region that cannot be trusted.
  bool Recover(uint16_t used_idx, uint32_t ring_num, std::vector<uint16_t>* resubmit,
               std::string* err);

 private:
  uint8_t* Desc(uint32_t head) const;
  uint8_t* part_ = nullptr;
  uint32_t desc_num_ = 0;
  uint64_t counter_ = 0;
};

}  // namespace vhost
}  // namespace vbc
