#include "js/vhost_device.h"

#include <uv.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <unordered_set>

#include "js/errors.h"

namespace vbc {

namespace {
// REQ_* layout of src/native/types.ts.
constexpr size_t kReqTag = 0;
constexpr size_t kReqType = 1;
constexpr size_t kReqSector = 2;
constexpr size_t kReqDataLen = 3;
constexpr size_t kReqFirstSeg = 4;
constexpr size_t kReqSegCount = 5;
constexpr size_t kReqStride = 6;
constexpr double kMaxSafeSector = 9007199254740992.0;  // 2^53
// Guest memory windows (see vhost_device.h): size_max never exceeds the stride.
constexpr uint64_t kWindowStride = vhost::kMaxSegmentSize;
constexpr uint64_t kWindowBytes = 2 * kWindowStride;

// Live devices (main thread only) and the one async handle the SIGBUS handler wakes.
std::unordered_set<VhostDevice*>& Devices() {
  static std::unordered_set<VhostDevice*> devices;
  return devices;
}
uv_async_t* g_fault_async = nullptr;
void NotifyFault(void* arg) { uv_async_send(static_cast<uv_async_t*>(arg)); }

const char* LevelName(vhost::LogLevel l) {
  switch (l) {
    case vhost::LogLevel::kTrace: return "trace";
    case vhost::LogLevel::kDebug: return "debug";
    case vhost::LogLevel::kInfo: return "info";
    case vhost::LogLevel::kWarn: return "warn";
    case vhost::LogLevel::kError: return "error";
  }
  return "info";
}

uint32_t IntOption(Napi::Env env, Napi::Object o, const char* key, uint32_t min, uint32_t max,
                   bool required, uint32_t dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() && !required) return dflt;
  if (!v.IsNumber()) ThrowError(env, "EINVAL", std::string("option ") + key + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || std::floor(d) != d) {
    ThrowError(env, "EINVAL", std::string("option ") + key + " out of range [" +
                                  std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return static_cast<uint32_t>(d);
}

std::vector<uint8_t> ConfigImage(Napi::Env env, Napi::Value v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowError(env, "EINVAL", "config must be a Uint8Array");
  }
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  if (a.ElementLength() > vhost::kMaxConfigSize) {
    ThrowError(env, "EINVAL", "config image larger than 256 bytes");
  }
  return std::vector<uint8_t>(a.Data(), a.Data() + a.ElementLength());
}
}  // namespace

Napi::Object VhostDevice::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(
      env, "VhostDevice",
      {
          InstanceAccessor<&VhostDevice::JS_getRequests>("requests"),
          InstanceAccessor<&VhostDevice::JS_getConnected>("connected"),
          InstanceMethod<&VhostDevice::JS_complete>("complete"),
          InstanceMethod<&VhostDevice::JS_setConfig>("setConfig"),
          InstanceMethod<&VhostDevice::JS_inflight>("inflight"),
          InstanceMethod<&VhostDevice::JS_close>("close"),
      });
  exports.Set("VhostDevice", cls);
  return exports;
}

