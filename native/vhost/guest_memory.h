// The front end's memory table: guest RAM regions shared with us as fds and mmap'ed here.
//
// Lifetime: each region's mmap is a Mapping owned through shared_ptr. The table holds one
// reference; rings, in-flight requests (their status byte) and JS ArrayBuffers (their
// finalizer) hold others. A mapping is unmapped only when the table dropped it AND nobody else
// refers to it, so a JS view never dangles after SET_MEM_TABLE, REM_MEM_REG or a disconnect.
//
// Translation rules: guest-physical (descriptor addresses) and front-end user addresses (ring
// addresses) are translated with overflow-safe arithmetic. Rings and indirect tables must lie in
// ONE region (Contig*); a data buffer may span regions that are adjacent in guest-physical
// space and is then split into one HostIov per region (TranslateGpa).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vhost/protocol.h"

namespace vbc {
namespace vhost {

class Mapping : public std::enable_shared_from_this<Mapping> {
 public:
  // Maps [offset, offset + size) of fd (MAP_SHARED, read/write). The start is rounded down to
  // the page (or huge page) size of the file; data() points at `offset`.
  static std::shared_ptr<Mapping> Create(int fd, uint64_t offset, uint64_t size, std::string* err);
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  uint8_t* base() const { return base_; }
  size_t length() const { return length_; }
  uint8_t* data() const { return data_; }

 private:
  Mapping(uint8_t* base, size_t length, uint8_t* data) : base_(base), length_(length), data_(data) {}
  uint8_t* base_;
  size_t length_;
  uint8_t* data_;
};

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
