// CRC-32C (Castagnoli) block check for native callers: the io_uring ring checks cache hits as
// it reaps their reads (io_ring.cc). The JS functions are in crc32c.cc.
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace vbc {

// Checks the bytes of `views` (count views, total bytes a multiple of block_size > 0) read as
// consecutive whole blocks: bad[j] = 1 when block j's CRC-32C != crcs[j], else 0 (bad may be
// null). A block split
// over views is gathered first. Returns the number of mismatches. Only reads the views.
uint32_t Crc32cCheckBlocks(const iovec* views, size_t count, uint32_t block_size, const uint32_t* crcs, uint8_t* bad);

}  // namespace vbc
