// Cosine cost matrix C = 1 - cos(U_i, V_j) on the CPU: blocked GEMM over packed panels forward and backward, the rows
// normalised while they are packed and the masks applied in the forward's epilogue. fp16/bf16 are converted while
// they are packed; fp32 accumulation (fp64 for fp64). Norms are scaled before squaring: finite for any finite input.
// bf16 inputs take the bf16 dot path of the forward where the CPU has AVX512-BF16 (forward_bf16_dot).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/clones.h"
#include "cpu/gemm.h"
#include "cpu/work_queue.h"

namespace grace_fast::cpu {
namespace {

constexpr int64_t NC = 3 * NR;  // columns of C per forward work item (small enough to balance B = 1)
constexpr int64_t MB = 16 * MR;  // gradient rows per backward work item: the 77 text tokens in one, so V is packed once

// ||x scale|| of a row x [D] and the scale: 1 where max |x| lies in [2^-32, 2^33) (the squares neither overflow nor
// lose digits that matter), else a power of two near 1 / max |x| (1 for a zero row), so that the squares neither
// overflow nor underflow. The scaling is exact: a scaled row gives the unscaled result, so one pass serves the common
// case. The lanes of L independent partial results let the compiler vectorise without reassociating.
template <typename T, typename Acc>
Acc scaled_norm(const T* x, int64_t D, Acc& scale) {
  constexpr int64_t L = 16;
  constexpr int SAFE = 32;
  Acc top[L] = {}, sq[L] = {};
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    for (int64_t l = 0; l < L; ++l) {
      const Acc v = static_cast<Acc>(x[d + l]);
      top[l] = std::max(top[l], std::abs(v));
      sq[l] += v * v;
    }
  }
  for (; d < D; ++d) {
    const Acc v = static_cast<Acc>(x[d]);
    top[0] = std::max(top[0], std::abs(v));
    sq[0] += v * v;
  }
  const Acc largest = *std::max_element(top, top + L);
  scale = Acc(1);
  if (!(largest > 0)) return largest;  // 0, or NaN
  const int exponent = std::ilogb(largest);
  if (exponent < -SAFE || exponent > SAFE) {
    // rows whose largest entry is subnormal are scaled as far as the exponent range allows
    scale = std::ldexp(Acc(1), -std::max(exponent, std::numeric_limits<Acc>::min_exponent - 1));
    std::fill(sq, sq + L, Acc(0));
    for (d = 0; d + L <= D; d += L) {
      for (int64_t l = 0; l < L; ++l) {
        const Acc v = static_cast<Acc>(x[d + l]) * scale;
        sq[l] += v * v;
      }
    }
    for (; d < D; ++d) {
      const Acc v = static_cast<Acc>(x[d]) * scale;
      sq[0] += v * v;
    }
  }
  Acc total = 0;
  for (int64_t l = 0; l < L; ++l) total += sq[l];
  return std::sqrt(total);
}

// 1 / ||x|| of a row x [D], 0 for a zero row (NaN stays NaN).
template <typename T, typename Acc>
Acc inverse_norm(const T* x, int64_t D) {
  Acc scale;
  const Acc norm = scaled_norm<T, Acc>(x, D, scale);
  return norm == 0 ? Acc(0) : scale / norm;
}

// r [rows] = inverse_norm of each row of x [rows, D], 0 where mask (may be null) is false.
template <typename T, typename Acc>
void inverse_norms(const T* x, const bool* mask, Acc* r, int64_t rows, int64_t D) {
  at::parallel_for(0, rows, std::max<int64_t>(1, at::internal::GRAIN_SIZE / D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) r[i] = mask && !mask[i] ? Acc(0) : inverse_norm<T, Acc>(x + i * D, D);
  });
}

