// Helpers of the I/O layer that are not io_uring: block device ioctls, fallocate, write-out
// starts and block range operations on a worker thread (rare, or the threadpool engine), and
// buffers for O_DIRECT.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

namespace vbc {

// Argument i as an exact non-negative integer below 2^53; throws VhostError EINVAL naming
// `what` otherwise (offsets, lengths, fds and tags passed from JS).
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* what);

// The i-th element of the JS array `arr` as a Uint8Array view: its bytes (already advanced by
// the view's byteOffset) and length. Throws VhostError EINVAL "bufs must hold Uint8Array views"
// otherwise. Shared by every native call that takes a scatter list (bufs: Uint8Array[]).
struct ByteView {
  void* data;
  size_t length;
};
ByteView Uint8ArrayElement(napi_env env, napi_value arr, uint32_t i);

// The longest range one write-out start (sync_file_range) takes: io_uring's SQE length field is
// 32 bits (IoRing::prepSyncFileRange); the threadpool's startWriteout keeps the same limit.
constexpr uint64_t kMaxWriteoutLength = UINT32_MAX;

// Registers blockDeviceSize, logicalBlockSize, blockRange, fallocate, startWriteout, inodeGeneration,
// lockExclusive, unlock, sendUnixDatagram, alignedBuffer and isDirectIoAligned on exports.
void RegisterIoHelpers(Napi::Env env, Napi::Object exports);

}  // namespace vbc
