// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF) of
// cache blocks, in batches so one call crosses the JS boundary per run of blocks:
//
//   crc32c(data, seed = 0) -> u32            one buffer; seed = the CRC of preceding bytes
//   crc32cBlocks(data, blockSize, out, at)   out[at + j] = CRC of block j of data
//   crc32cHardware: true when the crc32 instruction is used
//   crc32cFolding: true when runs of 256 bytes or more are folded (AVX-512 VPCLMULQDQ)
//   crc32cCheck(bufs, blockSize, crcs, at, bad) -> mismatches
//                                            bufs (a Uint8Array or a scatter list of them)
//                                            read as consecutive whole blocks;
//                                            bad[j] = 1 when block j's CRC != crcs[at + j]
//
// The SSE4.2 crc32 instruction is used where the CPU has it (checked once at load with
// __builtin_cpu_supports); otherwise slicing-by-8 tables. Where the CPU also has AVX-512 with
// VPCLMULQDQ, runs of 256 bytes or more are folded with carry-less multiplications instead
// (crc32cFolding: true; 4 KiB in about a third of the time of the three crc32 streams, the
// check every cache hit pays). Buffers are only read. The block
// check is written once (Crc32cCheckBlocks, crc32c.h): crc32cCheck and the io_uring ring's
// checked reads (io_ring.cc) both use it.
#include "io/crc32c.h"

#include <napi.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "js/errors.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace vbc {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;

struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
  }
};
const Tables kTables;

