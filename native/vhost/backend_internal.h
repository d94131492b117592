// Helpers shared by the files implementing Backend (listener.cc, connection.cc, handlers.cc,
// queues.cc); not part of the back end's interface.
#pragma once
#include <uv.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "js/errors.h"  // ErrnoName
#include "vhost/backend.h"

namespace vbc {
namespace vhost {

enum WatchKind { kWatchListen, kWatchConn, kWatchKick };

// A uv_poll_t on one fd of the back end (listen socket, connection, kick fd).
struct Backend::Watch {
  uv_poll_t handle;
  Backend* backend;
  int fd;
  int kind;
  int queue;
};

inline std::string NameOf(uint32_t request) {
  const char* n = MessageName(request);
  return n != nullptr ? n : "VHOST_USER_UNKNOWN_" + std::to_string(request);
}

inline LogField Num(const char* key, double v) { return LogField{key, false, v, {}}; }
inline LogField Str(const char* key, std::string v) { return LogField{key, true, 0, std::move(v)}; }

inline uint64_t U64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

}  // namespace vhost
}  // namespace vbc
