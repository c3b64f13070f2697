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

// c[r * ldc + s] = <u_r, v_s> for R rows of u and S rows of v (row stride d), full depth in R x S vector
// accumulators: rows are read where they lie, nothing is packed. 4 x 3 floats keep 12 + 3 + 1 ymm registers busy.
template <int R, int S, typename Acc>
__attribute__((always_inline)) inline void dot_tile(const Acc* __restrict u, const Acc* __restrict v, int64_t d,
                                                    Acc* __restrict c, int64_t ldc) {
  constexpr int L = 32 / sizeof(Acc);
  typedef Acc vec __attribute__((vector_size(32)));
  typedef Acc vec_u __attribute__((vector_size(32), aligned(sizeof(Acc))));
  vec acc[R][S] = {};
  int64_t k = 0;
  for (; k + L <= d; k += L) {
    vec vv[S];
    for (int s = 0; s < S; ++s) vv[s] = *reinterpret_cast<const vec_u*>(v + s * d + k);
    for (int r = 0; r < R; ++r) {
      const vec uu = *reinterpret_cast<const vec_u*>(u + r * d + k);
      for (int s = 0; s < S; ++s) acc[r][s] += uu * vv[s];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < S; ++s) {
      Acc t = 0;
      for (int q = 0; q < L; ++q) t += acc[r][s][q];
      for (int64_t q = k; q < d; ++q) t += u[r * d + q] * v[s * d + q];
      c[r * ldc + s] = t;
    }
  }
}

template <int R, int S, typename Acc>
void dot_tile_fn(const Acc* u, const Acc* v, int64_t d, Acc* c, int64_t ldc) {
  dot_tile<R, S>(u, v, d, c, ldc);
}

constexpr int TR = 4, TS = 3;  // the dot tile

template <typename Acc>
__attribute__((always_inline)) inline void gemm_nt_body(const Acc* u, int m, const Acc* v, int n, int64_t d, Acc* c,
                                                        int64_t ldc) {
  using Tile = void (*)(const Acc*, const Acc*, int64_t, Acc*, int64_t);
  static constexpr Tile edge[TR][TS] = {{dot_tile_fn<1, 1, Acc>, dot_tile_fn<1, 2, Acc>, dot_tile_fn<1, 3, Acc>},
                                        {dot_tile_fn<2, 1, Acc>, dot_tile_fn<2, 2, Acc>, dot_tile_fn<2, 3, Acc>},
                                        {dot_tile_fn<3, 1, Acc>, dot_tile_fn<3, 2, Acc>, dot_tile_fn<3, 3, Acc>},
                                        {dot_tile_fn<4, 1, Acc>, dot_tile_fn<4, 2, Acc>, dot_tile_fn<4, 3, Acc>}};
  for (int j = 0; j < n; j += TS) {  // TS rows of v stay in L1 while every row of u streams past them
    const int cols = std::min(TS, n - j);
    int i = 0;
    if (cols == TS) {
      for (; i + TR <= m; i += TR) dot_tile<TR, TS>(u + i * d, v + j * d, d, c + i * ldc + j, ldc);
    }
    for (; i < m; i += TR) edge[std::min(TR, m - i) - 1][cols - 1](u + i * d, v + j * d, d, c + i * ldc + j, ldc);
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

GRACE_FAST_CLONES
void gemm_nt(const float* u, int m, const float* v, int n, int64_t d, float* c, int64_t ldc) {
  gemm_nt_body(u, m, v, n, d, c, ldc);
}

GRACE_FAST_CLONES
void gemm_nt(const double* u, int m, const double* v, int n, int64_t d, double* c, int64_t ldc) {
  gemm_nt_body(u, m, v, n, d, c, ldc);
}

}  // namespace grace_fast::cpu
