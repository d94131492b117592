// Module entry: each JS-visible class registers itself here (one C++ class per JS object).
#include <napi.h>

#include "js/errors.h"
#include "vhost/limits.h"

namespace vbc {
Napi::Object InitErrors(Napi::Env env, Napi::Object exports);
Napi::Object InitVhostDevice(Napi::Env env, Napi::Object exports);
Napi::Object InitIoRing(Napi::Env env, Napi::Object exports);
Napi::Object InitMappedFile(Napi::Env env, Napi::Object exports);
Napi::Object InitFrontend(Napi::Env env, Napi::Object exports);
Napi::Object InitRbd(Napi::Env env, Napi::Object exports);
void RegisterCrc32c(Napi::Env env, Napi::Object exports);
}  // namespace vbc

// The back end's limits (vhost/limits.h) that options depend on; src/config validates with them.
static void ExportLimits(Napi::Env env, Napi::Object exports) {
  namespace v = vbc::vhost;
  Napi::Object limits = Napi::Object::New(env);
  limits.Set("maxQueues", v::kMaxQueues);
  limits.Set("minQueueSize", v::kMinQueueSize);
  limits.Set("maxQueueSize", v::kMaxQueueSize);
  limits.Set("maxSocketMode", v::kMaxSocketMode);
  limits.Set("maxConfigSize", v::kMaxConfigSize);
  limits.Freeze();
  exports.Set("limits", limits);
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ExportLimits(env, exports);
  vbc::InitErrors(env, exports);
  vbc::InitVhostDevice(env, exports);
  vbc::InitIoRing(env, exports);
  vbc::InitMappedFile(env, exports);
  vbc::InitFrontend(env, exports);
  vbc::InitRbd(env, exports);
  vbc::RegisterCrc32c(env, exports);
  return exports;
}

NODE_API_MODULE(vhost_blk_cache, Init)
