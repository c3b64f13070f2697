#include "cpu/gemm.h"

#include <ATen/Version.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

#if defined(__x86_64__)
// The AVX-512 body for float: 16-float vectors over a tile of MR rows and two adjacent packed B panels (2 NR
// columns), 12 accumulators in zmm registers; a last odd panel gets an MR x NR tile.
typedef float v16f __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));

template <int P>  // B panels per tile: 1 or 2
__attribute__((always_inline)) inline void wide_tile(int kc, const float* __restrict a, const float* __restrict b,
                                                     float out[MR][2 * NR]) {
  const int64_t panel = static_cast<int64_t>(kc) * NR;
  v16f c[MR][P] = {};
  for (int k = 0; k < kc; ++k, a += MR, b += NR) {
    v16f x[P];
    for (int p = 0; p < P; ++p) x[p] = *reinterpret_cast<const v16f_u*>(b + p * panel);
    for (int r = 0; r < MR; ++r) {
      for (int p = 0; p < P; ++p) c[r][p] += a[r] * x[p];
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < P; ++p) *reinterpret_cast<v16f_u*>(out[r] + p * NR) = c[r][p];
  }
}

__attribute__((target("arch=x86-64-v4"))) void gemm_avx512(int mc, int nc, int kc, const float* a, const float* b,
                                                            float* c, int64_t ldc, bool accumulate) {
  alignas(64) float t[MR][2 * NR];
  for (int j = 0; j < nc; j += 2 * NR) {
    const int cols = std::min(2 * NR, nc - j);
    const float* bp = b + static_cast<int64_t>(j) * kc;
    for (int i = 0; i < mc; i += MR) {
      const int rows = std::min(MR, mc - i);
      if (cols > NR) {
        wide_tile<2>(kc, a + static_cast<int64_t>(i) * kc, bp, t);
      } else {
        wide_tile<1>(kc, a + static_cast<int64_t>(i) * kc, bp, t);
      }
      for (int r = 0; r < rows; ++r) {
        float* crow = c + (i + r) * ldc + j;
        if (accumulate) {
          for (int q = 0; q < cols; ++q) crow[q] += t[r][q];
        } else {
          for (int q = 0; q < cols; ++q) crow[q] = t[r][q];
        }
      }
    }
  }
}

// Stage s of the transpose swaps the off-diagonal 2^s x 2^s blocks of each 2^(s+1) x 2^(s+1) block: rows i and
// i + 2^s (bit s of i clear) become permutex2var(r_i, low[s], r_{i + 2^s}) and (..., high[s], ...).
__attribute__((target("arch=x86-64-v4"))) int transpose_rows16_avx512(const float* x, int64_t rs, int kc,
                                                                       const float* rscale, float* out) {
  __m512i low[4], high[4];
  for (int s = 0; s < 4; ++s) {
    const int b = 1 << s;
    alignas(64) int l[16], h[16];
    for (int j = 0; j < 16; ++j) {
      l[j] = j & b ? 16 + j - b : j;
      h[j] = j & b ? 16 + j : j + b;
    }
    low[s] = _mm512_load_si512(l);
    high[s] = _mm512_load_si512(h);
  }
  int k = 0;
  for (; k + 16 <= kc; k += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) {
      r[i] = _mm512_loadu_ps(x + i * rs + k);
      if (rscale) r[i] = _mm512_mul_ps(r[i], _mm512_set1_ps(rscale[i]));
    }
    for (int s = 0; s < 4; ++s) {
      for (int i = 0; i < 16; ++i) {
        if (i & (1 << s)) continue;
        const __m512 a = r[i], c = r[i + (1 << s)];
        r[i] = _mm512_permutex2var_ps(a, low[s], c);
        r[i + (1 << s)] = _mm512_permutex2var_ps(a, high[s], c);
      }
    }
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + (k + i) * 16, r[i]);
  }
  return k;
}

// The bf16 dot body: like gemm_avx512, 12 zmm accumulators over MR rows and two B panels, each step one pair of depths
// (vdpbf16ps: c += a_even b_even + a_odd b_odd per lane).
#define GRACE_FAST_BF16_DOT __attribute__((target("arch=x86-64-v4,avx512bf16")))

