// FrontendChannel: the front end's end of a vhost-user connection (unix stream socket).
//
//   new FrontendChannel({ path | fd, onMessage, onClose })
//     path: connects to a listening back end; fd: takes ownership of a connected socket.
//   send(data, fds?)   queues data (any bytes) with up to 8 fds (SCM_RIGHTS, sent with the
//                      first byte); writes at once when possible, otherwise when the socket
//                      becomes writable (order is kept). fds are duplicated when queued, so the
//                      caller may close its copies right after send() returns.
//   close()            closes the socket; no callback runs afterwards. Idempotent.
//   fd / connected     the socket (-1 once closed) / whether it is open.
//
// Receiving: bytes are read on the Node loop and cut into messages by the vhost-user header
// (request u32, flags u32, size u32, then `size` payload bytes). Each complete message is handed
// to onMessage(message: Buffer (header + payload, a copy), fds: number[]); fds that arrived with
// the message's bytes are owned by the callee (close them). A size above kMaxPayload, or a
// connection that ends inside a message, is a protocol error. onClose(err | null) runs once when
// the peer closes (null for a clean end between messages) or on an error (VhostError with an
// errno name, or EPROTO); the socket is closed by then.
// While open the object keeps itself alive and keeps the Node loop alive.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <vector>

#include "frontend/frontend.h"
#include "js/errors.h"

namespace vbc {
namespace frontend {

namespace {

constexpr size_t kHeaderSize = 12;
constexpr uint32_t kMaxPayload = 1u << 16;
constexpr size_t kMaxFds = 8;
constexpr size_t kMaxFdsPerRecv = 32;

class FrontendChannel : public Napi::ObjectWrap<FrontendChannel> {
 public:
  explicit FrontendChannel(const Napi::CallbackInfo& info);
  ~FrontendChannel() override { Shutdown(); }

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FrontendChannel",
                       {
                           InstanceAccessor<&FrontendChannel::JS_fd>("fd"),
                           InstanceAccessor<&FrontendChannel::JS_connected>("connected"),
                           InstanceMethod<&FrontendChannel::JS_send>("send"),
                           InstanceMethod<&FrontendChannel::JS_close>("close"),
                       });
  }

 private:
  struct Outgoing {
    std::vector<uint8_t> data;
    size_t off = 0;
    std::vector<int> fds;  // owned; sent with the first byte, closed after
  };
  // The poll handle with the callbacks; freed by uv_close's callback so JS may close the
  // channel from inside a callback.
  struct Watch {
    Watch(Napi::Env env, Napi::Function msg, Napi::Function close)
        : onMessage(Napi::Persistent(msg)), onClose(Napi::Persistent(close)),
          ctx(env, "vbc:FrontendChannel") {}
    uv_poll_t handle;  // handle.data points to this Watch
    FrontendChannel* owner = nullptr;
    Napi::FunctionReference onMessage;
    Napi::FunctionReference onClose;
    Napi::AsyncContext ctx;
  };

  Napi::Value JS_fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value JS_connected(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), fd_ >= 0);
  }
  Napi::Value JS_send(const Napi::CallbackInfo& info);
  Napi::Value JS_close(const Napi::CallbackInfo& info) {
    if (fd_ >= 0) {
      Shutdown();
      Unref();
    }
    return info.Env().Undefined();
  }

  // Writes queued data; returns 0 or an errno.
  int Flush();
  void UpdatePoll();
  // Reads what is available and delivers complete messages; false once the channel closed.
  bool ReadAvailable();
  void Shutdown();
  void Fail(Napi::Value err);
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void FreeWatch(uv_handle_t* handle) { delete static_cast<Watch*>(handle->data); }

  int fd_ = -1;
  Watch* watch_ = nullptr;
  int pollEvents_ = 0;
  std::deque<Outgoing> out_;
  std::vector<uint8_t> in_;  // received bytes not yet delivered
  std::vector<int> inFds_;   // received fds not yet delivered
};