VhostDevice::VhostDevice(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VhostDevice>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    ThrowError(env, "EINVAL", "VhostDevice(options) expects an options object");
  }
  Napi::Object o = info[0].As<Napi::Object>();
  const bool has_path = !o.Get("socketPath").IsUndefined();
  const bool has_fd = !o.Get("fd").IsUndefined();
  if (has_path == has_fd) ThrowError(env, "EINVAL", "exactly one of socketPath and fd is required");
  if (has_path && !o.Get("socketPath").IsString()) {
    ThrowError(env, "EINVAL", "socketPath must be a string");
  }
  vhost::BackendOptions opts;
  opts.max_queues = IntOption(env, o, "maxQueues", 1, vhost::kMaxQueues, true, 1);
  opts.max_queue_size =
      IntOption(env, o, "maxQueueSize", vhost::kMinQueueSize, vhost::kMaxQueueSize, true, 256);
  if ((opts.max_queue_size & (opts.max_queue_size - 1)) != 0) {
    ThrowError(env, "EINVAL", "maxQueueSize must be a power of two");
  }
  const uint32_t mode = IntOption(env, o, "socketMode", 0, vhost::kMaxSocketMode, false, 0600);
  Napi::Value uids = o.Get("allowUids");
  if (!uids.IsUndefined()) {
    if (!uids.IsArray()) ThrowError(env, "EINVAL", "allowUids must be an array of uids");
    Napi::Array a = uids.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value u = a.Get(i);
      const double d = u.IsNumber() ? u.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0 && d <= UINT32_MAX) || std::floor(d) != d) {
        ThrowError(env, "EINVAL", "allowUids must be an array of uids");
      }
      opts.allowed_uids.push_back(static_cast<uint32_t>(d));
    }
  }
  Napi::Value feats = o.Get("deviceFeatures");
  if (!feats.IsBigInt()) ThrowError(env, "EINVAL", "deviceFeatures must be a bigint");
  bool lossless = false;
  opts.device_features = feats.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowError(env, "EINVAL", "deviceFeatures must fit 64 bits");
  opts.limits.max_segments = IntOption(env, o, "maxSegments", 1, vhost::kMaxSegments, true, 0);
  opts.limits.max_segment_size =
      IntOption(env, o, "maxSegmentSize", 512, vhost::kMaxSegmentSize, true, 0);
  opts.config = ConfigImage(env, o.Get("config"));
  Napi::Value on_requests = o.Get("onRequests");
  Napi::Value on_event = o.Get("onEvent");
  if (!on_requests.IsFunction() || !on_event.IsFunction()) {
    ThrowError(env, "EINVAL", "onRequests and onEvent must be functions");
  }
  on_requests_ = Napi::Persistent(on_requests.As<Napi::Function>());
  on_event_ = Napi::Persistent(on_event.As<Napi::Function>());
  requests_ = Napi::Persistent(
      Napi::Float64Array::New(env, static_cast<size_t>(opts.max_queue_size) * kReqStride));
  async_ = std::make_unique<Napi::AsyncContext>(env, "VhostDevice");

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowError(env, "EIO", "no event loop");
  }
  if (g_fault_async == nullptr) {
    g_fault_async = new uv_async_t;
    uv_async_init(loop, g_fault_async, OnFaultAsync);
    uv_unref(reinterpret_cast<uv_handle_t*>(g_fault_async));
    vhost::InstallFaultHandler(NotifyFault, g_fault_async);
  }
  backend_ = std::make_unique<vhost::Backend>(loop, this, std::move(opts));
  vhost::SetupError err;
  bool ok;
  if (has_path) {
    ok = backend_->Listen(o.Get("socketPath").As<Napi::String>().Utf8Value(), mode, &err);
  } else {
    ok = backend_->Adopt(static_cast<int>(IntOption(env, o, "fd", 0, INT32_MAX, true, 0)), &err);
  }
  if (!ok) {
    if (backend_->has_handles()) {
      // Handles were initialized on the loop: the backend may never be freed under them.
      backend_->Close();
      backend_.release();
    }
    ThrowError(env, err.code, err.message);
  }
  Ref();
  referenced_ = true;
  Devices().insert(this);
}

VhostDevice::~VhostDevice() { Devices().erase(this); }

Napi::Value VhostDevice::JS_getRequests(const Napi::CallbackInfo&) { return requests_.Value(); }

Napi::Value VhostDevice::JS_getConnected(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), backend_ && backend_->connected());
}

