// RbdImage (see rbd_image.h) and the rbd export: { available, RbdImage? }.
#include <napi.h>

#include "js/errors.h"

#ifdef VBC_HAVE_RBD
#include <errno.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <cstdio>
#include <cstring>

#include "io/io_helpers.h"
#include "rbd/rbd_image.h"

namespace vbc {

namespace {

// Completions handed to JS per onComplete call.
constexpr uint32_t kCompletionBatch = 256;
// One request moves at most this many bytes (results travel as int32).
constexpr uint64_t kMaxRequestBytes = 1ull << 30;

uint32_t ArgTag(const Napi::CallbackInfo& info) {
  uint64_t t = ArgU64(info, 0, "tag");
  if (t > INT32_MAX) ThrowError(info.Env(), "EINVAL", "tag must be an integer in [0, 2^31)");
  return static_cast<uint32_t>(t);
}

std::string OptString(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return "";
  if (!v.IsString()) ThrowError(o.Env(), "EINVAL", std::string("RbdImage.open: ") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// The caller's views (Uint8Array[]) as iovecs, with their total length.
std::vector<iovec> Views(Napi::Env env, const Napi::Value& v, uint64_t* total) {
  if (!v.IsArray()) ThrowError(env, "EINVAL", "bufs must be an array of Uint8Array");
  Napi::Array arr = v.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > IOV_MAX) ThrowError(env, "EINVAL", "more than IOV_MAX buffers");
  std::vector<iovec> out(n);
  *total = 0;
  for (uint32_t i = 0; i < n; ++i) {
    napi_value el = arr.Get(i);
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    if (napi_get_typedarray_info(env, el, &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_uint8_array) {
      ThrowError(env, "EINVAL", "bufs must hold Uint8Array views");
    }
    out[i].iov_base = data;
    out[i].iov_len = length;
    *total += length;
  }
  if (*total > kMaxRequestBytes) ThrowError(env, "EINVAL", "an RBD request moves at most 1 GiB");
  return out;
}

void WatchCallback(void* arg) {
  auto* w = static_cast<RbdWatchState*>(arg);
  w->changed.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t r = write(w->eventfd, &one, sizeof(one));
  (void)r;  // EAGAIN only when the counter is saturated: already signalled
}

// Connections by key (client name, configuration file, mount timeout); an entry leaves the
// map when its last user releases it.
std::mutex g_clusters_mu;
std::map<std::string, std::shared_ptr<RbdCluster>> g_clusters;

// A user of the connection for key (created, not yet connected, when new).
std::shared_ptr<RbdCluster> AcquireCluster(const std::string& key) {
  std::lock_guard<std::mutex> lock(g_clusters_mu);
  std::shared_ptr<RbdCluster>& c = g_clusters[key];
  if (!c) c = std::make_shared<RbdCluster>();
  ++c->users;
  return c;
}

// The last user shuts the connection down (outside the map's lock: it blocks).
void ReleaseCluster(const std::string& key, const std::shared_ptr<RbdCluster>& c) {
  rados_t down = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_clusters_mu);
    if (--c->users > 0) return;
    g_clusters.erase(key);
    down = c->cluster;
    c->cluster = nullptr;
  }
  if (down != nullptr) rados_shutdown(down);
}

// connections(): cluster connections open now (each shared by the images opened through it).
Napi::Value JS_connections(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(g_clusters_mu);
  return Napi::Number::New(info.Env(), static_cast<double>(g_clusters.size()));
}

// Releases what an open attempt or a clean close holds (thread pool: these calls block).
void ReleaseHandles(RbdImage::Handles* h) {
  if (h->watching) rbd_update_unwatch(h->image, h->watch_handle);
  h->watching = false;
  if (h->image != nullptr) rbd_close(h->image);
  h->image = nullptr;
  if (h->ioctx != nullptr) rados_ioctx_destroy(h->ioctx);
  h->ioctx = nullptr;
  if (h->shared) ReleaseCluster(h->cluster_key, h->shared);
  h->shared.reset();
  h->cluster = nullptr;
  delete h->watch;
  h->watch = nullptr;
}

// A promise settled by a thread-pool job that fails with (errno, message).
class RbdWorker : public Napi::AsyncWorker {
 public:
  explicit RbdWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Fail(int err, std::string message) {
    err_ = err;
    message_ = std::move(message);
  }
  void OnError(const Napi::Error&) override {}
  void Reject() {
    deferred_.Reject(MakeError(Env(), ErrnoName(err_), message_ + " (" + strerror(err_) + ")"));
  }
  Napi::Promise::Deferred deferred_;
  int err_ = 0;
  std::string message_;
};

}  // namespace

class RbdOpenWorker : public RbdWorker {
 public:
  RbdOpenWorker(Napi::Env env, RbdImage* owner, Napi::Object self) : RbdWorker(env), owner_(owner) {
    self_ = Napi::Persistent(self);
  }
  std::string pool, image, snap, conf, id;
  bool read_only = false;
  uint32_t mount_timeout_s = 60;
  int eventfd = -1;

