#include "vhost/backend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>

namespace vbc {
namespace vhost {

namespace {
enum WatchKind { kWatchListen, kWatchConn, kWatchKick };

std::string ErrnoName(int e) {
  const char* n = strerrorname_np(e);
  return n != nullptr ? n : "EIO";
}

std::string NameOf(uint32_t request) {
  const char* n = MessageName(request);
  return n != nullptr ? n : "VHOST_USER_UNKNOWN_" + std::to_string(request);
}

LogField Num(const char* key, double v) { return LogField{key, false, v, {}}; }
LogField Str(const char* key, std::string v) { return LogField{key, true, 0, std::move(v)}; }

uint64_t U64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

// Payload size rule of a request we handle: exact size, or -1 for "checked by the handler".
int ExpectedSize(uint32_t request) {
  switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_SET_OWNER:
    case VHOST_USER_RESET_OWNER:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_GET_MAX_MEM_SLOTS:
    case VHOST_USER_RESET_DEVICE:
      return 0;
    case VHOST_USER_SET_FEATURES:
    case VHOST_USER_SET_PROTOCOL_FEATURES:
    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR:
      return 8;
    case VHOST_USER_SET_VRING_NUM:
    case VHOST_USER_SET_VRING_BASE:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_SET_VRING_ENABLE:
      return sizeof(VringState);
    case VHOST_USER_SET_VRING_ADDR:
      return sizeof(VringAddr);
    case VHOST_USER_ADD_MEM_REG:
    case VHOST_USER_REM_MEM_REG:
      return sizeof(MemRegMsg);
    default:
      return -1;
  }
}
}  // namespace

struct Backend::Watch {
  uv_poll_t handle;
  Backend* backend;
  int fd;
  int kind;
  int queue;
};

// ---------------------------------------------------------------------------------------------
// Construction, uv plumbing

Backend::Backend(uv_loop_t* loop, BackendHost* host, BackendOptions options)
    : loop_(loop), host_(host), options_(std::move(options)) {
  payload_.resize(kMaxPayload);
}

void Backend::InitHandles() {
  check_ = new uv_check_t;
  idle_ = new uv_idle_t;
  uv_check_init(loop_, check_);
  uv_idle_init(loop_, idle_);
  check_->data = this;
  idle_->data = this;
  open_handles_ += 2;
}

Backend::~Backend() {
  // Normally Close() ran and every handle is closed. If the environment is torn down without
  // close(), at least release the descriptors.
  if (!closed_) {
    CloseFd(&conn_fd_);
    CloseFd(&listen_fd_);
    for (Queue& q : queues_) {
      CloseFd(&q.kick_fd);
      CloseFd(&q.call_fd);
    }
  }
}

Backend::Watch* Backend::StartWatch(int fd, int kind, int queue, int events) {
  Watch* w = new Watch();
  w->backend = this;
  w->fd = fd;
  w->kind = kind;
  w->queue = queue;
  int rc = uv_poll_init(loop_, &w->handle, fd);
  if (rc != 0) {
    delete w;
    throw std::runtime_error(std::string("uv_poll_init: ") + uv_strerror(rc));
  }
  w->handle.data = w;
  open_handles_++;
  rc = uv_poll_start(&w->handle, events, OnPoll);
  if (rc != 0) {
    StopWatch(&w);
    throw std::runtime_error(std::string("uv_poll_start: ") + uv_strerror(rc));
  }
  return w;
}

void Backend::StopWatch(Watch** w) {
  if (*w == nullptr) return;
  uv_poll_stop(&(*w)->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&(*w)->handle), OnWatchClosed);
  *w = nullptr;
}


template <typename Body>
void Backend::Guarded(Body&& body) {
  depth_++;
  try {
    body();
  } catch (const std::exception& e) {
    Panic(std::string("internal error: ") + e.what());
  } catch (...) {
    Panic("internal error");
  }
  depth_--;
  if (depth_ == 0) FlushEvents();
}

void Backend::OnWatchClosed(uv_handle_t* h) {
  Watch* w = static_cast<Watch*>(h->data);
  Backend* b = w->backend;
  delete w;
  b->HandleClosed();
}

void Backend::OnHandleClosed(uv_handle_t* h) {
  Backend* b = static_cast<Backend*>(h->data);
  if (h->type == UV_CHECK) {
    delete reinterpret_cast<uv_check_t*>(h);
  } else {
    delete reinterpret_cast<uv_idle_t*>(h);
  }
  b->HandleClosed();
}

void Backend::HandleClosed() {
  open_handles_--;
  if (closed_ && open_handles_ == 0) host_->AllHandlesClosed();
}