Napi::Value VhostDevice::JS_complete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    ThrowError(env, "EINVAL", "complete(queue, count, completions: Uint32Array)");
  }
  const double queue = info[0].As<Napi::Number>().DoubleValue();
  const double count = info[1].As<Napi::Number>().DoubleValue();
  Napi::Uint32Array pairs = info[2].As<Napi::Uint32Array>();
  if (!(queue >= 0 && queue < vhost::kMaxQueues) || std::floor(queue) != queue) {
    ThrowError(env, "EINVAL", "complete: bad queue");
  }
  if (!(count >= 0) || std::floor(count) != count || count * 2 > pairs.ElementLength()) {
    ThrowError(env, "EINVAL", "complete: count exceeds the completions array");
  }
  // A fault not yet reported by the async wake-up: drop the device first, so no completion of
  // a request that read vanished memory is reported OK.
  CheckFaults();
  std::string err;
  if (!backend_->Complete(static_cast<uint32_t>(queue), pairs.Data(), static_cast<size_t>(count),
                          &err)) {
    ThrowError(env, "EINVAL", "complete: " + err);
  }
  if (tracked_ > 0) {
    for (size_t i = 0; i < static_cast<size_t>(count); i++) Untrack(pairs.Data()[2 * i]);
  }
  return env.Undefined();
}

Napi::Value VhostDevice::JS_setConfig(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) ThrowError(env, "EINVAL", "setConfig(config: Uint8Array)");
  backend_->SetConfig(ConfigImage(env, info[0]));
  return env.Undefined();
}

Napi::Value VhostDevice::JS_inflight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<uint32_t> v = backend_->Inflight();
  Napi::Array out = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, v[i]));
  return out;
}

Napi::Value VhostDevice::JS_close(const Napi::CallbackInfo& info) {
  backend_->Close();
  return info.Env().Undefined();
}

void VhostDevice::AllHandlesClosed() {
  ReleaseAll();
  Devices().erase(this);
  if (referenced_) {
    referenced_ = false;
    Unref();
  }
}

void VhostDevice::MemoryTableChanged() {
  Napi::HandleScope scope(Env());
  const bool connected = backend_ && backend_->connected();
  std::vector<const vhost::Mapping*> departed;
  for (auto& kv : views_) {
    if (connected && backend_->memory().Contains(kv.first)) continue;
    kv.second.departed = true;
    departed.push_back(kv.first);
  }
  for (const vhost::Mapping* k : departed) Settle(k);
}

void VhostDevice::Settle(const vhost::Mapping* key) {
  auto it = views_.find(key);
  if (it == views_.end() || !it->second.departed) return;
  if (it->second.inflight == 0) {
    Release(it->second);
    views_.erase(it);  // drops JS's reference: unmapped now unless the backend still holds it
  } else if (!(backend_ && backend_->connected())) {
    it->second.mapping->Fence();
  }
}

void VhostDevice::Release(MappingViews& mv) {
  for (Napi::Reference<Napi::ArrayBuffer>& ref : mv.windows) {
    if (ref.IsEmpty()) continue;
    Napi::ArrayBuffer ab = ref.Value();
    if (!ab.IsDetached()) ab.Detach();
    ref.Reset();
  }
  mv.windows.clear();
}

void VhostDevice::ReleaseAll() {
  Napi::HandleScope scope(Env());
  for (auto& kv : views_) Release(kv.second);
  views_.clear();
  refs_.clear();
  overflow_.clear();
  tracked_ = 0;
}

VhostDevice::MappingViews& VhostDevice::ViewsFor(vhost::Mapping* mapping) {
  auto it = views_.find(mapping);
  if (it != views_.end()) return it->second;
  MappingViews& mv = views_[mapping];
  mv.mapping = mapping->shared_from_this();
  return mv;
}

