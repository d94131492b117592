#include "io/io_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/crc32c.h"
#include "io/io_helpers.h"
#include "js/errors.h"

namespace vbc {

namespace {

int SysSetup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}

int SysEnter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0));
}

int SysRegister(int fd, unsigned opcode, void* arg, unsigned nr_args) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, opcode, arg, nr_args));
}

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1
constexpr unsigned kDefaultEntries = 256;
constexpr unsigned kMaxEntries = 4096;

// The number in v (one N-API call: napi_get_value_double fails for anything but a number), or
// NaN when v is not a number; the callers' range checks reject NaN.
double NumberArg(napi_env env, napi_value v) {
  double d = 0;
  return napi_get_value_double(env, v, &d) == napi_ok ? d : NAN;
}

// A non-negative integer JS number below 2^53 (byte offsets, lengths).
uint64_t ToU64(Napi::Env env, napi_value v, const char* what) {
  double d = NumberArg(env, v);
  if (!(d >= 0) || d > kMaxSafeInteger || std::floor(d) != d) {
    ThrowError(env, "EINVAL", std::string(what) + " must be an integer in [0, 2^53)");
  }
  return static_cast<uint64_t>(d);
}

int32_t ToFd(Napi::Env env, napi_value v) {
  double d = NumberArg(env, v);
  if (!(d >= 0) || d > INT32_MAX || std::floor(d) != d) ThrowError(env, "EBADF", "fd must be a non-negative integer");
  return static_cast<int32_t>(d);
}

// Tags travel through Int32Array pairs: 0 <= tag < 2^31.
uint32_t ToTag(Napi::Env env, napi_value v) {
  double d = NumberArg(env, v);
  if (!(d >= 0) || d > INT32_MAX || std::floor(d) != d) ThrowError(env, "EINVAL", "tag must be an integer in [0, 2^31)");
  return static_cast<uint32_t>(d);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// KernelRing

int KernelRing::Open(unsigned entries, unsigned cq_entries, std::string* step) {
  io_uring_params p;
  std::memset(&p, 0, sizeof(p));
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
  p.cq_entries = cq_entries;
  int fd = SysSetup(entries, &p);
  if (fd < 0 && errno == EINVAL) {
    // Kernels before 5.18 do not know IORING_SETUP_SUBMIT_ALL; Enter() loops instead.
    std::memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = cq_entries;
    fd = SysSetup(entries, &p);
  }
  if (fd < 0) {
    *step = "io_uring_setup";
    return -errno;
  }
  fd_ = fd;
  if ((p.features & IORING_FEAT_NODROP) == 0 || (p.features & IORING_FEAT_SUBMIT_STABLE) == 0) {
    Close();
    *step = "io_uring features (NODROP, SUBMIT_STABLE)";
    return -EOPNOTSUPP;
  }
  sq_entries_ = p.sq_entries;
  cq_entries_ = p.cq_entries;
  ring_size_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_size_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single) ring_size_ = std::max(ring_size_, cq_size_);
  ring_ptr_ = mmap(nullptr, ring_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
  if (ring_ptr_ == MAP_FAILED) {
    int err = errno;
    ring_ptr_ = nullptr;
    Close();
    *step = "mmap(SQ ring)";
    return -err;
  }
  if (single) {
    cq_ptr_ = ring_ptr_;
  } else {
    cq_ptr_ = mmap(nullptr, cq_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    if (cq_ptr_ == MAP_FAILED) {
      int err = errno;
      cq_ptr_ = nullptr;
      Close();
      *step = "mmap(CQ ring)";
      return -err;
    }
  }
  sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
  void* sqes = mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    int err = errno;
    Close();
    *step = "mmap(SQEs)";
    return -err;
  }
  sqes_ = static_cast<io_uring_sqe*>(sqes);
  auto* sq = static_cast<uint8_t*>(ring_ptr_);
  auto* cq = static_cast<uint8_t*>(cq_ptr_);
  sq_head_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
  sq_tail_shared_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
  sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
  sq_flags_ = reinterpret_cast<unsigned*>(sq + p.sq_off.flags);
  sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
  cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
  cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
  cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
  cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
  // SQ ring entry i always names SQE i: SQEs are used in ring order, so the indirection array
  // is written once here and never again.
  for (unsigned i = 0; i < sq_entries_; ++i) sq_array_[i] = i;
  sq_tail_ = *sq_tail_shared_;
  return 0;
}

void KernelRing::Close() {
  if (sqes_ != nullptr) munmap(sqes_, sqes_size_);
  if (cq_ptr_ != nullptr && cq_ptr_ != ring_ptr_) munmap(cq_ptr_, cq_size_);
  if (ring_ptr_ != nullptr) munmap(ring_ptr_, ring_size_);
  sqes_ = nullptr;
  cq_ptr_ = nullptr;
  ring_ptr_ = nullptr;
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

io_uring_sqe* KernelRing::PeekSqe() {
  unsigned head = __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE);
  if (sq_tail_ - head >= sq_entries_) return nullptr;
  io_uring_sqe* sqe = &sqes_[sq_tail_ & sq_mask_];
  std::memset(sqe, 0, sizeof(*sqe));
  return sqe;
}

unsigned KernelRing::Unsubmitted() const { return sq_tail_ - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE); }

