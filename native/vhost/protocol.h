// vhost-user wire protocol (docs/interop/vhost-user.rst in QEMU): message numbers, the
// header, payload layouts and feature bits. All numbers are in host byte order (the front end
// runs on the same host). Structures are packed exactly as they travel on the socket.
#pragma once
#include <cstddef>
#include <cstdint>

#include "vhost/limits.h"

namespace vbc {
namespace vhost {

// Front-end -> back-end requests ("front-end message types").
enum Request : uint32_t {
  VHOST_USER_NONE = 0,
  VHOST_USER_GET_FEATURES = 1,            // reply u64: device + transport + protocol-feature bits
  VHOST_USER_SET_FEATURES = 2,            // u64: acknowledged feature bits
  VHOST_USER_SET_OWNER = 3,               // no payload: session start
  VHOST_USER_RESET_OWNER = 4,             // no payload: deprecated; we disable all rings
  VHOST_USER_SET_MEM_TABLE = 5,           // memory table + one fd per region
  VHOST_USER_SET_LOG_BASE = 6,            // dirty log area (migration; not supported)
  VHOST_USER_SET_LOG_FD = 7,              // dirty log eventfd (migration; not supported)
  VHOST_USER_SET_VRING_NUM = 8,           // vring state: queue size
  VHOST_USER_SET_VRING_ADDR = 9,          // vring addr: desc/used/avail user addresses
  VHOST_USER_SET_VRING_BASE = 10,         // vring state: next avail index to process
  VHOST_USER_GET_VRING_BASE = 11,         // vring state: stops the ring, reply last avail index
  VHOST_USER_SET_VRING_KICK = 12,         // u64 index|nofd + kick eventfd
  VHOST_USER_SET_VRING_CALL = 13,         // u64 index|nofd + call eventfd
  VHOST_USER_SET_VRING_ERR = 14,          // u64 index|nofd + error eventfd
  VHOST_USER_GET_PROTOCOL_FEATURES = 15,  // reply u64: protocol feature bits
  VHOST_USER_SET_PROTOCOL_FEATURES = 16,  // u64: acknowledged protocol feature bits
  VHOST_USER_GET_QUEUE_NUM = 17,          // reply u64: most queues the back end supports
  VHOST_USER_SET_VRING_ENABLE = 18,       // vring state: num 1 = enable, 0 = disable
  VHOST_USER_SEND_RARP = 19,              // net only: broadcast a fake RARP
  VHOST_USER_NET_SET_MTU = 20,            // net only: host MTU
  VHOST_USER_SET_BACKEND_REQ_FD = 21,     // back-end request channel socket (formerly SLAVE_REQ_FD)
  VHOST_USER_IOTLB_MSG = 22,              // IOTLB update/invalidate (IOMMU platform), reply u64
  VHOST_USER_SET_VRING_ENDIAN = 23,       // legacy cross-endian rings
  VHOST_USER_GET_CONFIG = 24,             // config payload: read device config space
  VHOST_USER_SET_CONFIG = 25,             // config payload: guest wrote device config space
  VHOST_USER_CREATE_CRYPTO_SESSION = 26,  // crypto only, reply session id
  VHOST_USER_CLOSE_CRYPTO_SESSION = 27,   // crypto only
  VHOST_USER_POSTCOPY_ADVISE = 28,        // postcopy migration: reply userfaultfd
  VHOST_USER_POSTCOPY_LISTEN = 29,        // postcopy migration: switch to postcopy mode
  VHOST_USER_POSTCOPY_END = 30,           // postcopy migration done, reply u64
  VHOST_USER_GET_INFLIGHT_FD = 31,        // inflight tracking buffer, reply description + fd
  VHOST_USER_SET_INFLIGHT_FD = 32,        // inflight tracking buffer handed back + fd
  VHOST_USER_GPU_SET_SOCKET = 33,         // gpu only: gpu protocol socket
  VHOST_USER_RESET_DEVICE = 34,           // no payload: disable rings, reset device state
  VHOST_USER_VRING_KICK = 35,             // in-band kick (INBAND_NOTIFICATIONS)
  VHOST_USER_GET_MAX_MEM_SLOTS = 36,      // reply u64: most memory regions we accept
  VHOST_USER_ADD_MEM_REG = 37,            // single memory region + one fd
  VHOST_USER_REM_MEM_REG = 38,            // single memory region (identifies the one to drop)
  VHOST_USER_SET_STATUS = 39,             // u64: virtio device status
  VHOST_USER_GET_STATUS = 40,             // reply u64: virtio device status
  VHOST_USER_GET_SHARED_OBJECT = 41,      // uuid: export a shared object, reply fd
  VHOST_USER_SET_DEVICE_STATE_FD = 42,    // device state transfer pipe, reply u64 (+fd)
  VHOST_USER_CHECK_DEVICE_STATE = 43,     // reply u64: result of the state transfer
  VHOST_USER_REQUEST_COUNT = 44,          // first number past the table above
};

// Header flags.
constexpr uint32_t kFlagVersionMask = 0x3;
constexpr uint32_t kVersion = 0x1;
constexpr uint32_t kFlagReply = 0x4;
constexpr uint32_t kFlagNeedReply = 0x8;

// u64 payload of SET_VRING_KICK/CALL/ERR: queue index in the low byte, bit 8 = no fd.
constexpr uint64_t kVringIndexMask = 0xff;
constexpr uint64_t kVringNoFdMask = 0x100;

// Feature bits (GET/SET_FEATURES).
constexpr int VIRTIO_RING_F_INDIRECT_DESC = 28;
constexpr int VIRTIO_RING_F_EVENT_IDX = 29;
constexpr int VHOST_USER_F_PROTOCOL_FEATURES = 30;
constexpr int VIRTIO_F_VERSION_1 = 32;

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
constexpr int VHOST_USER_PROTOCOL_F_MQ = 0;
constexpr int VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1;
constexpr int VHOST_USER_PROTOCOL_F_RARP = 2;
constexpr int VHOST_USER_PROTOCOL_F_REPLY_ACK = 3;
constexpr int VHOST_USER_PROTOCOL_F_NET_MTU = 4;
constexpr int VHOST_USER_PROTOCOL_F_BACKEND_REQ = 5;
constexpr int VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 6;
constexpr int VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 7;
constexpr int VHOST_USER_PROTOCOL_F_PAGEFAULT = 8;
constexpr int VHOST_USER_PROTOCOL_F_CONFIG = 9;
constexpr int VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD = 10;
constexpr int VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 11;
constexpr int VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12;
constexpr int VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13;
constexpr int VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 14;
constexpr int VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15;
constexpr int VHOST_USER_PROTOCOL_F_STATUS = 16;
constexpr int VHOST_USER_PROTOCOL_F_XEN_MMAP = 17;
constexpr int VHOST_USER_PROTOCOL_F_SHARED_OBJECT = 18;
constexpr int VHOST_USER_PROTOCOL_F_DEVICE_STATE = 19;

constexpr uint64_t Bit(int n) { return uint64_t{1} << n; }

#pragma pack(push, 1)
struct MsgHeader {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes following the header
};

struct VringState {
  uint32_t index;
  uint32_t num;
};

struct VringAddr {
  uint32_t index;
  uint32_t flags;  // bit 0: VHOST_VRING_F_LOG
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};

struct MemRegionDesc {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};

// SET_MEM_TABLE: 8 bytes then nregions descriptors (the payload may stop after the last one).
struct MemTableMsg {
  uint32_t nregions;
  uint32_t padding;
  MemRegionDesc regions[kMaxMemTableRegions];
};

// ADD_MEM_REG / REM_MEM_REG.
struct MemRegMsg {
  uint64_t padding;
  MemRegionDesc region;
};

// GET_CONFIG / SET_CONFIG: this header then `size` bytes of config space.
struct ConfigMsgHeader {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;  // 0: writable fields, 1: live migration
};
// GET_INFLIGHT_FD / SET_INFLIGHT_FD. QEMU sends its naturally aligned struct (24 bytes, the
// last 4 padding); a packed sender stops after queue_size (20 bytes). Both are accepted.
struct InflightMsg {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
  uint32_t padding;
};
constexpr uint32_t kInflightMsgMinSize = 20;
#pragma pack(pop)

static_assert(sizeof(MsgHeader) == 12, "vhost-user header is 12 bytes");
static_assert(sizeof(VringState) == 8, "vring state is 8 bytes");
static_assert(sizeof(VringAddr) == 40, "vring addr is 40 bytes");
static_assert(sizeof(MemRegionDesc) == 32, "memory region is 32 bytes");
static_assert(sizeof(MemTableMsg) == 8 + 8 * 32, "memory table is 264 bytes");
static_assert(sizeof(MemRegMsg) == 40, "single memory region message is 40 bytes");
static_assert(sizeof(ConfigMsgHeader) == 12, "config header is 12 bytes");
static_assert(sizeof(InflightMsg) == 24, "inflight description is 24 bytes (with padding)");

// "VHOST_USER_GET_FEATURES" etc. for logs; nullptr for numbers outside the table.
inline const char* MessageName(uint32_t request) {
  static const char* const kNames[VHOST_USER_REQUEST_COUNT] = {
      "VHOST_USER_NONE",
      "VHOST_USER_GET_FEATURES",
      "VHOST_USER_SET_FEATURES",
      "VHOST_USER_SET_OWNER",
      "VHOST_USER_RESET_OWNER",
      "VHOST_USER_SET_MEM_TABLE",
      "VHOST_USER_SET_LOG_BASE",
      "VHOST_USER_SET_LOG_FD",
      "VHOST_USER_SET_VRING_NUM",
      "VHOST_USER_SET_VRING_ADDR",
      "VHOST_USER_SET_VRING_BASE",
      "VHOST_USER_GET_VRING_BASE",
      "VHOST_USER_SET_VRING_KICK",
      "VHOST_USER_SET_VRING_CALL",
      "VHOST_USER_SET_VRING_ERR",
      "VHOST_USER_GET_PROTOCOL_FEATURES",
      "VHOST_USER_SET_PROTOCOL_FEATURES",
      "VHOST_USER_GET_QUEUE_NUM",
      "VHOST_USER_SET_VRING_ENABLE",
      "VHOST_USER_SEND_RARP",
      "VHOST_USER_NET_SET_MTU",
      "VHOST_USER_SET_BACKEND_REQ_FD",
      "VHOST_USER_IOTLB_MSG",
      "VHOST_USER_SET_VRING_ENDIAN",
      "VHOST_USER_GET_CONFIG",
      "VHOST_USER_SET_CONFIG",
      "VHOST_USER_CREATE_CRYPTO_SESSION",
      "VHOST_USER_CLOSE_CRYPTO_SESSION",
      "VHOST_USER_POSTCOPY_ADVISE",
      "VHOST_USER_POSTCOPY_LISTEN",
      "VHOST_USER_POSTCOPY_END",
      "VHOST_USER_GET_INFLIGHT_FD",
      "VHOST_USER_SET_INFLIGHT_FD",
      "VHOST_USER_GPU_SET_SOCKET",
      "VHOST_USER_RESET_DEVICE",
      "VHOST_USER_VRING_KICK",
      "VHOST_USER_GET_MAX_MEM_SLOTS",
      "VHOST_USER_ADD_MEM_REG",
      "VHOST_USER_REM_MEM_REG",
      "VHOST_USER_SET_STATUS",
      "VHOST_USER_GET_STATUS",
      "VHOST_USER_GET_SHARED_OBJECT",
      "VHOST_USER_SET_DEVICE_STATE_FD",
      "VHOST_USER_CHECK_DEVICE_STATE",
  };
  return request < VHOST_USER_REQUEST_COUNT ? kNames[request] : nullptr;
}

// True for requests whose reply is part of the message itself (not a REPLY_ACK), given the
// negotiated protocol features. A front end waits for these, so an unsupported one cannot
// be skipped.
inline bool HasInherentReply(uint32_t request, uint64_t protocol_features) {
  switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_IOTLB_MSG:
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_CREATE_CRYPTO_SESSION:
    case VHOST_USER_POSTCOPY_ADVISE:
    case VHOST_USER_POSTCOPY_END:
    case VHOST_USER_GET_INFLIGHT_FD:
    case VHOST_USER_GET_MAX_MEM_SLOTS:
    case VHOST_USER_GET_STATUS:
    case VHOST_USER_GET_SHARED_OBJECT:
    case VHOST_USER_SET_DEVICE_STATE_FD:
    case VHOST_USER_CHECK_DEVICE_STATE:
      return true;
    case VHOST_USER_SET_LOG_BASE:
      return (protocol_features & Bit(VHOST_USER_PROTOCOL_F_LOG_SHMFD)) != 0;
    default:
      return false;
  }
}

}  // namespace vhost
}  // namespace vbc
