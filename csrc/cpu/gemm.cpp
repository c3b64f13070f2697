#include "cpu/gemm.h"

#include "cpu/clones.h"

namespace grace_fast::cpu {
namespace {

// One MR x NR register tile over kc packed steps; for float, 12 accumulators stay in AVX2 registers.
template <typename Acc>
__attribute__((always_inline)) inline void tile(int kc, const Acc* __restrict a, const Acc* __restrict b,
                                                Acc out[MR][NR]) {
  typedef Acc vec __attribute__((vector_size(8 * sizeof(Acc))));
  typedef Acc vec_u __attribute__((vector_size(8 * sizeof(Acc)), aligned(sizeof(Acc))));
  vec c[MR][2] = {};
  for (int k = 0; k < kc; ++k, a += MR, b += NR) {
    const vec b0 = *reinterpret_cast<const vec_u*>(b);
    const vec b1 = *reinterpret_cast<const vec_u*>(b + 8);
    for (int r = 0; r < MR; ++r) {
      c[r][0] += a[r] * b0;
      c[r][1] += a[r] * b1;
    }
  }
  for (int r = 0; r < MR; ++r) {
    *reinterpret_cast<vec_u*>(out[r]) = c[r][0];
    *reinterpret_cast<vec_u*>(out[r] + 8) = c[r][1];
  }
}

template <typename Acc>
__attribute__((always_inline)) inline void gemm_body(int mc, int nc, int kc, const Acc* a, const Acc* b, Acc* c,
                                                     int64_t ldc, bool accumulate) {
  alignas(64) Acc t[MR][NR];
  for (int j = 0; j < nc; j += NR) {
    const int cols = std::min(NR, nc - j);
    const Acc* bp = b + static_cast<int64_t>(j) * kc;
    for (int i = 0; i < mc; i += MR) {
      const int rows = std::min(MR, mc - i);
      tile(kc, a + static_cast<int64_t>(i) * kc, bp, t);
      for (int r = 0; r < rows; ++r) {
        Acc* crow = c + (i + r) * ldc + j;
        if (accumulate) {
          for (int q = 0; q < cols; ++q) crow[q] += t[r][q];
        } else {
          for (int q = 0; q < cols; ++q) crow[q] = t[r][q];
        }
      }
    }
  }
}

}  // namespace

GRACE_FAST_CLONES
void gemm_packed(int mc, int nc, int kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  gemm_body(mc, nc, kc, a, b, c, ldc, accumulate);
}

GRACE_FAST_CLONES
void gemm_packed(int mc, int nc, int kc, const double* a, const double* b, double* c, int64_t ldc,
                 bool accumulate) {
  gemm_body(mc, nc, kc, a, b, c, ldc, accumulate);
}

}  // namespace grace_fast::cpu