// Both update functions take and return the raw register (not inverted).
uint32_t UpdateTable(uint32_t crc, const uint8_t* p, size_t n) {
  const auto& t = kTables.t;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= crc;
    crc = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^ t[4][(v >> 24) & 0xff] ^
          t[3][(v >> 32) & 0xff] ^ t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return crc;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of 3 cycles and a throughput of 1: three interleaved
// streams over chunks of kChunk bytes, joined by shifting a register over kChunk zero bytes
// (linear, so 4 table lookups: kShift[k][byte k of the register]).
constexpr size_t kChunk = 1360;

struct ShiftTables {
  uint32_t t[4][256];
  ShiftTables() {
    static const uint8_t zeros[kChunk] = {};
    uint32_t basis[32];
    for (int i = 0; i < 32; ++i) basis[i] = UpdateTable(1u << i, zeros, kChunk);
    for (int k = 0; k < 4; ++k) {
      for (uint32_t b = 0; b < 256; ++b) {
        uint32_t v = 0;
        for (int bit = 0; bit < 8; ++bit) {
          if (b & (1u << bit)) v ^= basis[8 * k + bit];
        }
        t[k][b] = v;
      }
    }
  }
};
const ShiftTables kShift;

inline uint32_t ShiftChunk(uint32_t c) {
  const auto& t = kShift.t;
  return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
}

__attribute__((target("sse4.2"))) inline uint64_t Crc64(uint64_t c, const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return _mm_crc32_u64(c, v);
}

__attribute__((target("sse4.2"))) uint32_t UpdateHw(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 3 * kChunk) {
    uint64_t c1 = 0;
    uint64_t c2 = 0;
    for (size_t i = 0; i < kChunk; i += 8) {
      c = Crc64(c, p + i);
      c1 = Crc64(c1, p + kChunk + i);
      c2 = Crc64(c2, p + 2 * kChunk + i);
    }
    c = ShiftChunk(static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1);
    c = ShiftChunk(static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c2);
    p += 3 * kChunk;
    n -= 3 * kChunk;
  }
  while (n >= 8) {
    c = Crc64(c, p);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// Folding (AVX-512 + VPCLMULQDQ). The bytes of a 16-byte lane, loaded little endian, are a
// polynomial of degree < 128 with bit i of the lane the coefficient of x^(127 - i) (reflected,
// as the CRC reads bits). A lane R that stands D bits before the lane it is added to is
// multiplied by x^D modulo P: its low quadword (the high-degree half H) by x^(D + 64) and its
// high quadword (L) by x^D. A carry-less product of two reflected 64-bit values is the
// reflected product times x, so the constants are x^(D + 63) and x^(D - 1) modulo P, each
// reflected into a quadword (degree < 32: the products fit the 128-bit lane). The register's
// initial value is added to the first 4 bytes; once the input is folded into one lane, the
// crc32 instruction reduces that lane (16 bytes from register 0) and carries on with the tail.
constexpr uint32_t kPolyNormal = 0x1EDC6F41u;  // kPoly with its bits in the other order

// x^n mod P, normal bit order (bit j = coefficient of x^j).
uint32_t XPowMod(unsigned n) {
  uint32_t r = 1;
  for (unsigned i = 0; i < n; ++i) r = (r << 1) ^ ((r & 0x80000000u) != 0 ? kPolyNormal : 0);
  return r;
}

// c (degree < 32) reflected into a quadword: coefficient j at bit 63 - j.
uint64_t Reflect64(uint32_t c) {
  uint64_t r = 0;
  for (int j = 0; j < 32; ++j) {
    if ((c >> j) & 1) r |= uint64_t{1} << (63 - j);
  }
  return r;
}

// The two quadword constants that fold a lane forward by d bits (low, high).
struct FoldBy {
  uint64_t lo, hi;
  explicit FoldBy(unsigned d) : lo(Reflect64(XPowMod(d + 63))), hi(Reflect64(XPowMod(d - 1))) {}
};
const FoldBy kFold128(128);   // the next lane
const FoldBy kFold512(512);   // the same lane of the next 64-byte register
const FoldBy kFold2048(2048); // the same lane 256 bytes on (the main loop's stride)

constexpr size_t kFoldBlock = 256;  // bytes per turn of the main loop: four 64-byte registers

// GCC 12's _mm512_undefined_epi32 (inside the broadcast and lane-extract intrinsics) trips
// -Wuninitialized on itself: not a use of an uninitialised value of ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#define VBC_FOLD_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

VBC_FOLD_TARGET inline __m512i Fold512(__m512i r, __m512i k, __m512i next) {
  // 0x96: a ^ b ^ c
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(r, k, 0x00), _mm512_clmulepi64_epi128(r, k, 0x11), next, 0x96);
}

VBC_FOLD_TARGET inline __m128i Fold128(__m128i r, __m128i k, __m128i next) {
  return _mm_ternarylogic_epi64(_mm_clmulepi64_si128(r, k, 0x00), _mm_clmulepi64_si128(r, k, 0x11), next, 0x96);
}

VBC_FOLD_TARGET uint32_t UpdateFold(uint32_t crc, const uint8_t* p, size_t n) {
  const __m512i k2048 = _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<int64_t>(kFold2048.hi), static_cast<int64_t>(kFold2048.lo)));
  const __m512i k512 = _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<int64_t>(kFold512.hi), static_cast<int64_t>(kFold512.lo)));
  const __m128i k128 = _mm_set_epi64x(static_cast<int64_t>(kFold128.hi), static_cast<int64_t>(kFold128.lo));
  __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(crc))));
  __m512i x1 = _mm512_loadu_si512(p + 64);
  __m512i x2 = _mm512_loadu_si512(p + 128);
  __m512i x3 = _mm512_loadu_si512(p + 192);
  p += kFoldBlock;
  n -= kFoldBlock;
  while (n >= kFoldBlock) {
    x0 = Fold512(x0, k2048, _mm512_loadu_si512(p));
    x1 = Fold512(x1, k2048, _mm512_loadu_si512(p + 64));
    x2 = Fold512(x2, k2048, _mm512_loadu_si512(p + 128));
    x3 = Fold512(x3, k2048, _mm512_loadu_si512(p + 192));
    p += kFoldBlock;
    n -= kFoldBlock;
  }
  // Four registers into the last one, then its four lanes into its last lane.
  x1 = Fold512(x0, k512, x1);
  x2 = Fold512(x1, k512, x2);
  x3 = Fold512(x2, k512, x3);
  __m128i r = _mm512_castsi512_si128(x3);
  r = Fold128(r, k128, _mm512_extracti32x4_epi32(x3, 1));
  r = Fold128(r, k128, _mm512_extracti32x4_epi32(x3, 2));
  r = Fold128(r, k128, _mm512_extracti32x4_epi32(x3, 3));
  while (n >= 16) {
    r = Fold128(r, k128, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    p += 16;
    n -= 16;
  }
  uint64_t c = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(r)));
  c = _mm_crc32_u64(c, static_cast<uint64_t>(_mm_extract_epi64(r, 1)));
  return UpdateHw(static_cast<uint32_t>(c), p, n);
}
#undef VBC_FOLD_TARGET
#pragma GCC diagnostic pop