int KernelRing::Enter(unsigned to_submit, unsigned min_complete, unsigned flags) {
  // Release: the SQE contents written before are visible to the kernel once it sees the tail.
  __atomic_store_n(sq_tail_shared_, sq_tail_, __ATOMIC_RELEASE);
  int r = SysEnter(fd_, to_submit, min_complete, flags);
  return r < 0 ? -errno : r;
}

bool KernelRing::CqOverflow() const {
  return (__atomic_load_n(sq_flags_, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW) != 0;
}

bool KernelRing::CqEmpty() const {
  return __atomic_load_n(cq_head_, __ATOMIC_RELAXED) == __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
}

unsigned KernelRing::Reap(int32_t* out, unsigned cap) {
  unsigned head = __atomic_load_n(cq_head_, __ATOMIC_RELAXED);  // only we write it
  // Acquire: CQE contents are visible once we see the tail that covers them.
  unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
  unsigned n = 0;
  while (head != tail && n < cap) {
    const io_uring_cqe& cqe = cqes_[head & cq_mask_];
    out[kCqeStride * n] = static_cast<int32_t>(cqe.user_data);
    out[kCqeStride * n + 1] = cqe.res;
    out[kCqeStride * n + 2] = kCheckNone;
    ++head;
    ++n;
  }
  // Release: the kernel may reuse the CQEs only after we finished reading them.
  if (n > 0) __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
  return n;
}

// ---------------------------------------------------------------------------------------------
// IoRing

Napi::Function IoRing::DefineClass(Napi::Env env) {
  return ObjectWrap<IoRing>::DefineClass(
      env, "IoRing",
      {
          InstanceMethod<&IoRing::JS_prepReadv>("prepReadv"),
          InstanceMethod<&IoRing::JS_prepReadvChecked>("prepReadvChecked"),
          InstanceMethod<&IoRing::JS_setCheckTable>("setCheckTable"),
          InstanceMethod<&IoRing::JS_prepWritev>("prepWritev"),
          InstanceMethod<&IoRing::JS_prepFdatasync>("prepFdatasync"),
          InstanceMethod<&IoRing::JS_prepFallocate>("prepFallocate"),
          InstanceMethod<&IoRing::JS_prepSyncFileRange>("prepSyncFileRange"),
          InstanceMethod<&IoRing::JS_submit>("submit"),
          InstanceMethod<&IoRing::JS_close>("close"),
          InstanceAccessor<&IoRing::JS_getCompletions>("completions"),
          InstanceAccessor<&IoRing::JS_getSqEntries>("sqEntries"),
          InstanceAccessor<&IoRing::JS_getCqEntries>("cqEntries"),
          InstanceAccessor<&IoRing::JS_getInflight>("inflight"),
          InstanceAccessor<&IoRing::JS_getClosed>("closed"),
          StaticMethod<&IoRing::JS_probe>("probe"),
      });
}

IoRing::IoRing(const Napi::CallbackInfo& info) : ObjectWrap<IoRing>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) ThrowError(env, "EINVAL", "IoRing(options) expects an object");
  Napi::Object opts = info[0].As<Napi::Object>();
  Napi::Value cb = opts.Get("onComplete");
  if (!cb.IsFunction()) ThrowError(env, "EINVAL", "IoRing: options.onComplete must be a function");
  unsigned entries = kDefaultEntries;
  Napi::Value e = opts.Get("entries");
  if (!e.IsUndefined()) {
    uint64_t v = ToU64(env, e, "entries");
    if (v < 1 || v > kMaxEntries) ThrowError(env, "EINVAL", "IoRing: entries must be in [1, 4096]");
    entries = static_cast<unsigned>(v);
  }
  std::string step;
  // CQ twice the SQ: a full SQ of completions fits while the previous batch is not reaped.
  int r = ring_.Open(entries, entries * 2, &step);
  if (r < 0) ThrowErrno(env, step, -r);
  eventfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (eventfd_ < 0) {
    int err = errno;
    ring_.Close();
    ThrowErrno(env, "eventfd", err);
  }
  if (SysRegister(ring_.fd(), IORING_REGISTER_EVENTFD, &eventfd_, 1) < 0) {
    int err = errno;
    close(eventfd_);
    eventfd_ = -1;
    ring_.Close();
    ThrowErrno(env, "io_uring_register(EVENTFD)", err);
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    close(eventfd_);
    eventfd_ = -1;
    ring_.Close();
    ThrowError(env, "EINVAL", "IoRing: no event loop");
  }
  poll_ = new uv_poll_t;
  uv_poll_init(loop, poll_, eventfd_);
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* h, int, int) { static_cast<IoRing*>(h->data)->OnEventfd(); });
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));

  iovs_.resize(ring_.sq_entries());
  completions_cap_ = ring_.cq_entries();
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, completions_cap_ * kCqeStride * sizeof(int32_t));
  Napi::Int32Array arr = Napi::Int32Array::New(env, completions_cap_ * kCqeStride, ab, 0);
  completions_ = static_cast<int32_t*>(ab.Data());
  completions_ref_ = Napi::Persistent(arr);
  on_complete_ = Napi::Persistent(cb.As<Napi::Function>());
  async_context_ = std::make_unique<Napi::AsyncContext>(env, "IoRing");
  napi_add_env_cleanup_hook(env, &IoRing::CleanupHook, this);
  hook_added_ = true;
  open_ = true;
}