  void Execute() override {
    std::string who = "client." + (id.empty() ? std::string("admin") : id);
    std::string t = std::to_string(mount_timeout_s);
    h_.cluster_key = who + '\0' + conf + '\0' + t;
    h_.shared = AcquireCluster(h_.cluster_key);
    int r = 0;
    {
      // One opener connects; the others wait for it and share the connection.
      std::lock_guard<std::mutex> lock(h_.shared->connect_mu);
      if (h_.shared->cluster == nullptr) {
        std::string message;
        r = Connect(who, t, &message);
        if (r < 0) return FailClean(-r, message);
      }
      h_.cluster = h_.shared->cluster;
    }
    r = rados_ioctx_create(h_.cluster, pool.c_str(), &h_.ioctx);
    if (r < 0) return FailClean(-r, r == -ENOENT ? "RBD pool '" + pool + "' does not exist" : "cannot open RBD pool '" + pool + "'");
    std::string name = pool + "/" + image;
    r = (read_only || !snap.empty()) ? rbd_open_read_only(h_.ioctx, image.c_str(), &h_.image, nullptr)
                                     : rbd_open(h_.ioctx, image.c_str(), &h_.image, nullptr);
    if (r < 0) {
      h_.image = nullptr;
      return FailClean(-r, r == -ENOENT ? "RBD image '" + name + "' does not exist" : "cannot open RBD image '" + name + "'");
    }
    if (!snap.empty()) {
      r = rbd_snap_set(h_.image, snap.c_str());
      if (r < 0) {
        return FailClean(-r, r == -ENOENT ? "snapshot '" + snap + "' of RBD image '" + name + "' does not exist"
                                          : "cannot select snapshot '" + snap + "' of RBD image '" + name + "'");
      }
      r = rbd_snap_get_id(h_.image, snap.c_str(), &snap_id_);
      if (r < 0) return FailClean(-r, "rbd_snap_get_id(" + snap + ")");
      has_snap_ = true;
    }
    char idbuf[128];
    r = rbd_get_id(h_.image, idbuf, sizeof(idbuf));
    if (r < 0) return FailClean(-r, "rbd_get_id(" + name + ")");
    image_id_ = idbuf;
    char fsid[64];
    r = rados_cluster_fsid(h_.cluster, fsid, sizeof(fsid));
    if (r < 0) return FailClean(-r, "rados_cluster_fsid");
    fsid_.assign(fsid, static_cast<size_t>(r));
    pool_id_ = rados_ioctx_get_id(h_.ioctx);
    char cache_conf[16] = {0};
    r = rados_conf_get(h_.cluster, "rbd_cache", cache_conf, sizeof(cache_conf) - 1);
    if (r < 0) return FailClean(-r, "rados_conf_get(rbd_cache)");
    librbd_cache_ = cache_conf;
    r = rbd_get_size(h_.image, &size_);
    if (r < 0) return FailClean(-r, "rbd_get_size(" + name + ")");
    r = ReadParent(name);
    if (r < 0) return;
    // Completions must be routed to the eventfd before the first I/O is submitted.
    r = rbd_set_image_notification(h_.image, eventfd, EVENT_TYPE_EVENTFD);
    if (r < 0) return FailClean(-r, "rbd_set_image_notification(" + name + ")");
    h_.watch = new RbdWatchState();
    h_.watch->eventfd = eventfd;
    r = rbd_update_watch(h_.image, &h_.watch_handle, WatchCallback, h_.watch);
    if (r < 0) return FailClean(-r, "rbd_update_watch(" + name + ")");
    h_.watching = true;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      // The failed attempt released librbd's handles: the eventfd is ours alone again.
      owner_->opening_ = false;
      close(owner_->eventfd_);
      owner_->eventfd_ = -1;
      Reject();
      return;
    }
    owner_->Opened(env, h_);
    Napi::Object info = Napi::Object::New(env);
    info.Set("size", Napi::Number::New(env, static_cast<double>(size_)));
    info.Set("imageId", Napi::String::New(env, image_id_));
    info.Set("snapId", has_snap_ ? Napi::Number::New(env, static_cast<double>(snap_id_)) : env.Null());
    info.Set("poolId", Napi::Number::New(env, static_cast<double>(pool_id_)));
    info.Set("fsid", Napi::String::New(env, fsid_));
    info.Set("objectSize", Napi::Number::New(env, static_cast<double>(object_size_)));
    info.Set("librbdCache", Napi::String::New(env, librbd_cache_));
    if (has_parent_) {
      Napi::Object p = Napi::Object::New(env);
      p.Set("poolId", Napi::Number::New(env, static_cast<double>(parent_pool_id_)));
      p.Set("namespace", Napi::String::New(env, parent_namespace_));
      p.Set("imageId", Napi::String::New(env, parent_image_id_));
      p.Set("snapId", Napi::Number::New(env, static_cast<double>(parent_snap_id_)));
      p.Set("overlap", Napi::Number::New(env, static_cast<double>(overlap_)));
      p.Set("owned", Napi::Buffer<uint8_t>::Copy(env, owned_.data(), owned_.size()));
      info.Set("parent", p);
    } else {
      info.Set("parent", env.Null());
    }
    deferred_.Resolve(info);
  }

