// Carving a popped descriptor chain into a virtio-blk request (virtio 1.2, 5.2.6).
//
// The chain is a byte stream: [0, 16) struct virtio_blk_outhdr { le32 type; le32 reserved;
// le64 sector; } (device-readable), then the data, then one status byte (device-writable,
// the last byte of the chain). No framing is assumed: the header or the status may share a
// descriptor with data or span descriptors; the header is copied out.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "vhost/device_vring.h"

namespace vbc {
namespace blk {

constexpr uint32_t VIRTIO_BLK_T_IN = 0;
constexpr uint32_t VIRTIO_BLK_T_OUT = 1;
constexpr uint32_t VIRTIO_BLK_T_FLUSH = 4;
constexpr uint32_t VIRTIO_BLK_T_GET_ID = 8;
constexpr uint32_t VIRTIO_BLK_T_GET_LIFETIME = 10;
constexpr uint32_t VIRTIO_BLK_T_DISCARD = 11;
constexpr uint32_t VIRTIO_BLK_T_WRITE_ZEROES = 13;
constexpr uint32_t VIRTIO_BLK_T_SECURE_ERASE = 14;

constexpr uint8_t VIRTIO_BLK_S_OK = 0;
constexpr uint8_t VIRTIO_BLK_S_IOERR = 1;

struct Request {
  uint32_t type = 0;
  uint64_t sector = 0;
  std::vector<vhost::HostIov> data;  // the data segments, in order
  uint64_t data_len = 0;
  uint8_t* status = nullptr;  // the status byte (device-writable)
  vhost::Mapping* status_mapping = nullptr;
};

// What the device announced in virtio_blk_config (seg_max, size_max; JS chooses them). Every
// data piece handed to JS is at most max_segment_size bytes, which native/js relies on (a
// piece must fit one guest memory window).
struct Limits {
  uint32_t max_segments = 126;
  uint32_t max_segment_size = 1u << 20;
};

enum class Carve {
  kOk,         // well formed
  kRejected,   // well framed (status byte found) but not acceptable: answered IOERR
  kMalformed,  // header not readable / too short, status not writable: the device is broken
};

// kRejected: the data direction does not match the type, the chain is longer than the queue,
// has more than max_segments + 2 descriptors (header and status), or a data piece is larger
// than max_segment_size.
Carve CarveRequest(const vhost::Chain& chain, const Limits& limits, Request* out,
                   std::string* err);

// Bytes the device wrote into the chain's writable buffers for a completed request.
uint32_t UsedLength(uint32_t type, uint8_t status, uint64_t data_len);

}  // namespace blk
}  // namespace vbc