IoRing::~IoRing() {
  // Only reached with nothing in flight (the object is referenced while anything is), or at
  // env teardown, where DrainSync waits for the kernel.
  if (open_) {
    refd_ = false;  // the reference is being deleted with this object
    DrainSync();
    Teardown();
  }
}

void IoRing::CleanupHook(void* arg) {
  auto* self = static_cast<IoRing*>(arg);
  self->hook_added_ = false;  // being run: Node removes it
  if (self->open_) {
    self->DrainSync();
    self->Teardown();
  }
}

void IoRing::DrainSync() {
  int32_t scratch[32 * kCqeStride];
  if (ring_.Unsubmitted() > 0) ring_.Enter(ring_.Unsubmitted(), 0, 0);
  while (inflight_ > 0) {
    unsigned n = ring_.Reap(scratch, 32);
    inflight_ -= n;
    if (n > 0 || inflight_ == 0) continue;
    int r = ring_.Enter(ring_.Unsubmitted(), 1, IORING_ENTER_GETEVENTS);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) break;  // ring unusable: nothing more will come
  }
}

void IoRing::Teardown() {
  open_ = false;
  if (poll_ != nullptr) {
    // uv_close stops watching the eventfd before we close it; the handle memory goes with the
    // close callback.
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  if (eventfd_ >= 0) close(eventfd_);
  eventfd_ = -1;
  ring_.Close();
  if (hook_added_) {
    napi_remove_env_cleanup_hook(Env(), &IoRing::CleanupHook, this);
    hook_added_ = false;
  }
  on_complete_.Reset();
  if (refd_) {
    refd_ = false;
    Unref();
  }
}

void IoRing::UpdateRefs() {
  if (!open_) return;
  bool want = inflight_ > 0 || closing_;
  if (want == refd_) return;
  refd_ = want;
  if (want) {
    Ref();
    uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  } else {
    Unref();
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  }
}

void IoRing::MaybeFinishClose(bool pairs_unhandled) {
  if (!open_ || !closing_ || inflight_ != 0) return;
  // JS may still continue an op it has not seen yet (a short read): tear down from the poll
  // callback, after the caller handled the pairs submit() returns.
  if (pairs_unhandled) {
    SignalEventfd();
  } else {
    Teardown();
  }
}

void IoRing::SignalEventfd() {
  uint64_t one = 1;
  ssize_t r = write(eventfd_, &one, sizeof(one));
  (void)r;  // EAGAIN only when the counter is saturated, i.e. already signalled
}

io_uring_sqe* IoRing::AcquireSqe(Napi::Env env) {
  // While closing, operations may still be queued (e.g. the rest of a short read): the
  // ring is torn down only once nothing is in flight.
  if (!open_) ThrowError(env, "ESHUTDOWN", "IoRing is closed");
  io_uring_sqe* sqe = ring_.PeekSqe();
  if (sqe == nullptr) {
    SubmitToKernel(env, false);
    sqe = ring_.PeekSqe();
    if (sqe == nullptr) ThrowError(env, "EAGAIN", "io_uring submission queue full");
  }
  return sqe;
}

void IoRing::CommitSqe() {
  ring_.Commit();
  ++inflight_;
  UpdateRefs();
}

Napi::Value IoRing::PrepRw(const Napi::CallbackInfo& info, uint8_t opcode, bool checked) {
  Napi::Env env = info.Env();
  if (info.Length() < (checked ? 5u : 4u)) {
    ThrowError(env, "EINVAL", checked ? "prepReadvChecked(fd, bufs, offset, tag, at)" : "prepReadv/prepWritev(fd, bufs, offset, tag[, background])");
  }
  // Background: a kernel worker runs it (IOSQE_ASYNC), never io_uring_enter itself, so a large
  // copy cannot delay the completions submitted in the same call.
  bool background = false;
  if (!checked && info.Length() >= 5) napi_get_value_bool(env, info[4], &background);  // not a boolean: false
  int32_t fd = ToFd(env, info[0]);
  uint64_t offset = ToU64(env, info[2], "offset");
  uint32_t tag = ToTag(env, info[3]);
  // bufs: one Uint8Array, or an array of them. A single view costs no array access (each
  // napi_get_array_length / napi_get_element call sets up a V8 TryCatch).
  napi_value arr = info[1];
  ByteView single{nullptr, 0};
  napi_typedarray_type type;
  uint32_t count = 1;
  const bool is_single = napi_get_typedarray_info(env, arr, &type, &single.length, &single.data, nullptr, nullptr) == napi_ok;
  if (is_single) {
    if (type != napi_uint8_array) ThrowError(env, "EINVAL", "bufs must hold Uint8Array views");
  } else if (napi_get_array_length(env, arr, &count) != napi_ok) {
    ThrowError(env, "EINVAL", "bufs must be a Uint8Array or an array of them");
  }
  if (count > IOV_MAX) ThrowError(env, "EINVAL", "more than IOV_MAX buffers");
  // A checked read (see the header): the index of its first block's CRC in the check table.
  uint64_t at = 0;
  if (checked) {
    at = ToU64(env, info[4], "at");
    if (check_table_.crcs == nullptr) ThrowError(env, "EINVAL", "checked reads need a check table (setCheckTable)");
    if (tag >= kMaxCheckedTag) ThrowError(env, "EINVAL", "checked reads need a tag below 2^20");
  }
  io_uring_sqe* sqe = AcquireSqe(env);
  std::vector<iovec>& iov = iovs_[ring_.NextSqeIndex()];
  iov.resize(count);
  size_t total = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const ByteView v = is_single ? single : Uint8ArrayElement(env, arr, i);
    iov[i].iov_base = v.data;
    iov[i].iov_len = v.length;
    total += v.length;
  }
  // Any earlier op of this tag has completed: its check (if any) was consumed when reaped.
  if (tag < checks_.size()) checks_[tag].active = false;
  if (checked) {
    const CheckTable& t = check_table_;
    size_t n = total / t.block_size;
    if (total % t.block_size != 0 || at > t.length || n > t.length - at) ThrowError(env, "EINVAL", "a checked read must hold whole blocks with a CRC each");
    if (tag >= checks_.size()) checks_.resize(tag + 1);
    ReadCheck& c = checks_[tag];
    c.active = true;
    c.block_size = t.block_size;
    c.total = total;
    c.views.assign(iov.begin(), iov.end());
    c.crcs.assign(t.crcs + at, t.crcs + at + n);
  }
  sqe->opcode = opcode;
  sqe->fd = fd;
  sqe->off = offset;
  sqe->addr = reinterpret_cast<uint64_t>(iov.data());
  sqe->len = count;
  sqe->user_data = tag;
  if (background) sqe->flags = IOSQE_ASYNC;
  CommitSqe();
  return env.Undefined();
}

