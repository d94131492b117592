// JS class VhostDevice (contract: src/native/types.ts, NativeVhostDevice / VhostDeviceOptions).
// A thin adapter: options in, Backend (native/vhost/backend.h) does the protocol; this class
// turns requests into the reused `requests` Float64Array plus Uint8Array views and events into
// plain objects, and calls JS inside a callback scope (Napi MakeCallback with an AsyncContext)
// so microtasks run after each call.
//
// Guest memory views: a region may be far larger than one ArrayBuffer (Node 20 stops at 4 GiB),
// so JS sees a region through WINDOWS: window w of a mapping is an external ArrayBuffer over
// [w * kWindowStride, w * kWindowStride + kWindowBytes) (2 GiB every 1 GiB, clipped to the
// mapping). Every data piece is at most size_max <= kWindowStride bytes (checked when the chain
// is carved), so it lies inside the window of its start; its view is a Uint8Array on that
// window. Windows are created on first use and cached, so a request costs no ArrayBuffer.
//
// Ownership (one owner, no finalizers): the mmap belongs to the Mapping (freed by ~Mapping
// only). A window ArrayBuffer owns nothing; the views_ entry of its mapping holds a shared_ptr
// on the Mapping and counts the delivered requests over it that JS has not completed yet. When
// the mapping has left the memory table (or the connection ended) and that count is 0, every
// window is DETACHED (napi_detach_arraybuffer: JS views become empty, never dangling) and the
// entry drops its reference, so the memory is unmapped at once, not at a later GC. After a
// disconnect, mappings still used by in-flight requests are fenced (Mapping::Fence: JS writes
// no longer reach the guest).
//
// SIGBUS on guest memory (a front end shrank its memfd): the process-wide handler
// (guest_memory.h) wakes a uv_async; every device whose memory table has a faulted mapping is
// then failed (broken + disconnected), on the loop.
//
// Lifetime: the object keeps itself alive (ObjectWrap::Ref) from construction until close()
// has finished closing every uv handle.
#pragma once
#include <napi.h>

#include <memory>
#include <unordered_map>
#include <vector>

#include "vhost/backend.h"

namespace vbc {

class VhostDevice : public Napi::ObjectWrap<VhostDevice>, public vhost::BackendHost {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit VhostDevice(const Napi::CallbackInfo& info);
  ~VhostDevice() override;

  // BackendHost
  void DeliverRequests(int queue, const std::vector<vhost::PendingRequest>& reqs,
                       const std::vector<vhost::HostIov>& segs) override;
  void EmitEvent(const vhost::DeviceEvent& ev) override;
  void MemoryTableChanged() override;
  void AllHandlesClosed() override;

 private:
  Napi::Value JS_getRequests(const Napi::CallbackInfo& info);
  Napi::Value JS_getConnected(const Napi::CallbackInfo& info);
  Napi::Value JS_complete(const Napi::CallbackInfo& info);
  Napi::Value JS_setConfig(const Napi::CallbackInfo& info);
  Napi::Value JS_inflight(const Napi::CallbackInfo& info);
  Napi::Value JS_close(const Napi::CallbackInfo& info);

  // JS's hold on one mapping: its windows and its requests in flight.
  struct MappingViews {
    std::shared_ptr<vhost::Mapping> mapping;
    std::vector<Napi::Reference<Napi::ArrayBuffer>> windows;  // index w; empty until used
    uint32_t inflight = 0;
    bool departed = false;  // left the memory table, or its connection ended
  };
  // Mappings a delivered request's data lies in (usually one), by request tag.
  struct InflightRefs {
    static constexpr uint32_t kFree = UINT32_MAX;  // never a request tag (queue bits < kMaxQueues)
    uint32_t tag = kFree;
    MappingViews* first = nullptr;
    std::vector<MappingViews*> more;
  };

  MappingViews& ViewsFor(vhost::Mapping* mapping);
  Napi::Uint8Array ViewOf(MappingViews& mv, const vhost::HostIov& seg);
  // The record of `tag`: refs_[queue][head] (allocation-free), or overflow_ when a request of
  // an earlier connection with the same queue and head is still in JS.
  InflightRefs* RefsFor(uint32_t tag, bool create);
  void Track(uint32_t tag, MappingViews* mv, InflightRefs** refs);
  void Untrack(uint32_t tag);
  // For a departed mapping: releases it (detach windows, drop the reference) once no request
  // is in flight over it; until then fences it if the connection ended.
  void Settle(const vhost::Mapping* key);
  void Release(MappingViews& mv);
  void ReleaseAll();
  void CheckFaults();
  static void OnFaultAsync(uv_async_t* h);
  void CallJs(Napi::FunctionReference& fn, const std::initializer_list<napi_value>& args);

  std::unique_ptr<vhost::Backend> backend_;
  Napi::FunctionReference on_requests_;
  Napi::FunctionReference on_event_;
  Napi::Reference<Napi::Float64Array> requests_;
  std::unique_ptr<Napi::AsyncContext> async_;
  std::unordered_map<const vhost::Mapping*, MappingViews> views_;
  std::vector<std::vector<InflightRefs>> refs_;  // [queue][head], sized on first use
  std::unordered_map<uint32_t, InflightRefs> overflow_;
  size_t tracked_ = 0;  // requests with an InflightRefs record
  uint64_t faults_seen_ = 0;  // vhost::FaultCount() at the last CheckFaults
  bool referenced_ = false;
};

}  // namespace vbc
