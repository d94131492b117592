// The vhost-user-blk back end: one Backend per device (socket). Everything runs on the Node
// main thread, driven by uv_poll_t handles on the Node loop; JS is reached only through
// BackendHost. The implementation is split by job:
//   listener.cc    the socket: Listen/Adopt, accept, Close
//   connection.cc  uv plumbing, events, the connection's life (start, disconnect, panic),
//                  message reading, the dispatch table and replies
//   handlers.cc    one Handle<Message> function per vhost-user message we implement
//   queues.cc      ring states, popping requests, completions from JS
//   inflight.cc    the INFLIGHT_SHMFD region (which heads are in flight, recovery)
// Limits live in vhost/limits.h, wire formats in vhost/protocol.h.
//
// Connection states: listening (listen fd watched) -> connected (connection fd watched) ->
// back to listening when the front end closes, on an I/O error, or on Panic(). The listen fd
// stays watched while connected: a second front end is accepted, logged and closed at once
// (unless the current one has already hung up: then that one is dropped first). At accept the
// peer's credentials (SO_PEERCRED) are logged and checked against allowed_uids. An inherited
// connected fd has no listen socket: after it ends the device stays idle until close().
//
// A front end cannot stall the loop: sockets and kick/call fds are non-blocking (kick/call
// fds must be eventfds), a header whose size does not fit its message is refused before any
// payload is awaited, and each loop turn reads at most kMaxMessagesPerTurn messages per
// connection and answers at most kMaxInlineAnswersPerPass chains natively per queue; the rest
// waits for the next turn. Warnings are rate-limited per device (vhost/limits.h).
//
// Ring states (vhost-user.rst "Ring states"): a queue is started once it has a size, addresses
// and a kick fd; enabled by SET_VRING_ENABLE (initially enabled only when
// VHOST_USER_F_PROTOCOL_FEATURES was not negotiated). It is processed (kick fd watched) only
// while started and enabled. GET_VRING_BASE stops it; if requests of that queue are still in
// JS, the reply waits until they complete (no further messages are read meanwhile).
//
// Requests: each popped chain that carves into a virtio-blk request gets a request tag (see
// MakeTag) and goes to JS; complete() writes the status byte and the used element, and the
// call eventfd is written at most once per loop turn per queue (uv_check, plus a uv_idle so
// the loop does not block in poll meanwhile).
//
// Inflight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, vhost/inflight.h): GET_INFLIGHT_FD
// creates the shared region, SET_INFLIGHT_FD maps the one the front end kept (validated). While a
// region is attached, every popped head is recorded before it goes to JS and cleared once its
// used element is published. The first time each queue runs after GET/SET_INFLIGHT_FD, the
// region is recovered: heads left in flight by a previous back end process are resubmitted (by
// counter order) before any new avail entry, and the next avail index becomes used->idx + their
// number (the front end's SET_VRING_BASE after a crash is only the used index).
//
// Panic(reason): the one error path for anything a front end did wrong. It reports 'broken',
// then drops the connection exactly like a disconnect: closes the socket and every kick/call
// fd, forgets rings, in-flight requests and the memory table (mappings stay while JS views
// refer to them) and listens again.
#pragma once
#include <uv.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "blk/blk_request.h"
#include "vhost/guest_memory.h"
#include "vhost/inflight.h"
#include "vhost/limits.h"
#include "vhost/protocol.h"
#include "vhost/device_vring.h"