Napi::Value IoRing::JS_setCheckTable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2) ThrowError(env, "EINVAL", "setCheckTable(crcs: Uint32Array, blockSize)");
  napi_typedarray_type type;
  void* data = nullptr;
  size_t length = 0;
  if (napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_uint32_array) {
    ThrowError(env, "EINVAL", "crcs must be a Uint32Array");
  }
  uint64_t block_size = ToU64(env, info[1], "blockSize");
  if (block_size == 0 || block_size > UINT32_MAX) ThrowError(env, "EINVAL", "blockSize must be in [1, 2^32)");
  // The reference keeps the array alive; its bytes do not move: a Uint32Array's buffer is
  // off the V8 heap once napi_get_typedarray_info has returned its data pointer.
  check_table_ref_ = Napi::Persistent(info[0].As<Napi::Uint32Array>());
  check_table_ = {static_cast<const uint32_t*>(data), length, static_cast<uint32_t>(block_size)};
  return env.Undefined();
}

Napi::Value IoRing::JS_prepReadv(const Napi::CallbackInfo& info) { return PrepRw(info, IORING_OP_READV, false); }

Napi::Value IoRing::JS_prepReadvChecked(const Napi::CallbackInfo& info) { return PrepRw(info, IORING_OP_READV, true); }