FrontendChannel::FrontendChannel(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<FrontendChannel>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    ThrowError(env, "EINVAL", "FrontendChannel(options) expects an object");
  }
  Napi::Object opts = info[0].As<Napi::Object>();
  Napi::Value onMessage = opts.Get("onMessage");
  Napi::Value onClose = opts.Get("onClose");
  if (!onMessage.IsFunction() || !onClose.IsFunction()) {
    ThrowError(env, "EINVAL", "FrontendChannel needs onMessage and onClose functions");
  }
  Napi::Value path = opts.Get("path");
  Napi::Value fd = opts.Get("fd");
  if (path.IsString() == fd.IsNumber()) {
    ThrowError(env, "EINVAL", "FrontendChannel needs exactly one of path and fd");
  }
  if (path.IsString()) {
    const std::string p = path.As<Napi::String>().Utf8Value();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (p.empty() || p.size() >= sizeof addr.sun_path) {
      ThrowError(env, "ENAMETOOLONG", "socket path is empty or too long: " + p);
    }
    std::memcpy(addr.sun_path, p.data(), p.size());
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) ThrowErrno(env, "socket", errno);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      ThrowErrno(env, "connect " + p, err);
    }
  } else {
    fd_ = fd.As<Napi::Number>().Int32Value();
    if (fd_ < 0) ThrowError(env, "EBADF", "FrontendChannel fd is negative");
  }
  const int flags = fcntl(fd_, F_GETFL);
  if (flags < 0 || fcntl(fd_, F_SETFL, flags | O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    ThrowErrno(env, "fcntl(O_NONBLOCK)", err);
  }
  auto* watch = new Watch(env, onMessage.As<Napi::Function>(), onClose.As<Napi::Function>());
  watch->handle.data = watch;
  int rc = uv_poll_init(Loop(env), &watch->handle, fd_);
  if (rc != 0) {
    delete watch;
    ::close(fd_);
    fd_ = -1;
    ThrowError(env, "EIO", std::string("uv_poll_init: ") + uv_strerror(rc));
  }
  watch->owner = this;
  watch_ = watch;
  UpdatePoll();
  Ref();
}

Napi::Value FrontendChannel::JS_send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) ThrowError(env, "EPIPE", "FrontendChannel is closed");
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    ThrowError(env, "EINVAL", "send(data, fds?) expects a Uint8Array");
  }
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = ta.ArrayBuffer();
  const uint8_t* bytes = static_cast<const uint8_t*>(ab.Data()) + ta.ByteOffset();
  const size_t len = ta.ByteLength();
  std::vector<int> fds;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsArray()) ThrowError(env, "EINVAL", "send fds must be an array of numbers");
    Napi::Array arr = info[1].As<Napi::Array>();
    if (arr.Length() > kMaxFds) ThrowError(env, "EINVAL", "at most 8 fds per message");
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value v = arr.Get(i);
      if (!v.IsNumber()) ThrowError(env, "EINVAL", "send fds must be numbers");
      fds.push_back(v.As<Napi::Number>().Int32Value());
    }
  }
  if (len == 0 && fds.empty()) return env.Undefined();
  if (len == 0) ThrowError(env, "EINVAL", "fds need at least one data byte");
  Outgoing o;
  o.data.assign(bytes, bytes + len);
  for (int f : fds) {
    const int d = fcntl(f, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
      const int err = errno;
      for (int g : o.fds) ::close(g);
      ThrowErrno(env, "dup(fd to send)", err);
    }
    o.fds.push_back(d);
  }
  out_.push_back(std::move(o));
  const int err = Flush();
  if (err != 0) ThrowErrno(env, "sendmsg", err);
  UpdatePoll();
  return env.Undefined();
}

int FrontendChannel::Flush() {
  while (!out_.empty()) {
    Outgoing& o = out_.front();
    iovec iov{o.data.data() + o.off, o.data.size() - o.off};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFds)];
    if (o.off == 0 && !o.fds.empty()) {
      const size_t n = o.fds.size() * sizeof(int);
      msg.msg_control = cbuf;
      msg.msg_controllen = CMSG_SPACE(n);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(n);
      std::memcpy(CMSG_DATA(c), o.fds.data(), n);
    }
    const ssize_t sent = sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return errno;
    }
    if (o.off == 0) {
      for (int f : o.fds) ::close(f);
      o.fds.clear();
    }
    o.off += static_cast<size_t>(sent);
    if (o.off == o.data.size()) out_.pop_front();
  }
  return 0;
}