 private:
  void FailClean(int err, std::string message) {
    ReleaseHandles(&h_);
    Fail(err, std::move(message));
  }

  // Connects h_.shared (its connect_mu held): on success it holds the connection; on failure
  // returns -errno with *message, the half-made handle shut down.
  int Connect(const std::string& who, const std::string& timeout, std::string* message) {
    rados_t c = nullptr;
    int r = rados_create2(&c, "ceph", who.c_str(), 0);
    if (r < 0) {
      *message = "rados_create2(" + who + ")";
      return r;
    }
    r = rados_conf_read_file(c, conf.empty() ? nullptr : conf.c_str());
    if (r < 0) {
      *message = conf.empty() ? std::string("no Ceph configuration found (/etc/ceph/ceph.conf, $CEPH_CONF); give :conf=PATH")
                              : "cannot read the Ceph configuration " + conf;
    } else {
      rados_conf_parse_env(c, nullptr);
      rados_conf_set(c, "client_mount_timeout", timeout.c_str());
      // We are the cache: librbd's own (writearound by default since Octopus) would ack a write
      // before the cluster has it and hold a second copy of the data in RAM.
      rados_conf_set(c, "rbd_cache", "false");
      r = rados_connect(c);
      if (r < 0) {
        *message = "cannot connect to the Ceph cluster as " + who;
        if (r == -ENOENT) *message += ": no keyring for " + who + " (set keyring in the configuration, or :id=USER)";
        else if (r == -ETIMEDOUT) *message += ": no monitor answered within " + timeout + " s";
        else if (r == -EACCES || r == -EPERM) *message += ": authentication refused";
      }
    }
    if (r < 0) {
      rados_shutdown(c);
      return r;
    }
    h_.shared->cluster = c;
    return 0;
  }