Napi::Value IoRing::JS_prepWritev(const Napi::CallbackInfo& info) { return PrepRw(info, IORING_OP_WRITEV, false); }

Napi::Value IoRing::JS_prepFdatasync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2) ThrowError(env, "EINVAL", "prepFdatasync(fd, tag)");
  int32_t fd = ToFd(env, info[0]);
  uint32_t tag = ToTag(env, info[1]);
  io_uring_sqe* sqe = AcquireSqe(env);
  sqe->opcode = IORING_OP_FSYNC;
  sqe->fd = fd;
  sqe->fsync_flags = IORING_FSYNC_DATASYNC;
  sqe->user_data = tag;
  CommitSqe();
  return env.Undefined();
}

Napi::Value IoRing::JS_prepFallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5) ThrowError(env, "EINVAL", "prepFallocate(fd, mode, offset, length, tag)");
  int32_t fd = ToFd(env, info[0]);
  uint64_t mode = ToU64(env, info[1], "mode");
  uint64_t offset = ToU64(env, info[2], "offset");
  uint64_t length = ToU64(env, info[3], "length");
  uint32_t tag = ToTag(env, info[4]);
  if (mode > UINT32_MAX) ThrowError(env, "EINVAL", "fallocate mode out of range");
  io_uring_sqe* sqe = AcquireSqe(env);
  // IORING_OP_FALLOCATE: off = offset, addr = length, len = mode.
  sqe->opcode = IORING_OP_FALLOCATE;
  sqe->fd = fd;
  sqe->off = offset;
  sqe->addr = length;
  sqe->len = static_cast<uint32_t>(mode);
  sqe->user_data = tag;
  CommitSqe();
  return env.Undefined();
}

