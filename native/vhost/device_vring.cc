#include "vhost/device_vring.h"

#include <atomic>
#include <cstring>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "virtio rings are little endian");

namespace vbc {
namespace vhost {

namespace {
uint16_t Load16(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED);
}
void Store16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELAXED);
}
void Store32(uint8_t* p, uint32_t v) {
  __atomic_store_n(reinterpret_cast<uint32_t*>(p), v, __ATOMIC_RELAXED);
}

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16, "virtq_desc is 16 bytes");

Desc ReadDesc(const uint8_t* table, uint32_t i) {
  Desc d;
  std::memcpy(&d, table + static_cast<size_t>(i) * 16, sizeof d);
  return d;
}
}  // namespace

void DeviceVring::SetAddr(uint64_t desc, uint64_t avail, uint64_t used) {
  desc_ua_ = desc;
  avail_ua_ = avail;
  used_ua_ = used;
  has_addr_ = true;
}

bool DeviceVring::Resolve(const GuestMemory& mem, bool load_used_idx, std::string* err) {
  if (!has_addr_ || num_ == 0) {
    *err = "vring has no size or addresses";
    return false;
  }
  if ((desc_ua_ & 15) != 0 || (avail_ua_ & 1) != 0 || (used_ua_ & 3) != 0) {
    *err = "vring part is misaligned";
    return false;
  }
  Mapping *dm = nullptr, *am = nullptr, *um = nullptr;
  uint8_t* d = mem.UserAddrContig(desc_ua_, 16ull * num_, &dm);
  uint8_t* a = mem.UserAddrContig(avail_ua_, 6ull + 2ull * num_, &am);
  uint8_t* u = mem.UserAddrContig(used_ua_, 6ull + 8ull * num_, &um);
  if (d == nullptr || a == nullptr || u == nullptr) {
    *err = "vring is not inside one memory region";
    return false;
  }
  desc_ = d;
  avail_ = a;
  used_ = u;
  desc_map_ = dm->shared_from_this();
  avail_map_ = am->shared_from_this();
  used_map_ = um->shared_from_this();
  if (load_used_idx) {
    used_idx_ = Load16(used_ + 2);
    published_used_ = used_idx_;
    signalled_valid_ = false;
  }
  return true;
}

void DeviceVring::Unresolve() {
  desc_ = avail_ = used_ = nullptr;
  desc_map_.reset();
  avail_map_.reset();
  used_map_.reset();
}

void DeviceVring::Reset() {
  has_addr_ = false;
  desc_ = avail_ = used_ = nullptr;
  desc_map_.reset();
  avail_map_.reset();
  used_map_.reset();
  signalled_valid_ = false;
}

uint16_t DeviceVring::LoadAvailIdx() {
  shadow_avail_idx_ = Load16(avail_ + 2);
  std::atomic_thread_fence(std::memory_order_acquire);
  return shadow_avail_idx_;
}

uint16_t DeviceVring::Pending() {
  if (!resolved()) return 0;
  return static_cast<uint16_t>(LoadAvailIdx() - last_avail_idx_);
}

DeviceVring::Pop DeviceVring::PopChain(const GuestMemory& mem, Chain* out, std::string* err) {
  if (!resolved()) return Pop::kEmpty;
  if (shadow_avail_idx_ == last_avail_idx_) {
    LoadAvailIdx();
    if (shadow_avail_idx_ == last_avail_idx_) return Pop::kEmpty;
  }
  if (static_cast<uint16_t>(shadow_avail_idx_ - last_avail_idx_) > num_) {
    *err = "avail index moved by more than the queue size";
    return Pop::kError;
  }
  const uint16_t head = Load16(avail_ + 4 + 2 * (last_avail_idx_ % num_));
  last_avail_idx_++;
  return ReadChain(mem, head, out, err) ? Pop::kChain : Pop::kError;
}

bool DeviceVring::ReadChain(const GuestMemory& mem, uint16_t head, Chain* out, std::string* err) {
  out->iov.clear();
  out->total_len = 0;
  out->descs = 0;
  out->longer_than_queue = false;
  if (!resolved()) {
    *err = "vring is not resolved";
    return false;
  }
  if (head >= num_) {
    *err = "chain head " + std::to_string(head) + " >= queue size";
    return false;
  }
  out->head = head;

  const uint8_t* table = desc_;
  uint32_t table_len = num_;
  bool in_indirect = false;
  uint32_t i = head;
  uint32_t seen = 0;
  uint64_t total = 0;
  for (;;) {
    if (++seen > table_len) {
      *err = "descriptor chain longer than its table (loop)";
      return false;
    }
    const Desc d = ReadDesc(table, i);
    if (d.flags & VIRTQ_DESC_F_INDIRECT) {
      if (!indirect_) {
        *err = "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
        return false;
      }
      if (in_indirect) {
        *err = "nested indirect descriptor";
        return false;
      }
      if (d.flags & VIRTQ_DESC_F_NEXT) {
        *err = "indirect descriptor with NEXT";
        return false;
      }
      if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > kMaxIndirectDescs) {
        *err = "bad indirect table length " + std::to_string(d.len);
        return false;
      }
      const uint8_t* t = mem.GpaContig(d.addr, d.len, nullptr);
      if (t == nullptr) {
        *err = "indirect table outside guest memory";
        return false;
      }
      table = t;
      table_len = d.len / 16;
      in_indirect = true;
      i = 0;
      seen = 0;
      continue;
    }
    if (++out->descs > num_) out->longer_than_queue = true;
    total += d.len;
    if (total > UINT32_MAX) {
      *err = "descriptor chain length overflows 32 bits";
      return false;
    }
    if (!mem.TranslateGpa(d.addr, d.len, (d.flags & VIRTQ_DESC_F_WRITE) != 0, &out->iov)) {
      *err = "descriptor buffer outside guest memory";
      return false;
    }
    if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
    if (d.next >= table_len) {
      *err = "descriptor next index out of range";
      return false;
    }
    i = d.next;
  }
  out->total_len = total;
  return true;
}

bool DeviceVring::ArmKick() {
  if (!event_idx_ || !resolved()) return false;
  Store16(used_ + 4 + 8 * num_, last_avail_idx_);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return LoadAvailIdx() != last_avail_idx_;
}

void DeviceVring::AddUsed(uint16_t id, uint32_t len) {
  uint8_t* e = used_ + 4 + 8 * (used_idx_ % num_);
  Store32(e, id);
  Store32(e + 4, len);
  used_idx_++;
}

void DeviceVring::PublishUsed() {
  if (published_used_ == used_idx_) return;
  std::atomic_thread_fence(std::memory_order_release);
  Store16(used_ + 2, used_idx_);
  published_used_ = used_idx_;
}

bool DeviceVring::ShouldNotify() {
  if (!resolved()) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!event_idx_) {
    return (Load16(avail_) & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;
  }
  const uint16_t event = Load16(avail_ + 4 + 2 * num_);
  const uint16_t old = signalled_used_;
  const bool valid = signalled_valid_;
  const uint16_t now = published_used_;
  signalled_used_ = now;
  signalled_valid_ = true;
  if (!valid) return true;
  // vring_need_event: notify if `event` lies in (old, now].
  return static_cast<uint16_t>(now - event - 1) < static_cast<uint16_t>(now - old);
}

}  // namespace vhost
}  // namespace vbc