void Backend::OnPoll(uv_poll_t* h, int status, int events) {
  Watch* w = static_cast<Watch*>(h->data);
  Backend* b = w->backend;
  b->Guarded([&] {
    switch (w->kind) {
      case kWatchListen:
        b->OnListenReadable();
        break;
      case kWatchConn:
        if (status < 0) {
          b->Disconnect(std::string("connection poll error: ") + uv_strerror(status));
        } else if ((events & UV_READABLE) != 0) {
          b->OnConnReadable();
        } else if ((events & UV_DISCONNECT) != 0) {
          b->Disconnect("front end closed the connection");
        }
        break;
      case kWatchKick:
        if (status < 0) {
          b->Panic(std::string("kick fd poll error: ") + uv_strerror(status));
        } else {
          b->OnKick(static_cast<uint32_t>(w->queue));
        }
        break;
    }
  });
}

void Backend::ScheduleCheck() {
  if (closed_ || check_active_ || check_ == nullptr) return;
  check_active_ = true;
  uv_check_start(check_, OnCheck);
  uv_idle_start(idle_, OnIdle);
}

void Backend::OnIdle(uv_idle_t*) {}

void Backend::OnCheck(uv_check_t* h) {
  Backend* b = static_cast<Backend*>(h->data);
  b->Guarded([b] { b->RunCheck(); });
}

