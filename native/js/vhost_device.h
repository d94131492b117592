// JS class VhostDevice (contract: src/native/types.ts, NativeVhostDevice / VhostDeviceOptions).
// A thin adapter: options in, Backend (native/vhost/backend.h) does the protocol; this class
// turns requests into the reused `requests` Float64Array plus Uint8Array views and events into
// plain objects, and calls JS inside a callback scope (Napi MakeCallback with an AsyncContext)
// so microtasks run after each call.
//
// Guest memory views: one external ArrayBuffer per mapping, created on first use and cached
// while the mapping is in the memory table; its finalizer holds a shared_ptr on the mapping,
// so the mmap outlives the table as long as any view exists.
//
// Lifetime: the object keeps itself alive (ObjectWrap::Ref) from construction until close()
// has finished closing every uv handle.
#pragma once
#include <napi.h>

#include <memory>
#include <unordered_map>

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

  Napi::ArrayBuffer BufferFor(vhost::Mapping* mapping);
  void CallJs(Napi::FunctionReference& fn, const std::initializer_list<napi_value>& args);

  std::unique_ptr<vhost::Backend> backend_;
  Napi::FunctionReference on_requests_;
  Napi::FunctionReference on_event_;
  Napi::Reference<Napi::Float64Array> requests_;
  std::unique_ptr<Napi::AsyncContext> async_;
  std::unordered_map<const vhost::Mapping*, Napi::Reference<Napi::ArrayBuffer>> buffers_;
  bool referenced_ = false;
};

}  // namespace vbc
