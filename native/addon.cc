// Module entry: each JS-visible class registers itself here (one C++ class per JS object).
#include <napi.h>

#include "js/errors.h"

namespace vbc {
Napi::Object InitErrors(Napi::Env env, Napi::Object exports);
}  // namespace vbc

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  vbc::InitErrors(env, exports);
  return exports;
}

NODE_API_MODULE(vhost_blk_cache, Init)