// IORING_OP_SYNC_FILE_RANGE with SYNC_FILE_RANGE_WRITE: starts writing the range's dirty pages
// (the kernel always runs it on a worker), waits for none of it. length 0: to end of file.
Napi::Value IoRing::JS_prepSyncFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) ThrowError(env, "EINVAL", "prepSyncFileRange(fd, offset, length, tag)");
  int32_t fd = ToFd(env, info[0]);
  uint64_t offset = ToU64(env, info[1], "offset");
  uint64_t length = ToU64(env, info[2], "length");
  uint32_t tag = ToTag(env, info[3]);
  if (length > kMaxWriteoutLength) ThrowError(env, "EINVAL", "write-out length must be below 2^32");
  io_uring_sqe* sqe = AcquireSqe(env);
  sqe->opcode = IORING_OP_SYNC_FILE_RANGE;
  sqe->fd = fd;
  sqe->off = offset;
  sqe->len = static_cast<uint32_t>(length);
  sqe->sync_range_flags = SYNC_FILE_RANGE_WRITE;
  sqe->user_data = tag;
  CommitSqe();
  return env.Undefined();
}

void IoRing::SubmitToKernel(Napi::Env env, bool getevents) {
  unsigned to_submit = ring_.Unsubmitted();
  // GETEVENTS with min_complete 0 only makes the kernel flush overflowed CQEs: skip the
  // syscall when there is nothing to submit and nothing overflowed.
  bool flush = getevents && ring_.CqOverflow();
  if (to_submit == 0 && !flush) return;
  unsigned flags = flush ? IORING_ENTER_GETEVENTS : 0;
  for (;;) {
    int r = ring_.Enter(to_submit, 0, flags);
    if (r == -EINTR) continue;
    if (r == -EAGAIN || r == -EBUSY) {
      // The kernel is short of resources or holds overflowed CQEs it cannot flush yet: the
      // SQEs stay queued and go with the next submit, which follows the next reap.
      SignalEventfd();
      return;
    }
    if (r < 0) ThrowErrno(env, "io_uring_enter", -r);
    to_submit = ring_.Unsubmitted();
    // Without IORING_SETUP_SUBMIT_ALL the kernel stops at an SQE that fails to prepare (it
    // posts a CQE for it): go on with the rest.
    if (to_submit == 0 || r == 0) return;
    flags = 0;
  }
}

bool IoRing::MoreToReap() const { return !ring_.CqEmpty() || ring_.CqOverflow(); }

void IoRing::CheckReads(unsigned from, unsigned to) {
  for (unsigned i = from; i < to; ++i) {
    int32_t* t = completions_ + kCqeStride * i;
    uint32_t tag = static_cast<uint32_t>(t[0]);
    if (tag >= checks_.size() || !checks_[tag].active) continue;
    ReadCheck& c = checks_[tag];
    c.active = false;
    if (t[1] < 0 || static_cast<size_t>(t[1]) != c.total) continue;  // failed or short: not checked
    uint32_t bad = Crc32cCheckBlocks(c.views.data(), c.views.size(), c.block_size, c.crcs.data(), nullptr);
    t[2] = bad == 0 ? kCheckOk : kCheckBad;
  }
}

unsigned IoRing::ReapAll() {
  unsigned n = 0;
  for (;;) {
    unsigned got = ring_.Reap(completions_ + kCqeStride * n, completions_cap_ - n);
    CheckReads(n, n + got);
    n += got;
    if (n == completions_cap_ || !ring_.CqOverflow()) break;
    // The CQ is empty now and the kernel holds more: let it move them in.
    int r = ring_.Enter(0, 0, IORING_ENTER_GETEVENTS);
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN) break;
    if (ring_.CqEmpty()) break;
  }
  inflight_ -= n;
  return n;
}