  // A clone's parent (pool, namespace, image id, snapshot id), its overlap and which of the
  // objects inside the overlap the clone has an object of its own for (an existing object hides
  // the parent, even empty: a discarded one reads zeros). From the object map when it is valid
  // (rbd_diff_iterate2 whole-object without the parent, which then reports every existing
  // object); otherwise by stat-ing each object, since the diff without an object map reports
  // data extents only and misses emptied objects; a snapshot of a clone without a valid object
  // map counts every object as owned (no sharing). Returns < 0 after FailClean.
  int ReadParent(const std::string& name) {
    rbd_image_info_t st;
    int r = rbd_stat(h_.image, &st, sizeof(st));
    if (r < 0) {
      FailClean(-r, "rbd_stat(" + name + ")");
      return r;
    }
    object_size_ = st.obj_size;
    rbd_linked_image_spec_t pimg;
    rbd_snap_spec_t psnap;
    r = rbd_get_parent(h_.image, &pimg, &psnap);
    if (r == -ENOENT) return 0;
    if (r < 0) {
      FailClean(-r, "rbd_get_parent(" + name + ")");
      return r;
    }
    has_parent_ = true;
    parent_pool_id_ = pimg.pool_id;
    parent_namespace_ = pimg.pool_namespace != nullptr ? pimg.pool_namespace : "";
    parent_image_id_ = pimg.image_id != nullptr ? pimg.image_id : "";
    parent_snap_id_ = psnap.id;
    rbd_linked_image_spec_cleanup(&pimg);
    rbd_snap_spec_cleanup(&psnap);
    r = rbd_get_overlap(h_.image, &overlap_);
    if (r < 0) {
      FailClean(-r, "rbd_get_overlap(" + name + ")");
      return r;
    }
    overlap_ = std::min(overlap_, size_);
    if (overlap_ == 0 || object_size_ == 0) return 0;
    owned_.assign((overlap_ + object_size_ - 1) / object_size_, 0);
    uint64_t features = 0, flags = 0;
    r = rbd_get_features(h_.image, &features);
    if (r == 0) r = rbd_get_flags(h_.image, &flags);
    if (r < 0) {
      FailClean(-r, "rbd_get_features/flags(" + name + ")");
      return r;
    }
    bool object_map = (features & RBD_FEATURE_FAST_DIFF) != 0 &&
                      (flags & (RBD_FLAG_OBJECT_MAP_INVALID | RBD_FLAG_FAST_DIFF_INVALID)) == 0;
    if (object_map) {
      r = rbd_diff_iterate2(h_.image, nullptr, 0, overlap_, 0, 1, &RbdOpenWorker::OwnedExtent, this);
    } else if (has_snap_) {
      std::fill(owned_.begin(), owned_.end(), 1);
    } else {
      r = StatObjects();
    }
    if (r < 0) {
      FailClean(-r, "finding the objects of clone " + name);
      return r;
    }
    return 0;
  }

