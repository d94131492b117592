#include "io/mapped_file.h"

#include <cstring>
#include <string>

#include "io/io_helpers.h"
#include "js/errors.h"

namespace vbc {

Napi::Function MappedFile::DefineClass(Napi::Env env) {
  return ObjectWrap<MappedFile>::DefineClass(env, "MappedFile",
                                             {
                                                 InstanceMethod<&MappedFile::JS_write>("write"),
                                                 InstanceMethod<&MappedFile::JS_close>("close"),
                                             });
}

MappedFile::MappedFile(const Napi::CallbackInfo& info) : ObjectWrap<MappedFile>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3) ThrowError(env, "EINVAL", "MappedFile(fd, offset, length)");
  const uint64_t fd = ArgU64(info, 0, "fd");
  const uint64_t offset = ArgU64(info, 1, "offset");
  const uint64_t length = ArgU64(info, 2, "length");
  if (fd > INT32_MAX) ThrowError(env, "EINVAL", "fd out of range");
  // A SIGBUS in this mapping (the file shrank) must not end the process.
  vhost::EnsureFaultHandler();
  std::string err;
  mapping_ = vhost::Mapping::Create(static_cast<int>(fd), offset, length, &err);
  if (mapping_ == nullptr) ThrowError(env, "EINVAL", "cannot map [" + std::to_string(offset) + ", +" + std::to_string(length) + ") of the file: " + err);
  length_ = static_cast<size_t>(length);
}

Napi::Value MappedFile::JS_write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (mapping_ == nullptr) ThrowError(env, "ESHUTDOWN", "mapping closed");
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowError(env, "EINVAL", "write(bytes: Uint8Array, at)");
  }
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  const uint64_t at = ArgU64(info, 1, "at");
  if (at > length_ || bytes.ByteLength() > length_ - at) ThrowError(env, "ERANGE", "write outside the mapped range");
  std::memcpy(mapping_->data() + at, bytes.Data(), bytes.ByteLength());
  if (mapping_->faulted()) ThrowError(env, "EIO", "the mapped file shrank under the mapping (SIGBUS): the write is lost");
  return env.Undefined();
}

Napi::Value MappedFile::JS_close(const Napi::CallbackInfo& info) {
  mapping_.reset();
  return info.Env().Undefined();
}

Napi::Object InitMappedFile(Napi::Env env, Napi::Object exports) {
  exports.Set("MappedFile", MappedFile::DefineClass(env));
  return exports;
}

}  // namespace vbc