const bool kHardware = __builtin_cpu_supports("sse4.2");
const bool kFolding = kHardware && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul");
uint32_t Update(uint32_t crc, const uint8_t* p, size_t n) {
  if (kFolding && n >= kFoldBlock) return UpdateFold(crc, p, n);
  return kHardware ? UpdateHw(crc, p, n) : UpdateTable(crc, p, n);
}
#else
constexpr bool kHardware = false;
constexpr bool kFolding = false;
uint32_t Update(uint32_t crc, const uint8_t* p, size_t n) { return UpdateTable(crc, p, n); }
#endif

struct Bytes {
  const uint8_t* data;
  size_t length;
};

Bytes ArgBytes(Napi::Env env, napi_value v, const char* what) {
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_uint8_array) {
    ThrowError(env, "EINVAL", std::string(what) + " must be a Uint8Array");
  }
  return {static_cast<const uint8_t*>(data), length};
}

template <typename T>
T* ArgTyped(Napi::Env env, napi_value v, napi_typedarray_type want, size_t* length, const char* what) {
  napi_typedarray_type type;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, &type, length, &data, nullptr, nullptr) != napi_ok || type != want) {
    ThrowError(env, "EINVAL", std::string(what) + " has the wrong type");
  }
  return static_cast<T*>(data);
}

// One N-API call per argument: the check runs on every cache hit, so the fixed cost matters.
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  uint32_t v = 0;
  double d = 0;
  if (info.Length() <= i || napi_get_value_double(info.Env(), info[i], &d) != napi_ok || !(d >= 0) || d > 4294967295.0 ||
      static_cast<double>(v = static_cast<uint32_t>(d)) != d) {
    ThrowError(info.Env(), "EINVAL", std::string(what) + " must be a u32");
  }
  return v;
}

uint32_t ArgBlockSize(const Napi::CallbackInfo& info, size_t i) {
  uint32_t bs = ArgU32(info, i, "blockSize");
  if (bs == 0) ThrowError(info.Env(), "EINVAL", "blockSize must be > 0");
  return bs;
}

Napi::Value JS_crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) ThrowError(env, "EINVAL", "crc32c(data, seed?)");
  Bytes b = ArgBytes(env, info[0], "data");
  uint32_t seed = info.Length() > 1 ? ArgU32(info, 1, "seed") : 0;
  return Napi::Number::New(env, ~Update(~seed, b.data, b.length));
}

Napi::Value JS_crc32cBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) ThrowError(env, "EINVAL", "crc32cBlocks(data, blockSize, out, at)");
  Bytes b = ArgBytes(env, info[0], "data");
  uint32_t bs = ArgBlockSize(info, 1);
  size_t outLen = 0;
  uint32_t* out = ArgTyped<uint32_t>(env, info[2], napi_uint32_array, &outLen, "out (Uint32Array)");
  uint32_t at = ArgU32(info, 3, "at");
  size_t n = b.length / bs;
  if (at > outLen || n > outLen - at) ThrowError(env, "ERANGE", "out too short");
  for (size_t j = 0; j < n; ++j) out[at + j] = ~Update(~0u, b.data + j * bs, bs);
  return env.Undefined();
}

