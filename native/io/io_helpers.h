// Helpers of the I/O layer that are not io_uring: block device ioctls, fallocate and block
// range operations on a worker thread (rare, or the threadpool engine), and buffers for
// O_DIRECT.
#pragma once
#include <napi.h>

#include <string>

namespace vbc {


// Registers blockDeviceSize, logicalBlockSize, blockRange, fallocate, lockExclusive,
// sendUnixDatagram, alignedBuffer and isDirectIoAligned on exports.
void RegisterIoHelpers(Napi::Env env, Napi::Object exports);

}  // namespace vbc
