#include "js/errors.h"

#include <cstring>
#include <string>

namespace vbc {

namespace {
// Per-env reference to the JS VhostError constructor, kept as instance data.
struct ErrorData {
  Napi::FunctionReference ctor;
};

ErrorData* GetData(Napi::Env env) { return env.GetInstanceData<ErrorData>(); }

Napi::Value JS_setErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) {
    throw Napi::TypeError::New(env, "setErrorClass(ctor) expects a constructor");
  }
  GetData(env)->ctor = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}
}  // namespace

Napi::Value MakeError(Napi::Env env, const std::string& code, const std::string& message) {
  ErrorData* data = GetData(env);
  if (data != nullptr && !data->ctor.IsEmpty()) {
    return data->ctor.New({Napi::String::New(env, message), Napi::String::New(env, code)});
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err.Value();
}

void ThrowError(Napi::Env env, const std::string& code, const std::string& message) {
  throw Napi::Error(env, MakeError(env, code, message));
}

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? std::string(name) : "E" + std::to_string(err);
}

void ThrowErrno(Napi::Env env, const std::string& what, int err) {
  ThrowError(env, ErrnoName(err), what + ": " + strerror(err));
}

Napi::Object InitErrors(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new ErrorData());
  exports.Set("setErrorClass", Napi::Function::New(env, JS_setErrorClass, "setErrorClass"));
  return exports;
}

}  // namespace vbc