  // owned_[o] = 1 for every object o of the image that exists (any stat error but ENOENT
  // counts as existing: owned is the safe side), kStatBatch stats in flight at a time.
  int StatObjects() {
    char prefix[128];
    int r = rbd_get_block_name_prefix(h_.image, prefix, sizeof(prefix));
    if (r < 0) return r;
    int64_t data_pool = rbd_get_data_pool_id(h_.image);
    rados_ioctx_t io = h_.ioctx;
    rados_ioctx_t other = nullptr;
    if (data_pool >= 0 && data_pool != pool_id_) {
      r = rados_ioctx_create2(h_.cluster, data_pool, &other);
      if (r < 0) return r;
      io = other;
    }
    constexpr size_t kStatBatch = 64;
    rados_completion_t comps[kStatBatch];
    uint64_t sizes[kStatBatch];
    time_t mtimes[kStatBatch];
    for (size_t base = 0; base < owned_.size(); base += kStatBatch) {
      size_t m = std::min(kStatBatch, owned_.size() - base);
      for (size_t i = 0; i < m; ++i) {
        char oid[sizeof(prefix) + 24];
        snprintf(oid, sizeof(oid), "%s.%016llx", prefix, static_cast<unsigned long long>(base + i));
        rados_aio_create_completion2(nullptr, nullptr, &comps[i]);
        if (rados_aio_stat(io, oid, comps[i], &sizes[i], &mtimes[i]) < 0) {
          rados_aio_release(comps[i]);
          comps[i] = nullptr;
        }
      }
      for (size_t i = 0; i < m; ++i) {
        int rv = -EIO;
        if (comps[i] != nullptr) {
          rados_aio_wait_for_complete(comps[i]);
          rv = rados_aio_get_return_value(comps[i]);
          rados_aio_release(comps[i]);
        }
        owned_[base + i] = rv == -ENOENT ? 0 : 1;
      }
    }
    if (other != nullptr) rados_ioctx_destroy(other);
    return 0;
  }

  // rbd_diff_iterate2's callback: every reported extent marks its objects owned.
  static int OwnedExtent(uint64_t off, size_t len, int, void* arg) {
    auto* w = static_cast<RbdOpenWorker*>(arg);
    if (len == 0) return 0;
    uint64_t first = off / w->object_size_;
    uint64_t last = std::min<uint64_t>((off + len - 1) / w->object_size_, w->owned_.size() - 1);
    for (uint64_t o = first; o <= last && o < w->owned_.size(); ++o) w->owned_[o] = 1;
    return 0;
  }

  RbdImage* owner_;
  Napi::ObjectReference self_;  // keeps the JS object alive while opening
  RbdImage::Handles h_;
  uint64_t size_ = 0, snap_id_ = 0;
  int64_t pool_id_ = 0;
  bool has_snap_ = false;
  std::string image_id_, fsid_, librbd_cache_;
  uint64_t object_size_ = 0, overlap_ = 0, parent_snap_id_ = 0;
  int64_t parent_pool_id_ = 0;
  bool has_parent_ = false;
  std::string parent_namespace_, parent_image_id_;
  std::vector<uint8_t> owned_;
};

namespace {

class RbdCloseWorker : public RbdWorker {
 public:
  RbdCloseWorker(Napi::Env env, RbdImage::Handles h, int eventfd) : RbdWorker(env), h_(h), eventfd_(eventfd) {}
  void Execute() override {
    ReleaseHandles(&h_);
    close(eventfd_);
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  RbdImage::Handles h_;
  int eventfd_;
};

}  // namespace

Napi::Function RbdImage::DefineClass(Napi::Env env) {
  return ObjectWrap<RbdImage>::DefineClass(
      env, "RbdImage",
      {
          InstanceMethod<&RbdImage::JS_open>("open"),
          InstanceMethod<&RbdImage::JS_read>("read"),
          InstanceMethod<&RbdImage::JS_write>("write"),
          InstanceMethod<&RbdImage::JS_flush>("flush"),
          InstanceMethod<&RbdImage::JS_discard>("discard"),
          InstanceMethod<&RbdImage::JS_writeZeroes>("writeZeroes"),
          InstanceMethod<&RbdImage::JS_cancel>("cancel"),
          InstanceMethod<&RbdImage::JS_close>("close"),
          InstanceMethod<&RbdImage::JS_currentSize>("currentSize"),
          InstanceAccessor<&RbdImage::JS_getCompletions>("completions"),
          InstanceAccessor<&RbdImage::JS_getPending>("pending"),
      });
}

RbdImage::RbdImage(const Napi::CallbackInfo& info) : ObjectWrap<RbdImage>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) ThrowError(env, "EINVAL", "new RbdImage(onComplete) expects a function");
  on_complete_ = Napi::Persistent(info[0].As<Napi::Function>());
  completions_cap_ = kCompletionBatch;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, completions_cap_ * 2 * sizeof(int32_t));
  completions_ = static_cast<int32_t*>(ab.Data());
  completions_ref_ = Napi::Persistent(Napi::Int32Array::New(env, completions_cap_ * 2, ab, 0).As<Napi::Object>());
  async_context_ = std::make_unique<Napi::AsyncContext>(env, "RbdImage");
}