// Per row of x [rows, D] (bf16): the power of two scale that scaled_norm picks (x scale is exact in bf16) and
// rn = 1 / ||x scale||, so that r = scale rn is inverse_norm; rn = 0 for a zero row, and all three 0 where mask
// (may be null) is false.
void scaled_inverse_norms(const at::BFloat16* x, const bool* mask, float* scale, float* rn, float* r, int64_t rows,
                          int64_t D) {
  at::parallel_for(0, rows, std::max<int64_t>(1, at::internal::GRAIN_SIZE / D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scale[i] = rn[i] = r[i] = 0;
      if (mask && !mask[i]) continue;
      const float norm = scaled_norm<at::BFloat16, float>(x + i * D, D, scale[i]);
      rn[i] = norm == 0 ? 0.f : 1 / norm;
      r[i] = scale[i] * rn[i];
    }
  });
}

// The forward of forward_kernel for bf16 on the bf16 dot path: the rows are scaled by powers of two only, packed as
// bf16 pairs (exactly), their products summed in fp32 by gemm_packed_bf16, and the inverse norms of the scaled rows
// applied in the epilogue: C = valid - dot rn_u rn_v.
void forward_bf16_dot(const at::BFloat16* U_, const at::BFloat16* V_, const bool* mask_u, const bool* mask_v, float* C,
                      float* ru, float* rv, int64_t B, int64_t N, int64_t M, int64_t D) {
  std::vector<float> su(B * N), rnu(B * N), sv(B * M), rnv(B * M);
  scaled_inverse_norms(U_, mask_u, su.data(), rnu.data(), ru, B * N, D);
  scaled_inverse_norms(V_, mask_v, sv.data(), rnv.data(), rv, B * M, D);
  const int64_t col_blocks = (M + NC - 1) / NC, n_pad = (N + MR - 1) / MR * MR;
  const auto words = [](int64_t kc) { return (kc + 1) / 2; };  // depth of a packed block, in pairs
  at::parallel_for(0, B * col_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> a_pack(n_pad * words(D)), b_pack(NC * words(KC_BF16));
    std::vector<float> valid_v(NC);
    int64_t packed = -1;  // the batch element whose U is in a_pack
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / col_blocks, j0 = (item % col_blocks) * NC;
      const int nc = static_cast<int>(std::min(NC, M - j0));
      const bool* mu = mask_u ? mask_u + b * N : nullptr;
      const bool* mv = mask_v ? mask_v + b * M + j0 : nullptr;
      if (packed != b) {
        for (int64_t k0 = 0; k0 < D; k0 += KC_BF16) {
          const int kc = static_cast<int>(std::min<int64_t>(KC_BF16, D - k0));
          pack_bf16<MR>(U_ + b * N * D, D, 0, static_cast<int>(N), k0, kc, su.data() + b * N,
                        a_pack.data() + n_pad * words(k0));
        }
        packed = b;
      }
      float* Cb = C + b * N * M + j0;
      for (int64_t k0 = 0; k0 < D; k0 += KC_BF16) {
        const int kc = static_cast<int>(std::min<int64_t>(KC_BF16, D - k0));
        pack_bf16<NR>(V_ + b * M * D, D, j0, nc, k0, kc, sv.data() + b * M, b_pack.data());
        gemm_packed_bf16(static_cast<int>(N), nc, static_cast<int>(words(kc)), a_pack.data() + n_pad * words(k0),
                         b_pack.data(), Cb, M, k0 > 0);
      }
      const float* rn_v = rnv.data() + b * M + j0;
      for (int q = 0; q < nc; ++q) valid_v[q] = mv && !mv[q] ? 0 : 1;
      for (int64_t i = 0; i < N; ++i) {
        float* row = Cb + i * M;
        if (mu && !mu[i]) {
          std::fill(row, row + nc, 0.f);
          continue;
        }
        const float rn_u = rnu[b * N + i];
        for (int q = 0; q < nc; ++q) row[q] = valid_v[q] - row[q] * rn_u * rn_v[q];
      }
    }
  });
}