Napi::Value JS_crc32cCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5) ThrowError(env, "EINVAL", "crc32cCheck(bufs, blockSize, crcs, at, bad)");
  uint32_t bs = ArgBlockSize(info, 1);
  size_t crcLen = 0;
  const uint32_t* crcs = ArgTyped<uint32_t>(env, info[2], napi_uint32_array, &crcLen, "crcs (Uint32Array)");
  uint32_t at = ArgU32(info, 3, "at");
  size_t badLen = 0;
  uint8_t* bad = ArgTyped<uint8_t>(env, info[4], napi_uint8_array, &badLen, "bad (Uint8Array)");
  // Every view and the total length are validated before anything is computed.
  // Scatter lists of guest requests are short: no heap allocation up to kInline views.
  constexpr uint32_t kInline = 16;
  iovec inline_views[kInline];
  std::vector<iovec> more;
  iovec* views = inline_views;
  uint32_t count = 1;
  size_t total = 0;
  napi_typedarray_type type;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, info[0], &type, &total, &data, nullptr, nullptr) == napi_ok) {
    if (type != napi_uint8_array) ThrowError(env, "EINVAL", "bufs must be a Uint8Array or an array of them");
    views[0] = {data, total};
  } else {
    if (napi_get_array_length(env, info[0], &count) != napi_ok) {
      ThrowError(env, "EINVAL", "bufs must be a Uint8Array or an array of them");
    }
    if (count > kInline) {
      more.resize(count);
      views = more.data();
    }
    for (uint32_t i = 0; i < count; ++i) {
      napi_value el;
      napi_get_element(env, info[0], i, &el);
      Bytes b = ArgBytes(env, el, "bufs[i]");
      views[i] = {const_cast<uint8_t*>(b.data), b.length};
      total += b.length;
    }
  }
  if (total % bs != 0) ThrowError(env, "EINVAL", "bufs must hold whole blocks");
  size_t n = total / bs;
  if (at > crcLen || n > crcLen - at || n > badLen) ThrowError(env, "ERANGE", "crcs or bad too short");
  return Napi::Number::New(env, Crc32cCheckBlocks(views, count, bs, crcs + at, bad));
}

}  // namespace

uint32_t Crc32cCheckBlocks(const iovec* views, size_t count, uint32_t block_size, const uint32_t* crcs, uint8_t* bad) {
  // A block split over views is gathered into `scratch` first, so every block is one
  // contiguous buffer for the interleaved loop (a serial chain would cost 3x).
  alignas(64) static thread_local uint8_t gather[65536];
  std::vector<uint8_t> big;  // blocks over 64 KiB (not used by the cache)
  uint8_t* scratch = nullptr;
  const size_t bs = block_size;
  uint32_t mismatches = 0;
  size_t block = 0;
  size_t inBlock = 0;
  auto finish = [&](const uint8_t* p) {
    bool wrong = ~Update(~0u, p, bs) != crcs[block];
    if (bad != nullptr) bad[block] = wrong ? 1 : 0;
    mismatches += wrong ? 1 : 0;
    ++block;
  };
  for (size_t v = 0; v < count; ++v) {
    const uint8_t* data = static_cast<const uint8_t*>(views[v].iov_base);
    size_t length = views[v].iov_len;
    while (length > 0) {
      if (inBlock == 0 && length >= bs) {
        finish(data);
        data += bs;
        length -= bs;
        continue;
      }
      if (scratch == nullptr) {
        if (bs <= sizeof(gather)) {
          scratch = gather;
        } else {
          big.resize(bs);
          scratch = big.data();
        }
      }
      size_t k = bs - inBlock < length ? bs - inBlock : length;
      std::memcpy(scratch + inBlock, data, k);
      data += k;
      length -= k;
      inBlock += k;
      if (inBlock == bs) {
        finish(scratch);
        inBlock = 0;
      }
    }
  }
  return mismatches;
}

void RegisterCrc32c(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New(env, JS_crc32c, "crc32c"));
  exports.Set("crc32cBlocks", Napi::Function::New(env, JS_crc32cBlocks, "crc32cBlocks"));
  exports.Set("crc32cHardware", Napi::Boolean::New(env, kHardware));
  exports.Set("crc32cFolding", Napi::Boolean::New(env, kFolding));
  exports.Set("crc32cCheck", Napi::Function::New(env, JS_crc32cCheck, "crc32cCheck"));
}

}  // namespace vbc