// Only reached when never opened or closed: an open image holds a reference to itself.
RbdImage::~RbdImage() = default;

Napi::Value RbdImage::JS_open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (open_ || opening_ || eventfd_ >= 0) ThrowError(env, "EALREADY", "RbdImage.open: already opened");
  if (info.Length() < 1 || !info[0].IsObject()) ThrowError(env, "EINVAL", "RbdImage.open(options) expects an object");
  Napi::Object o = info[0].As<Napi::Object>();
  auto* w = new RbdOpenWorker(env, this, info.This().As<Napi::Object>());
  try {
    w->pool = OptString(o, "pool");
    w->image = OptString(o, "image");
    w->snap = OptString(o, "snap");
    w->conf = OptString(o, "conf");
    w->id = OptString(o, "id");
    w->read_only = o.Get("readOnly").ToBoolean().Value();
    Napi::Value t = o.Get("mountTimeoutSec");
    if (t.IsNumber()) w->mount_timeout_s = std::max<uint32_t>(1, t.As<Napi::Number>().Uint32Value());
    if (w->pool.empty() || w->image.empty()) ThrowError(env, "EINVAL", "RbdImage.open: pool and image are required");
  } catch (...) {
    delete w;
    throw;
  }
  eventfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (eventfd_ < 0) {
    delete w;
    ThrowErrno(env, "eventfd", errno);
  }
  w->eventfd = eventfd_;
  opening_ = true;
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

void RbdImage::Opened(Napi::Env env, const Handles& h) {
  h_ = h;
  opening_ = false;
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  poll_ = new uv_poll_t;
  uv_poll_init(loop, poll_, eventfd_);
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* p, int, int) { static_cast<RbdImage*>(p->data)->OnEventfd(); });
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  open_ = true;
  Ref();  // until close(): librbd and the poll handle point at this object
}

void RbdImage::CheckOpen(Napi::Env env) const {
  if (!open_) ThrowError(env, "ESHUTDOWN", "RBD image is not open");
}

RbdImage::Req* RbdImage::NewReq(Napi::Env env, uint32_t tag, Op op) {
  CheckOpen(env);
  if (live_.count(tag) != 0) ThrowError(env, "EINVAL", "tag " + std::to_string(tag) + " is already in flight");
  auto* r = new Req();
  r->tag = tag;
  r->op = op;
  rbd_aio_create_completion(r, nullptr, &r->comp);
  return r;
}

void RbdImage::Submit(Napi::Env env, Req* r, int rc, const char* what) {
  if (rc < 0) {
    rbd_aio_release(r->comp);
    delete r;
    ThrowErrno(env, what, -rc);
  }
  live_[r->tag] = r;
  ++pending_;
  UpdateRefs();
}

// read(tag, offset, bufs)
Napi::Value RbdImage::JS_read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t tag = ArgTag(info);
  uint64_t off = ArgU64(info, 1, "offset");
  uint64_t len = 0;
  std::vector<iovec> dest = Views(env, info[2], &len);
  Req* r = NewReq(env, tag, Op::kRead);
  r->length = len;
  r->bounce.reset(new char[len > 0 ? len : 1]);
  r->dest = std::move(dest);
  Submit(env, r, rbd_aio_read(h_.image, off, len, r->bounce.get(), r->comp), "rbd_aio_read");
  return env.Undefined();
}

