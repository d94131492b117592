// Backend: uv plumbing (watches, the check/idle pair, the guard around every callback), device
// events, and the life of one front-end connection: start, disconnect, panic, reading messages
// (header checked against the dispatch table before its payload is read), dispatching them to
// the handlers of handlers.cc, REPLY_ACK and replies.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>

#include "vhost/backend_internal.h"

namespace vbc {
namespace vhost {

// ---------------------------------------------------------------------------------------------
// Construction, uv plumbing

Backend::Backend(uv_loop_t* loop, BackendHost* host, BackendOptions options)
    : loop_(loop), host_(host), options_(std::move(options)) {}

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
    CloseFd(&conn_.fd);
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
          b->OnKick(static_cast<uint32_t>(w->queue), events);
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

bool Backend::WarningAllowed() {
  const uint64_t now = uv_now(loop_);
  if (now - warn_window_start_ >= kWarningWindowMs) {
    warn_window_start_ = now;
    warn_count_ = 0;
    if (warn_suppressed_ > 0) {
      const uint32_t n = warn_suppressed_;
      warn_suppressed_ = 0;
      warn_count_++;
      Log(LogLevel::kWarn, "warnings suppressed", {Num("count", n)});
    }
  }
  if (warn_count_ >= kMaxWarningsPerWindow) {
    warn_suppressed_++;
    return false;
  }
  warn_count_++;
  return true;
}

void Backend::Log(LogLevel level, std::string msg, std::vector<LogField> fields) {
  if (level == LogLevel::kWarn && !WarningAllowed()) return;
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
// Connection

void Backend::StartConnection(int fd) {
  conn_ = Connection();
  conn_.fd = fd;
  conn_.payload.resize(kMaxPayload);
  conn_serial_++;
  queues_.clear();
  queues_.resize(options_.max_queues);
  conn_.watch = StartWatch(fd, kWatchConn, -1, UV_READABLE | UV_DISCONNECT);
  DeviceEvent ev;
  ev.kind = DeviceEvent::kConnected;
  Emit(std::move(ev));
  Log(LogLevel::kInfo, "front end connected");
}

void Backend::Disconnect(const std::string& reason) {
  if (conn_.fd < 0) return;
  StopAllQueues();
  queues_.clear();
  StopWatch(&conn_.watch);
  CloseFd(&conn_.fd);
  conn_serial_++;
  for (int& fd : conn_.fds) CloseFd(&fd);
  conn_ = Connection();
  mem_.Clear();
  inflight_ = InflightRegion();
  host_->MemoryTableChanged();
  DeviceEvent ev;
  ev.kind = DeviceEvent::kDisconnected;
  ev.text = reason;
  Emit(std::move(ev));
  Log(LogLevel::kInfo, "front end disconnected", {Str("reason", reason)});
}

void Backend::Panic(const std::string& reason) {
  if (conn_.fd < 0) {
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

bool Backend::HeaderSizeFits(const MsgHeader& h) {
  const MessageRule* rule = RuleFor(h.request);
  const uint32_t min = rule != nullptr ? rule->min_size : 0;
  const uint32_t max = rule != nullptr ? rule->max_size : kMaxPayload;
  if (h.size >= min && h.size <= max) return true;
  Panic(NameOf(h.request) + " header announces a payload of " + std::to_string(h.size) +
        " bytes, expected " + std::to_string(min) +
        (max != min ? ".." + std::to_string(max) : ""));
  return false;
}

bool Backend::ReadMessages() {
  const uint64_t serial = conn_serial_;
  uint32_t budget = kMaxMessagesPerTurn;  // the fd stays readable: the rest comes next turn
  while (conn_.fd >= 0 && serial == conn_serial_ && !conn_.reading_paused && !closed_ &&
         budget > 0) {
    const bool in_header = conn_.hdr_got < sizeof(MsgHeader);
    iovec iov;
    if (in_header) {
      iov.iov_base = reinterpret_cast<uint8_t*>(&conn_.hdr) + conn_.hdr_got;
      iov.iov_len = sizeof(MsgHeader) - conn_.hdr_got;
    } else {
      iov.iov_base = conn_.payload.data() + conn_.payload_got;
      iov.iov_len = conn_.hdr.size - conn_.payload_got;
    }
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = recvmsg(conn_.fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
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
        conn_.fds.push_back(fd);
      }
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0 || conn_.fds.size() > kMaxFds) {
      Panic("more than " + std::to_string(kMaxFds) + " fds with one message");
      return false;
    }
    if (n == 0) {
      Disconnect(conn_.hdr_got == 0 && conn_.fds.empty() ? "front end closed the connection"
                                               : "connection closed in the middle of a message");
      return false;
    }
    if (in_header) {
      conn_.hdr_got += static_cast<size_t>(n);
      if (conn_.hdr_got < sizeof(MsgHeader)) continue;
      if ((conn_.hdr.flags & kFlagVersionMask) != kVersion) {
        Panic("bad protocol version in header flags " + std::to_string(conn_.hdr.flags));
        return false;
      }
      if ((conn_.hdr.flags & ~(kFlagVersionMask | kFlagNeedReply)) != 0) {
        Panic("unexpected flags " + std::to_string(conn_.hdr.flags) + " in " + NameOf(conn_.hdr.request));
        return false;
      }
      if (!HeaderSizeFits(conn_.hdr)) return false;
      if (conn_.hdr.size > 0) continue;
    } else {
      conn_.payload_got += static_cast<size_t>(n);
      if (conn_.payload_got < conn_.hdr.size) continue;
    }
    budget--;
    Dispatch();
  }
  return conn_.fd >= 0 && serial == conn_serial_;
}

bool Backend::SendReply(uint32_t request, const void* payload, uint32_t size, int fd) {
  uint8_t buf[sizeof(MsgHeader) + sizeof(ConfigMsgHeader) + kMaxConfigSize];
  if (size > sizeof buf - sizeof(MsgHeader)) {
    Panic("reply too large");
    return false;
  }
  MsgHeader h{request, kVersion | kFlagReply, size};
  std::memcpy(buf, &h, sizeof h);
  if (size > 0) std::memcpy(buf + sizeof h, payload, size);
  const size_t total = sizeof h + size;
  iovec iov{buf, total};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  ssize_t n;
  do {
    n = sendmsg(conn_.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
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
  const MsgHeader h = conn_.hdr;
  std::vector<int> fds;
  fds.swap(conn_.fds);
  conn_.hdr_got = 0;
  conn_.payload_got = 0;
  const uint64_t serial = conn_serial_;
  Log(LogLevel::kDebug, NameOf(h.request),
      {Num("request", h.request), Num("size", h.size), Num("fds", static_cast<double>(fds.size())),
       Num("flags", h.flags)});
  const Message m{h, conn_.payload.data(), fds};
  const MessageRule* rule = RuleFor(h.request);
  // The payload size was checked against the rule at the header (HeaderSizeFits).
  const Result r = rule == nullptr ? Unsupported(m) : (this->*rule->handler)(m);
  for (int& fd : fds) CloseFd(&fd);
  if (serial != conn_serial_ || conn_.fd < 0) return;
  if ((r == Result::kOk || r == Result::kFail) && (h.flags & kFlagNeedReply) != 0 &&
      (conn_.protocol_features & Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK)) != 0 &&
      !HasInherentReply(h.request, conn_.protocol_features)) {
    SendU64Reply(h.request, r == Result::kOk ? 0 : 1);
  }
}

Backend::Result Backend::Refuse(const MsgHeader& h, const std::string& reason) {
  if ((h.flags & kFlagNeedReply) != 0 &&
      (conn_.protocol_features & Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK)) != 0) {
    Log(LogLevel::kWarn, NameOf(h.request) + " refused: " + reason, {Num("request", h.request)});
    return Result::kFail;
  }
  Panic(NameOf(h.request) + ": " + reason);
  return Result::kDropped;
}

Backend::Result Backend::Unsupported(const Message& m) {
  const MsgHeader& h = m.hdr;
  if (HasInherentReply(h.request, conn_.protocol_features)) {
    Panic("unsupported message " + NameOf(h.request) + " requires a reply");
    return Result::kDropped;
  }
  Log(LogLevel::kWarn, NameOf(h.request), {Num("request", h.request), Str("error", "unsupported message")});
  return Result::kFail;
}

}  // namespace vhost
}  // namespace vbc
