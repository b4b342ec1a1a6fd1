// Counter-based Philox4x32-10 and the mapping from (seed, offset, slot, stream, element) to a
// uniform float. This header is the single definition used by the CPU and CUDA kernels; the
// Triton kernels (specdec_kernels/triton/_philox.py) and the PyTorch reference
// (specdec_kernels/reference/_philox.py) implement the same function bit for bit.
//
// Layout of one draw (see README "Randomness"):
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (element >> 2, stream, draw & 0xffffffff, draw >> 32),   draw = offset + slot
//   word    = philox(key, counter)[element & 3]
//   uniform = ((word >> 9) + 0.5) * 2^-23      in (0, 1), exact in float32 on every backend
// The uniform never hits 0 or 1, so -log(u) is finite and positive: the exponential race used for
// categorical sampling never divides by zero.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SPECDEC_HD __host__ __device__ __forceinline__
#else
#define SPECDEC_HD inline
#endif

namespace specdec {

struct Philox4 {
  uint32_t x, y, z, w;
};

SPECDEC_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

SPECDEC_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(M0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(M1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return {c0, c1, c2, c3};
}

// The (key, counter-suffix) shared by every element of one draw.
struct DrawKey {
  uint32_t k0, k1, stream, d0, d1;
};

SPECDEC_HD DrawKey make_draw_key(int64_t seed, int64_t offset, int64_t slot, int64_t stream) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t d = static_cast<uint64_t>(offset) + static_cast<uint64_t>(slot);
  return {static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(stream),
          static_cast<uint32_t>(d), static_cast<uint32_t>(d >> 32)};
}

// Where one request row's draws come from: its seed and offset, read with their strides (0 for a
// scalar broadcast over the batch), and its stream, which is the row itself when one int seed covers
// the batch (row_streams) and 0 when every request brings its own seed, so that a request's draws do
// not depend on its position in the batch. Every kernel keys its draws through row_draw_key; the
// Triton twin is row_draw_key in specdec_kernels/triton/_philox.py, the reference's is
// row_stream_ids in specdec_kernels/contract/_common.py.
struct RowStream {
  const int64_t* seed;
  int64_t seed_stride;
  const int64_t* offset;
  int64_t offset_stride;
  bool row_streams;
};

SPECDEC_HD DrawKey row_draw_key(const RowStream& rs, int64_t row, int64_t slot) {
  return make_draw_key(rs.seed[row * rs.seed_stride], rs.offset[row * rs.offset_stride], slot,
                       rs.row_streams ? row : 0);
}

SPECDEC_HD Philox4 draw_block(const DrawKey& k, uint32_t block) {
  return philox4x32_10(block, k.stream, k.d0, k.d1, k.k0, k.k1);
}

SPECDEC_HD uint32_t pick_word(const Philox4& r, uint32_t lane) {
  return lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
}

SPECDEC_HD float word_to_uniform(uint32_t w) {
  return (static_cast<float>(w >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

SPECDEC_HD float draw_uniform(const DrawKey& k, uint32_t element) {
  return word_to_uniform(pick_word(draw_block(k, element >> 2), element & 3u));
}

}  // namespace specdec