// write(tag, offset, bufs)
Napi::Value RbdImage::JS_write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t tag = ArgTag(info);
  uint64_t off = ArgU64(info, 1, "offset");
  uint64_t len = 0;
  std::vector<iovec> src = Views(env, info[2], &len);
  Req* r = NewReq(env, tag, Op::kWrite);
  r->length = len;
  r->bounce.reset(new char[len > 0 ? len : 1]);
  char* p = r->bounce.get();
  for (const iovec& v : src) {
    std::memcpy(p, v.iov_base, v.iov_len);
    p += v.iov_len;
  }
  Submit(env, r, rbd_aio_write(h_.image, off, len, r->bounce.get(), r->comp), "rbd_aio_write");
  return env.Undefined();
}

// flush(tag)
Napi::Value RbdImage::JS_flush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Req* r = NewReq(env, ArgTag(info), Op::kFlush);
  Submit(env, r, rbd_aio_flush(h_.image, r->comp), "rbd_aio_flush");
  return env.Undefined();
}

// discard(tag, offset, length)
Napi::Value RbdImage::JS_discard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t tag = ArgTag(info);
  uint64_t off = ArgU64(info, 1, "offset");
  uint64_t len = ArgU64(info, 2, "length");
  Req* r = NewReq(env, tag, Op::kDiscard);
  Submit(env, r, rbd_aio_discard(h_.image, off, len, r->comp), "rbd_aio_discard");
  return env.Undefined();
}

// writeZeroes(tag, offset, length, unmap): without unmap the range stays allocated.
Napi::Value RbdImage::JS_writeZeroes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t tag = ArgTag(info);
  uint64_t off = ArgU64(info, 1, "offset");
  uint64_t len = ArgU64(info, 2, "length");
  bool unmap = info.Length() > 3 && info[3].ToBoolean().Value();
  Req* r = NewReq(env, tag, Op::kWriteZeroes);
  int flags = unmap ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
  Submit(env, r, rbd_aio_write_zeroes(h_.image, off, len, r->comp, flags, 0), "rbd_aio_write_zeroes");
  return env.Undefined();
}

// cancel(tag): the caller no longer waits for tag; its views are forgotten now. Returns
// whether tag was in flight.
Napi::Value RbdImage::JS_cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t tag = ArgTag(info);
  auto it = live_.find(tag);
  if (it == live_.end()) return Napi::Boolean::New(env, false);
  it->second->cancelled = true;
  it->second->dest.clear();
  live_.erase(it);
  UpdateRefs();
  return Napi::Boolean::New(env, true);
}

// currentSize(): the image size librbd knows now (it follows header updates).
Napi::Value RbdImage::JS_currentSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  uint64_t size = 0;
  int r = rbd_get_size(h_.image, &size);
  if (r < 0) ThrowErrno(env, "rbd_get_size", -r);
  return Napi::Number::New(env, static_cast<double>(size));
}

Napi::Value RbdImage::JS_getCompletions(const Napi::CallbackInfo& info) { return completions_ref_.Value(); }

Napi::Value RbdImage::JS_getPending(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(pending_));
}