// The norms first (ru, rv); then per work item (batch b, NC columns of C): U[b] is packed into MR-row panels (once
// per b and thread) and the V rows into NR-column panels, KC deep, each row scaled to unit norm and converted from
// fp16/bf16 to Acc as it is packed, so that the packed GEMM gives the cosines, and no product of unscaled entries can
// overflow. The masks act through ru, rv = 0 and in the epilogue C = 1 - cos.
template <typename T, typename Acc>
void forward_kernel(const T* U_, const T* V_, const bool* mask_u, const bool* mask_v, Acc* C, Acc* ru, Acc* rv,
                    int64_t B, int64_t N, int64_t M, int64_t D) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    if (bf16_dot_available()) return forward_bf16_dot(U_, V_, mask_u, mask_v, C, ru, rv, B, N, M, D);
  }
  inverse_norms(U_, mask_u, ru, B * N, D);
  inverse_norms(V_, mask_v, rv, B * M, D);
  const int64_t col_blocks = (M + NC - 1) / NC, n_pad = (N + MR - 1) / MR * MR;
  at::parallel_for(0, B * col_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> a_pack(n_pad * D), b_pack(NC * KC), valid_v(NC);
    int64_t packed = -1;  // the batch element whose U is in a_pack
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / col_blocks, j0 = (item % col_blocks) * NC;
      const int nc = static_cast<int>(std::min(NC, M - j0));
      const bool* mu = mask_u ? mask_u + b * N : nullptr;
      const bool* mv = mask_v ? mask_v + b * M + j0 : nullptr;
      if (packed != b) {
        for (int64_t k0 = 0; k0 < D; k0 += KC) {
          const int kc = static_cast<int>(std::min<int64_t>(KC, D - k0));
          pack_a(Mat<T>{U_ + b * N * D, D, 1}, 0, static_cast<int>(N), k0, kc, ru + b * N, a_pack.data() + n_pad * k0);
        }
        packed = b;
      }
      Acc* Cb = C + b * N * M + j0;
      for (int64_t k0 = 0; k0 < D; k0 += KC) {
        const int kc = static_cast<int>(std::min<int64_t>(KC, D - k0));
        pack_b(Mat<T>{V_ + b * M * D, 1, D}, k0, kc, j0, nc, static_cast<const Acc*>(nullptr), rv + b * M,
               b_pack.data());
        gemm_packed(static_cast<int>(N), nc, kc, a_pack.data() + n_pad * k0, b_pack.data(), Cb, M, k0 > 0);
      }
      for (int q = 0; q < nc; ++q) valid_v[q] = mv && !mv[q] ? 0 : 1;
      for (int64_t i = 0; i < N; ++i) {
        Acc* row = Cb + i * M;
        if (mu && !mu[i]) {
          std::fill(row, row + nc, Acc(0));
          continue;
        }
        for (int q = 0; q < nc; ++q) row[q] = valid_v[q] - row[q];
      }
    }
  });
}

// out [D] = r (<a, u> u - a) for one row x [D] with 1 / ||x|| = r > 0 and a [D]: the gradient through x -> x / ||x||,
// with the unit vector u = x scale / ||x scale|| written to unit [D] (exact for D = 1). Compiled for AVX2+FMA too.
template <typename T, typename Acc>
__attribute__((always_inline)) inline void unit_gradient_body(const T* x, const Acc* a, Acc r, Acc* unit, T* out,
                                                              int64_t D) {
  constexpr int64_t L = 16;
  Acc scale;
  const Acc norm = scaled_norm<T, Acc>(x, D, scale);
  for (int64_t d = 0; d < D; ++d) unit[d] = static_cast<Acc>(x[d]) * scale / norm;
  Acc part[L] = {};
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    for (int64_t l = 0; l < L; ++l) part[l] += a[d + l] * unit[d + l];
  }
  for (; d < D; ++d) part[0] += a[d] * unit[d];
  Acc dot = 0;
  for (int64_t l = 0; l < L; ++l) dot += part[l];
  for (d = 0; d < D; ++d) out[d] = static_cast<T>(r * (dot * unit[d] - a[d]));
}

