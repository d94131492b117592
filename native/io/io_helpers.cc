#include "io/io_helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <functional>

#include "js/errors.h"

namespace vbc {

ByteView Uint8ArrayElement(napi_env env, napi_value arr, uint32_t i) {
  napi_value el;
  napi_get_element(env, arr, i, &el);
  napi_typedarray_type type;
  ByteView v{nullptr, 0};
  if (napi_get_typedarray_info(env, el, &type, &v.length, &v.data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    ThrowError(env, "EINVAL", "bufs must hold Uint8Array views");
  }
  return v;
}

// JS numbers are exact integers up to here.
constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) ThrowError(env, "EINVAL", std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > kMaxSafeInteger || std::floor(d) != d) {
    ThrowError(env, "EINVAL", std::string(what) + " must be an integer in [0, 2^53)");
  }
  return static_cast<uint64_t>(d);
}

namespace {

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  uint64_t fd = ArgU64(info, i, "fd");
  if (fd > INT32_MAX) ThrowError(info.Env(), "EBADF", "fd out of range");
  return static_cast<int>(fd);
}

// Runs one blocking system call on a libuv worker thread and settles a promise with its
// outcome: resolve(undefined), or reject(VhostError(code = errno name)).
class SyscallWorker : public Napi::AsyncWorker {
 public:
  // fn runs on the worker thread and must not touch JS; it returns 0 or an errno value.
  SyscallWorker(Napi::Env env, std::function<int()> fn, std::string what)
      : Napi::AsyncWorker(env, "vbc:syscall"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fn_(std::move(fn)),
        what_(std::move(what)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { err_ = fn_(); }

  void OnOK() override {
    if (err_ == 0) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(MakeError(Env(), ErrnoName(err_), what_ + ": " + strerror(err_)));
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<int()> fn_;
  std::string what_;
  int err_ = 0;
};

// blockDeviceSize(fd): bytes of a block device (BLKGETSIZE64).
Napi::Value JS_blockDeviceSize(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) ThrowErrno(info.Env(), "ioctl(BLKGETSIZE64)", errno);
  if (static_cast<double>(size) > kMaxSafeInteger) ThrowError(info.Env(), "EOVERFLOW", "block device larger than 2^53 bytes");
  return Napi::Number::New(info.Env(), static_cast<double>(size));
}

// logicalBlockSize(fd): the block device's logical block size (BLKSSZGET).
Napi::Value JS_logicalBlockSize(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int ssz = 0;
  if (ioctl(fd, BLKSSZGET, &ssz) < 0) ThrowErrno(info.Env(), "ioctl(BLKSSZGET)", errno);
  return Napi::Number::New(info.Env(), ssz);
}

// blockRange(fd, 'discard' | 'zeroout', offset, length): BLKDISCARD / BLKZEROOUT on a worker
// thread (rare, and the ioctls block until the device is done).
Napi::Value JS_blockRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsString()) ThrowError(env, "EINVAL", "op must be 'discard' or 'zeroout'");
  std::string op = info[1].As<Napi::String>().Utf8Value();
  unsigned long req;
  if (op == "discard") {
    req = BLKDISCARD;
  } else if (op == "zeroout") {
    req = BLKZEROOUT;
  } else {
    ThrowError(env, "EINVAL", "op must be 'discard' or 'zeroout'");
  }
  uint64_t offset = ArgU64(info, 2, "offset");
  uint64_t length = ArgU64(info, 3, "length");
  auto* w = new SyscallWorker(
      env,
      [fd, req, offset, length]() {
        uint64_t range[2] = {offset, length};
        int r;
        do {
          r = ioctl(fd, req, range);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? errno : 0;
      },
      op == "discard" ? "ioctl(BLKDISCARD)" : "ioctl(BLKZEROOUT)");
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// fallocate(fd, mode, offset, length) on a worker thread (the threadpool engine's fallocate).
Napi::Value JS_fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t mode = ArgU64(info, 1, "mode");
  uint64_t offset = ArgU64(info, 2, "offset");
  uint64_t length = ArgU64(info, 3, "length");
  if (mode > INT32_MAX) ThrowError(env, "EINVAL", "fallocate mode out of range");
  auto* w = new SyscallWorker(
      env,
      [fd, mode, offset, length]() {
        int r;
        do {
          r = ::fallocate(fd, static_cast<int>(mode), static_cast<off_t>(offset), static_cast<off_t>(length));
        } while (r < 0 && errno == EINTR);
        return r < 0 ? errno : 0;
      },
      "fallocate");
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// startWriteout(fd, offset, length): sync_file_range(SYNC_FILE_RANGE_WRITE) on a worker thread
// (the threadpool engine's startWriteout): starts writing the range's dirty pages, waits for
// none of it. length 0: to end of file; at most kMaxWriteoutLength.
Napi::Value JS_startWriteout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  if (length > kMaxWriteoutLength) ThrowError(env, "EINVAL", "write-out length must be below 2^32");
  auto* w = new SyscallWorker(
      env,
      [fd, offset, length]() {
        int r;
        do {
          r = ::sync_file_range(fd, static_cast<off_t>(offset), static_cast<off_t>(length), SYNC_FILE_RANGE_WRITE);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? errno : 0;
      },
      "sync_file_range");
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// alignedBuffer(size, align): a zeroed Uint8Array of `size` bytes whose first byte sits at an
// address that is a multiple of `align` (a power of two <= 64 KiB). It is a view into a
// slightly larger ArrayBuffer; V8 never moves ArrayBuffer backing stores, so the alignment
// holds for the view's lifetime.
Napi::Value JS_alignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t size = ArgU64(info, 0, "size");
  uint64_t align = ArgU64(info, 1, "align");
  if (!IsPowerOfTwo(align) || align > 65536) ThrowError(env, "EINVAL", "align must be a power of two <= 65536");
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, size + align - 1);
  auto addr = reinterpret_cast<uintptr_t>(ab.Data());
  size_t pad = static_cast<size_t>((align - (addr & (align - 1))) & (align - 1));
  return Napi::Uint8Array::New(env, size, ab, pad);
}

// isDirectIoAligned(bufs, align): true when every view starts at an address that is a
// multiple of `align` and its length is a multiple of `align` (what O_DIRECT needs of each
// iovec on a device with that logical block size).
Napi::Value JS_isDirectIoAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArray()) ThrowError(env, "EINVAL", "isDirectIoAligned(bufs, align)");
  uint64_t align = ArgU64(info, 1, "align");
  if (!IsPowerOfTwo(align)) ThrowError(env, "EINVAL", "align must be a power of two");
  napi_value arr = info[0];
  uint32_t count = 0;
  napi_get_array_length(env, arr, &count);
  for (uint32_t i = 0; i < count; ++i) {
    const ByteView v = Uint8ArrayElement(env, arr, i);
    if (((reinterpret_cast<uintptr_t>(v.data) | v.length) & (align - 1)) != 0) return Napi::Boolean::New(env, false);
  }
  return Napi::Boolean::New(env, true);
}