void Backend::RunCheck() {
  check_active_ = false;
  uv_check_stop(check_);
  uv_idle_stop(idle_);
  const uint64_t serial = conn_serial_;
  for (uint32_t i = 0; i < queues_.size(); i++) {
    if (!queues_[i].process_pending) continue;
    queues_[i].process_pending = false;
    ProcessQueue(i);
    if (serial != conn_serial_ || closed_) return;
  }
  for (Queue& q : queues_) {
    if (!q.notify_pending) continue;
    q.notify_pending = false;
    if (q.call_fd >= 0 && q.ring.ShouldNotify()) {
      const uint64_t one = 1;
      if (write(q.call_fd, &one, sizeof one) < 0 && errno != EAGAIN) {
        Log(LogLevel::kWarn, "call fd write failed", {Str("error", ErrnoName(errno))});
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Events

void Backend::Emit(DeviceEvent ev) {
  if (closed_) return;
  events_.push_back(std::move(ev));
  if (depth_ == 0) ScheduleCheck();
}

void Backend::Log(LogLevel level, std::string msg, std::vector<LogField> fields) {
  DeviceEvent ev;
  ev.kind = DeviceEvent::kLog;
  ev.level = level;
  ev.text = std::move(msg);
  ev.fields = std::move(fields);
  Emit(std::move(ev));
}

void Backend::FlushEvents() {
  if (flushing_) return;
  flushing_ = true;
  while (!events_.empty() && !closed_) {
    DeviceEvent ev = std::move(events_.front());
    events_.pop_front();
    host_->EmitEvent(ev);
  }
  if (closed_) events_.clear();
  flushing_ = false;
}

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

// ---------------------------------------------------------------------------------------------
// Connection

void Backend::OnListenReadable() {
  const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      Log(LogLevel::kError, "accept failed", {Str("error", ErrnoName(errno))});
    }
    return;
  }
  if (conn_fd_ >= 0) {
    Log(LogLevel::kWarn, "refusing a second front end while one is connected");
    close(fd);
    return;
  }
  StartConnection(fd);
}

void Backend::StartConnection(int fd) {
  conn_fd_ = fd;
  conn_serial_++;
  hdr_got_ = 0;
  payload_got_ = 0;
  reading_paused_ = false;
  features_ = 0;
  protocol_features_ = 0;
  features_set_ = false;
  deferred_queue_ = -1;
  queues_.clear();
  queues_.resize(options_.max_queues);
  StopWatch(&listen_watch_);
  conn_watch_ = StartWatch(fd, kWatchConn, -1, UV_READABLE | UV_DISCONNECT);
  DeviceEvent ev;
  ev.kind = DeviceEvent::kConnected;
  Emit(std::move(ev));
  Log(LogLevel::kInfo, "front end connected");
}

void Backend::Disconnect(const std::string& reason) {
  if (conn_fd_ < 0) return;
  StopAllQueues();
  queues_.clear();
  StopWatch(&conn_watch_);
  CloseFd(&conn_fd_);
  conn_serial_++;
  for (int& fd : fds_) CloseFd(&fd);
  fds_.clear();
  hdr_got_ = 0;
  payload_got_ = 0;
  reading_paused_ = false;
  deferred_queue_ = -1;
  features_ = 0;
  protocol_features_ = 0;
  features_set_ = false;
  mem_.Clear();
  host_->MemoryTableChanged();
  DeviceEvent ev;
  ev.kind = DeviceEvent::kDisconnected;
  ev.text = reason;
  Emit(std::move(ev));
  Log(LogLevel::kInfo, "front end disconnected", {Str("reason", reason)});
  if (!closed_ && listen_fd_ >= 0) {
    listen_watch_ = StartWatch(listen_fd_, kWatchListen, -1, UV_READABLE);
  }
}

void Backend::Panic(const std::string& reason) {
  if (conn_fd_ < 0) {
    Log(LogLevel::kError, "internal error without connection", {Str("reason", reason)});
    return;
  }
  Log(LogLevel::kError, "device broken: " + reason);
  DeviceEvent ev;
  ev.kind = DeviceEvent::kBroken;
  ev.text = reason;
  Emit(std::move(ev));
  Disconnect(reason);
}

void Backend::OnConnReadable() { ReadMessages(); }

void Backend::Fail(const std::string& reason) {
  Guarded([&] { Panic(reason); });
}

bool Backend::ReadMessages() {
  const uint64_t serial = conn_serial_;
  while (conn_fd_ >= 0 && serial == conn_serial_ && !reading_paused_ && !closed_) {
    const bool in_header = hdr_got_ < sizeof(MsgHeader);
    iovec iov;
    if (in_header) {
      iov.iov_base = reinterpret_cast<uint8_t*>(&hdr_) + hdr_got_;
      iov.iov_len = sizeof(MsgHeader) - hdr_got_;
    } else {
      iov.iov_base = payload_.data() + payload_got_;
      iov.iov_len = hdr_.size - payload_got_;
    }
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = recvmsg(conn_fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      Disconnect(std::string("recvmsg: ") + ErrnoName(errno));
      return false;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds_.push_back(fd);
      }
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds_.size() > kMaxFds) {
      Panic("more than " + std::to_string(kMaxFds) + " fds with one message");
      return false;
    }
    if (n == 0) {
      Disconnect(hdr_got_ == 0 && fds_.empty() ? "front end closed the connection"
                                               : "connection closed in the middle of a message");
      return false;
    }
    if (in_header) {
      hdr_got_ += static_cast<size_t>(n);
      if (hdr_got_ < sizeof(MsgHeader)) continue;
      if ((hdr_.flags & kFlagVersionMask) != kVersion) {
        Panic("bad protocol version in header flags " + std::to_string(hdr_.flags));
        return false;
      }
      if ((hdr_.flags & ~(kFlagVersionMask | kFlagNeedReply)) != 0) {
        Panic("unexpected flags " + std::to_string(hdr_.flags) + " in " + NameOf(hdr_.request));
        return false;
      }
      if (hdr_.size > kMaxPayload) {
        Panic("payload of " + std::to_string(hdr_.size) + " bytes in " + NameOf(hdr_.request) +
              " exceeds " + std::to_string(kMaxPayload));
        return false;
      }
      if (hdr_.size > 0) continue;
    } else {
      payload_got_ += static_cast<size_t>(n);
      if (payload_got_ < hdr_.size) continue;
    }
    Dispatch();
  }
  return conn_fd_ >= 0 && serial == conn_serial_;
}

bool Backend::SendReply(uint32_t request, const void* payload, uint32_t size) {
  uint8_t buf[sizeof(MsgHeader) + sizeof(ConfigMsgHeader) + kMaxConfigSize];
  if (size > sizeof buf - sizeof(MsgHeader)) {
    Panic("reply too large");
    return false;
  }
  MsgHeader h{request, kVersion | kFlagReply, size};
  std::memcpy(buf, &h, sizeof h);
  if (size > 0) std::memcpy(buf + sizeof h, payload, size);
  const size_t total = sizeof h + size;
  ssize_t n;
  do {
    n = send(conn_fd_, buf, total, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(total)) {
    const std::string why = n < 0 ? ErrnoName(errno) : "short write";
    Disconnect("could not send reply to " + NameOf(request) + ": " + why);
    return false;
  }
  return true;
}

bool Backend::SendU64Reply(uint32_t request, uint64_t value) {
  return SendReply(request, &value, sizeof value);
}

void Backend::Dispatch() {
  const MsgHeader h = hdr_;
  std::vector<int> fds;
  fds.swap(fds_);
  hdr_got_ = 0;
  payload_got_ = 0;
  const uint64_t serial = conn_serial_;
  Log(LogLevel::kDebug, NameOf(h.request),
      {Num("request", h.request), Num("size", h.size), Num("fds", static_cast<double>(fds.size())),
       Num("flags", h.flags)});
  Result r;
  const int expected = ExpectedSize(h.request);
  if (expected >= 0 && h.size != static_cast<uint32_t>(expected)) {
    Panic(NameOf(h.request) + " with a payload of " + std::to_string(h.size) + " bytes, expected " +
          std::to_string(expected));
    r = Result::kDropped;
  } else {
    r = Handle(h, payload_.data(), fds);
  }
  for (int& fd : fds) CloseFd(&fd);
  if (serial != conn_serial_ || conn_fd_ < 0) return;
  if ((r == Result::kOk || r == Result::kFail) && (h.flags & kFlagNeedReply) != 0 &&
      (protocol_features_ & Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK)) != 0 &&
      !HasInherentReply(h.request, protocol_features_)) {
    SendU64Reply(h.request, r == Result::kOk ? 0 : 1);
  }
}

Backend::Result Backend::Refuse(const MsgHeader& h, const std::string& reason) {
  if ((h.flags & kFlagNeedReply) != 0 &&
      (protocol_features_ & Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK)) != 0) {
    Log(LogLevel::kWarn, NameOf(h.request) + " refused: " + reason, {Num("request", h.request)});
    return Result::kFail;
  }
  Panic(NameOf(h.request) + ": " + reason);
  return Result::kDropped;
}

