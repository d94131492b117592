// Device side of a virtio 1.x split virtqueue (virtio 1.2, 2.7): DeviceVring. (The driver side,
// for tests and benchmarks, is DriverRing in src/frontend/ring-driver.ts.)
//
// Layout in guest memory (little endian, host is little endian):
//   desc  : num x { le64 addr; le32 len; le16 flags; le16 next; }        align 16
//   avail : le16 flags; le16 idx; le16 ring[num]; le16 used_event;       align 2
//   used  : le16 flags; le16 idx; { le32 id; le32 len; } ring[num]; le16 avail_event; align 4
//
// Concurrency with the driver (another process/guest): every shared field is accessed with a
// single relaxed atomic load/store; ordering uses std::atomic_thread_fence:
//   - read avail->idx, acquire fence, then read ring entries and descriptors;
//   - write used elements, release fence, then write used->idx;
//   - EVENT_IDX: write avail_event, full fence, re-read avail->idx (no lost kick);
//   - before deciding to notify: full fence between the used->idx store and reading
//     used_event / avail->flags.
// Descriptors are copied out once (the driver may rewrite them concurrently).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vhost/guest_memory.h"

namespace vbc {
namespace vhost {

constexpr uint16_t VIRTQ_DESC_F_NEXT = 1;
constexpr uint16_t VIRTQ_DESC_F_WRITE = 2;
constexpr uint16_t VIRTQ_DESC_F_INDIRECT = 4;
constexpr uint16_t VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
constexpr uint32_t kMaxIndirectDescs = 32768;  // longest indirect table walked (max queue size)

// One popped descriptor chain as host memory pieces, in chain order.
struct Chain {
  uint16_t head = 0;
  uint64_t total_len = 0;  // sum of descriptor lengths (<= UINT32_MAX)
  uint32_t descs = 0;      // buffer descriptors (an indirect descriptor itself not counted)
  // More descriptors than the queue size (virtio 1.2, 2.7.5.3.1: the driver MUST NOT): still
  // walked completely (bounded by kMaxIndirectDescs) so the request can get an error status.
  bool longer_than_queue = false;
  std::vector<HostIov> iov;
};

class DeviceVring {
 public:
  enum class Pop { kEmpty, kChain, kError };

  // num: power of two in [1, 32768] (checked by the caller against its maximum).
  void SetNum(uint32_t num) { num_ = num; }
  uint32_t num() const { return num_; }
  void SetBase(uint16_t base) { last_avail_idx_ = base; shadow_avail_idx_ = base; }
  uint16_t last_avail_idx() const { return last_avail_idx_; }
  void SetFeatures(bool indirect, bool event_idx) { indirect_ = indirect; event_idx_ = event_idx; }
  bool event_idx() const { return event_idx_; }

  // Front-end user addresses of the three parts (SET_VRING_ADDR).
  void SetAddr(uint64_t desc, uint64_t avail, uint64_t used);
  bool has_addr() const { return has_addr_; }
  // Translates the addresses through mem (sizes from num, alignment checked). On success the
  // ring holds references on the mappings and reads the used index from memory when
  // `load_used_idx`.
  bool Resolve(const GuestMemory& mem, bool load_used_idx, std::string* err);
  bool resolved() const { return desc_ != nullptr; }
  // Drops the translated pointers and mapping references (keeps the user addresses).
  void Unresolve();
  // Forgets addresses, mappings and notification state (keeps nothing of the guest).
  void Reset();

  // Pops the next available chain into out (cleared first).
  Pop PopChain(const GuestMemory& mem, Chain* out, std::string* err);
  // Reads the chain starting at descriptor `head` (inflight resubmission: a head recorded by
  // an earlier back end), validated exactly like a popped one. False with *err if malformed.
  bool ReadChain(const GuestMemory& mem, uint16_t head, Chain* out, std::string* err);
  // EVENT_IDX: asks for a kick when avail->idx moves past last_avail_idx. Returns true if
  // more buffers became available meanwhile (pop again).
  bool ArmKick();
  // Number of available entries not yet popped (avail->idx - last_avail_idx), re-read.
  uint16_t Pending();

  // Adds a used element (not visible to the driver until PublishUsed).
  void AddUsed(uint16_t id, uint32_t len);
  void PublishUsed();
  // Whether the driver wants an interrupt for what was published since the last decision.
  bool ShouldNotify();
  uint16_t used_idx() const { return used_idx_; }

 private:
  uint16_t LoadAvailIdx();

  uint32_t num_ = 0;
  bool indirect_ = false;
  bool event_idx_ = false;
  bool has_addr_ = false;
  uint64_t desc_ua_ = 0, avail_ua_ = 0, used_ua_ = 0;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  std::shared_ptr<Mapping> desc_map_, avail_map_, used_map_;
  uint16_t last_avail_idx_ = 0;
  uint16_t shadow_avail_idx_ = 0;  // last avail->idx read
  uint16_t used_idx_ = 0;          // next used index (includes unpublished elements)
  uint16_t published_used_ = 0;    // used->idx as last written
  uint16_t signalled_used_ = 0;    // used index at the last notification decision
  bool signalled_valid_ = false;
};

}  // namespace vhost
}  // namespace vbc
