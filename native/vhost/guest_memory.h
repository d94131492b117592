// The front end's memory table: guest RAM regions shared with us as fds and mmap'ed here.
//
// Lifetime: each region's mmap is a Mapping owned through shared_ptr. The table holds one
// reference; rings and in-flight requests (their status byte) hold others, and the JS layer
// (native/js/vhost_device.cc) holds one while JS has views of the mapping (windows) or requests
// in flight over it. The mmap is removed exactly once, by ~Mapping, when the last reference
// goes: there is no other owner and no other unmapping path.
//
// Checks at SET_MEM_TABLE / ADD_MEM_REG (Mapping::Create): a regular file (memfd, tmpfs,
// hugetlbfs), not write-sealed, at least mmap_offset + size bytes long (fstat).
//
// A front end can still shrink the file later (ftruncate) unless it sealed F_SEAL_SHRINK; an
// access to the vanished pages raises SIGBUS. InstallFaultHandler() contains it: the handler
// (SA_SIGINFO) looks the faulting address up in a lock-free registry of every live Mapping,
// replaces that whole mapping with anonymous zero pages (MAP_FIXED, so the faulting access --
// native or JS -- retries harmlessly), marks the mapping faulted and calls the notifier (which
// must be async-signal-safe: uv_async_send); the owner then drops that one device on its loop.
// A SIGBUS outside guest memory goes to the previous handler (or the default action).
//
// Fence(): after a disconnect, mappings that JS still uses for in-flight requests are re-mapped
// MAP_PRIVATE at the same address: reads still see the guest's pages, writes (late read
// completions) land in private copies, so the device writes no guest memory after it left.
//
// Translation rules: guest-physical (descriptor addresses) and front-end user addresses (ring
// addresses) are translated with overflow-safe arithmetic. Rings and indirect tables must lie in
// ONE region (Contig*); a data buffer may span regions that are adjacent in guest-physical
// space and is then split into one HostIov per region (TranslateGpa).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vhost/protocol.h"

namespace vbc {
namespace vhost {

class Mapping : public std::enable_shared_from_this<Mapping> {
 public:
  // Maps [offset, offset + size) of fd (MAP_SHARED, read/write) after the checks above. The
  // start is rounded down to the page (or huge page) size of the file; data() points at
  // `offset`. Keeps a duplicate of fd (for Fence) until destroyed.
  static std::shared_ptr<Mapping> Create(int fd, uint64_t offset, uint64_t size, std::string* err);
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  uint8_t* base() const { return base_; }
  size_t length() const { return length_; }
  uint8_t* data() const { return data_; }
  // true once a SIGBUS hit this mapping (it now holds anonymous zero pages).
  bool faulted() const { return faulted_.load(std::memory_order_acquire); }
  // Re-maps privately (see above). Idempotent; false (mapping unchanged) if mmap failed.
  bool Fence();

 private:
  friend struct FaultRegistry;
  Mapping(uint8_t* base, size_t length, uint8_t* data, int fd, uint64_t file_start)
      : base_(base), length_(length), data_(data), fd_(fd), file_start_(file_start) {}
  uint8_t* base_;
  size_t length_;
  uint8_t* data_;
  int fd_;
  uint64_t file_start_;
  bool fenced_ = false;
  int registry_index_ = -1;
  std::atomic<bool> faulted_{false};
};

// Installs the SIGBUS handler once per process; `notify(arg)` runs inside the handler after a
// guest mapping was replaced (async-signal-safe code only). Later calls only replace notify.
void InstallFaultHandler(void (*notify)(void*), void* arg);
// Installs the handler if it is not yet, leaving notify as it is (mappings of our own files,
// io/mapped_file.h, whose owner checks faulted() after each access).
void EnsureFaultHandler();
// Guest mappings replaced by the handler so far (process-wide): a cheap "anything new?" test
// before looking for faulted mappings.
uint64_t FaultCount();

struct Region {
  uint64_t guest_phys_addr;
  uint64_t size;
  uint64_t user_addr;    // the front end's virtual address of the region
  uint64_t mmap_offset;  // offset of the region in the fd
  std::shared_ptr<Mapping> mapping;
  uint8_t* host;  // our address of guest_phys_addr
};

// A piece of guest memory, host-addressable, inside one mapping.
struct HostIov {
  uint8_t* ptr;
  uint32_t len;
  bool writable;  // device-writable (VIRTQ_DESC_F_WRITE)
  Mapping* mapping;
};

class GuestMemory {
 public:
  // Replaces the whole table (SET_MEM_TABLE): maps every region first, and only if all succeed
  // swaps the table. fds are borrowed (the caller closes them).
  bool SetTable(const MemRegionDesc* descs, uint32_t n, const int* fds, std::string* err);
  // ADD_MEM_REG: at most kMaxMemSlots regions; must not overlap an existing one.
  bool AddRegion(const MemRegionDesc& desc, int fd, std::string* err);
  // REM_MEM_REG: the region with the same guest address, user address and size.
  bool RemoveRegion(const MemRegionDesc& desc, std::string* err);
  void Clear() { regions_.clear(); }

  size_t size() const { return regions_.size(); }
  bool Contains(const Mapping* m) const;
  // true if a SIGBUS replaced any region of the table.
  bool Faulted() const;

  // Appends the pieces of guest-physical [gpa, gpa + len) to out (len 0 appends nothing).
  // False if any byte is outside the table or the range wraps.
  bool TranslateGpa(uint64_t gpa, uint64_t len, bool writable, std::vector<HostIov>* out) const;
  // Host pointer for a range that lies inside one region, else nullptr.
  uint8_t* GpaContig(uint64_t gpa, uint64_t len, Mapping** mapping) const;
  uint8_t* UserAddrContig(uint64_t uaddr, uint64_t len, Mapping** mapping) const;

 private:
  static bool Validate(const MemRegionDesc& d, std::string* err);
  static bool Overlaps(const Region& a, const MemRegionDesc& b);
  static bool MapOne(const MemRegionDesc& d, int fd, Region* out, std::string* err);

  std::vector<Region> regions_;
};

}  // namespace vhost
}  // namespace vbc
