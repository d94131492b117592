#include "vhost/guest_memory.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vbc {
namespace vhost {

namespace {
constexpr long kHugetlbfsMagic = 0x958458f6;

// r contains [addr, addr + len) entirely; len > 0 and no wrap assumed checked by caller.
bool Inside(uint64_t base, uint64_t size, uint64_t addr, uint64_t len) {
  return addr >= base && addr - base < size && len <= size - (addr - base);
}

struct sigaction g_prev_sigbus;
std::atomic<bool> g_handler_installed{false};
std::atomic<void (*)(void*)> g_notify{nullptr};
std::atomic<void*> g_notify_arg{nullptr};
std::atomic<uint64_t> g_fault_count{0};
}  // namespace

// Every live Mapping's address range, readable from the SIGBUS handler without locks: entries are
// claimed and released on the main thread; the handler only loads. An entry is published by
// storing `owner` last (release) and withdrawn by clearing it first.
struct FaultRegistry {
  static constexpr int kEntries = 1024;
  struct Entry {
    std::atomic<uintptr_t> begin{0};
    std::atomic<uintptr_t> end{0};
    std::atomic<Mapping*> owner{nullptr};
  };
  static Entry entries[kEntries];

  static int Add(Mapping* m) {
    for (int i = 0; i < kEntries; i++) {
      Entry& e = entries[i];
      if (e.owner.load(std::memory_order_relaxed) != nullptr) continue;
      e.begin.store(reinterpret_cast<uintptr_t>(m->base_), std::memory_order_relaxed);
      e.end.store(reinterpret_cast<uintptr_t>(m->base_) + m->length_, std::memory_order_relaxed);
      e.owner.store(m, std::memory_order_release);
      return i;
    }
    return -1;
  }

  static void Remove(int index) {
    if (index >= 0) entries[index].owner.store(nullptr, std::memory_order_release);
  }

  // Signal context: raw syscalls and atomics only.
  static bool HandleFault(uintptr_t addr) {
    for (Entry& e : entries) {
      Mapping* m = e.owner.load(std::memory_order_acquire);
      if (m == nullptr) continue;
      const uintptr_t b = e.begin.load(std::memory_order_relaxed);
      const uintptr_t end = e.end.load(std::memory_order_relaxed);
      if (addr < b || addr >= end) continue;
      void* p = mmap(reinterpret_cast<void*>(b), end - b, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) return false;
      m->faulted_.store(true, std::memory_order_release);
      g_fault_count.fetch_add(1, std::memory_order_release);
      return true;
    }
    return false;
  }
};

FaultRegistry::Entry FaultRegistry::entries[FaultRegistry::kEntries];

namespace {
void OnSigbus(int sig, siginfo_t* info, void* uctx) {
  const int saved_errno = errno;
  if (FaultRegistry::HandleFault(reinterpret_cast<uintptr_t>(info->si_addr))) {
    void (*notify)(void*) = g_notify.load(std::memory_order_acquire);
    if (notify != nullptr) notify(g_notify_arg.load(std::memory_order_acquire));
    errno = saved_errno;
    return;  // the faulting access retries on the anonymous pages
  }
  errno = saved_errno;
  if ((g_prev_sigbus.sa_flags & SA_SIGINFO) != 0 && g_prev_sigbus.sa_sigaction != nullptr) {
    g_prev_sigbus.sa_sigaction(sig, info, uctx);
    return;
  }
  if (g_prev_sigbus.sa_handler != SIG_DFL && g_prev_sigbus.sa_handler != SIG_IGN) {
    g_prev_sigbus.sa_handler(sig);
    return;
  }
  // Not ours and nobody else's: the default action (SIGBUS is blocked in here, so the raised
  // signal is delivered, and kills, once the handler returns).
  signal(sig, SIG_DFL);
  raise(sig);
}
}  // namespace

uint64_t FaultCount() { return g_fault_count.load(std::memory_order_acquire); }

void InstallFaultHandler(void (*notify)(void*), void* arg) {
  g_notify_arg.store(arg, std::memory_order_release);
  g_notify.store(notify, std::memory_order_release);
  EnsureFaultHandler();
}

void EnsureFaultHandler() {
  if (g_handler_installed.exchange(true)) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &g_prev_sigbus);
}

