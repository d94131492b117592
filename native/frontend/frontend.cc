#include "frontend/frontend.h"

#include <errno.h>
#include <string.h>

#include "js/errors.h"

namespace vbc {
namespace frontend {

uv_loop_t* Loop(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowError(env, "EINVAL", "no libuv loop for this environment");
  }
  return loop;
}

void CallFromLoop(Napi::Env env, Napi::FunctionReference& fn, Napi::AsyncContext& ctx,
                  const std::initializer_list<napi_value>& args) {
  Napi::HandleScope scope(env);
  try {
    fn.MakeCallback(env.Global(), args, ctx);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

}  // namespace frontend

Napi::Object InitFrontend(Napi::Env env, Napi::Object exports) {
  exports.Set("GuestRam", frontend::InitGuestRam(env));
  exports.Set("EventFd", frontend::InitEventFd(env));
  exports.Set("FrontendChannel", frontend::InitFrontendChannel(env));
  return exports;
}

}  // namespace vbc
