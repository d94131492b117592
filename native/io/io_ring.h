// IoRing: an io_uring instance driven from the Node main thread, with raw syscalls (no
// liburing). JS queues SQEs with prep*(…, tag), hands them to the kernel with submit() (one
// io_uring_enter), and receives completions as [tag, result, check] triples in a shared
// Int32Array (kCqeStride; src/native/types.ts CQE_*):
//   - submit() reaps every CQE already posted (page-cache hits complete inline) and returns
//     how many pairs it wrote; the caller handles them before calling into the ring again.
//   - CQEs posted later wake an eventfd (IORING_REGISTER_EVENTFD) watched by uv_poll on the
//     Node loop; the poll callback reaps and calls onComplete(count) inside a callback scope.
// Checked reads: prepReadvChecked(fd, bufs, offset, tag, at) also checks the bytes read, as
// whole blocks, against the CRC-32Cs crcs[at + j] of the check table (setCheckTable(crcs,
// blockSize): registered once, not passed with every read), copied at prep time, when its CQE
// is reaped and the read transferred every byte (check = kCheckOk or kCheckBad); a short read
// is not checked (kCheckNone: the caller continues it and checks the whole). Cache hits thus
// cost no JS crossing for their check, and their prep takes five arguments, as many as a plain
// read (node-addon-api reads up to six without allocating).
// Lifetime: while operations are in flight (queued or submitted, not yet reaped) the JS object
// is strongly referenced and the poll handle keeps the loop alive; close() stops nothing in
// flight: the ring is torn down (fd closed, rings unmapped) once the last completion is
// delivered, so the kernel never writes into freed memory.
#pragma once
#include <linux/io_uring.h>
#include <napi.h>
#include <sys/uio.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vbc {

// Completion triples: [tag, result, check].
constexpr unsigned kCqeStride = 3;
// The check field of a completion.
constexpr int32_t kCheckNone = 0;  // no check asked for, or a short read (not checked)
constexpr int32_t kCheckOk = 1;    // every block matched its CRC-32C
constexpr int32_t kCheckBad = 2;   // some block did not
// Checked reads take tags below this (their checks are kept in a vector indexed by tag).
constexpr uint32_t kMaxCheckedTag = 1u << 20;

// The kernel side of one io_uring: the fd, the mmapped SQ/CQ rings and the SQE array.
// Single-threaded user (the Node main thread); the kernel is the other party.
class KernelRing {
 public:
  KernelRing() = default;
  KernelRing(const KernelRing&) = delete;
  KernelRing& operator=(const KernelRing&) = delete;
  ~KernelRing() { Close(); }

  // Sets up a ring with `entries` SQEs and `cq_entries` CQEs (both rounded up by the kernel).
  // Requires IORING_FEAT_NODROP and IORING_FEAT_SUBMIT_STABLE. Returns 0 or -errno; on
  // failure *step names the failing call.
  int Open(unsigned entries, unsigned cq_entries, std::string* step);
  void Close();
  bool IsOpen() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  unsigned sq_entries() const { return sq_entries_; }
  unsigned cq_entries() const { return cq_entries_; }

  // The next free SQE (zeroed), or nullptr when the SQ is full. Not queued until Commit().
  io_uring_sqe* PeekSqe();
  // Index of the SQE PeekSqe() returned (stable until Commit()).
  unsigned NextSqeIndex() const { return sq_tail_ & sq_mask_; }
  void Commit() { ++sq_tail_; }
  // SQEs committed but not yet consumed by the kernel.
  unsigned Unsubmitted() const;
  // Publishes the SQ tail (release) and calls io_uring_enter once. Returns the number of SQEs
  // consumed or -errno.
  int Enter(unsigned to_submit, unsigned min_complete, unsigned flags);
  // true when the kernel holds completions that did not fit the CQ (IORING_SQ_CQ_OVERFLOW).
  bool CqOverflow() const;
  // Copies at most `cap` CQEs into out as [user_data, res, kCheckNone] triples and frees their
  // CQ entries.
  unsigned Reap(int32_t* out, unsigned cap);
  bool CqEmpty() const;

 private:
  int fd_ = -1;
  unsigned sq_entries_ = 0, cq_entries_ = 0;
  void* ring_ptr_ = nullptr;  // SQ ring (and CQ ring with IORING_FEAT_SINGLE_MMAP)
  size_t ring_size_ = 0;
  void* cq_ptr_ = nullptr;  // CQ ring when mapped separately
  size_t cq_size_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  size_t sqes_size_ = 0;
  // Kernel-shared words. sq_head/cq_tail are written by the kernel (read with acquire),
  // sq_tail/cq_head by us (written with release).
  unsigned* sq_head_ = nullptr;
  unsigned* sq_tail_shared_ = nullptr;
  unsigned* sq_flags_ = nullptr;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  io_uring_cqe* cqes_ = nullptr;
  unsigned sq_mask_ = 0, cq_mask_ = 0;
  unsigned sq_tail_ = 0;  // local tail: SQEs committed so far
};