Napi::Uint8Array VhostDevice::ViewOf(MappingViews& mv, const vhost::HostIov& seg) {
  const vhost::Mapping& m = *mv.mapping;
  const uint64_t off = static_cast<uint64_t>(seg.ptr - m.base());
  const size_t w = static_cast<size_t>(off / kWindowStride);
  const uint64_t start = w * kWindowStride;
  const uint64_t len = m.length() - start < kWindowBytes ? m.length() - start : kWindowBytes;
  if (off - start + seg.len > len) {
    // Carving bounds every piece by size_max <= kWindowStride; reaching this is a bug.
    throw std::runtime_error("data segment does not fit a guest memory window");
  }
  if (w >= mv.windows.size()) mv.windows.resize(w + 1);
  Napi::Reference<Napi::ArrayBuffer>& ref = mv.windows[w];
  Napi::ArrayBuffer ab;
  if (ref.IsEmpty()) {
    // No finalizer: the window owns nothing (the Mapping does), so no failure path can free.
    ab = Napi::ArrayBuffer::New(Env(), m.base() + start, static_cast<size_t>(len));
    ref = Napi::Persistent(ab);
  } else {
    ab = ref.Value();
  }
  return Napi::Uint8Array::New(Env(), seg.len, ab, static_cast<size_t>(off - start));
}

VhostDevice::InflightRefs* VhostDevice::RefsFor(uint32_t tag, bool create) {
  const uint32_t queue = vhost::Backend::TagQueue(tag);
  const uint32_t head = vhost::Backend::TagHead(tag);
  if (refs_.size() <= queue) {
    if (!create) return nullptr;
    refs_.resize(queue + 1);
  }
  std::vector<InflightRefs>& q = refs_[queue];
  if (q.size() <= head) {
    if (!create) return nullptr;
    q.resize(std::max<size_t>(backend_->max_queue_size(), head + 1));
  }
  InflightRefs& e = q[head];
  if (e.tag == tag) return &e;
  if (create && e.tag == InflightRefs::kFree) {
    e.tag = tag;
    return &e;
  }
  if (create) {
    InflightRefs& o = overflow_[tag];
    o.tag = tag;
    return &o;
  }
  auto it = overflow_.find(tag);
  return it == overflow_.end() ? nullptr : &it->second;
}

void VhostDevice::Track(uint32_t tag, MappingViews* mv, InflightRefs** refs) {
  if (*refs == nullptr) {
    // An existing record is a request of a connection 2^11 generations ago still in JS (request
    // tags wrap): both are then released with the first completion of that id.
    *refs = RefsFor(tag, true);
    if ((*refs)->first == nullptr) tracked_++;
  }
  InflightRefs& r = **refs;
  if (r.first == mv) return;
  if (r.first == nullptr) {
    r.first = mv;
  } else {
    for (MappingViews* m : r.more) {
      if (m == mv) return;
    }
    r.more.push_back(mv);
  }
  mv->inflight++;
}

void VhostDevice::Untrack(uint32_t tag) {
  InflightRefs* r = RefsFor(tag, false);
  if (r == nullptr || r->first == nullptr) return;
  // Mappings whose last request this was, if they already left: released below.
  std::vector<const vhost::Mapping*> done;
  auto drop = [&done](MappingViews* mv) {
    if (--mv->inflight == 0 && mv->departed) done.push_back(mv->mapping.get());
  };
  drop(r->first);
  for (MappingViews* mv : r->more) drop(mv);
  // Free the record before settling (Settle may erase the views_ entries it pointed to).
  auto it = overflow_.empty() ? overflow_.end() : overflow_.find(tag);
  if (it != overflow_.end() && &it->second == r) {
    overflow_.erase(it);
  } else {
    r->tag = InflightRefs::kFree;
    r->first = nullptr;
    r->more.clear();
  }
  tracked_--;
  for (const vhost::Mapping* k : done) Settle(k);
}

void VhostDevice::OnFaultAsync(uv_async_t*) {
  for (VhostDevice* d : Devices()) d->CheckFaults();
}

void VhostDevice::CheckFaults() {
  const uint64_t faults = vhost::FaultCount();
  if (faults == faults_seen_) return;
  faults_seen_ = faults;
  if (backend_ && backend_->connected() && backend_->MemoryFaulted()) {
    Napi::HandleScope scope(Env());
    backend_->Fail("guest memory vanished under the device (SIGBUS): the front end shrank a "
                   "memory region or the inflight region");
  }
}

