#include "blk/blk_request.h"

#include <cstring>

namespace vbc {
namespace blk {

namespace {
constexpr uint64_t kHeaderLen = 16;

// Direction the data of `type` must have: 1 device-writable, 0 device-readable, -1 any.
int DataDirection(uint32_t type) {
  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_GET_ID:
      return 1;
    case VIRTIO_BLK_T_OUT:
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
    case VIRTIO_BLK_T_SECURE_ERASE:
      return 0;
    default:
      return -1;
  }
}
}  // namespace

Carve CarveRequest(const vhost::Chain& chain, const Limits& limits, Request* out,
                   std::string* err) {
  out->data.clear();
  out->data_len = 0;
  if (chain.total_len < kHeaderLen + 1 || chain.iov.empty()) {
    *err = "request shorter than header + status (" + std::to_string(chain.total_len) + " bytes)";
    return Carve::kMalformed;
  }
  const vhost::HostIov& last = chain.iov.back();
  if (!last.writable) {
    *err = "status byte is not device-writable";
    return Carve::kMalformed;
  }
  out->status = last.ptr + last.len - 1;
  out->status_mapping = last.mapping;

  if (chain.longer_than_queue) {
    *err = "descriptor chain longer than the queue size (" + std::to_string(chain.descs) + ")";
    return Carve::kRejected;
  }
  if (chain.descs > limits.max_segments + 2) {
    *err = "request with " + std::to_string(chain.descs) + " descriptors exceeds seg_max " +
           std::to_string(limits.max_segments);
    return Carve::kRejected;
  }

  uint8_t header[kHeaderLen];
  uint64_t pos = 0;  // byte position in the chain of the current iov's start
  const uint64_t data_end = chain.total_len - 1;
  int dir = -1;
  bool direction_ok = true;
  for (const vhost::HostIov& v : chain.iov) {
    const uint64_t start = pos;
    const uint64_t end = pos + v.len;
    pos = end;
    if (start < kHeaderLen) {
      if (v.writable) {
        *err = "request header is not device-readable";
        return Carve::kMalformed;
      }
      const uint64_t n = (end < kHeaderLen ? end : kHeaderLen) - start;
      std::memcpy(header + start, v.ptr, n);
    }
    // Data part of this iov: [max(start, 16), min(end, data_end)).
    const uint64_t ds = start > kHeaderLen ? start : kHeaderLen;
    const uint64_t de = end < data_end ? end : data_end;
    if (de <= ds) continue;
    if (out->data.empty()) {  // the header is complete once data starts
      uint32_t type;
      std::memcpy(&type, header, 4);
      dir = DataDirection(type);
    }
    if (dir != -1 && v.writable != (dir == 1)) direction_ok = false;
    if (de - ds > limits.max_segment_size) {
      std::memcpy(&out->type, header, 4);
      *err = "data segment of " + std::to_string(de - ds) + " bytes exceeds size_max " +
             std::to_string(limits.max_segment_size);
      return Carve::kRejected;
    }
    out->data.push_back(vhost::HostIov{v.ptr + (ds - start), static_cast<uint32_t>(de - ds),
                                       v.writable, v.mapping});
    out->data_len += de - ds;
  }
  std::memcpy(&out->type, header, 4);
  std::memcpy(&out->sector, header + 8, 8);
  if (!direction_ok) {
    *err = "data direction does not match request type " + std::to_string(out->type);
    return Carve::kRejected;
  }
  return Carve::kOk;
}

uint32_t UsedLength(uint32_t type, uint8_t status, uint64_t data_len) {
  if (status == VIRTIO_BLK_S_OK &&
      (type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID || type == VIRTIO_BLK_T_GET_LIFETIME)) {
    // data_len + 1 <= chain length <= UINT32_MAX
    return static_cast<uint32_t>(data_len + 1);
  }
  return 1;
}

}  // namespace blk
}  // namespace vbc