class IoRing : public Napi::ObjectWrap<IoRing> {
 public:
  static Napi::Function DefineClass(Napi::Env env);
  explicit IoRing(const Napi::CallbackInfo& info);
  ~IoRing() override;

 private:
  Napi::Value JS_prepReadv(const Napi::CallbackInfo& info);
  Napi::Value JS_prepReadvChecked(const Napi::CallbackInfo& info);
  Napi::Value JS_setCheckTable(const Napi::CallbackInfo& info);
  Napi::Value JS_prepWritev(const Napi::CallbackInfo& info);
  Napi::Value JS_prepFdatasync(const Napi::CallbackInfo& info);
  Napi::Value JS_prepFallocate(const Napi::CallbackInfo& info);
  Napi::Value JS_prepSyncFileRange(const Napi::CallbackInfo& info);
  Napi::Value JS_submit(const Napi::CallbackInfo& info);
  Napi::Value JS_close(const Napi::CallbackInfo& info);
  Napi::Value JS_getCompletions(const Napi::CallbackInfo& info);
  Napi::Value JS_getSqEntries(const Napi::CallbackInfo& info);
  Napi::Value JS_getCqEntries(const Napi::CallbackInfo& info);
  Napi::Value JS_getInflight(const Napi::CallbackInfo& info);
  Napi::Value JS_getClosed(const Napi::CallbackInfo& info);
  static Napi::Value JS_probe(const Napi::CallbackInfo& info);

  Napi::Value PrepRw(const Napi::CallbackInfo& info, uint8_t opcode, bool checked);
  // The next SQE, handing queued SQEs to the kernel first when the SQ is full.
  io_uring_sqe* AcquireSqe(Napi::Env env);
  void CommitSqe();
  // Hands every committed SQE to the kernel. With getevents, also asks the kernel to flush
  // overflowed completions (only when there are any). Throws on ring failure.
  void SubmitToKernel(Napi::Env env, bool getevents);
  // Reaps into completions_ (flushing CQ overflow when room remains). Returns pairs written.
  unsigned ReapAll();
  bool MoreToReap() const;
  void OnEventfd();
  // Keeps the JS object and the loop alive while operations are in flight or a close is
  // pending.
  void UpdateRefs();
  // Once closing and nothing is in flight: tears down, or schedules the teardown on the poll
  // callback when JS has yet to handle reaped pairs.
  void MaybeFinishClose(bool pairs_unhandled);
  // Blocks until every in-flight operation completed (results discarded): env teardown only.
  void DrainSync();
  void Teardown();
  void SignalEventfd();
  static void CleanupHook(void* arg);

  KernelRing ring_;
  int eventfd_ = -1;
  uv_poll_t* poll_ = nullptr;  // heap: freed by its uv_close callback
  Napi::FunctionReference on_complete_;
  Napi::Reference<Napi::Int32Array> completions_ref_;
  int32_t* completions_ = nullptr;
  unsigned completions_cap_ = 0;  // pairs
  std::unique_ptr<Napi::AsyncContext> async_context_;
  // iovec arrays of queued READV/WRITEV SQEs, indexed by SQE index. With
  // IORING_FEAT_SUBMIT_STABLE the kernel is done with them once it consumed the SQE, which is
  // before the SQE can be reused.
  std::vector<std::vector<iovec>> iovs_;
  // The check of a checked read in flight, by tag (see the file comment): its views, the total
  // bytes and the CRC-32Cs expected, copied at prep time. Vectors keep their capacity.
  struct ReadCheck {
    bool active = false;
    uint32_t block_size = 0;
    size_t total = 0;
    std::vector<iovec> views;
    std::vector<uint32_t> crcs;
  };
  std::vector<ReadCheck> checks_;
  // The CRC-32Cs checked reads are checked against (setCheckTable): the Uint32Array's bytes,
  // its length and the block size; the reference keeps the array alive.
  struct CheckTable {
    const uint32_t* crcs = nullptr;
    size_t length = 0;
    uint32_t block_size = 0;
  };
  CheckTable check_table_;
  Napi::Reference<Napi::Uint32Array> check_table_ref_;
  // Runs the checks of the completions out[from .. to) (triples) that have one.
  void CheckReads(unsigned from, unsigned to);
  uint64_t inflight_ = 0;  // committed SQEs whose CQE has not been reaped
  bool open_ = false;
  bool closing_ = false;
  bool in_callback_ = false;
  bool refd_ = false;
  bool hook_added_ = false;
};

Napi::Object InitIoRing(Napi::Env env, Napi::Object exports);

}  // namespace vbc
