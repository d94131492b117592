// MappedFile: a small range of a regular file mapped shared, for writes that must be in the page
// cache when the call returns (so a crash of this process keeps them, as a completed pwrite
// would) but cost no system call: the kill marks of the cache superblock (src/cache/kill-marks.ts,
// through IoEngine.syncRegion in src/io/uring-engine.ts), written at every kill of clean blocks.
//
// JS: new MappedFile(fd, offset, length); write(bytes, at) copies bytes to [offset + at, ...) of
// the file through the mapping; close() unmaps it (later writes throw ESHUTDOWN).
//
// The mapping is a vhost::Mapping (guest_memory.h): the same checks (a regular file at least
// offset + length bytes long) and the same SIGBUS containment. If the file shrinks under it, the
// fault handler replaces the mapping with anonymous pages and marks it faulted; a write that
// finds it faulted throws EIO (its bytes went nowhere durable), so the caller falls back.
// Writing the page after writeback cleaned it costs one write-protect fault (a few tens of µs),
// no more than the pwrite it replaces; otherwise a write is a memcpy.
#pragma once
#include <napi.h>

#include <memory>

#include "vhost/guest_memory.h"

namespace vbc {

class MappedFile : public Napi::ObjectWrap<MappedFile> {
 public:
  static Napi::Function DefineClass(Napi::Env env);
  explicit MappedFile(const Napi::CallbackInfo& info);

 private:
  Napi::Value JS_write(const Napi::CallbackInfo& info);
  Napi::Value JS_close(const Napi::CallbackInfo& info);

  std::shared_ptr<vhost::Mapping> mapping_;
  size_t length_ = 0;
};

Napi::Object InitMappedFile(Napi::Env env, Napi::Object exports);

}  // namespace vbc
