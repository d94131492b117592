// EventFd: an eventfd (EFD_NONBLOCK | EFD_CLOEXEC) used as a vring kick or call fd.
//   new EventFd({ blocking: true, full: true }) makes a hostile one for tests: without
//   EFD_NONBLOCK, and with its counter at the maximum (a write of 1 would block).
//   signal()      adds 1 to the counter (wakes the reader on the other side)
//   drain()       reads and resets the counter; returns its value (0 if it was zero)
//   watch(cb)     polls the fd for readability on the Node loop; on each wake-up the counter is
//                 drained first, then cb(count) is called. While watched, the object is kept
//                 alive and keeps the loop alive.
//   unwatch()     stops watching (idempotent)
//   close()       unwatch() and close the fd (idempotent); fd reads -1 afterwards
#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>


#include "frontend/frontend.h"
#include "js/errors.h"

namespace vbc {
namespace frontend {

namespace {

class EventFd : public Napi::ObjectWrap<EventFd> {
 public:
  explicit EventFd(const Napi::CallbackInfo& info);
  ~EventFd() override {
    StopPoll();
    if (fd_ >= 0) ::close(fd_);
  }

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "EventFd",
                       {
                           InstanceAccessor<&EventFd::JS_fd>("fd"),
                           InstanceMethod<&EventFd::JS_signal>("signal"),
                           InstanceMethod<&EventFd::JS_drain>("drain"),
                           InstanceMethod<&EventFd::JS_watch>("watch"),
                           InstanceMethod<&EventFd::JS_unwatch>("unwatch"),
                           InstanceMethod<&EventFd::JS_close>("close"),
                       });
  }

 private:
  Napi::Value JS_fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  Napi::Value JS_signal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) ThrowError(env, "EBADF", "EventFd is closed");
    const uint64_t one = 1;
    // EAGAIN means the counter is saturated: the reader is already woken.
    if (write(fd_, &one, sizeof one) < 0 && errno != EAGAIN) ThrowErrno(env, "eventfd write", errno);
    return env.Undefined();
  }

  Napi::Value JS_drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) ThrowError(env, "EBADF", "EventFd is closed");
    return Napi::Number::New(env, static_cast<double>(Drain()));
  }

  Napi::Value JS_watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) ThrowError(env, "EBADF", "EventFd is closed");
    if (info.Length() < 1 || !info[0].IsFunction()) {
      ThrowError(env, "EINVAL", "watch(callback) expects a function");
    }
    if (poll_ != nullptr) ThrowError(env, "EBUSY", "EventFd is already watched");
    auto* watch = new Watch(env, info[0].As<Napi::Function>());
    int rc = uv_poll_init(Loop(env), &watch->handle, fd_);
    if (rc != 0) {
      delete watch;
      ThrowError(env, "EIO", std::string("uv_poll_init: ") + uv_strerror(rc));
    }
    watch->handle.data = watch;
    watch->owner = this;
    rc = uv_poll_start(&watch->handle, UV_READABLE, OnPoll);
    if (rc != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&watch->handle), FreeWatch);
      ThrowError(env, "EIO", std::string("uv_poll_start: ") + uv_strerror(rc));
    }
    poll_ = watch;
    Ref();
    return env.Undefined();
  }

  Napi::Value JS_unwatch(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) {
      StopPoll();
      Unref();
    }
    return info.Env().Undefined();
  }

  Napi::Value JS_close(const Napi::CallbackInfo& info) {
    JS_unwatch(info);
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    return info.Env().Undefined();
  }

  uint64_t Drain() {
    uint64_t value = 0;
    if (read(fd_, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) return 0;
    return value;
  }

  // The poll handle with the callback and its async context; freed by uv_close's callback, so
  // a JS callback may unwatch or close while it runs.
  struct Watch {
    Watch(Napi::Env env, Napi::Function fn)
        : callback(Napi::Persistent(fn)), ctx(env, "vbc:EventFd") {}
    uv_poll_t handle;  // handle.data points to this Watch
    EventFd* owner = nullptr;  // null once stopped
    Napi::FunctionReference callback;
    Napi::AsyncContext ctx;
  };

  void StopPoll() {
    if (poll_ == nullptr) return;
    uv_poll_stop(&poll_->handle);
    poll_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&poll_->handle), FreeWatch);
    poll_ = nullptr;
  }

  static void FreeWatch(uv_handle_t* handle) {
    delete static_cast<Watch*>(handle->data);
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* watch = static_cast<Watch*>(handle->data);
    EventFd* self = watch->owner;
    if (self == nullptr) return;
    const uint64_t count = self->Drain();
    if (count == 0 && status == 0) return;  // spurious wake-up
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    CallFromLoop(env, watch->callback, watch->ctx,
                 {Napi::Number::New(env, static_cast<double>(count))});
  }

  int fd_ = -1;
  Watch* poll_ = nullptr;
};

EventFd::EventFd(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventFd>(info) {
  Napi::Env env = info.Env();
  bool blocking = false, full = false;
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    blocking = o.Get("blocking").ToBoolean();
    full = o.Get("full").ToBoolean();
  }
  fd_ = eventfd(0, (blocking ? 0 : EFD_NONBLOCK) | EFD_CLOEXEC);
  if (fd_ < 0) ThrowErrno(env, "eventfd", errno);
  if (full) {
    const uint64_t max = UINT64_MAX - 1;  // the counter's largest value
    if (write(fd_, &max, sizeof max) != static_cast<ssize_t>(sizeof max)) {
      ThrowErrno(env, "eventfd write", errno);
    }
  }
}

}  // namespace

Napi::Function InitEventFd(Napi::Env env) { return EventFd::Define(env); }

}  // namespace frontend
}  // namespace vbc
