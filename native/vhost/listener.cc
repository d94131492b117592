// Backend: the listening side. Creates the unix socket (or adopts an inherited one), accepts
// one front end at a time, and closes everything on close().
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>

#include "vhost/backend_internal.h"

namespace vbc {
namespace vhost {

// ---------------------------------------------------------------------------------------------
// Socket setup

bool Backend::Listen(const std::string& path, uint32_t mode, SetupError* err) {
  auto fail = [&](int e, const std::string& what) {
    err->code = ErrnoName(e);
    err->message = what + " " + path + ": " + strerror(e);
    return false;
  };
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) return fail(ENAMETOOLONG, "socket path");

  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail(EEXIST, "not a socket:");
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return fail(errno, "socket");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    const int rc = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    const int e = errno;
    close(probe);
    if (rc == 0) {
      err->code = "EADDRINUSE";
      err->message = "socket " + path + " is in use by a live listener";
      return false;
    }
    if (e != ECONNREFUSED) return fail(e, "probing existing socket");
    if (unlink(path.c_str()) != 0 && errno != ENOENT) return fail(errno, "removing stale socket");
  }

  // Bind under a temporary name, set the mode, then rename into place: the socket is never
  // reachable with the umask's permissions. Falls back to binding in place when the temporary
  // name does not fit sun_path.
  const bool via_tmp = tmp.size() < sizeof(addr.sun_path);
  const std::string& bind_path = via_tmp ? tmp : path;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail(errno, "socket");
  std::memset(addr.sun_path, 0, sizeof addr.sun_path);
  std::memcpy(addr.sun_path, bind_path.c_str(), bind_path.size() + 1);
  if (via_tmp) unlink(tmp.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    close(fd);
    return fail(e, "bind");
  }
  if (chmod(bind_path.c_str(), mode) != 0 || listen(fd, 16) != 0 ||
      (via_tmp && rename(tmp.c_str(), path.c_str()) != 0)) {
    const int e = errno;
    close(fd);
    unlink(bind_path.c_str());
    return fail(e, "setting up socket");
  }
  if (lstat(path.c_str(), &st) == 0) {
    created_dev_ = st.st_dev;
    created_ino_ = st.st_ino;
  }
  created_path_ = path;
  listen_fd_ = fd;
  InitHandles();
  try {
    listen_watch_ = StartWatch(listen_fd_, kWatchListen, -1, UV_READABLE);
  } catch (const std::exception& e) {
    err->code = "EIO";
    err->message = e.what();
    return false;
  }
  DeviceEvent ev;
  ev.kind = DeviceEvent::kListening;
  ev.text = path;
  Emit(std::move(ev));
  Log(LogLevel::kInfo, "listening", {Str("path", path)});
  return true;
}

bool Backend::Adopt(int fd, SetupError* err) {
  auto fail = [&](int e, const std::string& what) {
    err->code = ErrnoName(e);
    err->message = "fd " + std::to_string(fd) + ": " + what + ": " + strerror(e);
    return false;
  };
  struct stat st;
  if (fstat(fd, &st) != 0) return fail(errno, "fstat");
  if (!S_ISSOCK(st.st_mode)) return fail(ENOTSOCK, "not a socket");
  int type = 0, acceptconn = 0, family = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return fail(errno, "SO_TYPE");
  len = sizeof family;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) != 0) return fail(errno, "SO_DOMAIN");
  if (type != SOCK_STREAM || family != AF_UNIX) return fail(EINVAL, "not a unix stream socket");
  len = sizeof acceptconn;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acceptconn, &len) != 0) {
    return fail(errno, "SO_ACCEPTCONN");
  }
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) return fail(errno, "O_NONBLOCK");
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  InitHandles();
  try {
    if (acceptconn) {
      listen_fd_ = fd;
      listen_watch_ = StartWatch(listen_fd_, kWatchListen, -1, UV_READABLE);
      DeviceEvent ev;
      ev.kind = DeviceEvent::kListening;
      Emit(std::move(ev));
      Log(LogLevel::kInfo, "listening on inherited socket", {Num("fd", fd)});
    } else {
      std::vector<LogField> who;
      if (!AdmitPeer(fd, &who)) return fail(EACCES, "peer uid not allowed");
      Log(LogLevel::kInfo, "front end credentials", std::move(who));
      StartConnection(fd);
    }
  } catch (const std::exception& e) {
    err->code = "EIO";
    err->message = e.what();
    return false;
  }
  return true;
}

void Backend::Close() {
  if (closed_) return;
  Disconnect("device closed");
  closed_ = true;
  events_.clear();
  StopWatch(&listen_watch_);
  CloseFd(&listen_fd_);
  if (!created_path_.empty()) {
    struct stat st;
    if (lstat(created_path_.c_str(), &st) == 0 && st.st_dev == created_dev_ &&
        st.st_ino == created_ino_) {
      unlink(created_path_.c_str());
    }
  }
  if (check_ != nullptr) {
    uv_check_stop(check_);
    uv_idle_stop(idle_);
    check_active_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(check_), OnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(idle_), OnHandleClosed);
    check_ = nullptr;
    idle_ = nullptr;
  } else if (open_handles_ == 0) {
    host_->AllHandlesClosed();
  }
}

void Backend::OnListenReadable() {
  const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      Log(LogLevel::kWarn, "accept failed", {Str("error", ErrnoName(errno))});
    }
    return;
  }
  if (conn_.fd >= 0) {
    // A front end that reconnects may be accepted before its old connection's end was read.
    pollfd pfd{conn_.fd, POLLRDHUP, 0};
    if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      Disconnect("front end closed the connection");
    }
  }
  std::vector<LogField> who;
  if (!AdmitPeer(fd, &who)) {
    close(fd);
    return;
  }
  if (conn_.fd >= 0) {
    Log(LogLevel::kWarn, "refusing a second front end while one is connected", std::move(who));
    close(fd);
    return;
  }
  Log(LogLevel::kInfo, "front end credentials", std::move(who));
  StartConnection(fd);
}

bool Backend::AdmitPeer(int fd, std::vector<LogField>* who) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    Log(LogLevel::kWarn, "refusing a front end: no peer credentials", {Str("error", ErrnoName(errno))});
    return false;
  }
  *who = {Num("peerPid", cred.pid), Num("peerUid", cred.uid), Num("peerGid", cred.gid)};
  const std::vector<uint32_t>& allowed = options_.allowed_uids;
  if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), cred.uid) == allowed.end()) {
    Log(LogLevel::kWarn, "refusing a front end: uid not allowed", *who);
    return false;
  }
  return true;
}

}  // namespace vhost
}  // namespace vbc