namespace vbc {
namespace vhost {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError };

struct LogField {
  std::string key;
  bool is_string;
  double num;
  std::string str;
};

struct DeviceEvent {
  enum Kind { kListening, kConnected, kDisconnected, kBroken, kQueueStarted, kQueueStopped,
              kConfigWrite, kLog };
  Kind kind;
  std::string text;  // listening: path ("" = none); disconnected/broken: reason; log: msg
  int queue = 0;
  uint32_t size = 0;    // queue-started: ring size
  uint32_t offset = 0;  // config-write
  std::vector<uint8_t> data;  // config-write
  LogLevel level = LogLevel::kInfo;
  std::vector<LogField> fields;
};

// One request handed to JS.
struct PendingRequest {
  uint32_t tag;
  uint32_t type;
  uint64_t sector;
  uint64_t data_len;
  uint32_t first_seg;
  uint32_t seg_count;
};

class BackendHost {
 public:
  virtual ~BackendHost() = default;
  // Calls onRequests(queue, reqs.size(), views of segs) once.
  virtual void DeliverRequests(int queue, const std::vector<PendingRequest>& reqs,
                               const std::vector<HostIov>& segs) = 0;
  virtual void EmitEvent(const DeviceEvent& ev) = 0;
  // The memory table changed (or was cleared): drop JS caches of mappings no longer in it.
  virtual void MemoryTableChanged() = 0;
  // close() finished: every uv handle is closed; the host may let go of the backend.
  virtual void AllHandlesClosed() = 0;
};

struct BackendOptions {
  uint32_t max_queues = 1;
  uint32_t max_queue_size = 256;
  uint64_t device_features = 0;
  std::vector<uint8_t> config;
  // Peer uids (SO_PEERCRED) allowed to connect; empty: any peer that can reach the socket.
  std::vector<uint32_t> allowed_uids;
  blk::Limits limits;
};

// Errors of Listen/Adopt: an errno-style code and a message.
struct SetupError {
  std::string code;
  std::string message;
};

class Backend {
 public:
  Backend(uv_loop_t* loop, BackendHost* host, BackendOptions options);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Creates the unix socket at path with mode (see vhost_device.cc for the EADDRINUSE rules).
  bool Listen(const std::string& path, uint32_t mode, SetupError* err);
  // Takes an inherited socket fd (listening or connected).
  bool Adopt(int fd, SetupError* err);

  // JS entry points.
  // Completes `count` [tag, status] pairs of queue; returns false with *err for bad arguments.
  bool Complete(uint32_t queue, const uint32_t* pairs, size_t count, std::string* err);
  void SetConfig(std::vector<uint8_t> config) { options_.config = std::move(config); }
  std::vector<uint32_t> Inflight() const;
  bool connected() const { return conn_.fd >= 0; }
  // The host found the device unusable (e.g. SIGBUS on its guest memory): Panic, from a uv
  // callback of the host.
  void Fail(const std::string& reason);
  void Close();
  bool closed() const { return closed_; }
  // True once Listen/Adopt created uv handles: the backend must then be closed (and its
  // handles' close callbacks run) before it may be destroyed.
  bool has_handles() const { return open_handles_ > 0; }

  const GuestMemory& memory() const { return mem_; }
  // true if a SIGBUS replaced guest memory or the inflight region of this connection.
  bool MemoryFaulted() const {
    return mem_.Faulted() || (inflight_.mapping && inflight_.mapping->faulted());
  }
  const std::string& socket_path() const { return created_path_; }
  uint32_t max_queue_size() const { return options_.max_queue_size; }

  // Request tags: generation | queue | head (field widths in vhost/limits.h).
  static uint32_t MakeTag(uint32_t gen, uint32_t queue, uint32_t head) {
    return ((gen & kTagGenMask) << (kTagHeadBits + kTagQueueBits)) | (queue << kTagHeadBits) |
           head;
  }
  static uint32_t TagHead(uint32_t tag) { return tag & kTagHeadMask; }
  static uint32_t TagQueue(uint32_t tag) { return (tag >> kTagHeadBits) & kTagQueueMask; }
  static uint32_t TagGen(uint32_t tag) { return tag >> (kTagHeadBits + kTagQueueBits); }