Backend::Result Backend::Unsupported(const MsgHeader& h) {
  if (HasInherentReply(h.request, protocol_features_)) {
    Panic("unsupported message " + NameOf(h.request) + " requires a reply");
    return Result::kDropped;
  }
  Log(LogLevel::kWarn, NameOf(h.request), {Num("request", h.request), Str("error", "unsupported message")});
  return Result::kFail;
}

Backend::Queue* Backend::QueueFor(uint32_t index, const char* what) {
  if (index >= queues_.size()) {
    Panic(std::string(what) + ": queue index " + std::to_string(index) + " >= " +
          std::to_string(queues_.size()));
    return nullptr;
  }
  return &queues_[index];
}

Backend::Result Backend::Handle(const MsgHeader& h, const uint8_t* p, std::vector<int>& fds) {
  const uint64_t offered = options_.device_features | Bit(VIRTIO_F_VERSION_1) |
                           Bit(VIRTIO_RING_F_INDIRECT_DESC) | Bit(VIRTIO_RING_F_EVENT_IDX) |
                           Bit(VHOST_USER_F_PROTOCOL_FEATURES);
  const uint64_t offered_protocol =
      Bit(VHOST_USER_PROTOCOL_F_MQ) | Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK) |
      Bit(VHOST_USER_PROTOCOL_F_CONFIG) | Bit(VHOST_USER_PROTOCOL_F_RESET_DEVICE) |
      Bit(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
  const char* name = MessageName(h.request);
  const std::string nm = NameOf(h.request);

  switch (h.request) {
    case VHOST_USER_GET_FEATURES:
      return SendU64Reply(h.request, offered) ? Result::kOk : Result::kDropped;

    case VHOST_USER_SET_FEATURES: {
      const uint64_t v = U64(p);
      if ((v & ~offered) != 0) {
        Panic("front end acknowledged features we did not offer: " + std::to_string(v & ~offered));
        return Result::kDropped;
      }
      features_ = v;
      features_set_ = true;
      ApplyFeatures();
      return Result::kOk;
    }

    case VHOST_USER_GET_PROTOCOL_FEATURES:
      return SendU64Reply(h.request, offered_protocol) ? Result::kOk : Result::kDropped;

    case VHOST_USER_SET_PROTOCOL_FEATURES: {
      const uint64_t v = U64(p);
      if ((v & ~offered_protocol) != 0) {
        Panic("front end acknowledged protocol features we did not offer");
        return Result::kDropped;
      }
      protocol_features_ = v;
      return Result::kOk;
    }

    case VHOST_USER_SET_OWNER:
      return Result::kOk;

    case VHOST_USER_RESET_OWNER:
      StopAllQueues();
      return Result::kOk;

    case VHOST_USER_RESET_DEVICE:
      StopAllQueues();
      features_ = 0;
      features_set_ = false;
      return Result::kOk;

    case VHOST_USER_GET_QUEUE_NUM:
      return SendU64Reply(h.request, options_.max_queues) ? Result::kOk : Result::kDropped;

    case VHOST_USER_GET_MAX_MEM_SLOTS:
      return SendU64Reply(h.request, kMaxMemSlots) ? Result::kOk : Result::kDropped;

    case VHOST_USER_SET_MEM_TABLE: {
      if (h.size < 8) {
        Panic("SET_MEM_TABLE payload too short");
        return Result::kDropped;
      }
      uint32_t n;
      std::memcpy(&n, p, 4);
      if (n > kMaxMemTableRegions ||
          (h.size != 8 + 32 * n && h.size != sizeof(MemTableMsg))) {
        Panic("SET_MEM_TABLE with " + std::to_string(n) + " regions in " + std::to_string(h.size) +
              " bytes");
        return Result::kDropped;
      }
      if (fds.size() != n) {
        Panic("SET_MEM_TABLE with " + std::to_string(n) + " regions but " +
              std::to_string(fds.size()) + " fds");
        return Result::kDropped;
      }
      MemRegionDesc descs[kMaxMemTableRegions];
      std::memcpy(descs, p + 8, 32 * n);
      std::string err;
      if (!mem_.SetTable(descs, n, fds.data(), &err)) {
        Panic("SET_MEM_TABLE: " + err);
        return Result::kDropped;
      }
      for (uint32_t i = 0; i < n; i++) {
        Log(LogLevel::kDebug, "memory region",
            {Num("gpa", static_cast<double>(descs[i].guest_phys_addr)),
             Num("size", static_cast<double>(descs[i].memory_size)),
             Num("offset", static_cast<double>(descs[i].mmap_offset))});
      }
      host_->MemoryTableChanged();
      return ReResolveRings() ? Result::kOk : Result::kDropped;
    }

    case VHOST_USER_ADD_MEM_REG: {
      if (fds.size() != 1) {
        Panic("ADD_MEM_REG needs exactly one fd, got " + std::to_string(fds.size()));
        return Result::kDropped;
      }
      MemRegMsg m;
      std::memcpy(&m, p, sizeof m);
      std::string err;
      if (!mem_.AddRegion(m.region, fds[0], &err)) return Refuse(h, err);
      return ReResolveRings() ? Result::kOk : Result::kDropped;
    }

    case VHOST_USER_REM_MEM_REG: {
      if (fds.size() > 1) {
        Panic("REM_MEM_REG with more than one fd");
        return Result::kDropped;
      }
      MemRegMsg m;
      std::memcpy(&m, p, sizeof m);
      std::string err;
      if (!mem_.RemoveRegion(m.region, &err)) return Refuse(h, err);
      host_->MemoryTableChanged();
      return ReResolveRings() ? Result::kOk : Result::kDropped;
    }

    case VHOST_USER_SET_VRING_NUM: {
      VringState s;
      std::memcpy(&s, p, sizeof s);
      Queue* q = QueueFor(s.index, name);
      if (q == nullptr) return Result::kDropped;
      if (s.num == 0 || (s.num & (s.num - 1)) != 0 || s.num > options_.max_queue_size) {
        Panic("SET_VRING_NUM " + std::to_string(s.num) + ": not a power of two <= " +
              std::to_string(options_.max_queue_size));
        return Result::kDropped;
      }
      if (q->running || q->inflight > 0) {
        Panic("SET_VRING_NUM on a started queue");
        return Result::kDropped;
      }
      q->ring.SetNum(s.num);
      q->num_set = true;
      if (q->ring.has_addr()) {
        std::string err;
        if (!q->ring.Resolve(mem_, false, &err)) q->ring.Unresolve();
      }
      return Result::kOk;
    }

    case VHOST_USER_SET_VRING_BASE: {
      VringState s;
      std::memcpy(&s, p, sizeof s);
      Queue* q = QueueFor(s.index, name);
      if (q == nullptr) return Result::kDropped;
      if (s.num > 0xffff) {
        Panic("SET_VRING_BASE " + std::to_string(s.num) + " > 65535");
        return Result::kDropped;
      }
      if (q->running || q->inflight > 0) {
        Panic("SET_VRING_BASE on a started queue");
        return Result::kDropped;
      }
      q->ring.SetBase(static_cast<uint16_t>(s.num));
      return Result::kOk;
    }

    case VHOST_USER_SET_VRING_ADDR: {
      VringAddr a;
      std::memcpy(&a, p, sizeof a);
      Queue* q = QueueFor(a.index, name);
      if (q == nullptr) return Result::kDropped;
      if (!q->num_set) {
        Panic("SET_VRING_ADDR before SET_VRING_NUM");
        return Result::kDropped;
      }
      if (q->running || q->inflight > 0) {
        Panic("SET_VRING_ADDR on a started queue");
        return Result::kDropped;
      }
      if ((a.flags & 1) != 0) Log(LogLevel::kWarn, "vring logging requested but not supported");
      q->ring.SetAddr(a.desc_user_addr, a.avail_user_addr, a.used_user_addr);
      std::string err;
      if (!q->ring.Resolve(mem_, true, &err)) {
        Panic("SET_VRING_ADDR queue " + std::to_string(a.index) + ": " + err);
        return Result::kDropped;
      }
      if (q->ring.used_idx() != q->ring.last_avail_idx()) {
        Log(LogLevel::kWarn, "used index differs from the base: requests were lost",
            {Num("queue", a.index), Num("used", q->ring.used_idx()),
             Num("base", q->ring.last_avail_idx())});
      }
      UpdateRunning(a.index);
      return Result::kOk;
    }

    case VHOST_USER_GET_VRING_BASE: {
      VringState s;
      std::memcpy(&s, p, sizeof s);
      Queue* q = QueueFor(s.index, name);
      if (q == nullptr) return Result::kDropped;
      StopQueue(s.index, false);
      if (q->inflight > 0) {
        q->stop_pending = true;
        deferred_queue_ = static_cast<int>(s.index);
        reading_paused_ = true;
        uv_poll_start(&conn_watch_->handle, UV_DISCONNECT, OnPoll);
        Log(LogLevel::kDebug, "GET_VRING_BASE waits for in-flight requests",
            {Num("queue", s.index), Num("inflight", q->inflight)});
        return Result::kDeferred;
      }
      return FinishGetVringBase(s.index) ? Result::kOk : Result::kDropped;
    }

    case VHOST_USER_SET_VRING_KICK:
    case VHOST_USER_SET_VRING_CALL:
    case VHOST_USER_SET_VRING_ERR: {
      const uint64_t v = U64(p);
      const uint32_t index = static_cast<uint32_t>(v & kVringIndexMask);
      const bool nofd = (v & kVringNoFdMask) != 0;
      if ((v & ~(kVringIndexMask | kVringNoFdMask)) != 0) {
        Panic(nm + " with reserved bits set");
        return Result::kDropped;
      }
      Queue* q = QueueFor(index, name);
      if (q == nullptr) return Result::kDropped;
      if (fds.size() != (nofd ? 0u : 1u)) {
        Panic(nm + " with " + std::to_string(fds.size()) + " fds" + (nofd ? " (no-fd flag)" : ""));
        return Result::kDropped;
      }
      if (h.request == VHOST_USER_SET_VRING_ERR) return Result::kOk;  // error fd not used
      if (h.request == VHOST_USER_SET_VRING_CALL) {
        CloseFd(&q->call_fd);
        if (!nofd) std::swap(q->call_fd, fds[0]);
        return Result::kOk;
      }
      if (nofd) {
        StopQueue(index, false);
        Log(LogLevel::kWarn, "SET_VRING_KICK without fd (polling) is not supported",
            {Num("queue", index)});
        return Result::kFail;
      }
      if (q->running) {
        StopWatch(&q->kick_watch);
        CloseFd(&q->kick_fd);
        std::swap(q->kick_fd, fds[0]);
        q->kick_watch = StartWatch(q->kick_fd, kWatchKick, static_cast<int>(index), UV_READABLE);
        q->process_pending = true;
        ScheduleCheck();
      } else {
        CloseFd(&q->kick_fd);
        std::swap(q->kick_fd, fds[0]);
        UpdateRunning(index);
      }
      return Result::kOk;
    }

    case VHOST_USER_SET_VRING_ENABLE: {
      VringState s;
      std::memcpy(&s, p, sizeof s);
      Queue* q = QueueFor(s.index, name);
      if (q == nullptr) return Result::kDropped;
      if (s.num > 1) {
        Panic("SET_VRING_ENABLE with " + std::to_string(s.num));
        return Result::kDropped;
      }
      q->enable = static_cast<int>(s.num);
      UpdateRunning(s.index);
      return Result::kOk;
    }

    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_SET_CONFIG: {
      if (h.size < sizeof(ConfigMsgHeader)) {
        Panic(nm + " payload too short");
        return Result::kDropped;
      }
      ConfigMsgHeader c;
      std::memcpy(&c, p, sizeof c);
      if (h.size != sizeof c + c.size) {
        Panic(nm + " size " + std::to_string(c.size) + " does not match the payload");
        return Result::kDropped;
      }
      const bool in_range = c.size <= kMaxConfigSize && c.offset <= kMaxConfigSize - c.size;
      if (h.request == VHOST_USER_SET_CONFIG) {
        if (!in_range) return Refuse(h, "config write out of range");
        DeviceEvent ev;
        ev.kind = DeviceEvent::kConfigWrite;
        ev.offset = c.offset;
        ev.data.assign(p + sizeof c, p + sizeof c + c.size);
        Emit(std::move(ev));
        return Result::kOk;
      }
      if (!in_range) {
        Log(LogLevel::kWarn, "GET_CONFIG out of range",
            {Num("offset", c.offset), Num("size", c.size)});
        return SendReply(h.request, nullptr, 0) ? Result::kOk : Result::kDropped;
      }
      uint8_t out[sizeof(ConfigMsgHeader) + kMaxConfigSize] = {};
      std::memcpy(out, &c, sizeof c);
      const std::vector<uint8_t>& img = options_.config;
      for (uint32_t i = 0; i < c.size; i++) {
        const size_t at = static_cast<size_t>(c.offset) + i;
        out[sizeof c + i] = at < img.size() ? img[at] : 0;
      }
      return SendReply(h.request, out, static_cast<uint32_t>(sizeof c + c.size)) ? Result::kOk
                                                                                : Result::kDropped;
    }

    default:
      return Unsupported(h);
  }
}

