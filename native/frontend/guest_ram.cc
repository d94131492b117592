// GuestRam: the front end's "guest RAM", a memfd of `size` bytes mapped MAP_SHARED into this
// process. Its fd goes to the back end in SET_MEM_TABLE / ADD_MEM_REG; JS reads and writes the
// rings and data buffers through `buffer`, an external ArrayBuffer over the mapping.
//
// Lifetime: close() closes the fd (the back end keeps its own mapping). The mapping is
// unmapped by the ArrayBuffer's finalizer, i.e. only once JS holds neither the GuestRam nor any
// view of its buffer; views taken before close() stay valid.
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>

#include "frontend/frontend.h"
#include "js/errors.h"

namespace vbc {
namespace frontend {

namespace {

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
                           InstanceMethod<&GuestRam::JS_close>("close"),
                       });
  }

 private:
  Napi::Value JS_fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value JS_size(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(size_));
  }
  Napi::Value JS_buffer(const Napi::CallbackInfo& info) { return buffer_.Value(); }
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
  void* addr = mmap(nullptr, size_, PROT_READ | PROT_WRITE,
                    MAP_SHARED | (populate ? MAP_POPULATE : 0), fd_, 0);
  if (addr == MAP_FAILED) {
    const int err = errno;
    CloseFd();
    ThrowErrno(env, "mmap(guest ram)", err);
  }
  const size_t len = size_;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
      env, addr, len, [len](Napi::Env, void* data) { munmap(data, len); });
  buffer_ = Napi::Persistent(ab);
}

}  // namespace

Napi::Function InitGuestRam(Napi::Env env) { return GuestRam::Define(env); }

}  // namespace frontend
}  // namespace vbc