 private:
  struct Watch;
  // What the back end keeps about the request a popped head carries until JS completes it.
  struct HeadRequest {
    bool active = false;
    uint32_t type = 0;
    uint64_t data_len = 0;
    uint8_t* status = nullptr;
    std::shared_ptr<Mapping> status_mapping;
  };
  struct Queue {
    DeviceVring ring;
    bool num_set = false;
    int kick_fd = -1;
    int call_fd = -1;
    int enable = -1;  // -1: not set by SET_VRING_ENABLE
    bool running = false;
    bool notify_pending = false;
    bool process_pending = false;  // drain once in the next check callback (ring just started)
    bool stop_pending = false;  // GET_VRING_BASE reply waits for in-flight requests
    uint32_t gen = 0;
    uint32_t inflight = 0;
    Watch* kick_watch = nullptr;
    std::vector<HeadRequest> head_requests;  // indexed by head while running
    // Attached to the inflight region by the first ProcessQueue after GET/SET_INFLIGHT_FD
    // (which detach it), recovering the region at that moment.
    InflightQueue tracker;
    std::vector<uint16_t> resubmit;  // heads to hand to JS again, by counter, before new ones
    size_t resubmit_next = 0;
    std::vector<uint16_t> used_batch;  // heads added to the used ring, not yet published
  };
  enum class Result { kOk, kFail, kDropped, kDeferred };
  // One received message as handlers see it. Handlers may take fds (swap them out); the rest
  // are closed after the handler returns.
  struct Message {
    const MsgHeader& hdr;
    const uint8_t* payload;
    std::vector<int>& fds;
  };
  using Handler = Result (Backend::*)(const Message& m);
  // Dispatch table entry: the handler and the payload sizes its message may carry.
  struct MessageRule {
    Handler handler;
    uint32_t min_size;
    uint32_t max_size;
  };
  static const MessageRule* RuleFor(uint32_t request);

  // Per-connection state: the receive buffer and what was negotiated. Reset at every connect
  // and disconnect.
  struct Connection {
    int fd = -1;
    Watch* watch = nullptr;
    bool reading_paused = false;
    MsgHeader hdr{};
    size_t hdr_got = 0;
    std::vector<uint8_t> payload;
    size_t payload_got = 0;
    std::vector<int> fds;
    uint64_t features = 0;
    uint64_t protocol_features = 0;
    bool features_set = false;
    int deferred_queue = -1;  // queue whose GET_VRING_BASE reply is deferred
  };

  // uv plumbing
  void InitHandles();
  Watch* StartWatch(int fd, int kind, int queue, int events);
  void StopWatch(Watch** w);
  static void OnPoll(uv_poll_t* h, int status, int events);
  static void OnWatchClosed(uv_handle_t* h);
  static void OnCheck(uv_check_t* h);
  static void OnIdle(uv_idle_t* h);
  static void OnHandleClosed(uv_handle_t* h);
  void HandleClosed();
  void ScheduleCheck();
  void RunCheck();
  // Runs one uv callback's work: an exception from it goes to the one panic path (device
  // broken, connection dropped), and queued events are delivered when the outermost callback
  // returns.
  template <typename Body>
  void Guarded(Body&& body);

  // events
  void Emit(DeviceEvent ev);
  // Warnings go through a per-device rate limit (kMaxWarningsPerWindow per kWarningWindowMs).
  void Log(LogLevel level, std::string msg, std::vector<LogField> fields = {});
  bool WarningAllowed();
  void FlushEvents();

  // listener (listener.cc)
  void OnListenReadable();
  // Peer credentials of a new connection as log fields; false (logged) when the uid is not
  // allowed.
  bool AdmitPeer(int fd, std::vector<LogField>* who);

  // connection (connection.cc)
  void StartConnection(int fd);
  void OnConnReadable();
  void Disconnect(const std::string& reason);
  void Panic(const std::string& reason);
  bool ReadMessages();
  // Checks a complete header's size against its message's rule; panics when it does not fit.
  bool HeaderSizeFits(const MsgHeader& h);
  // fd >= 0 travels with the reply (SCM_RIGHTS); the caller keeps and closes it.
  bool SendReply(uint32_t request, const void* payload, uint32_t size, int fd = -1);
  bool SendU64Reply(uint32_t request, uint64_t value);
  void Dispatch();
  Result Refuse(const MsgHeader& h, const std::string& reason);
  Result Unsupported(const Message& m);
  uint64_t OfferedFeatures() const;
  uint64_t OfferedProtocolFeatures() const;

