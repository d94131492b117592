// RbdImage: one open RBD image (librbd, C API) whose asynchronous I/O completes on the Node
// loop. The image's completions are routed through rbd_set_image_notification to an eventfd
// (registered before the first I/O) that a uv_poll watches; every wake-up drains
// rbd_poll_io_events until empty (wake-ups merge), so no request hops threads on our side.
//
// Data never moves between librbd and the caller's views asynchronously: writes are copied into
// a request-owned bounce buffer at submission, reads land in one and are copied into the
// caller's views on the loop thread when they complete. A request the caller gave up on
// (cancel(), e.g. after its timeout) forgets the caller's views at once and keeps only its own
// buffer until librbd finishes with it, so an unreachable cluster can never write into memory
// that has been handed back (guest RAM, cache buffers).
//
// Built only when librbd is present (VBC_HAVE_RBD, see binding.gyp); rbd_addon.cc exports
// `rbd.available` either way.
#pragma once
#ifdef VBC_HAVE_RBD
#include <napi.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/uio.h>
#include <uv.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace vbc {

// What librbd's update watch (a librbd thread) shares with the loop thread. Heap-allocated and
// leaked with the image when the image is abandoned (see Close), since the watch may still fire.
struct RbdWatchState {
  std::atomic<bool> changed{false};
  int eventfd = -1;
};

// One cluster connection (rados_t) shared by every image opened with the same client name,
// configuration and mount timeout; shut down when its last image closes (rbd_image.cc:
// AcquireCluster, ReleaseCluster). `users` is guarded by the registry's lock, `cluster` is
// set once under connect_mu (the first opener connects, the others wait for it).
struct RbdCluster {
  std::mutex connect_mu;
  rados_t cluster = nullptr;
  size_t users = 0;
};

class RbdImage : public Napi::ObjectWrap<RbdImage> {
 public:
  static Napi::Function DefineClass(Napi::Env env);
  explicit RbdImage(const Napi::CallbackInfo& info);
  ~RbdImage() override;

  // Handles of an open image, filled by the open worker on the thread pool.
  struct Handles {
    std::string cluster_key;
    std::shared_ptr<RbdCluster> shared;
    rados_t cluster = nullptr;  // shared->cluster once connected
    rados_ioctx_t ioctx = nullptr;
    rbd_image_t image = nullptr;
    uint64_t watch_handle = 0;
    bool watching = false;
    RbdWatchState* watch = nullptr;
  };

 private:
  enum class Op : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };
  struct Req {
    uint32_t tag;
    Op op;
    bool cancelled = false;
    uint64_t length = 0;
    std::unique_ptr<char[]> bounce;
    std::vector<iovec> dest;  // reads: the caller's views; cleared by cancel()
    rbd_completion_t comp = nullptr;
  };

  Napi::Value JS_open(const Napi::CallbackInfo& info);
  Napi::Value JS_read(const Napi::CallbackInfo& info);
  Napi::Value JS_write(const Napi::CallbackInfo& info);
  Napi::Value JS_flush(const Napi::CallbackInfo& info);
  Napi::Value JS_discard(const Napi::CallbackInfo& info);
  Napi::Value JS_writeZeroes(const Napi::CallbackInfo& info);
  Napi::Value JS_cancel(const Napi::CallbackInfo& info);
  Napi::Value JS_close(const Napi::CallbackInfo& info);
  Napi::Value JS_currentSize(const Napi::CallbackInfo& info);
  Napi::Value JS_getCompletions(const Napi::CallbackInfo& info);
  Napi::Value JS_getPending(const Napi::CallbackInfo& info);

  // Called by the open worker on the loop thread once the image is open.
  friend class RbdOpenWorker;
  void Opened(Napi::Env env, const Handles& h);

  void CheckOpen(Napi::Env env) const;
  Req* NewReq(Napi::Env env, uint32_t tag, Op op);
  void Submit(Napi::Env env, Req* r, int rc, const char* what);
  void OnEventfd();
  void UpdateRefs();
  void StopPoll();

  Handles h_;
  int eventfd_ = -1;
  uv_poll_t* poll_ = nullptr;
  bool open_ = false;      // between a successful open() and close()
  bool opening_ = false;
  bool poll_refd_ = false;
  // Requests the caller still waits for, by tag.
  std::unordered_map<uint32_t, Req*> live_;
  // Requests librbd still holds (live and cancelled).
  size_t pending_ = 0;
  Napi::FunctionReference on_complete_;
  Napi::ObjectReference completions_ref_;
  int32_t* completions_ = nullptr;
  uint32_t completions_cap_ = 0;
  std::unique_ptr<Napi::AsyncContext> async_context_;
};

}  // namespace vbc
#endif  // VBC_HAVE_RBD