std::shared_ptr<Mapping> Mapping::Create(int fd, uint64_t offset, uint64_t size,
                                         std::string* err) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *err = std::string("fstat of memory fd failed: ") + strerror(errno);
    return nullptr;
  }
  // Only regular files (memfd, tmpfs, hugetlbfs, plain files): a mapping past the end of the
  // file would raise SIGBUS on access, so the size is checked against the file.
  if (!S_ISREG(st.st_mode)) {
    *err = "memory fd is not a regular file / memfd";
    return nullptr;
  }
  if (size == 0 || offset > UINT64_MAX - size || offset + size > static_cast<uint64_t>(st.st_size)) {
    *err = "memory region [mmap_offset, mmap_offset + size) is outside the file (" +
           std::to_string(st.st_size) + " bytes)";
    return nullptr;
  }
  // Seals (memfd only; EINVAL elsewhere): a write-sealed file cannot be mapped for writing.
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals > 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0) {
    *err = "memory fd is sealed against writes";
    return nullptr;
  }
  uint64_t align = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  struct statfs sfs;
  if (fstatfs(fd, &sfs) == 0 && static_cast<long>(sfs.f_type) == kHugetlbfsMagic &&
      sfs.f_bsize > 0 && (static_cast<uint64_t>(sfs.f_bsize) & (sfs.f_bsize - 1)) == 0) {
    align = static_cast<uint64_t>(sfs.f_bsize);
  }
  const uint64_t start = offset & ~(align - 1);
  uint64_t length = size + (offset - start);
  if (length > UINT64_MAX - align) {
    *err = "memory region too large";
    return nullptr;
  }
  length = (length + align - 1) & ~(align - 1);
  if (length > SIZE_MAX) {
    *err = "memory region too large";
    return nullptr;
  }
  const int own_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (own_fd < 0) {
    *err = std::string("dup of memory fd failed: ") + strerror(errno);
    return nullptr;
  }
  void* p = mmap(nullptr, static_cast<size_t>(length), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_NORESERVE, own_fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) {
    *err = std::string("mmap of memory region failed: ") + strerror(errno);
    close(own_fd);
    return nullptr;
  }
  uint8_t* base = static_cast<uint8_t*>(p);
  // From here the Mapping owns the mmap and own_fd: every exit below goes through ~Mapping.
  std::shared_ptr<Mapping> m(
      new Mapping(base, static_cast<size_t>(length), base + (offset - start), own_fd, start));
  m->registry_index_ = FaultRegistry::Add(m.get());
  if (m->registry_index_ < 0) {
    *err = "too many guest memory mappings in this process";
    return nullptr;
  }
  return m;
}

Mapping::~Mapping() {
  FaultRegistry::Remove(registry_index_);
  munmap(base_, length_);
  close(fd_);
}

bool Mapping::Fence() {
  if (fenced_ || faulted()) return true;
  void* p = mmap(base_, length_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
                 fd_, static_cast<off_t>(file_start_));
  if (p == MAP_FAILED) return false;
  fenced_ = true;
  return true;
}

bool GuestMemory::Validate(const MemRegionDesc& d, std::string* err) {
  if (d.memory_size == 0) {
    *err = "memory region of size 0";
    return false;
  }
  if (d.guest_phys_addr > UINT64_MAX - (d.memory_size - 1) ||
      d.userspace_addr > UINT64_MAX - (d.memory_size - 1)) {
    *err = "memory region wraps the address space";
    return false;
  }
  return true;
}

bool GuestMemory::Overlaps(const Region& a, const MemRegionDesc& b) {
  // Compare with inclusive ends: both ranges are validated not to wrap.
  const uint64_t a_g_end = a.guest_phys_addr + (a.size - 1);
  const uint64_t b_g_end = b.guest_phys_addr + (b.memory_size - 1);
  const uint64_t a_u_end = a.user_addr + (a.size - 1);
  const uint64_t b_u_end = b.userspace_addr + (b.memory_size - 1);
  const bool g = a.guest_phys_addr <= b_g_end && b.guest_phys_addr <= a_g_end;
  const bool u = a.user_addr <= b_u_end && b.userspace_addr <= a_u_end;
  return g || u;
}

