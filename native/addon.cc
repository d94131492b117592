// Module entry: each JS-visible class registers itself here (one C++ class per JS object).
#include <napi.h>

#include "js/errors.h"

namespace vbc {
Napi::Object InitErrors(Napi::Env env, Napi::Object exports);
Napi::Object InitVhostDevice(Napi::Env env, Napi::Object exports);
Napi::Object InitIoRing(Napi::Env env, Napi::Object exports);
Napi::Object InitFrontend(Napi::Env env, Napi::Object exports);
Napi::Object InitRbd(Napi::Env env, Napi::Object exports);
void RegisterCrc32c(Napi::Env env, Napi::Object exports);
}  // namespace vbc

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  vbc::InitErrors(env, exports);
  vbc::InitVhostDevice(env, exports);
  vbc::InitIoRing(env, exports);
  vbc::InitFrontend(env, exports);
  vbc::InitRbd(env, exports);
  vbc::RegisterCrc32c(env, exports);
  return exports;
}

NODE_API_MODULE(vhost_blk_cache, Init)