// close(): resolves once librbd let go of the image. Requests still live are cancelled. When
// librbd still holds cancelled requests (an unreachable cluster), the image, its eventfd and
// those requests are abandoned (leaked) instead: closing would block until the cluster answers.
// Resolves with the number of requests abandoned.
Napi::Value RbdImage::JS_close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CheckOpen(env);
  for (auto& kv : live_) {
    kv.second->cancelled = true;
    kv.second->dest.clear();
  }
  live_.clear();
  // Requests that already completed are released here; only those librbd still holds count.
  rbd_completion_t comps[64];
  int got;
  while ((got = rbd_poll_io_events(h_.image, comps, 64)) > 0) {
    for (int i = 0; i < got; ++i) {
      delete static_cast<Req*>(rbd_aio_get_arg(comps[i]));
      rbd_aio_release(comps[i]);
      --pending_;
    }
  }
  StopPoll();
  open_ = false;
  Unref();
  if (pending_ > 0) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    d.Resolve(Napi::Number::New(env, static_cast<double>(pending_)));
    return d.Promise();
  }
  auto* w = new RbdCloseWorker(env, h_, eventfd_);
  h_ = Handles();
  eventfd_ = -1;
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

void RbdImage::StopPoll() {
  if (poll_ == nullptr) return;
  uv_poll_stop(poll_);
  uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* p) { delete reinterpret_cast<uv_poll_t*>(p); });
  poll_ = nullptr;
  poll_refd_ = false;
}

// The loop stays alive while the caller waits for a request (not for cancelled ones).
void RbdImage::UpdateRefs() {
  if (poll_ == nullptr) return;
  bool want = !live_.empty();
  if (want == poll_refd_) return;
  poll_refd_ = want;
  if (want) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  else uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
}

void RbdImage::OnEventfd() {
  uint64_t counter;
  ssize_t rd = read(eventfd_, &counter, sizeof(counter));
  (void)rd;  // EAGAIN: a merged wake-up already drained
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  constexpr int kPoll = 64;
  rbd_completion_t comps[kPoll];
  uint32_t n = 0;
  while (open_) {
    int got = rbd_poll_io_events(h_.image, comps, kPoll);
    for (int i = 0; i < got; ++i) {
      Req* r = static_cast<Req*>(rbd_aio_get_arg(comps[i]));
      ssize_t rv = rbd_aio_get_return_value(comps[i]);
      rbd_aio_release(comps[i]);
      --pending_;
      if (r->cancelled) {
        delete r;
        continue;
      }
      live_.erase(r->tag);
      int32_t res = rv < 0 ? static_cast<int32_t>(rv) : 0;
      if (r->op == Op::kRead && rv >= 0) {
        if (static_cast<uint64_t>(rv) != r->length) {
          res = -EIO;
        } else {
          const char* p = r->bounce.get();
          for (const iovec& v : r->dest) {
            std::memcpy(v.iov_base, p, v.iov_len);
            p += v.iov_len;
          }
        }
      }
      completions_[2 * n] = static_cast<int32_t>(r->tag);
      completions_[2 * n + 1] = res;
      ++n;
      delete r;
    }
    bool drained = got < kPoll;
    if (!drained && n + kPoll <= completions_cap_) continue;  // room for another poll: batch
    bool changed = h_.watch != nullptr && h_.watch->changed.exchange(false, std::memory_order_acq_rel);
    if (n > 0 || changed) {
      UpdateRefs();
      try {
        on_complete_.MakeCallback(Value(), {Napi::Number::New(env, n), Napi::Boolean::New(env, changed)}, *async_context_);
      } catch (const Napi::Error& e) {
        napi_fatal_exception(env, e.Value());
      }
      n = 0;
    }
    if (drained) break;
  }
  UpdateRefs();
}

}  // namespace vbc
#endif  // VBC_HAVE_RBD

namespace vbc {

Napi::Object InitRbd(Napi::Env env, Napi::Object exports) {
  Napi::Object rbd = Napi::Object::New(env);
#ifdef VBC_HAVE_RBD
  rbd.Set("available", Napi::Boolean::New(env, true));
  rbd.Set("RbdImage", RbdImage::DefineClass(env));
  rbd.Set("connections", Napi::Function::New<JS_connections>(env, "connections"));
#else
  rbd.Set("available", Napi::Boolean::New(env, false));
#endif
  exports.Set("rbd", rbd);
  return exports;
}

}  // namespace vbc