GRACE_FAST_CLONES void unit_gradient(const float* x, const float* a, float r, float* unit, float* out, int64_t D) {
  unit_gradient_body(x, a, r, unit, out, D);
}
GRACE_FAST_CLONES void unit_gradient(const at::BFloat16* x, const float* a, float r, float* unit, at::BFloat16* out,
                                     int64_t D) {
  unit_gradient_body(x, a, r, unit, out, D);
}
GRACE_FAST_CLONES void unit_gradient(const at::Half* x, const float* a, float r, float* unit, at::Half* out,
                                     int64_t D) {
  unit_gradient_body(x, a, r, unit, out, D);
}
void unit_gradient(const double* x, const double* a, double r, double* unit, double* out, int64_t D) {
  unit_gradient_body(x, a, r, unit, out, D);
}

// One of the backward's two gradients: for each batch b and row i of X [R, D], acc_i = sum_k G(i, k) s_k Y_k over the
// K rows of Y [K, D], with G(i, k) = g[b * g_batch + i * gs_i + k * gs_k] and scales s [K] (1 / the norms of Y's rows:
// the s_k Y_k are unit vectors); then dX_i = r_i (<acc_i, x_i> x_i - acc_i) with the unit vector x_i = X_i / ||X_i||
// (taken as X_i scale / ||X_i scale||, which is exact for D = 1), the gradient through X_i -> X_i / ||X_i||: no power
// of r_i (around 1e22 for entries around 1e-22) can overflow. r_i = 0 (a zero or padded row) gives dX_i = 0.
template <typename T, typename Acc>
struct RowGradient {
  const Acc* g;
  int64_t g_batch, gs_i, gs_k;
  const T* X;
  const Acc* r;
  const T* Y;
  const Acc* s;
  T* dX;
  int64_t R, K;

  int64_t blocks() const { return (R + MB - 1) / MB; }
};

// A thread's buffers for row_gradient: packed panels of G and Y, acc [MB, D] and one unit row [D].
template <typename Acc>
struct RowBuffers {
  std::vector<Acc> a_pack, b_pack, acc, unit;
  explicit RowBuffers(int64_t D)
      : a_pack(MB * KC), b_pack(KC * ((D + NR - 1) / NR) * NR), acc(MB * D), unit(D) {}
};

// Rows [i0, i0 + MB) of batch b of one gradient.
template <typename T, typename Acc>
void row_gradient(const RowGradient<T, Acc>& p, int64_t b, int64_t i0, int64_t D, RowBuffers<Acc>& buf) {
  const int mb = static_cast<int>(std::min(MB, p.R - i0));
  const Mat<Acc> A{p.g + b * p.g_batch, p.gs_i, p.gs_k};
  const Mat<T> Yb{p.Y + b * p.K * D, D, 1};
  for (int64_t k0 = 0; k0 < p.K; k0 += KC) {
    const int kc = static_cast<int>(std::min<int64_t>(KC, p.K - k0));
    pack_a(A, i0, mb, k0, kc, static_cast<const Acc*>(nullptr), buf.a_pack.data());
    pack_b(Yb, k0, kc, 0, static_cast<int>(D), p.s + b * p.K, static_cast<const Acc*>(nullptr), buf.b_pack.data());
    gemm_packed(mb, static_cast<int>(D), kc, buf.a_pack.data(), buf.b_pack.data(), buf.acc.data(), D, k0 > 0);
  }
  for (int i = 0; i < mb; ++i) {
    const int64_t row = b * p.R + i0 + i;
    const Acc ri = p.r[row];
    T* out = p.dX + row * D;
    if (ri == 0) {
      std::fill(out, out + D, static_cast<T>(0));
      continue;
    }
    unit_gradient(p.X + row * D, buf.acc.data() + static_cast<int64_t>(i) * D, ri, buf.unit.data(), out, D);
  }
}