template <int P>  // B panels per tile: 1 or 2
GRACE_FAST_BF16_DOT __attribute__((always_inline)) inline void dot_tile(int kp, const uint32_t* __restrict a,
                                                                        const uint32_t* __restrict b,
                                                                        float out[MR][2 * NR]) {
  const int64_t panel = static_cast<int64_t>(kp) * NR;
  __m512 c[MR][P];
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < P; ++p) c[r][p] = _mm512_setzero_ps();
  }
  for (int k = 0; k < kp; ++k, a += MR, b += NR) {
    __m512bh x[P];
    for (int p = 0; p < P; ++p) x[p] = (__m512bh)_mm512_loadu_si512(b + p * panel);
    for (int r = 0; r < MR; ++r) {
      const __m512bh y = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
      for (int p = 0; p < P; ++p) c[r][p] = _mm512_dpbf16_ps(c[r][p], y, x[p]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(out[r] + p * NR, c[r][p]);
  }
}

GRACE_FAST_BF16_DOT void gemm_bf16_avx512(int mc, int nc, int kp, const uint32_t* a, const uint32_t* b, float* c,
                                          int64_t ldc, bool accumulate) {
  alignas(64) float t[MR][2 * NR];
  for (int j = 0; j < nc; j += 2 * NR) {
    const int cols = std::min(2 * NR, nc - j);
    const uint32_t* bp = b + static_cast<int64_t>(j) * kp;
    for (int i = 0; i < mc; i += MR) {
      const int rows = std::min(MR, mc - i);
      if (cols > NR) {
        dot_tile<2>(kp, a + static_cast<int64_t>(i) * kp, bp, t);
      } else {
        dot_tile<1>(kp, a + static_cast<int64_t>(i) * kp, bp, t);
      }
      for (int r = 0; r < rows; ++r) {
        float* crow = c + (i + r) * ldc + j;
        if (accumulate) {
          for (int q = 0; q < cols; ++q) crow[q] += t[r][q];
        } else {
          for (int q = 0; q < cols; ++q) crow[q] = t[r][q];
        }
      }
    }
  }
}
#endif

GRACE_FAST_CLONES
void gemm_clones(int mc, int nc, int kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  gemm_body(mc, nc, kc, a, b, c, ldc, accumulate);
}

}  // namespace

// The AVX-512 body where ATen runs its own AVX-512 kernels (so ATEN_CPU_CAPABILITY=avx2 turns it off too), else the
// AVX2 or baseline clone; picked once, at the first call.
void gemm_packed(int mc, int nc, int kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
#if defined(__x86_64__)
  static const bool avx512 = at::get_cpu_capability() == "AVX512";
  if (avx512) return gemm_avx512(mc, nc, kc, a, b, c, ldc, accumulate);
#endif
  gemm_clones(mc, nc, kc, a, b, c, ldc, accumulate);
}

int transpose_rows16(const float* x, int64_t rs, int kc, const float* rscale, float* out) {
#if defined(__x86_64__)
  static const bool avx512 = at::get_cpu_capability() == "AVX512";
  if (avx512) return transpose_rows16_avx512(x, rs, kc, rscale, out);
#endif
  return 0;
}

bool bf16_dot_available() {
#if defined(__x86_64__)
  static const bool available = at::get_cpu_capability() == "AVX512" && __builtin_cpu_supports("avx512bf16");
  return available;
#else
  return false;
#endif
}

void gemm_packed_bf16(int mc, int nc, int kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc,
                      bool accumulate) {
#if defined(__x86_64__)
  TORCH_CHECK(bf16_dot_available(), "gemm_packed_bf16: this CPU has no AVX512-BF16 (check bf16_dot_available())");
  gemm_bf16_avx512(mc, nc, kp, a, b, c, ldc, accumulate);
#else
  TORCH_CHECK(false, "gemm_packed_bf16: needs x86-64 with AVX512-BF16");
#endif
}

GRACE_FAST_CLONES
void gemm_packed(int mc, int nc, int kc, const double* a, const double* b, double* c, int64_t ldc,
                 bool accumulate) {
  gemm_body(mc, nc, kc, a, b, c, ldc, accumulate);
}

}  // namespace grace_fast::cpu