bool Backend::FinishGetVringBase(uint32_t index) {
  Queue& q = queues_[index];
  VringState s{index, q.ring.last_avail_idx()};
  ClearSlots(q);
  q.stop_pending = false;
  const bool was_deferred = deferred_queue_ == static_cast<int>(index);
  if (was_deferred) deferred_queue_ = -1;
  if (!SendReply(VHOST_USER_GET_VRING_BASE, &s, sizeof s)) return false;
  if (was_deferred && reading_paused_) {
    reading_paused_ = false;
    uv_poll_start(&conn_watch_->handle, UV_READABLE | UV_DISCONNECT, OnPoll);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Rings

bool Backend::QueueEnabled(const Queue& q) const {
  if (q.enable >= 0) return q.enable == 1;
  return (features_ & Bit(VHOST_USER_F_PROTOCOL_FEATURES)) == 0;
}

void Backend::ApplyFeatures() {
  for (uint32_t i = 0; i < queues_.size(); i++) {
    queues_[i].ring.SetFeatures((features_ & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0,
                                (features_ & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0);
    UpdateRunning(i);
  }
}

void Backend::UpdateRunning(uint32_t index) {
  Queue& q = queues_[index];
  const bool should = q.num_set && q.ring.resolved() && q.kick_fd >= 0 && QueueEnabled(q) &&
                      !q.stop_pending;
  if (should == q.running) return;
  if (should) {
    q.ring.SetFeatures((features_ & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0,
                       (features_ & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0);
    if (q.inflight == 0) {
      q.slots.assign(q.ring.num(), Slot());
      q.gen = ++gen_counter_;
    }
    q.kick_watch = StartWatch(q.kick_fd, kWatchKick, static_cast<int>(index), UV_READABLE);
    q.running = true;
    q.process_pending = true;
    ScheduleCheck();
    DeviceEvent ev;
    ev.kind = DeviceEvent::kQueueStarted;
    ev.queue = static_cast<int>(index);
    ev.size = q.ring.num();
    Emit(std::move(ev));
    Log(LogLevel::kInfo, "queue started",
        {Num("queue", index), Num("size", q.ring.num()), Num("base", q.ring.last_avail_idx()),
         Num("eventIdx", q.ring.event_idx() ? 1 : 0)});
  } else {
    q.running = false;
    q.process_pending = false;
    StopWatch(&q.kick_watch);
    DeviceEvent ev;
    ev.kind = DeviceEvent::kQueueStopped;
    ev.queue = static_cast<int>(index);
    Emit(std::move(ev));
    Log(LogLevel::kInfo, "queue stopped", {Num("queue", index)});
  }
}

void Backend::StopQueue(uint32_t index, bool clear_config) {
  Queue& q = queues_[index];
  CloseFd(&q.kick_fd);
  UpdateRunning(index);  // kick fd gone: stops a running queue
  if (clear_config) {
    CloseFd(&q.call_fd);
    q = Queue();
  }
}

void Backend::StopAllQueues() {
  for (uint32_t i = 0; i < queues_.size(); i++) StopQueue(i, true);
  if (deferred_queue_ >= 0) {
    deferred_queue_ = -1;
    if (reading_paused_ && conn_watch_ != nullptr) {
      reading_paused_ = false;
      uv_poll_start(&conn_watch_->handle, UV_READABLE | UV_DISCONNECT, OnPoll);
    }
  }
}

void Backend::ClearSlots(Queue& q) {
  q.slots.clear();
  q.inflight = 0;
}

bool Backend::ReResolveRings() {
  for (uint32_t i = 0; i < queues_.size(); i++) {
    Queue& q = queues_[i];
    if (!q.ring.has_addr() || !q.num_set) continue;
    std::string err;
    if (!q.ring.Resolve(mem_, false, &err)) {
      if (q.running || q.inflight > 0) {
        Panic("queue " + std::to_string(i) + " after a memory table change: " + err);
        return false;
      }
      q.ring.Unresolve();
    }
    UpdateRunning(i);
  }
  return true;
}

void Backend::OnKick(uint32_t index) {
  if (index >= queues_.size()) return;
  Queue& q = queues_[index];
  if (q.kick_fd < 0) return;
  // One read per readiness report; the fd is the front end's (blocking) eventfd, so check
  // readiness first to never block the loop.
  pollfd pfd{q.kick_fd, POLLIN, 0};
  if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN) != 0) {
    uint64_t v;
    if (read(q.kick_fd, &v, sizeof v) < 0 && errno != EAGAIN && errno != EINTR) {
      Panic("kick fd read failed: " + ErrnoName(errno));
      return;
    }
  }
  ProcessQueue(index);
}

void Backend::ProcessQueue(uint32_t index) {
  if (index >= queues_.size() || !queues_[index].running) return;
  Queue& q = queues_[index];
  const uint64_t serial = conn_serial_;
  std::vector<PendingRequest> reqs;
  std::vector<HostIov> segs;
  Chain chain;
  blk::Request br;
  bool answered = false;
  for (;;) {
    std::string err;
    const SplitVring::Pop r = q.ring.PopChain(mem_, &chain, &err);
    if (r == SplitVring::Pop::kEmpty) {
      if (q.ring.ArmKick()) continue;
      break;
    }
    if (r == SplitVring::Pop::kError) {
      Panic("queue " + std::to_string(index) + ": " + err);
      return;
    }
    Slot& slot = q.slots[chain.head];
    if (slot.active) {
      Panic("queue " + std::to_string(index) + ": head " + std::to_string(chain.head) +
            " made available while in flight");
      return;
    }
    const blk::Carve c = blk::CarveRequest(chain, options_.limits, &br, &err);
    if (c == blk::Carve::kMalformed) {
      Panic("queue " + std::to_string(index) + ": " + err);
      return;
    }
    if (c == blk::Carve::kRejected) {
      __atomic_store_n(br.status, blk::VIRTIO_BLK_S_IOERR, __ATOMIC_RELAXED);
      q.ring.AddUsed(chain.head, 1);
      answered = true;
      Log(LogLevel::kWarn, "request answered IOERR: " + err,
          {Num("queue", index), Num("type", br.type)});
      continue;
    }
    slot.active = true;
    slot.type = br.type;
    slot.data_len = br.data_len;
    slot.status = br.status;
    slot.status_mapping = br.status_mapping->shared_from_this();
    q.inflight++;
    reqs.push_back(PendingRequest{SlotId(q.gen, index, chain.head), br.type, br.sector,
                                  br.data_len, static_cast<uint32_t>(segs.size()),
                                  static_cast<uint32_t>(br.data.size())});
    segs.insert(segs.end(), br.data.begin(), br.data.end());
  }
  if (answered) {
    q.ring.PublishUsed();
    q.notify_pending = true;
    ScheduleCheck();
  }
  if (reqs.empty()) return;
  FlushEvents();
  if (serial != conn_serial_ || closed_) return;
  host_->DeliverRequests(static_cast<int>(index), reqs, segs);
}

// ---------------------------------------------------------------------------------------------
// JS entry points

bool Backend::Complete(uint32_t queue, const uint32_t* pairs, size_t count, std::string* err) {
  if (queue >= options_.max_queues) {
    *err = "queue " + std::to_string(queue) + " out of range";
    return false;
  }
  for (size_t i = 0; i < count; i++) {
    if (pairs[2 * i + 1] > 255) {
      *err = "status " + std::to_string(pairs[2 * i + 1]) + " out of range";
      return false;
    }
  }
  if (conn_fd_ < 0 || queue >= queues_.size()) return true;
  Queue& q = queues_[queue];
  bool touched = false;
  for (size_t i = 0; i < count; i++) {
    const uint32_t id = pairs[2 * i];
    const uint8_t status = static_cast<uint8_t>(pairs[2 * i + 1]);
    const uint32_t head = id & 0x7fff;
    if (((id >> 15) & 0x3f) != queue || (id >> 21) != (q.gen & 0x7ff) || head >= q.slots.size()) {
      continue;
    }
    Slot& s = q.slots[head];
    if (!s.active) continue;
    __atomic_store_n(s.status, status, __ATOMIC_RELAXED);
    q.ring.AddUsed(static_cast<uint16_t>(head), blk::UsedLength(s.type, status, s.data_len));
    s.active = false;
    s.status = nullptr;
    s.status_mapping.reset();
    q.inflight--;
    touched = true;
  }
  if (touched) {
    q.ring.PublishUsed();
    q.notify_pending = true;
    ScheduleCheck();
  }
  if (q.stop_pending && q.inflight == 0) FinishGetVringBase(queue);
  return true;
}

std::vector<uint32_t> Backend::Inflight() const {
  std::vector<uint32_t> out(options_.max_queues, 0);
  for (size_t i = 0; i < queues_.size() && i < out.size(); i++) out[i] = queues_[i].inflight;
  return out;
}

}  // namespace vhost
}  // namespace vbc
