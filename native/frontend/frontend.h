// vhost-user FRONT END primitives (the driver/QEMU side) for tests and benchmarks: guest RAM
// (memfd), eventfds with a Node-loop watcher, and a vhost-user channel (unix socket with
// SCM_RIGHTS). Policy (protocol, rings) lives in src/frontend/*.ts.
#pragma once
#include <napi.h>
#include <uv.h>

#include <string>

namespace vbc {
namespace frontend {

// The Node event loop of env.
uv_loop_t* Loop(Napi::Env env);
// Calls fn(args) from a libuv callback (no JS on the stack): runs microtasks afterwards and
// turns a JS exception into an uncaught exception of the process.
void CallFromLoop(Napi::Env env, Napi::FunctionReference& fn, Napi::AsyncContext& ctx,
                  const std::initializer_list<napi_value>& args);

Napi::Function InitGuestRam(Napi::Env env);
Napi::Function InitEventFd(Napi::Env env);
Napi::Function InitFrontendChannel(Napi::Env env);

}  // namespace frontend

// Registers GuestRam, EventFd and FrontendChannel on exports.
Napi::Object InitFrontend(Napi::Env env, Napi::Object exports);

}  // namespace vbc