// Both gradients in one work queue, batch by batch, dU's items (MB rows) of a batch before dV's: dU reads all of V[b]
// and dV's epilogue reads it again, so V[b] is still in cache; at B = 1, dU's 77 text rows (one item, deep in the M
// visual rows) go to one thread while the others take dV's items.
template <typename T, typename Acc>
void backward_kernel(const RowGradient<T, Acc>& dU, const RowGradient<T, Acc>& dV, int64_t B, int64_t D) {
  std::vector<RowBuffers<Acc>> buffers;
  for (int t = 0; t < at::get_num_threads(); ++t) buffers.emplace_back(D);
  const int64_t u_items = dU.blocks(), per_batch = u_items + dV.blocks();
  for_each_item(B * per_batch, (dU.K + dV.K) * D, [&](int64_t item) {  // an item reads a Y of K rows
    const int64_t b = item / per_batch, j = item % per_batch;
    const bool on_u = j < u_items;
    row_gradient(on_u ? dU : dV, b, (on_u ? j : j - u_items) * MB, D, buffers[at::get_thread_num()]);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cost_matrix_forward(const at::Tensor& U_, const at::Tensor& V_,
                                                                   const c10::optional<at::Tensor>& mask_u_,
                                                                   const c10::optional<at::Tensor>& mask_v_) {
  check_cost_inputs(U_, V_, mask_u_, mask_v_);
  const at::Tensor U = U_.contiguous(), V = V_.contiguous();
  const at::Tensor mask_u = mask_u_ ? mask_u_->contiguous() : at::Tensor();
  const at::Tensor mask_v = mask_v_ ? mask_v_->contiguous() : at::Tensor();
  const int64_t B = U.size(0), N = U.size(1), M = V.size(1), D = U.size(2);
  const auto acc = U.options().dtype(U.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor C = at::empty({B, N, M}, acc), ru = at::empty({B, N}, acc), rv = at::empty({B, M}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "cost_matrix_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(U.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(),
                                    mask_u.defined() ? mask_u.data_ptr<bool>() : nullptr,
                                    mask_v.defined() ? mask_v.data_ptr<bool>() : nullptr, C.data_ptr<acc_t>(),
                                    ru.data_ptr<acc_t>(), rv.data_ptr<acc_t>(), B, N, M, D);
  });
  return {C, ru, rv};
}

std::tuple<at::Tensor, at::Tensor> cost_matrix_backward(const at::Tensor& grad_C, const at::Tensor& U_,
                                                        const at::Tensor& V_, const at::Tensor& ru_,
                                                        const at::Tensor& rv_) {
  check_cost_inputs(U_, V_, c10::nullopt, c10::nullopt);
  const at::Tensor U = U_.contiguous(), V = V_.contiguous();
  const int64_t B = U.size(0), N = U.size(1), M = V.size(1), D = U.size(2);
  TORCH_CHECK(grad_C.sizes() == at::IntArrayRef({B, N, M}), "cost_matrix_backward: grad_C must be [B, N, M] = [",
              B, ", ", N, ", ", M, "], got ", grad_C.sizes());
  at::Tensor dU = at::empty_like(U), dV = at::empty_like(V);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "cost_matrix_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor G = grad_C.to(acc).contiguous();
    const at::Tensor ru = ru_.to(acc).contiguous(), rv = rv_.to(acc).contiguous();
    const acc_t* g = G.data_ptr<acc_t>();
    // dU from G [N, M] against V; dV from G^T [M, N] against U.
    const RowGradient<scalar_t, acc_t> du{g, N * M, M, 1, U.data_ptr<scalar_t>(), ru.data_ptr<acc_t>(),
                                          V.data_ptr<scalar_t>(), rv.data_ptr<acc_t>(), dU.data_ptr<scalar_t>(), N, M};
    const RowGradient<scalar_t, acc_t> dv{g, N * M, 1, M, V.data_ptr<scalar_t>(), rv.data_ptr<acc_t>(),
                                          U.data_ptr<scalar_t>(), ru.data_ptr<acc_t>(), dV.data_ptr<scalar_t>(), M, N};
    backward_kernel(du, dv, B, D);
  });
  return {dU, dV};
}

}  // namespace

TORCH_LIBRARY_IMPL(grace_fast, CPU, m) {
  m.impl("cost_matrix_forward", &cost_matrix_forward);
  m.impl("cost_matrix_backward", &cost_matrix_backward);
}

}  // namespace grace_fast::cpu
