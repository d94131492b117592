// Helpers of the I/O layer that are not io_uring: block device ioctls, fallocate and block
// range operations on a worker thread (rare, or the threadpool engine), and buffers for
// O_DIRECT.
#pragma once
#include <napi.h>

#include <string>

namespace vbc {

// "EBADF", "EIO", ... for an errno value ("E<number>" when the C library has no name).
std::string ErrnoName(int err);
// Throws VhostError(`${what}: ${strerror}`, errno name).
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const std::string& what);

// Registers blockDeviceSize, logicalBlockSize, blockRange, fallocate, inodeGeneration,
// lockExclusive, sendUnixDatagram, alignedBuffer and isDirectIoAligned on exports.
void RegisterIoHelpers(Napi::Env env, Napi::Object exports);

}  // namespace vbc