  // message handlers (handlers.cc), one per vhost-user message
  Result HandleGetFeatures(const Message& m);
  Result HandleSetFeatures(const Message& m);
  Result HandleGetProtocolFeatures(const Message& m);
  Result HandleSetProtocolFeatures(const Message& m);
  Result HandleSetOwner(const Message& m);
  Result HandleResetOwner(const Message& m);
  Result HandleResetDevice(const Message& m);
  Result HandleGetQueueNum(const Message& m);
  Result HandleGetMaxMemSlots(const Message& m);
  Result HandleSetMemTable(const Message& m);
  Result HandleAddMemReg(const Message& m);
  Result HandleRemMemReg(const Message& m);
  Result HandleSetVringNum(const Message& m);
  Result HandleSetVringBase(const Message& m);
  Result HandleSetVringAddr(const Message& m);
  Result HandleGetVringBase(const Message& m);
  Result HandleSetVringKick(const Message& m);
  Result HandleSetVringCall(const Message& m);
  Result HandleSetVringErr(const Message& m);
  Result HandleSetVringEnable(const Message& m);
  Result HandleGetConfig(const Message& m);
  Result HandleSetConfig(const Message& m);
  Result HandleGetInflightFd(const Message& m);
  Result HandleSetInflightFd(const Message& m);
  // Shared parsing of SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE: the state and its queue, or
  // nullptr after a panic.
  Queue* VringStateMessage(const Message& m, VringState* s);
  // Shared parsing of SET_VRING_KICK/CALL/ERR: the queue and the fd (-1: none), or nullptr
  // after a panic.
  Queue* VringFdMessage(const Message& m, int* fd);
  bool FinishGetVringBase(uint32_t index);
  bool InflightGeometryOk(uint32_t num_queues, uint32_t queue_size, std::string* why) const;
  bool InflightReplaceable() const;

  // rings (queues.cc)
  Queue* QueueFor(uint32_t index, const char* what);
  bool QueueEnabled(const Queue& q) const;
  void UpdateRunning(uint32_t index);
  void StopQueue(uint32_t index, bool clear_config);
  void StopAllQueues();
  void ClearHeadRequests(Queue& q);
  void OnKick(uint32_t index, int events);
  void ProcessQueue(uint32_t index);
  bool ReResolveRings();
  // Used elements go through these two (inflight bookkeeping around the ring's own).
  void AddUsed(Queue& q, uint16_t head, uint32_t len);
  void PublishUsed(Queue& q);
  // Attaches queue `index` to the inflight region (if any) and recovers it; false after a Panic.
  bool RecoverInflight(uint32_t index);
  // The next chain for JS: a resubmitted head first, then the avail ring.
  DeviceVring::Pop NextChain(Queue& q, Chain* chain, std::string* err);
  void ApplyFeatures();

  uv_loop_t* loop_;
  BackendHost* host_;
  BackendOptions options_;
  bool closed_ = false;

  int listen_fd_ = -1;
  Watch* listen_watch_ = nullptr;
  std::string created_path_;  // unlinked by Close() if still our socket
  uint64_t created_dev_ = 0, created_ino_ = 0;

  Connection conn_;
  uint64_t conn_serial_ = 0;  // bumped when a connection starts or ends
  GuestMemory mem_;
  InflightRegion inflight_;  // of this connection (GET/SET_INFLIGHT_FD); dropped at disconnect
  std::vector<Queue> queues_;
  uint32_t gen_counter_ = 0;

  uv_check_t* check_ = nullptr;
  uv_idle_t* idle_ = nullptr;
  bool check_active_ = false;
  int open_handles_ = 0;
  int depth_ = 0;  // nesting of uv callbacks
  std::deque<DeviceEvent> events_;
  bool flushing_ = false;
  uint64_t warn_window_start_ = 0;
  uint32_t warn_count_ = 0;
  uint32_t warn_suppressed_ = 0;
};

}  // namespace vhost
}  // namespace vbc
