// GuestRam: the front end's "guest RAM", a memfd of `size` bytes (sparse: pages cost memory
// only once touched) whose fd goes to the back end in SET_MEM_TABLE / ADD_MEM_REG. JS reads
// and writes the rings and data buffers through `buffer`, an external ArrayBuffer over the
// first min(size, kBufferBytes) bytes (one ArrayBuffer cannot cover more), and anything else
// through window(offset, length), a separate mapping of that range.
//
// Lifetime: close() closes the fd (the back end keeps its own mapping). Each mapping is owned by
// its ArrayBuffer's finalizer alone (unmapped once JS holds no view of it); if the ArrayBuffer
// cannot be created, the mapping is unmapped right there and nothing else owns it.
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>

#include "frontend/frontend.h"
#include "js/errors.h"

namespace vbc {
namespace frontend {

namespace {

constexpr size_t kBufferBytes = 1ull << 31;

// An external ArrayBuffer owning a fresh MAP_SHARED mapping of [offset, offset + len) of fd
// (offset page aligned). Throws (errno) without leaking or double-freeing the mapping.
Napi::ArrayBuffer MapBuffer(Napi::Env env, int fd, uint64_t offset, size_t len, bool populate) {
  void* addr = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0),
                    fd, static_cast<off_t>(offset));
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap(guest ram)", errno);
  napi_value ab;
  const napi_status st = napi_create_external_arraybuffer(
      env, addr, len, [](napi_env, void* data, void* hint) { munmap(data, reinterpret_cast<size_t>(hint)); },
      reinterpret_cast<void*>(len), &ab);
  if (st != napi_ok) {
    munmap(addr, len);  // the finalizer was not attached: we are the only owner
    ThrowError(env, "ENOMEM", "external ArrayBuffer over guest ram could not be created");
  }
  return Napi::ArrayBuffer(env, ab);
}

class GuestRam : public Napi::ObjectWrap<GuestRam> {
 public:
  explicit GuestRam(const Napi::CallbackInfo& info);
  ~GuestRam() override { CloseFd(); }

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "GuestRam",
                       {
                           InstanceAccessor<&GuestRam::JS_fd>("fd"),
                           InstanceAccessor<&GuestRam::JS_size>("size"),
                           InstanceAccessor<&GuestRam::JS_buffer>("buffer"),
                           InstanceMethod<&GuestRam::JS_window>("window"),
                           InstanceMethod<&GuestRam::JS_close>("close"),
                       });
  }

 private:
  Napi::Value JS_fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value JS_size(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(size_));
  }
  Napi::Value JS_buffer(const Napi::CallbackInfo& info) { return buffer_.Value(); }
  // window(offset, length): offset a multiple of the page size, length in (0, 2 GiB].
  Napi::Value JS_window(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const double off = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    const double len = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    if (!(off >= 0) || std::floor(off) != off || std::fmod(off, page) != 0 || !(len > 0) ||
        std::floor(len) != len || len > static_cast<double>(kBufferBytes) ||
        off + len > static_cast<double>(size_)) {
      ThrowError(env, "EINVAL", "window(offset, length): page-aligned range inside the RAM, at most 2 GiB");
    }
    if (fd_ < 0) ThrowError(env, "EBADF", "guest ram is closed");
    return MapBuffer(env, fd_, static_cast<uint64_t>(off), static_cast<size_t>(len), false);
  }
  Napi::Value JS_close(const Napi::CallbackInfo& info) {
    CloseFd();
    return info.Env().Undefined();
  }
  void CloseFd() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  int fd_ = -1;
  size_t size_ = 0;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

// new GuestRam(size[, populate]): size is a positive multiple of the page size (at most 1 TiB);
// populate pre-faults the pages (MAP_POPULATE).
GuestRam::GuestRam(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GuestRam>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    ThrowError(env, "EINVAL", "GuestRam(size[, populate]) expects a byte size");
  }
  const double want = info[0].As<Napi::Number>().DoubleValue();
  const long page = sysconf(_SC_PAGESIZE);
  if (!(want > 0) || want > 1099511627776.0 || std::floor(want) != want ||
      std::fmod(want, static_cast<double>(page)) != 0) {
    ThrowError(env, "EINVAL", "GuestRam size must be a positive multiple of the page size");
  }
  const bool populate = info.Length() > 1 && info[1].ToBoolean().Value();
  size_ = static_cast<size_t>(want);

  fd_ = memfd_create("vbc-guest-ram", MFD_CLOEXEC);
  if (fd_ < 0) ThrowErrno(env, "memfd_create", errno);
  if (ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
    const int err = errno;
    CloseFd();
    ThrowErrno(env, "ftruncate(guest ram)", err);
  }
  const size_t len = size_ < kBufferBytes ? size_ : kBufferBytes;
  Napi::ArrayBuffer ab;
  try {
    ab = MapBuffer(env, fd_, 0, len, populate);
  } catch (...) {
    CloseFd();
    throw;
  }
  buffer_ = Napi::Persistent(ab);
}

}  // namespace

Napi::Function InitGuestRam(Napi::Env env) { return GuestRam::Define(env); }

}  // namespace frontend
}  // namespace vbc