bool GuestMemory::MapOne(const MemRegionDesc& d, int fd, Region* out, std::string* err) {
  if (!Validate(d, err)) return false;
  if (fd < 0) {
    *err = "memory region without fd";
    return false;
  }
  std::shared_ptr<Mapping> m = Mapping::Create(fd, d.mmap_offset, d.memory_size, err);
  if (!m) return false;
  out->guest_phys_addr = d.guest_phys_addr;
  out->size = d.memory_size;
  out->user_addr = d.userspace_addr;
  out->mmap_offset = d.mmap_offset;
  out->mapping = m;
  out->host = m->data();
  return true;
}

bool GuestMemory::SetTable(const MemRegionDesc* descs, uint32_t n, const int* fds,
                           std::string* err) {
  std::vector<Region> next;
  next.reserve(n);
  for (uint32_t i = 0; i < n; i++) {
    if (!Validate(descs[i], err)) return false;
    for (const Region& r : next) {
      if (Overlaps(r, descs[i])) {
        *err = "memory regions overlap";
        return false;
      }
    }
    Region r;
    if (!MapOne(descs[i], fds[i], &r, err)) return false;
    next.push_back(std::move(r));
  }
  regions_ = std::move(next);
  return true;
}

bool GuestMemory::AddRegion(const MemRegionDesc& desc, int fd, std::string* err) {
  if (regions_.size() >= kMaxMemSlots) {
    *err = "all memory slots are in use";
    return false;
  }
  if (!Validate(desc, err)) return false;
  for (const Region& r : regions_) {
    if (Overlaps(r, desc)) {
      *err = "memory region overlaps an existing one";
      return false;
    }
  }
  Region r;
  if (!MapOne(desc, fd, &r, err)) return false;
  regions_.push_back(std::move(r));
  return true;
}

bool GuestMemory::RemoveRegion(const MemRegionDesc& desc, std::string* err) {
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->guest_phys_addr == desc.guest_phys_addr && it->user_addr == desc.userspace_addr &&
        it->size == desc.memory_size) {
      regions_.erase(it);
      return true;
    }
  }
  *err = "no such memory region";
  return false;
}

bool GuestMemory::Contains(const Mapping* m) const {
  for (const Region& r : regions_) {
    if (r.mapping.get() == m) return true;
  }
  return false;
}

bool GuestMemory::Faulted() const {
  for (const Region& r : regions_) {
    if (r.mapping->faulted()) return true;
  }
  return false;
}

bool GuestMemory::TranslateGpa(uint64_t gpa, uint64_t len, bool writable,
                               std::vector<HostIov>* out) const {
  if (len == 0) return true;
  if (gpa > UINT64_MAX - (len - 1)) return false;
  while (len > 0) {
    const Region* hit = nullptr;
    for (const Region& r : regions_) {
      if (gpa >= r.guest_phys_addr && gpa - r.guest_phys_addr < r.size) {
        hit = &r;
        break;
      }
    }
    if (hit == nullptr) return false;
    const uint64_t off = gpa - hit->guest_phys_addr;
    uint64_t n = hit->size - off;
    if (n > len) n = len;
    // HostIov lengths are 32-bit; descriptor lengths are too, so n fits.
    out->push_back(HostIov{hit->host + off, static_cast<uint32_t>(n), writable, hit->mapping.get()});
    len -= n;
    gpa += n;
  }
  return true;
}

uint8_t* GuestMemory::GpaContig(uint64_t gpa, uint64_t len, Mapping** mapping) const {
  if (len == 0) return nullptr;
  for (const Region& r : regions_) {
    if (Inside(r.guest_phys_addr, r.size, gpa, len)) {
      if (mapping != nullptr) *mapping = r.mapping.get();
      return r.host + (gpa - r.guest_phys_addr);
    }
  }
  return nullptr;
}

uint8_t* GuestMemory::UserAddrContig(uint64_t uaddr, uint64_t len, Mapping** mapping) const {
  if (len == 0) return nullptr;
  for (const Region& r : regions_) {
    if (Inside(r.user_addr, r.size, uaddr, len)) {
      if (mapping != nullptr) *mapping = r.mapping.get();
      return r.host + (uaddr - r.user_addr);
    }
  }
  return nullptr;
}

}  // namespace vhost
}  // namespace vbc