void VhostDevice::CallJs(Napi::FunctionReference& fn, const std::initializer_list<napi_value>& args) {
  try {
    fn.MakeCallback(Value(), args, *async_);
  } catch (const Napi::Error& e) {
    // Like any exception thrown by an asynchronous callback: process 'uncaughtException'.
    napi_fatal_exception(Env(), e.Value());
  }
}

void VhostDevice::DeliverRequests(int queue, const std::vector<vhost::PendingRequest>& reqs,
                                  const std::vector<vhost::HostIov>& segs) {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Napi::Float64Array arr = requests_.Value();
  double* d = arr.Data();
  const size_t n = reqs.size();
  for (size_t i = 0; i < n; i++) {
    const vhost::PendingRequest& r = reqs[i];
    double* e = d + i * kReqStride;
    e[kReqTag] = r.tag;
    e[kReqType] = r.type;
    const double sector = static_cast<double>(r.sector);
    e[kReqSector] = sector >= kMaxSafeSector ? kMaxSafeSector : sector;
    e[kReqDataLen] = static_cast<double>(r.data_len);
    e[kReqFirstSeg] = r.first_seg;
    e[kReqSegCount] = r.seg_count;
  }
  Napi::Array views = Napi::Array::New(env, segs.size());
  MappingViews* mv = nullptr;
  for (size_t i = 0; i < n; i++) {
    const vhost::PendingRequest& r = reqs[i];
    InflightRefs* refs = nullptr;
    for (uint32_t j = r.first_seg; j < r.first_seg + r.seg_count; j++) {
      const vhost::HostIov& s = segs[j];
      if (mv == nullptr || mv->mapping.get() != s.mapping) mv = &ViewsFor(s.mapping);
      views.Set(j, ViewOf(*mv, s));
      Track(r.tag, mv, &refs);
    }
  }
  CallJs(on_requests_, {Napi::Number::New(env, queue), Napi::Number::New(env, static_cast<double>(n)),
                        views});
}

void VhostDevice::EmitEvent(const vhost::DeviceEvent& ev) {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Napi::Object o = Napi::Object::New(env);
  using K = vhost::DeviceEvent;
  switch (ev.kind) {
    case K::kListening:
      o.Set("type", "listening");
      o.Set("path", ev.text.empty() ? env.Null() : Napi::String::New(env, ev.text));
      break;
    case K::kConnected:
      o.Set("type", "connected");
      break;
    case K::kDisconnected:
      o.Set("type", "disconnected");
      o.Set("reason", ev.text);
      break;
    case K::kBroken:
      o.Set("type", "broken");
      o.Set("reason", ev.text);
      break;
    case K::kQueueStarted:
      o.Set("type", "queue-started");
      o.Set("queue", ev.queue);
      o.Set("size", ev.size);
      break;
    case K::kQueueStopped:
      o.Set("type", "queue-stopped");
      o.Set("queue", ev.queue);
      break;
    case K::kConfigWrite: {
      o.Set("type", "config-write");
      o.Set("offset", ev.offset);
      Napi::Uint8Array data = Napi::Uint8Array::New(env, ev.data.size());
      if (!ev.data.empty()) std::memcpy(data.Data(), ev.data.data(), ev.data.size());
      o.Set("data", data);
      break;
    }
    case K::kLog: {
      o.Set("type", "log");
      o.Set("level", LevelName(ev.level));
      o.Set("msg", ev.text);
      if (!ev.fields.empty()) {
        Napi::Object f = Napi::Object::New(env);
        for (const vhost::LogField& lf : ev.fields) {
          if (lf.is_string) {
            f.Set(lf.key, lf.str);
          } else {
            f.Set(lf.key, lf.num);
          }
        }
        o.Set("fields", f);
      }
      break;
    }
  }
  CallJs(on_event_, {o});
}

Napi::Object InitVhostDevice(Napi::Env env, Napi::Object exports) {
  return VhostDevice::Init(env, exports);
}

}  // namespace vbc
