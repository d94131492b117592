// Every limit of the vhost-user back end, defined once. The addon exports the ones options
// depend on (addon.cc, `limits`), and src/config validates options against those values, so
// the bounds cannot drift between JS and C++.
#pragma once
#include <cstddef>
#include <cstdint>

namespace vbc {
namespace vhost {

// Request tags handed to JS (REQ_TAG in src/native/types.ts): generation | queue | head,
// packed into 32 bits (a uint32 in the completion array, exact in a double).
constexpr uint32_t kTagHeadBits = 15;
constexpr uint32_t kTagQueueBits = 6;
constexpr uint32_t kTagGenBits = 32 - kTagHeadBits - kTagQueueBits;
constexpr uint32_t kTagHeadMask = (1u << kTagHeadBits) - 1;
constexpr uint32_t kTagQueueMask = (1u << kTagQueueBits) - 1;
constexpr uint32_t kTagGenMask = (1u << kTagGenBits) - 1;

// Queues per device and descriptors per queue. The queue index and the head must fit their
// request tag fields; queue sizes are powers of two (virtio 1.2, 2.7: split rings up to 32768).
constexpr uint32_t kMaxQueues = 1u << kTagQueueBits;
constexpr uint32_t kMinQueueSize = 2;
constexpr uint32_t kMaxQueueSize = 1u << kTagHeadBits;
static_assert(kMaxQueueSize <= 32768, "split rings hold at most 32768 descriptors");

// Messages.
constexpr size_t kMaxFds = 8;                // fds accepted with one message
constexpr uint32_t kMaxMemTableRegions = 8;  // SET_MEM_TABLE carries at most 8 regions (spec)
constexpr uint32_t kMaxMemSlots = 32;        // GET_MAX_MEM_SLOTS answer (ADD_MEM_REG limit)
constexpr uint32_t kMaxConfigSize = 256;     // virtio config space we serve
constexpr uint32_t kMaxPayload = 4096;       // larger payloads drop the connection

// Work per loop turn, so one front end cannot hold the loop that serves every device: at
// most this many messages read from one connection, and this many chains answered natively
// (without JS) per queue, before yielding to the loop (resumed on the next turn).
constexpr uint32_t kMaxMessagesPerTurn = 64;
constexpr uint32_t kMaxInlineAnswersPerPass = 256;

// Warnings a front end can cause (per device): at most this many per window, then one line
// counting the suppressed ones.
constexpr uint32_t kMaxWarningsPerWindow = 20;
constexpr uint64_t kWarningWindowMs = 1000;

// Requests: the largest size_max a device may announce. Every data piece handed to JS is at
// most size_max, and JS views guest memory through windows spaced this far apart
// (native/js/vhost_device.h), so a piece always fits the window of its start.
constexpr uint32_t kMaxSegmentSize = 1u << 30;
// The largest seg_max (a chain is at most one queue long anyway).
constexpr uint32_t kMaxSegments = kMaxQueueSize;

// Socket file mode bits accepted for the listening socket.
constexpr uint32_t kMaxSocketMode = 0777;

}  // namespace vhost
}  // namespace vbc