Napi::Value IoRing::JS_submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_) return Napi::Number::New(env, 0);
  SubmitToKernel(env, true);
  unsigned n = 0;
  // From inside onComplete (e.g. its microtasks) the pairs JS is handling must not be
  // overwritten: completions wait for the poll callback's loop, which reaps again next.
  if (!in_callback_) {
    n = ReapAll();
    if (MoreToReap()) SignalEventfd();
  }
  UpdateRefs();
  MaybeFinishClose(n > 0);
  return Napi::Number::New(env, n);
}

void IoRing::OnEventfd() {
  if (!open_) return;
  uint64_t counter;
  ssize_t rd = read(eventfd_, &counter, sizeof(counter));
  (void)rd;  // EAGAIN: a stale wake-up, harmless
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  while (open_) {
    try {
      SubmitToKernel(env, false);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
    unsigned n = ReapAll();
    if (n == 0) break;
    in_callback_ = true;
    try {
      on_complete_.MakeCallback(Value(), {Napi::Number::New(env, n)}, *async_context_);
    } catch (const Napi::Error& e) {
      in_callback_ = false;
      napi_fatal_exception(env, e.Value());
    }
    in_callback_ = false;
  }
  UpdateRefs();
  MaybeFinishClose(false);
}

Napi::Value IoRing::JS_close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!open_ || closing_) return env.Undefined();
  closing_ = true;
  SubmitToKernel(env, false);
  UpdateRefs();
  MaybeFinishClose(false);
  return env.Undefined();
}

Napi::Value IoRing::JS_getCompletions(const Napi::CallbackInfo& info) { return completions_ref_.Value(); }

Napi::Value IoRing::JS_getSqEntries(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ring_.sq_entries());
}

Napi::Value IoRing::JS_getCqEntries(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ring_.cq_entries());
}

Napi::Value IoRing::JS_getInflight(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(inflight_));
}

Napi::Value IoRing::JS_getClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !open_ || closing_);
}

// probe(): can this process set up an io_uring with what IoRing needs?
Napi::Value IoRing::JS_probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  KernelRing ring;
  std::string step;
  int r = ring.Open(4, 8, &step);
  if (r < 0) {
    out.Set("supported", false);
    out.Set("code", ErrnoName(-r));
    out.Set("reason", step + ": " + strerror(-r));
    return out;
  }
  constexpr unsigned kOps = 256;
  std::vector<uint8_t> mem(sizeof(io_uring_probe) + kOps * sizeof(io_uring_probe_op), 0);
  auto* probe = reinterpret_cast<io_uring_probe*>(mem.data());
  if (SysRegister(ring.fd(), IORING_REGISTER_PROBE, probe, kOps) < 0) {
    int err = errno;
    out.Set("supported", false);
    out.Set("code", ErrnoName(err));
    out.Set("reason", std::string("io_uring_register(PROBE): ") + strerror(err));
    return out;
  }
  const struct {
    uint8_t op;
    const char* name;
  } needed[] = {{IORING_OP_READV, "READV"},
                {IORING_OP_WRITEV, "WRITEV"},
                {IORING_OP_FSYNC, "FSYNC"},
                {IORING_OP_FALLOCATE, "FALLOCATE"},
                {IORING_OP_SYNC_FILE_RANGE, "SYNC_FILE_RANGE"}};
  for (const auto& n : needed) {
    if (n.op > probe->last_op || (probe->ops[n.op].flags & IO_URING_OP_SUPPORTED) == 0) {
      out.Set("supported", false);
      out.Set("code", "EOPNOTSUPP");
      out.Set("reason", std::string("io_uring lacks IORING_OP_") + n.name);
      return out;
    }
  }
  out.Set("supported", true);
  return out;
}

Napi::Object InitIoRing(Napi::Env env, Napi::Object exports) {
  exports.Set("IoRing", IoRing::DefineClass(env));
  RegisterIoHelpers(env, exports);
  return exports;
}

}  // namespace vbc