void FrontendChannel::UpdatePoll() {
  if (watch_ == nullptr) return;
  const int want = UV_READABLE | (out_.empty() ? 0 : UV_WRITABLE);
  if (want == pollEvents_) return;
  uv_poll_start(&watch_->handle, want, OnPoll);
  pollEvents_ = want;
}

void FrontendChannel::Shutdown() {
  if (watch_ != nullptr) {
    uv_poll_stop(&watch_->handle);
    watch_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&watch_->handle), FreeWatch);
    watch_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  for (Outgoing& o : out_) {
    for (int f : o.fds) ::close(f);
  }
  out_.clear();
  for (int f : inFds_) ::close(f);
  inFds_.clear();
  in_.clear();
}

// Closes the channel and reports err to onClose (the Watch outlives Shutdown until uv_close
// completes, so its callback is still usable here).
void FrontendChannel::Fail(Napi::Value err) {
  Watch* watch = watch_;
  Shutdown();
  Napi::Env env = Env();
  CallFromLoop(env, watch->onClose, watch->ctx, {err});
  Unref();
}

bool FrontendChannel::ReadAvailable() {
  Napi::Env env = Env();
  for (;;) {
    uint8_t buf[16384];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFdsPerRecv)];
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    const ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      const int err = errno;
      Fail(MakeError(env, ErrnoName(err), std::string("recvmsg: ") + strerror(err)));
      return false;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int* fds = reinterpret_cast<const int*>(CMSG_DATA(c));
        for (size_t i = 0; i < count; i++) inFds_.push_back(fds[i]);
      }
    }
    if (n == 0) {
      if (in_.empty()) {
        Fail(env.Null());
      } else {
        Fail(MakeError(env, "EPROTO", "back end closed the connection inside a message"));
      }
      return false;
    }
    in_.insert(in_.end(), buf, buf + n);
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      Fail(MakeError(env, "EPROTO", "too many fds received (ancillary data truncated)"));
      return false;
    }
    // Deliver every complete message.
    size_t off = 0;
    while (in_.size() - off >= kHeaderSize) {
      uint32_t size;
      std::memcpy(&size, in_.data() + off + 8, sizeof size);
      if (size > kMaxPayload) {
        Fail(MakeError(env, "EPROTO",
                       "back end message payload too large: " + std::to_string(size)));
        return false;
      }
      const size_t total = kHeaderSize + size;
      if (in_.size() - off < total) break;
      Napi::HandleScope scope(env);
      Napi::Buffer<uint8_t> message = Napi::Buffer<uint8_t>::Copy(env, in_.data() + off, total);
      Napi::Array fds = Napi::Array::New(env, inFds_.size());
      for (size_t i = 0; i < inFds_.size(); i++) fds.Set(static_cast<uint32_t>(i), inFds_[i]);
      inFds_.clear();
      off += total;
      Watch* watch = watch_;
      CallFromLoop(env, watch->onMessage, watch->ctx, {message, fds});
      if (watch->owner == nullptr) return false;  // closed by the callback
    }
    in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(off));
  }
}

void FrontendChannel::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* watch = static_cast<Watch*>(handle->data);
  FrontendChannel* self = watch->owner;
  if (self == nullptr) return;
  Napi::Env env = self->Env();
  Napi::HandleScope scope(env);
  if (status < 0) {
    // libuv reports POLLERR (e.g. a reset by the peer) as UV_EBADF and stops the handle: read
    // what is left to learn how the connection ended, then fail with the socket error.
    if (!self->ReadAvailable()) return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(self->fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0) err = ECONNRESET;
    self->Fail(MakeError(env, ErrnoName(err), std::string("vhost-user socket: ") + strerror(err)));
    return;
  }
  if ((events & UV_WRITABLE) != 0) {
    const int err = self->Flush();
    if (err != 0) {
      self->Fail(MakeError(env, ErrnoName(err), std::string("sendmsg: ") + strerror(err)));
      return;
    }
    self->UpdatePoll();
  }
  if ((events & (UV_READABLE | UV_DISCONNECT)) != 0 || status == 0) {
    if (!self->ReadAvailable()) return;
  }
}

}  // namespace

Napi::Function InitFrontendChannel(Napi::Env env) { return FrontendChannel::Define(env); }

}  // namespace frontend
}  // namespace vbc
