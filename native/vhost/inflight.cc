// Inflight I/O tracking region and its per-queue bookkeeping (contract in inflight.h).
#include "vhost/inflight.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace vbc {
namespace vhost {

namespace {
// Offsets inside one queue part and inside one descriptor entry (see inflight.h).
constexpr size_t kVersionOff = 8;
constexpr size_t kDescNumOff = 10;
constexpr size_t kLastBatchHeadOff = 12;
constexpr size_t kUsedIdxOff = 14;
constexpr size_t kQueueHeaderBytes = 16;
constexpr size_t kDescBytes = 16;
constexpr size_t kDescInflightOff = 0;
constexpr size_t kDescNextOff = 6;
constexpr size_t kDescCounterOff = 8;

uint16_t Load16(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
}
void Store16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}
uint64_t Load64(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint64_t*>(p), __ATOMIC_ACQUIRE);
}
void Store64(uint8_t* p, uint64_t v) {
  __atomic_store_n(reinterpret_cast<uint64_t*>(p), v, __ATOMIC_RELEASE);
}
}  // namespace

uint64_t InflightQueueBytes(uint32_t queue_size) {
  const uint64_t raw = kQueueHeaderBytes + kDescBytes * static_cast<uint64_t>(queue_size);
  return (raw + kInflightQueueAlign - 1) & ~(kInflightQueueAlign - 1);
}

uint64_t InflightRegionBytes(uint32_t num_queues, uint32_t queue_size) {
  return InflightQueueBytes(queue_size) * num_queues;
}

int CreateInflightRegion(uint32_t num_queues, uint32_t queue_size, InflightRegion* out,
                         std::string* err) {
  const uint64_t size = InflightRegionBytes(num_queues, queue_size);
  const int fd = memfd_create("vhost-blk-cache-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    *err = std::string("memfd_create: ") + strerror(errno);
    return -1;
  }
  if (ftruncate(fd, static_cast<off_t>(size)) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    *err = std::string("inflight region setup: ") + strerror(errno);
    close(fd);
    return -1;
  }
  if (!MapInflightRegion(fd, size, 0, num_queues, queue_size, out, err)) {
    close(fd);
    return -1;
  }
  return fd;
}

bool MapInflightRegion(int fd, uint64_t size, uint64_t offset, uint32_t num_queues,
                       uint32_t queue_size, InflightRegion* out, std::string* err) {
  const uint64_t want = InflightRegionBytes(num_queues, queue_size);
  if (size != want) {
    *err = "inflight region of " + std::to_string(size) + " bytes, " + std::to_string(want) +
           " expected for " + std::to_string(num_queues) + " queues of " +
           std::to_string(queue_size);
    return false;
  }
  std::shared_ptr<Mapping> m = Mapping::Create(fd, offset, size, err);
  if (!m) return false;
  out->mapping = std::move(m);
  out->num_queues = num_queues;
  out->queue_size = queue_size;
  return true;
}

void InflightQueue::Attach(uint8_t* part, uint32_t desc_num) {
  part_ = part;
  desc_num_ = desc_num;
}

uint8_t* InflightQueue::Desc(uint32_t head) const {
  return part_ + kQueueHeaderBytes + kDescBytes * head;
}

void InflightQueue::Begin(uint16_t head) {
  if (part_ == nullptr) return;
  uint8_t* d = Desc(head);
  Store64(d + kDescCounterOff, counter_++);
  __atomic_store_n(d + kDescInflightOff, uint8_t{1}, __ATOMIC_RELEASE);
}

void InflightQueue::Link(uint16_t head) {
  if (part_ == nullptr) return;
  Store16(Desc(head) + kDescNextOff, Load16(part_ + kLastBatchHeadOff));
  Store16(part_ + kLastBatchHeadOff, head);
}

void InflightQueue::Finish(const std::vector<uint16_t>& batch, uint16_t used_idx) {
  if (part_ == nullptr) return;
  for (uint16_t head : batch) __atomic_store_n(Desc(head) + kDescInflightOff, uint8_t{0}, __ATOMIC_RELEASE);
  Store16(part_ + kUsedIdxOff, used_idx);
}

bool InflightQueue::Recover(uint16_t used_idx, uint32_t ring_num,
                            std::vector<uint16_t>* resubmit, std::string* err) {
  resubmit->clear();
  if (part_ == nullptr) return true;
  const uint16_t version = Load16(part_ + kVersionOff);
  if (version == 0) {
    // Fresh region (GET_INFLIGHT_FD, or a front end that reset it): nothing was in flight.
    std::memset(part_ + kQueueHeaderBytes, 0, kDescBytes * desc_num_);
    Store16(part_ + kDescNumOff, static_cast<uint16_t>(desc_num_));
    Store16(part_ + kLastBatchHeadOff, 0);
    Store16(part_ + kUsedIdxOff, used_idx);
    Store16(part_ + kVersionOff, kInflightVersion);
    counter_ = 0;
    return true;
  }
  if (version != kInflightVersion) {
    *err = "inflight region version " + std::to_string(version);
    return false;
  }
  if (Load16(part_ + kDescNumOff) != static_cast<uint16_t>(desc_num_)) {
    *err = "inflight region desc_num " + std::to_string(Load16(part_ + kDescNumOff)) + ", " +
           std::to_string(desc_num_) + " expected";
    return false;
  }
  // The last batch reached the used ring but was not cleared here: clear it now.
  const uint16_t batch = static_cast<uint16_t>(used_idx - Load16(part_ + kUsedIdxOff));
  if (batch > ring_num) {
    *err = "inflight region: last batch of " + std::to_string(batch) + " entries";
    return false;
  }
  uint32_t head = Load16(part_ + kLastBatchHeadOff);
  for (uint32_t i = 0; i < batch; i++) {
    if (head >= ring_num) {
      *err = "inflight region: batch head " + std::to_string(head) + " >= queue size";
      return false;
    }
    __atomic_store_n(Desc(head) + kDescInflightOff, uint8_t{0}, __ATOMIC_RELEASE);
    head = Load16(Desc(head) + kDescNextOff);
  }
  Store16(part_ + kUsedIdxOff, used_idx);

  std::vector<std::pair<uint64_t, uint16_t>> marked;
  uint64_t max_counter = 0;
  for (uint32_t h = 0; h < desc_num_; h++) {
    const uint8_t flag = __atomic_load_n(Desc(h) + kDescInflightOff, __ATOMIC_ACQUIRE);
    if (flag == 0) continue;
    if (flag != 1 || h >= ring_num) {
      *err = "inflight region: entry " + std::to_string(h) + " marked " + std::to_string(flag) +
             (h >= ring_num ? " beyond the queue size" : "");
      return false;
    }
    const uint64_t c = Load64(Desc(h) + kDescCounterOff);
    marked.emplace_back(c, static_cast<uint16_t>(h));
    max_counter = std::max(max_counter, c);
  }
  std::sort(marked.begin(), marked.end());
  for (const auto& e : marked) resubmit->push_back(e.second);
  counter_ = marked.empty() ? 0 : max_counter + 1;
  return true;
}

}  // namespace vhost
}  // namespace vbc