// lockExclusive(fd): flock(LOCK_EX | LOCK_NB). The kernel drops the lock when the process
// dies, so a crashed daemon never leaves a stale lock; a live one makes this throw
// EWOULDBLOCK.
Napi::Value JS_lockExclusive(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) ThrowErrno(info.Env(), "flock", errno);
  return info.Env().Undefined();
}

// unlock(fd): flock(LOCK_UN), before the owner closes fd. Closing alone drops the lock only
// when the last reference to the open file goes, and an io_uring worker may still hold one for
// a moment after its completion was read: a restart right after close would then see EBUSY.
Napi::Value JS_unlock(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (flock(fd, LOCK_UN) != 0) ThrowErrno(info.Env(), "flock", errno);
  return info.Env().Undefined();
}

// sendUnixDatagram(path, data): one datagram to a unix datagram socket, never blocking (for
// sd_notify: Node has no AF_UNIX SOCK_DGRAM). A leading '@' names an abstract socket.
Napi::Value JS_sendUnixDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsTypedArray()) {
    ThrowError(env, "EINVAL", "sendUnixDatagram(path: string, data: Uint8Array)");
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) ThrowError(env, "EINVAL", "socket path must be 1..107 bytes");
  memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  ssize_t n = sendto(fd, data.Data(), data.ByteLength(), MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
  int err = errno;
  close(fd);
  if (n < 0) ThrowErrno(env, "sendto " + path, err);
  return env.Undefined();
}

// inodeGeneration(fd): the file's inode generation (FS_IOC_GETVERSION), which ext4, XFS and
// btrfs change whenever an inode number is reused; null when the file system has none.
Napi::Value JS_inodeGeneration(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  // The kernel stores an int through a pointer to long: zero the whole long first.
  long gen = 0;
  if (ioctl(fd, FS_IOC_GETVERSION, &gen) < 0) {
    int err = errno;
    if (err == ENOTTY || err == EOPNOTSUPP || err == EINVAL) return info.Env().Null();
    ThrowErrno(info.Env(), "ioctl(FS_IOC_GETVERSION)", err);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(static_cast<uint32_t>(gen)));
}

}  // namespace

void RegisterIoHelpers(Napi::Env env, Napi::Object exports) {
  exports.Set("blockDeviceSize", Napi::Function::New(env, JS_blockDeviceSize, "blockDeviceSize"));
  exports.Set("logicalBlockSize", Napi::Function::New(env, JS_logicalBlockSize, "logicalBlockSize"));
  exports.Set("blockRange", Napi::Function::New(env, JS_blockRange, "blockRange"));
  exports.Set("fallocate", Napi::Function::New(env, JS_fallocate, "fallocate"));
  exports.Set("startWriteout", Napi::Function::New(env, JS_startWriteout, "startWriteout"));
  exports.Set("inodeGeneration", Napi::Function::New(env, JS_inodeGeneration, "inodeGeneration"));
  exports.Set("lockExclusive", Napi::Function::New(env, JS_lockExclusive, "lockExclusive"));
  exports.Set("unlock", Napi::Function::New(env, JS_unlock, "unlock"));
  exports.Set("sendUnixDatagram", Napi::Function::New(env, JS_sendUnixDatagram, "sendUnixDatagram"));
  exports.Set("alignedBuffer", Napi::Function::New(env, JS_alignedBuffer, "alignedBuffer"));
  exports.Set("isDirectIoAligned", Napi::Function::New(env, JS_isDirectIoAligned, "isDirectIoAligned"));
}

}  // namespace vbc
