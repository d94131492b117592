// Backend: one handler per vhost-user front-end message we implement (vhost-user.rst,
// "Front-end message types"), named after the message, and the dispatch table giving each its
// payload size rule. Dispatch (connection.cc) checks the size before calling a handler, so a
// handler may read its fixed-size payload directly; everything else in the payload is
// validated here before use. A handler returns kOk/kFail (REPLY_ACK 0/1), kDropped after a
// Panic or a failed reply, or kDeferred (GET_VRING_BASE waiting for in-flight requests).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "vhost/backend_internal.h"

namespace vbc {
namespace vhost {

const Backend::MessageRule* Backend::RuleFor(uint32_t request) {
  constexpr uint32_t kU64 = sizeof(uint64_t);
  constexpr uint32_t kState = sizeof(VringState);
  constexpr uint32_t kConfigMin = sizeof(ConfigMsgHeader);
  constexpr uint32_t kConfigMax = sizeof(ConfigMsgHeader) + kMaxConfigSize;
  constexpr uint32_t kInflightMin = kInflightMsgMinSize;
  constexpr uint32_t kInflightMax = sizeof(InflightMsg);
  static const MessageRule kNone{nullptr, 0, 0};
  static const MessageRule kTable[VHOST_USER_REQUEST_COUNT] = {
      /* NONE */ kNone,
      /* GET_FEATURES */ {&Backend::HandleGetFeatures, 0, 0},
      /* SET_FEATURES */ {&Backend::HandleSetFeatures, kU64, kU64},
      /* SET_OWNER */ {&Backend::HandleSetOwner, 0, 0},
      /* RESET_OWNER */ {&Backend::HandleResetOwner, 0, 0},
      /* SET_MEM_TABLE */ {&Backend::HandleSetMemTable, 8, sizeof(MemTableMsg)},
      /* SET_LOG_BASE */ kNone,
      /* SET_LOG_FD */ kNone,
      /* SET_VRING_NUM */ {&Backend::HandleSetVringNum, kState, kState},
      /* SET_VRING_ADDR */ {&Backend::HandleSetVringAddr, sizeof(VringAddr), sizeof(VringAddr)},
      /* SET_VRING_BASE */ {&Backend::HandleSetVringBase, kState, kState},
      /* GET_VRING_BASE */ {&Backend::HandleGetVringBase, kState, kState},
      /* SET_VRING_KICK */ {&Backend::HandleSetVringKick, kU64, kU64},
      /* SET_VRING_CALL */ {&Backend::HandleSetVringCall, kU64, kU64},
      /* SET_VRING_ERR */ {&Backend::HandleSetVringErr, kU64, kU64},
      /* GET_PROTOCOL_FEATURES */ {&Backend::HandleGetProtocolFeatures, 0, 0},
      /* SET_PROTOCOL_FEATURES */ {&Backend::HandleSetProtocolFeatures, kU64, kU64},
      /* GET_QUEUE_NUM */ {&Backend::HandleGetQueueNum, 0, 0},
      /* SET_VRING_ENABLE */ {&Backend::HandleSetVringEnable, kState, kState},
      /* SEND_RARP */ kNone,
      /* NET_SET_MTU */ kNone,
      /* SET_BACKEND_REQ_FD */ kNone,
      /* IOTLB_MSG */ kNone,
      /* SET_VRING_ENDIAN */ kNone,
      /* GET_CONFIG */ {&Backend::HandleGetConfig, kConfigMin, kConfigMax},
      /* SET_CONFIG */ {&Backend::HandleSetConfig, kConfigMin, kConfigMax},
      /* CREATE_CRYPTO_SESSION */ kNone,
      /* CLOSE_CRYPTO_SESSION */ kNone,
      /* POSTCOPY_ADVISE */ kNone,
      /* POSTCOPY_LISTEN */ kNone,
      /* POSTCOPY_END */ kNone,
      /* GET_INFLIGHT_FD */ {&Backend::HandleGetInflightFd, kInflightMin, kInflightMax},
      /* SET_INFLIGHT_FD */ {&Backend::HandleSetInflightFd, kInflightMin, kInflightMax},
      /* GPU_SET_SOCKET */ kNone,
      /* RESET_DEVICE */ {&Backend::HandleResetDevice, 0, 0},
      /* VRING_KICK */ kNone,
      /* GET_MAX_MEM_SLOTS */ {&Backend::HandleGetMaxMemSlots, 0, 0},
      /* ADD_MEM_REG */ {&Backend::HandleAddMemReg, sizeof(MemRegMsg), sizeof(MemRegMsg)},
      /* REM_MEM_REG */ {&Backend::HandleRemMemReg, sizeof(MemRegMsg), sizeof(MemRegMsg)},
      /* SET_STATUS */ kNone,
      /* GET_STATUS */ kNone,
      /* GET_SHARED_OBJECT */ kNone,
      /* SET_DEVICE_STATE_FD */ kNone,
      /* CHECK_DEVICE_STATE */ kNone,
  };
  if (request >= VHOST_USER_REQUEST_COUNT || kTable[request].handler == nullptr) return nullptr;
  return &kTable[request];
}

uint64_t Backend::OfferedFeatures() const {
  return options_.device_features | Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
         Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(VHOST_USER_F_PROTOCOL_FEATURES);
}

uint64_t Backend::OfferedProtocolFeatures() const {
  return Bit(VHOST_USER_PROTOCOL_F_MQ) | Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK) |
         Bit(VHOST_USER_PROTOCOL_F_CONFIG) | Bit(VHOST_USER_PROTOCOL_F_RESET_DEVICE) |
         Bit(VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) | Bit(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD);
}

// ---------------------------------------------------------------------------------------------
// Features and session

Backend::Result Backend::HandleGetFeatures(const Message& m) {
  return SendU64Reply(m.hdr.request, OfferedFeatures()) ? Result::kOk : Result::kDropped;
}

Backend::Result Backend::HandleSetFeatures(const Message& m) {
  const uint64_t v = U64(m.payload);
  const uint64_t offered = OfferedFeatures();
  if ((v & ~offered) != 0) {
    Panic("front end acknowledged features we did not offer: " + std::to_string(v & ~offered));
    return Result::kDropped;
  }
  conn_.features = v;
  conn_.features_set = true;
  ApplyFeatures();
  return Result::kOk;
}

Backend::Result Backend::HandleGetProtocolFeatures(const Message& m) {
  return SendU64Reply(m.hdr.request, OfferedProtocolFeatures()) ? Result::kOk : Result::kDropped;
}

Backend::Result Backend::HandleSetProtocolFeatures(const Message& m) {
  const uint64_t v = U64(m.payload);
  if ((v & ~OfferedProtocolFeatures()) != 0) {
    Panic("front end acknowledged protocol features we did not offer");
    return Result::kDropped;
  }
  conn_.protocol_features = v;
  return Result::kOk;
}

Backend::Result Backend::HandleSetOwner(const Message&) { return Result::kOk; }

Backend::Result Backend::HandleResetOwner(const Message&) {
  StopAllQueues();
  return Result::kOk;
}

Backend::Result Backend::HandleResetDevice(const Message&) {
  StopAllQueues();
  conn_.features = 0;
  conn_.features_set = false;
  return Result::kOk;
}

Backend::Result Backend::HandleGetQueueNum(const Message& m) {
  return SendU64Reply(m.hdr.request, options_.max_queues) ? Result::kOk : Result::kDropped;
}

// ---------------------------------------------------------------------------------------------
// Memory table

Backend::Result Backend::HandleGetMaxMemSlots(const Message& m) {
  return SendU64Reply(m.hdr.request, kMaxMemSlots) ? Result::kOk : Result::kDropped;
}

namespace {
// Log fields of one memory region (debug line "memory region", per SET_MEM_TABLE/ADD_MEM_REG).
std::vector<LogField> RegionFields(const MemRegionDesc& d) {
  return {Num("gpa", static_cast<double>(d.guest_phys_addr)),
          Num("size", static_cast<double>(d.memory_size)),
          Num("offset", static_cast<double>(d.mmap_offset))};
}
}  // namespace

Backend::Result Backend::HandleSetMemTable(const Message& m) {
  uint32_t n;
  std::memcpy(&n, m.payload, 4);
  if (n > kMaxMemTableRegions ||
      (m.hdr.size != 8 + sizeof(MemRegionDesc) * n && m.hdr.size != sizeof(MemTableMsg))) {
    Panic("SET_MEM_TABLE with " + std::to_string(n) + " regions in " + std::to_string(m.hdr.size) +
          " bytes");
    return Result::kDropped;
  }
  if (m.fds.size() != n) {
    Panic("SET_MEM_TABLE with " + std::to_string(n) + " regions but " +
          std::to_string(m.fds.size()) + " fds");
    return Result::kDropped;
  }
  MemRegionDesc descs[kMaxMemTableRegions];
  std::memcpy(descs, m.payload + 8, sizeof(MemRegionDesc) * n);
  std::string err;
  if (!mem_.SetTable(descs, n, m.fds.data(), &err)) {
    Panic("SET_MEM_TABLE: " + err);
    return Result::kDropped;
  }
  for (uint32_t i = 0; i < n; i++) Log(LogLevel::kDebug, "memory region", RegionFields(descs[i]));
  host_->MemoryTableChanged();
  return ReResolveRings() ? Result::kOk : Result::kDropped;
}

Backend::Result Backend::HandleAddMemReg(const Message& m) {
  if (m.fds.size() != 1) {
    Panic("ADD_MEM_REG needs exactly one fd, got " + std::to_string(m.fds.size()));
    return Result::kDropped;
  }
  MemRegMsg r;
  std::memcpy(&r, m.payload, sizeof r);
  std::string err;
  if (!mem_.AddRegion(r.region, m.fds[0], &err)) return Refuse(m.hdr, err);
  Log(LogLevel::kDebug, "memory region", RegionFields(r.region));
  return ReResolveRings() ? Result::kOk : Result::kDropped;
}

Backend::Result Backend::HandleRemMemReg(const Message& m) {
  if (m.fds.size() > 1) {
    Panic("REM_MEM_REG with more than one fd");
    return Result::kDropped;
  }
  MemRegMsg r;
  std::memcpy(&r, m.payload, sizeof r);
  std::string err;
  if (!mem_.RemoveRegion(r.region, &err)) return Refuse(m.hdr, err);
  host_->MemoryTableChanged();
  return ReResolveRings() ? Result::kOk : Result::kDropped;
}

// ---------------------------------------------------------------------------------------------
// Vring configuration

Backend::Result Backend::HandleSetVringNum(const Message& m) {
  VringState s;
  Queue* q = VringStateMessage(m, &s);
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

Backend::Result Backend::HandleSetVringBase(const Message& m) {
  VringState s;
  Queue* q = VringStateMessage(m, &s);
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

Backend::Result Backend::HandleSetVringAddr(const Message& m) {
  VringAddr a;
  std::memcpy(&a, m.payload, sizeof a);
  Queue* q = QueueFor(a.index, "VHOST_USER_SET_VRING_ADDR");
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
  if (!inflight_.mapping && q->ring.used_idx() != q->ring.last_avail_idx()) {
    Log(LogLevel::kWarn, "used index differs from the base: requests were lost",
        {Num("queue", a.index), Num("used", q->ring.used_idx()),
         Num("base", q->ring.last_avail_idx())});
  }
  UpdateRunning(a.index);
  return Result::kOk;
}

Backend::Result Backend::HandleGetVringBase(const Message& m) {
  VringState s;
  Queue* q = VringStateMessage(m, &s);
  if (q == nullptr) return Result::kDropped;
  StopQueue(s.index, false);
  if (q->inflight > 0) {
    q->stop_pending = true;
    conn_.deferred_queue = static_cast<int>(s.index);
    conn_.reading_paused = true;
    uv_poll_start(&conn_.watch->handle, UV_DISCONNECT, OnPoll);
    Log(LogLevel::kDebug, "GET_VRING_BASE waits for in-flight requests",
        {Num("queue", s.index), Num("inflight", q->inflight)});
    return Result::kDeferred;
  }
  return FinishGetVringBase(s.index) ? Result::kOk : Result::kDropped;
}

bool Backend::FinishGetVringBase(uint32_t index) {
  Queue& q = queues_[index];
  VringState s{index, q.ring.last_avail_idx()};
  ClearHeadRequests(q);
  q.stop_pending = false;
  const bool was_deferred = conn_.deferred_queue == static_cast<int>(index);
  if (was_deferred) conn_.deferred_queue = -1;
  if (!SendReply(VHOST_USER_GET_VRING_BASE, &s, sizeof s)) return false;
  if (was_deferred && conn_.reading_paused) {
    conn_.reading_paused = false;
    uv_poll_start(&conn_.watch->handle, UV_READABLE | UV_DISCONNECT, OnPoll);
  }
  return true;
}

Backend::Queue* Backend::VringStateMessage(const Message& m, VringState* s) {
  std::memcpy(s, m.payload, sizeof *s);
  return QueueFor(s->index, MessageName(m.hdr.request));
}

Backend::Queue* Backend::VringFdMessage(const Message& m, int* fd) {
  const uint64_t v = U64(m.payload);
  const uint32_t index = static_cast<uint32_t>(v & kVringIndexMask);
  const bool nofd = (v & kVringNoFdMask) != 0;
  const std::string nm = NameOf(m.hdr.request);
  if ((v & ~(kVringIndexMask | kVringNoFdMask)) != 0) {
    Panic(nm + " with reserved bits set");
    return nullptr;
  }
  Queue* q = QueueFor(index, MessageName(m.hdr.request));
  if (q == nullptr) return nullptr;
  if (m.fds.size() != (nofd ? 0u : 1u)) {
    Panic(nm + " with " + std::to_string(m.fds.size()) + " fds" + (nofd ? " (no-fd flag)" : ""));
    return nullptr;
  }
  *fd = -1;
  if (!nofd) std::swap(*fd, m.fds[0]);
  return q;
}

namespace {
// A kick or call fd must be an eventfd (anything else could block, or report readiness
// forever); it is made non-blocking so no read or write on it can park the loop. Returns ""
// or why the fd is refused.
std::string PrepareEventFd(int fd) {
  char link[64];
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = readlink(proc.c_str(), link, sizeof link - 1);
  if (n < 0) return "fd cannot be inspected: " + ErrnoName(errno);
  link[n] = 0;
  if (std::strcmp(link, "anon_inode:[eventfd]") != 0) return std::string("not an eventfd: ") + link;
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    return "cannot make the eventfd non-blocking: " + ErrnoName(errno);
  }
  return "";
}
}  // namespace

Backend::Result Backend::HandleSetVringKick(const Message& m) {
  int fd;
  Queue* q = VringFdMessage(m, &fd);
  if (q == nullptr) return Result::kDropped;
  const uint32_t index = static_cast<uint32_t>(q - queues_.data());
  if (fd >= 0) {
    const std::string why = PrepareEventFd(fd);
    if (!why.empty()) {
      CloseFd(&fd);
      return Refuse(m.hdr, "kick fd of queue " + std::to_string(index) + ": " + why);
    }
  }
  if (fd < 0) {
    StopQueue(index, false);
    Log(LogLevel::kWarn, "SET_VRING_KICK without fd (polling) is not supported",
        {Num("queue", index)});
    return Result::kFail;
  }
  if (q->running) {
    StopWatch(&q->kick_watch);
    CloseFd(&q->kick_fd);
    q->kick_fd = fd;
    q->kick_watch =
        StartWatch(q->kick_fd, kWatchKick, static_cast<int>(index), UV_READABLE | UV_DISCONNECT);
    q->process_pending = true;
    ScheduleCheck();
  } else {
    CloseFd(&q->kick_fd);
    q->kick_fd = fd;
    UpdateRunning(index);
  }
  return Result::kOk;
}

Backend::Result Backend::HandleSetVringCall(const Message& m) {
  int fd;
  Queue* q = VringFdMessage(m, &fd);
  if (q == nullptr) return Result::kDropped;
  if (fd >= 0) {
    const std::string why = PrepareEventFd(fd);
    if (!why.empty()) {
      CloseFd(&fd);
      return Refuse(m.hdr, "call fd of queue " + std::to_string(q - queues_.data()) + ": " + why);
    }
  }
  CloseFd(&q->call_fd);
  q->call_fd = fd;
  return Result::kOk;
}

Backend::Result Backend::HandleSetVringErr(const Message& m) {
  int fd;
  Queue* q = VringFdMessage(m, &fd);
  if (q == nullptr) return Result::kDropped;
  CloseFd(&fd);  // the error fd is not used
  return Result::kOk;
}

Backend::Result Backend::HandleSetVringEnable(const Message& m) {
  VringState s;
  Queue* q = VringStateMessage(m, &s);
  if (q == nullptr) return Result::kDropped;
  if (s.num > 1) {
    Panic("SET_VRING_ENABLE with " + std::to_string(s.num));
    return Result::kDropped;
  }
  q->enable = static_cast<int>(s.num);
  UpdateRunning(s.index);
  return Result::kOk;
}

// ---------------------------------------------------------------------------------------------
// Device config space

namespace {
// The config header of GET/SET_CONFIG, or false when its size disagrees with the payload.
bool ConfigHeader(const MsgHeader& h, const uint8_t* p, ConfigMsgHeader* c) {
  std::memcpy(c, p, sizeof *c);
  return h.size == sizeof *c + c->size;
}
bool ConfigInRange(const ConfigMsgHeader& c) {
  return c.size <= kMaxConfigSize && c.offset <= kMaxConfigSize - c.size;
}
}  // namespace

Backend::Result Backend::HandleGetConfig(const Message& m) {
  ConfigMsgHeader c;
  if (!ConfigHeader(m.hdr, m.payload, &c)) {
    Panic("VHOST_USER_GET_CONFIG size " + std::to_string(c.size) + " does not match the payload");
    return Result::kDropped;
  }
  if (!ConfigInRange(c)) {
    Log(LogLevel::kWarn, "GET_CONFIG out of range", {Num("offset", c.offset), Num("size", c.size)});
    return SendReply(m.hdr.request, nullptr, 0) ? Result::kOk : Result::kDropped;
  }
  uint8_t out[sizeof(ConfigMsgHeader) + kMaxConfigSize] = {};
  std::memcpy(out, &c, sizeof c);
  const std::vector<uint8_t>& img = options_.config;
  for (uint32_t i = 0; i < c.size; i++) {
    const size_t at = static_cast<size_t>(c.offset) + i;
    out[sizeof c + i] = at < img.size() ? img[at] : 0;
  }
  return SendReply(m.hdr.request, out, static_cast<uint32_t>(sizeof c + c.size)) ? Result::kOk
                                                                                : Result::kDropped;
}

Backend::Result Backend::HandleSetConfig(const Message& m) {
  ConfigMsgHeader c;
  if (!ConfigHeader(m.hdr, m.payload, &c)) {
    Panic("VHOST_USER_SET_CONFIG size " + std::to_string(c.size) + " does not match the payload");
    return Result::kDropped;
  }
  if (!ConfigInRange(c)) return Refuse(m.hdr, "config write out of range");
  DeviceEvent ev;
  ev.kind = DeviceEvent::kConfigWrite;
  ev.offset = c.offset;
  ev.data.assign(m.payload + sizeof c, m.payload + sizeof c + c.size);
  Emit(std::move(ev));
  return Result::kOk;
}

// ---------------------------------------------------------------------------------------------
// Inflight I/O tracking (INFLIGHT_SHMFD)

namespace {
// The inflight description of GET/SET_INFLIGHT_FD (payload 20..24 bytes, see InflightMsg).
InflightMsg InflightDescription(const uint8_t* p, uint32_t size) {
  InflightMsg d{};
  std::memcpy(&d, p, size);
  return d;
}
}  // namespace

// Geometry the front end asks for: within what SET_VRING_NUM and GET_QUEUE_NUM allow, so the
// region (and the work to recover it) stays bounded.
bool Backend::InflightGeometryOk(uint32_t num_queues, uint32_t queue_size, std::string* why) const {
  if (num_queues == 0 || num_queues > options_.max_queues || queue_size == 0 ||
      queue_size > options_.max_queue_size) {
    *why = std::to_string(num_queues) + " queues of " + std::to_string(queue_size) +
           " descriptors (at most " + std::to_string(options_.max_queues) + " of " +
           std::to_string(options_.max_queue_size) + ")";
    return false;
  }
  return true;
}

// Attaching a new region while requests are in flight would lose track of them.
bool Backend::InflightReplaceable() const {
  for (const Queue& q : queues_) {
    if (q.running || q.inflight > 0) return false;
  }
  return true;
}

Backend::Result Backend::HandleGetInflightFd(const Message& m) {
  if ((conn_.protocol_features & Bit(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)) == 0) {
    Panic("GET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD");
    return Result::kDropped;
  }
  InflightMsg d = InflightDescription(m.payload, m.hdr.size);
  std::string err;
  if (!InflightGeometryOk(d.num_queues, d.queue_size, &err) || !InflightReplaceable()) {
    Panic("GET_INFLIGHT_FD: " + (err.empty() ? std::string("queues are running") : err));
    return Result::kDropped;
  }
  InflightRegion region;
  int fd = CreateInflightRegion(d.num_queues, d.queue_size, &region, &err);
  if (fd < 0) {
    Panic("GET_INFLIGHT_FD: " + err);
    return Result::kDropped;
  }
  inflight_ = std::move(region);
  for (Queue& q : queues_) q.tracker.Detach();
  d.mmap_size = InflightRegionBytes(d.num_queues, d.queue_size);
  d.mmap_offset = 0;
  Log(LogLevel::kInfo, "inflight region created",
      {Num("queues", d.num_queues), Num("queueSize", d.queue_size),
       Num("bytes", static_cast<double>(d.mmap_size))});
  const bool sent = SendReply(m.hdr.request, &d, m.hdr.size, fd);
  CloseFd(&fd);
  return sent ? Result::kOk : Result::kDropped;
}

Backend::Result Backend::HandleSetInflightFd(const Message& m) {
  if ((conn_.protocol_features & Bit(VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)) == 0) {
    Panic("SET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD");
    return Result::kDropped;
  }
  if (m.fds.size() != 1) {
    Panic("SET_INFLIGHT_FD needs exactly one fd, got " + std::to_string(m.fds.size()));
    return Result::kDropped;
  }
  const InflightMsg d = InflightDescription(m.payload, m.hdr.size);
  std::string err;
  if (!InflightGeometryOk(d.num_queues, d.queue_size, &err)) {
    Panic("SET_INFLIGHT_FD: " + err);
    return Result::kDropped;
  }
  if (!InflightReplaceable()) {
    Panic("SET_INFLIGHT_FD while queues are running");
    return Result::kDropped;
  }
  InflightRegion region;
  if (!MapInflightRegion(m.fds[0], d.mmap_size, d.mmap_offset, d.num_queues, d.queue_size,
                         &region, &err)) {
    Panic("SET_INFLIGHT_FD: " + err);
    return Result::kDropped;
  }
  inflight_ = std::move(region);
  for (Queue& q : queues_) q.tracker.Detach();
  Log(LogLevel::kInfo, "inflight region attached",
      {Num("queues", d.num_queues), Num("queueSize", d.queue_size)});
  return Result::kOk;
}

}  // namespace vhost
}  // namespace vbc
